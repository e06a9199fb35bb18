//! Fraud and fault signals found in uploaded tap logs: their kinds, how they are stored (each
//! finding once, with a human detail and a JSON evidence object), the impossible-travel rule, and
//! `GET /api/v1/anomalies` for auditors.
//!
//! Every anomaly has a `fingerprint` naming the finding (for a counter gap: the card and the
//! missing range; for impossible travel: the two taps), unique per kind in the database, so a
//! batch sent again, or a later batch that shows the same thing, never records it twice.

use std::borrow::Cow;

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::auth::{Role, Staff};
use crate::db::{i64_of, WriteTx};
use crate::error::{ApiError, ApiResult, Json, Query};
use crate::AppState;

/// The anomaly endpoint.
pub fn router() -> Router<AppState> {
    Router::new().route("/anomalies", get(list))
}

/// What an anomaly is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Two different card-signed receipts with the same purse counter: a cloned or rolled-back
    /// purse. Evidence: both receipts.
    CounterSeenTwice,
    /// Receipt counters of a card skip numbers: debits the office has not seen (yet).
    CounterGap,
    /// A counter gap whose time window holds a debit a terminal logged as interrupted: the card
    /// most likely completed that debit (its receipt was lost with the answer), so the holder
    /// paid for a purchase the terminal refused. Evidence: the gap and the interrupted taps.
    InterruptedDebitCompleted,
    /// A card's balances do not add up: a negative implied credit between consecutive
    /// receipts, or more implied credit than the vouchers granted.
    BalanceMismatch,
    /// One card tapped at two places further apart than travel allows in the time between.
    ImpossibleTravel,
    /// A revoked card accepted after its revocation by a terminal with an old status list.
    RevokedCardAccepted,
    /// A terminal's record sequence skips numbers.
    SequenceGap,
    /// A terminal's clock disagrees with the server's by more than `clock_drift_bound_s`.
    ClockDrift,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 8] = [
        Kind::CounterSeenTwice,
        Kind::CounterGap,
        Kind::InterruptedDebitCompleted,
        Kind::BalanceMismatch,
        Kind::ImpossibleTravel,
        Kind::RevokedCardAccepted,
        Kind::SequenceGap,
        Kind::ClockDrift,
    ];

    /// The stored and shown name.
    pub const fn name(self) -> &'static str {
        match self {
            Kind::CounterSeenTwice => "counter_seen_twice",
            Kind::CounterGap => "counter_gap",
            Kind::InterruptedDebitCompleted => "interrupted_debit_completed",
            Kind::BalanceMismatch => "balance_mismatch",
            Kind::ImpossibleTravel => "impossible_travel",
            Kind::RevokedCardAccepted => "revoked_card_accepted",
            Kind::SequenceGap => "sequence_gap",
            Kind::ClockDrift => "clock_drift",
        }
    }

    /// Parses [`Kind::name`].
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == s)
    }
}

/// Kinds that only databases from before the back office hold (listed, never recorded now).
const LEGACY_KINDS: [&str; 1] = ["bad_receipt"];

/// An anomaly about to be stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// Kind.
    pub kind: Kind,
    /// The terminal whose upload showed it.
    pub terminal_id: i64,
    /// The card, when it is about one.
    pub card: Option<[u8; 8]>,
    /// One sentence for people.
    pub detail: String,
    /// The numbers and records behind it (a JSON object).
    pub evidence: serde_json::Value,
    /// Names the finding; the same fingerprint and kind are stored once.
    pub fingerprint: String,
}

/// Stores `findings` (multi-row INSERTs; a finding stored before is skipped); returns how many
/// were new.
pub async fn record(
    tx: &mut WriteTx,
    backend: crate::db::Backend,
    findings: &[Finding],
) -> Result<u64, sqlx::Error> {
    let now = i64_of(crate::now());
    let mut added = 0;
    for chunk in findings.chunks(200) {
        let mut p = Params::new(backend);
        let rows: Vec<String> = chunk
            .iter()
            .map(|f| {
                p.row(vec![
                    f.kind.name().into(),
                    f.terminal_id.into(),
                    f.card.map(|c| c.to_vec()).into(),
                    f.detail.clone().into(),
                    f.evidence.to_string().into(),
                    f.fingerprint.clone().into(),
                    now.into(),
                ])
            })
            .collect();
        let sql = format!(
            "INSERT INTO anomalies (kind, terminal_id, card_serial, detail, evidence, \
             fingerprint, found_at) VALUES {} ON CONFLICT DO NOTHING",
            rows.join(",")
        );
        added += p.query(sql).execute(tx.conn()).await?.rows_affected();
    }
    Ok(added)
}

