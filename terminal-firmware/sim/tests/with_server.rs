//! `terminal-sim` as a service point runs it: the real binary against a real `issuance-server`
//! process, and a tap on a virtual card (personalized by `card-tool` from an approved
//! application) through pcscd and the vpcd reader. Harness: the `e2e-tests` crate.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use e2e_tests::{
    binary, card_tool, make_office_ca, pcsc_session, run_fails, run_ok, run_output, Server,
    VirtualCard,
};
use serde_json::{json, Value};

fn sim() -> Result<Command> {
    let mut cmd = Command::new(binary("terminal-sim", "terminal-sim")?);
    for var in [
        "TERMINAL_SIM_DATA",
        "TERMINAL_SIM_SERVER",
        "TERMINAL_SIM_ADMIN_TOKEN",
        "TERMINAL_SIM_READER",
    ] {
        cmd.env_remove(var);
    }
    // The tests match English messages (a tap's voice stays zh-CN: the variable sets only the
    // messages' language).
    cmd.env("TERMINAL_SIM_LANG", "en");
    Ok(cmd)
}

fn run(cmd: &mut Command) -> Result<Output> {
    run_output(cmd, Duration::from_secs(120))
}

fn json_of(out: &Output) -> Result<Value> {
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "not JSON:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn ok_json(cmd: &mut Command) -> Result<Value> {
    let out = run(cmd)?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    json_of(&out)
}

fn init(data: &Path, server: &Server, service: &str) -> Result<Value> {
    ok_json(
        sim()?
            .arg("--data")
            .arg(data)
            .args(["init", "--json", "--service", service, "--server"])
            .arg(&server.url)
            .args([
                "--subject",
                "test desk",
                "--region",
                "110105",
                "--admin-token",
            ])
            .arg(&server.admin_token),
    )
}

#[test]
fn init_sync_status_upload_against_a_real_server() -> Result<()> {
    let server = Server::start()?;
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("t");

    // A wrong pinned root key is refused before anything is created.
    let out = run(sim()?
        .arg("--data")
        .arg(&data)
        .args(["init", "--service", "rehab", "--server"])
        .arg(&server.url)
        // The P-256 base point: a valid key, but nobody's root.
        .args([
            "--root-key",
            "036b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296",
        ]))?;
    assert!(!out.status.success());
    assert!(!data.join("terminal.key").exists());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not the expected server"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let r = init(&data, &server, "rehab")?;
    assert_eq!(r["registered"], true, "{r}");
    let root = server.get_bytes("/api/v1/root-key")?;
    let root: Value = serde_json::from_slice(&root)?;
    assert_eq!(r["root_key"], root["public_key"]);

    // The server knows the terminal by the key id init printed.
    let admin = server.admin_token.clone();
    let list = server.ok("GET", "/api/v1/terminals", &admin, None)?;
    assert!(
        list.to_string().contains(r["key_id"].as_str().unwrap()),
        "{list}"
    );

    let s = ok_json(sim()?.arg("--data").arg(&data).args(["sync", "--json"]))?;
    assert_eq!(s["failed"], json!([]), "{s}");
    let objects: Vec<(&str, &str)> = s["done"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["object"].as_str().unwrap(), o["action"].as_str().unwrap()))
        .collect();
    assert_eq!(
        objects,
        [
            ("trust_bundle", "installed"),
            ("status_list", "installed"),
            ("service_rules", "installed")
        ]
    );

    // Nothing changed: a second sync installs nothing (a delta request answered 304).
    let s = ok_json(sim()?.arg("--data").arg(&data).args(["sync", "--json"]))?;
    assert!(
        s["done"]
            .as_array()
            .unwrap()
            .iter()
            .all(|o| o["action"] == "up_to_date"),
        "{s}"
    );

    let st = ok_json(sim()?.arg("--data").arg(&data).args(["status", "--json"]))?;
    assert!(st["bundle_epoch"].as_u64().is_some(), "{st}");
    assert!(st["status_epoch"].as_u64().is_some(), "{st}");
    assert_eq!(st["services"], json!(["rehab"]));
    assert_eq!(st["status_too_old"], false);
    assert_eq!(st["log_pending"], 0);

    let up = ok_json(sim()?.arg("--data").arg(&data).args(["upload", "--json"]))?;
    assert_eq!(up["batches"], 0, "{up}");

    // A second terminal with a bad token: refused with the server's reason, key kept for a retry.
    let data2 = tmp.path().join("t2");
    let out = run(sim()?
        .arg("--data")
        .arg(&data2)
        .args(["init", "--service", "transit", "--server"])
        .arg(&server.url)
        .args(["--admin-token", "not-a-token"]))?;
    assert!(!out.status.success());
    assert!(data2.join("terminal.key").is_file());
    let st = run(sim()?.arg("--data").arg(&data2).arg("status"))?;
    assert!(
        String::from_utf8_lossy(&st.stderr).contains("not registered yet"),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    Ok(())
}

