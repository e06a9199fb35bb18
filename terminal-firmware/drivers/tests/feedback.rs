//! Feedback drivers against pin, PWM and delay mocks, with the core's real signal tables, and the
//! DFPlayer-style voice module against a recording UART.
#![allow(clippy::unwrap_used)]

use std::io::ErrorKind as IoKind;

use embedded_hal_mock::eh1::delay::{CheckedDelay, NoopDelay, Transaction as DelayTx};
use embedded_hal_mock::eh1::digital::{Mock as PinMock, State, Transaction as PinTx};
use embedded_hal_mock::eh1::pwm::{Mock as PwmMock, Transaction as PwmTx};
use embedded_hal_mock::eh1::MockError;
use shared_crypto::model::{Outcome, Reason, Service};
use terminal_core::{Color, Feedback, Lang, LightPattern, PromptId, Signal, SoundPattern, Tone};
use terminal_drivers::feedback::{
    Buzzer, Channel, Fault, FaultKind, Leds, PinBuzzer, PwmBuzzer, Segment, SignalPlayer, Timeline,
};
use terminal_drivers::voice::{command_frame, DfPlayer, NoVoice, VoicePlayer};

fn seg(light: Option<Color>, hz: u16, ms: u32) -> Segment {
    Segment { light, hz, ms }
}

const G: Option<Color> = Some(Color::Green);
const R: Option<Color> = Some(Color::Red);
const OFF: Option<Color> = None;

// ---------------------------------------------------------------------------------------------
// The merged timeline.

#[test]
fn accepted_signal_is_a_tone_over_a_steady_green_light() {
    let s = Signal::new(Service::Transit, Reason::Ok);
    let segs: Vec<_> = Timeline::new(s.light, s.sound).collect();
    assert_eq!(segs, [seg(G, 2093, 200), seg(G, 0, 1300)]);
}

#[test]
fn refused_signal_interleaves_blinks_and_beeps() {
    let s = Signal::new(Service::Transit, Reason::Revoked);
    let segs: Vec<_> = Timeline::new(s.light, s.sound).collect();
    assert_eq!(
        segs,
        [
            seg(R, 392, 150),
            seg(R, 0, 100),
            seg(OFF, 392, 150),
            seg(OFF, 0, 100),
            seg(R, 392, 150),
            seg(R, 0, 100),
            seg(OFF, 0, 250),
            seg(R, 0, 250),
            seg(OFF, 0, 250),
        ]
    );
}

#[test]
fn every_signal_of_the_core_plays_for_its_longest_channel() {
    for &service in Service::ALL {
        for &reason in Reason::ALL {
            let s = Signal::new(service, reason);
            let light_ms: u32 =
                u32::from(s.light.repeat) * (u32::from(s.light.on_ms) + u32::from(s.light.off_ms));
            let sound_ms: u32 = s.sound.tones.iter().map(|t| u32::from(t.ms)).sum();
            let segs: Vec<_> = Timeline::new(s.light, s.sound).collect();
            let total: u32 = segs.iter().map(|s| s.ms).sum();
            assert_eq!(total, light_ms.max(sound_ms), "{reason:?}");
            assert!(segs.iter().all(|x| x.ms > 0));
            // Lit time adds up to the pattern's on time.
            let lit: u32 = segs
                .iter()
                .filter(|x| x.light.is_some())
                .map(|x| x.ms)
                .sum();
            assert_eq!(lit, u32::from(s.light.repeat) * u32::from(s.light.on_ms));
            // Only the outcome's colour ever lights.
            assert!(segs
                .iter()
                .all(|x| x.light.is_none() || x.light == Some(s.light.color)));
        }
    }
}

#[test]
fn zero_length_phases_and_empty_patterns_are_skipped() {
    static NONE: [Tone; 0] = [];
    static ZEROS: [Tone; 2] = [Tone { hz: 440, ms: 0 }, Tone { hz: 0, ms: 0 }];
    let dark = LightPattern {
        color: Color::Amber,
        on_ms: 0,
        off_ms: 0,
        repeat: 3,
    };
    assert_eq!(
        Timeline::new(dark, SoundPattern { tones: &NONE }).count(),
        0
    );
    assert_eq!(
        Timeline::new(dark, SoundPattern { tones: &ZEROS }).count(),
        0
    );
}

// ---------------------------------------------------------------------------------------------
// The player on mocks.

/// A UART that records what it is sent, taking at most `chunk` bytes per write.
#[derive(Default)]
struct Uart {
    sent: Vec<u8>,
    chunk: usize,
    fail: Option<embedded_io::ErrorKind>,
    zero: bool,
}

