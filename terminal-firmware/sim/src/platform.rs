//! The core's seams on a PC: the system clock, the OS random number generator, and a feedback
//! device that remembers what it was asked to show (the CLI prints it).

use std::time::{SystemTime, UNIX_EPOCH};

use getrandom::SysRng;
use rand_core::{TryRng, UnwrapErr};
use terminal_core::{Clock, Feedback, Signal};

/// The PC's clock, or a fixed time (`--now`, for training and tests).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock {
    fixed: Option<u64>,
}

impl SystemClock {
    /// The system clock.
    pub fn system() -> Self {
        Self { fixed: None }
    }

    /// A clock stopped at `t` (Unix seconds).
    pub fn fixed(t: u64) -> Self {
        Self { fixed: Some(t) }
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Option<u64> {
        // A clock before 1970 is as good as unset: the core then asks staff.
        self.fixed.or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .ok()
                .map(|d| d.as_secs())
        })
    }
}

/// The operating system's RNG (getrandom). The core needs an infallible RNG; [`os_rng`] checks
/// once that the OS source works, so that a failure is reported before any tap rather than in
/// the middle of one.
pub type OsRng = UnwrapErr<SysRng>;

/// The OS RNG, after a probe read.
pub fn os_rng() -> anyhow::Result<OsRng> {
    let mut probe = [0u8; 16];
    SysRng
        .try_fill_bytes(&mut probe)
        .map_err(|e| crate::msg::rng_failed(&e))?;
    Ok(UnwrapErr(SysRng))
}

/// Remembers every signal shown.
#[derive(Clone, Debug, Default)]
pub struct Recorder {
    /// Signals in order.
    pub shown: Vec<Signal>,
}

impl Feedback for Recorder {
    fn show(&mut self, signal: &Signal) {
        self.shown.push(*signal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::Rng;

    #[test]
    fn system_clock_is_after_2024_and_fixed_clock_is_fixed() {
        assert!(SystemClock::system().now().unwrap() > 1_704_067_200);
        assert_eq!(SystemClock::fixed(42).now(), Some(42));
    }

    #[test]
    fn os_rng_gives_different_bytes() {
        let mut r = os_rng().unwrap();
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        r.fill_bytes(&mut a);
        r.fill_bytes(&mut b);
        assert_ne!(a, b);
    }
}
