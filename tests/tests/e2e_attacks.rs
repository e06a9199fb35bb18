//! Attacks on the card and the terminal through the real components (DESIGN.md, threat model):
//! pcscd with the vpcd readers, `virtual-card` running the applet, `issuance-server`,
//! `terminal-sim` deciding as the terminal device does.
//!
//! * a cloned card: the credential and disclosures a genuine card released at a tap, loaded into
//!   an attacker's card emulator (`clone-card`) that lacks the card key: refused (`cloned_card`),
//!   whether it signs with its own key or replays the genuine card's old signature, at a gate and
//!   at a welfare shop (where the receipt is the proof);
//! * credentials signed by a key the terminal does not trust, and credentials already expired:
//!   cards personalized with the applet's own personalization driver and a chosen issuer key
//!   (the server only signs valid credentials): refused (`unknown_issuer`, `expired`);
//! * a terminal certified for transit asking for the certificate number: the card does not
//!   release it, and refuses to act as employment for it;
//! * a rogue reader without a terminal certificate, and a terminal certified by another root:
//!   nothing about the holder.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use card_applet::host::{personalize, CardProfile};
use card_applet::sim::TestRng;
use card_tool::keys::{read_wire_file, TerminalKey};
use card_tool::reader::{CardLink, Readers};
use e2e_tests::terminal::{decision, Terminal};
use e2e_tests::{
    binary, json_of, pcsc_session, reader_name, run_ok, wait_card, Office, Proc, VirtualCard,
};
use issuance_server::keys::RingSigner;
use serde_json::Value;
use shared_crypto::apdu::{exchange, select_command, ExchangeError, Transport, WireStats};
use shared_crypto::model::{
    AttributeId, AttributeSet, Disclosure, Entitlements, SelectResponse, Service, TapRequestBody,
    TapResponseBody, TerminalAuth,
};
use shared_crypto::scp03::diversify;
use shared_crypto::wire::{decode_versioned, encode_versioned};
use shared_crypto::{P256Signer, PublicKey, Signed, Signer};

fn now() -> u64 {
    card_tool::now()
}

fn expect(report: &Value, outcome: &str, reason: &str) -> Result<()> {
    let (o, r) = decision(report)?;
    ensure!(
        (o.as_str(), r.as_str()) == (outcome, reason),
        "expected {outcome} ({reason}): {report}"
    );
    Ok(())
}

/// Whether `needle` occurs in `hay`.
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

fn transmit(link: &mut CardLink, apdu: &[u8]) -> Result<Vec<u8>> {
    let mut rsp = [0u8; 300];
    let n = link.transceive(apdu, &mut rsp)?;
    Ok(rsp[..n].to_vec())
}

/// A tap done by hand as the terminal with `key` and certificate `cert`: SELECT, then TERMINAL
/// AUTHENTICATE for `service` asking for `requested`. Returns the card's whole answer (or its
/// refusal): exactly what a person operating that terminal can record.
fn record_tap(
    reader: &str,
    key: &dyn Signer,
    cert: &[u8],
    service: Service,
    requested: AttributeSet,
) -> Result<std::result::Result<Vec<u8>, u16>> {
    let readers = Readers::new()?;
    let mut link = readers.connect_any(Some(reader))?;
    let select = transmit(&mut link, &select_command())?;
    ensure!(
        select.ends_with(&[0x90, 0x00]),
        "SELECT: {}",
        hex::encode(&select)
    );
    let sel: SelectResponse =
        decode_versioned(&select[..select.len() - 2]).map_err(|e| anyhow!("SELECT answer: {e}"))?;
    let body = TapRequestBody {
        terminal_nonce: [7; 16],
        service,
        requested,
        time: now(),
        debit: None,
    };
    let request =
        shared_crypto::sig::sign(&body, &sel.challenge, key).map_err(|e| anyhow!("{e}"))?;
    let auth = encode_versioned(&TerminalAuth {
        terminal_cert: Signed::decode(cert).map_err(|e| anyhow!("{e}"))?,
        request: Signed::decode(&request).map_err(|e| anyhow!("{e}"))?,
    });
    let mut out = vec![0u8; 4096];
    let mut stats = WireStats::default();
    let r = exchange(
        &mut link, 0x80, 0x82, 0, 0, &auth, true, &mut out, &mut stats,
    );
    link.close();
    match r {
        Ok(n) => Ok(Ok(out[..n].to_vec())),
        Err(ExchangeError::Status(sw)) => Ok(Err(sw)),
        Err(e) => bail!("TERMINAL AUTHENTICATE failed: {e:?}"),
    }
}

