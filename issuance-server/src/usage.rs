//! Usage statistics: per service, region (the terminal's administrative division code) and day,
//! the taps, accepted, refused, ask-staff and refused-by-reason counts, points debited and
//! granted, and distinct cards. `GET /api/v1/stats/usage` (JSON) and `GET /api/v1/stats/usage.csv`
//! (or `?format=csv`), for auditors and admins.
//!
//! **No person is exposed.** A cell (one service, region and day) with fewer than
//! [`MIN_DISTINCT_CARDS`] distinct cards is suppressed: its counts are withheld and it is marked
//! `suppressed`. No total over cells is printed anywhere, and every answer is a selection of the
//! same fixed cells (filters select rows, they never regroup them), so a withheld count cannot be
//! recovered by subtracting published numbers from a published total.
//!
//! Days are counted in the office's time zone (`stats_utc_offset_s`, China Standard Time by
//! default). Grants are made at the office, not at a terminal: they count under the `welfare`
//! service, the office's region and the day the voucher was signed.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};
use shared_crypto::model::{Outcome, Reason, Service};
use sqlx::Row;

use crate::auth::{Role, Staff};
use crate::db::get_u64;
use crate::error::{ApiError, ApiResult, Json, Query};
use crate::AppState;

/// Cells with fewer distinct cards than this are suppressed.
pub const MIN_DISTINCT_CARDS: u64 = 5;

/// The usage endpoints.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/stats/usage", get(usage))
        .route("/stats/usage.csv", get(usage_csv))
}

/// Days since 1970-01-01 of the proleptic Gregorian date `y-m-d` (no check of the day).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    // Years counted from March, so that the leap day is the last day of its year.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of day `z` (days since 1970-01-01).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Parses `YYYY-MM-DD` (a real calendar date, years 1970 to 9999) into days since 1970-01-01.
pub fn parse_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let digits = |r: std::ops::Range<usize>| -> Option<u32> {
        s.get(r.clone())
            .filter(|t| t.bytes().all(|c| c.is_ascii_digit()))?
            .parse()
            .ok()
    };
    let (y, m, d) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    if y < 1970 || !(1..=12).contains(&m) || d == 0 {
        return None;
    }
    let days = days_from_civil(i64::from(y), m, d);
    // A day past the month's end lands in the next month: refuse it.
    (civil_from_days(days) == (i64::from(y), m, d)).then_some(days)
}

/// `YYYY-MM-DD` of day `z`.
pub fn format_date(z: i64) -> String {
    let (y, m, d) = civil_from_days(z);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Which cells to show.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Filter {
    /// One service.
    pub service: Option<Service>,
    /// One region code.
    pub region: Option<u32>,
    /// First day (days since 1970-01-01 in the office's time zone).
    pub from: Option<i64>,
    /// Last day, inclusive.
    pub to: Option<i64>,
}

/// One cell of the usage table. When `suppressed`, every count is `None`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Cell {
    /// `YYYY-MM-DD`.
    pub date: String,
    /// Days since 1970-01-01 (in the office's time zone).
    pub day: i64,
    /// Service name.
    pub service: String,
    /// The terminals' administrative division code (the office's for grants).
    pub region: u32,
    /// Fewer than [`MIN_DISTINCT_CARDS`] distinct cards: counts withheld.
    pub suppressed: bool,
    /// Taps.
    pub taps: Option<u64>,
    /// Accepted taps.
    pub accepted: Option<u64>,
    /// Refused taps.
    pub refused: Option<u64>,
    /// Taps that asked for staff.
    pub ask_staff: Option<u64>,
    /// Taps not accepted (refused or ask staff), per reason name.
    pub refused_by_reason: Option<BTreeMap<String, u64>>,
    /// Points debited (receipts in the ledger).
    pub points_debited: Option<u64>,
    /// Points granted (vouchers).
    pub points_granted: Option<u64>,
    /// Distinct cards that tapped or were granted points.
    pub distinct_cards: Option<u64>,
}

