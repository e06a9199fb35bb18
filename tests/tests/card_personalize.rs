//! The real stack: pcscd + vpcd + virtual-card + card-tool + issuance-server.
//! Personalize a card, read it, tap it for every service, credit it; the card survives a restart.

use anyhow::{ensure, Context, Result};
use e2e_tests::{json_of, pcsc_session, run_fails, run_ok, Office, VirtualCard};
use shared_crypto::model::{AttributeId, Service};

/// The names of the attributes `service` may read among those the card holds, in id order.
fn names_of(service: Service, held: &[u8]) -> Vec<String> {
    service
        .release_policy()
        .iter()
        .filter(|a| held.contains(&(*a as u8)))
        .map(|a| card_tool::tap::attribute_name(a).to_owned())
        .collect()
}

#[test]
fn personalize_read_tap_every_service_and_credit() -> Result<()> {
    let _pcsc = pcsc_session()?;
    let office = Office::start()?;
    let app = office.application()?;
    let state = office.blank_card("one")?;
    let mut card = VirtualCard::insert(&state, 0, &[])?;

    // Personalize.
    let out = run_ok(&mut office.personalize_cmd(0, app)?)?;
    let done = json_of(&out)?;
    ensure!(done["application_id"] == app, "{done}");
    ensure!(done["finished_interrupted"] == false, "{done}");
    let serial = done["card_serial"].as_str().context("serial")?.to_owned();
    let card_key = done["card_public_key"].as_str().context("key")?.to_owned();
    let job = office.server.ok(
        "GET",
        &format!("/api/v1/personalization-jobs/{}", done["job_id"]),
        &office.clerk,
        None,
    )?;
    ensure!(job["state"] == "completed", "{job}");
    ensure!(job["card_serial"] == serial.as_str(), "{job}");
    let held: Vec<u8> = job["attributes"]
        .as_array()
        .context("attributes")?
        .iter()
        .filter_map(|a| a["attribute"].as_u64().and_then(|v| u8::try_from(v).ok()))
        .collect();
    ensure!(
        held.len() == 9,
        "every attribute, the photo digest included: {job}"
    );

    // The card is locked: a second personalization is refused and says why.
    let err = run_fails(&mut office.personalize_cmd(0, app)?)?;
    ensure!(err.contains("already PERSONALIZED"), "{err}");

    // Before authentication the card tells nothing about the holder.
    let read =
        run_ok(e2e_tests::card_tool()?.args(["--reader", &card.reader(), "--json", "read"]))?;
    let r = json_of(&read)?;
    ensure!(r["life_cycle"] == "PERSONALIZED", "{r}");
    ensure!(
        !read.contains(&serial) && !read.contains(&card_key),
        "{read}"
    );

    // A tap for each service, with a terminal certified for it.
    let (key, cert) = office.terminal("all-services", "transit,employment,rehab,welfare")?;
    let tap = |service: &str, extra: &[&str]| -> Result<serde_json::Value> {
        let out = run_ok(
            e2e_tests::card_tool()?
                .args([
                    "--reader",
                    &card.reader(),
                    "--json",
                    "tap",
                    "--service",
                    service,
                ])
                .arg("--terminal-key")
                .arg(&key)
                .arg("--terminal-cert")
                .arg(&cert)
                .args(["--server", &office.server.url])
                .args(extra),
        )?;
        json_of(&out)
    };
    for service in Service::ALL {
        let t = tap(service.name(), &[])?;
        ensure!(t["card_serial"] == serial.as_str(), "{t}");
        ensure!(t["issuer_verified"] == true, "{t}");
        ensure!(t["valid_now"] == true, "{t}");
        let got: Vec<String> = t["attributes"]
            .as_array()
            .context("attributes")?
            .iter()
            .filter_map(|a| a["name"].as_str().map(str::to_owned))
            .collect();
        ensure!(
            got == names_of(*service, &held),
            "{}: {got:?}",
            service.name()
        );
        // At most 2 logical exchanges per tap.
        ensure!(t["tap_wire"]["exchanges"] == 2, "{t}");
        if *service == Service::Employment {
            let name = t["attributes"]
                .as_array()
                .and_then(|a| {
                    a.iter()
                        .find(|x| x["id"] == AttributeId::Name as u8)
                        .and_then(|x| x["value"].as_str())
                })
                .unwrap_or_default();
            ensure!(name.starts_with("Test Holder "), "{t}");
        }
    }

    // Welfare: a debit with a card-signed receipt, and the balance.
    let t = tap("welfare", &["--debit", "30", "--balance"])?;
    let receipt = &t["receipt"];
    ensure!(receipt["amount"] == 30, "{t}");
    let after = receipt["balance_after"].as_u64().context("balance_after")?;
    ensure!(t["balance"][0] == after, "{t}");
    // SELECT, TERMINAL AUTHENTICATE, DEBIT: the purse comes in the receipt, no GET BALANCE.
    ensure!(t["total_wire"]["exchanges"] == 3, "{t}");

    // A voucher from the server, credited to the card.
    let out = run_ok(
        e2e_tests::card_tool()?
            .args(["--reader", &card.reader(), "--json", "credit"])
            .args(["--server", &office.server.url, "--token", &office.admin])
            .args(["--serial", &serial, "--amount", "50"]),
    )?;
    let c = json_of(&out)?;
    ensure!(c["balance"] == after + 50, "{c}");

    // A terminal certified for transit only cannot tap as employment: the card refuses it.
    let (tkey, tcert) = office.terminal("transit-only", "transit")?;
    let err = run_fails(
        e2e_tests::card_tool()?
            .args(["--reader", &card.reader(), "tap", "--service", "employment"])
            .arg("--terminal-key")
            .arg(&tkey)
            .arg("--terminal-cert")
            .arg(&tcert),
    )?;
    ensure!(err.contains("6982"), "{err}");

    // The card survives a restart of the virtual card: state, key and purse.
    card.remove()?;
    drop(card);
    let card2 = VirtualCard::insert(&state, 0, &[])?;
    let t = run_ok(
        e2e_tests::card_tool()?
            .args([
                "--reader",
                &card2.reader(),
                "--json",
                "tap",
                "--service",
                "welfare",
            ])
            .arg("--terminal-key")
            .arg(&key)
            .arg("--terminal-cert")
            .arg(&cert)
            .args(["--server", &office.server.url, "--balance"]),
    )?;
    let t = json_of(&t)?;
    ensure!(t["card_serial"] == serial.as_str(), "{t}");
    ensure!(t["balance"][0] == after + 50, "{t}");
    Ok(())
}

