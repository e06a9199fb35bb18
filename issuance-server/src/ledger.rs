//! The welfare-points ledger: every grant (the `vouchers` table) and every card-signed debit
//! receipt (the `receipts` table, one row per card and purse counter), checked as receipts
//! arrive, and the statement `GET /api/v1/cards/{serial}/points`.
//!
//! The card counts its debits: receipt counters run 1, 2, 3, ... per card. As receipts arrive
//! (in any order, from any terminal) the ledger checks, per card:
//! * **the same counter twice**: a receipt that differs from the one stored with its counter is
//!   a `counter_seen_twice` anomaly (a cloned or rolled-back purse), with both receipts; the
//!   first one stays in the ledger. The same receipt again is simply not stored twice.
//! * **gaps**: counters skipped above the highest one seen are a `counter_gap` anomaly; when
//!   later receipts fill the range, the anomaly is marked resolved, and while they fill it in
//!   part, it says which counters are still missing.
//! * **balances**: between consecutive receipts n and n+1 the card must have received
//!   `balance_after(n+1) + amount(n+1) - balance_after(n) >= 0` points (credits only come in
//!   vouchers); receipt 1 follows the card's initial points. And the points a card's receipts
//!   imply it was credited in total, `balance_after(n) + debits up to n - initial_points`, may
//!   never exceed what the office granted it. Either failure is a `balance_mismatch` anomaly with
//!   the numbers. Across a counter gap the missing debits are unknown, so only the second rule
//!   applies there (the missing debits can only make the implied credit smaller, so it never
//!   flags a sound card).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::anomalies::{self, AnomalyJson, Finding, Kind, Params};
use crate::auth::{Role, Staff};
use crate::db::Backend;
use crate::db::{get_u64, i64_of, WriteTx};
use crate::error::{ApiError, ApiResult, Json, Path};
use crate::ingest::CardInfo;
use crate::AppState;

/// The statement endpoint.
pub fn router() -> Router<AppState> {
    Router::new().route("/cards/{serial}/points", get(statement))
}

/// One debit receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Debit {
    /// Purse counter after the debit.
    pub counter: u32,
    /// Points debited.
    pub amount: u64,
    /// Balance after it, as the card signed it.
    pub balance_after: u64,
    /// The terminal (id) it came in from.
    pub terminal_id: i64,
    /// That terminal's key id.
    pub terminal: [u8; 8],
    /// Terminal's time.
    pub time: u64,
    /// Terminal's transaction reference.
    pub reference: [u8; 16],
    /// The tap record that carried it, when known.
    pub tap_seq: Option<i64>,
    /// The receipt's wire bytes.
    pub wire: Vec<u8>,
}

impl Debit {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "counter": self.counter,
            "amount": self.amount,
            "balance_after": self.balance_after,
            "terminal": hex::encode(self.terminal),
            "tap_seq": self.tap_seq,
            "time": self.time,
            "receipt": hex::encode(&self.wire),
        })
    }
}

/// What the ledger holds for a card before new receipts arrive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CardBefore {
    /// Points on the card at personalization.
    pub initial: u64,
    /// Points granted in vouchers.
    pub granted: u64,
    /// Number of vouchers.
    pub grants: u64,
    /// Sum of every stored debit.
    pub debited: u64,
    /// Highest stored counter.
    pub top: Option<u32>,
    /// Every stored receipt with a counter from one below the lowest arriving one up (the
    /// only stored ones the checks look at). Only the numbers of each are needed, except for a
    /// receipt whose counter arrives again: that one is complete (wire, terminal, time). When
    /// the arriving receipts follow the highest stored one, that one is here with its balance
    /// only (its amount is never summed: it lies below the lowest arriving counter).
    pub tail: BTreeMap<u32, Debit>,
}

/// What the checks decided for one card.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CardOutcome {
    /// Receipts to store.
    pub store: Vec<Debit>,
    /// Anomalies found.
    pub findings: Vec<Finding>,
    /// Whether a stored gap below the highest counter may now be filled.
    pub fills_below_top: bool,
}