impl embedded_io::ErrorType for Uart {
    type Error = embedded_io::ErrorKind;
}

impl embedded_io::Write for Uart {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        if let Some(e) = self.fail {
            return Err(e);
        }
        if self.zero {
            return Ok(0);
        }
        let n = buf.len().min(self.chunk.max(1));
        self.sent.extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}

fn pin_script(states: &[bool]) -> Vec<PinTx> {
    states
        .iter()
        .map(|s| PinTx::set(if *s { State::High } else { State::Low }))
        .collect()
}

/// The companion signal: two green blinks of 300/200 ms over beep, pause, beep.
fn companion() -> Signal {
    Signal::new(Service::Transit, Reason::CompanionPassage)
}

/// Segments of `companion()`: G+tone 150, G 100, G+tone 50, tone 100, off 100, G 300, off 200.
const COMPANION_GREEN: [bool; 8] = [true, true, true, false, false, true, false, false];
const COMPANION_TONE: [bool; 7] = [true, false, true, true, false, false, false];
const COMPANION_MS: [u32; 7] = [150, 100, 50, 100, 100, 300, 200];

fn pwm_script(tones: &[bool]) -> Vec<PwmTx> {
    let mut v = vec![];
    for on in tones {
        if *on {
            v.push(PwmTx::max_duty_cycle(1000));
            v.push(PwmTx::set_duty_cycle(500));
        } else {
            v.push(PwmTx::set_duty_cycle(0));
        }
    }
    // Silence at the end.
    v.push(PwmTx::set_duty_cycle(0));
    v
}

fn delay_script(ms: &[u32]) -> Vec<DelayTx> {
    ms.iter().map(|m| DelayTx::delay_ms(*m)).collect()
}

#[test]
fn companion_signal_plays_on_leds_pwm_buzzer_and_voice_together() {
    let green = PinMock::new(&pin_script(&COMPANION_GREEN));
    let red = PinMock::new(&pin_script(&[false; 8]));
    let amber = PinMock::new(&pin_script(&[false; 8]));
    let pwm = PwmMock::new(&pwm_script(&COMPANION_TONE));
    let delay = CheckedDelay::new(&delay_script(&COMPANION_MS));
    let (mut g, mut r, mut a, mut p, mut d) = (
        green.clone(),
        red.clone(),
        amber.clone(),
        pwm.clone(),
        delay.clone(),
    );
    let mut player = SignalPlayer::new(
        Leds::new(green, red, amber),
        PwmBuzzer::new(pwm),
        DfPlayer::new(Uart {
            chunk: 3,
            ..Uart::default()
        }),
        delay,
        Lang::ZhCn,
    );
    player.play(&companion()).unwrap();
    assert_eq!(player.faults(), 0);
    let (_, _, voice, _) = player.release();
    // Folder 01 (Chinese), file 2 (companion).
    assert_eq!(voice.release().sent, command_frame(0x0F, 0x0102));
    for m in [&mut g, &mut r, &mut a] {
        m.done();
    }
    p.done();
    d.done();
}

#[test]
fn english_prompts_come_from_folder_two() {
    let mut v = DfPlayer::new(Uart {
        chunk: 10,
        ..Uart::default()
    });
    v.play(PromptId::AskStaff, Lang::En).unwrap();
    assert_eq!(v.release().sent, command_frame(0x0F, 0x0200 | 30));
}

#[test]
fn a_broken_led_does_not_silence_the_buzzer_or_the_voice() {
    let err = MockError::Io(IoKind::NotConnected);
    // The red LED's pin fails at its first use; the others work.
    let mut red_script = pin_script(&[false; 8]);
    red_script[0] = PinTx::set(State::Low).with_error(err);
    let green = PinMock::new(&pin_script(&COMPANION_GREEN));
    let red = PinMock::new(&red_script);
    let amber = PinMock::new(&pin_script(&[false; 8]));
    let pwm = PwmMock::new(&pwm_script(&COMPANION_TONE));
    let delay = CheckedDelay::new(&delay_script(&COMPANION_MS));
    let (mut g, mut r, mut a, mut p, mut d) = (
        green.clone(),
        red.clone(),
        amber.clone(),
        pwm.clone(),
        delay.clone(),
    );
    let mut player = SignalPlayer::new(
        Leds::new(green, red, amber),
        PwmBuzzer::new(pwm),
        DfPlayer::new(Uart {
            chunk: 10,
            ..Uart::default()
        }),
        delay,
        Lang::En,
    );
    // Through the core's trait: infallible, the fault is kept.
    player.show(&companion());
    let fault = Fault {
        channel: Channel::Light,
        kind: FaultKind::Pin(embedded_hal::digital::ErrorKind::Other),
    };
    assert_eq!(player.first_fault(), Some(fault));
    assert_eq!(player.faults(), 1);
    let (_, _, voice, _) = player.release();
    assert_eq!(voice.release().sent, command_frame(0x0F, 0x0202));
    for m in [&mut g, &mut r, &mut a] {
        m.done();
    }
    p.done();
    d.done();
}

