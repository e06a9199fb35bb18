//! The back office through the real router, each test on SQLite and on PostgreSQL: tap-log
//! ingestion (replays, overlapping re-exports, conflicts, forged receipts), the points ledger
//! (counters out of order, twice, with gaps; balances), the fraud and fault signals (revoked
//! card, sequence gap, clock drift, impossible travel), and the usage statistics with their
//! suppression of small cells.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use common::{application, Office, Reply, Staff};
use issuance_server::keys::RingSigner;
use serde_json::{json, Value};
use shared_crypto::model::{
    LogBatchBody, Outcome, Reason, ReceiptBody, Role as KeyRole, Service, ServiceSet, TapRecord,
};
use shared_crypto::wire::ItemsBuf;
use shared_crypto::{Signed, Signer};

both_backends!(
    replay_overlap_and_conflict,
    forged_receipts_refuse_the_whole_batch,
    counters_out_of_order_twice_and_with_gaps,
    a_gap_filled_in_part_says_what_is_still_missing,
    interrupted_debits_that_completed_on_the_card,
    balances_must_agree_with_grants,
    revoked_card_accepted_after_revocation,
    sequence_gaps_and_clock_drift,
    impossible_travel_by_location_and_by_province,
    usage_statistics_exact_and_suppressed,
    roles_and_bad_parameters,
    terminal_locations,
    terminal_certificate_and_services,
    two_servers_on_one_database,
);

/// A registered terminal and its key.
struct Term {
    key: RingSigner,
    key_id: [u8; 8],
    url: String,
}

/// A personalized card and its key.
struct Card {
    serial: [u8; 8],
    key: RingSigner,
    index: u32,
}

impl Card {
    fn hex(&self) -> String {
        hex::encode(self.serial)
    }

    /// A receipt signed by this card for `term`.
    fn receipt(&self, term: &Term, counter: u32, amount: u32, balance_after: u32) -> Vec<u8> {
        self.receipt_at(term, counter, amount, balance_after, issuance_server::now())
    }

    fn receipt_at(
        &self,
        term: &Term,
        counter: u32,
        amount: u32,
        balance_after: u32,
        time: u64,
    ) -> Vec<u8> {
        let body = ReceiptBody {
            card_serial: self.serial,
            counter,
            amount,
            balance_after,
            terminal: term.key_id,
            time,
            reference: [counter as u8; 16],
        };
        shared_crypto::sig::sign(&body, &[], &self.key).unwrap()
    }
}

/// One tap record, owned.
#[derive(Clone, Debug)]
struct Rec {
    seq: u32,
    time: u64,
    service: Service,
    outcome: Outcome,
    reason: Reason,
    card: Option<[u8; 8]>,
    index: Option<u32>,
    epoch: u64,
    issued_at: u64,
    receipt: Option<Vec<u8>>,
}

impl Rec {
    fn tap(seq: u32, time: u64, service: Service, card: &Card) -> Rec {
        Rec {
            seq,
            time,
            service,
            outcome: Outcome::Accepted,
            reason: Reason::Ok,
            card: Some(card.serial),
            index: Some(card.index),
            epoch: 1,
            issued_at: time.saturating_sub(600),
            receipt: None,
        }
    }

    fn refused(mut self, outcome: Outcome, reason: Reason) -> Rec {
        self.outcome = outcome;
        self.reason = reason;
        self
    }

    fn with_receipt(mut self, receipt: Vec<u8>) -> Rec {
        self.receipt = Some(receipt);
        self
    }

    fn no_card(seq: u32, time: u64, service: Service) -> Rec {
        Rec {
            seq,
            time,
            service,
            outcome: Outcome::Refused,
            reason: Reason::NoCard,
            card: None,
            index: None,
            epoch: 1,
            issued_at: time.saturating_sub(600),
            receipt: None,
        }
    }
}

/// The terminal-signed batch of `recs` (which must run in sequence), made at `created_at`.
fn batch_at(term: &Term, recs: &[Rec], created_at: u64) -> Vec<u8> {
    batch_claiming(
        term,
        recs[0].seq,
        recs[recs.len() - 1].seq,
        recs,
        created_at,
    )
}

/// A terminal-signed batch of `recs` that claims to run from `first_seq` to `last_seq` (whether or
/// not the records do).
fn batch_claiming(
    term: &Term,
    first_seq: u32,
    last_seq: u32,
    recs: &[Rec],
    created_at: u64,
) -> Vec<u8> {
    let items: ItemsBuf = recs
        .iter()
        .map(|r| TapRecord {
            seq: r.seq,
            time: r.time,
            service: r.service,
            outcome: r.outcome,
            reason: r.reason,
            card_serial: r.card,
            status_index: r.index,
            status_epoch: r.epoch,
            status_issued_at: r.issued_at,
            receipt: r.receipt.as_deref().map(|w| Signed::decode(w).unwrap()),
        })
        .collect();
    let body = LogBatchBody {
        terminal: term.key_id,
        first_seq,
        last_seq,
        created_at,
        records: items.as_items(),
    };
    shared_crypto::sig::sign(&body, &[], &term.key).unwrap()
}

fn batch(term: &Term, recs: &[Rec]) -> Vec<u8> {
    batch_at(term, recs, issuance_server::now())
}

async fn upload(o: &Office, term: &Term, wire: Vec<u8>) -> Reply {
    o.send(
        Request::post(&term.url)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(Body::from(wire))
            .unwrap(),
    )
    .await
}

/// Uploads and expects 200; returns the answer.
async fn accept(o: &Office, term: &Term, wire: Vec<u8>) -> Value {
    let r = upload(o, term, wire).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.bytes)
    );
    r.json()
}

async fn terminal(
    o: &Office,
    s: &Staff,
    name: &str,
    region: u32,
    location: Option<(i64, i64)>,
) -> Term {
    let (key, _) = RingSigner::generate().unwrap();
    let mut body = json!({
        "subject": name,
        "public_key": hex::encode(key.public_key().to_sec1()),
        "services": ["transit", "employment", "rehab", "welfare"],
        "region": region,
    });
    if let Some((lat, lon)) = location {
        body["location"] = json!({"latitude": lat, "longitude": lon});
    }
    let r = o.post("/api/v1/terminals", &s.admin, body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json());
    let key_id = key.key_id();
    Term {
        url: format!("/api/v1/terminals/{}/logs", hex::encode(key_id)),
        key,
        key_id,
    }
}

async fn card(o: &Office, s: &Staff, n: u32) -> Card {
    let id = o.approved(s, application(n)).await;
    let (job, key) = o.personalize(s, id).await;
    Card {
        serial: hex::decode(job["card_serial"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap(),
        key,
        index: job["status_index"].as_u64().unwrap() as u32,
    }
}

async fn count(o: &Office, table: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
        .fetch_one(o.state.db.pool())
        .await
        .unwrap()
}

/// Rows of the tables an upload writes.
async fn stored(o: &Office) -> [i64; 5] {
    [
        count(o, "taps").await,
        count(o, "receipts").await,
        count(o, "anomalies").await,
        count(o, "log_batches").await,
        count(o, "audit_log").await,
    ]
}

/// The card's points statement, as `token` sees it.
async fn points(o: &Office, c: &Card, token: &str) -> Value {
    let r = o
        .get(&format!("/api/v1/cards/{}/points", c.hex()), Some(token))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json());
    r.json()
}

async fn anomalies(o: &Office, s: &Staff, query: &str) -> Vec<Value> {
    let r = o
        .get(&format!("/api/v1/anomalies{query}"), Some(&s.auditor))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json());
    r.json().as_array().unwrap().clone()
}

fn kinds(list: &[Value]) -> Vec<String> {
    list.iter()
        .map(|a| a["kind"].as_str().unwrap().to_owned())
        .collect()
}