#[derive(Debug, Default, Clone)]
struct Acc {
    taps: u64,
    accepted: u64,
    refused: u64,
    ask_staff: u64,
    reasons: BTreeMap<u8, u64>,
    debited: u64,
    granted: u64,
    cards: u64,
}

/// Computes the cells of `filter`, oldest day first, then by service and region.
pub async fn compute(state: &AppState, filter: Filter) -> ApiResult<Vec<Cell>> {
    let pool = state.db.pool();
    let off = i64::from(state.config.stats_utc_offset_s);
    let office_region = state.config.region;
    // Every value in these statements is an integer computed here: no text from the request.
    let day = |col: &str| format!("({col} + {off}) / 86400");
    let time_bounds = |col: &str| {
        let mut c = Vec::new();
        if let Some(f) = filter.from {
            c.push(format!("{col} >= {}", f * 86_400 - off));
        }
        if let Some(t) = filter.to {
            c.push(format!("{col} < {}", (t + 1) * 86_400 - off));
        }
        c
    };
    let mut tap_where = time_bounds("t.time");
    if let Some(s) = filter.service {
        tap_where.push(format!("t.service = {}", s as u8));
    }
    if let Some(r) = filter.region {
        tap_where.push(format!("m.region = {r}"));
    }
    let and = |conds: &[String]| {
        conds
            .iter()
            .map(|c| format!(" AND {c}"))
            .collect::<String>()
    };
    let grants_apply = filter.service.is_none_or(|s| s == Service::Welfare)
        && filter.region.is_none_or(|r| r == office_region);
    let grant_where = time_bounds("v.created_at");
    let tday = day("t.time");
    let vday = day("v.created_at");
    let welfare = Service::Welfare as u8;

    let mut cells: BTreeMap<(i64, u8, u32), Acc> = BTreeMap::new();
    let key = |row: &sqlx::any::AnyRow| -> ApiResult<(i64, u8, u32)> {
        Ok((
            row.try_get::<i64, _>("day")?,
            u8::try_from(get_u64(row, "service")?).unwrap_or(u8::MAX),
            u32::try_from(get_u64(row, "region")?).unwrap_or(0),
        ))
    };
    let sql = format!(
        "SELECT {tday} AS day, t.service AS service, m.region AS region, COUNT(*) AS taps, \
         COUNT(CASE WHEN t.outcome = {a} THEN 1 END) AS accepted, \
         COUNT(CASE WHEN t.outcome = {r} THEN 1 END) AS refused, \
         COUNT(CASE WHEN t.outcome = {s} THEN 1 END) AS ask_staff \
         FROM taps t JOIN terminals m ON m.id = t.terminal_id WHERE 1 = 1{} GROUP BY 1, 2, 3",
        and(&tap_where),
        a = Outcome::Accepted as u8,
        r = Outcome::Refused as u8,
        s = Outcome::AskStaff as u8,
    );
    for row in sqlx::query(sqlx::AssertSqlSafe(sql))
        .fetch_all(pool)
        .await?
    {
        let acc = cells.entry(key(&row)?).or_default();
        acc.taps = get_u64(&row, "taps")?;
        acc.accepted = get_u64(&row, "accepted")?;
        acc.refused = get_u64(&row, "refused")?;
        acc.ask_staff = get_u64(&row, "ask_staff")?;
    }
    let sql = format!(
        "SELECT {tday} AS day, t.service AS service, m.region AS region, t.reason AS reason, \
         COUNT(*) AS n FROM taps t JOIN terminals m ON m.id = t.terminal_id \
         WHERE t.outcome <> {}{} GROUP BY 1, 2, 3, 4",
        Outcome::Accepted as u8,
        and(&tap_where)
    );
    for row in sqlx::query(sqlx::AssertSqlSafe(sql))
        .fetch_all(pool)
        .await?
    {
        let reason = u8::try_from(get_u64(&row, "reason")?).unwrap_or(u8::MAX);
        let n = get_u64(&row, "n")?;
        cells
            .entry(key(&row)?)
            .or_default()
            .reasons
            .insert(reason, n);
    }
    let sql = format!(
        "SELECT {tday} AS day, t.service AS service, m.region AS region, \
         CAST(SUM(r.amount) AS BIGINT) AS points FROM receipts r JOIN taps t ON \
         t.terminal_id = r.terminal_id AND t.seq = r.tap_seq JOIN terminals m ON \
         m.id = t.terminal_id WHERE 1 = 1{} GROUP BY 1, 2, 3",
        and(&tap_where)
    );
    for row in sqlx::query(sqlx::AssertSqlSafe(sql))
        .fetch_all(pool)
        .await?
    {
        cells.entry(key(&row)?).or_default().debited = get_u64(&row, "points")?;
    }
    if grants_apply {
        let sql = format!(
            "SELECT {vday} AS day, CAST({welfare} AS BIGINT) AS service, \
             CAST({office_region} AS BIGINT) AS region, \
             CAST(SUM(v.amount) AS BIGINT) AS points FROM vouchers v WHERE 1 = 1{} \
             GROUP BY 1",
            and(&grant_where)
        );
        for row in sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(pool)
            .await?
        {
            cells.entry(key(&row)?).or_default().granted = get_u64(&row, "points")?;
        }
    }
    // Distinct cards of a cell: those that tapped there and those granted points there.
    let grant_branch = if grants_apply {
        format!(
            " UNION ALL SELECT {vday} AS day, CAST({welfare} AS BIGINT) AS service, \
             CAST({office_region} AS BIGINT) AS region, \
             c.serial AS card FROM vouchers v JOIN cards c ON c.id = v.card_id WHERE 1 = 1{}",
            and(&grant_where)
        )
    } else {
        String::new()
    };
    let sql = format!(
        "SELECT day, service, region, COUNT(DISTINCT card) AS cards FROM (SELECT {tday} AS day, \
         t.service AS service, m.region AS region, t.card_serial AS card FROM taps t JOIN \
         terminals m ON m.id = t.terminal_id WHERE t.card_serial IS NOT NULL{}{grant_branch}) u \
         GROUP BY day, service, region",
        and(&tap_where)
    );
    for row in sqlx::query(sqlx::AssertSqlSafe(sql))
        .fetch_all(pool)
        .await?
    {
        cells.entry(key(&row)?).or_default().cards = get_u64(&row, "cards")?;
    }

    Ok(cells
        .into_iter()
        .map(|((day, service, region), acc)| {
            let service = Service::try_from(service)
                .map(|s| s.name().to_owned())
                .unwrap_or_else(|_| format!("service_{service}"));
            let shown = acc.cards >= MIN_DISTINCT_CARDS;
            let v = |x: u64| shown.then_some(x);
            Cell {
                date: format_date(day),
                day,
                service,
                region,
                suppressed: !shown,
                taps: v(acc.taps),
                accepted: v(acc.accepted),
                refused: v(acc.refused),
                ask_staff: v(acc.ask_staff),
                refused_by_reason: shown.then(|| {
                    acc.reasons
                        .iter()
                        .map(|(r, n)| (reason_name(*r), *n))
                        .collect()
                }),
                points_debited: v(acc.debited),
                points_granted: v(acc.granted),
                distinct_cards: v(acc.cards),
            }
        })
        .collect())
}