/// The server is down when personalization starts: nothing happens to the card, and the same
/// command works once the server is back.
#[test]
fn a_server_outage_leaves_a_blank_card_and_the_rerun_works() -> Result<()> {
    let _pcsc = pcsc_session()?;
    let mut office = Office::start()?;
    let app = office.application()?;
    let state = office.blank_card("outage")?;
    let card = VirtualCard::insert(&state, 0, &[])?;
    let port = office
        .server
        .url
        .rsplit(':')
        .next()
        .context("port")?
        .parse()?;

    office.server.stop();
    let err = run_fails(&mut office.personalize_cmd(0, app)?)?;
    ensure!(err.contains("cannot reach the issuance server"), "{err}");
    let read = json_of(&run_ok(e2e_tests::card_tool()?.args([
        "--reader",
        &card.reader(),
        "--json",
        "read",
    ]))?)?;
    ensure!(read["life_cycle"] == "BLANK", "{read}");

    office.server.serve_on(port)?;
    let done = json_of(&run_ok(&mut office.personalize_cmd(0, app)?)?)?;
    ensure!(done["application_id"] == app, "{done}");
    Ok(())
}

/// `batch` personalizes the blank cards of both readers at once, skipping a locked one, and says
/// which application got no card.
#[test]
fn batch_personalizes_the_blank_cards_of_every_reader() -> Result<()> {
    let _pcsc = pcsc_session()?;
    let office = Office::start()?;
    let apps = [
        office.application()?,
        office.application()?,
        office.application()?,
    ];
    let _a = VirtualCard::insert(&office.blank_card("batch-a")?, 0, &[])?;
    let _b = VirtualCard::insert(&office.blank_card("batch-b")?, 1, &[])?;
    let list = apps.map(|a| a.to_string()).join(",");
    let out = e2e_tests::run_output(
        e2e_tests::card_tool()?
            .args([
                "--json",
                "batch",
                "--server",
                &office.server.url,
                "--token",
                &office.clerk,
            ])
            .args(["--applications", &list])
            .arg("--journal")
            .arg(office.path("journal.json")),
        std::time::Duration::from_secs(60),
    )?;
    // Two cards for three applications: the run reports the third and fails.
    ensure!(!out.status.success());
    let s = json_of(&String::from_utf8_lossy(&out.stdout))?;
    ensure!(s["succeeded"] == 2 && s["failed"] == 1, "{s}");
    let results = s["results"].as_array().context("results")?;
    ensure!(
        results[0]["application_id"] == apps[0] && results[0]["ok"] == true,
        "{s}"
    );
    ensure!(
        results[1]["application_id"] == apps[1] && results[1]["ok"] == true,
        "{s}"
    );
    ensure!(results[2]["ok"] == false, "{s}");
    ensure!(results[0]["reader"] != results[1]["reader"], "{s}");
    Ok(())
}

/// `batch --sequential`: the operator inserts one card after another into one reader.
#[test]
fn batch_sequential_waits_for_each_card() -> Result<()> {
    let _pcsc = pcsc_session()?;
    let office = Office::start()?;
    let apps = [office.application()?, office.application()?];
    let first = office.blank_card("seq-1")?;
    let second = office.blank_card("seq-2")?;
    let list = apps.map(|a| a.to_string()).join(",");
    let log = office.path("batch.log");
    let mut batch = e2e_tests::Proc::spawn(
        "card-tool batch",
        e2e_tests::card_tool()?
            .args([
                "--reader",
                &e2e_tests::reader_name(0),
                "--json",
                "batch",
                "--sequential",
            ])
            .args(["--server", &office.server.url, "--token", &office.clerk])
            .args(["--applications", &list, "--wait", "30"])
            .arg("--journal")
            .arg(office.path("journal.json")),
        &log,
    )?;
    let life_cycle = |state: &std::path::Path| -> Result<String> {
        run_ok(
            std::process::Command::new(e2e_tests::binary("virtual-card", "virtual-card")?)
                .arg("info")
                .arg("--state")
                .arg(state),
        )
    };
    for state in [&first, &second] {
        let mut card = VirtualCard::insert(state, 0, &[])?;
        e2e_tests::wait_until(
            std::time::Duration::from_secs(30),
            "the card to be locked",
            || Ok(life_cycle(state)?.contains("PERSONALIZED")),
        )
        .with_context(|| batch.log())?;
        card.remove()?;
    }
    let status = batch.wait_exit(std::time::Duration::from_secs(30))?;
    ensure!(status.success(), "{}", batch.log());
    let s = json_of(batch.log().lines().last().unwrap_or_default())?;
    ensure!(s["succeeded"] == 2, "{s}");
    Ok(())
}
