//! The PN532 driver against scripted buses (embedded-hal-mock): every scenario runs on the SPI
//! link (LSB-first and MSB-first with software bit reversal) and on the I2C link, byte for byte
//! as the chip would see and send it. Frames in the scripts are built by this file's own oracle
//! from UM0701-02 §6.2.1, with two fixed vectors from the manual as an anchor.
#![allow(clippy::unwrap_used)]

use std::cell::Cell;
use std::collections::BTreeSet;
use std::rc::Rc;

use embedded_hal::delay::DelayNs;
use embedded_hal::spi::{ErrorType, Operation, SpiDevice};
use embedded_hal_mock::eh1::i2c::{Mock as I2cMock, Transaction as I2cTx};
use embedded_hal_mock::eh1::spi::{Mock as SpiMock, Transaction as SpiTx};
use shared_crypto::apdu::{self, Transport, WireStats};
use terminal_drivers::pn532::{
    BitOrder, Config, Error, I2cInterface, Interface, Pn532, SpiInterface,
};

// ---------------------------------------------------------------------------------------------
// Frame oracle.

fn info(tfi: u8, payload: &[u8]) -> Vec<u8> {
    let len = 1 + payload.len();
    let mut f = vec![0x00, 0x00, 0xFF];
    if len > 255 {
        let [m, l] = (len as u16).to_be_bytes();
        f.extend([0xFF, 0xFF, m, l, 0u8.wrapping_sub(m).wrapping_sub(l)]);
    } else {
        f.extend([len as u8, 0u8.wrapping_sub(len as u8)]);
    }
    f.push(tfi);
    f.extend_from_slice(payload);
    let sum = payload.iter().fold(tfi, |a, b| a.wrapping_add(*b));
    f.push(0u8.wrapping_sub(sum));
    f.push(0x00);
    f
}

/// A command frame from the host.
fn host(cmd: u8, params: &[u8]) -> Vec<u8> {
    let mut p = vec![cmd];
    p.extend_from_slice(params);
    info(0xD4, &p)
}

/// A response frame from the PN532.
fn chip(cmd: u8, params: &[u8]) -> Vec<u8> {
    let mut p = vec![cmd + 1];
    p.extend_from_slice(params);
    info(0xD5, &p)
}

const ACK: [u8; 6] = [0x00, 0x00, 0xFF, 0x00, 0xFF, 0x00];
const NACK: [u8; 6] = [0x00, 0x00, 0xFF, 0xFF, 0x00, 0x00];
const ERROR_FRAME: [u8; 8] = [0x00, 0x00, 0xFF, 0x01, 0xFF, 0x7F, 0x81, 0x00];

const N: usize = 300;
/// How many frame bytes the driver clocks out for each response (longest answer of the command,
/// capped by the buffer).
fn read_len(max_params: usize) -> usize {
    let len = 2 + max_params;
    let total = if len > 255 { 10 + len } else { 7 + len };
    total.min(N)
}
const SAM: u8 = 0x14;
const FW: u8 = 0x02;
const RF: u8 = 0x32;
const LIST: u8 = 0x4A;
const EXCHANGE: u8 = 0x40;
const RELEASE: u8 = 0x52;
const SAM_MAX: usize = 0;
const FW_MAX: usize = 4;
const LIST_MAX: usize = 80;
const EXCHANGE_MAX: usize = 263;
const RELEASE_MAX: usize = 1;

#[test]
fn oracle_matches_the_manuals_frames() {
    // SAMConfiguration normal mode (UM0701-02 §7.2.10 example) and a firmware-version answer.
    assert_eq!(
        host(SAM, &[0x01, 0x14, 0x01]),
        [0x00, 0x00, 0xFF, 0x05, 0xFB, 0xD4, 0x14, 0x01, 0x14, 0x01, 0x02, 0x00]
    );
    assert_eq!(
        chip(FW, &[0x32, 0x01, 0x06, 0x07]),
        [0x00, 0x00, 0xFF, 0x06, 0xFA, 0xD5, 0x03, 0x32, 0x01, 0x06, 0x07, 0xE8, 0x00]
    );
}

// ---------------------------------------------------------------------------------------------
// Links: one script API, two buses.