fn reason_name(code: u8) -> String {
    Reason::try_from(code)
        .map(|r| r.name().to_owned())
        .unwrap_or_else(|_| format!("reason_{code}"))
}

/// Reasons a tap can be refused for (or sent to staff): the CSV's per-reason columns.
fn refusal_reasons() -> impl Iterator<Item = Reason> {
    Reason::ALL
        .iter()
        .copied()
        .filter(|r| !matches!(r, Reason::Ok | Reason::CompanionPassage))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageQuery {
    service: Option<String>,
    region: Option<String>,
    from: Option<String>,
    to: Option<String>,
    format: Option<String>,
}

fn bad_query(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_query", message)
}

fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| !s.is_empty())
}

fn parse_filter(q: &UsageQuery) -> ApiResult<Filter> {
    let service = match given(&q.service) {
        Some(s) => Some(Service::from_name(s).ok_or_else(|| {
            bad_query("`service` must be one of transit, employment, rehab, welfare")
        })?),
        None => None,
    };
    let region = match given(&q.region) {
        Some(r) => Some(
            r.parse::<u32>()
                .ok()
                .filter(|v| *v == 0 || (100_000..=999_999).contains(v))
                .ok_or_else(|| {
                    bad_query(
                        "`region` must be a 6-digit administrative division code, or 0 for \
                         national terminals",
                    )
                })?,
        ),
        None => None,
    };
    let date = |field: &str, v: &Option<String>| -> ApiResult<Option<i64>> {
        match given(v) {
            Some(s) => parse_date(s).map(Some).ok_or_else(|| {
                bad_query(format!(
                    "`{field}` must be a date YYYY-MM-DD (1970 or later), e.g. 2024-05-01"
                ))
            }),
            None => Ok(None),
        }
    };
    let (from, to) = (date("from", &q.from)?, date("to", &q.to)?);
    if let (Some(f), Some(t)) = (from, to) {
        if f > t {
            return Err(bad_query("`from` is after `to`"));
        }
    }
    Ok(Filter {
        service,
        region,
        from,
        to,
    })
}