/// Marks anomaly `id` resolved now.
pub async fn resolve(tx: &mut WriteTx, id: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE anomalies SET resolved_at = $1 WHERE id = $2 AND resolved_at IS NULL")
        .bind(i64_of(crate::now()))
        .bind(id)
        .execute(tx.conn())
        .await?;
    Ok(())
}

/// Marks the open anomaly of `kind` named `fingerprint` resolved, if there is one.
pub async fn resolve_named(
    tx: &mut WriteTx,
    kind: Kind,
    fingerprint: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE anomalies SET resolved_at = $1 WHERE kind = $2 AND fingerprint = $3 AND \
         resolved_at IS NULL",
    )
    .bind(i64_of(crate::now()))
    .bind(kind.name())
    .bind(fingerprint)
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// A terminal as the travel rule sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    /// Terminal id.
    pub terminal_id: i64,
    /// Its key id.
    pub key_id: [u8; 8],
    /// 6-digit administrative division code, or 0 (national).
    pub region: u32,
    /// Latitude and longitude in micro-degrees, when registered.
    pub location: Option<(i64, i64)>,
}

impl Place {
    /// The province: the first two digits of a 6-digit division code (none for 0).
    pub fn province(&self) -> Option<u32> {
        (100_000..=999_999)
            .contains(&self.region)
            .then_some(self.region / 10_000)
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "terminal": hex::encode(self.key_id),
            "region": self.region,
            "latitude_micro": self.location.map(|l| l.0),
            "longitude_micro": self.location.map(|l| l.1),
        })
    }
}

/// The bounds of the travel rule (from the office config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TravelRule {
    /// Fastest plausible travel, km/h.
    pub max_speed_kmh: u32,
    /// Clock disagreement allowed between terminals, seconds.
    pub slack_s: u64,
    /// Without locations: two provinces closer in time than this are impossible.
    pub province_window_s: u64,
}

impl TravelRule {
    /// The rule of `config`.
    pub fn of(config: &crate::config::Config) -> Self {
        TravelRule {
            max_speed_kmh: config.travel_max_speed_kmh,
            slack_s: config.travel_slack_s,
            province_window_s: config.travel_province_window_s,
        }
    }

    /// How far apart in time two taps can be and still break this rule: beyond this, no
    /// distance on Earth is too far.
    pub fn horizon_s(&self) -> u64 {
        let by_speed =
            (HALF_CIRCUMFERENCE_KM / f64::from(self.max_speed_kmh.max(1)) * 3600.0).ceil() as u64;
        by_speed.max(self.province_window_s)
    }
}

const EARTH_RADIUS_KM: f64 = 6371.0088;
const HALF_CIRCUMFERENCE_KM: f64 = std::f64::consts::PI * EARTH_RADIUS_KM;

/// Great-circle distance in km between two points given in micro-degrees (haversine formula on
/// the mean Earth radius; within 0.5 % of the ellipsoid, enough for a speed bound).
pub fn distance_km(a: (i64, i64), b: (i64, i64)) -> f64 {
    let rad = |micro: i64| (micro as f64 / 1e6).to_radians();
    let (la1, lo1, la2, lo2) = (rad(a.0), rad(a.1), rad(b.0), rad(b.1));
    let h = ((la2 - la1) / 2.0).sin().powi(2)
        + la1.cos() * la2.cos() * ((lo2 - lo1) / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
}

/// One tap of a card, for the travel rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CardTap {
    /// Where.
    pub place: Place,
    /// Terminal's record sequence number.
    pub seq: u32,
    /// Terminal's time.
    pub time: u64,
}

