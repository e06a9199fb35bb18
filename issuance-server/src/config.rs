//! Settings of an office server, kept in `DIR/config.json` (written by `init` with the defaults
//! below; every field may be left out and then takes its default).

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// Office settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Office name: the subject of its key certificates.
    pub office: String,
    /// The office's 6-digit administrative division code (0 = national).
    pub region: u32,
    /// Validity of a credential (and of the certificate expiry attribute), in days.
    pub credential_validity_days: u32,
    /// Validity of the office key certificates made by `init`, in days.
    pub key_validity_days: u32,
    /// Validity of a terminal's key certificate, in days.
    pub terminal_validity_days: u32,
    /// Validity of a welfare-point voucher, in days.
    pub voucher_validity_days: u32,
    /// Largest voucher amount accepted.
    pub max_voucher_amount: u32,
    /// Points on a new card whose holder is in the welfare-points programme.
    pub welfare_initial_points: u32,
    /// Key version number of the cards' SCP03 keys.
    pub scp03_kvn: u8,
    /// A status-list epoch older than this is replaced by a fresh one (same content) the next
    /// time the list is asked for, so terminals never run past `max_status_age_s`.
    pub status_refresh_s: u64,
    /// Deltas are offered from at most this many epochs back; older clients get 410 and fetch
    /// the full list.
    pub max_delta_epochs: u64,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// A log batch whose `created_at` differs from the server's clock at arrival by more than
    /// this many seconds is a `clock_drift` anomaly.
    pub clock_drift_bound_s: u64,
    /// Fastest plausible travel between two taps of one card, in km/h (`impossible_travel`
    /// when both terminals have a location).
    pub travel_max_speed_kmh: u32,
    /// Terminal clocks may disagree by this much: the time between two taps is taken as this
    /// many seconds longer before the speed is judged.
    pub travel_slack_s: u64,
    /// Without locations: taps of one card in two provinces less than this many seconds apart
    /// are `impossible_travel`.
    pub travel_province_window_s: u64,
    /// Usage statistics count days in this time zone (seconds east of UTC; China Standard Time
    /// by default), so that a day is the day of the people who tapped.
    pub stats_utc_offset_s: i32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            office: "Certificate office".into(),
            region: 0,
            credential_validity_days: 5 * 365,
            key_validity_days: 10 * 365,
            terminal_validity_days: 2 * 365,
            voucher_validity_days: 90,
            max_voucher_amount: 100_000,
            welfare_initial_points: 100,
            scp03_kvn: 0x30,
            status_refresh_s: 12 * 3600,
            max_delta_epochs: 100_000,
            max_body_bytes: 512 * 1024,
            clock_drift_bound_s: 300,
            travel_max_speed_kmh: 250,
            travel_slack_s: 60,
            travel_province_window_s: 30 * 60,
            stats_utc_offset_s: 8 * 3600,
        }
    }
}

impl Config {
    /// Reads `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let c: Config =
            serde_json::from_str(&text).with_context(|| format!("in {}", path.display()))?;
        c.check()
            .with_context(|| format!("in {}", path.display()))?;
        Ok(c)
    }

    /// Checks the values.
    pub fn check(&self) -> Result<()> {
        if self.office.is_empty() || self.office.len() > 32 {
            bail!("`office` must be 1 to 32 bytes (it is part of 48-byte certificate subjects)");
        }
        if self.region != 0 && !(100_000..=999_999).contains(&self.region) {
            bail!("`region` must be a 6-digit administrative division code, or 0 for national");
        }
        for (name, v) in [
            ("credential_validity_days", self.credential_validity_days),
            ("key_validity_days", self.key_validity_days),
            ("terminal_validity_days", self.terminal_validity_days),
            ("voucher_validity_days", self.voucher_validity_days),
            ("max_voucher_amount", self.max_voucher_amount),
        ] {
            if v == 0 {
                bail!("`{name}` must be at least 1");
            }
        }
        if self.status_refresh_s < 60 {
            bail!("`status_refresh_s` must be at least 60");
        }
        if self.max_body_bytes < 4096 {
            bail!("`max_body_bytes` must be at least 4096");
        }
        if self.clock_drift_bound_s == 0 {
            bail!("`clock_drift_bound_s` must be at least 1");
        }
        if !(1..=2000).contains(&self.travel_max_speed_kmh) {
            bail!("`travel_max_speed_kmh` must be 1 to 2000 (km/h)");
        }
        if self.travel_slack_s > 3600 {
            bail!("`travel_slack_s` must be at most 3600");
        }
        if self.travel_province_window_s > 86_400 {
            bail!("`travel_province_window_s` must be at most 86400 (one day)");
        }
        if self.stats_utc_offset_s.unsigned_abs() > 14 * 3600 {
            bail!("`stats_utc_offset_s` must be within 14 hours of UTC (-50400 to 50400)");
        }
        Ok(())
    }

    /// Credential validity in seconds.
    pub fn credential_validity_s(&self) -> u64 {
        u64::from(self.credential_validity_days) * 86_400
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_and_missing_fields_default() {
        let c = Config::default();
        c.check().unwrap();
        let text = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<Config>(&text).unwrap(), c);
        let partial: Config = serde_json::from_str(r#"{"office": "X"}"#).unwrap();
        assert_eq!(partial.office, "X");
        assert_eq!(partial.credential_validity_days, 5 * 365);
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(serde_json::from_str::<Config>(r#"{"offce": "X"}"#).is_err());
        let mut c = Config {
            region: 12,
            ..Config::default()
        };
        assert!(c.check().is_err());
        c.region = 110105;
        c.check().unwrap();
        c.credential_validity_days = 0;
        assert!(c.check().is_err());
        let c = Config {
            office: String::new(),
            ..Config::default()
        };
        assert!(c.check().is_err());
        for bad in [
            Config {
                clock_drift_bound_s: 0,
                ..Config::default()
            },
            Config {
                travel_max_speed_kmh: 0,
                ..Config::default()
            },
            Config {
                travel_max_speed_kmh: 2001,
                ..Config::default()
            },
            Config {
                travel_slack_s: 3601,
                ..Config::default()
            },
            Config {
                travel_province_window_s: 86_401,
                ..Config::default()
            },
            Config {
                stats_utc_offset_s: -14 * 3600 - 1,
                ..Config::default()
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
        let edge = Config {
            travel_max_speed_kmh: 2000,
            travel_slack_s: 0,
            travel_province_window_s: 0,
            stats_utc_offset_s: 14 * 3600,
            ..Config::default()
        };
        edge.check().unwrap();
    }
}
