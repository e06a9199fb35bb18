//! Lights, buzzer and voice: the terminal core's [`Feedback`] on real pins.
//!
//! The core hands over a [`Signal`]: an LED pattern (colour, on/off timing, repeats), a buzzer
//! pattern (tones and pauses) and a voice prompt. [`SignalPlayer`] starts the prompt on the voice
//! module (which speaks on its own), then plays light and sound *together*: the two patterns are
//! merged into one timeline of segments in which neither changes, and each segment is held with
//! the delay. Channels fail independently: a broken LED must not silence the buzzer for a blind
//! person, nor a dead voice module darken the LEDs for a deaf one. So a failing channel is
//! recorded ([`SignalPlayer::faults`]) and the others carry on with the full timing.

use embedded_hal::delay::DelayNs;
use embedded_hal::digital::{Error as _, OutputPin};
use embedded_hal::pwm::{Error as _, SetDutyCycle};
use terminal_core::{Color, Feedback, Lang, LightPattern, Signal, SoundPattern};

use crate::voice::VoicePlayer;

/// Which channel failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channel {
    /// The LEDs.
    Light,
    /// The buzzer.
    Sound,
    /// The voice module.
    Voice,
}

/// What went wrong on a channel (the HAL's error kind; pin types differ per channel).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// A GPIO failed.
    Pin(embedded_hal::digital::ErrorKind),
    /// A PWM channel failed.
    Pwm(embedded_hal::pwm::ErrorKind),
    /// The voice module's serial link failed.
    Serial(embedded_io::ErrorKind),
}

/// A channel failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// Where.
    pub channel: Channel,
    /// What.
    pub kind: FaultKind,
}

/// The status lights.
pub trait Lights {
    /// Lights `color` alone, or nothing for `None`.
    fn set(&mut self, color: Option<Color>) -> Result<(), FaultKind>;
}

/// A buzzer.
pub trait Buzzer {
    /// Sounds `hz` (0: silence) for `ms`. Takes the full `ms` even when the output fails, so that
    /// the other channels keep their timing.
    fn sound<D: DelayNs>(&mut self, hz: u16, ms: u32, delay: &mut D) -> Result<(), FaultKind>;
    /// Stops sounding.
    fn silence(&mut self) -> Result<(), FaultKind>;
}

/// Three LEDs, one per outcome colour, each on an output pin (active high: wire an active-low LED
/// through an inverting pin wrapper of the HAL).
#[derive(Debug)]
pub struct Leds<G, R, A> {
    green: G,
    red: R,
    amber: A,
}

impl<G: OutputPin, R: OutputPin, A: OutputPin> Leds<G, R, A> {
    /// The LEDs on three pins.
    pub fn new(green: G, red: R, amber: A) -> Self {
        Self { green, red, amber }
    }

    /// Gives the pins back.
    pub fn release(self) -> (G, R, A) {
        (self.green, self.red, self.amber)
    }
}

fn pin<E: embedded_hal::digital::Error>(r: Result<(), E>) -> Result<(), FaultKind> {
    r.map_err(|e| FaultKind::Pin(e.kind()))
}

impl<G: OutputPin, R: OutputPin, A: OutputPin> Lights for Leds<G, R, A> {
    fn set(&mut self, color: Option<Color>) -> Result<(), FaultKind> {
        // Every pin is driven even when an earlier one failed; the first failure is reported.
        let g = pin(self.green.set_state((color == Some(Color::Green)).into()));
        let r = pin(self.red.set_state((color == Some(Color::Red)).into()));
        let a = pin(self.amber.set_state((color == Some(Color::Amber)).into()));
        g.and(r).and(a)
    }
}

/// A buzzer on a PWM channel whose frequency the HAL set when configuring the timer
/// (embedded-hal 1.0 has no frequency API): a tone is 50 % duty, silence 0 %. Pitch is the
/// timer's; the outcome patterns still differ in rhythm.
#[derive(Debug)]
pub struct PwmBuzzer<P> {
    pwm: P,
}

impl<P: SetDutyCycle> PwmBuzzer<P> {
    /// The buzzer on `pwm`.
    pub fn new(pwm: P) -> Self {
        Self { pwm }
    }

    /// Gives the channel back.
    pub fn release(self) -> P {
        self.pwm
    }
}

