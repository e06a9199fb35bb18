//! The PN532 NFC front end as the terminal's card transport.
//!
//! The driver speaks the host-controller protocol of the PN532 User Manual (UM0701-02 §6.2)
//! over any [`Interface`] and waits with a [`DelayNs`]; every wait is a bounded number of
//! ready polls, so a dead or unplugged chip gives [`Error::Timeout`], never a hang.
//!
//! A command goes: write the information frame, poll, read the ACK (a NACK means the chip saw a
//! corrupt frame), poll, read the response frame. Checksums are checked before anything else;
//! a response with a bad checksum is asked for once more with a NACK (§6.2.1.4: the PN532 then
//! sends the same response again, so nothing is executed twice, which matters for DEBIT). A
//! response that never comes is aborted with an ACK (§6.2.1.3) so the chip is ready for the
//! next command.
//!
//! Card exchanges use InDataExchange (§7.3.8) with the PN532's own ISO 14443-4 handling. A
//! command longer than one host frame goes in pieces with the MI (more information) bit of the
//! target byte set on all but the last; an answer longer than one frame comes back with the MI
//! bit in the status byte and is fetched with further InDataExchange commands carrying no data
//! (§7.4.5 chaining mechanism). [`Pn532`] implements [`Transport`] with exactly that.

mod frame;
mod interface;

use core::fmt;
use core::ops::Range;

use embedded_hal::delay::DelayNs;
use shared_crypto::apdu::Transport;

pub use frame::{
    decode, encode_command, info_frame_len, Frame, FrameError, ACK, MAX_EXTENDED_LEN,
    MAX_NORMAL_LEN, NACK, TFI_ERROR, TFI_HOST_TO_PN532, TFI_PN532_TO_HOST,
};
pub use interface::{
    BitOrder, I2cInterface, Interface, SpiInterface, I2C_ADDRESS, READY, SPI_DATA_READ,
    SPI_DATA_WRITE, SPI_STATUS_READ,
};

/// PN532 command codes used by this driver (UM0701-02 §7).
pub mod cmd {
    /// GetFirmwareVersion (§7.2.2).
    pub const GET_FIRMWARE_VERSION: u8 = 0x02;
    /// SAMConfiguration (§7.2.10).
    pub const SAM_CONFIGURATION: u8 = 0x14;
    /// RFConfiguration (§7.3.1).
    pub const RF_CONFIGURATION: u8 = 0x32;
    /// InDataExchange (§7.3.8).
    pub const IN_DATA_EXCHANGE: u8 = 0x40;
    /// InListPassiveTarget (§7.3.5).
    pub const IN_LIST_PASSIVE_TARGET: u8 = 0x4A;
    /// InRelease (§7.3.11).
    pub const IN_RELEASE: u8 = 0x52;
}

/// MI (more information) bit, in the target byte of InDataExchange and in its status byte.
pub const MORE_INFORMATION: u8 = 0x40;

/// Largest data field of one InDataExchange (the PN532's internal buffer, §7.3.8).
pub const MAX_EXCHANGE_DATA: usize = 262;

/// Longest ATS kept from InListPassiveTarget (ISO 14443-4 §5.2; PN532 cards send far less).
pub const MAX_ATS: usize = 64;

/// Longest NFCID1 (triple-size UID, ISO 14443-3 §6.5.4).
pub const MAX_UID: usize = 10;

/// Smallest frame buffer the driver accepts: an InListPassiveTarget answer with a full ATS.
pub const MIN_BUFFER: usize = 96;

/// Default frame buffer: one extended frame of the largest InDataExchange plus link prefix.
pub const DEFAULT_BUFFER: usize = 280;

/// Largest parameter block of each response this driver reads (sizes the reads: the chip sends
/// a frame, the host decides how many bytes to clock out).
const FIRMWARE_VERSION_PARAMS: usize = 4;
const LIST_PARAMS: usize = 1 + 1 + 2 + 1 + 1 + MAX_UID + MAX_ATS;
const EXCHANGE_PARAMS: usize = 1 + MAX_EXCHANGE_DATA;