trait Link {
    type Iface: Interface<Error = Self::BusError>;
    type BusError: core::fmt::Debug + PartialEq;
    /// The host writes this frame.
    fn write(&mut self, frame: &[u8]);
    /// The host writes this frame and the bus fails.
    fn write_fails(&mut self, frame: &[u8]);
    /// The host polls; the chip says `ready`.
    fn poll(&mut self, ready: bool);
    /// The host polls and the bus fails.
    fn poll_fails(&mut self);
    /// The host reads `len` frame bytes; the chip sends `frame`, then zeros.
    fn read(&mut self, frame: &[u8], len: usize);
    /// The host reads `len` frame bytes and the bus fails.
    fn read_fails(&mut self, len: usize);
    /// The driver's link over the scripted bus (keeps a handle on the mock for [`Link::done`]).
    fn iface(&mut self) -> Self::Iface;
    /// Asserts that the whole script was used.
    fn done(&mut self);

    fn ack(&mut self) {
        self.poll(true);
        self.read(&ACK, 6);
    }
    fn respond(&mut self, cmd: u8, params: &[u8], max: usize) {
        self.poll(true);
        self.read(&chip(cmd, params), read_len(max));
    }
    /// A whole command: frame out, ACK, response.
    fn command(&mut self, cmd: u8, params: &[u8], answer: &[u8], max: usize) {
        self.write(&host(cmd, params));
        self.ack();
        self.respond(cmd, answer, max);
    }
}

fn padded(frame: &[u8], len: usize) -> Vec<u8> {
    let mut v = frame.to_vec();
    v.resize(len, 0x00);
    v
}

/// An SPI device that fails chosen transactions (the mock cannot inject SPI errors itself).
#[derive(Clone)]
struct FaultySpi {
    mock: SpiMock<u8>,
    fail: Rc<BTreeSet<usize>>,
    count: Rc<Cell<usize>>,
}

impl ErrorType for FaultySpi {
    type Error = embedded_hal::spi::ErrorKind;
}