/// A valid resident ID (GB 11643-1999 check digit X), born 1949.
const RESIDENT_ID: &str = "11010519491231002X";

#[test]
fn taps_on_a_virtual_card_through_pcscd_then_revocation_and_upload() -> Result<()> {
    let _pcsc = pcsc_session()?;
    let server = Server::start()?;
    let tmp = tempfile::tempdir()?;
    let state = tmp.path().join("card.json");
    VirtualCard::init_blank(&state, &server.scp03_master()?, None)?;
    let mut card = VirtualCard::insert(&state, 0, &[])?;
    let reader = card.reader();

    // An approved application (four eyes: a clerk submits, an approver approves).
    let clerk = server.add_user("clerk1", "clerk")?;
    let approver = server.add_user("approver1", "approver")?;
    let app = server.ok(
        "POST",
        "/api/v1/applications",
        &clerk,
        Some(json!({
            "name": "李四",
            "resident_id": RESIDENT_ID,
            "category": 1,
            "level": 2,
            "region": 110105,
            "entitlements": ["free_transit", "companion", "welfare_points"],
        })),
    )?;
    let id = app["id"].as_i64().context("application id")?;
    server.ok(
        "POST",
        &format!("/api/v1/applications/{id}/approve"),
        &approver,
        None,
    )?;
    run_ok(
        card_tool()?
            .args(["--reader", &reader, "personalize", "--server"])
            .arg(&server.url)
            .args([
                "--token",
                &clerk,
                "--application",
                &id.to_string(),
                "--journal",
            ])
            .arg(tmp.path().join("journal.json")),
    )?;

    let data = tmp.path().join("gate");
    init(&data, &server, "transit")?;
    ok_json(sim()?.arg("--data").arg(&data).arg("sync").arg("--json"))?;

    // The tap: accepted, green, and the voice says so in the chosen language.
    let out = run(sim()?.arg("--data").arg(&data).args([
        "tap", "--json", "--lang", "en", "--wait", "5", "--reader", &reader,
    ]))?;
    let tap = json_of(&out)?;
    assert_eq!(out.status.code(), Some(0), "{tap}");
    assert_eq!(tap["outcome"], "accepted", "{tap}");
    assert_eq!(tap["sees"]["light"]["color"], "green");
    assert_eq!(tap["hears"]["voice"], "Verified. Please go through.");
    assert_eq!(tap["hears"]["voice_zh"], "验证通过，请通行。");
    assert_eq!(tap["reader"], reader.as_str());
    // Minimum disclosure: a gate learns entitlements, never the name.
    assert!(tap["sees"]["holder"].get("name").is_none(), "{tap}");
    let serial = tap["card_serial"].as_str().context("serial")?.to_owned();

    // The text form carries both channels.
    let out = run(sim()?
        .arg("--data")
        .arg(&data)
        .args(["--now"])
        .arg((tap["time"].as_u64().unwrap() + 120).to_string())
        .args(["tap", "--reader", &reader]))?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("SEES") && text.contains("HEARS"), "{text}");

    // The office revokes the card: after a sync, the terminal refuses it (exit status 2).
    server.ok(
        "POST",
        &format!("/api/v1/cards/{serial}/revoke"),
        &server.admin_token,
        Some(json!({"reason": "lost"})),
    )?;
    let s = ok_json(sim()?.arg("--data").arg(&data).args(["sync", "--json"]))?;
    let status = s["done"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["object"] == "status_list")
        .cloned()
        .context("status list in sync report")?;
    assert_ne!(status["action"], "up_to_date", "{s}");
    let out = run(sim()?
        .arg("--data")
        .arg(&data)
        .arg("--now")
        .arg((tap["time"].as_u64().unwrap() + 600).to_string())
        .args(["tap", "--json", "--reader", &reader]))?;
    let refused = json_of(&out)?;
    assert_eq!(out.status.code(), Some(2), "{refused}");
    assert_eq!(refused["reason"], "revoked");
    assert_eq!(refused["sees"]["light"]["color"], "red");

    // Three taps in the log; upload sends them, the server accepts them once.
    let up = ok_json(sim()?.arg("--data").arg(&data).args(["upload", "--json"]))?;
    assert_eq!(up["records"], 3, "{up}");
    assert_eq!(up["accepted"], 3, "{up}");
    let st = ok_json(sim()?.arg("--data").arg(&data).args(["status", "--json"]))?;
    assert_eq!(st["log_pending"], 0, "{st}");
    let up = ok_json(sim()?.arg("--data").arg(&data).args(["upload", "--json"]))?;
    assert_eq!(up["batches"], 0, "uploaded twice: {up}");

    // The card leaves: a tap without --wait says there is no card.
    card.remove()?;
    let out = run(sim()?
        .arg("--data")
        .arg(&data)
        .args(["tap", "--reader", &reader]))?;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no card"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn a_desk_and_a_service_point_reach_the_office_over_https_with_its_ca() -> Result<()> {
    let _pcsc = pcsc_session()?;
    let mut server = Server::start()?;
    let tls = server.serve_tls()?;
    assert!(
        server.url.starts_with("https://localhost:"),
        "{}",
        server.url
    );
    let tmp = tempfile::tempdir()?;

    // Without the office CA the server's certificate is unknown: nothing is set up.
    let data = tmp.path().join("no-ca");
    let out = run(sim()?
        .arg("--data")
        .arg(&data)
        .args(["init", "--service", "rehab", "--server"])
        .arg(&server.url))?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    assert!(!data.join("terminal.key").exists());

    // Another office's CA is not this server's either.
    let other = make_office_ca(tmp.path())?;
    let data = tmp.path().join("other-ca");
    let out = run(sim()?
        .arg("--data")
        .arg(&data)
        .args(["init", "--service", "rehab", "--server"])
        .arg(&server.url)
        .arg("--ca-cert")
        .arg(&other.ca))?;
    assert!(!out.status.success());
    assert!(!data.join("terminal.key").exists());

    // Plain HTTP to another machine is refused before anything is sent.
    let out = run(sim()?.arg("--data").arg(tmp.path().join("plain")).args([
        "init",
        "--service",
        "rehab",
        "--server",
        "http://192.0.2.7:8080",
    ]))?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("plain HTTP to another machine"), "{err}");

    // With the office CA: registered, synced and uploading over HTTPS; the CA stays pinned in
    // the data directory for every later command.
    let data = tmp.path().join("t");
    let r = ok_json(
        sim()?
            .arg("--data")
            .arg(&data)
            .args(["init", "--json", "--service", "rehab", "--server"])
            .arg(&server.url)
            .arg("--ca-cert")
            .arg(&tls.ca)
            .arg("--admin-token")
            .arg(&server.admin_token),
    )?;
    assert_eq!(r["registered"], true, "{r}");
    assert_eq!(
        std::fs::read(data.join("server-ca.pem"))?,
        std::fs::read(&tls.ca)?
    );
    let s = ok_json(sim()?.arg("--data").arg(&data).args(["sync", "--json"]))?;
    assert_eq!(s["failed"], json!([]), "{s}");
    let up = ok_json(sim()?.arg("--data").arg(&data).args(["upload", "--json"]))?;
    assert_eq!(up["batches"], 0, "{up}");

    // The desk personalizes a card over HTTPS: without the office CA (or with plain HTTP to
    // another machine) nothing reaches the server and the card stays blank.
    let state = tmp.path().join("card.json");
    VirtualCard::init_blank(&state, &server.scp03_master()?, None)?;
    let card = VirtualCard::insert(&state, 0, &[])?;
    let reader = card.reader();
    let clerk = server.add_user("clerk1", "clerk")?;
    let approver = server.add_user("approver1", "approver")?;
    let id = server
        .approved_application(&clerk, &approver, e2e_tests::applicant(7))?
        .to_string();
    let personalize = |server_url: &str, ca: Option<&Path>| -> Result<Command> {
        let mut cmd = card_tool()?;
        if let Some(ca) = ca {
            cmd.arg("--ca-cert").arg(ca);
        }
        cmd.args(["--reader", &reader, "personalize", "--server", server_url])
            .args(["--token", &clerk, "--application", &id, "--journal"])
            .arg(tmp.path().join("journal.json"));
        Ok(cmd)
    };
    let err = run_fails(&mut personalize(&server.url, None)?)?;
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    let err = run_fails(&mut personalize(&server.url, Some(&other.ca))?)?;
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    let err = run_fails(&mut personalize("http://192.0.2.7:8080", None)?)?;
    assert!(err.contains("plain HTTP to another machine"), "{err}");
    let status: Value = serde_json::from_str(&run_ok(
        card_tool()?.args(["--json", "--reader", &reader, "status"]),
    )?)?;
    assert_eq!(status["life_cycle"], "BLANK", "{status}");
    run_ok(&mut personalize(&server.url, Some(&tls.ca))?)?;

    // The service point taps it and uploads the tap, all over HTTPS.
    let out = run(sim()?.arg("--data").arg(&data).args([
        "tap", "--json", "--lang", "en", "--wait", "5", "--reader", &reader,
    ]))?;
    let tap = json_of(&out)?;
    assert_eq!(tap["outcome"], "accepted", "{tap}");
    let up = ok_json(sim()?.arg("--data").arg(&data).args(["upload", "--json"]))?;
    assert_eq!(
        (up["records"].as_u64(), up["accepted"].as_u64()),
        (Some(1), Some(1)),
        "{up}"
    );

    // The pinned CA is what is trusted: replaced by another office's, sync fails on every object.
    std::fs::copy(&other.ca, data.join("server-ca.pem"))?;
    let out = run(sim()?.arg("--data").arg(&data).args(["sync", "--json"]))?;
    assert!(!out.status.success());
    let s = json_of(&out)?;
    assert_eq!(s["failed"].as_array().map(Vec::len), Some(3), "{s}");
    Ok(())
}
