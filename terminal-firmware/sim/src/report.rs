//! What the service point sees and hears, in words (text) and as data (`--json`).
//!
//! A device shows an LED pattern and the prompt's text on its display, and sounds a buzzer
//! pattern and the voice prompt. On a PC all four become lines: "sees" for light and display,
//! "hears" for buzzer and voice, so that a test (or a person) checks both channels.

use serde::Serialize;
use shared_crypto::model::{Entitlements, Outcome};
use terminal_core::{Color, Decision, Lang, LightPattern, Signal, SoundPattern, TerminalState};

/// The light, as data.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Light {
    /// `green`, `red`, `amber`.
    pub color: &'static str,
    /// On time of one blink (ms).
    pub on_ms: u16,
    /// Off time (ms).
    pub off_ms: u16,
    /// Blinks.
    pub repeat: u8,
}

/// One buzzer tone (0 Hz: pause).
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct ToneJson {
    /// Frequency.
    pub hz: u16,
    /// Duration.
    pub ms: u16,
}

/// What the display shows besides the prompt.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct HolderJson {
    /// Name (employment).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Certificate number (employment).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate_number: Option<String>,
    /// Category (code 1..7).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category: Option<u8>,
    /// Category in words (in the chosen language).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category_name: Option<&'static str>,
    /// Level (1..4).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level: Option<u8>,
    /// Region code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<u32>,
    /// Birth year.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub birth_year: Option<u16>,
    /// Entitlement names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entitlements: Option<Vec<&'static str>>,
    /// Certificate expiry (Unix seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate_expiry: Option<u64>,
}

/// The welfare debit.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct DebitJson {
    /// Points debited.
    pub amount: u32,
    /// Balance after.
    pub balance_after: u32,
    /// Purse counter.
    pub counter: u32,
    /// Transaction reference (hex).
    pub reference: String,
    /// The card-signed receipt (hex of `Signed<ReceiptBody>`).
    pub receipt: Option<String>,
}

/// What the service point sees.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Sees {
    /// The LED pattern.
    pub light: Light,
    /// The display's message (the prompt's text).
    pub display: &'static str,
    /// What the holder disclosed, when the tap passed every check.
    pub holder: HolderJson,
    /// The debit, for welfare.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub debit: Option<DebitJson>,
}

/// What the service point hears.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Hears {
    /// Buzzer tones.
    pub tones: Vec<ToneJson>,
    /// Voice recording number.
    pub prompt_id: u8,
    /// The voice prompt in the chosen language.
    pub voice: &'static str,
    /// The same prompt in Chinese.
    pub voice_zh: &'static str,
    /// The same prompt in English.
    pub voice_en: &'static str,
}

/// One tap, as `--json` prints it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct TapReport {
    /// Service.
    pub service: &'static str,
    /// `accepted`, `refused`, `ask_staff`.
    pub outcome: &'static str,
    /// Reason code name (`ok`, `revoked`, ...).
    pub reason: &'static str,
    /// The terminal's time.
    pub time: Option<u64>,
    /// Card serial (hex), once its credential verified.
    pub card_serial: Option<String>,
    /// Status index.
    pub status_index: Option<u32>,
    /// Tap-log sequence number.
    pub log_seq: Option<u32>,
    /// The reader used.
    pub reader: Option<String>,
    /// Sight.
    pub sees: Sees,
    /// Sound.
    pub hears: Hears,
}

/// Name of an outcome.
pub fn outcome_name(o: Outcome) -> &'static str {
    match o {
        Outcome::Accepted => "accepted",
        Outcome::Refused => "refused",
        Outcome::AskStaff => "ask_staff",
    }
}

fn color_name(c: Color) -> &'static str {
    match c {
        Color::Green => "green",
        Color::Red => "red",
        Color::Amber => "amber",
    }
}

fn light(p: &LightPattern) -> Light {
    Light {
        color: color_name(p.color),
        on_ms: p.on_ms,
        off_ms: p.off_ms,
        repeat: p.repeat,
    }
}

fn entitlement_names(e: Entitlements) -> Vec<&'static str> {
    [
        (Entitlements::FREE_TRANSIT, "free_transit"),
        (Entitlements::COMPANION, "companion"),
        (Entitlements::REHAB_SUBSIDY, "rehab_subsidy"),
        (Entitlements::QUOTA_EMPLOYMENT, "quota_employment"),
        (Entitlements::WELFARE_POINTS, "welfare_points"),
    ]
    .into_iter()
    .filter(|(f, _)| e.has(*f))
    .map(|(_, n)| n)
    .collect()
}

