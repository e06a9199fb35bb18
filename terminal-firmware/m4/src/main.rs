//! The terminal core on a Cortex-M4 (QEMU `mps2-an386`).
//!
//! Set-up (not measured): a demo authority, simulated cards personalized over SCP03 (the real
//! applet, linked in, behind an in-memory transport), the flash partitions emulated in RAM, the
//! trust bundle, status list and rules installed. Then:
//! 1. the verification backends are cross-checked: the assembly `p256-cortex-m4` against the
//!    portable `p256` on the Wycheproof vectors and on signatures made here (valid, altered, high-S);
//! 2. every service is tapped with valid, revoked, expired, forged and cloned cards (and a few more
//!    paths); each decision is printed and compared with the expected one;
//! 3. the terminal's own work per valid tap is measured (instructions, stack), the card's share
//!    paused, and printed as `BENCH key=value` lines;
//! 4. a national-scale status list (38 M entries, 2 % revoked; made and signed by `build.rs`, kept
//!    in flash) is streamed into the terminal, and taps, lookups and a mount are measured against
//!    it.
//!
//! The exit status is 0 only when every decision and every cross-check matched.
#![no_std]
#![no_main]

use core::fmt::Write as _;
use core::panic::PanicInfo;
use core::sync::atomic::{AtomicBool, Ordering};

use card_applet::sim::TestRng;
use cortex_m_rt::{entry, exception};
use cortex_m_semihosting::{debug, hprintln};
use shared_crypto::apdu::Transport;
use shared_crypto::model::{Outcome, Reason, ServiceSet, StatusListBody};
use shared_crypto::sig::{sha256_parts, Signer};
use shared_crypto::status_list::StatusListView;
use terminal_core::ram_flash::RamFlash;
use terminal_core::slots::SLOT_HEADER_LEN;
use terminal_core::testkit::{
    clone_card, forge_card, issue_card, standard_rules, Authority, CardSpec, RecordingFeedback,
    TestClock,
};
use terminal_core::{
    P256Verifier, ServiceRequest, Storage, Terminal, TerminalConfig, UpdateKind, Verifier,
};

use terminal_m4::backend::{self, AsmSigner, AsmVerifier};
use terminal_m4::measure::{self, Meter, Metered};

/// Write unit and sector of the emulated flash (an STM32L4-like double-word program size).
const WRITE: usize = 8;
const SECTOR: usize = 4096;
type Flash = RamFlash<&'static mut [u8], WRITE, SECTOR>;
type Term = Terminal<Flash, AsmVerifier, AsmSigner, TestClock, TestRng, RecordingFeedback>;

const T0: u64 = 1_750_000_000;
const DAY: u64 = 86_400;
const YEAR: u64 = 365 * DAY;
const REVOKED: u32 = 5;

/// The figures of the large status list `build.rs` made: the seed of the authority that signed
/// it, its size, epoch and time, and an index valid and one revoked in it.
mod list38m {
    include!(concat!(env!("OUT_DIR"), "/status_list_38m.rs"));
}
use list38m::*;

/// The signed 38 M-entry list as the server would serve it, in the image's flash, in a section
/// of its own (memory.x) so that `size -A` shows it apart from the program.
#[link_section = ".statuslist"]
static LIST38M_WIRE: [u8; LIST38M_WIRE_BYTES] =
    *include_bytes!(concat!(env!("OUT_DIR"), "/status_list_38m.bin"));

const BUNDLE_SLOT: usize = 2 * SECTOR;
/// Each status slot holds the large list (header + signed object, whole sectors).
const STATUS_SLOT: usize = (SLOT_HEADER_LEN + LIST38M_WIRE_BYTES).div_ceil(SECTOR) * SECTOR;
const RULES_SLOT: usize = SECTOR;
const LOG: usize = 8 * SECTOR;
const EMU_FLASH: usize = 2 * BUNDLE_SLOT + 2 * STATUS_SLOT + 2 * RULES_SLOT + LOG;

/// The emulated flash: in section `.emu` (memory.x), apart from the terminal's own RAM.
#[link_section = ".emu"]
static mut EMU_FLASH_CELLS: [u8; EMU_FLASH] = [0; EMU_FLASH];
static EMU_TAKEN: AtomicBool = AtomicBool::new(false);

