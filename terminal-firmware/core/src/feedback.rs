//! What every cardholder perceives after a tap: a light pattern, a sound pattern and a voice prompt,
//! always all three, so that a blind person hears what a deaf person sees.
//!
//! The three outcomes differ in every channel: colour *and* blink rhythm (for colour-blind people),
//! pitch *and* rhythm of the buzzer, and the words of the prompt. Each prompt has a Simplified
//! Chinese and an English text ([`PromptId::text`]); a voice chip plays recording number
//! [`PromptId::code`] of the chosen language, and a display shows the same text: every visual
//! message has a voice prompt and every voice prompt a visual message.

use shared_crypto::model::{Outcome, Reason, Service};

/// LED colour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Color {
    /// Accepted.
    Green,
    /// Refused.
    Red,
    /// Ask staff.
    Amber,
}

/// An LED pattern: `repeat` times on for `on_ms`, then off for `off_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LightPattern {
    /// Colour.
    pub color: Color,
    /// On time of one blink (ms).
    pub on_ms: u16,
    /// Off time after each blink (ms).
    pub off_ms: u16,
    /// Number of blinks (1 = one steady light of `on_ms`).
    pub repeat: u8,
}

/// One buzzer tone; `hz == 0` is a pause.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tone {
    /// Frequency (Hz), 0 for silence.
    pub hz: u16,
    /// Duration (ms).
    pub ms: u16,
}

/// A buzzer pattern: tones played in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SoundPattern {
    /// The tones.
    pub tones: &'static [Tone],
}

/// Prompt language.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Lang {
    /// Simplified Chinese (zh-CN).
    ZhCn,
    /// English.
    En,
}

