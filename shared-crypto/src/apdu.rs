//! ISO 7816-4 command constants of the applet and the host side of a logical exchange.
//!
//! Long data never uses extended length (many contactless readers and the PN532 lack it): commands
//! longer than 255 bytes are sent with command chaining (ISO 7816-4 §5.1.1, CLA bit 0x10 on every
//! block but the last) and answers longer than 256 bytes come back as `61xx` followed by GET RESPONSE
//! (§7.1.3). [`exchange`] does both, so a "logical exchange" is one command and its whole answer.

/// Application identifier of the certificate applet.
pub const AID: [u8; 6] = [0xF0, 0x43, 0x44, 0x50, 0x46, 0x01];

/// Proprietary class byte.
pub const CLA_PROPRIETARY: u8 = 0x80;
/// Interindustry class byte.
pub const CLA_ISO: u8 = 0x00;
/// Command-chaining bit of the class byte (ISO 7816-4 §5.4.1).
pub const CLA_CHAINING: u8 = 0x10;

/// SELECT (ISO).
pub const INS_SELECT: u8 = 0xA4;
/// GET RESPONSE (ISO).
pub const INS_GET_RESPONSE: u8 = 0xC0;
/// TERMINAL AUTHENTICATE (proprietary).
pub const INS_TERMINAL_AUTHENTICATE: u8 = 0x82;
/// DEBIT (proprietary).
pub const INS_DEBIT: u8 = 0x30;
/// CREDIT (proprietary).
pub const INS_CREDIT: u8 = 0x32;
/// GET BALANCE (proprietary).
pub const INS_GET_BALANCE: u8 = 0x5C;

/// ISO 7816-4 status words used by the applet.
pub mod sw {
    /// Success.
    pub const OK: u16 = 0x9000;
    /// Selected, but the card is blocked (§5.6: "selected file invalidated").
    pub const BLOCKED: u16 = 0x6283;
    /// Wrong length.
    pub const WRONG_LENGTH: u16 = 0x6700;
    /// Last command of a chain expected.
    pub const LAST_COMMAND_EXPECTED: u16 = 0x6883;
    /// Security status not satisfied.
    pub const SECURITY_STATUS: u16 = 0x6982;
    /// Conditions of use not satisfied.
    pub const CONDITIONS: u16 = 0x6985;
    /// Wrong data.
    pub const WRONG_DATA: u16 = 0x6A80;
    /// Wrong P1/P2.
    pub const WRONG_P1P2: u16 = 0x6A86;
    /// Referenced data not found.
    pub const NOT_FOUND: u16 = 0x6A88;
    /// Instruction not supported.
    pub const INS_NOT_SUPPORTED: u16 = 0x6D00;
    /// Class not supported.
    pub const CLA_NOT_SUPPORTED: u16 = 0x6E00;
    /// No precise diagnosis.
    pub const UNKNOWN: u16 = 0x6F00;
}

/// Sends one APDU and receives its raw answer (data followed by SW1 SW2).
///
/// Implemented by PC/SC (card-tool, terminal-sim), the PN532 driver and the in-memory card.
pub trait Transport {
    /// The transport's error (reader gone, card left the field, bus fault).
    type Error;
    /// Sends `command`, writes the answer (including the status word) into `response` and returns
    /// its length.
    fn transceive(&mut self, command: &[u8], response: &mut [u8]) -> Result<usize, Self::Error>;
}

impl<T: Transport + ?Sized> Transport for &mut T {
    type Error = T::Error;
    fn transceive(&mut self, command: &[u8], response: &mut [u8]) -> Result<usize, Self::Error> {
        (**self).transceive(command, response)
    }
}

/// Why a logical exchange failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExchangeError<E> {
    /// The transport failed.
    Transport(E),
    /// The card answered with a status word other than 9000 (the data, if any, is dropped).
    Status(u16),
    /// The answer does not fit the caller's buffer.
    ResponseTooLong,
    /// The card's answer is shorter than a status word.
    Malformed,
}