/// The attributes a recorded answer disclosed.
fn disclosed(answer: &[u8]) -> Result<AttributeSet> {
    let signed = Signed::decode(answer).map_err(|e| anyhow!("{e}"))?;
    let body: TapResponseBody = signed.decode_trusted().map_err(|e| anyhow!("{e}"))?;
    let mut set = AttributeSet::NONE;
    for d in body.disclosures.iter() {
        set.0 |= 1 << (d.attribute as u8);
    }
    Ok(set)
}

/// The attacker's card emulator in a vpcd reader, removed when dropped.
struct CloneCard {
    proc: Option<Proc>,
    index: u8,
}

impl CloneCard {
    fn insert(dir: &Path, dump: &[u8], index: u8, mode: &str) -> Result<Self> {
        let file = dir.join(format!("dump-{mode}-{index}.hex"));
        std::fs::write(&file, hex::encode(dump))?;
        let mut proc = Proc::spawn(
            "clone-card",
            Command::new(binary("e2e-tests", "clone-card")?)
                .arg("--dump")
                .arg(&file)
                .args(["--reader-index", &index.to_string(), "--mode", mode]),
            &dir.join(format!("clone-{mode}-{index}.log")),
        )?;
        if let Err(e) = wait_card(&reader_name(index), true, Duration::from_secs(10)) {
            proc.check_alive()?;
            return Err(e.context(proc.log()));
        }
        Ok(CloneCard {
            proc: Some(proc),
            index,
        })
    }
}

impl Drop for CloneCard {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
            let _ = wait_card(&reader_name(self.index), false, Duration::from_secs(5));
        }
    }
}

#[test]
fn a_cloned_card_is_refused() -> Result<()> {
    let _pcsc = pcsc_session()?;
    let office = Office::start()?;
    let app = office.application()?;
    let genuine = VirtualCard::insert(&office.blank_card("genuine")?, 0, &[])?;
    let done = json_of(&run_ok(&mut office.personalize_cmd(0, app)?)?)?;
    let serial = done["card_serial"].as_str().context("serial")?.to_owned();
    let gate = Terminal::ready(&office, "gate", "transit")?;
    let shop = Terminal::ready(&office, "shop", "welfare")?;

    // The genuine card works at both (and the shop debits it once).
    expect(&gate.tap(&genuine.reader(), None)?, "accepted", "ok")?;
    let t = shop.tap(&genuine.reader(), Some(5))?;
    expect(&t, "accepted", "ok")?;
    let balance = t["sees"]["debit"]["balance_after"]
        .as_u64()
        .context("balance")?;

    // Dishonest operators of a gate and a shop record what the card tells their terminals.
    let mut dumps = Vec::new();
    for (t, service) in [(&gate, Service::Transit), (&shop, Service::Welfare)] {
        let key = TerminalKey::load(&t.key_file())?;
        let cert = read_wire_file(&t.cert_file())?;
        let dump = record_tap(
            &genuine.reader(),
            &key,
            &cert,
            service,
            service.release_policy(),
        )?
        .map_err(|sw| anyhow!("the genuine card refused its own terminal: {sw:04X}"))?;
        dumps.push(dump);
    }

    // The clone holds a valid, issuer-signed credential; it lacks the key the credential
    // certifies, so the signature over this tap cannot be made.
    for mode in ["sign", "replay"] {
        let _clone = CloneCard::insert(office.dir.path(), &dumps[0], 1, mode)?;
        let t = gate.tap(&reader_name(1), None)?;
        expect(&t, "refused", "cloned_card").with_context(|| format!("mode {mode}"))?;
        ensure!(
            t["sees"]["holder"]
                .as_object()
                .is_some_and(|h| h.is_empty()),
            "a refused clone showed holder data: {t}"
        );
    }
    // At the shop the clone also signs the receipt itself: refused, nothing debited.
    {
        let _clone = CloneCard::insert(office.dir.path(), &dumps[1], 1, "sign")?;
        let t = shop.tap(&reader_name(1), Some(5))?;
        expect(&t, "refused", "cloned_card")?;
        ensure!(t["sees"].get("debit").is_none_or(Value::is_null), "{t}");
    }

    // The genuine card's purse did not move; it still works.
    let t = shop.tap(&genuine.reader(), Some(5))?;
    expect(&t, "accepted", "ok")?;
    ensure!(
        t["sees"]["debit"]["balance_after"].as_u64() == Some(balance - 5),
        "{t}"
    );
    // The back office holds the two genuine receipts only.
    shop.upload()?;
    let stats = office
        .server
        .ok("GET", "/api/v1/stats", &office.admin, None)?;
    ensure!(stats["receipts"] == 2, "{stats}");
    let card = office.server.ok(
        "GET",
        &format!("/api/v1/cards/{serial}"),
        &office.clerk,
        None,
    )?;
    ensure!(card["state"] == "active", "{card}");
    Ok(())
}