/// The checks of the module documentation for `arriving` receipts of card `serial` (in
/// arrival order), found by terminal `uploader`.
pub fn check_card(
    serial: &[u8; 8],
    before: &CardBefore,
    arriving: Vec<Debit>,
    uploader: i64,
) -> CardOutcome {
    let card = hex::encode(serial);
    let mut out = CardOutcome::default();
    let mut accepted: BTreeMap<u32, Debit> = BTreeMap::new();
    for d in arriving {
        let seen = accepted
            .get(&d.counter)
            .or_else(|| before.tail.get(&d.counter));
        if let Some(first) = seen {
            if first.wire != d.wire {
                out.findings.push(Finding {
                    kind: Kind::CounterSeenTwice,
                    terminal_id: uploader,
                    card: Some(*serial),
                    detail: format!(
                        "card {card} signed two different receipts with purse counter {} \
                         ({} points at terminal {} and {} points at terminal {}): a cloned or \
                         rolled-back purse",
                        d.counter,
                        first.amount,
                        hex::encode(first.terminal),
                        d.amount,
                        hex::encode(d.terminal)
                    ),
                    evidence: serde_json::json!({
                        "counter": d.counter,
                        "in_ledger": first.json(),
                        "also_signed": d.json(),
                    }),
                    fingerprint: format!(
                        "{card}:{}:{}",
                        d.counter,
                        hex::encode(
                            &ring::digest::digest(&ring::digest::SHA256, &d.wire).as_ref()[..8]
                        )
                    ),
                });
            }
            continue;
        }
        accepted.insert(d.counter, d);
    }
    let Some((&lowest, _)) = accepted.first_key_value() else {
        return out;
    };
    let view = |c: u32| accepted.get(&c).or_else(|| before.tail.get(&c));

    // Consecutive pairs with an arriving receipt in them.
    let mut pairs = BTreeSet::new();
    for &c in accepted.keys() {
        if let Some(p) = c.checked_sub(1) {
            pairs.insert(p);
        }
        pairs.insert(c);
    }
    for p in pairs {
        let Some(next) = p.checked_add(1).and_then(view) else {
            continue;
        };
        let prev = if p == 0 {
            Some(before.initial)
        } else {
            view(p).map(|d| d.balance_after)
        };
        let Some(prev) = prev else { continue };
        let implied = i128::from(next.balance_after) + i128::from(next.amount) - i128::from(prev);
        if implied < 0 {
            out.findings.push(Finding {
                kind: Kind::BalanceMismatch,
                terminal_id: uploader,
                card: Some(*serial),
                detail: format!(
                    "card {card}: {} left {prev} points, receipt {} debits {} and leaves {}: \
                     {} points vanished between them",
                    if p == 0 {
                        "personalization".to_owned()
                    } else {
                        format!("receipt {p}")
                    },
                    p + 1,
                    next.amount,
                    next.balance_after,
                    -implied
                ),
                evidence: serde_json::json!({
                    "rule": "consecutive_receipts",
                    "counter": p + 1,
                    "previous_balance_after": prev,
                    "previous_is_initial_points": p == 0,
                    "amount": next.amount,
                    "balance_after": next.balance_after,
                    "implied_credit": implied as i64,
                    "receipt": next.json(),
                }),
                fingerprint: format!("{card}:pair:{p}"),
            });
        }
    }

    // Cumulative implied credit against the grants, from the lowest arriving counter up.
    let old_from_lowest: u64 = before.tail.range(lowest..).map(|(_, d)| d.amount).sum();
    let mut debited = before.debited.saturating_sub(old_from_lowest);
    let mut merged: BTreeMap<u32, &Debit> =
        before.tail.range(lowest..).map(|(c, d)| (*c, d)).collect();
    merged.extend(accepted.iter().map(|(c, d)| (*c, d)));
    for (c, d) in merged {
        debited += d.amount;
        let implied =
            i128::from(d.balance_after) + i128::from(debited) - i128::from(before.initial);
        if implied > i128::from(before.granted) {
            out.findings.push(Finding {
                kind: Kind::BalanceMismatch,
                terminal_id: uploader,
                card: Some(*serial),
                detail: format!(
                    "card {card}: by receipt {c} it shows {implied} points credited beyond its \
                     {} initial points, but the office granted it {} in {} voucher(s)",
                    before.initial, before.granted, before.grants
                ),
                evidence: serde_json::json!({
                    "rule": "credits_within_grants",
                    "counter": c,
                    "balance_after": d.balance_after,
                    "debited_through_counter": debited,
                    "initial_points": before.initial,
                    "implied_credits": implied as i64,
                    "granted": before.granted,
                    "vouchers": before.grants,
                    "receipt": d.json(),
                }),
                fingerprint: format!("{card}:over_grants:{}", before.granted),
            });
            break;
        }
    }

    // Counters skipped above the highest seen before.
    let top_after = accepted
        .last_key_value()
        .map(|(c, _)| *c)
        .max(before.top)
        .unwrap_or(0);
    let mut c = before.top.map_or(1, |t| t.saturating_add(1));
    while c < top_after {
        if accepted.contains_key(&c) {
            c += 1;
            continue;
        }
        let from = c;
        while c < top_after && !accepted.contains_key(&c) {
            c += 1;
        }
        let to = c - 1;
        out.findings.push(Finding {
            kind: Kind::CounterGap,
            terminal_id: uploader,
            card: Some(*serial),
            detail: format!(
                "card {card}: no receipt with purse counter {} has reached the office \
                 (highest now {top_after})",
                counter_range(i64::from(from), i64::from(to))
            ),
            evidence: serde_json::json!({
                "missing_from": from,
                "missing_to": to,
                "missing": to - from + 1,
                "highest_before": before.top,
                "highest_now": top_after,
            }),
            fingerprint: format!("{card}:{from}-{to}"),
        });
    }
    out.fills_below_top = before.top.is_some_and(|t| lowest < t);
    out.store = accepted.into_values().collect();
    out
}

/// `from`, or `from to to`, of a range of purse counters, as the anomalies' details say it.
fn counter_range(from: i64, to: i64) -> String {
    if to > from {
        format!("{from} to {to}")
    } else {
        from.to_string()
    }
}

/// The `missing_from`/`missing_to` of a gap anomaly's evidence.
pub(crate) fn missing_range(evidence: &str) -> Option<(i64, i64)> {
    let v: serde_json::Value = serde_json::from_str(evidence).ok()?;
    Some((v["missing_from"].as_i64()?, v["missing_to"].as_i64()?))
}

/// What [`apply`] did.
#[derive(Debug, Default)]
pub struct Applied {
    /// Receipts stored.
    pub stored: u64,
    /// Anomalies found (not stored yet).
    pub findings: Vec<Finding>,
    /// Per card: what the stored receipts add to its running totals.
    pub totals: BTreeMap<[u8; 8], Running>,
}