/// Why a PN532 operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error<E> {
    /// The bus failed (SPI or I2C error, passed through).
    Bus(E),
    /// No frame became ready within the bounded number of polls (no ACK: chip absent or asleep;
    /// no response: the pending command was aborted).
    Timeout,
    /// A frame's length or data checksum was wrong (after one resend request for responses).
    Checksum,
    /// The PN532 answered the command frame with a NACK (it received it corrupted).
    Nack,
    /// A frame that checksums but is not what the protocol allows here: no start code, wrong
    /// TFI or response code, truncated, or fields that do not add up.
    BadFrame,
    /// The PN532 sent the application-level error frame: it found a syntax error in a command.
    Syntax,
    /// The PN532 reported an error in a status byte (low six bits; UM0701-02 §7.1, e.g. 0x01
    /// card timeout, 0x02 CRC error, 0x27 command not acceptable in this state).
    Status(u8),
    /// No card is activated (call [`Pn532::list_passive_target`] first).
    NoTarget,
    /// A command does not fit the frame buffer or an answer does not fit the caller's buffer.
    BufferTooSmall,
}

impl<E> From<E> for Error<E> {
    fn from(e: E) -> Self {
        Error::Bus(e)
    }
}

impl<E: fmt::Debug> fmt::Display for Error<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Bus(e) => write!(f, "PN532 bus error: {e:?}"),
            Error::Timeout => f.write_str("PN532 did not answer in time"),
            Error::Checksum => f.write_str("PN532 frame checksum wrong"),
            Error::Nack => f.write_str("PN532 refused the command frame (NACK)"),
            Error::BadFrame => f.write_str("PN532 sent a malformed or unexpected frame"),
            Error::Syntax => f.write_str("PN532 reported a syntax error in the command"),
            Error::Status(code) => write!(f, "PN532 status error 0x{code:02x}"),
            Error::NoTarget => f.write_str("no card activated"),
            Error::BufferTooSmall => f.write_str("data does not fit the buffer"),
        }
    }
}

/// Timing and framing choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Pause between two ready polls (µs).
    pub poll_interval_us: u32,
    /// Polls to wait for the ACK of a command (the PN532 acknowledges within about 1 ms).
    pub ack_polls: u32,
    /// Polls to wait for a response (covers the card's processing: a P-256 signature on a
    /// smart card takes a few hundred milliseconds).
    pub response_polls: u32,
    /// Polls to wait for a card in [`Pn532::list_passive_target`] before giving up (aborted,
    /// reported as no card).
    pub detect_polls: u32,
    /// Send frames longer than 255 bytes as extended frames (§6.2.1.2; PN532 firmware 1.4 and
    /// later). Off: long commands are split with the MI bit in pieces of 252 bytes.
    pub extended_frames: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            poll_interval_us: 1_000,
            ack_polls: 30,
            response_polls: 2_000,
            detect_polls: 100,
            extended_frames: false,
        }
    }
}

/// Version information from GetFirmwareVersion (§7.2.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FirmwareVersion {
    /// IC code (0x32 for the PN532).
    pub ic: u8,
    /// Firmware version.
    pub version: u8,
    /// Firmware revision.
    pub revision: u8,
    /// Supported protocols (bit 0 ISO 14443-A, bit 1 ISO 14443-B, bit 2 ISO 18092).
    pub support: u8,
}

/// A card activated by InListPassiveTarget at 106 kbps type A (§7.3.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TargetA {
    /// The PN532's logical number of the target (used in InDataExchange).
    pub tg: u8,
    /// SENS_RES (ATQA).
    pub sens_res: [u8; 2],
    /// SEL_RES (SAK).
    pub sel_res: u8,
    uid: [u8; MAX_UID],
    uid_len: u8,
    ats: [u8; MAX_ATS],
    ats_len: u8,
}

impl TargetA {
    /// The NFCID1 (4, 7 or 10 bytes). Random on most smart cards: not an identity.
    pub fn uid(&self) -> &[u8] {
        &self.uid[..self.uid_len as usize]
    }

    /// The ATS, empty when the card is not ISO 14443-4 compliant.
    pub fn ats(&self) -> &[u8] {
        &self.ats[..self.ats_len as usize]
    }

    /// Whether SEL_RES says the card speaks ISO 14443-4 (bit 6, ISO 14443-3 §6.5.3.4), i.e.
    /// takes APDUs.
    pub fn supports_iso_dep(&self) -> bool {
        self.sel_res & 0x20 != 0
    }