impl<P: SetDutyCycle> Buzzer for PwmBuzzer<P> {
    fn sound<D: DelayNs>(&mut self, hz: u16, ms: u32, delay: &mut D) -> Result<(), FaultKind> {
        let r = if hz == 0 {
            self.pwm.set_duty_cycle_fully_off()
        } else {
            self.pwm.set_duty_cycle_percent(50)
        };
        delay.delay_ms(ms);
        r.map_err(|e| FaultKind::Pwm(e.kind()))
    }

    fn silence(&mut self) -> Result<(), FaultKind> {
        self.pwm
            .set_duty_cycle_fully_off()
            .map_err(|e| FaultKind::Pwm(e.kind()))
    }
}

/// A passive piezo on a plain output pin, driven with a square wave toggled in software at the
/// tone's frequency (the CPU is busy for the tone's length; a tap is over by then).
#[derive(Debug)]
pub struct PinBuzzer<P> {
    pin: P,
}

impl<P: OutputPin> PinBuzzer<P> {
    /// The buzzer on `pin`.
    pub fn new(pin: P) -> Self {
        Self { pin }
    }

    /// Gives the pin back.
    pub fn release(self) -> P {
        self.pin
    }
}

impl<P: OutputPin> Buzzer for PinBuzzer<P> {
    fn sound<D: DelayNs>(&mut self, hz: u16, ms: u32, delay: &mut D) -> Result<(), FaultKind> {
        if hz == 0 {
            let r = self.pin.set_low();
            delay.delay_ms(ms);
            return pin(r);
        }
        let half_ns = 500_000_000 / u32::from(hz);
        // Whole half periods in `ms`, rounded to the nearest.
        let halves = (u64::from(ms) * u64::from(hz) * 2 + 500) / 1000;
        for i in 0..halves {
            let r = if i % 2 == 0 {
                self.pin.set_high()
            } else {
                self.pin.set_low()
            };
            if let Err(e) = r {
                // Keep the timing for the other channels, then report.
                let left_ns = (halves - i) * u64::from(half_ns);
                delay.delay_us(u32::try_from(left_ns / 1_000).unwrap_or(u32::MAX));
                let _ = self.pin.set_low();
                return Err(FaultKind::Pin(e.kind()));
            }
            delay.delay_ns(half_ns);
        }
        pin(self.pin.set_low())
    }

    fn silence(&mut self) -> Result<(), FaultKind> {
        pin(self.pin.set_low())
    }
}

/// One stretch of the merged timeline: the light and the tone stay as they are for `ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// The lit colour, if any.
    pub light: Option<Color>,
    /// The tone (0: silence).
    pub hz: u16,
    /// Duration.
    pub ms: u32,
}

/// The light and sound patterns merged into segments in which neither changes.
#[derive(Clone, Debug)]
pub struct Timeline {
    light: LightPattern,
    sound: SoundPattern,
    /// Index into the light's on/off phases (`2 * repeat` of them) and time left in it.
    light_phase: usize,
    light_left: u32,
    tone: usize,
    tone_left: u32,
}

impl Timeline {
    /// The timeline of `light` and `sound` played from the same instant.
    pub fn new(light: LightPattern, sound: SoundPattern) -> Self {
        let mut t = Self {
            light,
            sound,
            light_phase: 0,
            light_left: 0,
            tone: 0,
            tone_left: 0,
        };
        t.light_left = t.light_phase_ms(0).unwrap_or(0);
        t.tone_left = t.tone_ms(0).unwrap_or(0);
        t
    }

    fn light_phase_ms(&self, phase: usize) -> Option<u32> {
        if phase >= 2 * usize::from(self.light.repeat) {
            return None;
        }
        Some(u32::from(if phase % 2 == 0 {
            self.light.on_ms
        } else {
            self.light.off_ms
        }))
    }

    fn tone_ms(&self, i: usize) -> Option<u32> {
        self.sound.tones.get(i).map(|t| u32::from(t.ms))
    }

    fn light_active(&self) -> bool {
        self.light_phase < 2 * usize::from(self.light.repeat)
    }

    fn tone_active(&self) -> bool {
        self.tone < self.sound.tones.len()
    }
}

impl Iterator for Timeline {
    type Item = Segment;

