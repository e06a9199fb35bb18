//! Whole taps through the PN532 driver: the real terminal core taps the real applet (the core's
//! testkit, in memory) behind a small PN532 simulated on the bus, on I2C and on SPI. The fake
//! chip checks every host frame as the PN532 would (UM0701-02 §6.2.1: preamble, LEN/LCS,
//! TFI, DCS), acknowledges it, and runs InDataExchange (§7.3.8) with the chaining of §7.4.5:
//! command pieces with the MI bit are collected, a card answer longer than the chip's 262-byte
//! buffer goes back in pieces with MI in the status byte, fetched by empty InDataExchanges.
//!
//! So these tests show the driver carries a whole tap (SELECT, TERMINAL AUTHENTICATE with the
//! terminal certificate, DEBIT with a card-signed receipt) including long frames both ways, and
//! that a card lost mid-tap through the chip is the terminal's `no_card`. The terminal speaks
//! short APDUs (ISO 7816 chaining and GET RESPONSE above 255 bytes), so a command block is at
//! most 261 bytes: beyond one normal frame (252 data bytes), it goes chained with MI or in one
//! extended frame; an answer is at most 258 bytes, which needs an extended frame from the chip but
//! fits its buffer, so a real PN532 never chains it. One test gives the fake chip a smaller answer
//! buffer so that the driver's reassembly of MI answers runs inside a whole tap too.
#![allow(clippy::unwrap_used)]

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use card_applet::sim::{InMemoryCard, TestRng};
use embedded_hal::delay::DelayNs;
use embedded_hal::i2c::{self, I2c};
use embedded_hal::spi::{self, SpiDevice};
use shared_crypto::apdu::Transport;
use shared_crypto::model::{Outcome, Reason, Role, ServiceSet};
use shared_crypto::sig::P256Signer;
use terminal_core::testkit::{
    issue_card, standard_rules, Authority, CardSpec, RecordingFeedback, TestClock,
};
use terminal_core::{
    Decision, P256Verifier, RamFlash, ServiceRequest, Storage, Terminal, TerminalConfig,
};
use terminal_drivers::pn532::{
    BitOrder, Config, I2cInterface, Interface, Pn532, SpiInterface, I2C_ADDRESS, MAX_EXCHANGE_DATA,
    MORE_INFORMATION, SPI_DATA_READ, SPI_DATA_WRITE, SPI_STATUS_READ,
};

// ---------------------------------------------------------------------------------------------
// The simulated PN532.

const ACK: [u8; 6] = [0x00, 0x00, 0xFF, 0x00, 0xFF, 0x00];
const NACK: [u8; 6] = [0x00, 0x00, 0xFF, 0xFF, 0x00, 0x00];
const TG: u8 = 0x01;

/// A PN532 frame from the chip: `00 00 FF`, LEN/LCS (extended beyond 255), TFI D5, data, DCS, 00.
fn chip_frame(payload: &[u8]) -> Vec<u8> {
    let len = 1 + payload.len();
    let mut f = vec![0x00, 0x00, 0xFF];
    if len > 255 {
        let [m, l] = (len as u16).to_be_bytes();
        f.extend([0xFF, 0xFF, m, l, 0u8.wrapping_sub(m).wrapping_sub(l)]);
    } else {
        f.extend([len as u8, 0u8.wrapping_sub(len as u8)]);
    }
    f.push(0xD5);
    f.extend_from_slice(payload);
    let sum = payload.iter().fold(0xD5u8, |a, b| a.wrapping_add(*b));
    f.extend([0u8.wrapping_sub(sum), 0x00]);
    f
}

/// The host frame's TFI-D4 packet (command code first), every field checked as the chip does.
/// Returns whether it was an extended frame.
fn host_packet(frame: &[u8]) -> (Vec<u8>, bool) {
    assert_eq!(&frame[..3], &[0x00, 0x00, 0xFF], "preamble and start code");
    let (len, at, extended) = if frame[3] == 0xFF && frame[4] == 0xFF {
        let len = u16::from_be_bytes([frame[5], frame[6]]) as usize;
        assert_eq!(
            frame[5].wrapping_add(frame[6]).wrapping_add(frame[7]),
            0,
            "LCS"
        );
        (len, 8, true)
    } else {
        assert_eq!(frame[3].wrapping_add(frame[4]), 0, "LCS");
        (frame[3] as usize, 5, false)
    };
    assert_eq!(frame.len(), at + len + 2, "frame length");
    let body = &frame[at..at + len + 1];
    assert_eq!(body.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0, "DCS");
    assert_eq!(body[0], 0xD4, "host TFI");
    assert_eq!(frame[at + len + 1], 0x00, "postamble");
    (body[1..len].to_vec(), extended)
}

