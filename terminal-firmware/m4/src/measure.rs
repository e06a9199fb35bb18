//! Counting the terminal's own work: instructions (SysTick under `-icount shift=0`) and stack depth,
//! both paused while the simulated card computes.
//!
//! With `-icount shift=0` QEMU runs one instruction per virtual nanosecond and SysTick (core clock
//! 25 MHz on mps2-an386) advances one tick per 40 instructions (ENVIRONMENT.md), so ticks x 40 =
//! instructions, to within 40 per reading. SysTick has 24 bits and wraps every 671 M
//! instructions; its exception counts the wraps ([`on_wrap`]), so a long run (installing a
//! national-scale status list takes ~500 M) is counted right.

use core::cell::Cell;
use core::sync::atomic::{AtomicU32, Ordering};

use cortex_m::peripheral::syst::SystClkSource;
use cortex_m::peripheral::SYST;
use shared_crypto::apdu::Transport;

/// Instructions per SysTick tick under `-icount shift=0` on mps2-an386.
pub const INSTRUCTIONS_PER_TICK: u64 = 40;
const RELOAD: u32 = 0x00FF_FFFF;
/// Ticks from one reload to the next.
const PERIOD: u64 = RELOAD as u64 + 1;

/// SysTick wraps since [`start_systick`].
static WRAPS: AtomicU32 = AtomicU32::new(0);

/// Counts one SysTick wrap: call it from the SysTick exception handler (the image's `main.rs`).
pub fn on_wrap() {
    WRAPS.fetch_add(1, Ordering::SeqCst);
}

/// Starts SysTick free-running from its 24-bit maximum, its exception counting wraps.
pub fn start_systick(mut syst: SYST) {
    syst.set_clock_source(SystClkSource::Core);
    syst.set_reload(RELOAD);
    syst.clear_current();
    syst.enable_counter();
    // The first reading after clearing is 0 until the first reload (ENVIRONMENT.md).
    while SYST::get_current() == 0 {}
    WRAPS.store(0, Ordering::SeqCst);
    syst.enable_interrupt();
}

/// Ticks since the start, across wraps. The wrap count is read on both sides of the counter, so
/// a wrap counted in between is seen and the reading repeated. A wrap not counted yet (the
/// counter reloaded, its exception still pending) is added here: the counter then reads high
/// (it just restarted from `RELOAD`), where a reading taken before that reload reads low.
fn now() -> u64 {
    loop {
        let wraps = WRAPS.load(Ordering::SeqCst);
        let current = SYST::get_current() & RELOAD;
        let pending = cortex_m::peripheral::SCB::is_pendst_pending();
        if WRAPS.load(Ordering::SeqCst) == wraps {
            let uncounted = u64::from(pending && current > RELOAD / 2);
            return (u64::from(wraps) + uncounted) * PERIOD + u64::from(RELOAD - current);
        }
    }
}

/// An accumulator of SysTick ticks that can be paused.
#[derive(Default)]
pub struct Meter {
    ticks: Cell<u64>,
    since: Cell<Option<u64>>,
}

impl Meter {
    /// A stopped meter at zero.
    pub const fn new() -> Self {
        Meter {
            ticks: Cell::new(0),
            since: Cell::new(None),
        }
    }

    /// Zero and stopped.
    pub fn reset(&self) {
        self.ticks.set(0);
        self.since.set(None);
    }

    /// Starts (or resumes) counting.
    pub fn start(&self) {
        self.since.set(Some(now()));
    }

    /// Stops counting, adding the elapsed ticks.
    pub fn stop(&self) {
        if let Some(start) = self.since.take() {
            self.ticks
                .set(self.ticks.get() + now().saturating_sub(start));
        }
    }

    /// Instructions counted.
    pub fn instructions(&self) -> u64 {
        self.ticks.get() * INSTRUCTIONS_PER_TICK
    }
}

/// Stack painting: the words below the stack pointer are filled with a pattern, and the deepest
/// word that no longer holds it shows how deep the stack went.
pub mod stack {
    const PAINT: u32 = 0xDEC0_ADDE;