/// Whether a card could not have made both taps, and if not, the evidence. Taps at one terminal
/// are always possible. With both locations known: the great-circle distance must be coverable
/// at `max_speed_kmh` in the time between plus `slack_s`. Otherwise: two different provinces
/// less than `province_window_s` apart are impossible; a national terminal (region 0) is never
/// judged by province.
pub fn impossible_travel(a: &CardTap, b: &CardTap, rule: &TravelRule) -> Option<serde_json::Value> {
    if a.place.terminal_id == b.place.terminal_id {
        return None;
    }
    let elapsed = a.time.abs_diff(b.time);
    let taps = || {
        let (first, second) =
            if (a.time, a.place.terminal_id, a.seq) <= (b.time, b.place.terminal_id, b.seq) {
                (a, b)
            } else {
                (b, a)
            };
        [first, second].map(|t| {
            let mut v = t.place.json();
            v["seq"] = t.seq.into();
            v["time"] = t.time.into();
            v
        })
    };
    if let (Some(la), Some(lb)) = (a.place.location, b.place.location) {
        let km = distance_km(la, lb);
        let allowed = f64::from(rule.max_speed_kmh) * (elapsed + rule.slack_s) as f64 / 3600.0;
        if km <= allowed {
            return None;
        }
        let speed = if elapsed == 0 {
            None
        } else {
            Some((km / (elapsed as f64 / 3600.0) * 10.0).round() / 10.0)
        };
        return Some(serde_json::json!({
            "rule": "location",
            "taps": taps(),
            "distance_km": (km * 1000.0).round() / 1000.0,
            "elapsed_s": elapsed,
            "speed_kmh": speed,
            "max_speed_kmh": rule.max_speed_kmh,
            "slack_s": rule.slack_s,
        }));
    }
    let (Some(pa), Some(pb)) = (a.place.province(), b.place.province()) else {
        return None;
    };
    if pa == pb || elapsed >= rule.province_window_s {
        return None;
    }
    Some(serde_json::json!({
        "rule": "province",
        "taps": taps(),
        "provinces": [pa, pb],
        "elapsed_s": elapsed,
        "province_window_s": rule.province_window_s,
    }))
}

/// The fingerprint of an impossible-travel finding: the card and both taps, earlier first.
pub fn travel_fingerprint(card: &[u8; 8], a: &CardTap, b: &CardTap) -> String {
    let key = |t: &CardTap| (t.time, t.place.terminal_id, t.seq);
    let (x, y) = if key(a) <= key(b) { (a, b) } else { (b, a) };
    format!(
        "{}:{}:{}:{}:{}",
        hex::encode(card),
        x.place.terminal_id,
        x.seq,
        y.place.terminal_id,
        y.seq
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    kind: Option<String>,
    terminal: Option<String>,
    card: Option<String>,
    since: Option<String>,
    after: Option<String>,
    limit: Option<String>,
}

/// An anomaly as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AnomalyJson {
    /// Id (ascending in the order found).
    pub id: i64,
    /// Kind name.
    pub kind: String,
    /// Key id of the terminal whose upload showed it (hex).
    pub terminal: String,
    /// The terminal's id.
    pub terminal_id: i64,
    /// The card (hex), when it is about one.
    pub card_serial: Option<String>,
    /// One sentence for people.
    pub detail: String,
    /// The numbers and records behind it.
    pub evidence: serde_json::Value,
    /// When it was found (server time).
    pub found_at: i64,
    /// When later uploads explained it (a gap filled), if they did.
    pub resolved_at: Option<i64>,
}

fn bad_query(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_query", message)
}

fn hex8(field: &str, s: &str) -> ApiResult<[u8; 8]> {
    hex::decode(s)
        .ok()
        .and_then(|v| <[u8; 8]>::try_from(v).ok())
        .ok_or_else(|| bad_query(format!("`{field}` must be 8 bytes in hex (16 hex digits)")))
}

fn number(field: &str, s: &str, max: i64) -> ApiResult<i64> {
    s.parse::<i64>()
        .ok()
        .filter(|v| (0..=max).contains(v))
        .ok_or_else(|| bad_query(format!("`{field}` must be a whole number from 0 to {max}")))
}