    fn next(&mut self) -> Option<Segment> {
        loop {
            // Skip phases of zero length (an off time of 0 after a steady light).
            while self.light_active() && self.light_left == 0 {
                self.light_phase += 1;
                self.light_left = self.light_phase_ms(self.light_phase).unwrap_or(0);
            }
            while self.tone_active() && self.tone_left == 0 {
                self.tone += 1;
                self.tone_left = self.tone_ms(self.tone).unwrap_or(0);
            }
            let (light_on, tone) = (self.light_active(), self.tone_active());
            if !light_on && !tone {
                return None;
            }
            let l = if light_on { self.light_left } else { u32::MAX };
            let t = if tone { self.tone_left } else { u32::MAX };
            let ms = l.min(t);
            let seg = Segment {
                light: (light_on && self.light_phase % 2 == 0).then_some(self.light.color),
                hz: if tone {
                    self.sound.tones[self.tone].hz
                } else {
                    0
                },
                ms,
            };
            if light_on {
                self.light_left -= ms;
            }
            if tone {
                self.tone_left -= ms;
            }
            if ms > 0 {
                return Some(seg);
            }
        }
    }
}

/// Plays [`Signal`]s on lights, buzzer and voice module; the terminal's [`Feedback`].
#[derive(Debug)]
pub struct SignalPlayer<L, B, V, D> {
    lights: L,
    buzzer: B,
    voice: V,
    delay: D,
    lang: Lang,
    faults: u32,
    first_fault: Option<Fault>,
}

impl<L: Lights, B: Buzzer, V: VoicePlayer, D: DelayNs> SignalPlayer<L, B, V, D> {
    /// A player speaking `lang`.
    pub fn new(lights: L, buzzer: B, voice: V, delay: D, lang: Lang) -> Self {
        Self {
            lights,
            buzzer,
            voice,
            delay,
            lang,
            faults: 0,
            first_fault: None,
        }
    }

    /// Switches the prompt language (a button on the terminal, or per card in a later version).
    pub fn set_lang(&mut self, lang: Lang) {
        self.lang = lang;
    }

    /// Channel failures since start (for the staff screen and the service log).
    pub fn faults(&self) -> u32 {
        self.faults
    }

    /// The first channel failure since start or the last [`SignalPlayer::clear_faults`].
    pub fn first_fault(&self) -> Option<Fault> {
        self.first_fault
    }

    /// Forgets recorded failures (after a repair).
    pub fn clear_faults(&mut self) {
        self.faults = 0;
        self.first_fault = None;
    }

    /// Gives the parts back.
    pub fn release(self) -> (L, B, V, D) {
        (self.lights, self.buzzer, self.voice, self.delay)
    }

    /// Plays `signal` to the end (voice started first, then light and sound together, then
    /// everything off). Returns the first failure; every channel was still driven.
    pub fn play(&mut self, signal: &Signal) -> Result<(), Fault> {
        let mut first: Option<Fault> = None;
        let mut note = |channel: Channel, r: Result<(), FaultKind>, faults: &mut u32| {
            if let Err(kind) = r {
                *faults += 1;
                first.get_or_insert(Fault { channel, kind });
            }
        };
        let r = self.voice.play(signal.prompt, self.lang);
        note(
            Channel::Voice,
            r.map_err(FaultKind::Serial),
            &mut self.faults,
        );
        for seg in Timeline::new(signal.light, signal.sound) {
            let r = self.lights.set(seg.light);
            note(Channel::Light, r, &mut self.faults);
            let r = self.buzzer.sound(seg.hz, seg.ms, &mut self.delay);
            note(Channel::Sound, r, &mut self.faults);
        }
        let r = self.lights.set(None);
        note(Channel::Light, r, &mut self.faults);
        let r = self.buzzer.silence();
        note(Channel::Sound, r, &mut self.faults);
        if self.first_fault.is_none() {
            self.first_fault = first;
        }
        first.map_or(Ok(()), Err)
    }
}

impl<L: Lights, B: Buzzer, V: VoicePlayer, D: DelayNs> Feedback for SignalPlayer<L, B, V, D> {
    fn show(&mut self, signal: &Signal) {
        // Failures are kept in the player (`faults`, `first_fault`): the decision stands and the
        // channels that work have carried it.
        let _ = self.play(signal);
    }
}
