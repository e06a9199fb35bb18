//! The demo's story as assertions, through the real stack: `issuance-server` on SQLite, pcscd
//! with two `virtual-card`s, `card-tool` personalizing them, four `terminal-sim` terminals
//! (transit, employment, rehab, welfare) syncing, tapping, and uploading their logs.
//!
//! It checks what each service point decides, sees and hears, that each sees only what its
//! service may read, the voucher and the debit with the card-signed receipt, a revoked card
//! refused by an up-to-date terminal (and accepted by an out-of-date one, which the back office
//! then flags), and what the back office counts.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use e2e_tests::terminal::{decision, Terminal};
use e2e_tests::{json_of, pcsc_session, run_ok, Office, VirtualCard};
use serde_json::{json, Value};

/// The two holders of the story.
fn wang_fang() -> Value {
    json!({
        "name": "王芳", "resident_id": "110101198001010029", "category": 1, "level": 1,
        "region": 110101, "entitlements": ["free_transit", "companion", "quota_employment"],
    })
}

fn li_qiang() -> Value {
    json!({
        "name": "李强", "resident_id": "110105197506150036", "category": 4, "level": 2,
        "region": 110105,
        "entitlements": ["free_transit", "rehab_subsidy", "quota_employment", "welfare_points"],
    })
}