fn emulated_flash() -> Option<&'static mut [u8; EMU_FLASH]> {
    if EMU_TAKEN.swap(true, Ordering::SeqCst) {
        return None;
    }
    // SAFETY: handed out once (guarded by EMU_TAKEN), so no other reference to it exists.
    Some(unsafe { &mut *core::ptr::addr_of_mut!(EMU_FLASH_CELLS) })
}

fn partitions(cells: &'static mut [u8; EMU_FLASH]) -> Storage<Flash> {
    let (b0, rest) = cells.split_at_mut(BUNDLE_SLOT);
    let (b1, rest) = rest.split_at_mut(BUNDLE_SLOT);
    let (s0, rest) = rest.split_at_mut(STATUS_SLOT);
    let (s1, rest) = rest.split_at_mut(STATUS_SLOT);
    let (r0, rest) = rest.split_at_mut(RULES_SLOT);
    let (r1, log) = rest.split_at_mut(RULES_SLOT);
    Storage {
        bundle: [Flash::erased(b0), Flash::erased(b1)],
        status: [Flash::erased(s0), Flash::erased(s1)],
        rules: [Flash::erased(r0), Flash::erased(r1)],
        log: Flash::erased(log),
    }
}

static FAILURES: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

fn fail(what: &str) {
    FAILURES.fetch_add(1, Ordering::Relaxed);
    hprintln!("FAIL {}", what);
}

fn check(ok: bool, what: &str) {
    if !ok {
        fail(what);
    }
}

fn exit(ok: bool) -> ! {
    debug::exit(if ok {
        debug::EXIT_SUCCESS
    } else {
        debug::EXIT_FAILURE
    });
    loop {
        cortex_m::asm::wfi();
    }
}

/// SysTick wrapped (every 671 M instructions): the meter counts wraps so long runs read right.
#[exception]
fn SysTick() {
    measure::on_wrap();
}

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    hprintln!("PANIC {}", info);
    exit(false)
}

/// A short fixed-capacity string for labels.
struct Label {
    buf: [u8; 64],
    len: usize,
}

impl core::fmt::Write for Label {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let end = (self.len + s.len()).min(self.buf.len());
        let n = end - self.len;
        self.buf[self.len..end].copy_from_slice(&s.as_bytes()[..n]);
        self.len = end;
        Ok(())
    }
}

impl Label {
    fn new(args: core::fmt::Arguments<'_>) -> Self {
        let mut l = Label {
            buf: [0; 64],
            len: 0,
        };
        let _ = l.write_fmt(args);
        l
    }
    fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("?")
    }
}

// ------------------------------------------------------------------------------------------------
// 1. Backend cross-check

static WYCHEPROOF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/wycheproof_p256.bin"));
// `WYCHEPROOF_VECTORS`: the count build.rs states and checked against the file.
include!(concat!(env!("OUT_DIR"), "/wycheproof_p256.rs"));

fn agree(key: &[u8; 33], prehash: &[u8; 32], sig: &[u8; 64]) -> Option<bool> {
    let a = AsmVerifier.parse_key(key);
    let p = P256Verifier.parse_key(key);
    match (a, p) {
        (Some(a), Some(p)) => {
            let ra = AsmVerifier.verify_prehash(&a, prehash, sig);
            let rp = P256Verifier.verify_prehash(&p, prehash, sig);
            (ra == rp).then_some(ra)
        }
        (None, None) => Some(false),
        _ => None,
    }
}

