//! The terminal firmware alone, for measuring its flash and static RAM (`size -A` of this ELF):
//! the core, the assembly P-256 backend, the emulated flash driver and the runtime, with every
//! input (card answers, updates, acknowledgements) read through volatile loads so that the
//! optimizer keeps every path a real terminal has. Nothing here is the applet, the card
//! personalization or the portable p256 of the cross-check. It is linked, not run.
#![no_std]
#![no_main]

use core::panic::PanicInfo;
use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};
use core::sync::atomic::{AtomicBool, Ordering};

use card_applet::sim::TestRng;
use cortex_m_rt::entry;
use cortex_m_semihosting::debug;
use shared_crypto::apdu::Transport;
use terminal_core::ram_flash::RamFlash;
use terminal_core::{
    Clock, Feedback, ServiceRequest, Signal, Storage, Terminal, TerminalConfig, UpdateKind,
};
use terminal_m4::backend::{AsmSigner, AsmVerifier};

const SECTOR: usize = 4096;
type Flash = RamFlash<&'static mut [u8], 8, SECTOR>;

/// Inputs the optimizer cannot see through (in a device they come from the radio, the network
/// and the key store).
static mut INPUT: [u8; 1024] = [0; 1024];
/// Where outputs go (a display, the network).
static mut OUTPUT: [u8; 64] = [0; 64];
/// The upload buffer of the log export and the chunk buffer of streamed updates.
static mut BATCH: [u8; 4096] = [0; 4096];

#[link_section = ".emu"]
static mut EMU_FLASH_CELLS: [u8; 24 * SECTOR] = [0; 24 * SECTOR];
static TAKEN: AtomicBool = AtomicBool::new(false);

fn input(i: usize) -> u8 {
    // SAFETY: a read of a static byte; nothing holds a reference to INPUT.
    unsafe { read_volatile(addr_of!(INPUT).cast::<u8>().add(i % 1024)) }
}

fn output(i: usize, b: u8) {
    // SAFETY: a write of a static byte; nothing holds a reference to OUTPUT.
    unsafe { write_volatile(addr_of_mut!(OUTPUT).cast::<u8>().add(i % 64), b) }
}

struct Card;

impl Transport for Card {
    type Error = ();
    fn transceive(&mut self, command: &[u8], response: &mut [u8]) -> Result<usize, ()> {
        for (i, b) in command.iter().enumerate() {
            output(i, *b);
        }
        let n = (input(0) as usize).min(response.len());
        for (i, r) in response.iter_mut().take(n).enumerate() {
            *r = input(i + 1);
        }
        if input(1000) == 0 {
            return Err(());
        }
        Ok(n)
    }
}

struct Rtc;
impl Clock for Rtc {
    fn now(&self) -> Option<u64> {
        (input(2) != 0).then(|| u64::from(input(3)) << 24)
    }
}

struct Panel;
impl Feedback for Panel {
    fn show(&mut self, signal: &Signal) {
        output(0, signal.prompt.code());
        output(1, signal.light.repeat);
        output(2, signal.sound.tones.len() as u8);
    }
}

fn stop() -> ! {
    debug::exit(debug::EXIT_FAILURE);
    loop {
        cortex_m::asm::wfi();
    }
}

#[panic_handler]
fn panic(_: &PanicInfo) -> ! {
    stop()
}

#[entry]
fn main() -> ! {
    if TAKEN.swap(true, Ordering::SeqCst) {
        debug::exit(debug::EXIT_FAILURE);
    }
    // SAFETY: taken once (TAKEN), so these are the only references to the statics.
    let (cells, batch) = unsafe {
        (
            &mut *addr_of_mut!(EMU_FLASH_CELLS),
            &mut *addr_of_mut!(BATCH),
        )
    };
    let (b0, rest) = cells.split_at_mut(2 * SECTOR);
    let (b1, rest) = rest.split_at_mut(2 * SECTOR);
    let (s0, rest) = rest.split_at_mut(2 * SECTOR);
    let (s1, rest) = rest.split_at_mut(2 * SECTOR);
    let (r0, rest) = rest.split_at_mut(SECTOR);
    let (r1, log) = rest.split_at_mut(SECTOR);
    let storage = Storage {
        bundle: [Flash::erased(b0), Flash::erased(b1)],
        status: [Flash::erased(s0), Flash::erased(s1)],
        rules: [Flash::erased(r0), Flash::erased(r1)],
        log: Flash::erased(log),
    };
    let mut secret = [0u8; 32];
    let mut root = [0u8; 33];
    let mut cert = [0u8; 256];
    for (i, b) in secret.iter_mut().enumerate() {
        *b = input(i + 10);
    }
    for (i, b) in root.iter_mut().enumerate() {
        *b = input(i + 50);
    }
    for (i, b) in cert.iter_mut().enumerate() {
        *b = input(i + 100);
    }
    let mut seed = [0u8; 32];
    seed.copy_from_slice(&secret);
    let Some(signer) = AsmSigner::new(&secret, TestRng::from_seed(seed)) else {
        stop()
    };
    let config = TerminalConfig {
        root_key: root,
        certificate: &cert[..input(4) as usize],
    };
    let Ok(mut term) = Terminal::mount(
        config,
        storage,
        AsmVerifier,
        signer,
        Rtc,
        TestRng::from_seed([input(5); 32]),
        Panel,
    ) else {
        stop()
    };
    loop {
        match input(6) {
            0 => {
                let req = match input(7) {
                    0 => ServiceRequest::Transit,
                    1 => ServiceRequest::Employment,
                    2 => ServiceRequest::Rehab,
                    n => ServiceRequest::Welfare {
                        amount: u32::from(n),
                    },
                };
                let d = term.tap(&mut Card, req);
                output(3, d.reason as u8);
                if let Some(name) = d.holder.name() {
                    output(4, name.len() as u8);
                }
            }
            1..=3 => {
                let kind = match input(6) {
                    1 => UpdateKind::TrustBundle,
                    2 => UpdateKind::StatusList,
                    _ => UpdateKind::ServiceRules,
                };
                let mut ok = term.begin_update(kind).is_ok();
                while ok && input(8) != 0 {
                    let n = input(9) as usize;
                    for (i, b) in batch.iter_mut().take(n).enumerate() {
                        *b = input(i);
                    }
                    ok = term.write_update(&batch[..n]).is_ok();
                }
                output(5, term.finish_update().is_ok() as u8);
            }
            4 => {
                let n = input(9) as usize;
                for (i, b) in batch.iter_mut().take(n).enumerate() {
                    *b = input(i);
                }
                output(5, term.apply_status_delta(&batch[..n]).is_ok() as u8);
            }
            5 => {
                if let Ok(Some(b)) = term.export_log_batch(input(9) as usize, &mut batch[..]) {
                    output(6, b.wire.len() as u8);
                }
            }
            6 => {
                let seq = u32::from_le_bytes([input(11), input(12), input(13), input(14)]);
                output(7, term.acknowledge_upload(seq).is_ok() as u8);
            }
            _ => {
                let s = term.state();
                output(8, s.log.pending as u8);
                debug::exit(debug::EXIT_SUCCESS);
            }
        }
    }
}
