//! Independent PC/SC clients (OpenSC's `opensc-tool`, pcsc-tools' `scriptor`) talk to the
//! virtual card through pcscd: SELECT works and malformed or out-of-place APDUs get the ISO
//! status words of the contract.

use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use e2e_tests::{json_of, pcsc_session, run_ok, run_output, Office, VirtualCard};

const SELECT: &str = "00A4040006F0434450460100";

/// Sends `apdus` in one `opensc-tool` session on the first reader and returns each answer's
/// status word.
fn opensc(apdus: &[&str]) -> Result<Vec<u16>> {
    let mut cmd = Command::new("opensc-tool");
    cmd.args(["-r", "0"]);
    for a in apdus {
        cmd.args(["-s", a]);
    }
    let out = run_output(&mut cmd, Duration::from_secs(30))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let sws: Vec<u16> = text
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let rest = l.strip_prefix("Received (SW1=0x")?;
            let (sw1, rest) = rest.split_once(", SW2=0x")?;
            let sw2 = rest.get(..2)?;
            u16::from_str_radix(&format!("{sw1}{sw2}"), 16).ok()
        })
        .collect();
    ensure!(
        sws.len() == apdus.len(),
        "opensc-tool answered {} of {} APDUs:\n{text}\n{}",
        sws.len(),
        apdus.len(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(sws)
}

/// Sends `apdus` through `scriptor` on `reader`; returns each answer as bytes (data and SW).
fn scriptor(reader: &str, apdus: &[&str]) -> Result<Vec<Vec<u8>>> {
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("apdus.txt");
    std::fs::write(&script, apdus.join("\n") + "\n")?;
    let out = run_output(
        Command::new("scriptor").args(["-r", reader]).arg(&script),
        Duration::from_secs(30),
    )?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // Answers start with "< " and run (possibly over several lines) to " : <meaning>".
    let mut answers = Vec::new();
    for block in text.split("\n< ").skip(1) {
        let hexpart = block.split(" : ").next().unwrap_or("");
        let bytes: Result<Vec<u8>, _> = hexpart
            .split_whitespace()
            .map(|t| u8::from_str_radix(t, 16))
            .collect();
        answers.push(bytes.with_context(|| format!("scriptor output:\n{text}"))?);
    }
    ensure!(answers.len() == apdus.len(), "scriptor output:\n{text}");
    Ok(answers)
}

#[test]
fn opensc_tool_and_scriptor_get_the_contracts_status_words() -> Result<()> {
    let _pcsc = pcsc_session()?;
    let office = Office::start()?;
    let state = office.blank_card("iso")?;
    let card = VirtualCard::insert(&state, 0, &[])?;

    // scriptor: SELECT answers version || SelectResponse (19 bytes) and 9000.
    let a = scriptor(
        &card.reader(),
        &["00 A4 04 00 06 F0 43 44 50 46 01 00", "80 FE 00 00"],
    )?;
    ensure!(
        a[0].len() == 19 + 2 && a[0].ends_with(&[0x90, 0x00]),
        "{:02X?}",
        a[0]
    );
    ensure!(
        a[0][0] == 1 && a[0][2] == 1,
        "version 1, life cycle BLANK: {:02X?}",
        a[0]
    );
    ensure!(a[1] == [0x6D, 0x00], "{:02X?}", a[1]);

    // opensc-tool on the blank card.
    let sw = opensc(&[
        SELECT,
        "00A4040006F0434450460200", // another AID
        "80FE0000",                 // unknown instruction
        "A0A4040006F0434450460100", // class not supported
        "00A4FF0006F0434450460100", // SELECT with a wrong P1
        SELECT,
        "9082000002010200", // first block of a chain ...
        "80FE0000",         // ... interrupted by another command
        SELECT,
        "808200000301020300", // TERMINAL AUTHENTICATE on a BLANK card
    ])?;
    ensure!(
        sw == [0x9000, 0x6A82, 0x6D00, 0x6E00, 0x6A86, 0x9000, 0x9000, 0x6883, 0x9000, 0x6985],
        "{sw:04X?}"
    );

    // Personalized, the card tells malformed data from missing authentication.
    let app = office.application()?;
    let done = json_of(&run_ok(&mut office.personalize_cmd(0, app)?)?)?;
    ensure!(done["application_id"] == app);
    let sw = opensc(&[
        SELECT,
        "808200000301020300", // malformed TERMINAL AUTHENTICATE data
        SELECT,
        "805C000008",     // GET BALANCE without a welfare session
        "80300000020102", // DEBIT without a session
        "80CA00CF00",     // GET DATA of the div data: BLANK cards only
        "0084000008",     // GET CHALLENGE: not an instruction of this applet
    ])?;
    ensure!(
        sw == [0x9000, 0x6A80, 0x9000, 0x6982, 0x6982, 0x6985, 0x6D00],
        "{sw:04X?}"
    );
    Ok(())
}