/// The JSON answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UsageJson {
    /// Cells with fewer distinct cards than this are suppressed.
    pub min_distinct_cards: u64,
    /// The time zone days are counted in (seconds east of UTC).
    pub utc_offset_s: i32,
    /// The cells, oldest first.
    pub rows: Vec<Cell>,
    /// How many of them are suppressed.
    pub suppressed_rows: u64,
}

async fn usage(
    State(state): State<AppState>,
    staff: Staff,
    Query(q): Query<UsageQuery>,
) -> ApiResult<Response> {
    staff.require(&[Role::Auditor, Role::Admin])?;
    let filter = parse_filter(&q)?;
    let rows = compute(&state, filter).await?;
    match given(&q.format) {
        None | Some("json") => Ok(Json(UsageJson {
            min_distinct_cards: MIN_DISTINCT_CARDS,
            utc_offset_s: state.config.stats_utc_offset_s,
            suppressed_rows: rows.iter().filter(|c| c.suppressed).count() as u64,
            rows,
        })
        .into_response()),
        Some("csv") => Ok(csv_response(&rows)),
        Some(_) => Err(bad_query("`format` must be json or csv")),
    }
}

async fn usage_csv(
    State(state): State<AppState>,
    staff: Staff,
    Query(q): Query<UsageQuery>,
) -> ApiResult<Response> {
    staff.require(&[Role::Auditor, Role::Admin])?;
    if given(&q.format).is_some_and(|f| f != "csv") {
        return Err(bad_query(
            "this endpoint answers CSV only; leave out `format`",
        ));
    }
    let filter = parse_filter(&q)?;
    let rows = compute(&state, filter).await?;
    Ok(csv_response(&rows))
}