fn cross_check(auth: &Authority) {
    let mut rest = WYCHEPROOF;
    let (mut n, mut valid, mut invalid) = (0u32, 0u32, 0u32);
    while rest.len() > 36 {
        let key: [u8; 33] = rest[..33].try_into().unwrap_or([0; 33]);
        let sig_len = rest[33] as usize;
        let sig = &rest[34..34 + sig_len];
        let at = 34 + sig_len;
        let msg_len = u16::from_le_bytes([rest[at], rest[at + 1]]) as usize;
        let msg = &rest[at + 2..at + 2 + msg_len];
        let expected = rest[at + 2 + msg_len];
        rest = &rest[at + 3 + msg_len..];
        n += 1;
        let Ok(sig) = <[u8; 64]>::try_from(sig) else {
            // Not 64 bytes: neither backend is even asked (the wire format has no room for it).
            check(
                expected != 1,
                "a valid Wycheproof vector has a 64-byte signature",
            );
            invalid += 1;
            continue;
        };
        let prehash = sha256_parts(&[msg]);
        match agree(&key, &prehash, &sig) {
            None => fail(Label::new(format_args!("backends disagree on Wycheproof #{n}")).as_str()),
            Some(r) => {
                if expected != 2 {
                    check(
                        r == (expected == 1),
                        Label::new(format_args!("Wycheproof #{n}: expected {expected}")).as_str(),
                    );
                }
                if r {
                    valid += 1;
                } else {
                    invalid += 1;
                }
            }
        }
    }
    check(
        rest.is_empty(),
        "the Wycheproof table ends on an entry boundary",
    );
    check(
        n == WYCHEPROOF_VECTORS,
        Label::new(format_args!(
            "{n} Wycheproof vectors checked, expected {WYCHEPROOF_VECTORS}"
        ))
        .as_str(),
    );
    check(valid > 0 && invalid > 0, "Wycheproof has both outcomes");
    hprintln!(
        "cross-check: {} Wycheproof vectors, {} valid and {} invalid under both backends",
        n,
        valid,
        invalid
    );

    // Signatures made here: by the assembly signer and by the portable one, each also altered and
    // in its high-S twin.
    let secret = auth.terminal.secret_bytes();
    let asm = AsmSigner::new(&secret, TestRng::new(3));
    check(asm.is_some(), "assembly signer imports the key");
    let Some(asm) = asm else { return };
    check(
        asm.public_key() == auth.terminal.public_key().to_sec1(),
        "both backends derive the same public key",
    );
    let key = asm.public_key();
    let mut made = 0;
    for i in 0u32..8 {
        let msg = i.to_be_bytes();
        let prehash = sha256_parts(&[&msg]);
        for sig in [
            asm.sign_parts(&[&msg]).unwrap_or([0; 64]),
            auth.terminal.sign_parts(&[&msg]).unwrap_or([0; 64]),
        ] {
            check(backend::is_low_s(&sig), "signers emit low-S");
            check(
                agree(&key, &prehash, &sig) == Some(true),
                "a good signature verifies on both",
            );
            let twin = backend::high_s_twin(&sig);
            check(
                agree(&key, &prehash, &twin) == Some(true),
                "high-S is accepted by both",
            );
            let mut bad = sig;
            bad[(i as usize * 7) % 64] ^= 0x20;
            check(
                agree(&key, &prehash, &bad) == Some(false),
                "an altered one fails on both",
            );
            let other = sha256_parts(&[b"other", &msg]);
            check(
                agree(&key, &other, &sig) == Some(false),
                "another message fails on both",
            );
            made += 1;
        }
    }
    let zero = [0u8; 64];
    check(
        agree(&key, &[1; 32], &zero) == Some(false),
        "r = s = 0 fails on both",
    );
    hprintln!(
        "cross-check: {} generated signatures agree (valid, high-S, altered)",
        made
    );
}