macro_rules! prompts {
    ($($(#[$m:meta])* $name:ident = $code:expr, $zh:expr, $en:expr;)*) => {
        /// A voice prompt and the same message as text. The code is the recording's number on the
        /// voice chip; it never changes meaning.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum PromptId {
            $($(#[$m])* $name = $code,)*
        }

        impl PromptId {
            /// Every prompt, in code order.
            pub const ALL: &'static [PromptId] = &[$(PromptId::$name,)*];

            /// The recording number.
            pub const fn code(self) -> u8 {
                self as u8
            }

            /// The prompt's text in `lang` (the display shows it while the voice says it).
            pub const fn text(self, lang: Lang) -> &'static str {
                match (self, lang) {
                    $((PromptId::$name, Lang::ZhCn) => $zh,
                      (PromptId::$name, Lang::En) => $en,)*
                }
            }
        }
    };
}

prompts! {
    /// Transit accepted.
    PleasePass = 1, "验证通过，请通行。", "Verified. Please go through.";
    /// Transit: the companion's passage.
    CompanionPass = 2, "陪同人员请通行。", "Companion, please go through.";
    /// Employment: identity shown to the officer.
    IdentityVerified = 3, "身份已核验，请工作人员查看屏幕。", "Identity verified. Officer, please check the screen.";
    /// Rehab: session recorded.
    RehabRecorded = 4, "康复服务已登记。", "Rehabilitation session recorded.";
    /// Welfare: points debited, receipt kept.
    PointsDebited = 5, "积分已扣除，凭据已保存。", "Points debited. Receipt saved.";
    /// The card left the field or a debit was interrupted.
    TapAgain = 10, "请重新刷卡。", "Please tap your card again.";
    /// Not a disability-certificate card.
    CardNotRecognised = 11, "无法识别此卡。", "This card is not recognised.";
    /// Blocked or revoked.
    CardBlocked = 12, "此卡已停用，请联系发证机构。", "This card has been blocked. Please contact the issuing office.";
    /// Forged, cloned, altered or malformed.
    CardNotValid = 13, "此卡无效，请联系发证机构。", "This card is not valid. Please contact the issuing office.";
    /// The credential or the certificate has expired.
    CardExpired = 14, "证件已过期，请到发证机构换证。", "This certificate has expired. Please renew it at the issuing office.";
    /// Not valid yet.
    CardNotYetValid = 15, "此卡尚未生效。", "This card is not valid yet.";
    /// The holder lacks the entitlement.
    NotEntitled = 16, "此卡不享有本项服务。", "This card does not include this service.";
    /// The terminal is not certified for the service.
    ServiceUnavailable = 17, "本终端不提供此项服务。", "This service is not available at this terminal.";
    /// Not enough points.
    NotEnoughPoints = 18, "积分不足。", "Not enough points.";
    /// Anti-passback.
    AlreadyTapped = 19, "此卡刚刚已使用，请勿重复刷卡。", "This card was just used. Please do not tap again.";
    /// Rehab session too soon.
    TooSoon = 20, "距上次登记时间过短。", "The last session was too recent.";
    /// Debit amount over the limit.
    AmountTooLarge = 21, "金额超出限额。", "The amount is over the limit.";
    /// The terminal cannot decide alone.
    AskStaff = 30, "请稍候，工作人员将为您核验。", "Please wait. A member of staff will help you.";
}

/// Everything a feedback device needs to present one decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Signal {
    /// What the person is told.
    pub outcome: Outcome,
    /// Why (for the staff display and the log).
    pub reason: Reason,
    /// LED pattern.
    pub light: LightPattern,
    /// Buzzer pattern.
    pub sound: SoundPattern,
    /// Voice prompt, also shown as text.
    pub prompt: PromptId,
}

const ACCEPT_TONES: &[Tone] = &[Tone { hz: 2093, ms: 200 }];
const COMPANION_TONES: &[Tone] = &[
    Tone { hz: 2093, ms: 150 },
    Tone { hz: 0, ms: 100 },
    Tone { hz: 2093, ms: 150 },
];
const REFUSE_TONES: &[Tone] = &[
    Tone { hz: 392, ms: 150 },
    Tone { hz: 0, ms: 100 },
    Tone { hz: 392, ms: 150 },
    Tone { hz: 0, ms: 100 },
    Tone { hz: 392, ms: 150 },
];
const ASK_STAFF_TONES: &[Tone] = &[
    Tone { hz: 988, ms: 400 },
    Tone { hz: 659, ms: 400 },
    Tone { hz: 988, ms: 400 },
    Tone { hz: 659, ms: 400 },
];

/// The light of each outcome (companion passage: two green blinks).
pub const fn light_for(outcome: Outcome, reason: Reason) -> LightPattern {
    match (outcome, reason) {
        (Outcome::Accepted, Reason::CompanionPassage) => LightPattern {
            color: Color::Green,
            on_ms: 300,
            off_ms: 200,
            repeat: 2,
        },
        (Outcome::Accepted, _) => LightPattern {
            color: Color::Green,
            on_ms: 1500,
            off_ms: 0,
            repeat: 1,
        },
        (Outcome::Refused, _) => LightPattern {
            color: Color::Red,
            on_ms: 250,
            off_ms: 250,
            repeat: 3,
        },
        (Outcome::AskStaff, _) => LightPattern {
            color: Color::Amber,
            on_ms: 500,
            off_ms: 500,
            repeat: 5,
        },
    }
}

/// The sound of each outcome.
pub const fn sound_for(outcome: Outcome, reason: Reason) -> SoundPattern {
    SoundPattern {
        tones: match (outcome, reason) {
            (Outcome::Accepted, Reason::CompanionPassage) => COMPANION_TONES,
            (Outcome::Accepted, _) => ACCEPT_TONES,
            (Outcome::Refused, _) => REFUSE_TONES,
            (Outcome::AskStaff, _) => ASK_STAFF_TONES,
        },
    }
}

/// The outcome every reason leads to: a decision's outcome is a function of its reason.
pub const fn outcome_of(reason: Reason) -> Outcome {
    match reason {
        Reason::Ok | Reason::CompanionPassage => Outcome::Accepted,
        Reason::TerminalRejected
        | Reason::StatusListOutdated
        | Reason::NotProvisioned
        | Reason::LogFull
        | Reason::ClockUnset => Outcome::AskStaff,
        Reason::NoCard
        | Reason::NotOurCard
        | Reason::CardBlocked
        | Reason::UnknownIssuer
        | Reason::ForgedCredential
        | Reason::ClonedCard
        | Reason::Expired
        | Reason::NotYetValid
        | Reason::Revoked
        | Reason::DisclosureMismatch
        | Reason::Malformed
        | Reason::CertificateExpired
        | Reason::NotEntitled
        | Reason::ServiceNotAllowed
        | Reason::PurseEmpty
        | Reason::Passback
        | Reason::TooSoon
        | Reason::AmountOverLimit
        | Reason::DebitInterrupted => Outcome::Refused,
    }
}

/// The prompt of a decision: the accepted prompt depends on the service, the others on the reason.
pub const fn prompt_for(service: Service, reason: Reason) -> PromptId {
    match reason {
        Reason::Ok => match service {
            Service::Transit => PromptId::PleasePass,
            Service::Employment => PromptId::IdentityVerified,
            Service::Rehab => PromptId::RehabRecorded,
            Service::Welfare => PromptId::PointsDebited,
        },
        Reason::CompanionPassage => PromptId::CompanionPass,
        Reason::NoCard | Reason::DebitInterrupted => PromptId::TapAgain,
        Reason::NotOurCard => PromptId::CardNotRecognised,
        Reason::CardBlocked | Reason::Revoked => PromptId::CardBlocked,
        Reason::UnknownIssuer
        | Reason::ForgedCredential
        | Reason::ClonedCard
        | Reason::DisclosureMismatch
        | Reason::Malformed => PromptId::CardNotValid,
        Reason::Expired | Reason::CertificateExpired => PromptId::CardExpired,
        Reason::NotYetValid => PromptId::CardNotYetValid,
        Reason::NotEntitled => PromptId::NotEntitled,
        Reason::ServiceNotAllowed => PromptId::ServiceUnavailable,
        Reason::PurseEmpty => PromptId::NotEnoughPoints,
        Reason::Passback => PromptId::AlreadyTapped,
        Reason::TooSoon => PromptId::TooSoon,
        Reason::AmountOverLimit => PromptId::AmountTooLarge,
        Reason::TerminalRejected
        | Reason::StatusListOutdated
        | Reason::NotProvisioned
        | Reason::LogFull
        | Reason::ClockUnset => PromptId::AskStaff,
    }
}

impl Signal {
    /// The signal of a decision for `service` with `reason`.
    pub const fn new(service: Service, reason: Reason) -> Signal {
        let outcome = outcome_of(reason);
        Signal {
            outcome,
            reason,
            light: light_for(outcome, reason),
            sound: sound_for(outcome, reason),
            prompt: prompt_for(service, reason),
        }
    }

    /// The prompt's text in `lang`.
    pub const fn text(&self, lang: Lang) -> &'static str {
        self.prompt.text(lang)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_a_signal_whose_channels_agree() {
        for &service in Service::ALL {
            for &reason in Reason::ALL {
                let s = Signal::new(service, reason);
                let color = match s.outcome {
                    Outcome::Accepted => Color::Green,
                    Outcome::Refused => Color::Red,
                    Outcome::AskStaff => Color::Amber,
                };
                assert_eq!(s.light.color, color, "{reason:?}");
                assert!(!s.sound.tones.is_empty());
                // The voice says "ask staff" exactly when the light says so.
                assert_eq!(
                    s.prompt == PromptId::AskStaff,
                    s.outcome == Outcome::AskStaff,
                    "{reason:?}"
                );
                assert!(!s.text(Lang::ZhCn).is_empty() && !s.text(Lang::En).is_empty());
            }
        }
    }

    #[test]
    fn outcomes_are_distinct_in_every_channel() {
        let a = Signal::new(Service::Transit, Reason::Ok);
        let r = Signal::new(Service::Transit, Reason::Revoked);
        let s = Signal::new(Service::Transit, Reason::StatusListOutdated);
        for (x, y) in [(a, r), (a, s), (r, s)] {
            assert_ne!(x.light.color, y.light.color);
            assert_ne!(
                (x.light.on_ms, x.light.repeat),
                (y.light.on_ms, y.light.repeat),
                "rhythm must differ too (colour-blind users)"
            );
            assert_ne!(x.sound, y.sound);
            assert_ne!(x.prompt, y.prompt);
        }
    }

    #[test]
    fn prompt_codes_are_unique_and_texts_are_chinese_and_english() {
        for (i, a) in PromptId::ALL.iter().enumerate() {
            for b in &PromptId::ALL[i + 1..] {
                assert_ne!(a.code(), b.code());
            }
            let zh = a.text(Lang::ZhCn);
            assert!(
                zh.chars().any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c)),
                "{a:?}"
            );
            assert!(a.text(Lang::En).is_ascii(), "{a:?}");
        }
    }
}