/// What the fake chip saw, for the assertions.
#[derive(Debug, Default)]
struct Seen {
    /// Card APDUs, whole, as the card got them.
    apdus: Vec<usize>,
    /// Card answers, whole, as the card gave them.
    answers: Vec<usize>,
    /// InDataExchange pieces that had the MI bit (a command chained over several frames).
    command_pieces_chained: usize,
    /// Answer pieces sent with MI in the status byte.
    answer_pieces_chained: usize,
    /// Extended frames received from the host / sent to it.
    extended_in: usize,
    extended_out: usize,
    /// Command codes in order.
    commands: Vec<u8>,
}

struct Chip {
    card: InMemoryCard<TestRng>,
    /// Frames waiting for the host to read, in order.
    out: VecDeque<Vec<u8>>,
    last_response: Vec<u8>,
    activated: bool,
    /// The card APDU being collected from MI pieces.
    command: Vec<u8>,
    /// The rest of a card answer still to be sent.
    answer: VecDeque<u8>,
    /// After this many card APDUs the card leaves the field (status 0x01, card timeout).
    leaves_after: Option<usize>,
    /// Answer bytes the chip returns per InDataExchange before it sets MI (the PN532: 262).
    answer_buffer: usize,
    seen: Seen,
}

impl Chip {
    fn new(card: InMemoryCard<TestRng>) -> Self {
        Chip {
            card,
            out: VecDeque::new(),
            last_response: Vec::new(),
            activated: false,
            command: Vec::new(),
            answer: VecDeque::new(),
            leaves_after: None,
            answer_buffer: MAX_EXCHANGE_DATA,
            seen: Seen::default(),
        }
    }

    fn ready(&self) -> bool {
        !self.out.is_empty()
    }

    /// The host wrote `frame`.
    fn host_writes(&mut self, frame: &[u8]) {
        if frame == ACK {
            // The host aborts the command in progress.
            self.out.clear();
            return;
        }
        if frame == NACK {
            // Send the last response again (§6.2.1.4).
            self.out.push_back(self.last_response.clone());
            return;
        }
        let (packet, extended) = host_packet(frame);
        self.seen.extended_in += usize::from(extended);
        let (code, params) = (packet[0], &packet[1..]);
        self.seen.commands.push(code);
        self.out.push_back(ACK.to_vec());
        let mut answer = vec![code + 1];
        answer.extend(self.execute(code, params));
        let response = chip_frame(&answer);
        self.seen.extended_out += usize::from(response[3] == 0xFF && response[4] == 0xFF);
        self.last_response = response.clone();
        self.out.push_back(response);
    }

    fn execute(&mut self, code: u8, params: &[u8]) -> Vec<u8> {
        match code {
            // SAMConfiguration, RFConfiguration: no output parameters.
            0x14 | 0x32 => vec![],
            // InListPassiveTarget, one type A target: Tg, SENS_RES, SEL_RES (ISO-DEP), NFCID1,
            // ATS (TL counts itself).
            0x4A => {
                assert_eq!(params, [0x01, 0x00]);
                self.activated = true;
                vec![
                    1, TG, 0x00, 0x04, 0x20, 4, 0x08, 0x11, 0x22, 0x33, 5, 0x78, 0x80, 0x70, 0x02,
                ]
            }
            0x52 => {
                self.activated = false;
                vec![0x00]
            }
            0x40 => self.exchange(params),
            other => panic!("the driver sent a command the tap does not need: {other:#04x}"),
        }
    }

    /// InDataExchange: `params` = target byte (MI bit) and data.
    fn exchange(&mut self, params: &[u8]) -> Vec<u8> {
        assert!(self.activated, "InDataExchange before activation");
        let (tg, data) = (params[0], &params[1..]);
        assert_eq!(tg & !MORE_INFORMATION, TG);
        assert!(data.len() <= MAX_EXCHANGE_DATA, "beyond the chip's buffer");
        if tg & MORE_INFORMATION != 0 {
            self.seen.command_pieces_chained += 1;
            self.command.extend_from_slice(data);
            return vec![0x00];
        }
        if data.is_empty() && self.command.is_empty() && !self.answer.is_empty() {
            return self.answer_piece();
        }
        assert!(
            self.answer.is_empty(),
            "a new command before the answer was fetched"
        );
        self.command.extend_from_slice(data);
        let apdu = std::mem::take(&mut self.command);
        if self.leaves_after == Some(self.seen.apdus.len()) {
            // The card left the field: the chip reports a timeout (status 0x01, §7.1).
            return vec![0x01];
        }
        self.seen.apdus.push(apdu.len());
        let mut rsp = vec![0u8; 4096];
        let n = self.card.transceive(&apdu, &mut rsp).unwrap();
        self.seen.answers.push(n);
        self.answer.extend(&rsp[..n]);
        self.answer_piece()
    }