/// A card's row of `card_points`: the ledger's running totals and the card's latest tap, a
/// summary of `receipts` and `taps` kept in the same transaction as they are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CardRow {
    /// Receipts stored (0: none, and then `top` means nothing).
    pub receipts: u64,
    /// Sum of their amounts.
    pub debited: u64,
    /// Highest stored counter and the balance after it.
    pub top: Option<(u32, u64)>,
    /// The card's latest stored tap by (time, terminal id, seq), if it has one.
    pub last_tap: Option<(u64, i64, u32)>,
}

/// Loads what the checks need for the cards of `debits`, runs them, and stores the receipts.
/// `rows` are the cards' `card_points` rows, read in this transaction; the receipts' effect on
/// them is in [`Applied::totals`], for the caller to write.
pub(crate) async fn apply(
    tx: &mut WriteTx,
    backend: Backend,
    uploader: i64,
    debits: BTreeMap<[u8; 8], Vec<Debit>>,
    cards: &HashMap<[u8; 8], CardInfo>,
    rows: &HashMap<[u8; 8], CardRow>,
) -> ApiResult<Applied> {
    let mut applied = Applied::default();
    if debits.is_empty() {
        return Ok(applied);
    }
    let serials: Vec<[u8; 8]> = debits.keys().copied().collect();
    let mut before: HashMap<[u8; 8], CardBefore> = serials
        .iter()
        .map(|s| {
            let initial = cards.get(s).map_or(0, |c| c.initial_points);
            let mut b = CardBefore {
                initial,
                ..CardBefore::default()
            };
            if let Some((top, balance)) = rows.get(s).and_then(|r| r.top) {
                b.debited = rows.get(s).map_or(0, |r| r.debited);
                b.top = Some(top);
                // The last receipt's balance: all the checks need of it when the new receipts
                // follow it (its amount only counts for counters from the lowest new one up).
                b.tail.insert(
                    top,
                    Debit {
                        counter: top,
                        amount: 0,
                        balance_after: balance,
                        terminal_id: 0,
                        terminal: [0; 8],
                        time: 0,
                        reference: [0; 16],
                        tap_seq: None,
                        wire: Vec::new(),
                    },
                );
            }
            (*s, b)
        })
        .collect();
    for chunk in serials.chunks(1000) {
        // Grants, by card id.
        let ids: Vec<(i64, [u8; 8])> = chunk
            .iter()
            .filter_map(|s| cards.get(s).map(|c| (c.id, *s)))
            .collect();
        if !ids.is_empty() {
            let mut p = Params::new(backend);
            let list = p.list(ids.iter().map(|(id, _)| *id));
            let sql = format!(
                "SELECT card_id, CAST(SUM(amount) AS BIGINT) AS granted, COUNT(*) AS n FROM \
                 vouchers WHERE card_id IN ({}) GROUP BY card_id",
                list
            );
            let by_id: HashMap<i64, [u8; 8]> = ids.iter().copied().collect();
            for row in p.query(sql).fetch_all(tx.conn()).await? {
                let id: i64 = row.try_get("card_id")?;
                if let Some(b) = by_id.get(&id).and_then(|s| before.get_mut(s)) {
                    b.granted = get_u64(&row, "granted")?;
                    b.grants = get_u64(&row, "n")?;
                }
            }
        }
    }
    // The stored receipts the checks compare with: from one below each card's lowest arriving
    // counter up. Needed only for a card whose new receipts do not simply follow its last one
    // (out of order, or a counter again). (CROSS JOIN: see the travel query in `ingest`.)
    let wanted: Vec<([u8; 8], i64)> = debits
        .iter()
        .filter_map(|(s, list)| {
            let lowest = list.iter().map(|d| d.counter).min()?;
            let top = before.get(s)?.top?;
            (lowest <= top).then(|| (*s, i64::from(lowest.saturating_sub(1))))
        })
        .collect();
    for chunk in wanted.chunks(1000) {
        let mut p = Params::new(backend);
        let rows: Vec<String> = chunk
            .iter()
            .map(|(s, from)| p.row(vec![s.to_vec().into(), (*from).into()]))
            .collect();
        let sql = format!(
            "WITH w (s, c) AS (VALUES {}) SELECT r.card_serial, r.counter, r.amount, \
             r.balance_after FROM w CROSS JOIN receipts r WHERE r.card_serial = w.s AND \
             r.counter >= w.c",
            rows.join(",")
        );
        for row in p.query(sql).fetch_all(tx.conn()).await? {
            let serial: [u8; 8] = crate::db::get_array(&row, "card_serial")?;
            // Only the numbers: the rest is read below for the few receipts it is needed for.
            let d = Debit {
                counter: u32::try_from(get_u64(&row, "counter")?)
                    .map_err(|_| anyhow::anyhow!("stored counter out of range"))?,
                amount: get_u64(&row, "amount")?,
                balance_after: get_u64(&row, "balance_after")?,
                terminal_id: 0,
                terminal: [0; 8],
                time: 0,
                reference: [0; 16],
                tap_seq: None,
                wire: Vec::new(),
            };
            if let Some(b) = before.get_mut(&serial) {
                b.tail.insert(d.counter, d);
            }
        }
    }
    // Stored receipts whose counter arrives again: compared byte for byte, shown as evidence.
    let again: Vec<([u8; 8], u32)> = debits
        .iter()
        .flat_map(|(s, list)| {
            let tail = before.get(s).map(|b| &b.tail);
            list.iter()
                .filter(move |d| tail.is_some_and(|t| t.contains_key(&d.counter)))
                .map(move |d| (*s, d.counter))
        })
        .collect();
    for chunk in again.chunks(1000) {
        let mut p = Params::new(backend);
        let rows: Vec<String> = chunk
            .iter()
            .map(|(s, counter)| p.row(vec![s.to_vec().into(), i64::from(*counter).into()]))
            .collect();
        let sql = format!(
            "WITH w (s, c) AS (VALUES {}) SELECT r.card_serial, r.counter, r.amount, \
             r.balance_after, r.terminal_id, t.key_id, r.time, r.reference, r.tap_seq, r.wire \
             FROM w CROSS JOIN receipts r JOIN terminals t ON t.id = r.terminal_id \
             WHERE r.card_serial = w.s AND r.counter = w.c",
            rows.join(",")
        );
        for row in p.query(sql).fetch_all(tx.conn()).await? {
            let serial: [u8; 8] = crate::db::get_array(&row, "card_serial")?;
            let d = debit_of_row(&row)?;
            if let Some(b) = before.get_mut(&serial) {
                b.tail.insert(d.counter, d);
            }
        }
    }

    let mut to_store: Vec<([u8; 8], Debit)> = Vec::new();
    let mut fills: Vec<[u8; 8]> = Vec::new();
    for (serial, list) in debits {
        let b = before.remove(&serial).unwrap_or_default();
        let outcome = check_card(&serial, &b, list, uploader);
        applied.findings.extend(outcome.findings);
        if outcome.fills_below_top {
            fills.push(serial);
        }
        to_store.extend(outcome.store.into_iter().map(|d| (serial, d)));
    }
    for chunk in to_store.chunks(500) {
        let mut p = Params::new(backend);
        let rows: Vec<String> = chunk
            .iter()
            .map(|(serial, d)| {
                p.row(vec![
                    serial.to_vec().into(),
                    i64::from(d.counter).into(),
                    i64_of(d.amount).into(),
                    i64_of(d.balance_after).into(),
                    d.terminal_id.into(),
                    i64_of(d.time).into(),
                    d.reference.to_vec().into(),
                    d.wire.clone().into(),
                    d.tap_seq.into(),
                ])
            })
            .collect();
        let sql = format!(
            "INSERT INTO receipts (card_serial, counter, amount, balance_after, terminal_id, \
             time, reference, wire, tap_seq) VALUES {}",
            rows.join(",")
        );
        p.query(sql).execute(tx.conn()).await?;
    }
    applied.totals = running_totals(&to_store);
    applied.stored = to_store.len() as u64;
    for serial in fills {
        resolve_counter_gaps(tx, &serial).await?;
    }
    Ok(applied)
}