/// The building blocks of a tap, each measured alone (for the report: where the instructions go).
fn building_blocks(auth: &Authority, meter: &Meter) -> [(&'static str, u64); 6] {
    let key = auth.terminal.public_key().to_sec1();
    let prehash = sha256_parts(&[b"building blocks"]);
    let sig = auth
        .terminal
        .sign_parts(&[b"building blocks"])
        .unwrap_or([0; 64]);
    let measure = |f: &mut dyn FnMut() -> bool| {
        meter.reset();
        meter.start();
        let ok = f();
        meter.stop();
        check(ok, "building block");
        meter.instructions()
    };
    let asm_key = AsmVerifier.parse_key(&key);
    let p256_key = P256Verifier.parse_key(&key);
    let signer = AsmSigner::new(&auth.terminal.secret_bytes(), TestRng::new(5));
    let data = [0x5Au8; 1024];
    [
        (
            "p256_asm_decompress",
            measure(&mut || AsmVerifier.parse_key(&key).is_some()),
        ),
        (
            "p256_asm_verify",
            measure(&mut || {
                asm_key
                    .as_ref()
                    .is_some_and(|k| AsmVerifier.verify_prehash(k, &prehash, &sig))
            }),
        ),
        (
            "p256_asm_sign",
            measure(&mut || {
                signer
                    .as_ref()
                    .is_some_and(|s| s.sign_parts(&[&prehash]).is_ok())
            }),
        ),
        (
            "p256_portable_decompress",
            measure(&mut || P256Verifier.parse_key(&key).is_some()),
        ),
        (
            "p256_portable_verify",
            measure(&mut || {
                p256_key
                    .as_ref()
                    .is_some_and(|k| P256Verifier.verify_prehash(k, &prehash, &sig))
            }),
        ),
        (
            "sha256_1kib",
            measure(&mut || {
                core::hint::black_box(sha256_parts(&[&data]));
                true
            }),
        ),
    ]
}

// ------------------------------------------------------------------------------------------------
// 2. Taps

struct Stats {
    instructions: [u64; 4],
    /// The same valid taps against the 38 M-entry list.
    instructions_38m: [u64; 4],
    stack: usize,
}

fn name(o: Outcome) -> &'static str {
    match o {
        Outcome::Accepted => "accepted",
        Outcome::Refused => "refused",
        Outcome::AskStaff => "ask staff",
    }
}

/// Taps `card` for `req`, prints and checks the decision; returns the terminal's instructions.
fn tap<T: Transport>(
    term: &mut Term,
    meter: &Meter,
    card: T,
    req: ServiceRequest,
    label: &str,
    expected: (Outcome, Reason),
    stats: &mut Stats,
) -> u64 {
    let mut metered = Metered::new(card, meter);
    metered.begin();
    let d = term.tap(&mut metered, req);
    metered.end();
    let instructions = meter.instructions();
    let stack = metered.stack_used();
    if stack > stats.stack {
        stats.stack = stack;
    }
    let ok = (d.outcome, d.reason) == expected && d.log_seq.is_some();
    hprintln!(
        "{} {:<10} {:<22} -> {} / {} ({} instructions, {} B stack)",
        if ok { "ok  " } else { "FAIL" },
        req.service().name(),
        label,
        name(d.outcome),
        d.reason.name(),
        instructions,
        stack
    );
    if !ok {
        fail(label);
        hprintln!("     expected {} / {}", name(expected.0), expected.1.name());
    }
    instructions
}

// ------------------------------------------------------------------------------------------------
// 4. The national-scale status list

/// What the large-list part measured.
struct Large {
    install_instructions: u64,
    install_stack: usize,
    /// `StatusListView::parse` alone (header and the whole block index).
    parse: u64,
    lookup_mean: u64,
    lookup_max: u64,
}

/// Indices spread over the whole large list for the lookup figures (golden-ratio steps, so they
/// land at every position inside a block).
fn lookup_indices() -> impl Iterator<Item = u32> {
    (1u64..=64).map(|i| ((i * 0x9E37_79B9) % u64::from(LIST38M_SIZE)) as u32)
}

