//! The virtual card behind the real pcscd: card-tool sees it, APDUs are fast (TCP_QUICKACK), a
//! torn card comes back with its state, and two cards run side by side in the two vpcd readers.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use card_tool::reader::{ReaderError, Readers};
use e2e_tests::{json_of, pcsc_session, run_fails, run_ok, VirtualCard};
use shared_crypto::apdu::{select_command, Transport};

fn blank(dir: &std::path::Path, name: &str) -> Result<std::path::PathBuf> {
    let p = dir.join(name);
    VirtualCard::init_blank(&p, &[0x42; 16], Some([7; 10]))?;
    Ok(p)
}

#[test]
fn card_tool_sees_two_virtual_cards_and_an_apdu_takes_well_under_a_millisecond() -> Result<()> {
    let _pcsc = pcsc_session()?;
    let dir = tempfile::tempdir()?;
    let one = VirtualCard::insert(&blank(dir.path(), "one")?, 0, &[])?;
    let two = VirtualCard::insert(&blank(dir.path(), "two")?, 1, &[])?;

    let readers = json_of(&run_ok(
        e2e_tests::card_tool()?.args(["--json", "readers"]),
    )?)?;
    let list = readers.as_array().context("readers")?;
    for card in [&one, &two] {
        let r = list
            .iter()
            .find(|r| r["name"] == card.reader().as_str())
            .with_context(|| format!("{} not listed: {readers}", card.reader()))?;
        // The ATR carries the applet's AID in its historical bytes.
        ensure!(r["atr"] == "3b88800180f6f043445046019f", "{r}");
    }
    let status = json_of(&run_ok(e2e_tests::card_tool()?.args([
        "--reader",
        &two.reader(),
        "--json",
        "status",
    ]))?)?;
    ensure!(
        status["applet"] == true && status["life_cycle"] == "BLANK",
        "{status}"
    );

    // Round trips through pcscd: with delayed ACKs each would take ~40 ms.
    let r = Readers::new()?;
    let mut link = r.connect_any(Some(&one.reader()))?;
    let mut rsp = [0u8; 64];
    let n = 200;
    let started = Instant::now();
    for _ in 0..n {
        let got = link.transceive(&select_command(), &mut rsp)?;
        ensure!(rsp[got - 2..got] == [0x90, 0x00]);
    }
    let per = started.elapsed() / n;
    ensure!(
        per < Duration::from_millis(5),
        "{per:?} per APDU: is TCP_QUICKACK set?"
    );
    link.close();
    Ok(())
}

#[test]
fn a_torn_card_comes_back_with_its_state() -> Result<()> {
    let _pcsc = pcsc_session()?;
    let dir = tempfile::tempdir()?;
    let state = blank(dir.path(), "torn")?;
    let before = std::fs::read(&state)?;
    let card = VirtualCard::insert(&state, 0, &["--tear-after", "2", "--tear-times", "2"])?;

    let since = card.events()?;
    let r = Readers::new()?;
    let mut link = r.connect_any(Some(&card.reader()))?;
    let mut rsp = [0u8; 64];
    link.transceive(&select_command(), &mut rsp)?;
    link.transceive(&select_command(), &mut rsp)?;
    // The third APDU finds the card gone: the client sees a lost card, not an answer.
    match link.transceive(&select_command(), &mut rsp) {
        Err(ReaderError::CardLost(_)) => {}
        other => anyhow::bail!("a torn card answered {other:?}"),
    }
    // The card is back: a reset and a fresh SELECT work (the second tear comes after two more).
    card.wait_back(since)?;
    link.reset()?;
    let got = link.transceive(&select_command(), &mut rsp)?;
    ensure!(rsp[got - 2..got] == [0x90, 0x00]);
    link.close();
    ensure!(
        std::fs::read(&state)? == before,
        "SELECTs must not change the card"
    );

    let info = run_ok(
        std::process::Command::new(e2e_tests::binary("virtual-card", "virtual-card")?)
            .arg("info")
            .arg("--state")
            .arg(&state),
    )?;
    ensure!(info.contains("BLANK"), "{info}");
    Ok(())
}

#[test]
fn card_tool_says_what_to_do_when_no_card_is_there() -> Result<()> {
    let _pcsc = pcsc_session()?;
    let err = run_fails(e2e_tests::card_tool()?.args(["--reader", "Virtual PCD 00 01", "status"]))?;
    ensure!(err.contains("no card in reader"), "{err}");
    let err = run_fails(e2e_tests::card_tool()?.args(["--reader", "No Such Reader", "read"]))?;
    ensure!(err.contains("card-tool readers"), "{err}");
    Ok(())
}