async fn replay_overlap_and_conflict(o: Office) {
    let s = o.staff().await;
    let t = terminal(&o, &s, "Gate 1", 110105, None).await;
    let c = card(&o, &s, 1).await;
    let now = issuance_server::now();
    let recs: Vec<Rec> = (0..5)
        .map(|i| Rec::tap(i, now - 100 + u64::from(i), Service::Transit, &c))
        .collect();
    let first = batch(&t, &recs[..3]);
    let a = accept(&o, &t, first.clone()).await;
    assert_eq!(
        (
            a["accepted"].clone(),
            a["duplicate"].clone(),
            a["duplicates"].clone()
        ),
        (json!(3), json!(false), json!(0))
    );
    let after_first = stored(&o).await;
    // The same batch again: accepted once, nothing written (not even an audit entry).
    let a = accept(&o, &t, first).await;
    assert_eq!(
        (
            a["accepted"].clone(),
            a["duplicate"].clone(),
            a["duplicates"].clone()
        ),
        (json!(0), json!(true), json!(3))
    );
    assert_eq!(stored(&o).await, after_first);
    // After a restart the terminal re-exports from record 0 with two new records (and a new
    // creation time, so the batch bytes differ): only the new ones are stored.
    let overlap = batch_at(&t, &recs, now + 1);
    let a = accept(&o, &t, overlap.clone()).await;
    assert_eq!(
        (
            a["accepted"].clone(),
            a["duplicate"].clone(),
            a["duplicates"].clone()
        ),
        (json!(2), json!(false), json!(3))
    );
    assert_eq!(count(&o, "taps").await, 5);
    assert_eq!(count(&o, "log_batches").await, 2);
    let a = accept(&o, &t, overlap).await;
    assert_eq!(a["duplicate"], true);
    // A record that differs from the stored one with its number: 409, naming it, nothing stored
    // (record 5 is new but is not kept either).
    let before = stored(&o).await;
    let mut changed = recs[3..].to_vec();
    changed[0].time += 1;
    changed.push(Rec::tap(5, now, Service::Transit, &c));
    let r = upload(&o, &t, batch(&t, &changed)).await;
    r.refused(409, "batch_conflict");
    assert!(
        r.json()["message"].as_str().unwrap().contains("seq 3"),
        "{}",
        r.json()
    );
    assert_eq!(stored(&o).await, before);
    let mut changed = recs[3..].to_vec();
    changed[1].outcome = Outcome::Refused;
    changed[1].reason = Reason::Passback;
    let r = upload(&o, &t, batch(&t, &changed)).await;
    r.refused(409, "batch_conflict");
    assert!(r.json()["message"].as_str().unwrap().contains("seq 4"));
    assert_eq!(stored(&o).await, before);
    // A batch whose numbers wrap past u32::MAX is refused.
    let wrap = [
        Rec::tap(u32::MAX, now, Service::Transit, &c),
        Rec::tap(0, now, Service::Transit, &c),
    ];
    upload(&o, &t, batch(&t, &wrap))
        .await
        .refused(422, "malformed_batch");
    assert_eq!(stored(&o).await, before);
    // Records that do not run from first_seq to last_seq one by one: a gap inside, a number
    // twice, a last_seq beyond the records, a first_seq that is not the first record's.
    let tap = |seq| Rec::tap(seq, now, Service::Transit, &c);
    for (first, last, seqs) in [
        (20, 22, [20, 22]),
        (20, 21, [20, 20]),
        (20, 25, [20, 21]),
        (19, 20, [20, 21]),
    ] {
        let recs: Vec<Rec> = seqs.into_iter().map(tap).collect();
        let wire = batch_claiming(&t, first, last, &recs, issuance_server::now());
        upload(&o, &t, wire).await.refused(422, "malformed_batch");
    }
    assert_eq!(stored(&o).await, before);
    // Sequence from 0, clock right: no anomaly.
    assert!(anomalies(&o, &s, "").await.is_empty());
    // The upload is in the audit chain, and the chain holds.
    let audit = o
        .get("/api/v1/audit?limit=1000", Some(&s.auditor))
        .await
        .json();
    let uploads: Vec<&Value> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "logs.upload")
        .collect();
    assert_eq!(uploads.len(), 2);
    let v = o.get("/api/v1/audit/verify", Some(&s.auditor)).await.json();
    assert_eq!(v["ok"], true);
}

async fn forged_receipts_refuse_the_whole_batch(o: Office) {
    let s = o.staff().await;
    let t = terminal(&o, &s, "Shop", 110105, None).await;
    let other_terminal = terminal(&o, &s, "Other shop", 110105, None).await;
    let a = card(&o, &s, 2).await;
    let b = card(&o, &s, 3).await;
    let (stranger, _) = RingSigner::generate().unwrap();
    let unknown = Card {
        serial: [0x5A; 8],
        key: RingSigner::generate().unwrap().0,
        index: 9999,
    };
    let now = issuance_server::now();
    let good = a.receipt(&t, 1, 10, 90);
    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x40;
    // The card's receipt body signed by a stranger who claims to be the card.
    let decoded = Signed::decode(&good).unwrap();
    let body: ReceiptBody = decoded.decode_trusted().unwrap();
    let by_stranger = shared_crypto::sig::sign(&body, &[], &stranger).unwrap();
    let claimed = Signed::decode(&by_stranger).unwrap();
    let forged_signer = Signed {
        signer: a.key.key_id(),
        ..claimed
    }
    .to_vec();
    let cases: Vec<(&str, Rec)> = vec![
        (
            "bad signature",
            Rec::tap(1, now, Service::Welfare, &a).with_receipt(flipped.clone()),
        ),
        (
            "signed by another key",
            Rec::tap(1, now, Service::Welfare, &a).with_receipt(forged_signer),
        ),
        (
            "another card's receipt",
            Rec::tap(1, now, Service::Welfare, &a).with_receipt(b.receipt(&t, 1, 10, 90)),
        ),
        (
            "made for another terminal",
            Rec::tap(1, now, Service::Welfare, &a).with_receipt(a.receipt(
                &other_terminal,
                1,
                10,
                90,
            )),
        ),
        (
            "card unknown to this office",
            Rec::tap(1, now, Service::Welfare, &unknown)
                .with_receipt(unknown.receipt(&t, 1, 10, 90)),
        ),
        ("receipt without card", {
            let mut r = Rec::tap(1, now, Service::Welfare, &a).with_receipt(good.clone());
            r.card = None;
            r.index = None;
            r
        }),
    ];
    let before = stored(&o).await;
    for (what, forged) in cases {
        let recs = [
            Rec::tap(0, now - 10, Service::Welfare, &b).with_receipt(b.receipt(&t, 1, 5, 95)),
            forged,
            Rec::tap(2, now, Service::Transit, &a),
        ];
        let r = upload(&o, &t, batch(&t, &recs)).await;
        r.refused(422, "forged_receipt");
        let message = r.json()["message"].as_str().unwrap().to_owned();
        assert!(message.contains("record seq 1"), "{what}: {message}");
        assert_eq!(stored(&o).await, before, "{what}: something was stored");
    }
    // The genuine batch is accepted afterwards: the refusals used up nothing.
    let recs = [
        Rec::tap(0, now - 10, Service::Welfare, &b).with_receipt(b.receipt(&t, 1, 5, 95)),
        Rec::tap(1, now, Service::Welfare, &a).with_receipt(good),
        Rec::tap(2, now, Service::Transit, &a),
    ];
    let r = accept(&o, &t, batch(&t, &recs)).await;
    assert_eq!(
        (r["accepted"].clone(), r["receipts"].clone()),
        (json!(3), json!(2))
    );
    assert!(anomalies(&o, &s, "").await.is_empty());
    // Several forged receipts in a batch long enough to be verified in several parts at once
    // (64 receipts a part): the refusal names the lowest, whichever part fails first. Record
    // 65 fails at the start of the second part, while the first part has not yet reached its
    // forgery at record 60.
    let before = stored(&o).await;
    let long: Vec<Rec> = (0..200u32)
        .map(|i| {
            let receipt = match i {
                60 | 65 | 150 => flipped.clone(),
                _ => b.receipt(&t, 2 + i, 0, 95),
            };
            Rec::tap(3 + i, now, Service::Welfare, &b).with_receipt(receipt)
        })
        .collect();
    let r = upload(&o, &t, batch(&t, &long)).await;
    r.refused(422, "forged_receipt");
    let message = r.json()["message"].as_str().unwrap().to_owned();
    assert!(message.contains("record seq 63:"), "{message}");
    assert_eq!(stored(&o).await, before);
}

