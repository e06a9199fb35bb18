//! A reader without a valid terminal certificate learns nothing about the holder, not even the
//! serial: through pcscd, a personalized virtual card is probed with every instruction, forged
//! and misused terminal certificates, and replayed requests.

use anyhow::{ensure, Context, Result};
use card_tool::reader::Readers;
use card_tool::tap::{self, CardError, TapRequest};
use e2e_tests::{json_of, pcsc_session, run_ok, Office, VirtualCard};
use shared_crypto::apdu::{select_command, Transport};
use shared_crypto::model::{
    AttributeSet, KeyCertificateBody, Role, Service, ServiceSet, TapRequestBody, TerminalAuth,
};
use shared_crypto::wire::encode_versioned;
use shared_crypto::{P256Signer, Signed};

/// A test key from a seed (deterministic: these keys sign nothing of value).
fn test_key(seed: u8) -> Result<P256Signer> {
    let mut secret = [0u8; 32];
    for (i, b) in secret.iter_mut().enumerate() {
        *b = seed.wrapping_mul(31).wrapping_add(i as u8).wrapping_add(1);
    }
    P256Signer::from_bytes(&secret).map_err(|e| anyhow::anyhow!("{e}"))
}

fn transmit(link: &mut card_tool::reader::CardLink, apdu: &[u8]) -> Result<Vec<u8>> {
    let mut rsp = [0u8; 300];
    let n = link.transceive(apdu, &mut rsp)?;
    Ok(rsp[..n].to_vec())
}

