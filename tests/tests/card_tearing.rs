//! Personalization resumes after the card is torn away at every step.
//!
//! The virtual card answers N APDUs and vanishes on the next one (and comes back, like a card put
//! back on the reader). For every N up to the length of a whole personalization, with the torn
//! command taking effect and its answer lost, and for every command that writes the card's memory
//! also with the power cut in the middle of that write, the first `card-tool personalize` fails
//! and says to run it again, and the same command run again completes the card and the server's
//! job. A card is never left half personalized: between the two runs it is BLANK, or PERSONALIZED
//! with its key in the journal so that the rerun only has to confirm.

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use e2e_tests::{json_of, pcsc_session, run_ok, run_output, Office, VirtualCard};

/// The APDUs of one whole personalization, counted from a clean run: how many, and which of them
/// (1-based) wrote to the card's memory (the virtual card logs those at debug level).
fn apdus_of_a_personalization(office: &Office) -> Result<(u32, Vec<u32>)> {
    let app = office.application()?;
    let state = office.blank_card("count")?;
    let card = VirtualCard::insert(&state, 0, &[])?;
    let done = json_of(&run_ok(&mut office.personalize_cmd(0, app)?)?)?;
    let n = done["apdus"].as_u64().context("apdus")?;
    let writes = card
        .log()
        .lines()
        .filter_map(|l| {
            let rest = l.split("APDU ").nth(1)?;
            let (n, tail) = rest.split_once(' ')?;
            if tail.starts_with("changed the card's memory") {
                n.parse().ok()
            } else {
                None
            }
        })
        .collect();
    Ok((u32::try_from(n)?, writes))
}

fn life_cycle(reader: &str) -> Result<String> {
    let r = json_of(&run_ok(
        e2e_tests::card_tool()?.args(["--reader", reader, "--json", "read"]),
    )?)?;
    Ok(r["life_cycle"].as_str().unwrap_or_default().to_owned())
}

#[test]
fn personalization_resumes_after_tearing_at_every_step() -> Result<()> {
    let _pcsc = pcsc_session()?;
    let office = Office::start()?;
    let (total, writes) = apdus_of_a_personalization(&office)?;
    ensure!(
        (8..40).contains(&total),
        "a personalization took {total} APDUs"
    );
    // Key generation, four PUT DATA and the lock at least.
    ensure!(writes.len() >= 6, "writing APDUs: {writes:?}");

    // (mode, APDUs answered before the tear). "during" on an APDU that writes nothing would be
    // the same as "after", so it is run on the writing ones only.
    let mut plan: Vec<(&str, u32)> = (0..total).map(|n| ("after", n)).collect();
    plan.extend(writes.iter().map(|n| ("during", n - 1)));

    let mut finished_interrupted = 0;
    for (mode, after) in plan {
        let what = format!("tear {mode} APDU {} of {total}", after + 1);
        let app = office.application()?;
        let state = office.blank_card(&format!("tear-{mode}-{after}"))?;
        let tear = after.to_string();
        let card = VirtualCard::insert(&state, 0, &["--tear-after", &tear, "--tear-mode", mode])?;

        let since = card.events()?;
        let first = run_output(
            &mut office.personalize_cmd(0, app)?,
            Duration::from_secs(30),
        )?;
        let stderr = String::from_utf8_lossy(&first.stderr).into_owned();
        ensure!(!first.status.success(), "{what}: the first run succeeded");
        ensure!(
            stderr.contains("run the same command again"),
            "{what}: the failure does not say what to do: {stderr}"
        );

        // The card comes back by itself; in between it is BLANK or locked, never half.
        card.wait_back(since).context(what.clone())?;
        let lc = life_cycle(&card.reader())?;
        ensure!(
            lc == "BLANK" || lc == "PERSONALIZED",
            "{what}: life cycle {lc}"
        );

        let second = run_ok(&mut office.personalize_cmd(0, app)?)
            .with_context(|| format!("{what}: the rerun failed; card log:\n{}", card.log()))?;
        let done = json_of(&second)?;
        if done["finished_interrupted"] == true {
            ensure!(lc == "PERSONALIZED", "{what}: {done}");
            finished_interrupted += 1;
        } else {
            ensure!(
                lc == "BLANK",
                "{what}: a locked card was personalized again: {done}"
            );
        }
        let job = office.server.ok(
            "GET",
            &format!("/api/v1/personalization-jobs/{}", done["job_id"]),
            &office.clerk,
            None,
        )?;
        ensure!(job["state"] == "completed", "{what}: {job}");
        ensure!(
            life_cycle(&card.reader())? == "PERSONALIZED",
            "{what}: not locked"
        );
    }
    // The lock taking effect with its answer lost is the case only the journal repairs; the plan
    // must have produced it.
    if finished_interrupted == 0 {
        bail!("no run had to finish an interrupted personalization");
    }
    Ok(())
}