/// What stored receipts add to one card's running totals.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Running {
    /// Receipts.
    pub receipts: u64,
    /// Points they debit.
    pub debited: u64,
    /// Their highest counter and its balance_after.
    pub top: (u32, u64),
}

impl CardRow {
    /// The row after `add`.
    pub(crate) fn plus(mut self, add: &Running) -> CardRow {
        if add.receipts == 0 {
            return self;
        }
        self.receipts += add.receipts;
        self.debited += add.debited;
        if self.top.is_none_or(|(t, _)| add.top.0 > t) {
            self.top = Some(add.top);
        }
        self
    }
}

/// Sums the receipts just stored per card.
fn running_totals(stored: &[([u8; 8], Debit)]) -> BTreeMap<[u8; 8], Running> {
    let mut totals: BTreeMap<[u8; 8], Running> = BTreeMap::new();
    for (serial, d) in stored {
        let t = totals.entry(*serial).or_default();
        t.receipts += 1;
        t.debited += d.amount;
        if d.counter >= t.top.0 {
            t.top = (d.counter, d.balance_after);
        }
    }
    totals
}

fn debit_of_row(row: &sqlx::any::AnyRow) -> ApiResult<Debit> {
    Ok(Debit {
        counter: u32::try_from(get_u64(row, "counter")?)
            .map_err(|_| anyhow::anyhow!("stored counter out of range"))?,
        amount: get_u64(row, "amount")?,
        balance_after: get_u64(row, "balance_after")?,
        terminal_id: row.try_get("terminal_id")?,
        terminal: crate::db::get_array(row, "key_id")?,
        time: get_u64(row, "time")?,
        reference: crate::db::get_array(row, "reference")?,
        tap_seq: row.try_get("tap_seq")?,
        wire: row.try_get("wire")?,
    })
}

async fn resolve_counter_gaps(tx: &mut WriteTx, serial: &[u8; 8]) -> ApiResult<()> {
    let open = sqlx::query(
        "SELECT id, evidence, detail, fingerprint FROM anomalies WHERE kind = $1 AND \
         card_serial = $2 AND resolved_at IS NULL",
    )
    .bind(Kind::CounterGap.name())
    .bind(serial.to_vec())
    .fetch_all(tx.conn())
    .await?;
    for row in open {
        let id: i64 = row.try_get("id")?;
        let evidence: String = row.try_get("evidence")?;
        let Some((from, to)) = missing_range(&evidence) else {
            continue;
        };
        let present: Vec<i64> = sqlx::query_scalar(
            "SELECT counter FROM receipts WHERE card_serial = $1 AND counter >= $2 AND \
             counter <= $3 ORDER BY counter",
        )
        .bind(serial.to_vec())
        .bind(from)
        .bind(to)
        .fetch_all(tx.conn())
        .await?;
        if present.len() as i64 == to - from + 1 {
            anomalies::resolve(tx, id).await?;
            // The receipt the gap lacked has come: no debit of it was lost.
            let fingerprint: Option<String> = row.try_get("fingerprint")?;
            if let Some(f) = fingerprint {
                anomalies::resolve_named(tx, Kind::InterruptedDebitCompleted, &f).await?;
            }
        } else if !present.is_empty() {
            let detail: String = row.try_get("detail")?;
            narrow_gap(tx, id, (&evidence, &detail), (from, to), &present).await?;
        }
    }
    Ok(())
}