    /// Parses one target of an InListPassiveTarget answer (after NbTg). Every length must add up
    /// with nothing left over.
    fn parse(p: &[u8]) -> Option<Self> {
        let [tg, s0, s1, sel_res, uid_len, rest @ ..] = p else {
            return None;
        };
        let uid_len = *uid_len as usize;
        if !matches!(uid_len, 4 | 7 | 10) {
            return None;
        }
        let (uid, ats) = (rest.get(..uid_len)?, &rest[uid_len..]);
        let mut t = TargetA {
            tg: *tg,
            sens_res: [*s0, *s1],
            sel_res: *sel_res,
            uid: [0; MAX_UID],
            uid_len: uid_len as u8,
            ats: [0; MAX_ATS],
            ats_len: 0,
        };
        t.uid[..uid_len].copy_from_slice(uid);
        if t.supports_iso_dep() {
            // TL counts the whole ATS including itself (ISO 14443-4 §5.2.1).
            let tl = *ats.first()? as usize;
            if tl == 0 || tl != ats.len() || tl > MAX_ATS {
                return None;
            }
            t.ats[..tl].copy_from_slice(ats);
            t.ats_len = tl as u8;
        } else if !ats.is_empty() {
            return None;
        }
        Some(t)
    }
}

/// The PN532 driver: `I` the link, `D` the delay used between polls, `N` the frame buffer size
/// (at least [`MIN_BUFFER`]; [`DEFAULT_BUFFER`] holds the largest frame the chip sends).
pub struct Pn532<I, D, const N: usize = DEFAULT_BUFFER> {
    iface: I,
    delay: D,
    config: Config,
    buf: [u8; N],
    target: Option<u8>,
}

impl<I: Interface, D: DelayNs, const N: usize> Pn532<I, D, N> {
    /// A driver over `iface`. Call [`Pn532::sam_configuration`] before anything else (it also
    /// wakes the chip from power-down).
    pub fn new(iface: I, delay: D, config: Config) -> Self {
        const { assert!(N >= MIN_BUFFER, "PN532 frame buffer below MIN_BUFFER") };
        Self {
            iface,
            delay,
            config,
            buf: [0; N],
            target: None,
        }
    }