/// Personalizes the blank card in `reader` with the applet's own driver and `issuer`; the card's
/// static keys come from `master` and the `div` the card was made with.
#[allow(clippy::too_many_arguments)]
fn personalize_with(
    reader: &str,
    master: &[u8; 16],
    div: [u8; 10],
    issuer: &dyn Signer,
    root: PublicKey,
    serial: [u8; 8],
    valid_from: u64,
    valid_until: u64,
) -> Result<()> {
    let expiry = (now() + 5 * 365 * 86_400).to_be_bytes();
    let entitlements = [Entitlements::FREE_TRANSIT | Entitlements::COMPANION];
    let disclosures = [
        Disclosure {
            attribute: AttributeId::Name,
            salt: [1; 16],
            value: "测试持证人".as_bytes(),
        },
        Disclosure {
            attribute: AttributeId::Entitlements,
            salt: [2; 16],
            value: &entitlements,
        },
        Disclosure {
            attribute: AttributeId::CertificateExpiry,
            salt: [3; 16],
            value: &expiry,
        },
    ];
    let profile = CardProfile {
        card_serial: serial,
        status_index: 4000 + u32::from(serial[7]),
        valid_from,
        valid_until,
        disclosures: &disclosures,
        root_key: root,
        initial_points: 0,
    };
    let readers = Readers::new()?;
    let mut link = readers.connect_any(Some(reader))?;
    let mut rng = TestRng::new(u64::from_be_bytes(serial));
    personalize(
        &mut link,
        &mut rng,
        &diversify(master, &div),
        issuer,
        &profile,
    )
    .map_err(|e| anyhow!("personalizing with a chosen issuer: {e}"))?;
    link.close();
    Ok(())
}

#[test]
fn credentials_from_an_unknown_issuer_or_expired_are_refused() -> Result<()> {
    let _pcsc = pcsc_session()?;
    let office = Office::start()?;
    let gate = Terminal::ready(&office, "gate", "transit")?;
    let master = office.server.scp03_master()?;
    let root = office
        .server
        .ok("GET", "/api/v1/root-key", &office.admin, None)?;
    let root = PublicKey::from_sec1(&hex::decode(
        root["public_key"].as_str().context("root key")?,
    )?)
    .map_err(|e| anyhow!("{e}"))?;
    // The office's real Issuer key, for an expired credential and for the control card.
    let issuer_file: PathBuf = office.server.data.join("keys").join("issuer.p8");
    let issuer = RingSigner::from_pkcs8(&std::fs::read(&issuer_file)?)?;
    // A key nobody certified: same form, no trust.
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| anyhow!("{e}"))?;
    let stranger = P256Signer::from_bytes(&secret).map_err(|e| anyhow!("{e}"))?;

    let t = now();
    let year = 365 * 86_400;
    let cases: [(&str, &dyn Signer, u64, u64, &str, &str); 3] = [
        (
            "unknown",
            &stranger,
            t - 60,
            t + year,
            "refused",
            "unknown_issuer",
        ),
        (
            "expired",
            &issuer,
            t - 2 * year,
            t - 86_400,
            "refused",
            "expired",
        ),
        ("control", &issuer, t - 60, t + year, "accepted", "ok"),
    ];
    for (i, (name, signer, from, until, outcome, reason)) in cases.into_iter().enumerate() {
        let state = office.path(&format!("{name}.card"));
        let div = [0x40 + i as u8; 10];
        VirtualCard::init_blank(&state, &master, Some(div))?;
        let mut card = VirtualCard::insert(&state, 0, &[])?;
        let serial = [0xE0, 0, 0, 0, 0, 0, 0, i as u8 + 1];
        personalize_with(
            &card.reader(),
            &master,
            div,
            signer,
            root,
            serial,
            from,
            until,
        )?;
        let report = gate.tap(&card.reader(), None)?;
        expect(&report, outcome, reason).with_context(|| format!("the {name} credential"))?;
        if outcome == "refused" {
            ensure!(
                report["sees"]["holder"]
                    .as_object()
                    .is_some_and(|h| h.is_empty()),
                "{report}"
            );
        }
        card.remove()?;
    }
    Ok(())
}