impl TapReport {
    /// The report of `d` (its signal is what was shown), with texts in `lang`.
    pub fn new(d: &Decision, lang: Lang, reader: Option<&str>) -> Self {
        let s: &Signal = &d.signal;
        let h = &d.holder;
        let holder = HolderJson {
            name: h.name().map(str::to_owned),
            certificate_number: h.certificate_number.map(|c| c.to_string()),
            category: h.category.map(|c| c.code()),
            category_name: h.category.map(|c| match lang {
                Lang::ZhCn => c.name_zh(),
                Lang::En => c.name_en(),
            }),
            level: h.level.map(|l| l.get()),
            region: h.region,
            birth_year: h.birth_year,
            entitlements: h.entitlements.map(entitlement_names),
            certificate_expiry: h.certificate_expiry,
        };
        TapReport {
            service: d.service.name(),
            outcome: outcome_name(d.outcome),
            reason: d.reason.name(),
            time: d.time,
            card_serial: d.card_serial.map(hex::encode),
            status_index: d.status_index,
            log_seq: d.log_seq,
            reader: reader.map(str::to_owned),
            sees: Sees {
                light: light(&s.light),
                display: s.text(lang),
                holder,
                debit: d.debit.map(|x| DebitJson {
                    amount: x.amount,
                    balance_after: x.balance_after,
                    counter: x.counter,
                    reference: hex::encode(x.reference),
                    receipt: d.receipt().map(hex::encode),
                }),
            },
            hears: Hears {
                tones: s
                    .sound
                    .tones
                    .iter()
                    .map(|t| ToneJson { hz: t.hz, ms: t.ms })
                    .collect(),
                prompt_id: s.prompt.code(),
                voice: s.text(lang),
                voice_zh: s.text(Lang::ZhCn),
                voice_en: s.text(Lang::En),
            },
        }
    }

    /// The human-readable form: a `SEES` block, a `HEARS` line and a `RESULT` line.
    pub fn to_text(&self, lang: Lang) -> String {
        let mut out = String::new();
        let l = &self.sees.light;
        out.push_str(&format!(
            "SEES   {} light {}  |  {}\n",
            l.color,
            blink_words(l),
            self.sees.display
        ));
        if let Some(serial) = &self.card_serial {
            out.push_str(&format!(
                "       card {serial}, status index {}\n",
                self.status_index.map_or("-".into(), |i| i.to_string())
            ));
        }
        let h = &self.sees.holder;
        let mut fields = vec![];
        if let Some(n) = &h.name {
            fields.push(format!("name {n}"));
        }
        if let Some(c) = &h.certificate_number {
            fields.push(format!("certificate {c}"));
        }
        if let (Some(c), Some(name)) = (h.category, h.category_name) {
            fields.push(format!("category {c} ({name})"));
        }
        if let Some(v) = h.level {
            fields.push(format!("level {v}"));
        }
        if let Some(r) = h.region {
            fields.push(format!("region {r}"));
        }
        if let Some(y) = h.birth_year {
            fields.push(format!("born {y}"));
        }
        if let Some(e) = &h.entitlements {
            fields.push(format!("entitlements {}", e.join(",")));
        }
        if !fields.is_empty() {
            out.push_str(&format!("       holder: {}\n", fields.join("; ")));
        }
        if let Some(d) = &self.sees.debit {
            out.push_str(&format!(
                "       debit {} points, balance {} (counter {}), receipt kept\n",
                d.amount, d.balance_after, d.counter
            ));
        }
        let tones: Vec<String> = self
            .hears
            .tones
            .iter()
            .map(|t| {
                if t.hz == 0 {
                    format!("pause {} ms", t.ms)
                } else {
                    format!("{} Hz {} ms", t.hz, t.ms)
                }
            })
            .collect();
        let voice = match lang {
            Lang::ZhCn => self.hears.voice_zh,
            Lang::En => self.hears.voice_en,
        };
        out.push_str(&format!(
            "HEARS  buzzer [{}]  voice #{}: \"{}\"\n",
            tones.join(", "),
            self.hears.prompt_id,
            voice
        ));
        out.push_str(&format!(
            "RESULT {} ({}){}\n",
            self.outcome,
            self.reason,
            self.log_seq
                .map_or(", NOT LOGGED".into(), |s| format!(", log record {s}"))
        ));
        out
    }
}