    /// Gives link and delay back.
    pub fn release(self) -> (I, D) {
        (self.iface, self.delay)
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The activated card's logical number, if any.
    pub fn target(&self) -> Option<u8> {
        self.target
    }

    /// Reads the chip's firmware version (a cheap liveness check).
    pub fn firmware_version(&mut self) -> Result<FirmwareVersion, Error<I::Error>> {
        let r = self.command(
            cmd::GET_FIRMWARE_VERSION,
            &[],
            &[],
            FIRMWARE_VERSION_PARAMS,
            self.config.response_polls,
        )?;
        match self.buf[r] {
            [ic, version, revision, support] => Ok(FirmwareVersion {
                ic,
                version,
                revision,
                support,
            }),
            _ => Err(Error::BadFrame),
        }
    }

    /// SAMConfiguration: normal mode (no secure access module), IRQ pin driven (§7.2.10).
    pub fn sam_configuration(&mut self) -> Result<(), Error<I::Error>> {
        // Mode 0x01 normal; timeout 0x14 (only meaningful in virtual-card mode); use IRQ 0x01.
        let r = self.command(
            cmd::SAM_CONFIGURATION,
            &[0x01, 0x14, 0x01],
            &[],
            0,
            self.config.response_polls,
        )?;
        self.expect_empty(r)
    }

    /// Sets how often InListPassiveTarget retries activation before answering "no card"
    /// (RFConfiguration item 0x05, MxRtyPassiveActivation; 0xFF retries forever). A finite value
    /// lets the terminal poll for a card without aborting commands.
    pub fn set_passive_activation_retries(&mut self, retries: u8) -> Result<(), Error<I::Error>> {
        // Item 0x05: MxRtyATR (default 0xFF), MxRtyPSL (default 0x01), MxRtyPassiveActivation.
        let r = self.command(
            cmd::RF_CONFIGURATION,
            &[0x05, 0xFF, 0x01, retries],
            &[],
            0,
            self.config.response_polls,
        )?;
        self.expect_empty(r)
    }

    /// Looks for one ISO 14443 type A card at 106 kbps and activates it (InListPassiveTarget
    /// with MaxTg 1, BrTy 0; the PN532 does RATS itself for ISO 14443-4 cards). `Ok(None)`
    /// when no card answered within [`Config::detect_polls`]: the chip acknowledged the command,
    /// so it is alive, and the pending search is aborted.
    pub fn list_passive_target(&mut self) -> Result<Option<TargetA>, Error<I::Error>> {
        self.target = None;
        self.send_command(cmd::IN_LIST_PASSIVE_TARGET, &[0x01, 0x00], &[])?;
        let r = match self.read_response(
            cmd::IN_LIST_PASSIVE_TARGET,
            LIST_PARAMS,
            self.config.detect_polls,
        ) {
            Err(Error::Timeout) => return Ok(None),
            other => other?,
        };
        let p = &self.buf[r];
        let target = match p {
            [0] => return Ok(None),
            [1, rest @ ..] => TargetA::parse(rest).ok_or(Error::BadFrame)?,
            _ => return Err(Error::BadFrame),
        };
        self.target = Some(target.tg);
        Ok(Some(target))
    }

    /// Sends `command` to the activated card and collects its whole answer into `response`,
    /// chaining with the MI bit both ways. Returns the answer's length.
    pub fn data_exchange(
        &mut self,
        command: &[u8],
        response: &mut [u8],
    ) -> Result<usize, Error<I::Error>> {
        let tg = self.target.ok_or(Error::NoTarget)?;
        let piece = self.max_piece();
        let mut pieces = command.chunks(piece).peekable();
        let mut status;
        let mut range;
        loop {
            let data = pieces.next().unwrap_or(&[]);
            let last = pieces.peek().is_none();
            let tg_byte = if last { tg } else { tg | MORE_INFORMATION };
            range = self.command(
                cmd::IN_DATA_EXCHANGE,
                &[tg_byte],
                data,
                EXCHANGE_PARAMS,
                self.config.response_polls,
            )?;
            status = self.exchange_status(range.clone())?;
            if last {
                break;
            }
            // The card acknowledged a piece of a chained command: nothing else may come back.
            if range.len() != 1 || status & MORE_INFORMATION != 0 {
                return Err(Error::BadFrame);
            }
        }
        let mut total = 0;
        loop {
            let data = &self.buf[range.start + 1..range.end];
            let end = total + data.len();
            response
                .get_mut(total..end)
                .ok_or(Error::BufferTooSmall)?
                .copy_from_slice(data);
            total = end;
            if status & MORE_INFORMATION == 0 {
                return Ok(total);
            }
            // MI with no data could loop forever; a real chip never sends it.
            if data.is_empty() {
                return Err(Error::BadFrame);
            }
            range = self.command(
                cmd::IN_DATA_EXCHANGE,
                &[tg],
                &[],
                EXCHANGE_PARAMS,
                self.config.response_polls,
            )?;
            status = self.exchange_status(range.clone())?;
        }
    }

    /// Deactivates the card (InRelease, §7.3.11), e.g. after a tap so that the next tap starts
    /// from a fresh activation.
    pub fn in_release(&mut self) -> Result<(), Error<I::Error>> {
        // Tg 0 releases all targets; the driver only ever has one.
        let r = self.command(cmd::IN_RELEASE, &[0x00], &[], 1, self.config.response_polls)?;
        self.target = None;
        let status = self.exchange_status(r.clone())?;
        if r.len() != 1 || status != 0 {
            return Err(Error::BadFrame);
        }
        Ok(())
    }

    /// Aborts the command in progress (an ACK from the host, §6.2.1.3).
    pub fn abort(&mut self) -> Result<(), Error<I::Error>> {
        let mut ack = ACK;
        self.iface.write(&mut ack)?;
        Ok(())
    }

    /// Data bytes per InDataExchange piece: what one frame of the chosen kind holds besides
    /// TFI, command code and target byte, capped by the chip's buffer and ours.
    fn max_piece(&self) -> usize {
        let frame_limit = if self.config.extended_frames {
            MAX_EXTENDED_LEN
        } else {
            MAX_NORMAL_LEN
        } - 3;
        // Our buffer holds the whole frame: overhead, TFI, command code, target byte, data.
        let ours = N.saturating_sub(info_frame_len(MAX_EXTENDED_LEN) - MAX_EXTENDED_LEN + 3);
        frame_limit.min(MAX_EXCHANGE_DATA).min(ours)
    }

    fn exchange_status(&self, r: Range<usize>) -> Result<u8, Error<I::Error>> {
        if r.is_empty() {
            return Err(Error::BadFrame);
        }
        let status = *self.buf.get(r.start).ok_or(Error::BadFrame)?;
        match status & 0x3F {
            0 => Ok(status),
            code => Err(Error::Status(code)),
        }
    }

    fn expect_empty(&self, r: Range<usize>) -> Result<(), Error<I::Error>> {
        if r.is_empty() {
            Ok(())
        } else {
            Err(Error::BadFrame)
        }
    }

    /// One command: frame out, ACK in, response in. Returns where the response parameters (after
    /// the response code) are in the buffer.
    fn command(
        &mut self,
        code: u8,
        head: &[u8],
        data: &[u8],
        max_params: usize,
        polls: u32,
    ) -> Result<Range<usize>, Error<I::Error>> {
        self.send_command(code, head, data)?;
        self.read_response(code, max_params, polls)
    }

    fn send_command(&mut self, code: u8, head: &[u8], data: &[u8]) -> Result<(), Error<I::Error>> {
        let len = head.len() + data.len() + 2;
        if len > MAX_NORMAL_LEN && !self.config.extended_frames {
            return Err(Error::BufferTooSmall);
        }
        let n = encode_command(code, head, data, &mut self.buf).ok_or(Error::BufferTooSmall)?;
        self.iface.write(&mut self.buf[..n])?;
        let ack_len = I::READ_PREFIX + ACK.len();
        if !self.read_frame(ack_len, self.config.ack_polls)? {
            return Err(Error::Timeout);
        }
        match frame::locate(&self.buf[I::READ_PREFIX..ack_len]) {
            Ok(frame::Located::Ack) => Ok(()),
            Ok(frame::Located::Nack) => Err(Error::Nack),
            Err(FrameError::Checksum) => Err(Error::Checksum),
            Ok(_) | Err(FrameError::Malformed) => Err(Error::BadFrame),
        }
    }

    fn read_response(
        &mut self,
        code: u8,
        max_params: usize,
        polls: u32,
    ) -> Result<Range<usize>, Error<I::Error>> {
        let len = (I::READ_PREFIX + info_frame_len(2 + max_params)).min(N);
        if !self.read_frame(len, polls)? {
            // Leave the chip ready for the next command. The abort is best effort: the timeout
            // is what the caller needs to know, and the next command's ACK shows whether the
            // chip is back.
            let _ = self.abort();
            return Err(Error::Timeout);
        }
        let mut located = frame::locate(&self.buf[I::READ_PREFIX..len]);
        if located == Err(FrameError::Checksum) {
            // Ask for the same response again (the command is not executed again).
            let mut nack = NACK;
            self.iface.write(&mut nack)?;
            if !self.read_frame(len, polls)? {
                let _ = self.abort();
                return Err(Error::Timeout);
            }
            located = frame::locate(&self.buf[I::READ_PREFIX..len]);
        }
        match located {
            Ok(frame::Located::Info(r)) => {
                let r = r.start + I::READ_PREFIX..r.end + I::READ_PREFIX;
                if self.buf[r.start] != code.wrapping_add(1) {
                    return Err(Error::BadFrame);
                }
                Ok(r.start + 1..r.end)
            }
            Ok(frame::Located::ApplicationError) => Err(Error::Syntax),
            Ok(frame::Located::Ack | frame::Located::Nack) | Err(FrameError::Malformed) => {
                Err(Error::BadFrame)
            }
            Err(FrameError::Checksum) => Err(Error::Checksum),
        }
    }

    /// Polls until the chip has a frame, then reads `len` bytes into the buffer. At most `polls`
    /// polls (at least one), with [`Config::poll_interval_us`] between them.
    fn read_frame(&mut self, len: usize, polls: u32) -> Result<bool, Error<I::Error>> {
        for _ in 0..polls.max(1) {
            if self.iface.ready()? && self.iface.read(&mut self.buf[..len])? {
                return Ok(true);
            }
            self.delay.delay_us(self.config.poll_interval_us);
        }
        Ok(false)
    }
}

/// A card exchange through the PN532: the APDU goes out with InDataExchange (chained with the
/// MI bit when longer than a frame) and the whole answer, status word included, comes back.
impl<I: Interface, D: DelayNs, const N: usize> Transport for Pn532<I, D, N> {
    type Error = Error<I::Error>;

    fn transceive(&mut self, command: &[u8], response: &mut [u8]) -> Result<usize, Self::Error> {
        self.data_exchange(command, response)
    }
}