/// The anomalies of the office's database that match `where_sql` (its placeholders made by
/// `params`), oldest first. Shared by the list and the card statement.
pub async fn load(
    conn: &mut sqlx::AnyConnection,
    where_sql: &str,
    params: Params,
    limit: i64,
) -> ApiResult<Vec<AnomalyJson>> {
    let sql = format!(
        "SELECT a.id, a.kind, a.terminal_id, t.key_id, a.card_serial, a.detail, a.evidence, \
         a.found_at, a.resolved_at FROM anomalies a JOIN terminals t ON t.id = a.terminal_id \
         {where_sql} ORDER BY a.id LIMIT {limit}"
    );
    let rows = params.query(sql).fetch_all(conn).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let key_id: Vec<u8> = r.try_get("key_id")?;
        let card: Option<Vec<u8>> = r.try_get("card_serial")?;
        let evidence: String = r.try_get("evidence")?;
        out.push(AnomalyJson {
            id: r.try_get("id")?,
            kind: r.try_get("kind")?,
            terminal: hex::encode(key_id),
            terminal_id: r.try_get("terminal_id")?,
            card_serial: card.map(hex::encode),
            detail: r.try_get("detail")?,
            evidence: serde_json::from_str(&evidence)
                .unwrap_or_else(|_| serde_json::json!({ "unparsed": evidence })),
            found_at: r.try_get("found_at")?,
            resolved_at: r.try_get("resolved_at")?,
        });
    }
    Ok(out)
}

/// A value bound into a dynamically built query.
#[derive(Debug, Clone)]
pub enum Bind {
    /// BIGINT.
    Int(i64),
    /// TEXT.
    Text(String),
    /// BLOB / BYTEA.
    Blob(Vec<u8>),
    /// BIGINT or NULL.
    OptInt(Option<i64>),
    /// BLOB / BYTEA or NULL.
    OptBlob(Option<Vec<u8>>),
}

impl From<i64> for Bind {
    fn from(v: i64) -> Self {
        Bind::Int(v)
    }
}
impl From<String> for Bind {
    fn from(v: String) -> Self {
        Bind::Text(v)
    }
}
impl From<&str> for Bind {
    fn from(v: &str) -> Self {
        Bind::Text(v.to_owned())
    }
}
impl From<Vec<u8>> for Bind {
    fn from(v: Vec<u8>) -> Self {
        Bind::Blob(v)
    }
}
impl From<Option<i64>> for Bind {
    fn from(v: Option<i64>) -> Self {
        Bind::OptInt(v)
    }
}
impl From<Option<Vec<u8>>> for Bind {
    fn from(v: Option<Vec<u8>>) -> Self {
        Bind::OptBlob(v)
    }
}

/// The parameters of a statement built at run time, written `?` on SQLite and `$1, $2, ...` on
/// PostgreSQL, in the order they appear in the text.
///
/// Not `$N` on SQLite too (it accepts them): SQLite finds a named parameter by walking its list
/// of names, both when it parses the statement and when sqlx asks each parameter's name to bind
/// it, so `$N` costs time quadratic in the number of parameters, and the multi-row INSERTs of a
/// log batch have thousands.
#[derive(Debug)]
pub struct Params {
    numbered: bool,
    values: Vec<Bind>,
}

impl Params {
    /// Parameters for `backend`.
    pub fn new(backend: crate::db::Backend) -> Self {
        Params {
            numbered: backend == crate::db::Backend::Postgres,
            values: Vec::new(),
        }
    }

    /// Adds a value; answers its placeholder, to be written into the text at this point.
    pub fn push(&mut self, v: impl Into<Bind>) -> Cow<'static, str> {
        self.values.push(v.into());
        if self.numbered {
            Cow::Owned(format!("${}", self.values.len()))
        } else {
            Cow::Borrowed("?")
        }
    }

    /// `p, p, ...` of a list of values (for `IN (...)`).
    pub fn list<T: Into<Bind>>(&mut self, values: impl IntoIterator<Item = T>) -> String {
        let mut out = String::new();
        for (i, v) in values.into_iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&self.push(v));
        }
        out
    }

    /// `(p, p, ...)` of one row of values.
    pub fn row(&mut self, values: Vec<Bind>) -> String {
        let mut out = String::from("(");
        for (i, v) in values.into_iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&self.push(v));
        }
        out.push(')');
        out
    }

    /// Whether no value was added.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The statement `sql` with the values bound.
    pub fn query(
        self,
        sql: String,
    ) -> sqlx::query::Query<'static, sqlx::Any, <sqlx::Any as sqlx::Database>::Arguments> {
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for b in self.values {
            q = match b {
                Bind::Int(v) => q.bind(v),
                Bind::Text(v) => q.bind(v),
                Bind::Blob(v) => q.bind(v),
                Bind::OptInt(v) => q.bind(v),
                Bind::OptBlob(v) => q.bind(v),
            };
        }
        q
    }
}