impl SpiDevice for FaultySpi {
    fn transaction(&mut self, ops: &mut [Operation<'_, u8>]) -> Result<(), Self::Error> {
        let n = self.count.get();
        self.count.set(n + 1);
        if self.fail.contains(&n) {
            return Err(embedded_hal::spi::ErrorKind::Overrun);
        }
        self.mock.transaction(ops)
    }
}

struct Spi {
    order: BitOrder,
    script: Vec<SpiTx<u8>>,
    transactions: usize,
    fail: BTreeSet<usize>,
    mock: Option<SpiMock<u8>>,
}

impl Spi {
    fn new(order: BitOrder) -> Self {
        Self {
            order,
            script: vec![],
            transactions: 0,
            fail: BTreeSet::new(),
            mock: None,
        }
    }
    fn wire(&self, bytes: &[u8]) -> Vec<u8> {
        match self.order {
            BitOrder::LsbFirst => bytes.to_vec(),
            BitOrder::MsbFirst => bytes.iter().map(|b| b.reverse_bits()).collect(),
        }
    }
    fn tx(&mut self, ops: Vec<SpiTx<u8>>) {
        self.script.push(SpiTx::transaction_start());
        self.script.extend(ops);
        self.script.push(SpiTx::transaction_end());
        self.transactions += 1;
    }
    fn failing(&mut self) {
        self.fail.insert(self.transactions);
        self.transactions += 1;
    }
}

impl Link for Spi {
    type Iface = SpiInterface<FaultySpi>;
    type BusError = embedded_hal::spi::ErrorKind;
    fn write(&mut self, frame: &[u8]) {
        let (dw, f) = (self.wire(&[0x01]), self.wire(frame));
        self.tx(vec![SpiTx::write_vec(dw), SpiTx::write_vec(f)]);
    }
    fn write_fails(&mut self, _frame: &[u8]) {
        self.failing();
    }
    fn poll(&mut self, ready: bool) {
        let (sr, st) = (self.wire(&[0x02]), self.wire(&[ready as u8]));
        self.tx(vec![SpiTx::write_vec(sr), SpiTx::read_vec(st)]);
    }
    fn poll_fails(&mut self) {
        self.failing();
    }
    fn read(&mut self, frame: &[u8], len: usize) {
        let (dr, data) = (self.wire(&[0x03]), self.wire(&padded(frame, len)));
        self.tx(vec![SpiTx::write_vec(dr), SpiTx::read_vec(data)]);
    }
    fn read_fails(&mut self, _len: usize) {
        self.failing();
    }
    fn iface(&mut self) -> Self::Iface {
        let mock = SpiMock::new(&self.script);
        let dev = FaultySpi {
            mock: mock.clone(),
            fail: Rc::new(self.fail.clone()),
            count: Rc::new(Cell::new(0)),
        };
        // The mock's state is shared between clones: this handle checks the script afterwards.
        self.mock = Some(mock);
        SpiInterface::new(dev, self.order)
    }
    fn done(&mut self) {
        if let Some(m) = self.mock.as_mut() {
            m.done();
        }
    }
}

#[derive(Default)]
struct I2c {
    script: Vec<I2cTx>,
    mock: Option<I2cMock>,
}

const ADDR: u8 = 0x24;

impl Link for I2c {
    type Iface = I2cInterface<I2cMock>;
    type BusError = embedded_hal::i2c::ErrorKind;
    fn write(&mut self, frame: &[u8]) {
        self.script.push(I2cTx::write(ADDR, frame.to_vec()));
    }
    fn write_fails(&mut self, frame: &[u8]) {
        self.script.push(
            I2cTx::write(ADDR, frame.to_vec())
                .with_error(embedded_hal::i2c::ErrorKind::ArbitrationLoss),
        );
    }
    fn poll(&mut self, ready: bool) {
        self.script.push(I2cTx::read(ADDR, vec![ready as u8]));
    }
    fn poll_fails(&mut self) {
        self.script.push(I2cTx::read(ADDR, vec![0]).with_error(
            embedded_hal::i2c::ErrorKind::NoAcknowledge(
                embedded_hal::i2c::NoAcknowledgeSource::Address,
            ),
        ));
    }
    fn read(&mut self, frame: &[u8], len: usize) {
        let mut v = vec![0x01];
        v.extend(padded(frame, len));
        self.script.push(I2cTx::read(ADDR, v));
    }
    fn read_fails(&mut self, len: usize) {
        self.script.push(
            I2cTx::read(ADDR, vec![0; len + 1]).with_error(embedded_hal::i2c::ErrorKind::Bus),
        );
    }
    fn iface(&mut self) -> Self::Iface {
        let mock = I2cMock::new(&self.script);
        self.mock = Some(mock.clone());
        I2cInterface::new(mock)
    }
    fn done(&mut self) {
        if let Some(m) = self.mock.as_mut() {
            m.done();
        }
    }
}

/// Counts the time the driver waited.
#[derive(Clone, Default)]
struct Waited(Rc<Cell<u64>>);

impl DelayNs for Waited {
    fn delay_ns(&mut self, ns: u32) {
        self.0.set(self.0.get() + u64::from(ns));
    }
}

fn config() -> Config {
    Config {
        poll_interval_us: 1_000,
        ack_polls: 3,
        response_polls: 5,
        detect_polls: 4,
        extended_frames: false,
    }
}

/// Runs `body` against the driver over the script, then checks every scripted byte was used.
fn run<L: Link, R>(
    link: &mut L,
    config: Config,
    body: impl FnOnce(&mut Pn532<L::Iface, Waited, N>) -> R,
) -> (R, u64) {
    let waited = Waited::default();
    let mut pn = Pn532::<_, _, N>::new(link.iface(), waited.clone(), config);
    let r = body(&mut pn);
    drop(pn);
    link.done();
    (r, waited.0.get() / 1_000)
}

/// A scenario: scripts `link`, runs `body` on a driver and checks the whole script was used.
macro_rules! on_every_link {
    ($name:ident, |$link:ident| $script:block, |$pn:ident| $body:block) => {
        mod $name {
            use super::*;

            fn script<L: Link>($link: &mut L) $script

            fn check<L: Link>($pn: &mut Pn532<L::Iface, Waited, N>) $body

            #[test]
            fn spi_lsb_first() {
                let mut link = Spi::new(BitOrder::LsbFirst);
                script(&mut link);
                let mut pn = Pn532::<_, _, N>::new(link.iface(), Waited::default(), config());
                check::<Spi>(&mut pn);
                drop(pn);
                link.done();
            }

            #[test]
            fn spi_msb_first_reversed_in_software() {
                let mut link = Spi::new(BitOrder::MsbFirst);
                script(&mut link);
                let mut pn = Pn532::<_, _, N>::new(link.iface(), Waited::default(), config());
                check::<Spi>(&mut pn);
                drop(pn);
                link.done();
            }

            #[test]
            fn i2c() {
                let mut link = I2c::default();
                script(&mut link);
                let mut pn = Pn532::<_, _, N>::new(link.iface(), Waited::default(), config());
                check::<I2c>(&mut pn);
                drop(pn);
                link.done();
            }
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Set-up commands.

on_every_link!(
    sam_configuration_normal_mode,
    |l| {
        l.command(SAM, &[0x01, 0x14, 0x01], &[], SAM_MAX);
    },
    |pn| {
        pn.sam_configuration().unwrap();
    }
);

on_every_link!(
    firmware_version_is_parsed,
    |l| {
        l.command(FW, &[], &[0x32, 0x01, 0x06, 0x07], FW_MAX);
    },
    |pn| {
        let v = pn.firmware_version().unwrap();
        assert_eq!((v.ic, v.version, v.revision, v.support), (0x32, 1, 6, 7));
    }
);

on_every_link!(
    firmware_version_with_missing_bytes_is_a_bad_frame,
    |l| {
        l.command(FW, &[], &[0x32, 0x01, 0x06], FW_MAX);
    },
    |pn| {
        assert_eq!(pn.firmware_version(), Err(Error::BadFrame));
    }
);

on_every_link!(
    passive_activation_retries_are_configured,
    |l| {
        l.command(RF, &[0x05, 0xFF, 0x01, 0x10], &[], 0);
    },
    |pn| {
        pn.set_passive_activation_retries(0x10).unwrap();
    }
);

// ---------------------------------------------------------------------------------------------
// Card detection.

const UID7: [u8; 7] = [0x04, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66];
const ATS: [u8; 6] = [0x06, 0x75, 0x77, 0x81, 0x02, 0x80];

fn list_answer(uid: &[u8], sel_res: u8, ats: &[u8]) -> Vec<u8> {
    let mut p = vec![0x01, 0x01, 0x00, 0x44, sel_res, uid.len() as u8];
    p.extend_from_slice(uid);
    p.extend_from_slice(ats);
    p
}

on_every_link!(
    iso_dep_card_is_activated,
    |l| {
        l.command(
            LIST,
            &[0x01, 0x00],
            &list_answer(&UID7, 0x20, &ATS),
            LIST_MAX,
        );
    },
    |pn| {
        let t = pn.list_passive_target().unwrap().unwrap();
        assert_eq!(t.tg, 1);
        assert_eq!(t.sens_res, [0x00, 0x44]);
        assert!(t.supports_iso_dep());
        assert_eq!(t.uid(), &UID7);
        assert_eq!(t.ats(), &ATS);
        assert_eq!(pn.target(), Some(1));
    }
);

on_every_link!(
    memory_card_without_ats_is_reported_as_not_iso_dep,
    |l| {
        l.command(
            LIST,
            &[0x01, 0x00],
            &list_answer(&UID7[..4], 0x08, &[]),
            LIST_MAX,
        );
    },
    |pn| {
        let t = pn.list_passive_target().unwrap().unwrap();
        assert!(!t.supports_iso_dep());
        assert_eq!(t.uid().len(), 4);
        assert!(t.ats().is_empty());
    }
);

on_every_link!(
    no_card_answer_is_none,
    |l| {
        l.command(LIST, &[0x01, 0x00], &[0x00], LIST_MAX);
    },
    |pn| {
        assert_eq!(pn.list_passive_target(), Ok(None));
        assert_eq!(pn.target(), None);
    }
);

on_every_link!(
    card_search_that_never_ends_is_aborted_and_reported_as_no_card,
    |l| {
        l.write(&host(LIST, &[0x01, 0x00]));
        l.ack();
        for _ in 0..4 {
            l.poll(false);
        }
        // The abort: an ACK from the host.
        l.write(&ACK);
    },
    |pn| {
        assert_eq!(pn.list_passive_target(), Ok(None));
    }
);

on_every_link!(
    uid_of_impossible_length_is_refused,
    |l| {
        l.command(
            LIST,
            &[0x01, 0x00],
            &list_answer(&UID7[..5], 0x20, &ATS),
            LIST_MAX,
        );
    },
    |pn| {
        assert_eq!(pn.list_passive_target(), Err(Error::BadFrame));
        assert_eq!(pn.target(), None);
    }
);

on_every_link!(
    ats_length_that_does_not_add_up_is_refused,
    |l| {
        let mut ats = ATS.to_vec();
        ats.push(0x99);
        l.command(
            LIST,
            &[0x01, 0x00],
            &list_answer(&UID7, 0x20, &ats),
            LIST_MAX,
        );
    },
    |pn| {
        assert_eq!(pn.list_passive_target(), Err(Error::BadFrame));
    }
);

on_every_link!(
    two_targets_when_one_was_asked_is_refused,
    |l| {
        let mut a = list_answer(&UID7, 0x20, &ATS);
        a[0] = 2;
        l.command(LIST, &[0x01, 0x00], &a, LIST_MAX);
    },
    |pn| {
        assert_eq!(pn.list_passive_target(), Err(Error::BadFrame));
    }
);

// ---------------------------------------------------------------------------------------------
// Data exchange.

fn activate<L: Link>(l: &mut L) {
    l.command(
        LIST,
        &[0x01, 0x00],
        &list_answer(&UID7, 0x20, &ATS),
        LIST_MAX,
    );
}

fn with_status(status: u8, data: &[u8]) -> Vec<u8> {
    let mut v = vec![status];
    v.extend_from_slice(data);
    v
}

const SELECT_ANSWER: [u8; 5] = [0x01, 0x02, 0x03, 0x90, 0x00];

on_every_link!(
    select_goes_out_and_the_answer_comes_back_with_its_status_word,
    |l| {
        activate(l);
        let mut p = vec![0x01];
        p.extend_from_slice(&apdu::select_command());
        l.command(
            EXCHANGE,
            &p,
            &with_status(0x00, &SELECT_ANSWER),
            EXCHANGE_MAX,
        );
    },
    |pn| {
        pn.list_passive_target().unwrap().unwrap();
        let mut rsp = [0u8; 64];
        let n = pn.transceive(&apdu::select_command(), &mut rsp).unwrap();
        assert_eq!(&rsp[..n], &SELECT_ANSWER);
    }
);

on_every_link!(exchange_without_a_card_touches_no_bus, |_l| {}, |pn| {
    let mut rsp = [0u8; 16];
    assert_eq!(pn.transceive(&[0x00, 0xA4], &mut rsp), Err(Error::NoTarget));
});

on_every_link!(
    card_timeout_status_is_reported,
    |l| {
        activate(l);
        l.command(
            EXCHANGE,
            &[0x01, 0x00, 0xB0, 0x00, 0x00],
            &[0x01],
            EXCHANGE_MAX,
        );
    },
    |pn| {
        pn.list_passive_target().unwrap();
        let mut rsp = [0u8; 16];
        assert_eq!(
            pn.transceive(&[0x00, 0xB0, 0x00, 0x00], &mut rsp),
            Err(Error::Status(0x01))
        );
    }
);

on_every_link!(
    answer_longer_than_the_callers_buffer_is_refused,
    |l| {
        activate(l);
        l.command(
            EXCHANGE,
            &[0x01, 0x00, 0xB0, 0x00, 0x00],
            &with_status(0, &[7; 40]),
            EXCHANGE_MAX,
        );
    },
    |pn| {
        pn.list_passive_target().unwrap();
        let mut rsp = [0u8; 16];
        assert_eq!(
            pn.transceive(&[0x00, 0xB0, 0x00, 0x00], &mut rsp),
            Err(Error::BufferTooSmall)
        );
    }
);

on_every_link!(
    answer_to_another_command_is_a_bad_frame,
    |l| {
        activate(l);
        l.write(&host(EXCHANGE, &[0x01, 0x00, 0xB0, 0x00, 0x00]));
        l.ack();
        l.poll(true);
        // A response code of InRelease to an InDataExchange.
        l.read(&chip(RELEASE, &[0x00, 0x90, 0x00]), read_len(EXCHANGE_MAX));
    },
    |pn| {
        pn.list_passive_target().unwrap();
        let mut rsp = [0u8; 16];
        assert_eq!(
            pn.transceive(&[0x00, 0xB0, 0x00, 0x00], &mut rsp),
            Err(Error::BadFrame)
        );
    }
);

on_every_link!(
    release_deactivates_the_card,
    |l| {
        activate(l);
        l.command(RELEASE, &[0x00], &[0x00], RELEASE_MAX);
    },
    |pn| {
        pn.list_passive_target().unwrap();
        pn.in_release().unwrap();
        assert_eq!(pn.target(), None);
        let mut rsp = [0u8; 16];
        assert_eq!(pn.transceive(&[0x00], &mut rsp), Err(Error::NoTarget));
    }
);

on_every_link!(
    release_error_status_is_reported,
    |l| {
        l.command(RELEASE, &[0x00], &[0x27], RELEASE_MAX);
    },
    |pn| {
        assert_eq!(pn.in_release(), Err(Error::Status(0x27)));
    }
);

// ---------------------------------------------------------------------------------------------
// Chaining: a 600-byte command and a 600-byte answer.

fn apdu600() -> Vec<u8> {
    let mut c = vec![0x80, 0x82, 0x00, 0x00, 0x00, 0x02, 0x53];
    c.extend((0..593).map(|i| (i * 7 + 3) as u8));
    assert_eq!(c.len(), 600);
    c
}

fn answer600() -> Vec<u8> {
    let mut a: Vec<u8> = (0..598).map(|i| (i * 13 + 1) as u8).collect();
    a.extend([0x90, 0x00]);
    a
}

/// Scripts a chained exchange: command pieces of `piece` bytes, answer pieces of `answer_piece`.
fn chained<L: Link>(l: &mut L, piece: usize, answer_piece: usize) {
    activate(l);
    let cmd = apdu600();
    let pieces: Vec<&[u8]> = cmd.chunks(piece).collect();
    for (i, p) in pieces.iter().enumerate() {
        let last = i + 1 == pieces.len();
        let mut params = vec![if last { 0x01 } else { 0x41 }];
        params.extend_from_slice(p);
        if !last {
            l.command(EXCHANGE, &params, &[0x00], EXCHANGE_MAX);
            continue;
        }
        let answer = answer600();
        let parts: Vec<&[u8]> = answer.chunks(answer_piece).collect();
        for (j, a) in parts.iter().enumerate() {
            let more = j + 1 < parts.len();
            let status = if more { 0x40 } else { 0x00 };
            if j == 0 {
                l.command(EXCHANGE, &params, &with_status(status, a), EXCHANGE_MAX);
            } else {
                // Fetching the rest: InDataExchange with the target byte only.
                l.command(EXCHANGE, &[0x01], &with_status(status, a), EXCHANGE_MAX);
            }
        }
    }
}

fn exchange600<L: Link>(pn: &mut Pn532<L::Iface, Waited, N>) {
    pn.list_passive_target().unwrap();
    let mut rsp = [0u8; 700];
    let n = pn.transceive(&apdu600(), &mut rsp).unwrap();
    assert_eq!(&rsp[..n], &answer600()[..]);
}

on_every_link!(
    chaining_600_bytes_in_normal_frames,
    |l| {
        chained(l, 252, 252);
    },
    |pn| {
        exchange600::<L>(pn);
    }
);

mod chaining_600_bytes_in_extended_frames {
    use super::*;

    fn cfg() -> Config {
        Config {
            extended_frames: true,
            ..config()
        }
    }

    #[test]
    fn spi() {
        let mut link = Spi::new(BitOrder::LsbFirst);
        chained(&mut link, 262, 262);
        let mut pn = Pn532::<_, _, N>::new(link.iface(), Waited::default(), cfg());
        exchange600::<Spi>(&mut pn);
        drop(pn);
        link.done();
    }

    #[test]
    fn i2c() {
        let mut link = I2c::default();
        chained(&mut link, 262, 262);
        let mut pn = Pn532::<_, _, N>::new(link.iface(), Waited::default(), cfg());
        exchange600::<I2c>(&mut pn);
        drop(pn);
        link.done();
    }

    #[test]
    fn the_extended_frame_really_is_one() {
        assert_eq!(&host(EXCHANGE, &[0x01; 263])[3..5], &[0xFF, 0xFF]);
    }
}

on_every_link!(
    through_shared_crypto_exchange_a_long_command_is_iso_chained_on_top,
    |l| {
        // apdu::exchange splits 600 data bytes into ISO 7816 chained APDUs of 255 data bytes;
        // each such APDU (261 bytes) is split again into two PN532 pieces with the MI bit.
        activate(l);
        let data: Vec<u8> = (0..600).map(|i| i as u8).collect();
        let blocks: Vec<&[u8]> = data.chunks(255).collect();
        for (i, b) in blocks.iter().enumerate() {
            let last = i + 1 == blocks.len();
            let mut a = vec![
                if last { 0x80 } else { 0x90 },
                0x82,
                0x00,
                0x00,
                b.len() as u8,
            ];
            a.extend_from_slice(b);
            if last {
                a.push(0x00);
            }
            let pieces: Vec<&[u8]> = a.chunks(252).collect();
            for (j, p) in pieces.iter().enumerate() {
                let more = j + 1 < pieces.len();
                let mut params = vec![if more { 0x41 } else { 0x01 }];
                params.extend_from_slice(p);
                let answer = if more {
                    vec![0x00]
                } else {
                    vec![0x00, 0x90, 0x00]
                };
                let answer = if !more && last {
                    vec![0x00, 0xAB, 0xCD, 0x90, 0x00]
                } else {
                    answer
                };
                l.command(EXCHANGE, &params, &answer, EXCHANGE_MAX);
            }
        }
    },
    |pn| {
        pn.list_passive_target().unwrap();
        let data: Vec<u8> = (0..600).map(|i| i as u8).collect();
        let mut out = [0u8; 16];
        let mut stats = WireStats::default();
        let n = apdu::exchange(pn, 0x80, 0x82, 0, 0, &data, true, &mut out, &mut stats).unwrap();
        assert_eq!(&out[..n], &[0xAB, 0xCD]);
        assert_eq!(stats.apdus, 3);
    }
);

on_every_link!(
    data_in_the_answer_to_a_chained_piece_is_refused,
    |l| {
        activate(l);
        let cmd = apdu600();
        let mut params = vec![0x41];
        params.extend_from_slice(&cmd[..252]);
        l.command(EXCHANGE, &params, &[0x00, 0x90, 0x00], EXCHANGE_MAX);
    },
    |pn| {
        pn.list_passive_target().unwrap();
        let mut rsp = [0u8; 700];
        assert_eq!(pn.transceive(&apdu600(), &mut rsp), Err(Error::BadFrame));
    }
);

on_every_link!(
    more_information_without_data_is_refused,
    |l| {
        activate(l);
        l.command(
            EXCHANGE,
            &[0x01, 0x00, 0xB0, 0x00, 0x00],
            &[0x40],
            EXCHANGE_MAX,
        );
    },
    |pn| {
        pn.list_passive_target().unwrap();
        let mut rsp = [0u8; 64];
        assert_eq!(
            pn.transceive(&[0x00, 0xB0, 0x00, 0x00], &mut rsp),
            Err(Error::BadFrame)
        );
    }
);

// ---------------------------------------------------------------------------------------------
// Faults: checksums, NACK, syntax errors, timeouts, bus errors.

fn corrupt_dcs(mut f: Vec<u8>) -> Vec<u8> {
    let n = f.len();
    f[n - 2] ^= 0x01;
    f
}

fn corrupt_lcs(mut f: Vec<u8>) -> Vec<u8> {
    f[4] ^= 0x01;
    f
}

on_every_link!(
    bad_response_checksum_is_asked_again_with_nack_and_recovers,
    |l| {
        l.write(&host(FW, &[]));
        l.ack();
        l.poll(true);
        l.read(&corrupt_dcs(chip(FW, &[0x32, 1, 6, 7])), read_len(FW_MAX));
        l.write(&NACK);
        l.poll(true);
        l.read(&chip(FW, &[0x32, 1, 6, 7]), read_len(FW_MAX));
    },
    |pn| {
        assert_eq!(pn.firmware_version().unwrap().ic, 0x32);
    }
);

on_every_link!(
    bad_response_checksum_twice_is_a_checksum_error,
    |l| {
        l.write(&host(FW, &[]));
        l.ack();
        l.poll(true);
        l.read(&corrupt_lcs(chip(FW, &[0x32, 1, 6, 7])), read_len(FW_MAX));
        l.write(&NACK);
        l.poll(true);
        l.read(&corrupt_dcs(chip(FW, &[0x32, 1, 6, 7])), read_len(FW_MAX));
    },
    |pn| {
        assert_eq!(pn.firmware_version(), Err(Error::Checksum));
    }
);

on_every_link!(
    nack_to_the_command_is_reported,
    |l| {
        l.write(&host(SAM, &[0x01, 0x14, 0x01]));
        l.poll(true);
        l.read(&NACK, 6);
    },
    |pn| {
        assert_eq!(pn.sam_configuration(), Err(Error::Nack));
    }
);

on_every_link!(
    garbage_instead_of_ack_is_a_bad_frame,
    |l| {
        l.write(&host(SAM, &[0x01, 0x14, 0x01]));
        l.poll(true);
        l.read(&[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF], 6);
    },
    |pn| {
        assert_eq!(pn.sam_configuration(), Err(Error::BadFrame));
    }
);

on_every_link!(
    syntax_error_frame_is_reported,
    |l| {
        l.write(&host(SAM, &[0x01, 0x14, 0x01]));
        l.ack();
        l.poll(true);
        l.read(&ERROR_FRAME, read_len(SAM_MAX));
    },
    |pn| {
        assert_eq!(pn.sam_configuration(), Err(Error::Syntax));
    }
);

on_every_link!(
    response_longer_than_the_command_allows_is_a_bad_frame,
    |l| {
        l.write(&host(SAM, &[0x01, 0x14, 0x01]));
        l.ack();
        l.poll(true);
        // One parameter byte too many: the frame does not end within the bytes read.
        let long = chip(SAM, &[0x00]);
        l.read(&long[..read_len(SAM_MAX)], read_len(SAM_MAX));
    },
    |pn| {
        assert_eq!(pn.sam_configuration(), Err(Error::BadFrame));
    }
);

on_every_link!(
    response_with_unexpected_parameters_is_a_bad_frame,
    |l| {
        l.command(RF, &[0x05, 0xFF, 0x01, 0x10], &[], 0);
        l.command(RELEASE, &[0x00], &[], RELEASE_MAX);
    },
    |pn| {
        pn.set_passive_activation_retries(0x10).unwrap();
        // InRelease always answers with a status byte.
        assert_eq!(pn.in_release(), Err(Error::BadFrame));
    }
);

on_every_link!(
    silent_chip_times_out_on_the_ack_after_a_bounded_wait,
    |l| {
        l.write(&host(SAM, &[0x01, 0x14, 0x01]));
        for _ in 0..3 {
            l.poll(false);
        }
    },
    |pn| {
        assert_eq!(pn.sam_configuration(), Err(Error::Timeout));
    }
);

on_every_link!(
    missing_response_times_out_and_is_aborted,
    |l| {
        activate(l);
        l.write(&host(EXCHANGE, &[0x01, 0x00, 0xB0, 0x00, 0x00]));
        l.ack();
        for _ in 0..5 {
            l.poll(false);
        }
        l.write(&ACK);
        // The chip is usable again afterwards.
        l.command(FW, &[], &[0x32, 1, 6, 7], FW_MAX);
    },
    |pn| {
        pn.list_passive_target().unwrap();
        let mut rsp = [0u8; 16];
        assert_eq!(
            pn.transceive(&[0x00, 0xB0, 0x00, 0x00], &mut rsp),
            Err(Error::Timeout)
        );
        assert!(pn.firmware_version().is_ok());
    }
);

on_every_link!(
    ready_after_some_polls_is_fine,
    |l| {
        l.write(&host(SAM, &[0x01, 0x14, 0x01]));
        l.poll(false);
        l.poll(false);
        l.ack();
        l.poll(false);
        l.respond(SAM, &[], SAM_MAX);
    },
    |pn| {
        pn.sam_configuration().unwrap();
    }
);

on_every_link!(
    bus_error_on_write_is_passed_through,
    |l| {
        l.write_fails(&host(SAM, &[0x01, 0x14, 0x01]));
    },
    |pn| {
        assert!(matches!(pn.sam_configuration(), Err(Error::Bus(_))));
    }
);

on_every_link!(
    bus_error_on_poll_is_passed_through,
    |l| {
        l.write(&host(SAM, &[0x01, 0x14, 0x01]));
        l.poll_fails();
    },
    |pn| {
        assert!(matches!(pn.sam_configuration(), Err(Error::Bus(_))));
    }
);

on_every_link!(
    bus_error_on_response_read_is_passed_through,
    |l| {
        activate(l);
        l.write(&host(EXCHANGE, &[0x01, 0x00, 0xB0, 0x00, 0x00]));
        l.ack();
        l.poll(true);
        l.read_fails(read_len(EXCHANGE_MAX));
    },
    |pn| {
        pn.list_passive_target().unwrap();
        let mut rsp = [0u8; 16];
        assert!(matches!(
            pn.transceive(&[0x00, 0xB0, 0x00, 0x00], &mut rsp),
            Err(Error::Bus(_))
        ));
    }
);

// ---------------------------------------------------------------------------------------------
// Link details.

#[test]
fn timeout_waits_a_bounded_time() {
    let mut link = Spi::new(BitOrder::LsbFirst);
    link.write(&host(SAM, &[0x01, 0x14, 0x01]));
    for _ in 0..3 {
        link.poll(false);
    }
    let (r, waited_us) = run(&mut link, config(), |pn| pn.sam_configuration());
    assert_eq!(r, Err(Error::Timeout));
    // Three polls, a 1 ms pause after each.
    assert_eq!(waited_us, 3_000);
}

#[test]
fn i2c_ready_byte_clear_on_the_frame_read_means_poll_again() {
    let mut link = I2c::default();
    link.write(&host(SAM, &[0x01, 0x14, 0x01]));
    link.ack();
    link.poll(true);
    // The chip took the ready flag back: the frame bytes are junk.
    let mut junk = vec![0x00];
    junk.extend(padded(&[0xAA; 4], read_len(SAM_MAX)));
    link.script.push(I2cTx::read(ADDR, junk));
    link.respond(SAM, &[], SAM_MAX);
    let mut pn = Pn532::<_, _, N>::new(link.iface(), Waited::default(), config());
    pn.sam_configuration().unwrap();
    drop(pn);
    link.done();
}

#[test]
fn msb_first_bus_sees_reversed_bytes() {
    // The data-write operation byte 0x01 is 0x80 on an MSB-first wire.
    let mut link = Spi::new(BitOrder::MsbFirst);
    link.command(SAM, &[0x01, 0x14, 0x01], &[], SAM_MAX);
    assert!(link.script.contains(&SpiTx::write_vec(vec![0x80])));
    let mut pn = Pn532::<_, _, N>::new(link.iface(), Waited::default(), config());
    pn.sam_configuration().unwrap();
    drop(pn);
    link.done();
}

#[test]
fn error_display_names_the_problem() {
    let e: Error<()> = Error::Status(0x01);
    assert_eq!(e.to_string(), "PN532 status error 0x01");
    let e: Error<u8> = 7u8.into();
    assert_eq!(e, Error::Bus(7));
}