    extern "C" {
        // cortex-m-rt's link.x: the lowest address of the stack (after .data, .bss, .uninit of
        // the RAM region; the .emu region of memory.x lies elsewhere).
        static _stack_end: u32;
    }

    /// The lowest address the stack may reach (word aligned).
    fn floor() -> usize {
        // Only the address of the linker symbol is taken, never its value.
        (core::ptr::addr_of!(_stack_end) as usize + 3) & !3
    }

    /// The current stack pointer.
    #[inline(always)]
    pub fn sp() -> usize {
        cortex_m::register::msp::read() as usize
    }

    /// Paints from the floor up to just below the current stack pointer (at most `span` bytes
    /// below it, so painting stays cheap).
    #[inline(never)]
    pub fn paint(span: usize) {
        let hi = (sp() - 64) & !3;
        let lo = floor().max(hi.saturating_sub(span));
        let mut a = lo;
        while a < hi {
            // SAFETY: `lo..hi` lies between the end of .bss and below the live stack (64 bytes
            // under this function's own frame, and no interrupt is enabled): no live data is
            // there, and the range is word aligned RAM.
            unsafe { core::ptr::write_volatile(a as *mut u32, PAINT) };
            a += 4;
        }
    }

    /// The deepest address written since painting (scanning up from `span` bytes below `from`).
    #[inline(never)]
    pub fn deepest(from: usize, span: usize) -> usize {
        let lo = floor().max(from.saturating_sub(span) & !3);
        let mut a = lo;
        while a < from {
            // SAFETY: reads of word-aligned RAM between the end of .bss and the live stack.
            if unsafe { core::ptr::read_volatile(a as *const u32) } != PAINT {
                return a;
            }
            a += 4;
        }
        from
    }
}

/// Runs `f` and returns its result with the bytes of stack it used below the caller (no card
/// runs inside `f`).
#[inline(never)]
pub fn stack_of<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let entry = stack::sp();
    stack::paint(STACK_SPAN);
    let r = f();
    let deepest = stack::deepest(entry, STACK_SPAN);
    (r, entry.saturating_sub(deepest))
}

/// How far below the tap's entry the stack was painted and is scanned.
pub const STACK_SPAN: usize = 48 * 1024;

/// The card transport the terminal is handed in the measured taps: it pauses the meter while the
/// card computes, and keeps the card's own stack use out of the terminal's stack figure (the
/// stack is scanned before the card runs and painted again after it).
pub struct Metered<'m, T> {
    /// The simulated card.
    pub card: T,
    /// The instruction meter.
    pub meter: &'m Meter,
    /// Stack pointer at the start of the tap.
    pub entry_sp: usize,
    /// Deepest stack address the terminal reached.
    pub deepest: Cell<usize>,
}

impl<'m, T> Metered<'m, T> {
    /// Wraps `card`; call [`Self::begin`] right before the tap.
    pub fn new(card: T, meter: &'m Meter) -> Self {
        Metered {
            card,
            meter,
            entry_sp: 0,
            deepest: Cell::new(usize::MAX),
        }
    }

    /// Paints the stack and starts the meter.
    pub fn begin(&mut self) {
        self.meter.reset();
        self.entry_sp = stack::sp();
        self.deepest.set(usize::MAX);
        stack::paint(STACK_SPAN);
        self.meter.start();
    }

    /// Stops the meter and records the stack depth.
    pub fn end(&mut self) {
        self.meter.stop();
        self.note_stack();
    }

    fn note_stack(&self) {
        let d = stack::deepest(self.entry_sp, STACK_SPAN);
        if d < self.deepest.get() {
            self.deepest.set(d);
        }
    }

    /// Bytes of stack the terminal used below the tap's entry.
    pub fn stack_used(&self) -> usize {
        self.entry_sp.saturating_sub(self.deepest.get())
    }
}

impl<T: Transport> Transport for Metered<'_, T> {
    type Error = T::Error;

    fn transceive(&mut self, command: &[u8], response: &mut [u8]) -> Result<usize, T::Error> {
        self.meter.stop();
        self.note_stack();
        let r = self.card.transceive(command, response);
        stack::paint(STACK_SPAN);
        self.meter.start();
        r
    }
}