/// Most ranges of counters a partly filled gap's evidence lists (the count is always exact).
const STILL_MISSING_LISTED: usize = 32;

/// The counters of `from..=to` not in `present` (ascending), as inclusive ranges.
fn still_missing(from: i64, to: i64, present: &[i64]) -> Vec<[i64; 2]> {
    let mut out = Vec::new();
    let mut next = from;
    for &c in present.iter().chain(std::iter::once(&(to + 1))) {
        if c > next {
            out.push([next, c - 1]);
        }
        next = next.max(c + 1);
    }
    out
}

/// A gap that later receipts filled in part stays open (it is the same missing-receipt
/// question, and other findings name it by its fingerprint), but says which counters are still
/// missing, so that an auditor does not look for receipts that have arrived. The original range
/// stays in the evidence as it was found.
async fn narrow_gap(
    tx: &mut WriteTx,
    id: i64,
    (evidence, detail): (&str, &str),
    (from, to): (i64, i64),
    present: &[i64],
) -> ApiResult<()> {
    let missing = still_missing(from, to, present);
    let count: i64 = missing.iter().map(|[a, b]| b - a + 1).sum();
    let mut v: serde_json::Value = serde_json::from_str(evidence)
        .map_err(|e| anyhow::anyhow!("stored gap evidence is not JSON: {e}"))?;
    let listed: Vec<serde_json::Value> = missing
        .iter()
        .take(STILL_MISSING_LISTED)
        .map(|r| serde_json::json!(r))
        .collect();
    v["still_missing"] = listed.into();
    v["still_missing_count"] = count.into();
    let words: Vec<String> = missing
        .iter()
        .take(STILL_MISSING_LISTED)
        .map(|[a, b]| counter_range(*a, *b))
        .collect();
    let more = if missing.len() > STILL_MISSING_LISTED {
        ", ..."
    } else {
        ""
    };
    // The sentence as found, then what is still missing now (replacing an earlier update's).
    let found = detail.split(STILL_MISSING_SAID).next().unwrap_or(detail);
    let detail = format!(
        "{found}{STILL_MISSING_SAID}{} ({count} of {})",
        words.join(", ") + more,
        to - from + 1
    );
    sqlx::query("UPDATE anomalies SET evidence = $1, detail = $2 WHERE id = $3")
        .bind(v.to_string())
        .bind(detail)
        .bind(id)
        .execute(tx.conn())
        .await?;
    Ok(())
}

/// How a partly filled gap's detail goes on.
const STILL_MISSING_SAID: &str = "; still missing: ";

/// Open counter gaps of `cards` whose time window holds a tap that a terminal logged as
/// `debit_interrupted`: the card most likely completed that debit and its receipt was lost with
/// the answer (a retry resolved by the stored receipt would have brought the receipt in), so
/// the holder paid for a purchase the terminal refused. The window runs from the card's last
/// stored receipt below the gap to its first above it; the lost receipt carries the
/// interrupted session's time. Run after the batch's taps and gaps are stored, for the cards
/// that have a new gap or a new interrupted tap, so that either order of arrival finds it.
pub(crate) async fn interrupted_debit_findings(
    tx: &mut WriteTx,
    uploader: i64,
    cards: &BTreeSet<[u8; 8]>,
) -> ApiResult<Vec<Finding>> {
    let mut out = Vec::new();
    for serial in cards {
        let card = hex::encode(serial);
        let gaps = sqlx::query(
            "SELECT evidence FROM anomalies WHERE kind = $1 AND card_serial = $2 AND \
             resolved_at IS NULL",
        )
        .bind(Kind::CounterGap.name())
        .bind(serial.to_vec())
        .fetch_all(tx.conn())
        .await?;
        for gap in gaps {
            let evidence: String = gap.try_get("evidence")?;
            let Some((from, to)) = missing_range(&evidence) else {
                continue;
            };
            let after: Option<i64> = sqlx::query_scalar(
                "SELECT MAX(time) FROM receipts WHERE card_serial = $1 AND counter < $2",
            )
            .bind(serial.to_vec())
            .bind(from)
            .fetch_one(tx.conn())
            .await?;
            let before: Option<i64> = sqlx::query_scalar(
                "SELECT MIN(time) FROM receipts WHERE card_serial = $1 AND counter > $2",
            )
            .bind(serial.to_vec())
            .bind(to)
            .fetch_one(tx.conn())
            .await?;
            let taps = sqlx::query(
                "SELECT m.key_id, t.seq, t.time FROM taps t JOIN terminals m ON \
                 m.id = t.terminal_id WHERE t.card_serial = $1 AND t.time >= $2 AND \
                 t.time <= $3 AND t.reason = $4 ORDER BY t.time, t.terminal_id, t.seq",
            )
            .bind(serial.to_vec())
            .bind(after.unwrap_or(0))
            .bind(before.unwrap_or(i64::MAX))
            .bind(i64::from(
                shared_crypto::model::Reason::DebitInterrupted as u8,
            ))
            .fetch_all(tx.conn())
            .await?;
            if taps.is_empty() {
                continue;
            }
            let mut listed = Vec::with_capacity(taps.len());
            for t in &taps {
                let key: [u8; 8] = crate::db::get_array(t, "key_id")?;
                listed.push(serde_json::json!({
                    "terminal": hex::encode(key),
                    "seq": get_u64(t, "seq")?,
                    "time": get_u64(t, "time")?,
                }));
            }
            let first = &listed[0];
            out.push(Finding {
                kind: Kind::InterruptedDebitCompleted,
                terminal_id: uploader,
                card: Some(*serial),
                detail: format!(
                    "card {card}: the debit terminal {} logged as interrupted at {} most likely \
                     completed on the card (purse counter {} never reached the office): \
                     the holder may have paid for a purchase that was refused; check with the \
                     holder and refund (中断的扣分可能已在卡上完成，请核实并退还)",
                    first["terminal"].as_str().unwrap_or_default(),
                    first["time"],
                    counter_range(from, to)
                ),
                evidence: serde_json::json!({
                    "missing_from": from,
                    "missing_to": to,
                    "receipt_before_time": after,
                    "receipt_after_time": before,
                    "interrupted_taps": listed,
                }),
                fingerprint: format!("{card}:{from}-{to}"),
            });
        }
    }
    Ok(out)
}