async fn list(
    State(state): State<AppState>,
    staff: Staff,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Vec<AnomalyJson>>> {
    staff.require(&[Role::Auditor, Role::Admin])?;
    let mut clauses: Vec<String> = Vec::new();
    let mut params = Params::new(state.db.backend());
    let mut push = |clause: &str, b: Bind| {
        let p = params.push(b);
        clauses.push(clause.replace('?', &p));
    };
    if let Some(k) = q.kind.as_deref() {
        if Kind::from_name(k).is_none() && !LEGACY_KINDS.contains(&k) {
            return Err(bad_query(format!(
                "`kind` must be one of {}",
                Kind::ALL.map(Kind::name).join(", ")
            )));
        }
        push("a.kind = ?", Bind::Text(k.to_owned()));
    }
    if let Some(t) = q.terminal.as_deref() {
        push("t.key_id = ?", Bind::Blob(hex8("terminal", t)?.to_vec()));
    }
    if let Some(c) = q.card.as_deref() {
        push("a.card_serial = ?", Bind::Blob(hex8("card", c)?.to_vec()));
    }
    if let Some(s) = q.since.as_deref() {
        push(
            "a.found_at >= ?",
            Bind::Int(number("since", s, i64::MAX / 2)?),
        );
    }
    if let Some(a) = q.after.as_deref() {
        push("a.id > ?", Bind::Int(number("after", a, i64::MAX / 2)?));
    }
    let limit = match q.limit.as_deref() {
        Some(l) => number("limit", l, 1000)?.max(1),
        None => 100,
    };
    let where_sql = if clauses.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", clauses.join(" AND "))
    };
    let mut conn = state.db.pool().acquire().await?;
    Ok(Json(load(&mut conn, &where_sql, params, limit).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(id: i64, region: u32, location: Option<(i64, i64)>) -> Place {
        Place {
            terminal_id: id,
            key_id: [id as u8; 8],
            region,
            location,
        }
    }

    const RULE: TravelRule = TravelRule {
        max_speed_kmh: 250,
        slack_s: 60,
        province_window_s: 1800,
    };

    // Tian'anmen, Beijing and the Bund, Shanghai: about 1,067 km apart.
    const BEIJING: (i64, i64) = (39_907_500, 116_397_200);
    const SHANGHAI: (i64, i64) = (31_240_000, 121_490_000);

    #[test]
    fn distances_are_great_circle() {
        let d = distance_km(BEIJING, SHANGHAI);
        assert!((1060.0..1075.0).contains(&d), "{d}");
        assert_eq!(distance_km(BEIJING, BEIJING), 0.0);
        // A quarter of the equator.
        let q = distance_km((0, 0), (0, 90_000_000));
        assert!((q - HALF_CIRCUMFERENCE_KM / 2.0).abs() < 1e-6, "{q}");
        // Antipodes: half the circumference, not NaN.
        let h = distance_km((0, 0), (0, 180_000_000));
        assert!((h - HALF_CIRCUMFERENCE_KM).abs() < 1e-6, "{h}");
    }

    #[test]
    fn travel_by_location_uses_speed_and_slack() {
        let bj = place(1, 110105, Some(BEIJING));
        let sh = place(2, 310101, Some(SHANGHAI));
        let tap = |p: Place, seq, time| CardTap {
            place: p,
            seq,
            time,
        };
        // 1,067 km in 2 hours is 533 km/h: impossible at 250 km/h.
        let e = impossible_travel(&tap(bj, 1, 1000), &tap(sh, 7, 1000 + 7200), &RULE).unwrap();
        assert_eq!(e["rule"], "location");
        assert_eq!(e["elapsed_s"], 7200);
        assert_eq!(e["taps"][0]["seq"], 1);
        assert_eq!(e["taps"][1]["region"], 310101);
        let speed = e["speed_kmh"].as_f64().unwrap();
        assert!((530.0..537.0).contains(&speed), "{speed}");
        // The same in the other order gives the same evidence order (earlier first).
        let r = impossible_travel(&tap(sh, 7, 1000 + 7200), &tap(bj, 1, 1000), &RULE).unwrap();
        assert_eq!(r, e);
        // In 5 hours it is possible (214 km/h).
        assert!(impossible_travel(&tap(bj, 1, 0), &tap(sh, 2, 5 * 3600), &RULE).is_none());
        // Two terminals 1 km apart, 10 s between: the slack of 60 s makes it 51 km/h.
        let near = place(3, 110105, Some((BEIJING.0 + 9_000, BEIJING.1)));
        assert!(impossible_travel(&tap(bj, 1, 0), &tap(near, 1, 10), &RULE).is_none());
        // Without slack it is 360 km/h.
        let strict = TravelRule { slack_s: 0, ..RULE };
        assert!(impossible_travel(&tap(bj, 1, 0), &tap(near, 1, 10), &strict).is_some());
        // Simultaneous taps far apart: no speed, still impossible.
        let e = impossible_travel(&tap(bj, 1, 0), &tap(sh, 1, 0), &RULE).unwrap();
        assert!(e["speed_kmh"].is_null());
        // One terminal is never impossible.
        assert!(impossible_travel(&tap(bj, 1, 0), &tap(bj, 2, 0), &RULE).is_none());
    }

    #[test]
    fn travel_without_location_uses_provinces() {
        let tap = |p: Place, time| CardTap {
            place: p,
            seq: 1,
            time,
        };
        let beijing = place(1, 110105, None);
        let also_beijing = place(2, 110228, None);
        let hebei = place(3, 130102, Some((38_000_000, 114_500_000)));
        let national = place(4, 0, None);
        let e = impossible_travel(&tap(beijing, 0), &tap(hebei, 1799), &RULE).unwrap();
        assert_eq!(e["rule"], "province");
        assert_eq!(e["provinces"], serde_json::json!([11, 13]));
        assert!(impossible_travel(&tap(beijing, 0), &tap(hebei, 1800), &RULE).is_none());
        assert!(impossible_travel(&tap(beijing, 0), &tap(also_beijing, 1), &RULE).is_none());
        assert!(impossible_travel(&tap(beijing, 0), &tap(national, 1), &RULE).is_none());
        assert_eq!(national.province(), None);
        assert_eq!(hebei.province(), Some(13));
    }

    #[test]
    fn horizons_cover_the_farthest_places() {
        // Half the Earth at 250 km/h takes 80 hours.
        let h = RULE.horizon_s();
        assert!((80 * 3600..81 * 3600).contains(&h), "{h}");
        let slow_window = TravelRule {
            max_speed_kmh: 2000,
            slack_s: 0,
            province_window_s: 86_400,
        };
        assert_eq!(slow_window.horizon_s(), 86_400);
    }

    #[test]
    fn fingerprints_do_not_depend_on_order() {
        let a = CardTap {
            place: place(1, 110105, None),
            seq: 4,
            time: 10,
        };
        let b = CardTap {
            place: place(2, 130102, None),
            seq: 9,
            time: 5,
        };
        let card = [0xAB; 8];
        assert_eq!(
            travel_fingerprint(&card, &a, &b),
            travel_fingerprint(&card, &b, &a)
        );
        assert_eq!(
            travel_fingerprint(&card, &a, &b),
            "abababababababab:2:9:1:4"
        );
    }

    #[test]
    fn params_are_numbered_on_postgres_and_anonymous_on_sqlite() {
        use crate::db::Backend;
        let mut p = Params::new(Backend::Postgres);
        assert!(p.is_empty());
        assert_eq!(p.push(7i64), "$1");
        assert_eq!(
            p.row(vec![1i64.into(), "x".into(), None::<i64>.into()]),
            "($2,$3,$4)"
        );
        assert!(!p.is_empty());
        let mut p = Params::new(Backend::Sqlite);
        assert_eq!(p.push(vec![1u8]), "?");
        assert_eq!(p.row(vec![1i64.into(), Some(vec![2u8]).into()]), "(?,?)");
        assert_eq!(p.list([1i64, 2]), "?,?");
        let mut p = Params::new(Backend::Postgres);
        assert_eq!(p.list([1i64, 2, 3]), "$1,$2,$3");
    }

    #[test]
    fn kinds_round_trip() {
        for k in Kind::ALL {
            assert_eq!(Kind::from_name(k.name()), Some(k));
        }
        assert_eq!(Kind::from_name("bad_receipt"), None);
    }
}