/// The CSV form: a header row, then one row per cell; a suppressed cell has `suppressed` = 1 and
/// empty counts.
pub fn csv(rows: &[Cell]) -> String {
    let mut out = String::from(
        "date,service,region,suppressed,taps,accepted,refused,ask_staff,points_debited,\
         points_granted,distinct_cards",
    );
    for r in refusal_reasons() {
        out.push_str(",refused_");
        out.push_str(r.name());
    }
    out.push_str("\r\n");
    let num = |v: Option<u64>| v.map(|n| n.to_string()).unwrap_or_default();
    for c in rows {
        let mut fields = vec![
            c.date.clone(),
            c.service.clone(),
            c.region.to_string(),
            u8::from(c.suppressed).to_string(),
            num(c.taps),
            num(c.accepted),
            num(c.refused),
            num(c.ask_staff),
            num(c.points_debited),
            num(c.points_granted),
            num(c.distinct_cards),
        ];
        for r in refusal_reasons() {
            fields.push(num(c
                .refused_by_reason
                .as_ref()
                .map(|m| m.get(r.name()).copied().unwrap_or(0))));
        }
        out.push_str(&fields.join(","));
        out.push_str("\r\n");
    }
    out
}

fn csv_response(rows: &[Cell]) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"usage.csv\"",
            ),
        ],
        csv(rows),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip() {
        assert_eq!(parse_date("1970-01-01"), Some(0));
        assert_eq!(parse_date("2000-03-01"), Some(11_017));
        assert_eq!(parse_date("2024-02-29"), Some(19_782));
        assert_eq!(format_date(19_782), "2024-02-29");
        for z in (0..40_000).step_by(7) {
            assert_eq!(parse_date(&format_date(z)), Some(z), "{z}");
        }
        // Unix time 1700000000 is 2023-11-14 22:13:20 UTC.
        assert_eq!(format_date(1_700_000_000 / 86_400), "2023-11-14");
    }

    #[test]
    fn bad_dates_are_refused() {
        for bad in [
            "2023-02-29",
            "2024-02-30",
            "2024-04-31",
            "2024-13-01",
            "2024-00-10",
            "2024-01-00",
            "1969-12-31",
            "2024-1-01",
            "2024/01/01",
            "20240101",
            "+024-01-01",
            "2024-01-0a",
            "２０２４-01-01",
            "",
        ] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn csv_withholds_suppressed_counts() {
        let shown = Cell {
            date: "2024-05-01".into(),
            day: 19_844,
            service: "transit".into(),
            region: 110105,
            suppressed: false,
            taps: Some(12),
            accepted: Some(9),
            refused: Some(2),
            ask_staff: Some(1),
            refused_by_reason: Some([("passback".to_owned(), 2)].into_iter().collect()),
            points_debited: Some(0),
            points_granted: Some(0),
            distinct_cards: Some(6),
        };
        let hidden = Cell {
            service: "welfare".into(),
            suppressed: true,
            taps: None,
            accepted: None,
            refused: None,
            ask_staff: None,
            refused_by_reason: None,
            points_debited: None,
            points_granted: None,
            distinct_cards: None,
            ..shown.clone()
        };
        let text = csv(&[shown, hidden]);
        let lines: Vec<&str> = text.split("\r\n").collect();
        let header: Vec<&str> = lines[0].split(',').collect();
        assert_eq!(header.len(), 11 + refusal_reasons().count());
        assert!(header.contains(&"refused_passback"));
        assert!(!header.contains(&"refused_ok"));
        let row: Vec<&str> = lines[1].split(',').collect();
        assert_eq!(row.len(), header.len());
        assert_eq!(
            &row[..11],
            [
                "2024-05-01",
                "transit",
                "110105",
                "0",
                "12",
                "9",
                "2",
                "1",
                "0",
                "0",
                "6"
            ]
        );
        let at = header
            .iter()
            .position(|h| *h == "refused_passback")
            .unwrap();
        assert_eq!(row[at], "2");
        let row: Vec<&str> = lines[2].split(',').collect();
        assert_eq!(&row[..4], ["2024-05-01", "welfare", "110105", "1"]);
        assert!(row[4..].iter().all(|f| f.is_empty()), "{row:?}");
        assert_eq!(lines[3], "");
    }
}