    /// The next piece of the card's answer: at most the chip's buffer, MI set when more follows.
    fn answer_piece(&mut self) -> Vec<u8> {
        let n = self.answer.len().min(self.answer_buffer);
        let more = self.answer.len() > n;
        self.seen.answer_pieces_chained += usize::from(more);
        let mut p = vec![if more { MORE_INFORMATION } else { 0x00 }];
        p.extend(self.answer.drain(..n));
        p
    }

    /// Bytes of the next frame for a read of `len` bytes (zeros behind it, as the bus gives).
    fn read_frame(&mut self, len: usize) -> Vec<u8> {
        let f = self
            .out
            .pop_front()
            .expect("the host read with no frame ready");
        assert!(
            f.len() <= len,
            "the driver read {len} bytes of a {}-byte frame",
            f.len()
        );
        let mut v = f;
        v.resize(len, 0x00);
        v
    }
}

type Shared = Rc<RefCell<Chip>>;

/// The chip on I2C: every read starts with the ready byte (§6.2.4).
struct I2cBus(Shared);

impl i2c::ErrorType for I2cBus {
    type Error = core::convert::Infallible;
}

impl I2c for I2cBus {
    fn transaction(
        &mut self,
        address: u8,
        operations: &mut [i2c::Operation<'_>],
    ) -> Result<(), Self::Error> {
        assert_eq!(address, I2C_ADDRESS);
        let mut chip = self.0.borrow_mut();
        for op in operations {
            match op {
                i2c::Operation::Write(bytes) => chip.host_writes(bytes),
                i2c::Operation::Read(buf) if buf.len() == 1 => buf[0] = u8::from(chip.ready()),
                i2c::Operation::Read(buf) => {
                    if chip.ready() {
                        let f = chip.read_frame(buf.len() - 1);
                        buf[0] = 0x01;
                        buf[1..].copy_from_slice(&f);
                    } else {
                        buf.fill(0);
                    }
                }
            }
        }
        Ok(())
    }
}

/// The chip on SPI (LSB first configured in the peripheral): operation byte, then data (§6.2.5).
struct SpiBus(Shared);

impl spi::ErrorType for SpiBus {
    type Error = core::convert::Infallible;
}

impl SpiDevice for SpiBus {
    fn transaction(
        &mut self,
        operations: &mut [spi::Operation<'_, u8>],
    ) -> Result<(), Self::Error> {
        let mut chip = self.0.borrow_mut();
        let [spi::Operation::Write(op), rest] = operations else {
            panic!("a transaction is the operation byte and one transfer");
        };
        match (op[0], rest) {
            (SPI_DATA_WRITE, spi::Operation::Write(frame)) => chip.host_writes(frame),
            (SPI_STATUS_READ, spi::Operation::Read(status)) => {
                status[0] = u8::from(chip.ready());
            }
            (SPI_DATA_READ, spi::Operation::Read(buf)) => {
                let f = chip.read_frame(buf.len());
                buf.copy_from_slice(&f);
            }
            (op, _) => panic!("unexpected SPI operation {op:#04x}"),
        }
        Ok(())
    }
}

struct NoDelay;

impl DelayNs for NoDelay {
    fn delay_ns(&mut self, _ns: u32) {}
}

// ---------------------------------------------------------------------------------------------
// The terminal.

type Flash = RamFlash<Vec<u8>, 4, 1024>;
type Term = Terminal<Flash, P256Verifier, P256Signer, TestClock, TestRng, RecordingFeedback>;

const T0: u64 = 1_750_000_000;
const DAY: u64 = 86_400;
const YEAR: u64 = 365 * DAY;
const REVOKED: u32 = 5;
/// A service point's name as an office registers it (42 bytes of UTF-8, the limit is 48): its
/// terminal certificate makes TERMINAL AUTHENTICATE longer than one short APDU.
const SUBJECT: &str = "东城区 公交42路 前门站 3号闸机";

fn flash(bytes: usize) -> Flash {
    Flash::erased(vec![0u8; bytes])
}

/// A terminal certified for every service with bundle, status list (index 5 revoked) and rules.
fn terminal(auth: &Authority, cert: &[u8]) -> Term {
    let storage = Storage {
        bundle: [flash(4096), flash(4096)],
        status: [flash(2048), flash(2048)],
        rules: [flash(1024), flash(1024)],
        log: flash(8 * 1024),
    };
    let config = TerminalConfig {
        root_key: auth.root_key(),
        certificate: cert,
    };
    let mut t = Terminal::mount(
        config,
        storage,
        P256Verifier,
        auth.terminal.clone(),
        TestClock::at(T0),
        TestRng::new(41),
        RecordingFeedback::default(),
    )
    .unwrap();
    let mut buf = [0u8; 4096];
    t.install_trust_bundle(auth.trust_bundle(1, T0 - DAY, &[], &mut buf).unwrap())
        .unwrap();
    t.install_status_list(
        auth.status_list(1, T0 - DAY, 64, &[REVOKED], &mut buf)
            .unwrap(),
    )
    .unwrap();
    let rules = standard_rules(1, T0 - DAY);
    t.install_service_rules(auth.service_rules(&rules, &mut buf).unwrap())
        .unwrap();
    t
}

struct Rig {
    auth: Authority,
    cert: Vec<u8>,
}

impl Rig {
    fn new() -> Self {
        let auth = Authority::new(31, T0 - YEAR, T0 + 5 * YEAR).unwrap();
        let mut cert = [0u8; 320];
        let cert = auth
            .certificate(
                &auth.terminal,
                Role::Terminal,
                SUBJECT,
                ServiceSet(0x0F),
                &mut cert,
            )
            .unwrap()
            .to_vec();
        Rig { auth, cert }
    }

