//! Faults through the real components: a card torn away in the middle of a debit, the issuance
//! server killed in the middle of a personalization, and updates a terminal must refuse (a
//! status delta for another epoch, a trust bundle older than the one installed).
//!
//! The network faults use the interceptor of `e2e_tests::proxy` between the client and the real
//! server: it holds a request while the test kills the server (SIGKILL), or serves a genuine
//! signed object out of its time (what a stale cache or an attacker on the path can do).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use e2e_tests::proxy::{Action, Proxy};
use e2e_tests::terminal::{decision, Terminal};
use e2e_tests::{
    json_of, pcsc_session, run_ok, run_output, wait_card, wait_until, Office, PcscLock, VirtualCard,
};
use issuance_server::keys::RingSigner;
use serde_json::Value;
use shared_crypto::model::{Outcome, Reason, TrustBundleBody};
use shared_crypto::{P256Signer, Signed};
use terminal_core::{Decision, ServiceRequest};
use terminal_sim::datadir::DataDir;
use terminal_sim::platform::SystemClock;
use terminal_sim::reader::{connect, ReaderChoice};
use terminal_sim::sim::Sim;

fn expect(report: &Value, outcome: &str, reason: &str) -> Result<()> {
    let (o, r) = decision(report)?;
    ensure!(
        (o.as_str(), r.as_str()) == (outcome, reason),
        "expected {outcome} ({reason}): {report}"
    );
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One welfare tap by the in-process terminal (the same terminal-sim code the binary runs; kept in
/// one process so that the terminal stays powered between the torn debit and its retry).
fn debit(sim: &mut Sim, reader: &str, amount: u32) -> Result<Decision> {
    let mut card = connect(&ReaderChoice {
        name: Some(reader.to_owned()),
        wait: Some(Duration::from_secs(10)),
    })?;
    let tap = sim.tap(&mut card, ServiceRequest::Welfare { amount })?;
    let _ = card.release();
    Ok(tap.decision)
}

/// What the torn-debit tests share: a card personalized and paid 5 points at the shop (the debit's
/// APDUs counted), then put back so that it carries out the next tap's DEBIT, of 7 points, and
/// leaves the field before its answer does: the points are gone from the card, the terminal has no
/// receipt. (Fields drop in order: the pcscd lock last.)
struct TornDebit {
    card: VirtualCard,
    at_shop: Sim,
    shop: Terminal,
    office: Office,
    serial: String,
    reader: String,
    first: Decision,
    _pcsc: PcscLock,
}

fn torn_debit() -> Result<TornDebit> {
    let pcsc = pcsc_session()?;
    let office = Office::start()?;
    let app = office.application()?;
    let state = office.blank_card("purse")?;
    let mut card = VirtualCard::insert(&state, 0, &[])?;
    let done = json_of(&run_ok(&mut office.personalize_cmd(0, app)?)?)?;
    let serial = done["card_serial"].as_str().context("serial")?.to_owned();
    let reader = card.reader();
    let shop = Terminal::ready(&office, "shop", "welfare")?;
    let mut at_shop = Sim::open(&DataDir::new(shop.path()), SystemClock::system())?;
    // A whole debit, counting its APDUs.
    let before = at_shop.terminal().wire_stats().apdus;
    let first = debit(&mut at_shop, &reader, 5)?;
    ensure!(first.accepted(), "{first:?}");
    let apdus = at_shop.terminal().wire_stats().apdus - before;
    ensure!((3..=10).contains(&apdus), "a debit tap took {apdus} APDUs");
    // The card answers every APDU of the next tap but the last (DEBIT): that one it carries out,
    // and it leaves the field before its answer does.
    card.remove()?;
    drop(card);
    let tear = (apdus - 1).to_string();
    let card = VirtualCard::insert(&state, 0, &["--tear-after", &tear, "--tear-mode", "after"])?;
    let torn = debit(&mut at_shop, &reader, 7)?;
    // (vpcd reports the vanished card as an empty answer, as some readers do; the terminal must
    // take that for an interrupted debit, not a malformed card.)
    ensure!(
        torn.outcome == Outcome::Refused && torn.reason == Reason::DebitInterrupted,
        "the torn debit was not recognised as interrupted: {:?} ({:?})",
        torn.reason,
        torn.outcome
    );
    ensure!(torn.debit.is_none() && torn.receipt().is_none(), "{torn:?}");
    // The card is away for a moment (pcscd may or may not notice), then back.
    let _ = wait_card(&reader, false, Duration::from_secs(2));
    wait_card(&reader, true, Duration::from_secs(10))?;
    Ok(TornDebit {
        card,
        at_shop,
        shop,
        office,
        serial,
        reader,
        first,
        _pcsc: pcsc,
    })
}

/// A welfare tap of `amount` at `sim`, tapped again while the reader reports no card (the holder
/// taps until the reader answers).
fn debit_when_present(sim: &mut Sim, reader: &str, amount: u32) -> Result<Decision> {
    let mut d = debit(sim, reader, amount)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while d.reason == Reason::NoCard && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        d = debit(sim, reader, amount)?;
    }
    Ok(d)
}

/// The card's purse `[balance, counter]` as `card-tool tap --balance` reads it with `terminal`'s
/// key and certificate (the JSON report).
fn purse_read_by(terminal: &Terminal, reader: &str) -> Result<Value> {
    json_of(&run_ok(
        e2e_tests::card_tool()?
            .args(["--reader", reader, "--json", "tap", "--service", "welfare"])
            .arg("--terminal-key")
            .arg(terminal.key_file())
            .arg("--terminal-cert")
            .arg(terminal.cert_file())
            .arg("--balance"),
    )?)
}

#[test]
fn a_debit_torn_in_the_middle_is_retried_once() -> Result<()> {
    let TornDebit {
        card,
        mut at_shop,
        shop,
        office,
        serial,
        reader,
        first,
        _pcsc,
    } = torn_debit()?;
    let d1 = first.debit.context("no debit")?;
    ensure!(d1.amount == 5 && d1.balance_after == 95, "{d1:?}");

    // The holder puts the card back: the terminal retries the same debit (same reference), and
    // the card answers with the receipt of the debit it already made instead of debiting again.
    let retry = debit_when_present(&mut at_shop, &reader, 7)?;
    ensure!(retry.accepted(), "{retry:?}\ncard log:\n{}", card.log());
    let d2 = retry.debit.context("no debit")?;
    ensure!(
        d2.balance_after == 88 && d2.counter == d1.counter + 1,
        "debited twice? {d2:?} after {d1:?}"
    );
    // The next debit continues the purse's sequence.
    let third = debit(&mut at_shop, &reader, 10)?;
    let d3 = third.debit.context("no debit")?;
    ensure!(
        d3.balance_after == 78 && d3.counter == d2.counter + 1,
        "{d3:?}"
    );
    drop(at_shop);

    // The card's purse, read by a terminal, agrees with the last receipt...
    let balance = purse_read_by(&shop, &reader)?;
    ensure!(balance["balance"][0] == 78, "{balance}");
    ensure!(balance["balance"][1] == d3.counter, "{balance}");
    // ... and the back office holds exactly the three receipts, counters in sequence.
    let up = shop.upload()?;
    ensure!(
        up["records"].as_u64() >= Some(4) && up["accepted"] == up["records"],
        "three debits and the torn tap at least: {up}"
    );
    let stats = office
        .server
        .ok("GET", "/api/v1/stats", &office.admin, None)?;
    ensure!(
        stats["receipts"] == 3 && stats["anomalies"] == 0,
        "{stats} (card {serial})"
    );
    Ok(())
}

#[test]
fn a_retry_after_the_card_paid_elsewhere_gets_the_stored_receipt() -> Result<()> {
    // A debit torn after the card made it; the card then pays at another terminal; back at the
    // first one, the retry finds the torn debit among the card's last three and gets its stored
    // receipt: debited once, and the office holds every receipt with no gap and no anomaly.
    let TornDebit {
        card,
        mut at_shop,
        shop,
        office,
        serial,
        reader,
        _pcsc,
        ..
    } = torn_debit()?;
    let bank = Terminal::ready(&office, "bank", "welfare")?;

    // At the bank: a debit of its own.
    let mut at_bank = Sim::open(&DataDir::new(bank.path()), SystemClock::system())?;
    let paid = debit_when_present(&mut at_bank, &reader, 3)?;
    ensure!(paid.accepted(), "{paid:?}\ncard log:\n{}", card.log());
    let d = paid.debit.context("no debit")?;
    ensure!((d.balance_after, d.counter) == (85, 3), "{d:?}");
    // Back at the shop, within its ten minutes: the retry is answered by the torn debit's receipt.
    let again = debit(&mut at_shop, &reader, 7)?;
    ensure!(again.accepted(), "{again:?}");
    let d = again.debit.context("no debit")?;
    ensure!(
        (d.balance_after, d.counter) == (88, 2),
        "debited twice? {d:?}"
    );
    drop((at_shop, at_bank));
    let balance = purse_read_by(&shop, &reader)?;
    ensure!(
        balance["balance"][0] == 85 && balance["balance"][1] == 3,
        "{balance}"
    );

    shop.upload()?;
    bank.upload()?;
    let stats = office
        .server
        .ok("GET", "/api/v1/stats", &office.admin, None)?;
    ensure!(
        stats["receipts"] == 3 && stats["anomalies"] == 0,
        "{stats} (card {serial})"
    );
    Ok(())
}
#[test]
fn the_server_killed_during_personalization_resumes_and_the_card_is_made_once() -> Result<()> {
    let _pcsc = pcsc_session()?;
    let mut office = Office::start()?;
    let port: u16 = office
        .server
        .url
        .rsplit(':')
        .next()
        .context("port")?
        .parse()?;
    let hold: Arc<Mutex<Option<&'static str>>> = Arc::new(Mutex::new(None));
    let h = Arc::clone(&hold);
    let proxy = Proxy::start(&office.server.url, move |r| {
        let mut target = lock(&h);
        match *target {
            Some(step) if r.method == "POST" && r.path.ends_with(step) => {
                *target = None;
                Action::Hold
            }
            _ => Action::Forward,
        }
    })?;
    let gate = Terminal::ready(&office, "gate", "transit")?;
    // card-tool personalize, talking to the server through the proxy.
    let personalize = |office: &Office, app: i64| -> Result<std::process::Command> {
        let mut cmd = e2e_tests::card_tool()?;
        cmd.args([
            "--reader",
            &e2e_tests::reader_name(0),
            "--json",
            "personalize",
        ])
        .args(["--server", &proxy.url, "--token", &office.clerk])
        .args(["--application", &app.to_string(), "--journal"])
        .arg(office.path("journal.json"));
        Ok(cmd)
    };

    // The server dies while it binds the card's key (before the card is written), and while it
    // confirms the card (after the card was locked).
    for (step, finished_interrupted) in [("/card-key", false), ("/confirm", true)] {
        let app = office.application()?;
        let card = VirtualCard::insert(&office.blank_card(&step[1..])?, 0, &[])?;
        *lock(&hold) = Some(step);
        let held = proxy.held();
        let mut cmd = personalize(&office, app)?;
        let run = std::thread::spawn(move || run_output(&mut cmd, Duration::from_secs(60)));
        wait_until(
            Duration::from_secs(30),
            "the request to reach the server",
            || Ok(proxy.held() > held),
        )?;
        office.server.stop(); // SIGKILL, the request in flight
        proxy.release();
        let first = run
            .join()
            .map_err(|_| anyhow!("the card-tool thread panicked"))??;
        let stderr = String::from_utf8_lossy(&first.stderr);
        ensure!(!first.status.success(), "{step}: the first run succeeded");
        ensure!(
            stderr.contains("run the same command again"),
            "{step}: the failure does not say what to do: {stderr}"
        );

        office.server.serve_on(port)?;
        let done = json_of(&run_ok(&mut personalize(&office, app)?)?)?;
        ensure!(done["application_id"] == app, "{done}");
        ensure!(
            done["finished_interrupted"] == finished_interrupted,
            "{step}: {done}"
        );
        let serial = done["card_serial"].as_str().context("serial")?.to_owned();
        let job = office.server.ok(
            "GET",
            &format!("/api/v1/personalization-jobs/{}", done["job_id"]),
            &office.clerk,
            None,
        )?;
        ensure!(
            job["state"] == "completed" && job["card_serial"] == serial.as_str(),
            "{job}"
        );
        let application = office.server.ok(
            "GET",
            &format!("/api/v1/applications/{app}"),
            &office.clerk,
            None,
        )?;
        ensure!(application["state"] == "active", "{application}");
        let c = office.server.ok(
            "GET",
            &format!("/api/v1/cards/{serial}"),
            &office.clerk,
            None,
        )?;
        ensure!(
            c["state"] == "active" && c["card_key"] == done["card_public_key"],
            "{step}: the server's card is not this card: {c} {done}"
        );
        // The card is whole: a terminal accepts it with the credential the server recorded.
        let t = gate.tap(&card.reader(), None)?;
        expect(&t, "accepted", "ok")?;
        ensure!(t["card_serial"] == serial.as_str(), "{t}");
        drop(card);
    }
    // One card per application, no half-made ones.
    let stats = office
        .server
        .ok("GET", "/api/v1/stats", &office.admin, None)?;
    ensure!(
        stats["cards"]["active"] == 2 && stats["cards"].as_object().is_some_and(|c| c.len() == 1),
        "{stats}"
    );
    ensure!(stats["jobs"]["completed"] == 2, "{stats}");
    Ok(())
}

/// The status-list entry of a sync report.
fn status_sync(report: &Value) -> Result<Value> {
    report["done"]
        .as_array()
        .and_then(|d| d.iter().find(|o| o["object"] == "status_list"))
        .cloned()
        .with_context(|| format!("no status_list in {report}"))
}

#[test]
fn a_status_delta_for_the_wrong_epoch_is_not_applied() -> Result<()> {
    let _pcsc = pcsc_session()?;
    let office = Office::start()?;
    let mut serials = Vec::new();
    let mut cards = Vec::new();
    for i in 0..2u8 {
        let app = office.application()?;
        cards.push(VirtualCard::insert(
            &office.blank_card(&format!("c{i}"))?,
            i,
            &[],
        )?);
        let done = json_of(&run_ok(&mut office.personalize_cmd(i, app)?)?)?;
        serials.push(done["card_serial"].as_str().context("serial")?.to_owned());
    }
    let wrong_delta: Arc<Mutex<Option<Vec<u8>>>> = Arc::new(Mutex::new(None));
    let list_down = Arc::new(AtomicBool::new(false));
    let (d, down) = (Arc::clone(&wrong_delta), Arc::clone(&list_down));
    let proxy = Proxy::start(&office.server.url, move |r| {
        if r.path.starts_with("/api/v1/status-list/delta") {
            if let Some(body) = lock(&d).clone() {
                return Action::Respond {
                    status: 200,
                    content_type: "application/octet-stream",
                    body,
                };
            }
        } else if r.path.starts_with("/api/v1/status-list") && down.load(Ordering::SeqCst) {
            return Action::Respond {
                status: 503,
                content_type: "application/json",
                body: br#"{"code":"unavailable","message":"try later"}"#.to_vec(),
            };
        }
        Action::Forward
    })?;
    let gate = Terminal::register(&office, "gate", "transit", &proxy.url)?;
    gate.sync()?;
    ensure!(gate.status()?["status_epoch"] == 1);

    // Card 0 is revoked in epoch 2, card 1 in epoch 3. The terminal, at epoch 1, is offered the
    // genuine, correctly signed delta from 2 to 3: applying it would miss card 0.
    for serial in &serials {
        office.server.ok(
            "POST",
            &format!("/api/v1/cards/{serial}/revoke"),
            &office.approver,
            Some(serde_json::json!({"reason": "stolen"})),
        )?;
    }
    let delta = office
        .server
        .get_bytes("/api/v1/status-list/delta?from=2")?;
    *lock(&wrong_delta) = Some(delta);

    // With no full list to fall back on, the terminal keeps what it has. The full list answers
    // 503 here, so a failure of `status_list` alone would pass whatever refused the delta: the
    // report must name the epoch mismatch itself.
    list_down.store(true, Ordering::SeqCst);
    let (ok, report, stderr) = gate.sync_output()?;
    ensure!(!ok, "the sync reported success: {report}");
    let why = report["failed"]
        .as_array()
        .and_then(|f| f.iter().find(|x| x[0] == "status_list"))
        .and_then(|x| x[1].as_str())
        .with_context(|| format!("no status_list failure: {report} {stderr}"))?;
    ensure!(
        why.contains("a delta from epoch 2 does not continue epoch 1"),
        "the refusal does not name the epochs: {why}"
    );
    ensure!(
        gate.status()?["status_epoch"] == 1,
        "the wrong delta moved the epoch"
    );
    // Nothing of the delta was applied: card 1 (revoked by it) still passes this terminal.
    expect(&gate.tap(&cards[1].reader(), None)?, "accepted", "ok")?;

    // With the full list back, the terminal refuses the delta again and installs the full list:
    // both revocations are in force.
    list_down.store(false, Ordering::SeqCst);
    let report = gate.sync()?;
    let s = status_sync(&report)?;
    ensure!(
        s["action"] == "installed" && s["from"] == 1 && s["epoch"] == 3,
        "{report}"
    );
    expect(&gate.tap(&cards[0].reader(), None)?, "refused", "revoked")?;
    expect(&gate.tap(&cards[1].reader(), None)?, "refused", "revoked")?;
    // The delta requests did go out (the test exercised the delta path).
    ensure!(
        proxy
            .seen()
            .iter()
            .filter(|r| r.path == "/api/v1/status-list/delta?from=1")
            .count()
            == 2,
        "{:?}",
        proxy
            .seen()
            .iter()
            .map(|r| r.path.clone())
            .collect::<Vec<_>>()
    );
    Ok(())
}

#[test]
fn a_trust_bundle_older_than_the_installed_one_is_refused() -> Result<()> {
    // No card here: no PC/SC lock needed.
    let office = Office::start()?;
    let served: Arc<Mutex<Option<Vec<u8>>>> = Arc::new(Mutex::new(None));
    let s = Arc::clone(&served);
    let proxy = Proxy::start(&office.server.url, move |r| match lock(&s).clone() {
        Some(body) if r.path == "/api/v1/trust-bundle" => Action::Respond {
            status: 200,
            content_type: "application/octet-stream",
            body,
        },
        _ => Action::Forward,
    })?;
    let gate = Terminal::register(&office, "gate", "transit", &proxy.url)?;
    gate.sync()?;
    ensure!(gate.status()?["bundle_epoch"] == 1);

    // The office's root signs a newer bundle (epoch 2, same keys): the terminal takes it.
    let genuine = office.server.get_bytes("/api/v1/trust-bundle")?;
    let signed = Signed::decode(&genuine).map_err(|e| anyhow!("{e}"))?;
    let body: TrustBundleBody = signed.decode_trusted().map_err(|e| anyhow!("{e}"))?;
    let certs: Vec<Vec<u8>> = body.certs.iter().map(|c| c.to_vec()).collect();
    let root_file = office.server.data.join("keys").join("root.p8");
    let root = RingSigner::from_pkcs8(&std::fs::read(&root_file)?)?;
    let now = card_tool::now();
    let newer = issuance_server::keys::trust_bundle(&root, 2, now, &certs)?;
    *lock(&served) = Some(newer.clone());
    let report = gate.sync()?;
    ensure!(gate.status()?["bundle_epoch"] == 2, "{report}");

    // The server (restored from an old backup, or someone on the path) offers epoch 1 again:
    // refused, epoch 2 stays; the other objects still update.
    *lock(&served) = None;
    let (ok, report, _) = gate.sync_output()?;
    ensure!(!ok, "{report}");
    let failed = report["failed"].as_array().context("failed")?;
    ensure!(
        failed.len() == 1
            && failed[0][0] == "trust_bundle"
            && failed[0][1]
                .as_str()
                .is_some_and(|m| m.contains("older than epoch 2")),
        "{report}"
    );
    ensure!(
        report["done"].as_array().is_some_and(|d| d.len() == 2),
        "{report}"
    );
    ensure!(gate.status()?["bundle_epoch"] == 2);

    // A bundle of a higher epoch signed by another key: refused too.
    let stranger = P256Signer::from_bytes(&[0x5A; 32]).map_err(|e| anyhow!("{e}"))?;
    let mut forged = Vec::new();
    {
        let body = TrustBundleBody {
            epoch: 3,
            issued_at: now,
            certs: body.certs,
        };
        forged.extend(shared_crypto::sig::sign(&body, &[], &stranger).map_err(|e| anyhow!("{e}"))?);
    }
    *lock(&served) = Some(forged);
    let (ok, report, _) = gate.sync_output()?;
    ensure!(!ok, "a bundle from another key was installed: {report}");
    ensure!(gate.status()?["bundle_epoch"] == 2);

    // The current bundle again is no error: it is up to date.
    *lock(&served) = Some(newer);
    let report = gate.sync()?;
    let b = report["done"]
        .as_array()
        .and_then(|d| d.iter().find(|o| o["object"] == "trust_bundle"))
        .cloned()
        .unwrap_or_default();
    if b["action"] != "up_to_date" {
        bail!("{report}");
    }
    Ok(())
}