#[test]
fn a_transit_terminal_asking_for_the_certificate_number_gets_nothing_more() -> Result<()> {
    let _pcsc = pcsc_session()?;
    let office = Office::start()?;
    let app = office.application()?;
    let card = VirtualCard::insert(&office.blank_card("private")?, 0, &[])?;
    run_ok(&mut office.personalize_cmd(0, app)?)?;
    let application = office.server.ok(
        "GET",
        &format!("/api/v1/applications/{app}"),
        &office.clerk,
        None,
    )?;
    let number = application["certificate_number"]
        .as_str()
        .context("certificate number")?
        .to_owned();
    let name = application["name"].as_str().context("name")?.to_owned();
    let gate = Terminal::ready(&office, "gate", "transit")?;
    let key = TerminalKey::load(&gate.key_file())?;
    let cert = read_wire_file(&gate.cert_file())?;

    // Everything asked for: the card releases only what transit may read.
    let answer = record_tap(
        &card.reader(),
        &key,
        &cert,
        Service::Transit,
        AttributeSet::ALL,
    )?
    .map_err(|sw| anyhow!("refused with {sw:04X}"))?;
    let set = disclosed(&answer)?;
    ensure!(
        set.is_subset_of(Service::Transit.release_policy()),
        "released {set:?}"
    );
    ensure!(!set.contains(AttributeId::CertificateNumber) && !set.contains(AttributeId::Name));
    ensure!(
        !contains(&answer, number.as_bytes()),
        "the number is in the answer"
    );
    ensure!(
        !contains(&answer, name.as_bytes()),
        "the name is in the answer"
    );

    // Only the certificate number: the card releases nothing (and still answers the tap).
    let only = AttributeSet::of(&[AttributeId::CertificateNumber]);
    let answer = record_tap(&card.reader(), &key, &cert, Service::Transit, only)?
        .map_err(|sw| anyhow!("refused with {sw:04X}"))?;
    ensure!(disclosed(&answer)? == AttributeSet::NONE);
    ensure!(!contains(&answer, number.as_bytes()));

    // The same through card-tool, verifying every signature.
    let out = json_of(&run_ok(
        e2e_tests::card_tool()?
            .args([
                "--reader",
                &card.reader(),
                "--json",
                "tap",
                "--service",
                "transit",
            ])
            .arg("--terminal-key")
            .arg(gate.key_file())
            .arg("--terminal-cert")
            .arg(gate.cert_file())
            .args(["--server", &office.server.url])
            .args(["--attributes", "certificate_number,name"]),
    )?)?;
    ensure!(out["issuer_verified"] == true, "{out}");
    ensure!(
        out["attributes"].as_array().is_some_and(Vec::is_empty),
        "{out}"
    );

    // Claiming employment with a transit certificate: the card refuses the whole tap.
    match record_tap(
        &card.reader(),
        &key,
        &cert,
        Service::Employment,
        AttributeSet::ALL,
    )? {
        Err(0x6982) => {}
        other => bail!("a transit certificate tapping as employment got {other:?}"),
    }
    Ok(())
}