/// Counts of what crossed the wire during exchanges (for the benchmark and diagnostics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WireStats {
    /// Logical exchanges (one per [`exchange`] call).
    pub exchanges: u32,
    /// Physical APDUs (chained blocks and GET RESPONSEs included).
    pub apdus: u32,
    /// Bytes sent (command APDUs).
    pub bytes_out: u32,
    /// Bytes received (answers including status words).
    pub bytes_in: u32,
}

impl WireStats {
    /// Bytes in both directions.
    pub fn total_bytes(&self) -> u32 {
        self.bytes_out + self.bytes_in
    }
}

/// Largest data field of one short command APDU.
pub const MAX_SHORT_DATA: usize = 255;

/// Sends a command with `data` (chained when longer than 255 bytes), collects the whole answer
/// (following `61xx` with GET RESPONSE) into `out`, and returns the answer's data length.
/// `le` adds an Le byte of 0x00 (expect up to 256 bytes) to the last block.
#[allow(clippy::too_many_arguments)] // mirrors the APDU header fields one to one
pub fn exchange<T: Transport>(
    transport: &mut T,
    cla: u8,
    ins: u8,
    p1: u8,
    p2: u8,
    data: &[u8],
    le: bool,
    out: &mut [u8],
    stats: &mut WireStats,
) -> Result<usize, ExchangeError<T::Error>> {
    stats.exchanges += 1;
    let mut cmd = [0u8; 5 + MAX_SHORT_DATA + 1];
    let mut rsp = [0u8; 258];
    let mut chunks = data.chunks(MAX_SHORT_DATA).peekable();
    let mut answer_len;
    let mut sw;
    loop {
        let chunk = chunks.next().unwrap_or(&[]);
        let last = chunks.peek().is_none();
        let mut n = 0;
        cmd[0] = if last { cla } else { cla | CLA_CHAINING };
        cmd[1] = ins;
        cmd[2] = p1;
        cmd[3] = p2;
        n += 4;
        if !chunk.is_empty() {
            cmd[4] = chunk.len() as u8;
            cmd[5..5 + chunk.len()].copy_from_slice(chunk);
            n += 1 + chunk.len();
        }
        if last && le {
            cmd[n] = 0x00;
            n += 1;
        }
        let got = send(transport, &cmd[..n], &mut rsp, stats)?;
        sw = u16::from_be_bytes([rsp[got - 2], rsp[got - 1]]);
        answer_len = got - 2;
        if last || sw != sw::OK {
            break;
        }
    }
    let mut total = 0usize;
    loop {
        let piece = &rsp[..answer_len];
        let end = total + piece.len();
        out.get_mut(total..end)
            .ok_or(ExchangeError::ResponseTooLong)?
            .copy_from_slice(piece);
        total = end;
        if sw >> 8 == 0x61 {
            let get = [CLA_ISO, INS_GET_RESPONSE, 0, 0, (sw & 0xFF) as u8];
            let got = send(transport, &get, &mut rsp, stats)?;
            sw = u16::from_be_bytes([rsp[got - 2], rsp[got - 1]]);
            answer_len = got - 2;
            continue;
        }
        break;
    }
    if sw != sw::OK {
        return Err(ExchangeError::Status(sw));
    }
    Ok(total)
}

fn send<T: Transport>(
    transport: &mut T,
    cmd: &[u8],
    rsp: &mut [u8; 258],
    stats: &mut WireStats,
) -> Result<usize, ExchangeError<T::Error>> {
    stats.apdus += 1;
    stats.bytes_out += cmd.len() as u32;
    let got = transport
        .transceive(cmd, rsp)
        .map_err(ExchangeError::Transport)?;
    if !(2..=rsp.len()).contains(&got) {
        return Err(ExchangeError::Malformed);
    }
    stats.bytes_in += got as u32;
    Ok(got)
}

/// The SELECT-by-AID command for the applet.
pub fn select_command() -> [u8; 12] {
    let mut c = [0u8; 12];
    c[..5].copy_from_slice(&[CLA_ISO, INS_SELECT, 0x04, 0x00, AID.len() as u8]);
    c[5..11].copy_from_slice(&AID);
    c[11] = 0x00;
    c
}