#[test]
fn a_dead_voice_module_does_not_darken_the_leds() {
    let s = Signal::new(Service::Transit, Reason::Ok);
    let green = PinMock::new(&pin_script(&[true, true, false]));
    let red = PinMock::new(&pin_script(&[false; 3]));
    let amber = PinMock::new(&pin_script(&[false; 3]));
    let pwm = PwmMock::new(&pwm_script(&[true, false]));
    let delay = CheckedDelay::new(&delay_script(&[200, 1300]));
    let (mut g, mut r, mut a) = (green.clone(), red.clone(), amber.clone());
    let (mut p, mut d) = (pwm.clone(), delay.clone());
    let mut player = SignalPlayer::new(
        Leds::new(green, red, amber),
        PwmBuzzer::new(pwm),
        DfPlayer::new(Uart {
            fail: Some(embedded_io::ErrorKind::TimedOut),
            ..Uart::default()
        }),
        delay,
        Lang::ZhCn,
    );
    let played = player.play(&s);
    assert_eq!(
        played,
        Err(Fault {
            channel: Channel::Voice,
            kind: FaultKind::Serial(embedded_io::ErrorKind::TimedOut)
        })
    );
    player.clear_faults();
    assert_eq!(player.faults(), 0);
    assert_eq!(player.first_fault(), None);
    for m in [&mut g, &mut r, &mut a] {
        m.done();
    }
    p.done();
    d.done();
}

#[test]
fn a_failing_pwm_keeps_the_light_timing() {
    let err = MockError::Io(IoKind::BrokenPipe);
    let s = Signal::new(Service::Transit, Reason::Ok);
    let green = PinMock::new(&pin_script(&[true, true, false]));
    let red = PinMock::new(&pin_script(&[false; 3]));
    let amber = PinMock::new(&pin_script(&[false; 3]));
    let pwm = PwmMock::new(&[
        PwmTx::max_duty_cycle(1000),
        PwmTx::set_duty_cycle(500).with_error(err.clone()),
        PwmTx::set_duty_cycle(0).with_error(err.clone()),
        PwmTx::set_duty_cycle(0).with_error(err),
    ]);
    // Both segments are still held for their full time.
    let delay = CheckedDelay::new(&delay_script(&[200, 1300]));
    let (mut g, mut r, mut a) = (green.clone(), red.clone(), amber.clone());
    let (mut p, mut d) = (pwm.clone(), delay.clone());
    let mut player = SignalPlayer::new(
        Leds::new(green, red, amber),
        PwmBuzzer::new(pwm),
        NoVoice,
        delay,
        Lang::ZhCn,
    );
    let played = player.play(&s);
    assert_eq!(played.unwrap_err().channel, Channel::Sound);
    assert_eq!(player.faults(), 3);
    for m in [&mut g, &mut r, &mut a] {
        m.done();
    }
    p.done();
    d.done();
}

// ---------------------------------------------------------------------------------------------
// The software square wave.

#[test]
fn pin_buzzer_toggles_at_the_tone_frequency() {
    // 1 kHz for 2 ms: four half periods of 500 µs, then low.
    let pin = PinMock::new(&pin_script(&[true, false, true, false, false]));
    let delay = CheckedDelay::new(&[
        DelayTx::delay_ns(500_000),
        DelayTx::delay_ns(500_000),
        DelayTx::delay_ns(500_000),
        DelayTx::delay_ns(500_000),
    ]);
    let (mut p, mut d) = (pin.clone(), delay.clone());
    let mut b = PinBuzzer::new(pin);
    let mut delay = delay;
    b.sound(1000, 2, &mut delay).unwrap();
    p.done();
    d.done();
}

#[test]
fn pin_buzzer_silence_holds_low() {
    let pin = PinMock::new(&pin_script(&[false, false]));
    let delay = CheckedDelay::new(&[DelayTx::delay_ms(100)]);
    let (mut p, mut d) = (pin.clone(), delay.clone());
    let mut b = PinBuzzer::new(pin);
    let mut delay = delay;
    b.sound(0, 100, &mut delay).unwrap();
    b.silence().unwrap();
    p.done();
    d.done();
}