#[test]
fn a_rogue_reader_or_a_foreign_terminal_learns_nothing() -> Result<()> {
    let _pcsc = pcsc_session()?;
    let office = Office::start()?;
    let app = office.application()?;
    let card = VirtualCard::insert(&office.blank_card("pocket")?, 0, &[])?;
    let done = json_of(&run_ok(&mut office.personalize_cmd(0, app)?)?)?;
    let application = office.server.ok(
        "GET",
        &format!("/api/v1/applications/{app}"),
        &office.clerk,
        None,
    )?;
    let secrets: Vec<(&str, Vec<u8>)> = vec![
        (
            "serial",
            hex::decode(done["card_serial"].as_str().context("serial")?)?,
        ),
        (
            "card key",
            hex::decode(done["card_public_key"].as_str().context("key")?)?[1..].to_vec(),
        ),
        (
            "name",
            application["name"]
                .as_str()
                .context("name")?
                .as_bytes()
                .to_vec(),
        ),
        (
            "certificate number",
            application["certificate_number"]
                .as_str()
                .context("number")?
                .as_bytes()
                .to_vec(),
        ),
    ];
    let clean = |what: &str, bytes: &[u8]| -> Result<()> {
        for (name, s) in &secrets {
            ensure!(!contains(bytes, s), "{what} leaks the {name}");
        }
        Ok(())
    };

    // A phone's reader: SELECT and card-tool read show that this is a certificate card, no more.
    let read =
        run_ok(e2e_tests::card_tool()?.args(["--reader", &card.reader(), "--json", "read"]))?;
    clean("card-tool read", read.as_bytes())?;
    let r = json_of(&read)?;
    ensure!(r["life_cycle"] == "PERSONALIZED", "{r}");
    let readers = Readers::new()?;
    let mut link = readers.connect_any(Some(&card.reader()))?;
    let select = transmit(&mut link, &select_command())?;
    clean("SELECT", &select)?;
    // Purse commands without a terminal session: a status word, nothing else.
    for apdu in [
        vec![0x80, 0x5C, 0x00, 0x00, 0x08],
        vec![0x80, 0x30, 0x00, 0x00, 0x03, 1, 2, 3, 0x00],
        vec![0x80, 0x82, 0x00, 0x00, 0x03, 1, 2, 3, 0x00],
    ] {
        transmit(&mut link, &select_command())?;
        let r = transmit(&mut link, &apdu)?;
        ensure!(
            r.len() == 2 && r != [0x90, 0x00],
            "{}: {}",
            hex::encode(&apdu),
            hex::encode(&r)
        );
    }
    link.close();

    // A self-made terminal certificate (its own "root"): refused.
    let fake_root = P256Signer::from_bytes(&[9; 32]).map_err(|e| anyhow!("{e}"))?;
    let fake_key = P256Signer::from_bytes(&[10; 32]).map_err(|e| anyhow!("{e}"))?;
    let body = shared_crypto::model::KeyCertificateBody {
        key_id: fake_key.public_key().key_id(),
        role: shared_crypto::model::Role::Terminal,
        subject: "skimmer",
        region: 0,
        services: shared_crypto::model::ServiceSet::of(Service::ALL),
        public_key: fake_key.public_key().to_bytes(),
        valid_from: now() - 60,
        valid_until: now() + 3600,
    };
    let fake_cert = shared_crypto::sig::sign(&body, &[], &fake_root).map_err(|e| anyhow!("{e}"))?;
    for service in Service::ALL {
        match record_tap(
            &card.reader(),
            &fake_key,
            &fake_cert,
            *service,
            AttributeSet::ALL,
        )? {
            Err(0x6982) => {}
            other => bail!("a self-made certificate got {other:?}"),
        }
    }

    // A real terminal of another office (another root): the card turns it away; the terminal
    // asks its staff (the fault is the terminal's, not the holder's).
    let other = Office::start()?;
    let foreign = Terminal::ready(&other, "foreign-gate", "transit")?;
    let t = foreign.tap(&card.reader(), None)?;
    expect(&t, "ask_staff", "terminal_rejected")?;
    ensure!(t["card_serial"].is_null(), "{t}");
    clean("the foreign terminal's report", t.to_string().as_bytes())?;
    Ok(())
}