/// A grant as the statement shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct GrantJson {
    /// Voucher sequence number.
    pub seq: u32,
    /// Points.
    pub amount: u64,
    /// When the office signed it.
    pub granted_at: u64,
    /// Last moment the card may take it.
    pub valid_until: u64,
}

/// A debit as the statement shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DebitJson {
    /// Purse counter.
    pub counter: u32,
    /// Points debited.
    pub amount: u64,
    /// Balance after, as the card signed it.
    pub balance_after: u64,
    /// Terminal key id (hex).
    pub terminal: String,
    /// Terminal's time.
    pub time: u64,
    /// The tap record that carried it.
    pub tap_seq: Option<i64>,
}

/// The card's balance as last seen (its highest-counter receipt).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LastSeen {
    /// Balance after the last receipt.
    pub balance: u64,
    /// Its counter.
    pub counter: u32,
    /// Its time.
    pub time: u64,
}

/// Sums over the statement.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Totals {
    /// Points granted.
    pub granted: u64,
    /// Vouchers.
    pub grants: u64,
    /// Points debited.
    pub debited: u64,
    /// Receipts.
    pub debits: u64,
    /// `initial_points + granted - debited`: the balance if every voucher was credited and no
    /// debit is missing.
    pub expected_balance: i64,
}

/// `GET /cards/{serial}/points`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Statement {
    /// Card serial (hex).
    pub serial: String,
    /// `active` or `revoked`.
    pub state: String,
    /// Points on the card at personalization.
    pub initial_points: u64,
    /// Grants, by sequence number.
    pub grants: Vec<GrantJson>,
    /// Debits, by counter.
    pub debits: Vec<DebitJson>,
    /// The balance the card last reported, if it has debited.
    pub last_seen: Option<LastSeen>,
    /// Counter ranges with no receipt yet (`[from, to]`).
    pub missing_counters: Vec<[u32; 2]>,
    /// Sums.
    pub totals: Totals,
    /// Anomalies about this card.
    pub anomalies: Vec<AnomalyJson>,
}

fn parse_serial(s: &str) -> ApiResult<[u8; 8]> {
    hex::decode(s)
        .ok()
        .and_then(|v| <[u8; 8]>::try_from(v).ok())
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_serial",
                "a card serial is 8 bytes in hex (16 hex digits)",
            )
        })
}