#[test]
fn pin_buzzer_fault_mid_tone_still_takes_the_tones_time() {
    let err = MockError::Io(IoKind::NotConnected);
    // 1 kHz for 4 ms = 8 half periods; the third toggle fails.
    let pin = PinMock::new(&[
        PinTx::set(State::High),
        PinTx::set(State::Low),
        PinTx::set(State::High).with_error(err),
        PinTx::set(State::Low),
    ]);
    let delay = CheckedDelay::new(&[
        DelayTx::delay_ns(500_000),
        DelayTx::delay_ns(500_000),
        // The six half periods left: 3 ms.
        DelayTx::delay_us(3_000),
    ]);
    let (mut p, mut d) = (pin.clone(), delay.clone());
    let mut b = PinBuzzer::new(pin);
    let mut delay = delay;
    assert_eq!(
        b.sound(1000, 4, &mut delay),
        Err(FaultKind::Pin(embedded_hal::digital::ErrorKind::Other))
    );
    p.done();
    d.done();
}

#[test]
fn ask_staff_on_a_pin_buzzer_plays_its_full_length() {
    // The real ask-staff pattern: 1.6 s of alternating 988/659 Hz under amber blinks.
    let s = Signal::new(Service::Rehab, Reason::StatusListOutdated);
    assert_eq!(s.outcome, Outcome::AskStaff);
    let mut toggles = 0u64;
    struct Count<'a>(&'a mut u64);
    impl embedded_hal::digital::ErrorType for Count<'_> {
        type Error = core::convert::Infallible;
    }
    impl embedded_hal::digital::OutputPin for Count<'_> {
        fn set_low(&mut self) -> Result<(), Self::Error> {
            *self.0 += 1;
            Ok(())
        }
        fn set_high(&mut self) -> Result<(), Self::Error> {
            *self.0 += 1;
            Ok(())
        }
    }
    {
        let mut b = PinBuzzer::new(Count(&mut toggles));
        let mut delay = NoopDelay::new();
        for t in s.sound.tones {
            b.sound(t.hz, u32::from(t.ms), &mut delay).unwrap();
        }
    }
    // Two tones of each pitch, 400 ms each: 2 * (0.4 * 988 * 2) + 2 * (0.4 * 659 * 2) half
    // periods (rounded per tone), plus the final low after each tone.
    let expected = 2 * ((400 * 988 * 2 + 500) / 1000 + 1) + 2 * ((400 * 659 * 2 + 500) / 1000 + 1);
    assert_eq!(toggles, expected);
}

// ---------------------------------------------------------------------------------------------
// The voice module's frames.

#[test]
fn dfplayer_frame_matches_the_modules_documented_example() {
    // "Play folder 01, file 001" as printed in DFPlayer-style module data sheets.
    assert_eq!(
        command_frame(0x0F, 0x0101),
        [0x7E, 0xFF, 0x06, 0x0F, 0x00, 0x01, 0x01, 0xFE, 0xEA, 0xEF]
    );
}

#[test]
fn dfplayer_refuses_out_of_range_arguments_without_sending() {
    let mut v = DfPlayer::new(Uart {
        chunk: 10,
        ..Uart::default()
    });
    assert_eq!(v.set_volume(31), Err(embedded_io::ErrorKind::InvalidInput));
    assert_eq!(
        v.play_folder_file(0, 1),
        Err(embedded_io::ErrorKind::InvalidInput)
    );
    assert_eq!(
        v.play_folder_file(100, 1),
        Err(embedded_io::ErrorKind::InvalidInput)
    );
    assert_eq!(
        v.play_folder_file(1, 0),
        Err(embedded_io::ErrorKind::InvalidInput)
    );
    assert!(v.release().sent.is_empty());
}

#[test]
fn dfplayer_volume_is_sent() {
    let mut v = DfPlayer::new(Uart {
        chunk: 4,
        ..Uart::default()
    });
    v.set_volume(20).unwrap();
    assert_eq!(v.release().sent, command_frame(0x06, 20));
}

#[test]
fn dfplayer_uart_that_takes_nothing_is_a_fault_not_a_hang() {
    let mut v = DfPlayer::new(Uart {
        zero: true,
        ..Uart::default()
    });
    assert_eq!(
        v.play(PromptId::PleasePass, Lang::ZhCn),
        Err(embedded_io::ErrorKind::WriteZero)
    );
}

#[test]
fn every_prompt_has_a_distinct_file_in_each_language() {
    let mut seen = std::collections::HashSet::new();
    for lang in [Lang::ZhCn, Lang::En] {
        for p in PromptId::ALL {
            let mut v = DfPlayer::new(Uart {
                chunk: 10,
                ..Uart::default()
            });
            v.play(*p, lang).unwrap();
            assert!(seen.insert(v.release().sent));
        }
    }
}