async fn interrupted_debits_that_completed_on_the_card(o: Office) {
    // A terminal logs a debit as interrupted (the card left the field before its answer came);
    // the card's next receipt, elsewhere, shows the counter the lost answer had. The gap's time
    // window holds the interrupted tap: the holder most likely paid for a refused purchase.
    let s = o.staff().await;
    let shop = terminal(&o, &s, "Shop", 110105, None).await;
    let bank = terminal(&o, &s, "Time bank", 110105, None).await;
    let (c, d, e) = (
        card(&o, &s, 5).await,
        card(&o, &s, 6).await,
        card(&o, &s, 7).await,
    );
    let t = issuance_server::now() - 1_000;
    let w = |seq, at: u64, card: &Card| Rec::tap(seq, at, Service::Welfare, card);
    let paid = |seq, at: u64, card: &Card, term: &Term, counter: u32| {
        w(seq, at, card).with_receipt(card.receipt_at(term, counter, 10, 100 - 10 * counter, at))
    };
    let interrupted = |seq, at: u64, card: &Card| {
        w(seq, at, card).refused(Outcome::Refused, Reason::DebitInterrupted)
    };
    let a = accept(
        &o,
        &shop,
        batch(
            &shop,
            &[
                paid(0, t, &c, &shop, 1),
                interrupted(1, t + 40, &c),
                paid(2, t, &d, &shop, 1),
                // After d's next receipt: not the debit its gap lacks.
                interrupted(3, t + 70, &d),
            ],
        ),
    )
    .await;
    assert_eq!(a["anomalies"], 0);
    let a = accept(
        &o,
        &bank,
        batch(
            &bank,
            &[
                paid(0, t + 80, &c, &bank, 3),
                paid(1, t + 50, &d, &bank, 3),
                paid(2, t, &e, &bank, 1),
                paid(3, t + 80, &e, &bank, 3),
            ],
        ),
    )
    .await;
    // Three gaps (counter 2 of each card), and c's interrupted debit.
    assert_eq!(a["anomalies"], 4);
    assert_eq!(anomalies(&o, &s, "?kind=counter_gap").await.len(), 3);
    let found = anomalies(&o, &s, "?kind=interrupted_debit_completed").await;
    assert_eq!(found.len(), 1, "{found:?}");
    let f = &found[0];
    assert_eq!(f["card_serial"], c.hex());
    assert_eq!(
        f["terminal"],
        hex::encode(bank.key_id),
        "shown by the bank's upload"
    );
    assert_eq!(
        f["evidence"],
        json!({
            "missing_from": 2,
            "missing_to": 2,
            "receipt_before_time": t,
            "receipt_after_time": t + 80,
            "interrupted_taps": [{"terminal": hex::encode(shop.key_id), "seq": 1, "time": t + 40}],
        })
    );
    let detail = f["detail"].as_str().unwrap();
    assert!(
        detail.contains("refund") && detail.contains("退还"),
        "{detail}"
    );
    assert!(f["resolved_at"].is_null());
    // The other order: e's gap is stored first, its interrupted tap arrives afterwards.
    let a = accept(&o, &shop, batch(&shop, &[interrupted(4, t + 30, &e)])).await;
    assert_eq!(a["anomalies"], 1);
    let found = anomalies(
        &o,
        &s,
        &format!("?kind=interrupted_debit_completed&card={}", e.hex()),
    )
    .await;
    assert_eq!(found.len(), 1);
    assert_eq!(
        found[0]["evidence"]["interrupted_taps"],
        json!([{"terminal": hex::encode(shop.key_id), "seq": 4, "time": t + 30}])
    );
    // Sent again, nothing is found twice.
    let a = accept(&o, &shop, batch(&shop, &[interrupted(4, t + 30, &e)])).await;
    assert_eq!(
        (a["accepted"].clone(), a["anomalies"].clone()),
        (json!(0), json!(0))
    );
    // c's lost receipt turns up (its holder tapped again and the card showed it): the gap and
    // the suspicion are both resolved; e's stays open.
    let a = accept(&o, &shop, batch(&shop, &[paid(5, t + 40, &c, &shop, 2)])).await;
    assert_eq!(
        (a["receipts"].clone(), a["anomalies"].clone()),
        (json!(1), json!(0))
    );
    let found = anomalies(&o, &s, "?kind=interrupted_debit_completed").await;
    let open: Vec<&Value> = found
        .iter()
        .filter(|f| f["resolved_at"].is_null())
        .collect();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0]["card_serial"], e.hex());
    let gaps = anomalies(&o, &s, &format!("?kind=counter_gap&card={}", c.hex())).await;
    assert!(gaps[0]["resolved_at"].is_i64());
}

async fn a_gap_filled_in_part_says_what_is_still_missing(o: Office) {
    let s = o.staff().await;
    let shop = terminal(&o, &s, "Shop", 110105, None).await;
    let c = card(&o, &s, 9).await;
    let now = issuance_server::now();
    // Debits of 10 from 100 points: counter n leaves 100 - 10 n. Counters 1 and 6 first.
    let paid = |seq: u32, counter: u32| {
        Rec::tap(seq, now - 100 + u64::from(seq), Service::Welfare, &c).with_receipt(c.receipt(
            &shop,
            counter,
            10,
            100 - 10 * counter,
        ))
    };
    accept(&o, &shop, batch(&shop, &[paid(0, 1), paid(1, 6)])).await;
    let gap = |gaps: &[Value]| {
        assert_eq!(gaps.len(), 1, "{gaps:?}");
        gaps[0].clone()
    };
    let g = gap(&anomalies(&o, &s, "?kind=counter_gap").await);
    assert_eq!(g["evidence"]["missing_from"], 2);
    assert_eq!(g["evidence"]["missing_to"], 5);
    assert!(g["evidence"].get("still_missing").is_none(), "{g}");
    // 3 and 4 arrive: the gap stays open, says 2 and 5 are still missing, keeps its range.
    let a = accept(&o, &shop, batch(&shop, &[paid(2, 3), paid(3, 4)])).await;
    assert_eq!(
        (a["receipts"].clone(), a["anomalies"].clone()),
        (json!(2), json!(0))
    );
    let g = gap(&anomalies(&o, &s, "?kind=counter_gap").await);
    assert!(g["resolved_at"].is_null(), "{g}");
    assert_eq!(g["evidence"]["still_missing"], json!([[2, 2], [5, 5]]));
    assert_eq!(g["evidence"]["still_missing_count"], 2);
    assert_eq!(
        (
            g["evidence"]["missing_from"].clone(),
            g["evidence"]["missing_to"].clone()
        ),
        (json!(2), json!(5))
    );
    let detail = g["detail"].as_str().unwrap();
    assert!(detail.contains("counter 2 to 5"), "{detail}");
    assert!(
        detail.ends_with("; still missing: 2, 5 (2 of 4)"),
        "{detail}"
    );
    // 5 arrives: one left, said once (the earlier update is replaced, not appended to).
    accept(&o, &shop, batch(&shop, &[paid(4, 5)])).await;
    let g = gap(&anomalies(&o, &s, "?kind=counter_gap").await);
    assert_eq!(g["evidence"]["still_missing"], json!([[2, 2]]));
    let detail = g["detail"].as_str().unwrap();
    assert_eq!(detail.matches("still missing").count(), 1, "{detail}");
    assert!(detail.ends_with("; still missing: 2 (1 of 4)"), "{detail}");
    // 2 arrives: resolved.
    accept(&o, &shop, batch(&shop, &[paid(5, 2)])).await;
    let g = gap(&anomalies(&o, &s, "?kind=counter_gap").await);
    assert!(g["resolved_at"].is_i64(), "{g}");
    assert_eq!(
        points(&o, &c, &s.auditor).await["missing_counters"],
        json!([])
    );
}