fn blink_words(l: &Light) -> String {
    if l.repeat <= 1 {
        format!("steady {} ms", l.on_ms)
    } else {
        format!(
            "blinks {}x ({} ms on, {} ms off)",
            l.repeat, l.on_ms, l.off_ms
        )
    }
}

/// `status` as data.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct StatusReport {
    /// Key id (hex).
    pub key_id: String,
    /// Services in the certificate.
    pub services: Vec<&'static str>,
    /// The configured service.
    pub service: String,
    /// Server.
    pub server: String,
    /// Trust bundle epoch.
    pub bundle_epoch: Option<u64>,
    /// Status list epoch.
    pub status_epoch: Option<u64>,
    /// When that list was signed.
    pub status_issued_at: Option<u64>,
    /// Its age now (seconds).
    pub status_age_s: Option<u64>,
    /// The rules' limit on that age.
    pub max_status_age_s: Option<u32>,
    /// Whether the list is too old to decide (the terminal asks staff).
    pub status_too_old: Option<bool>,
    /// Rules epoch.
    pub rules_epoch: Option<u64>,
    /// Log records in flash.
    pub log_records: u32,
    /// Log records not uploaded.
    pub log_pending: u32,
    /// Log sectors in use / total.
    pub log_used_sectors: u32,
    /// Log sectors.
    pub log_sectors: u32,
    /// Next log sequence number.
    pub log_next_seq: u32,
}

impl StatusReport {
    /// The report of `s` at `now`.
    pub fn new(s: &TerminalState, now: Option<u64>, service: &str, server: &str) -> Self {
        let age = s
            .status_issued_at
            .zip(now)
            .map(|(at, now)| now.saturating_sub(at));
        let max = s.rules.map(|r| r.max_status_age_s);
        StatusReport {
            key_id: hex::encode(s.key_id),
            services: shared_crypto::model::Service::ALL
                .iter()
                .filter(|x| s.services.contains(**x))
                .map(|x| x.name())
                .collect(),
            service: service.to_owned(),
            server: server.to_owned(),
            bundle_epoch: s.bundle_epoch,
            status_epoch: s.status_epoch,
            status_issued_at: s.status_issued_at,
            status_age_s: age,
            max_status_age_s: max,
            status_too_old: age.zip(max).map(|(a, m)| a > u64::from(m)),
            rules_epoch: s.rules.map(|r| r.epoch),
            log_records: s.log.records,
            log_pending: s.log.pending,
            log_used_sectors: s.log.used_sectors,
            log_sectors: s.log.sectors,
            log_next_seq: s.log.next_seq,
        }
    }

    /// Human-readable form, in `lang`.
    pub fn to_text(&self, lang: Lang) -> String {
        let words = crate::msg::StatusWords {
            key_id: &self.key_id,
            service: &self.service,
            services: &self.services,
            server: &self.server,
            bundle_epoch: self.bundle_epoch,
            status_epoch: self.status_epoch,
            age: self
                .status_age_s
                .map(|a| (a, self.status_too_old == Some(true))),
            rules_epoch: self.rules_epoch,
            log: [
                self.log_records,
                self.log_pending,
                self.log_used_sectors,
                self.log_sectors,
                self.log_next_seq,
            ],
        };
        let mut out = crate::msg::status_lines(&words, lang).join("\n");
        out.push('\n');
        out
    }
}

/// The tones of a pattern (for tests).
pub fn tones(p: &SoundPattern) -> Vec<ToneJson> {
    p.tones
        .iter()
        .map(|t| ToneJson { hz: t.hz, ms: t.ms })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entitlements_are_named() {
        assert_eq!(
            entitlement_names(Entitlements(
                Entitlements::FREE_TRANSIT | Entitlements::WELFARE_POINTS
            )),
            ["free_transit", "welfare_points"]
        );
        assert!(entitlement_names(Entitlements(0)).is_empty());
    }

    #[test]
    fn blink_words_tell_steady_from_blinking() {
        let steady = Light {
            color: "green",
            on_ms: 1500,
            off_ms: 0,
            repeat: 1,
        };
        assert_eq!(blink_words(&steady), "steady 1500 ms");
        let blink = Light {
            repeat: 3,
            on_ms: 250,
            off_ms: 250,
            ..steady
        };
        assert_eq!(blink_words(&blink), "blinks 3x (250 ms on, 250 ms off)");
    }
}