/// Whether `needle` occurs in `hay`.
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.len() <= hay.len() && hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn nothing_about_the_holder_without_a_valid_terminal() -> Result<()> {
    let _pcsc = pcsc_session()?;
    let office = Office::start()?;
    let app = office.application()?;
    let state = office.blank_card("private")?;
    let card = VirtualCard::insert(&state, 0, &[])?;
    let done = json_of(&run_ok(&mut office.personalize_cmd(0, app)?)?)?;
    let serial = hex::decode(done["card_serial"].as_str().context("serial")?)?;
    let card_key = hex::decode(done["card_public_key"].as_str().context("key")?)?;
    // What must never leak: the serial, the card key, and the holder's name.
    let application = office.server.ok(
        "GET",
        &format!("/api/v1/applications/{app}"),
        &office.clerk,
        None,
    )?;
    let name = application["name"]
        .as_str()
        .context("name")?
        .as_bytes()
        .to_vec();
    let secrets: [(&str, &[u8]); 3] = [
        ("serial", &serial),
        ("card key", &card_key[1..]),
        ("name", &name),
    ];

    let readers = Readers::new()?;
    let mut link = readers.connect_any(Some(&card.reader()))?;

    // SELECT: version, life cycle and a fresh challenge, nothing else; never the same twice.
    let a = transmit(&mut link, &select_command())?;
    let b = transmit(&mut link, &select_command())?;
    ensure!(
        a.len() == 1 + 1 + 1 + 16 + 2,
        "SELECT answered {} bytes",
        a.len()
    );
    ensure!(
        a[..a.len() - 2] != b[..b.len() - 2],
        "the challenge repeated"
    );
    for (what, s) in secrets {
        ensure!(!contains(&a, s), "SELECT leaks the {what}");
    }

    // Every instruction of both classes, with and without data, answers a status word only.
    for cla in [0x00u8, 0x80, 0x84, 0x90] {
        for ins in 0..=255u8 {
            if cla == 0x00 && ins == 0xA4 {
                continue;
            }
            for apdu in [
                vec![cla, ins, 0, 0],
                vec![cla, ins, 0, 0, 0],
                vec![cla, ins, 0xDF, 0x01, 4, 1, 2, 3, 4, 0],
                vec![cla, ins, 0, 0xCF, 0],
            ] {
                let select = transmit(&mut link, &select_command())?;
                ensure!(
                    select.ends_with(&[0x90, 0x00]),
                    "SELECT: {}",
                    hex::encode(&select)
                );
                let r = transmit(&mut link, &apdu)?;
                ensure!(
                    r.len() == 2,
                    "{} answered {} bytes: {}",
                    hex::encode(&apdu),
                    r.len(),
                    hex::encode(&r)
                );
                // Only an intermediate block of a command chain (CLA bit 0x10) is acknowledged
                // with 9000; no complete command succeeds without a terminal.
                ensure!(
                    r != [0x90, 0x00] || cla & 0x10 != 0,
                    "{} succeeded",
                    hex::encode(&apdu)
                );
                if r == [0x90, 0x00] {
                    // A chain is open (the next SELECT would get 6883): a fresh session.
                    link.reset()?;
                }
            }
        }
    }

    // A terminal certificate signed by another root: refused, nothing released.
    let fake_root = test_key(1)?;
    let term = test_key(2)?;
    let now = card_tool::now();
    let body = KeyCertificateBody {
        key_id: term.public_key().key_id(),
        role: Role::Terminal,
        subject: "skimmer",
        region: 0,
        services: ServiceSet::of(Service::ALL),
        public_key: term.public_key().to_bytes(),
        valid_from: now - 60,
        valid_until: now + 3600,
    };
    let forged =
        shared_crypto::sig::sign(&body, &[], &fake_root).map_err(|e| anyhow::anyhow!("{e}"))?;
    for service in Service::ALL {
        let request = TapRequest {
            service: *service,
            requested: AttributeSet::ALL,
            now,
            debit: None,
            read_balance: false,
        };
        match tap::tap(&mut link, &term, &forged, None, &request) {
            Err(CardError::Status { sw: 0x6982, .. }) => {}
            other => anyhow::bail!("a forged certificate got {other:?}"),
        }
    }

    // A real terminal certificate, but for another service than asked: refused.
    let (key_file, cert_file) = office.terminal("transit", "transit")?;
    let key = card_tool::keys::TerminalKey::load(&key_file)?;
    let cert = card_tool::keys::read_wire_file(&cert_file)?;
    let request = TapRequest {
        service: Service::Employment,
        requested: AttributeSet::ALL,
        now,
        debit: None,
        read_balance: false,
    };
    match tap::tap(&mut link, &key, &cert, None, &request) {
        Err(CardError::Status { sw: 0x6982, .. }) => {}
        other => anyhow::bail!("a transit terminal tapping as employment got {other:?}"),
    }

    // The right certificate with a request signed over an old challenge (a replay): refused.
    let old = transmit(&mut link, &select_command())?;
    let old_challenge: [u8; 16] = old[3..19].try_into()?;
    let body = TapRequestBody {
        terminal_nonce: [5; 16],
        service: Service::Transit,
        requested: AttributeSet::ALL,
        time: now,
        debit: None,
    };
    let signed = shared_crypto::sig::sign(&body, &old_challenge, &key)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let auth = encode_versioned(&TerminalAuth {
        terminal_cert: Signed::decode(&cert).map_err(|e| anyhow::anyhow!("{e}"))?,
        request: Signed::decode(&signed).map_err(|e| anyhow::anyhow!("{e}"))?,
    });
    // A fresh SELECT makes a new challenge; the request signed over the old one must fail.
    transmit(&mut link, &select_command())?;
    let mut stats = shared_crypto::apdu::WireStats::default();
    let mut out = [0u8; 2048];
    let r = shared_crypto::apdu::exchange(
        &mut link, 0x80, 0x82, 0, 0, &auth, true, &mut out, &mut stats,
    );
    match r {
        Err(shared_crypto::apdu::ExchangeError::Status(0x6982)) => {}
        other => anyhow::bail!("a replayed request got {other:?}"),
    }

    // And the same terminal, properly, does get its (transit) attributes: the refusals above
    // were about the certificate, not a broken card.
    let ok = tap::tap(
        &mut link,
        &key,
        &cert,
        None,
        &TapRequest {
            service: Service::Transit,
            requested: AttributeSet::ALL,
            now,
            debit: None,
            read_balance: false,
        },
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    ensure!(ok.card_serial == hex::encode(&serial));
    ensure!(
        ok.attributes.iter().all(|a| a.name != "name"),
        "transit got the name"
    );
    link.close();
    Ok(())
}