/// Roles: clerk (answers the holder at the desk), approver (grants the points), auditor,
/// admin. Holds no personal data beyond the card serial.
async fn statement(
    State(state): State<AppState>,
    staff: Staff,
    Path(serial): Path<String>,
) -> ApiResult<Json<Statement>> {
    staff.require(&[Role::Clerk, Role::Approver, Role::Auditor, Role::Admin])?;
    let serial = parse_serial(&serial)?;
    let mut conn = state.db.pool().acquire().await?;
    let card = sqlx::query(
        "SELECT c.id, c.state, j.initial_points FROM cards c JOIN personalization_jobs j ON \
         j.id = c.job_id WHERE c.serial = $1",
    )
    .bind(serial.to_vec())
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| {
        ApiError::not_found(
            "unknown_card",
            format!(
                "there is no card {} (only confirmed cards exist)",
                hex::encode(serial)
            ),
        )
    })?;
    let card_id: i64 = card.try_get("id")?;
    let initial = get_u64(&card, "initial_points")?;
    let mut grants = Vec::new();
    for r in sqlx::query(
        "SELECT seq, amount, created_at, valid_until FROM vouchers WHERE card_id = $1 ORDER BY seq",
    )
    .bind(card_id)
    .fetch_all(&mut *conn)
    .await?
    {
        grants.push(GrantJson {
            seq: u32::try_from(get_u64(&r, "seq")?).unwrap_or(u32::MAX),
            amount: get_u64(&r, "amount")?,
            granted_at: get_u64(&r, "created_at")?,
            valid_until: get_u64(&r, "valid_until")?,
        });
    }
    let mut debits = Vec::new();
    for r in sqlx::query(
        "SELECT r.counter, r.amount, r.balance_after, r.time, r.tap_seq, t.key_id FROM receipts \
         r JOIN terminals t ON t.id = r.terminal_id WHERE r.card_serial = $1 ORDER BY r.counter",
    )
    .bind(serial.to_vec())
    .fetch_all(&mut *conn)
    .await?
    {
        let key_id: Vec<u8> = r.try_get("key_id")?;
        debits.push(DebitJson {
            counter: u32::try_from(get_u64(&r, "counter")?).unwrap_or(u32::MAX),
            amount: get_u64(&r, "amount")?,
            balance_after: get_u64(&r, "balance_after")?,
            terminal: hex::encode(key_id),
            time: get_u64(&r, "time")?,
            tap_seq: r.try_get("tap_seq")?,
        });
    }
    let mut missing_counters = Vec::new();
    let mut next = 1u32;
    for d in &debits {
        if d.counter > next {
            missing_counters.push([next, d.counter - 1]);
        }
        next = d.counter.saturating_add(1);
    }
    let granted: u64 = grants.iter().map(|g| g.amount).sum();
    let debited: u64 = debits.iter().map(|d| d.amount).sum();
    let mut params = Params::new(state.db.backend());
    let card_is = format!("WHERE a.card_serial = {}", params.push(serial.to_vec()));
    let anomalies = anomalies::load(&mut conn, &card_is, params, 10_000).await?;
    Ok(Json(Statement {
        serial: hex::encode(serial),
        state: card.try_get("state")?,
        initial_points: initial,
        last_seen: debits.last().map(|d| LastSeen {
            balance: d.balance_after,
            counter: d.counter,
            time: d.time,
        }),
        missing_counters,
        totals: Totals {
            granted,
            grants: grants.len() as u64,
            debited,
            debits: debits.len() as u64,
            expected_balance: i64_of(initial + granted) - i64_of(debited),
        },
        grants,
        debits,
        anomalies,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn still_missing_lists_the_holes_left_in_a_gap() {
        assert_eq!(still_missing(2, 5, &[3, 4]), [[2, 2], [5, 5]]);
        assert_eq!(still_missing(2, 5, &[2]), [[3, 5]]);
        assert_eq!(still_missing(2, 5, &[5]), [[2, 4]]);
        assert_eq!(still_missing(2, 9, &[3, 6, 7]), [[2, 2], [4, 5], [8, 9]]);
        assert_eq!(still_missing(2, 5, &[]), [[2, 5]]);
        assert!(still_missing(2, 3, &[2, 3]).is_empty());
    }

    const CARD: [u8; 8] = [0xC0; 8];

    fn debit(counter: u32, amount: u64, balance_after: u64) -> Debit {
        Debit {
            counter,
            amount,
            balance_after,
            terminal_id: 1,
            terminal: [1; 8],
            time: 1000 + u64::from(counter),
            reference: [counter as u8; 16],
            tap_seq: Some(i64::from(counter)),
            wire: vec![counter as u8, amount as u8, balance_after as u8],
        }
    }

    fn before(initial: u64, granted: u64, stored: &[Debit]) -> CardBefore {
        CardBefore {
            initial,
            granted,
            grants: u64::from(granted > 0),
            debited: stored.iter().map(|d| d.amount).sum(),
            top: stored.iter().map(|d| d.counter).max(),
            tail: stored.iter().map(|d| (d.counter, d.clone())).collect(),
        }
    }

    fn kinds(o: &CardOutcome) -> Vec<&'static str> {
        o.findings.iter().map(|f| f.kind.name()).collect()
    }

    #[test]
    fn a_sound_card_raises_nothing() {
        // 100 initial points, 30 debited, a 50-point voucher credited, 20 debited.
        let o = check_card(
            &CARD,
            &before(100, 50, &[]),
            vec![debit(1, 30, 70), debit(2, 20, 100)],
            1,
        );
        assert!(o.findings.is_empty(), "{:?}", o.findings);
        assert_eq!(o.store.len(), 2);
        // The next batch continues from the stored ones.
        let o = check_card(
            &CARD,
            &before(100, 50, &[debit(1, 30, 70), debit(2, 20, 100)]),
            vec![debit(3, 100, 0)],
            1,
        );
        assert!(o.findings.is_empty(), "{:?}", o.findings);
        assert!(!o.fills_below_top);
    }

    #[test]
    fn gaps_are_found_above_the_top_and_filled_later() {
        let o = check_card(
            &CARD,
            &before(100, 0, &[debit(1, 10, 90)]),
            vec![debit(4, 10, 60), debit(6, 10, 40)],
            1,
        );
        assert_eq!(kinds(&o), ["counter_gap", "counter_gap"]);
        assert_eq!(o.findings[0].evidence["missing_from"], 2);
        assert_eq!(o.findings[0].evidence["missing_to"], 3);
        assert_eq!(o.findings[1].evidence["missing_from"], 5);
        assert_eq!(o.findings[1].fingerprint, "c0c0c0c0c0c0c0c0:5-5");
        // The missing ones arrive out of order: no new gap, no mismatch, a fill.
        let stored = [debit(1, 10, 90), debit(4, 10, 60), debit(6, 10, 40)];
        let o = check_card(
            &CARD,
            &before(100, 0, &stored),
            vec![debit(3, 10, 70), debit(2, 10, 80), debit(5, 10, 50)],
            1,
        );
        assert!(o.findings.is_empty(), "{:?}", o.findings);
        assert!(o.fills_below_top);
        assert_eq!(
            o.store.iter().map(|d| d.counter).collect::<Vec<_>>(),
            [2, 3, 5]
        );
        // A first receipt that is not counter 1.
        let o = check_card(&CARD, &before(100, 0, &[]), vec![debit(3, 10, 90)], 1);
        assert_eq!(kinds(&o), ["counter_gap"]);
        assert_eq!(o.findings[0].evidence["missing_from"], 1);
        assert!(o.findings[0].evidence["highest_before"].is_null());
    }

    #[test]
    fn the_same_counter_twice_is_evidence_not_a_second_debit() {
        let stored = [debit(1, 10, 90)];
        let mut clone = debit(1, 25, 75);
        clone.terminal = [9; 8];
        let o = check_card(&CARD, &before(100, 0, &stored), vec![clone.clone()], 1);
        assert_eq!(kinds(&o), ["counter_seen_twice"]);
        let e = &o.findings[0].evidence;
        assert_eq!(e["in_ledger"]["amount"], 10);
        assert_eq!(e["also_signed"]["amount"], 25);
        assert_eq!(e["also_signed"]["terminal"], hex::encode([9u8; 8]));
        assert!(o.store.is_empty());
        // The identical receipt again is neither stored nor an anomaly.
        let o = check_card(&CARD, &before(100, 0, &stored), vec![debit(1, 10, 90)], 1);
        assert!(o.findings.is_empty() && o.store.is_empty());
        // Two different receipts with one counter in one batch: the first is kept.
        let o = check_card(
            &CARD,
            &before(100, 0, &[]),
            vec![debit(1, 10, 90), clone],
            1,
        );
        assert_eq!(kinds(&o), ["counter_seen_twice"]);
        assert_eq!(o.store, [debit(1, 10, 90)]);
    }

    #[test]
    fn balances_must_add_up() {
        // Receipt 2 leaves more than receipt 1 left minus its debit, and no voucher explains
        // the 15 points credited in between.
        let o = check_card(
            &CARD,
            &before(100, 0, &[debit(1, 10, 90)]),
            vec![debit(2, 10, 95)],
            1,
        );
        assert_eq!(kinds(&o), ["balance_mismatch"]);
        let e = &o.findings[0].evidence;
        assert_eq!(e["rule"], "credits_within_grants");
        assert_eq!(e["implied_credits"], 15);
        assert_eq!(e["granted"], 0);
        // With a 20-point voucher that is fine.
        let o = check_card(
            &CARD,
            &before(100, 20, &[debit(1, 10, 90)]),
            vec![debit(2, 10, 95)],
            1,
        );
        assert!(o.findings.is_empty(), "{:?}", o.findings);
        // A balance that fell by more than the debit: points vanished (negative credit).
        let o = check_card(
            &CARD,
            &before(100, 0, &[debit(1, 10, 90)]),
            vec![debit(2, 10, 50)],
            1,
        );
        assert_eq!(kinds(&o), ["balance_mismatch"]);
        let e = &o.findings[0].evidence;
        assert_eq!(e["rule"], "consecutive_receipts");
        assert_eq!(e["implied_credit"], -30);
        assert_eq!(e["previous_balance_after"], 90);
        // The first receipt is checked against the initial points.
        let o = check_card(&CARD, &before(100, 0, &[]), vec![debit(1, 10, 20)], 1);
        assert_eq!(o.findings[0].evidence["previous_is_initial_points"], true);
        // Across a gap only the grant rule applies: 3 missing debits explain the fall.
        let o = check_card(
            &CARD,
            &before(100, 0, &[debit(1, 10, 90)]),
            vec![debit(5, 10, 20)],
            1,
        );
        assert_eq!(kinds(&o), ["counter_gap"]);
        // A receipt filling a gap is checked against both neighbours.
        // (2 after 1 is fine with the 5-point voucher; 3 after 2 lost 5 points.)
        let stored = [debit(1, 10, 90), debit(3, 10, 70)];
        let o = check_card(&CARD, &before(100, 5, &stored), vec![debit(2, 10, 85)], 1);
        assert_eq!(kinds(&o), ["balance_mismatch"]);
        assert_eq!(o.findings[0].evidence["counter"], 3);
        assert_eq!(o.findings[0].evidence["implied_credit"], -5);
        assert_eq!(o.findings[0].fingerprint, "c0c0c0c0c0c0c0c0:pair:2");
    }

    #[test]
    fn over_grant_is_flagged_once_per_grant_level() {
        let o = check_card(
            &CARD,
            &before(0, 10, &[]),
            vec![debit(1, 5, 20), debit(2, 5, 15), debit(3, 5, 10)],
            1,
        );
        // Receipt 1 implies 25 credited of 10 granted; later ones repeat it, flagged once.
        assert_eq!(kinds(&o), ["balance_mismatch"]);
        assert_eq!(o.findings[0].evidence["counter"], 1);
        assert_eq!(o.findings[0].fingerprint, "c0c0c0c0c0c0c0c0:over_grants:10");
    }

    #[test]
    fn gap_evidence_parses() {
        assert_eq!(
            missing_range(r#"{"missing_from": 3, "missing_to": 5}"#),
            Some((3, 5))
        );
        assert_eq!(missing_range("{}"), None);
        assert_eq!(missing_range("not json"), None);
    }
}