/// Streams the 38 M-entry list from flash into the terminal (verified and validated where it
/// lies, as a download would be), measures lookups in it alone, and taps a valid and a revoked
/// card against it for every service.
fn large_list<A: Transport, B: Transport>(
    term: &mut Term,
    meter: &Meter,
    stats: &mut Stats,
    valid: &mut A,
    revoked: &mut B,
) -> Large {
    term.clock_mut().set(Some(LIST38M_ISSUED_AT + 3600));
    meter.reset();
    let (installed, install_stack) = measure::stack_of(|| {
        meter.start();
        let r = term.begin_update(UpdateKind::StatusList).and_then(|()| {
            for chunk in LIST38M_WIRE.chunks(4096) {
                term.write_update(chunk)?;
            }
            term.finish_update()
        });
        meter.stop();
        r
    });
    let install_instructions = meter.instructions();
    check(
        installed == Ok(LIST38M_EPOCH),
        "install the 38 M-entry status list",
    );
    hprintln!(
        "large list: {} entries, {} revoked, {} B signed; installed in {} instructions, {} B stack",
        LIST38M_SIZE,
        LIST38M_REVOKED,
        LIST38M_WIRE_BYTES,
        install_instructions,
        install_stack
    );

    // A lookup in a list seen for the first time: parse the header and check the block index, then
    // look one index up. (A tap pays less: the index is checked once, when the list comes into
    // force, and a tap opens it with `parse_installed`; its cost is in the tap figures.)
    let list = shared_crypto::Signed::decode(&LIST38M_WIRE)
        .and_then(|s| s.decode_trusted::<StatusListBody<'_>>())
        .map(|b| b.list);
    let (mut total, mut max, mut n, mut parse) = (0u64, 0u64, 0u64, 0u64);
    if let Ok(list) = list {
        meter.reset();
        meter.start();
        let parsed = StatusListView::parse(list);
        meter.stop();
        parse = meter.instructions();
        check(
            parsed.is_ok_and(|v| v.size() == LIST38M_SIZE && v.revoked_count() == LIST38M_REVOKED),
            "the large list's header",
        );
        for (index, expect) in lookup_indices().map(|i| (i, None)).chain([
            (LIST38M_VALID_INDEX, Some(false)),
            (LIST38M_REVOKED_INDEX, Some(true)),
        ]) {
            meter.reset();
            meter.start();
            let r = StatusListView::parse(list).and_then(|v| v.is_revoked(index));
            meter.stop();
            let cost = meter.instructions();
            check(r.is_ok(), "a lookup in the large list");
            if let Some(e) = expect {
                check(r == Ok(e), "the large list's sample indices");
            }
            total += cost;
            max = max.max(cost);
            n += 1;
        }
    } else {
        fail("decode the large list");
    }
    let lookup_mean = total / n.max(1);
    hprintln!(
        "large list: parse + lookup {} instructions on average, {} at most ({} indices); parse \
         alone {}",
        lookup_mean,
        max,
        n,
        parse
    );

    let services = [
        ServiceRequest::Transit,
        ServiceRequest::Employment,
        ServiceRequest::Rehab,
        ServiceRequest::Welfare { amount: 10 },
    ];
    for (i, req) in services.into_iter().enumerate() {
        // Measured like the small-list taps: a valid card, the Issuer key looked up cold.
        term.clock_mut().advance(3600);
        term.clear_key_cache();
        stats.instructions_38m[i] = tap(
            term,
            meter,
            &mut *valid,
            req,
            "valid, 38 M list",
            (Outcome::Accepted, Reason::Ok),
            stats,
        );
        tap(
            term,
            meter,
            &mut *revoked,
            req,
            "revoked, 38 M list",
            (Outcome::Refused, Reason::Revoked),
            stats,
        );
    }
    Large {
        install_instructions,
        install_stack,
        parse,
        lookup_mean,
        lookup_max: max,
    }
}

#[entry]
fn main() -> ! {
    let Some(peripherals) = cortex_m::Peripherals::take() else {
        exit(false)
    };
    measure::start_systick(peripherals.SYST);
    hprintln!("terminal-m4: the terminal core on Cortex-M4 (QEMU mps2-an386)");

    // --- set-up, not measured -----------------------------------------------------------------
    // The seed build.rs signed the large status list with.
    let Ok(auth) = Authority::new(AUTHORITY_SEED, T0 - YEAR, T0 + 5 * YEAR) else {
        exit(false)
    };
    cross_check(&auth);

    let mut cert = [0u8; 320];
    let Ok(cert) = auth.terminal_certificate(ServiceSet(0x0F), &mut cert) else {
        exit(false)
    };
    let Some(cells) = emulated_flash() else {
        exit(false)
    };
    let Some(signer) = AsmSigner::new(&auth.terminal.secret_bytes(), TestRng::new(11)) else {
        exit(false)
    };
    let config = TerminalConfig {
        root_key: auth.root_key(),
        certificate: cert,
    };
    // Mount is measured for stack like every other entry point (its value is returned by it).
    let (mounted, mut mount_stack) = measure::stack_of(|| {
        Terminal::mount(
            config,
            partitions(cells),
            AsmVerifier,
            signer,
            TestClock::at(T0),
            TestRng::new(12),
            RecordingFeedback::default(),
        )
    });
    let mut term: Term = match mounted {
        Ok(t) => t,
        Err(_) => {
            fail("mount");
            exit(false)
        }
    };
    hprintln!("mount (empty flash): {} B stack", mount_stack);
    let mut buf = [0u8; 4096];
    let mut update_stack = 0usize;
    let installed = auth.trust_bundle(1, T0 - DAY, &[], &mut buf).ok().map(|b| {
        let (r, s) = measure::stack_of(|| term.install_trust_bundle(b).is_ok());
        update_stack = update_stack.max(s);
        r
    });
    check(installed == Some(true), "install trust bundle");
    let installed = auth
        .status_list(1, T0 - DAY, 64, &[REVOKED], &mut buf)
        .ok()
        .map(|l| {
            let (r, s) = measure::stack_of(|| term.install_status_list(l).is_ok());
            update_stack = update_stack.max(s);
            r
        });
    check(installed == Some(true), "install status list");
    let delta = auth
        .status_delta(1, 2, T0 - DAY, 80, &[REVOKED + 1], &mut buf)
        .ok()
        .map(|d| {
            let (r, s) = measure::stack_of(|| term.apply_status_delta(d));
            update_stack = update_stack.max(s);
            r
        });
    check(delta == Some(Ok(2)), "apply a status delta");
    let rules = standard_rules(1, T0 - DAY);
    let installed = auth.service_rules(&rules, &mut buf).ok().map(|r| {
        let (r, s) = measure::stack_of(|| term.install_service_rules(r).is_ok());
        update_stack = update_stack.max(s);
        r
    });
    check(installed == Some(true), "install service rules");

    let valid = CardSpec::entitled(1, 10, T0 - YEAR, T0 + YEAR);
    let revoked = CardSpec::entitled(2, REVOKED, T0 - YEAR, T0 + YEAR);
    let expired = CardSpec::entitled(3, 11, T0 - 2 * YEAR, T0 - DAY);
    let mut valid_card = issue_card(&auth, &valid, &auth.issuer, 1);
    let mut revoked_card = issue_card(&auth, &revoked, &auth.issuer, 2);
    let mut expired_card = issue_card(&auth, &expired, &auth.issuer, 3);
    let mut forged_card = forge_card(&auth, &valid, 4);
    let original_key = valid_card
        .as_ref()
        .ok()
        .and_then(|c| c.applet().card_public_key())
        .map(|k| k.to_sec1());
    let mut cloned_card = original_key.and_then(|k| clone_card(&auth, &valid, &k, 1).ok());
    // Two cards in the middle of the large list: one valid, one revoked in it.
    let valid_38m = CardSpec::entitled(6, LIST38M_VALID_INDEX, T0 - YEAR, T0 + YEAR);
    let revoked_38m = CardSpec::entitled(7, LIST38M_REVOKED_INDEX, T0 - YEAR, T0 + YEAR);
    let mut valid_38m_card = issue_card(&auth, &valid_38m, &auth.issuer, 6);
    let mut revoked_38m_card = issue_card(&auth, &revoked_38m, &auth.issuer, 7);
    let (
        Ok(valid_card),
        Ok(revoked_card),
        Ok(expired_card),
        Ok(forged_card),
        Some(cloned_card),
        Ok(valid_38m_card),
        Ok(revoked_38m_card),
    ) = (
        valid_card.as_mut(),
        revoked_card.as_mut(),
        expired_card.as_mut(),
        forged_card.as_mut(),
        cloned_card.as_mut(),
        valid_38m_card.as_mut(),
        revoked_38m_card.as_mut(),
    )
    else {
        fail("personalize the simulated cards");
        exit(false)
    };
    hprintln!("set-up: 7 cards personalized (SCP03), bundle, status list and rules installed");

    // --- taps -----------------------------------------------------------------------------------
    let meter = Meter::new();
    let blocks = building_blocks(&auth, &meter);
    for (what, n) in blocks {
        hprintln!("building block: {:<26} {:>9} instructions", what, n);
    }
    let mut stats = Stats {
        instructions: [0; 4],
        instructions_38m: [0; 4],
        stack: 0,
    };
    let services = [
        ServiceRequest::Transit,
        ServiceRequest::Employment,
        ServiceRequest::Rehab,
        ServiceRequest::Welfare { amount: 10 },
    ];
    let ok = (Outcome::Accepted, Reason::Ok);
    for (i, req) in services.into_iter().enumerate() {
        // The measured tap: a valid card, the Issuer key looked up and parsed again (worst case).
        term.clock_mut().advance(3600);
        term.clear_key_cache();
        stats.instructions[i] = tap(
            &mut term,
            &meter,
            &mut *valid_card,
            req,
            "valid",
            ok,
            &mut stats,
        );
        term.clock_mut().advance(3600);
        let warm = tap(
            &mut term,
            &meter,
            &mut *valid_card,
            req,
            "valid (key cached)",
            ok,
            &mut stats,
        );
        let _ = warm;
        let cases: [(
            &mut dyn Transport<Error = card_applet::sim::CardGone>,
            &str,
            Reason,
        ); 4] = [
            (&mut *revoked_card, "revoked", Reason::Revoked),
            (&mut *expired_card, "expired", Reason::Expired),
            (&mut *forged_card, "forged", Reason::ForgedCredential),
            (&mut *cloned_card, "cloned", Reason::ClonedCard),
        ];
        for (card, label, reason) in cases {
            tap(
                &mut term,
                &meter,
                card,
                req,
                label,
                (Outcome::Refused, reason),
                &mut stats,
            );
        }
    }
    // A few more paths of the decision table.
    term.clock_mut().advance(3600);
    tap(
        &mut term,
        &meter,
        &mut *valid_card,
        ServiceRequest::Transit,
        "holder",
        ok,
        &mut stats,
    );
    term.clock_mut().advance(5);
    tap(
        &mut term,
        &meter,
        &mut *valid_card,
        ServiceRequest::Transit,
        "companion",
        (Outcome::Accepted, Reason::CompanionPassage),
        &mut stats,
    );
    tap(
        &mut term,
        &meter,
        &mut *valid_card,
        ServiceRequest::Transit,
        "again at once",
        (Outcome::Refused, Reason::Passback),
        &mut stats,
    );
    tap(
        &mut term,
        &meter,
        &mut *valid_card,
        ServiceRequest::Welfare { amount: 90 },
        "more than the limit",
        (Outcome::Refused, Reason::AmountOverLimit),
        &mut stats,
    );
    // 100 points: 20 spent above, 80 here, then the purse is empty.
    for _ in 0..8 {
        term.clock_mut().advance(60);
        tap(
            &mut term,
            &meter,
            &mut *valid_card,
            ServiceRequest::Welfare { amount: 10 },
            "spend",
            ok,
            &mut stats,
        );
    }
    tap(
        &mut term,
        &meter,
        &mut *valid_card,
        ServiceRequest::Welfare { amount: 10 },
        "purse empty",
        (Outcome::Refused, Reason::PurseEmpty),
        &mut stats,
    );
    term.clock_mut().advance(8 * DAY);
    tap(
        &mut term,
        &meter,
        &mut *valid_card,
        ServiceRequest::Transit,
        "status list too old",
        (Outcome::AskStaff, Reason::StatusListOutdated),
        &mut stats,
    );

    // The log holds every decision, exported as one signed batch.
    let mut batch = [0u8; 16 * 1024];
    let records = term.state().log.records;
    let (exported, export_stack) = measure::stack_of(|| term.export_log_batch(200, &mut batch));
    match exported {
        Ok(Some(b)) => {
            check(b.records == records, "the batch holds every record");
            let signed = shared_crypto::Signed::decode(b.wire);
            let body = signed.ok().and_then(|s| {
                s.open::<shared_crypto::model::LogBatchBody<'_>>(&[], &auth.terminal.public_key())
                    .ok()
            });
            check(
                body.is_some_and(|b| b.check_sequence().is_ok()),
                "the batch verifies under the terminal key",
            );
            hprintln!(
                "log: {} records exported in a {}-byte signed batch",
                b.records,
                b.wire.len()
            );
        }
        _ => fail("export the log"),
    }

    // --- 4. the national-scale status list -------------------------------------------------------
    let large = large_list(
        &mut term,
        &meter,
        &mut stats,
        valid_38m_card,
        revoked_38m_card,
    );
    update_stack = update_stack.max(large.install_stack);

    // A reboot with the large list in force: mount checks the payload hash of every slot.
    let storage = term.into_storage();
    let remount_signer = AsmSigner::new(&auth.terminal.secret_bytes(), TestRng::new(13));
    let mut mount_38m_instructions = 0;
    if let Some(signer) = remount_signer {
        let config = TerminalConfig {
            root_key: auth.root_key(),
            certificate: cert,
        };
        meter.reset();
        let (mounted, s) = measure::stack_of(|| {
            meter.start();
            let t = Terminal::mount(
                config,
                storage,
                AsmVerifier,
                signer,
                TestClock::at(LIST38M_ISSUED_AT + DAY),
                TestRng::new(14),
                RecordingFeedback::default(),
            );
            meter.stop();
            t
        });
        mount_38m_instructions = meter.instructions();
        mount_stack = mount_stack.max(s);
        let epoch = mounted.as_ref().ok().and_then(|t| t.state().status_epoch);
        check(
            epoch == Some(LIST38M_EPOCH),
            "the large list is in force after a reboot",
        );
        hprintln!(
            "mount with the 38 M-entry list in force: {} instructions, {} B stack",
            mount_38m_instructions,
            s
        );
    } else {
        fail("assembly signer for the remount");
    }

    // --- results ----------------------------------------------------------------------------------
    let failures = FAILURES.load(Ordering::Relaxed);
    let term_size = core::mem::size_of::<Term>();
    hprintln!("BENCH tap_instructions_transit={}", stats.instructions[0]);
    hprintln!(
        "BENCH tap_instructions_employment={}",
        stats.instructions[1]
    );
    hprintln!("BENCH tap_instructions_rehab={}", stats.instructions[2]);
    hprintln!("BENCH tap_instructions_welfare={}", stats.instructions[3]);
    hprintln!("BENCH tap_stack_peak_bytes={}", stats.stack);
    hprintln!("BENCH update_stack_peak_bytes={}", update_stack);
    hprintln!("BENCH export_stack_peak_bytes={}", export_stack);
    hprintln!("BENCH mount_stack_peak_bytes={}", mount_stack);
    for (s, n) in ["transit", "employment", "rehab", "welfare"]
        .iter()
        .zip(stats.instructions_38m)
    {
        hprintln!("BENCH tap_instructions_{}_38m={}", s, n);
    }
    hprintln!("BENCH status_list_38m_entries={}", LIST38M_SIZE);
    hprintln!("BENCH status_list_38m_revoked={}", LIST38M_REVOKED);
    hprintln!("BENCH status_list_38m_list_bytes={}", LIST38M_LIST_BYTES);
    hprintln!("BENCH status_list_38m_wire_bytes={}", LIST38M_WIRE_BYTES);
    hprintln!(
        "BENCH status_install_38m_instructions={}",
        large.install_instructions
    );
    hprintln!("BENCH status_parse_38m_instructions={}", large.parse);
    hprintln!(
        "BENCH status_lookup_38m_instructions_mean={}",
        large.lookup_mean
    );
    hprintln!(
        "BENCH status_lookup_38m_instructions_max={}",
        large.lookup_max
    );
    hprintln!("BENCH mount_instructions_38m={}", mount_38m_instructions);
    hprintln!("BENCH terminal_struct_bytes={}", term_size);
    for (what, n) in blocks {
        hprintln!("BENCH {}_instructions={}", what, n);
    }
    hprintln!("BENCH decision_failures={}", failures);
    if failures == 0 {
        hprintln!("terminal-m4: every decision and cross-check matched");
    } else {
        hprintln!("terminal-m4: {} FAILURES", failures);
    }
    exit(failures == 0)
}