async fn counters_out_of_order_twice_and_with_gaps(o: Office) {
    let s = o.staff().await;
    let shop = terminal(&o, &s, "Shop", 110105, None).await;
    let bank = terminal(&o, &s, "Time bank", 110105, None).await;
    let c = card(&o, &s, 4).await;
    let now = issuance_server::now();
    let w = |seq, t: u64| Rec::tap(seq, t, Service::Welfare, &c);
    // Initial 100 points: counters 1 and 2, then 4 (3 is missing).
    accept(
        &o,
        &shop,
        batch(
            &shop,
            &[
                w(0, now - 50).with_receipt(c.receipt(&shop, 1, 10, 90)),
                w(1, now - 40).with_receipt(c.receipt(&shop, 2, 10, 80)),
            ],
        ),
    )
    .await;
    // (ECDSA signatures here are randomized: the receipt is kept to be sent again byte for byte.)
    let r4 = c.receipt(&shop, 4, 10, 60);
    let a = accept(
        &o,
        &shop,
        batch(&shop, &[w(2, now - 20).with_receipt(r4.clone())]),
    )
    .await;
    assert_eq!(a["anomalies"], 1);
    let gaps = anomalies(&o, &s, "?kind=counter_gap").await;
    assert_eq!(gaps.len(), 1);
    let g = &gaps[0];
    assert_eq!(g["card_serial"], c.hex());
    assert_eq!(g["terminal"], hex::encode(shop.key_id));
    assert_eq!(
        (
            g["evidence"]["missing_from"].clone(),
            g["evidence"]["missing_to"].clone()
        ),
        (json!(3), json!(3))
    );
    assert!(g["resolved_at"].is_null());
    assert!(g["detail"].as_str().unwrap().contains("counter 3"));
    let st = points(&o, &c, &s.clerk).await;
    assert_eq!(st["missing_counters"], json!([[3, 3]]));
    // Counter 3 arrives late, at another terminal: fine, the gap is resolved, no new anomaly.
    let a = accept(
        &o,
        &bank,
        batch(
            &bank,
            &[w(0, now - 30).with_receipt(c.receipt(&bank, 3, 10, 70))],
        ),
    )
    .await;
    assert_eq!(
        (a["receipts"].clone(), a["anomalies"].clone()),
        (json!(1), json!(0))
    );
    let gaps = anomalies(&o, &s, "?kind=counter_gap").await;
    assert_eq!(gaps.len(), 1);
    assert!(gaps[0]["resolved_at"].is_i64(), "{}", gaps[0]);
    let st = points(&o, &c, &s.auditor).await;
    assert_eq!(st["missing_counters"], json!([]));
    let counters: Vec<u64> = st["debits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["counter"].as_u64().unwrap())
        .collect();
    assert_eq!(counters, [1, 2, 3, 4]);
    assert_eq!(st["debits"][2]["terminal"], hex::encode(bank.key_id));
    assert_eq!(st["debits"][2]["tap_seq"], 0);
    assert_eq!(
        st["last_seen"],
        json!({"balance": 60, "counter": 4, "time": st["debits"][3]["time"]})
    );
    assert_eq!(st["initial_points"], 100);
    assert_eq!(st["totals"]["debited"], 40);
    assert_eq!(st["totals"]["expected_balance"], 60);

    // A rolled-back purse signs counter 4 again, differently: the batch is accepted (the receipt
    // is genuine), the ledger keeps the first, the anomaly holds both.
    let before = count(&o, "receipts").await;
    let second = c.receipt(&bank, 4, 25, 45);
    let dup = batch(&bank, &[w(1, now - 10).with_receipt(second.clone())]);
    let a = accept(&o, &bank, dup.clone()).await;
    assert_eq!(
        (
            a["accepted"].clone(),
            a["receipts"].clone(),
            a["anomalies"].clone()
        ),
        (json!(1), json!(0), json!(1))
    );
    assert_eq!(count(&o, "receipts").await, before);
    let twice = anomalies(
        &o,
        &s,
        &format!("?kind=counter_seen_twice&card={}", c.hex()),
    )
    .await;
    assert_eq!(twice.len(), 1);
    let e = &twice[0]["evidence"];
    assert_eq!(e["counter"], 4);
    assert_eq!(e["in_ledger"]["receipt"], hex::encode(&r4));
    assert_eq!(e["in_ledger"]["amount"], 10);
    assert_eq!(e["also_signed"]["receipt"], hex::encode(&second));
    assert_eq!(e["also_signed"]["amount"], 25);
    assert_eq!(e["also_signed"]["terminal"], hex::encode(bank.key_id));
    // Sent again: accepted once, the anomaly not repeated.
    let a = accept(&o, &bank, dup).await;
    assert_eq!(a["duplicate"], true);
    // The same (identical) receipt carried by a second record, e.g. a retried tap: no anomaly,
    // not stored twice.
    let a = accept(&o, &shop, batch(&shop, &[w(3, now - 5).with_receipt(r4)])).await;
    assert_eq!(
        (a["receipts"].clone(), a["anomalies"].clone()),
        (json!(0), json!(0))
    );
    assert_eq!(
        kinds(&anomalies(&o, &s, "").await),
        ["counter_gap", "counter_seen_twice"]
    );
    // The statement lists the card's anomalies too.
    let st = points(&o, &c, &s.approver).await;
    assert_eq!(
        kinds(st["anomalies"].as_array().unwrap()),
        ["counter_gap", "counter_seen_twice"]
    );
    assert_eq!(st["totals"]["debits"], 4);
}

async fn balances_must_agree_with_grants(o: Office) {
    let s = o.staff().await;
    let shop = terminal(&o, &s, "Shop", 110105, None).await;
    let c = card(&o, &s, 5).await;
    let r = o
        .post(
            &format!("/api/v1/cards/{}/vouchers", c.hex()),
            &s.approver,
            json!({"amount": 50}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let now = issuance_server::now();
    let w = |seq, t: u64| Rec::tap(seq, t, Service::Welfare, &c);
    // 100 initial + 50 granted: 30 debited leaving 120 is sound.
    let a = accept(
        &o,
        &shop,
        batch(
            &shop,
            &[w(0, now - 60).with_receipt(c.receipt(&shop, 1, 30, 120))],
        ),
    )
    .await;
    assert_eq!(a["anomalies"], 0);
    // Then 10 debited leaving 150: 40 more points credited, 90 in all, 50 granted.
    let a = accept(
        &o,
        &shop,
        batch(
            &shop,
            &[w(1, now - 50).with_receipt(c.receipt(&shop, 2, 10, 150))],
        ),
    )
    .await;
    assert_eq!(a["anomalies"], 1);
    let m = anomalies(&o, &s, "?kind=balance_mismatch").await;
    assert_eq!(m.len(), 1);
    let e = &m[0]["evidence"];
    assert_eq!(e["rule"], "credits_within_grants");
    assert_eq!(
        (
            e["counter"].clone(),
            e["implied_credits"].clone(),
            e["granted"].clone(),
            e["initial_points"].clone(),
            e["debited_through_counter"].clone()
        ),
        (json!(2), json!(90), json!(50), json!(100), json!(40))
    );
    // Then 10 debited leaving 100: 40 points vanished between receipts 2 and 3.
    accept(
        &o,
        &shop,
        batch(
            &shop,
            &[w(2, now - 40).with_receipt(c.receipt(&shop, 3, 10, 100))],
        ),
    )
    .await;
    let m = anomalies(&o, &s, "?kind=balance_mismatch").await;
    assert_eq!(m.len(), 2);
    let e = &m[1]["evidence"];
    assert_eq!(e["rule"], "consecutive_receipts");
    assert_eq!(
        (
            e["counter"].clone(),
            e["previous_balance_after"].clone(),
            e["amount"].clone(),
            e["balance_after"].clone(),
            e["implied_credit"].clone()
        ),
        (json!(3), json!(150), json!(10), json!(100), json!(-40))
    );
    assert!(m[1]["detail"]
        .as_str()
        .unwrap()
        .contains("40 points vanished"));
    let st = points(&o, &c, &s.auditor).await;
    assert_eq!(st["grants"].as_array().unwrap().len(), 1);
    assert_eq!(
        (
            st["grants"][0]["seq"].clone(),
            st["grants"][0]["amount"].clone()
        ),
        (json!(1), json!(50))
    );
    assert_eq!(st["totals"]["granted"], 50);
    assert_eq!(st["totals"]["debited"], 50);
    assert_eq!(st["totals"]["expected_balance"], 100);
    assert_eq!(st["last_seen"]["balance"], 100);
    assert_eq!(st["anomalies"].as_array().unwrap().len(), 2);
}

async fn revoked_card_accepted_after_revocation(o: Office) {
    let s = o.staff().await;
    let employer = terminal(&o, &s, "Employer", 110105, None).await;
    let c = card(&o, &s, 6).await;
    let listed = issuance_server::now() - 7200;
    // The card taps once before it is revoked (so the server knows it as a sound card when the
    // revocation comes: what it remembers of cards must not hide a revocation).
    let gate = terminal(&o, &s, "Gate", 110105, None).await;
    let early = Rec::tap(0, listed + 60, Service::Transit, &c);
    assert_eq!(
        accept(&o, &gate, batch(&gate, &[early])).await["anomalies"],
        0
    );
    let r = o
        .post(
            &format!("/api/v1/cards/{}/revoke", c.hex()),
            &s.approver,
            json!({"reason": "lost"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let revoked_at = r.json()["revoked_at"].as_u64().unwrap();
    let epoch: i64 = sqlx::query_scalar("SELECT epoch FROM revocations")
        .fetch_one(o.state.db.pool())
        .await
        .unwrap();
    let tap = |seq, time| {
        let mut r = Rec::tap(seq, time, Service::Employment, &c);
        r.issued_at = listed;
        r
    };
    let recs = [
        // Accepted before the revocation: sound, whatever the list's age.
        tap(0, revoked_at - 60),
        // Accepted after it by a terminal with the old list: flagged.
        tap(1, revoked_at + 5),
        // Refused after it: the terminal knew.
        tap(2, revoked_at + 9).refused(Outcome::Refused, Reason::Revoked),
        // Accepted in the very second of the revocation (as recorded): two clocks of whole
        // seconds cannot order them, so this is not evidence.
        tap(3, revoked_at),
    ];
    let wire = batch(&employer, &recs);
    let a = accept(&o, &employer, wire.clone()).await;
    assert_eq!(a["anomalies"], 1);
    let list = anomalies(&o, &s, "?kind=revoked_card_accepted").await;
    assert_eq!(list.len(), 1);
    let e = &list[0]["evidence"];
    assert_eq!(list[0]["card_serial"], c.hex());
    assert_eq!(e["seq"], 1);
    assert_eq!(e["revoked_at"], revoked_at);
    assert_eq!(e["revocation_epoch"], epoch);
    assert_eq!(e["status_epoch"], 1);
    assert_eq!(e["epochs_behind"], epoch - 1);
    assert_eq!(e["status_issued_at"], listed);
    assert_eq!(e["list_age_at_tap_s"], revoked_at + 5 - listed);
    assert_eq!(e["list_issued_before_revocation_s"], revoked_at - listed);
    assert!(list[0]["detail"]
        .as_str()
        .unwrap()
        .contains("5 s after its revocation"));
    // Not repeated when the batch comes again.
    accept(&o, &employer, wire).await;
    assert_eq!(anomalies(&o, &s, "").await.len(), 1);
}

async fn sequence_gaps_and_clock_drift(o: Office) {
    let s = o.staff().await;
    let t = terminal(&o, &s, "Gate", 110105, None).await;
    let c = card(&o, &s, 7).await;
    let now = issuance_server::now();
    let r = |seq: u32| Rec::tap(seq, now - 100 + u64::from(seq), Service::Transit, &c);
    accept(&o, &t, batch(&t, &[r(0), r(1)])).await;
    // Records 2 to 4 never came: the next batch starts at 5.
    let a = accept(&o, &t, batch(&t, &[r(5), r(6)])).await;
    assert_eq!(a["anomalies"], 1);
    let gaps = anomalies(
        &o,
        &s,
        &format!("?kind=sequence_gap&terminal={}", hex::encode(t.key_id)),
    )
    .await;
    assert_eq!(gaps.len(), 1);
    let e = &gaps[0]["evidence"];
    assert_eq!(
        (
            e["missing_from"].clone(),
            e["missing_to"].clone(),
            e["missing"].clone(),
            e["highest_stored"].clone()
        ),
        (json!(2), json!(4), json!(3), json!(1))
    );
    assert!(gaps[0]["card_serial"].is_null());
    assert!(gaps[0]["resolved_at"].is_null());
    // A first batch that does not start at 0 is a gap too.
    let t2 = terminal(&o, &s, "Gate 2", 110105, None).await;
    accept(&o, &t2, batch(&t2, &[r(3)])).await;
    let gaps = anomalies(
        &o,
        &s,
        &format!("?kind=sequence_gap&terminal={}", hex::encode(t2.key_id)),
    )
    .await;
    assert_eq!(
        (gaps.len(), gaps[0]["evidence"]["missing_to"].clone()),
        (1, json!(2))
    );
    // The late records fill the first terminal's gap: resolved.
    let a = accept(&o, &t, batch(&t, &[r(2), r(3), r(4)])).await;
    assert_eq!(a["anomalies"], 0);
    let gaps = anomalies(
        &o,
        &s,
        &format!("?kind=sequence_gap&terminal={}", hex::encode(t.key_id)),
    )
    .await;
    assert!(gaps[0]["resolved_at"].is_i64());

    // A clock 1000 s ahead of the server's (bound 300 s).
    let ahead = batch_at(&t, &[r(7)], now + 1000);
    let a = accept(&o, &t, ahead.clone()).await;
    assert_eq!(a["anomalies"], 1);
    let drift = anomalies(&o, &s, "?kind=clock_drift").await;
    assert_eq!(drift.len(), 1);
    let e = &drift[0]["evidence"];
    let d = e["drift_s"].as_i64().unwrap();
    assert!((995..=1000).contains(&d), "{d}");
    assert_eq!(
        (e["bound_s"].clone(), e["batch_created_at"].clone()),
        (json!(300), json!(now + 1000))
    );
    assert!(drift[0]["detail"].as_str().unwrap().contains("ahead of"));
    accept(&o, &t, ahead).await;
    // 200 s behind is within the bound; 400 s behind is not.
    let a = accept(&o, &t, batch_at(&t, &[r(8)], now - 200)).await;
    assert_eq!(a["anomalies"], 0);
    let a = accept(&o, &t, batch_at(&t, &[r(9)], now - 400)).await;
    assert_eq!(a["anomalies"], 1);
    let drift = anomalies(&o, &s, "?kind=clock_drift").await;
    assert_eq!(drift.len(), 2);
    assert!(drift[1]["evidence"]["drift_s"].as_i64().unwrap() <= -400);
    // `since` and `after` narrow the list; `limit` bounds it.
    let all = anomalies(&o, &s, "").await;
    assert_eq!(all.len(), 4);
    let first = all[0]["id"].as_i64().unwrap();
    assert_eq!(anomalies(&o, &s, &format!("?after={first}")).await.len(), 3);
    assert_eq!(anomalies(&o, &s, "?limit=2").await.len(), 2);
    assert_eq!(
        anomalies(&o, &s, &format!("?since={}", now + 3600))
            .await
            .len(),
        0
    );
    assert_eq!(
        anomalies(&o, &s, &format!("?since={}", now - 3600))
            .await
            .len(),
        4
    );
}

// Tian'anmen, Beijing and the Bund, Shanghai: about 1,067 km apart.
const BEIJING: (i64, i64) = (39_907_500, 116_397_200);
const SHANGHAI: (i64, i64) = (31_240_000, 121_490_000);

async fn impossible_travel_by_location_and_by_province(o: Office) {
    let s = o.staff().await;
    let bj = terminal(&o, &s, "Beijing gate", 110105, Some(BEIJING)).await;
    let sh = terminal(&o, &s, "Shanghai gate", 310101, Some(SHANGHAI)).await;
    let hebei = terminal(&o, &s, "Shijiazhuang gate", 130102, None).await;
    let bj2 = terminal(&o, &s, "Beijing bus", 110108, None).await;
    let x = card(&o, &s, 8).await;
    let y = card(&o, &s, 9).await;
    let z = card(&o, &s, 10).await;
    let t0 = issuance_server::now() - 20 * 3600;
    let tr = |seq, t, c: &Card| Rec::tap(seq, t, Service::Transit, c);
    // Card x: Beijing, then Shanghai one hour later (1,067 km/h), in batches of two terminals.
    accept(&o, &bj, batch(&bj, &[tr(0, t0, &x)])).await;
    let a = accept(
        &o,
        &sh,
        batch(&sh, &[tr(0, t0 + 3600, &x), tr(1, t0 + 6 * 3600, &x)]),
    )
    .await;
    assert_eq!(a["anomalies"], 1);
    let list = anomalies(&o, &s, &format!("?kind=impossible_travel&card={}", x.hex())).await;
    assert_eq!(list.len(), 1);
    let e = &list[0]["evidence"];
    assert_eq!(e["rule"], "location");
    assert_eq!(e["elapsed_s"], 3600);
    let km = e["distance_km"].as_f64().unwrap();
    assert!((1060.0..1075.0).contains(&km), "{km}");
    assert_eq!(e["taps"][0]["terminal"], hex::encode(bj.key_id));
    assert_eq!(e["taps"][1]["terminal"], hex::encode(sh.key_id));
    assert_eq!(e["taps"][1]["seq"], 0);
    assert_eq!(e["max_speed_kmh"], 250);
    // Card y: Beijing (region only), Hebei ten minutes later: two provinces within 30 min.
    // The later tap arrives first; the earlier one finds it as its nearest later tap.
    accept(&o, &hebei, batch(&hebei, &[tr(0, t0 + 600, &y)])).await;
    let a = accept(
        &o,
        &bj2,
        batch(&bj2, &[tr(0, t0, &y), tr(1, t0 + 7200, &y)]),
    )
    .await;
    assert_eq!(a["anomalies"], 1);
    let list = anomalies(&o, &s, &format!("?kind=impossible_travel&card={}", y.hex())).await;
    assert_eq!(list.len(), 1);
    let e = &list[0]["evidence"];
    assert_eq!(e["rule"], "province");
    assert_eq!(e["provinces"], json!([11, 13]));
    assert_eq!(e["elapsed_s"], 600);
    assert_eq!(e["province_window_s"], 1800);
    // Card z: the same places an hour apart, and Beijing to Shanghai in six hours: possible.
    accept(&o, &bj2, batch(&bj2, &[tr(2, t0 + 9000, &z)])).await;
    accept(&o, &hebei, batch(&hebei, &[tr(1, t0 + 9000 + 3600, &z)])).await;
    accept(&o, &bj, batch(&bj, &[tr(1, t0 + 20_000, &z)])).await;
    let a = accept(&o, &sh, batch(&sh, &[tr(2, t0 + 20_000 + 6 * 3600, &z)])).await;
    assert_eq!(a["anomalies"], 0);
    assert!(anomalies(&o, &s, &format!("?card={}", z.hex()))
        .await
        .is_empty());
    // A Beijing terminal with a location and one with only a region: judged by province (the
    // same), so not flagged even a second apart.
    let a = accept(&o, &bj, batch(&bj, &[tr(2, t0 + 7201, &y)])).await;
    assert_eq!(a["anomalies"], 0);
    // A tap between two others is compared with both neighbours: card x in Beijing halfway
    // between its two Shanghai taps (2.5 hours from each) gives two findings.
    let a = accept(&o, &bj, batch(&bj, &[tr(3, t0 + 12_600, &x)])).await;
    assert_eq!(a["anomalies"], 2, "{a}");
    let list = anomalies(&o, &s, &format!("?kind=impossible_travel&card={}", x.hex())).await;
    let elapsed: Vec<&Value> = list.iter().map(|a| &a["evidence"]["elapsed_s"]).collect();
    assert_eq!(elapsed, [&json!(3600), &json!(9000), &json!(9000)]);
    assert_eq!(anomalies(&o, &s, "?kind=impossible_travel").await.len(), 4);
}

async fn usage_statistics_exact_and_suppressed(o: Office) {
    let s = o.staff().await;
    let gate = terminal(&o, &s, "Gate", 110105, None).await;
    let shop = terminal(&o, &s, "Shop", 110108, None).await;
    let mut cards = Vec::new();
    for n in 0..6 {
        cards.push(card(&o, &s, 20 + n).await);
    }
    // Vouchers today for cards 0 to 4: 10 points each.
    for c in &cards[..5] {
        let r = o
            .post(
                &format!("/api/v1/cards/{}/vouchers", c.hex()),
                &s.approver,
                json!({"amount": 10}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    // Day 1 and day 2, China Standard Time (UTC+8, the default).
    let d1 = issuance_server::usage::parse_date("2024-05-01").unwrap();
    let at = |day: i64, hour: u64| (day * 86_400 - 8 * 3600) as u64 + hour * 3600;
    let c = &cards;
    let tr = |seq, t, i: usize| Rec::tap(seq, t, Service::Transit, &c[i]);
    let gate_recs = vec![
        tr(0, at(d1, 8), 0),
        tr(1, at(d1, 8), 1),
        tr(2, at(d1, 9), 2),
        tr(3, at(d1, 9), 3),
        tr(4, at(d1, 10), 4),
        tr(5, at(d1, 10), 0).refused(Outcome::Refused, Reason::Passback),
        tr(6, at(d1, 11), 5).refused(Outcome::Refused, Reason::Revoked),
        Rec::no_card(7, at(d1, 12), Service::Transit),
        tr(8, at(d1, 13), 1).refused(Outcome::AskStaff, Reason::StatusListOutdated),
        // 00:30 on day 2 in Beijing (16:30 UTC on day 1): a day-2 cell of one card.
        tr(9, at(d1 + 1, 0) + 1800, 0),
    ];
    accept(&o, &gate, batch(&gate, &gate_recs)).await;
    let w = |seq, t, i: usize| Rec::tap(seq, t, Service::Welfare, &c[i]);
    let shop_recs = vec![
        // Day 1: two cards debit (suppressed cell).
        w(0, at(d1, 15), 0).with_receipt(c[0].receipt_at(&shop, 1, 10, 90, at(d1, 15))),
        w(1, at(d1, 15), 1).with_receipt(c[1].receipt_at(&shop, 1, 20, 80, at(d1, 15))),
        // Day 2: five cards debit 5 each, card 0 twice.
        w(2, at(d1 + 1, 9), 0).with_receipt(c[0].receipt_at(&shop, 2, 5, 85, at(d1 + 1, 9))),
        w(3, at(d1 + 1, 9), 1).with_receipt(c[1].receipt_at(&shop, 2, 5, 75, at(d1 + 1, 9))),
        w(4, at(d1 + 1, 10), 2).with_receipt(c[2].receipt_at(&shop, 1, 5, 95, at(d1 + 1, 10))),
        w(5, at(d1 + 1, 10), 3).with_receipt(c[3].receipt_at(&shop, 1, 5, 95, at(d1 + 1, 10))),
        w(6, at(d1 + 1, 11), 4).with_receipt(c[4].receipt_at(&shop, 1, 5, 95, at(d1 + 1, 11))),
        w(7, at(d1 + 1, 12), 0).with_receipt(c[0].receipt_at(&shop, 3, 7, 78, at(d1 + 1, 12))),
        w(8, at(d1 + 1, 12), 5).refused(Outcome::Refused, Reason::PurseEmpty),
    ];
    accept(&o, &shop, batch(&shop, &shop_recs)).await;

    let r = o
        .get(
            "/api/v1/stats/usage?from=2024-05-01&to=2024-05-02",
            Some(&s.auditor),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let u = r.json();
    assert_eq!(u["min_distinct_cards"], 5);
    assert_eq!(u["utc_offset_s"], 28_800);
    let hidden = |date: &str, service: &str, region: u32| {
        json!({"date": date, "day": issuance_server::usage::parse_date(date).unwrap(),
               "service": service, "region": region, "suppressed": true, "taps": null,
               "accepted": null, "refused": null, "ask_staff": null, "refused_by_reason": null,
               "points_debited": null, "points_granted": null, "distinct_cards": null})
    };
    let expected = json!([
        {"date": "2024-05-01", "day": d1, "service": "transit", "region": 110105,
         "suppressed": false, "taps": 9, "accepted": 5, "refused": 3, "ask_staff": 1,
         "refused_by_reason": {"passback": 1, "revoked": 1, "no_card": 1,
                               "status_list_outdated": 1},
         "points_debited": 0, "points_granted": 0, "distinct_cards": 6},
        hidden("2024-05-01", "welfare", 110108),
        hidden("2024-05-02", "transit", 110105),
        {"date": "2024-05-02", "day": d1 + 1, "service": "welfare", "region": 110108,
         "suppressed": false, "taps": 7, "accepted": 6, "refused": 1, "ask_staff": 0,
         "refused_by_reason": {"purse_empty": 1},
         "points_debited": 32, "points_granted": 0, "distinct_cards": 6},
    ]);
    assert_eq!(u["rows"], expected, "{:#}", u["rows"]);
    assert_eq!(u["suppressed_rows"], 2);
    // Filters select cells; they never regroup them (a suppressed cell stays suppressed).
    let u = o
        .get(
            "/api/v1/stats/usage?service=welfare&region=110108&from=2024-05-01&to=2024-05-01",
            Some(&s.admin),
        )
        .await
        .json();
    assert_eq!(u["rows"], json!([expected[1]]));
    let u = o
        .get(
            "/api/v1/stats/usage?service=&region=110105&from=&to=2024-05-02",
            Some(&s.auditor),
        )
        .await
        .json();
    assert_eq!(u["rows"], json!([expected[0], expected[2]]));
    // Today's grants: welfare, the office's region (110105), five cards.
    let u = o
        .get(
            "/api/v1/stats/usage?service=welfare&region=110105",
            Some(&s.auditor),
        )
        .await
        .json();
    let rows = u["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{u}");
    let today = (issuance_server::now() as i64 + 28_800) / 86_400;
    assert_eq!(
        (
            rows[0]["day"].clone(),
            rows[0]["points_granted"].clone(),
            rows[0]["distinct_cards"].clone(),
            rows[0]["taps"].clone()
        ),
        (json!(today), json!(50), json!(5), json!(0))
    );
    // The CSV export: the same cells.
    let r = o
        .get(
            "/api/v1/stats/usage.csv?from=2024-05-01&to=2024-05-02",
            Some(&s.auditor),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers[header::CONTENT_TYPE], "text/csv; charset=utf-8");
    let text = String::from_utf8(r.bytes.clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    let head: Vec<&str> = lines[0].split(',').collect();
    assert_eq!(
        &head[..11],
        [
            "date",
            "service",
            "region",
            "suppressed",
            "taps",
            "accepted",
            "refused",
            "ask_staff",
            "points_debited",
            "points_granted",
            "distinct_cards"
        ]
    );
    let col = |name: &str| head.iter().position(|h| *h == name).unwrap();
    let row1: Vec<&str> = lines[1].split(',').collect();
    assert_eq!(
        &row1[..11],
        [
            "2024-05-01",
            "transit",
            "110105",
            "0",
            "9",
            "5",
            "3",
            "1",
            "0",
            "0",
            "6"
        ]
    );
    assert_eq!(row1[col("refused_passback")], "1");
    assert_eq!(row1[col("refused_purse_empty")], "0");
    let row2: Vec<&str> = lines[2].split(',').collect();
    assert_eq!(&row2[..4], ["2024-05-01", "welfare", "110108", "1"]);
    assert!(row2[4..].iter().all(|f| f.is_empty()), "{row2:?}");
    let row4: Vec<&str> = lines[4].split(',').collect();
    assert_eq!(row4[col("points_debited")], "32");
    let r2 = o
        .get(
            "/api/v1/stats/usage?from=2024-05-01&to=2024-05-02&format=csv",
            Some(&s.auditor),
        )
        .await;
    assert_eq!(r2.headers[header::CONTENT_TYPE], "text/csv; charset=utf-8");
    assert_eq!(r2.bytes, r.bytes);
    // The overview's usage is the same cells, newest first, suppressed the same way.
    let st = o.get("/api/v1/stats", Some(&s.auditor)).await.json();
    let usage = st["usage"].as_array().unwrap();
    assert_eq!(usage.len(), 5);
    assert_eq!(usage[0]["day"], today);
    let d1_transit = usage
        .iter()
        .find(|u| u["date"] == "2024-05-01" && u["service"] == "transit")
        .unwrap();
    assert_eq!(
        (
            d1_transit["taps"].clone(),
            d1_transit["accepted"].clone(),
            d1_transit["suppressed"].clone()
        ),
        (json!(9), json!(5), json!(false))
    );
    let d1_welfare = usage
        .iter()
        .find(|u| u["date"] == "2024-05-01" && u["service"] == "welfare")
        .unwrap();
    assert_eq!(
        (d1_welfare["taps"].clone(), d1_welfare["suppressed"].clone()),
        (Value::Null, json!(true))
    );
    assert_eq!(st["receipts"], 8);
}

async fn roles_and_bad_parameters(o: Office) {
    let s = o.staff().await;
    let c = card(&o, &s, 30).await;
    for path in [
        "/api/v1/stats/usage",
        "/api/v1/stats/usage.csv",
        "/api/v1/anomalies",
    ] {
        for token in [&s.clerk, &s.approver] {
            o.get(path, Some(token)).await.refused(403, "wrong_role");
        }
        o.get(path, None).await.refused(401, "unauthorized");
    }
    let points = format!("/api/v1/cards/{}/points", c.hex());
    for token in [&s.clerk, &s.approver, &s.auditor, &s.admin] {
        assert_eq!(o.get(&points, Some(token)).await.status, StatusCode::OK);
    }
    o.get(&points, None).await.refused(401, "unauthorized");
    o.get("/api/v1/cards/0011223344556677/points", Some(&s.clerk))
        .await
        .refused(404, "unknown_card");
    for bad in ["xyz", "00112233", "00112233445566778899"] {
        o.get(&format!("/api/v1/cards/{bad}/points"), Some(&s.clerk))
            .await
            .refused(400, "invalid_serial");
    }
    for q in [
        "from=2024-13-01",
        "from=2024-02-30",
        "to=yesterday",
        "from=2024-05-02&to=2024-05-01",
        "service=flying",
        "region=12",
        "region=1234567",
        "region=-110105",
        "format=xml",
        "colour=red",
    ] {
        let r = o
            .get(&format!("/api/v1/stats/usage?{q}"), Some(&s.auditor))
            .await;
        r.refused(400, "invalid_query");
        let r = o
            .get(&format!("/api/v1/stats/usage.csv?{q}"), Some(&s.auditor))
            .await;
        r.refused(400, "invalid_query");
    }
    for q in [
        "kind=nope",
        "terminal=zz",
        "terminal=0011",
        "card=123",
        "since=-1",
        "since=soon",
        "after=x",
        "limit=abc",
        "limit=1001",
        "colour=red",
    ] {
        let r = o
            .get(&format!("/api/v1/anomalies?{q}"), Some(&s.auditor))
            .await;
        r.refused(400, "invalid_query");
    }
    // An empty office answers empty lists, not errors.
    assert!(anomalies(&o, &s, "?kind=clock_drift&card=0011223344556677")
        .await
        .is_empty());
    let u = o.get("/api/v1/stats/usage", Some(&s.admin)).await.json();
    assert_eq!(u["rows"], json!([]));
    let r = o.get("/api/v1/stats/usage.csv", Some(&s.admin)).await;
    assert_eq!(String::from_utf8(r.bytes).unwrap().lines().count(), 1);
}

async fn terminal_locations(o: Office) {
    let s = o.staff().await;
    let (key, _) = RingSigner::generate().unwrap();
    let base = json!({
        "subject": "Located gate",
        "public_key": hex::encode(key.public_key().to_sec1()),
        "services": ["transit"],
        "region": 110105,
    });
    for (loc, status, code) in [
        (
            json!({"latitude": 90_000_001, "longitude": 0}),
            422,
            "invalid_location",
        ),
        (
            json!({"latitude": -90_000_001, "longitude": 0}),
            422,
            "invalid_location",
        ),
        (
            json!({"latitude": 0, "longitude": 180_000_001}),
            422,
            "invalid_location",
        ),
        (
            json!({"latitude": 0, "longitude": -180_000_001}),
            422,
            "invalid_location",
        ),
        (json!({"latitude": 0}), 422, "invalid_body"),
        (
            json!({"latitude": 0, "longitude": 0, "altitude": 5}),
            422,
            "invalid_body",
        ),
        (
            json!({"latitude": 39.9, "longitude": 116.4}),
            422,
            "invalid_body",
        ),
    ] {
        let mut b = base.clone();
        b["location"] = loc;
        o.post("/api/v1/terminals", &s.admin, b)
            .await
            .refused(status, code);
    }
    assert_eq!(count(&o, "terminals").await, 0);
    let mut b = base.clone();
    b["location"] = json!({"latitude": BEIJING.0, "longitude": BEIJING.1});
    let r = o.post("/api/v1/terminals", &s.admin, b).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(
        r.json()["location"],
        json!({"latitude": BEIJING.0, "longitude": BEIJING.1})
    );
    // Without a location (the field is optional), and the list shows both.
    let (key2, _) = RingSigner::generate().unwrap();
    let mut b = base;
    b["public_key"] = json!(hex::encode(key2.public_key().to_sec1()));
    let r = o.post("/api/v1/terminals", &s.admin, b).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert!(r.json()["location"].is_null());
    let list = o.get("/api/v1/terminals", Some(&s.auditor)).await.json();
    assert_eq!(list[0]["location"]["latitude"], BEIJING.0);
    assert!(list[1]["location"].is_null());
}

/// Replaces a terminal's registered certificate (tampering, or a certificate from before a
/// change of the rules).
async fn set_certificate(o: &Office, term: &Term, cert: &[u8]) {
    let r = sqlx::query("UPDATE terminals SET certificate = $1 WHERE key_id = $2")
        .bind(cert.to_vec())
        .bind(term.key_id.to_vec())
        .execute(o.state.db.pool())
        .await
        .unwrap();
    assert_eq!(r.rows_affected(), 1);
}

fn certificate(
    root: &RingSigner,
    role: KeyRole,
    key: &RingSigner,
    services: ServiceSet,
    valid: (u64, u64),
) -> Vec<u8> {
    issuance_server::keys::certify(
        root,
        &issuance_server::keys::CertRequest {
            role,
            subject: "Shop",
            region: 110105,
            services,
            public: key.public_key(),
            valid_from: valid.0,
            valid_until: valid.1,
        },
    )
    .unwrap()
}

async fn terminal_certificate_and_services(o: Office) {
    let s = o.staff().await;
    let t = terminal(&o, &s, "Shop", 110105, None).await;
    let c = card(&o, &s, 11).await;
    let now = issuance_server::now();
    let registered: Vec<u8> =
        sqlx::query_scalar("SELECT certificate FROM terminals WHERE key_id = $1")
            .bind(t.key_id.to_vec())
            .fetch_one(o.state.db.pool())
            .await
            .unwrap();
    let root = &o.state.keys.root;
    let all = ServiceSet::of(Service::ALL);
    let recs = [
        Rec::tap(0, now - 20, Service::Transit, &c),
        Rec::tap(1, now - 10, Service::Welfare, &c).with_receipt(c.receipt(&t, 1, 10, 90)),
    ];
    let wire = batch(&t, &recs);
    let before = stored(&o).await;
    let (stranger_root, _) = RingSigner::generate().unwrap();
    let (other_key, _) = RingSigner::generate().unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "expired a second ago",
            certificate(
                root,
                KeyRole::Terminal,
                &t.key,
                all,
                (now - 86_400, now - 1),
            ),
            "terminal_certificate_expired",
        ),
        (
            "not valid yet",
            certificate(
                root,
                KeyRole::Terminal,
                &t.key,
                all,
                (now + 600, now + 86_400),
            ),
            "terminal_certificate_not_yet_valid",
        ),
        (
            "signed by another root",
            certificate(
                &stranger_root,
                KeyRole::Terminal,
                &t.key,
                all,
                (now - 60, now + 86_400),
            ),
            "terminal_certificate_invalid",
        ),
        (
            "certifies another key",
            certificate(
                root,
                KeyRole::Terminal,
                &other_key,
                all,
                (now - 60, now + 86_400),
            ),
            "terminal_certificate_invalid",
        ),
        (
            "not a Terminal certificate",
            certificate(
                root,
                KeyRole::Voucher,
                &t.key,
                all,
                (now - 60, now + 86_400),
            ),
            "terminal_certificate_invalid",
        ),
        (
            "not a certificate at all",
            b"garbage".to_vec(),
            "terminal_certificate_invalid",
        ),
        (
            "tampered",
            {
                let mut bad = registered.clone();
                let last = bad.len() - 1;
                bad[last] ^= 0x01;
                bad
            },
            "terminal_certificate_invalid",
        ),
    ];
    // A batch the terminal did not sign, and a body that is no batch: until the batch proves
    // to be the terminal's, the answer says nothing of its certificate.
    let impostor = Term {
        key: RingSigner::generate().unwrap().0,
        key_id: t.key_id,
        url: t.url.clone(),
    };
    let mut altered = wire.clone();
    let last = altered.len() - 1;
    altered[last] ^= 0x01;
    let unsigned = [
        (batch(&impostor, &recs), 422, "wrong_signer"),
        (altered, 422, "bad_signature"),
        (b"garbage".to_vec(), 400, "malformed_batch"),
    ];
    for (what, cert, code) in cases {
        set_certificate(&o, &t, &cert).await;
        let r = upload(&o, &t, wire.clone()).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{what}: {}", r.json());
        r.refused(403, code);
        for (body, status, code) in &unsigned {
            upload(&o, &t, body.clone()).await.refused(*status, code);
        }
        assert_eq!(stored(&o).await, before, "{what}: something was stored");
    }
    // A certificate that allows transit only: the welfare record is refused, naming it.
    let transit = ServiceSet::of(&[Service::Transit]);
    set_certificate(
        &o,
        &t,
        &certificate(
            root,
            KeyRole::Terminal,
            &t.key,
            transit,
            (now - 60, now + 86_400),
        ),
    )
    .await;
    let r = upload(&o, &t, wire.clone()).await;
    r.refused(422, "service_not_certified");
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("record seq 1"),
        "{}",
        r.json()
    );
    assert_eq!(stored(&o).await, before);
    // Its transit record alone is accepted: the check is per record.
    let a = accept(&o, &t, batch(&t, &recs[..1])).await;
    assert_eq!(a["accepted"], 1);
    // Registered as the office made it (valid from registration for two years, all four
    // services): the whole batch goes in, the first record once.
    set_certificate(&o, &t, &registered).await;
    let a = accept(&o, &t, wire).await;
    assert_eq!(
        (
            a["accepted"].clone(),
            a["duplicates"].clone(),
            a["receipts"].clone()
        ),
        (json!(1), json!(1), json!(1))
    );
    // A terminal registered for welfare only cannot log a transit tap.
    let (key, _) = RingSigner::generate().unwrap();
    let r = o
        .post(
            "/api/v1/terminals",
            &s.admin,
            json!({
                "subject": "Welfare shop",
                "public_key": hex::encode(key.public_key().to_sec1()),
                "services": ["welfare"],
                "region": 110105,
            }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json());
    let key_id = key.key_id();
    let shop = Term {
        url: format!("/api/v1/terminals/{}/logs", hex::encode(key_id)),
        key,
        key_id,
    };
    let r = upload(
        &o,
        &shop,
        batch(&shop, &[Rec::tap(0, now - 5, Service::Transit, &c)]),
    )
    .await;
    r.refused(422, "service_not_certified");
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("record seq 0"));
}

/// Two server processes on one database (as two instances behind a balancer on PostgreSQL, or
/// a second `serve` on the same SQLite file): each keeps what it read of the cards' running
/// totals, and must notice the other's commits. A card's receipts alternate between the two;
/// a server that trusted its own stale totals would see counter 3 follow counter 1 (a gap
/// anomaly) and write a total of two receipts over the three stored.
async fn two_servers_on_one_database(o: Office) {
    let s = o.staff().await;
    let shop = terminal(&o, &s, "Shop", 110105, None).await;
    let bank = terminal(&o, &s, "Time bank", 110105, None).await;
    let c = card(&o, &s, 7).await;
    let other = issuance_server::app(
        issuance_server::office::open(&o.data(), o.database_url.as_deref())
            .await
            .unwrap(),
    );
    let upload_to_other = |term: &Term, wire: Vec<u8>| {
        let req = Request::post(&term.url)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(Body::from(wire))
            .unwrap();
        let app = other.clone();
        async move {
            use tower::ServiceExt;
            let resp = app.oneshot(req).await.unwrap();
            let status = resp.status();
            let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .unwrap();
            assert_eq!(
                status,
                StatusCode::OK,
                "{}",
                String::from_utf8_lossy(&bytes)
            );
            serde_json::from_slice::<Value>(&bytes).unwrap()
        }
    };
    let now = issuance_server::now();
    let w = |seq, t: u64| Rec::tap(seq, t, Service::Welfare, &c);
    let r = |term: &Term, counter: u32| c.receipt(term, counter, 10, 100 - 10 * counter);
    // (this server or the other, terminal, its seq, seconds ago; the counter runs 1..=5)
    let steps = [
        (true, &shop, 0, 50),
        (false, &bank, 0, 40),
        (true, &shop, 1, 30),
        (true, &shop, 2, 20),
        (false, &bank, 1, 10),
    ];
    for (n, (here, term, seq, ago)) in steps.into_iter().enumerate() {
        if n == 3 {
            // A commit of this server that is not an upload (a terminal registered) in between.
            terminal(&o, &s, "Bus gate", 110105, None).await;
        }
        let counter = n as u32 + 1;
        let wire = batch(term, &[w(seq, now - ago).with_receipt(r(term, counter))]);
        let a = if here {
            accept(&o, term, wire).await
        } else {
            upload_to_other(term, wire).await
        };
        assert_eq!(
            (a["receipts"].clone(), a["anomalies"].clone()),
            (json!(1), json!(0)),
            "counter {counter}: {a}"
        );
    }
    assert!(anomalies(&o, &s, "").await.is_empty());
    let row: (i64, i64, i64, i64, i64) = sqlx::query_as(
        "SELECT receipts, debited, top_counter, top_balance, last_tap_time FROM card_points \
         WHERE card_serial = $1",
    )
    .bind(c.serial.to_vec())
    .fetch_one(o.state.db.pool())
    .await
    .unwrap();
    assert_eq!(row, (5, 50, 5, 50, (now - 10) as i64));
    let st = points(&o, &c, &s.auditor).await;
    assert_eq!(st["totals"]["debits"], 5);
    assert_eq!(st["totals"]["expected_balance"], 50);
}