/// The holder fields a tap put on the display.
fn shown_fields(report: &Value) -> Vec<String> {
    report["sees"]["holder"]
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

/// Checks the decision and that sight and sound agree with it (every outcome is seen and heard).
fn expect(report: &Value, outcome: &str, reason: &str) -> Result<()> {
    let (o, r) = decision(report)?;
    ensure!(
        (o.as_str(), r.as_str()) == (outcome, reason),
        "expected {outcome} ({reason}): {report}"
    );
    let color = report["sees"]["light"]["color"]
        .as_str()
        .unwrap_or_default();
    let want = match outcome {
        "accepted" => "green",
        "refused" => "red",
        _ => "amber",
    };
    ensure!(color == want, "light {color} for {outcome}: {report}");
    let hears = &report["hears"];
    ensure!(
        hears["tones"].as_array().is_some_and(|t| !t.is_empty()),
        "{report}"
    );
    for key in ["voice_zh", "voice_en"] {
        ensure!(
            hears[key].as_str().is_some_and(|v| !v.is_empty()),
            "no {key}: {report}"
        );
    }
    ensure!(
        report["sees"]["display"] == hears["voice_zh"],
        "display and voice differ: {report}"
    );
    Ok(())
}

#[test]
fn the_story_of_the_demo() -> Result<()> {
    let _pcsc = pcsc_session()?;
    let office = Office::start()?;
    let server = &office.server;

    // Register; the clerk may not approve (four eyes); the approver does.
    let mut ids = Vec::new();
    for applicant in [wang_fang(), li_qiang()] {
        let v = server.ok(
            "POST",
            "/api/v1/applications",
            &office.clerk,
            Some(applicant),
        )?;
        let id = v["id"].as_i64().context("id")?;
        let (status, refusal) = server.call(
            "POST",
            &format!("/api/v1/applications/{id}/approve"),
            Some(&office.clerk),
            Some(&json!({})),
        )?;
        ensure!(status == 403, "the clerk approved: {status} {refusal}");
        let v = server.ok(
            "POST",
            &format!("/api/v1/applications/{id}/approve"),
            &office.approver,
            Some(json!({})),
        )?;
        ensure!(v["state"] == "approved", "{v}");
        ids.push(id);
    }
    let (wang, li) = (ids[0], ids[1]);
    let li_app = server.ok(
        "GET",
        &format!("/api/v1/applications/{li}"),
        &office.clerk,
        None,
    )?;

    // Two blank cards, personalized with card-tool.
    let wang_card = VirtualCard::insert(&office.blank_card("wang")?, 0, &[])?;
    let li_card = VirtualCard::insert(&office.blank_card("li")?, 1, &[])?;
    let pw = json_of(&run_ok(&mut office.personalize_cmd(0, wang)?)?)?;
    let pl = json_of(&run_ok(&mut office.personalize_cmd(1, li)?)?)?;
    let wang_serial = pw["card_serial"].as_str().context("serial")?.to_owned();
    let li_serial = pl["card_serial"].as_str().context("serial")?.to_owned();
    ensure!(wang_serial != li_serial);
    let (wr, lr) = (wang_card.reader(), li_card.reader());

    // Four terminals.
    let gate = Terminal::ready(&office, "gate", "transit")?;
    let employer = Terminal::ready(&office, "employer", "employment")?;
    let rehab = Terminal::ready(&office, "rehab", "rehab")?;
    let shop = Terminal::ready(&office, "shop", "welfare")?;
    let mut taps: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    let mut count = |service: &'static str, report: &Value| {
        let e = taps.entry(service).or_default();
        e.0 += 1;
        e.1 += u64::from(report["outcome"] == "accepted");
    };

    // Transit: a free ride, the companion's passage, then too soon again; a second holder.
    let t = gate.tap(&wr, None)?;
    expect(&t, "accepted", "ok")?;
    ensure!(t["card_serial"] == wang_serial.as_str(), "{t}");
    let mut fields = shown_fields(&t);
    fields.sort();
    ensure!(
        fields == ["certificate_expiry", "entitlements"],
        "a gate may see only entitlements and expiry: {t}"
    );
    count("transit", &t);
    let t = gate.tap(&wr, None)?;
    expect(&t, "accepted", "companion_passage")?;
    count("transit", &t);
    let t = gate.tap(&wr, None)?;
    expect(&t, "refused", "passback")?;
    count("transit", &t);
    let t = gate.tap(&lr, None)?;
    expect(&t, "accepted", "ok")?;
    count("transit", &t);

    // Employment: the identity, and only to the employer.
    let t = employer.tap(&lr, None)?;
    expect(&t, "accepted", "ok")?;
    let h = &t["sees"]["holder"];
    ensure!(h["name"] == "李强", "{t}");
    ensure!(
        h["certificate_number"] == li_app["certificate_number"],
        "{t}"
    );
    ensure!(h["category"] == 4 && h["level"] == 2, "{t}");
    count("employment", &t);

    // Rehab: category and level, no name; a holder without the subsidy is refused.
    let t = rehab.tap(&lr, None)?;
    expect(&t, "accepted", "ok")?;
    ensure!(t["sees"]["holder"].get("name").is_none(), "{t}");
    ensure!(t["sees"]["holder"]["category"] == 4, "{t}");
    count("rehab", &t);
    let t = rehab.tap(&wr, None)?;
    expect(&t, "refused", "not_entitled")?;
    count("rehab", &t);

    // Welfare: the programme's initial points, a voucher credited, a debit with a receipt.
    let credit = json_of(&run_ok(
        e2e_tests::card_tool()?
            .args(["--reader", &lr, "--json", "credit"])
            .args(["--server", &server.url, "--token", &office.approver])
            .args(["--serial", &li_serial, "--amount", "50"]),
    )?)?;
    let balance = credit["balance"].as_u64().context("balance")?;
    ensure!(balance == 150, "100 initial points + 50: {credit}");
    let t = shop.tap(&lr, Some(30))?;
    expect(&t, "accepted", "ok")?;
    let debit = &t["sees"]["debit"];
    ensure!(
        debit["amount"] == 30 && debit["balance_after"] == 120,
        "{t}"
    );
    ensure!(
        debit["receipt"].as_str().is_some_and(|r| !r.is_empty()),
        "{t}"
    );
    count("welfare", &t);
    let t = shop.tap(&wr, Some(10))?;
    expect(&t, "refused", "not_entitled")?;
    count("welfare", &t);

    // Revocation: the gate syncs the delta and refuses the card; the employer's terminal did
    // not sync and accepts it.
    let v = server.ok(
        "POST",
        &format!("/api/v1/cards/{wang_serial}/revoke"),
        &office.approver,
        Some(json!({"reason": "lost"})),
    )?;
    ensure!(v["state"] == "revoked", "{v}");
    let sync = gate.sync()?;
    let status = sync["done"]
        .as_array()
        .and_then(|d| d.iter().find(|o| o["object"] == "status_list"))
        .context("status_list in the sync report")?;
    ensure!(
        status["action"] == "delta_applied" && status["from"] == 1 && status["epoch"] == 2,
        "{sync}"
    );
    let t = gate.tap(&wr, None)?;
    expect(&t, "refused", "revoked")?;
    count("transit", &t);
    // The story runs faster than life: the back office orders taps and revocations by whole
    // seconds, so the finder's tap at the employer waits for the clock to leave the second of
    // the revocation (the taps before it, in that same second, must not be flagged).
    let revoked_at = v["revoked_at"].as_u64().context("revoked_at")?;
    while std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        <= revoked_at
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let t = employer.tap(&wr, None)?;
    expect(&t, "accepted", "ok")?;
    ensure!(employer.status()?["status_epoch"] == 1);
    count("employment", &t);

    // The logs reach the back office: every record once, one receipt, one anomaly.
    let mut uploaded = 0;
    for t in [&gate, &employer, &rehab, &shop] {
        let u = t.upload()?;
        uploaded += u["accepted"].as_u64().context("accepted")?;
        let again = t.upload()?;
        ensure!(again["batches"] == 0, "a second upload sent {again}");
        ensure!(t.status()?["log_pending"] == 0);
    }
    let total: u64 = taps.values().map(|(n, _)| n).sum();
    ensure!(
        uploaded == total,
        "{uploaded} records accepted of {total} taps"
    );
    let stats = server.ok("GET", "/api/v1/stats", &office.admin, None)?;
    ensure!(stats["receipts"] == 1, "{stats}");
    ensure!(
        stats["revoked"] == 1 && stats["status_epoch"] == 2,
        "{stats}"
    );
    // Usage statistics never expose a person: the story has two cardholders, so every cell (a
    // service in a region on a day) has fewer than 5 distinct cards and its counts are withheld.
    // The cells are still listed, one per service tapped.
    let mut services = std::collections::BTreeSet::new();
    for u in stats["usage"].as_array().context("usage")? {
        ensure!(
            u["suppressed"] == true && u["taps"].is_null() && u["accepted"].is_null(),
            "a cell of two cardholders was shown: {u}"
        );
        services.insert(u["service"].as_str().unwrap_or_default().to_owned());
    }
    let expected: std::collections::BTreeSet<String> =
        taps.keys().map(|k| (*k).to_owned()).collect();
    ensure!(
        services == expected,
        "usage cells {services:?}, taps {expected:?}"
    );

    // The audit chain holds every change of the story.
    let out = run_ok(
        std::process::Command::new(e2e_tests::binary("issuance-server", "issuance-server")?)
            .args(["audit", "verify", "--data"])
            .arg(&server.data)
            .env_remove("DATABASE_URL"),
    )?;
    ensure!(out.contains("intact"), "{out}");

    // Exactly one tap is suspect: the lost card accepted by the out-of-date employer terminal
    // after its revocation. Its taps before the revocation used the list then in force.
    let anomalies = server.ok("GET", "/api/v1/anomalies", &office.admin, None)?;
    ensure!(
        stats["anomalies"] == 1,
        "expected 1 anomaly (the revoked card accepted offline), got {}: {anomalies}",
        stats["anomalies"]
    );
    Ok(())
}
