//! Benchmark of the card protocol through the real stack (pcscd + vpcd + virtual-card +
//! issuance-server): exchanges and bytes per tap and service, the transfer time of those bytes at
//! 106 kbit/s, the APDU round trip through pcscd, and seconds per card personalized.
//!
//! Run with `cargo run --release -p card-tool --example bench_card` (pcscd must be installed; the
//! harness starts it when none runs). Prints a table; writes the numbers as a flat JSON object to
//! the file named by `BENCH_OUT`, if set.
//!
//! Targets (issue 4): at most 2 logical exchanges per tap (3 with a debit), at most 900 bytes in
//! both directions, at most 1 s per card personalized on the virtual card.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Context, Result};
use card_tool::journal::Journal;
use card_tool::keys::{KeyFormat, TerminalKey};
use card_tool::reader::Readers;
use card_tool::server::Client;
use card_tool::tap::{self, TapRequest};
use e2e_tests::{pcsc_session, reader_name, Office, VirtualCard};
use shared_crypto::apdu::{select_command, Transport};
use shared_crypto::model::Service;

/// Cards personalized for the timing.
const CARDS: usize = 5;
/// Taps per service (the wire counts are the same every time; the times are averaged).
const TAPS: usize = 20;
/// SELECTs for the APDU round trip.
const ROUND_TRIPS: usize = 1000;
/// ISO 14443's slowest bit rate.
const KBIT_S: f64 = 106.0;

fn main() -> Result<()> {
    let _pcsc = pcsc_session()?;
    let office = Office::start()?;
    let client = Client::new(&office.server.url, Some(office.clerk.clone()), None)?;
    let journal = Journal::new(office.path("journal.json"));
    let mut out: BTreeMap<String, f64> = BTreeMap::new();

    // Seconds per card: blank card inserted, then the whole flow (SELECT .. confirm) timed.
    let mut total = 0.0;
    let mut last_state = None;
    for i in 0..CARDS {
        let app = office.application()?;
        let state = office.blank_card(&format!("bench-{i}"))?;
        let card = VirtualCard::insert(&state, 0, &[])?;
        let readers = Readers::new()?;
        let mut link = readers.connect_any(Some(&card.reader()))?;
        let started = Instant::now();
        card_tool::personalize::personalize(&mut link, &client, app, &journal)
            .with_context(|| format!("personalizing card {i}"))?;
        total += started.elapsed().as_secs_f64();
        link.close();
        drop(card);
        last_state = Some(state);
    }
    out.insert("personalize_s".into(), total / CARDS as f64);

    // Taps of the last card, one terminal certified for every service.
    let state = last_state.context("no card")?;
    let card = VirtualCard::insert(&state, 0, &[])?;
    let key = TerminalKey::generate(&office.path("bench.key"), KeyFormat::Pkcs8)?;
    let admin = Client::new(&office.server.url, Some(office.admin.clone()), None)?;
    let cert = admin
        .register_terminal(
            "bench terminal",
            &key.public_key().to_sec1(),
            &["transit", "employment", "rehab", "welfare"],
            0,
        )?
        .certificate;
    let trust = tap::Trust {
        root: admin.root_key()?,
        bundle: admin.trust_bundle()?,
    };
    let readers = Readers::new()?;
    let mut link = readers.connect_any(Some(&reader_name(card.index)))?;
    println!(
        "{:<11} {:>9} {:>5} {:>9} {:>8} {:>8} {:>11} {:>12}",
        "service",
        "exchanges",
        "apdus",
        "bytes_out",
        "bytes_in",
        "total",
        "air_ms@106k",
        "tap_ms(pcsc)"
    );
    for service in Service::ALL {
        let debit = (*service == Service::Welfare).then_some(1);
        let request = TapRequest {
            service: *service,
            requested: service.release_policy(),
            now: card_tool::now(),
            debit,
            read_balance: false,
        };
        let mut elapsed = 0.0;
        let mut report = None;
        for _ in 0..TAPS {
            let started = Instant::now();
            let r = tap::tap(&mut link, &key, &cert, Some(&trust), &request)
                .map_err(|e| anyhow::anyhow!("tap {}: {e}", service.name()))?;
            elapsed += started.elapsed().as_secs_f64();
            report = Some(r);
        }
        let r = report.context("no tap")?;
        // The welfare tap is counted with its debit (the contract's "3 with a debit").
        let w = if debit.is_some() {
            r.total_wire
        } else {
            r.tap_wire
        };
        let name = service.name();
        let ms = elapsed / TAPS as f64 * 1000.0;
        println!(
            "{name:<11} {:>9} {:>5} {:>9} {:>8} {:>8} {:>11.1} {:>12.2}",
            w.exchanges,
            w.apdus,
            w.bytes_out,
            w.bytes_in,
            w.total_bytes(),
            w.air_ms(KBIT_S),
            ms
        );
        out.insert(format!("tap_exchanges_{name}"), f64::from(w.exchanges));
        out.insert(format!("tap_apdus_{name}"), f64::from(w.apdus));
        out.insert(format!("tap_bytes_{name}"), f64::from(w.total_bytes()));
        out.insert(format!("tap_air_ms_106k_{name}"), w.air_ms(KBIT_S));
        out.insert(format!("tap_pcsc_ms_{name}"), ms);
    }

    // One APDU through pcscd and vpcd (TCP_QUICKACK keeps it in microseconds).
    let started = Instant::now();
    let mut rsp = [0u8; 64];
    for _ in 0..ROUND_TRIPS {
        link.transceive(&select_command(), &mut rsp)?;
    }
    let us = started.elapsed().as_secs_f64() / ROUND_TRIPS as f64 * 1e6;
    out.insert("apdu_roundtrip_pcsc_us".into(), us);
    link.close();

    println!();
    println!(
        "personalize_s          {:.3} s per card ({CARDS} cards; target <= 1 s)",
        out["personalize_s"]
    );
    println!("apdu_roundtrip_pcsc_us {us:.0} us per SELECT through pcscd");
    println!("targets: <= 2 exchanges per tap (3 with a debit), <= 900 bytes both ways");
    println!("air_ms@106k = bytes x 8 / 106 kbit/s (no framing, parity or frame waiting time)");

    if let Some(path) = std::env::var_os("BENCH_OUT") {
        let obj: serde_json::Map<String, serde_json::Value> = out
            .iter()
            .map(|(k, v)| {
                let n = serde_json::Number::from_f64(*v).unwrap_or_else(|| 0.into());
                (k.clone(), serde_json::Value::Number(n))
            })
            .collect();
        std::fs::write(&path, serde_json::to_string_pretty(&obj)? + "\n")
            .with_context(|| format!("writing {}", path.to_string_lossy()))?;
    }
    Ok(())
}