    fn card(&self, serial: u8, status_index: u32) -> InMemoryCard<TestRng> {
        let spec = CardSpec::entitled(serial, status_index, T0 - YEAR, T0 + YEAR);
        issue_card(&self.auth, &spec, &self.auth.issuer, u64::from(serial)).unwrap()
    }
}

/// A tap the way a terminal's main loop runs it: wake the chip, find the card, let the core
/// run the whole tap over the driver, release the card.
fn tap_through<I: Interface>(
    term: &mut Term,
    iface: I,
    config: Config,
    request: ServiceRequest,
) -> Decision
where
    I::Error: core::fmt::Debug,
{
    let mut pn = Pn532::<_, _>::new(iface, NoDelay, config);
    pn.sam_configuration().unwrap();
    let target = pn
        .list_passive_target()
        .unwrap()
        .expect("a card in the field");
    assert!(target.supports_iso_dep());
    let d = term.tap(&mut pn, request);
    pn.in_release().unwrap();
    d
}

fn config(extended_frames: bool) -> Config {
    Config {
        extended_frames,
        ..Config::default()
    }
}

/// The tap needed frames longer than one normal frame both ways (else the assertions on
/// chaining and extended frames would prove nothing): a command block beyond the 252 data bytes
/// of a normal frame, and an answer that needs an extended frame from the chip (LEN = TFI, code,
/// status and the answer > 255).
fn assert_long_frames(seen: &Seen) {
    let longest_apdu = seen.apdus.iter().max().copied().unwrap_or(0);
    let longest_answer = seen.answers.iter().max().copied().unwrap_or(0);
    assert!(
        longest_apdu > 252,
        "no APDU longer than one normal frame: {seen:?}"
    );
    assert!(
        longest_answer + 3 > 255,
        "no answer needing an extended frame: {seen:?}"
    );
    assert!(seen.extended_out > 0, "{seen:?}");
}

#[test]
fn a_whole_transit_tap_runs_over_i2c_with_chained_frames() {
    let rig = Rig::new();
    let mut term = terminal(&rig.auth, &rig.cert);
    let chip = Rc::new(RefCell::new(Chip::new(rig.card(1, 10))));
    let d = tap_through(
        &mut term,
        I2cInterface::new(I2cBus(Rc::clone(&chip))),
        config(false),
        ServiceRequest::Transit,
    );
    assert_eq!(
        (d.outcome, d.reason),
        (Outcome::Accepted, Reason::Ok),
        "{d:?}"
    );
    assert!(d.log_seq.is_some());
    let chip = chip.borrow();
    let seen = &chip.seen;
    assert_long_frames(seen);
    // Normal frames only: the long APDU went in 252-byte pieces with MI.
    assert!(seen.command_pieces_chained > 0, "{seen:?}");
    assert_eq!(seen.extended_in, 0, "{seen:?}");
    // The card's answers come back whole: what the terminal got is what the card said.
    assert_eq!(seen.commands.first(), Some(&0x14));
    assert_eq!(seen.commands.last(), Some(&0x52));
    // The wire figures the core counted match what passed the chip.
    let stats = term.wire_stats();
    assert_eq!(stats.apdus as usize, seen.apdus.len(), "{stats:?} {seen:?}");
}

#[test]
fn a_welfare_debit_runs_over_spi_with_extended_frames() {
    let rig = Rig::new();
    let mut term = terminal(&rig.auth, &rig.cert);
    let chip = Rc::new(RefCell::new(Chip::new(rig.card(2, 11))));
    let d = tap_through(
        &mut term,
        SpiInterface::new(SpiBus(Rc::clone(&chip)), BitOrder::LsbFirst),
        config(true),
        ServiceRequest::Welfare { amount: 30 },
    );
    assert_eq!(
        (d.outcome, d.reason),
        (Outcome::Accepted, Reason::Ok),
        "{d:?}"
    );
    let debit = d.debit.expect("a debit with its card-signed receipt");
    assert_eq!((debit.amount, debit.balance_after), (30, 70));
    assert!(!d.receipt().unwrap_or(&[]).is_empty());
    let chip = chip.borrow();
    let seen = &chip.seen;
    assert_long_frames(seen);
    // Extended frames both ways: the long APDU fits one frame, answers need them too.
    assert!(seen.extended_in > 0 && seen.extended_out > 0, "{seen:?}");
    assert_eq!(seen.command_pieces_chained, 0, "{seen:?}");
}

/// A chip that sets MI on answers longer than 64 bytes: the driver fetches every piece with an
/// empty InDataExchange and hands the core the whole answer.
#[test]
fn answers_chained_by_the_chip_are_reassembled_in_a_whole_tap() {
    let rig = Rig::new();
    let mut term = terminal(&rig.auth, &rig.cert);
    let mut chip = Chip::new(rig.card(5, 13));
    chip.answer_buffer = 64;
    let chip = Rc::new(RefCell::new(chip));
    let d = tap_through(
        &mut term,
        I2cInterface::new(I2cBus(Rc::clone(&chip))),
        config(false),
        ServiceRequest::Rehab,
    );
    assert_eq!(
        (d.outcome, d.reason),
        (Outcome::Accepted, Reason::Ok),
        "{d:?}"
    );
    let chip = chip.borrow();
    let seen = &chip.seen;
    // The 258-byte answer alone takes 5 pieces, 4 of them with MI.
    assert!(seen.answer_pieces_chained >= 4, "{seen:?}");
    assert_eq!(seen.extended_out, 0, "{seen:?}");
}

#[test]
fn a_revoked_card_is_refused_over_the_pn532() {
    let rig = Rig::new();
    let mut term = terminal(&rig.auth, &rig.cert);
    let chip = Rc::new(RefCell::new(Chip::new(rig.card(3, REVOKED))));
    let d = tap_through(
        &mut term,
        I2cInterface::new(I2cBus(Rc::clone(&chip))),
        config(false),
        ServiceRequest::Employment,
    );
    assert_eq!(
        (d.outcome, d.reason),
        (Outcome::Refused, Reason::Revoked),
        "{d:?}"
    );
    assert!(d.log_seq.is_some());
}

/// The card leaves the field after SELECT: the chip reports a timeout in the status byte, the
/// driver gives `Status(0x01)`, and the terminal decides `no_card` (and logs it), not a crash or
/// a hang.
#[test]
fn a_card_lost_mid_tap_through_the_pn532_is_no_card() {
    let rig = Rig::new();
    let mut term = terminal(&rig.auth, &rig.cert);
    let mut chip = Chip::new(rig.card(4, 12));
    chip.leaves_after = Some(1);
    let chip = Rc::new(RefCell::new(chip));
    let d = tap_through(
        &mut term,
        SpiInterface::new(SpiBus(Rc::clone(&chip)), BitOrder::LsbFirst),
        config(false),
        ServiceRequest::Transit,
    );
    assert_eq!(d.reason, Reason::NoCard, "{d:?}");
    assert_ne!(d.outcome, Outcome::Accepted);
    assert!(d.log_seq.is_some());
    assert_eq!(chip.borrow().seen.apdus.len(), 1);
}
