//! PN532 host-link frames (PN532 User Manual UM0701-02 §6.2.1).
//!
//! ```text
//! normal information frame   00 | 00 FF | LEN | LCS | TFI PD0..PDn | DCS | 00
//! extended information frame 00 | 00 FF | FF FF | LENM LENL | LCS | TFI PD0..PDn | DCS | 00
//! ACK                        00 | 00 FF | 00 FF | 00
//! NACK                       00 | 00 FF | FF 00 | 00
//! application error          00 | 00 FF | 01 FF | 7F | 81 | 00
//! ```
//! `LEN` counts TFI and the packet data; `LEN + LCS = 0` and `TFI + PD0 + .. + PDn + DCS = 0`
//! (mod 256). Every checksum is checked before any field behind it is looked at.

/// Frame identifier of frames from the host controller to the PN532.
pub const TFI_HOST_TO_PN532: u8 = 0xD4;
/// Frame identifier of frames from the PN532 to the host controller.
pub const TFI_PN532_TO_HOST: u8 = 0xD5;
/// TFI of the application-level error frame (§6.2.1.5: a syntax error in the host's command).
pub const TFI_ERROR: u8 = 0x7F;

/// The ACK frame (§6.2.1.3). Sent by the PN532 when a command frame arrived intact; sent by the
/// host to abort the command in progress.
pub const ACK: [u8; 6] = [0x00, 0x00, 0xFF, 0x00, 0xFF, 0x00];
/// The NACK frame (§6.2.1.4). Sent by the host to ask the PN532 to send its last response again.
pub const NACK: [u8; 6] = [0x00, 0x00, 0xFF, 0xFF, 0x00, 0x00];

/// Largest LEN of a normal frame (TFI included).
pub const MAX_NORMAL_LEN: usize = 255;
/// Largest LEN of an extended frame the PN532 firmware accepts (§6.2.1.2: 264 data bytes + TFI).
pub const MAX_EXTENDED_LEN: usize = 265;

/// Bytes of a normal frame besides TFI and data: preamble, start code (2), LEN, LCS, DCS, postamble.
const NORMAL_OVERHEAD: usize = 7;
/// Bytes of an extended frame besides TFI and data (adds FF FF and a second length byte).
const EXTENDED_OVERHEAD: usize = 10;

/// Total length of an information frame whose LEN (TFI + packet data) is `len`.
pub const fn info_frame_len(len: usize) -> usize {
    if len > MAX_NORMAL_LEN {
        EXTENDED_OVERHEAD + len
    } else {
        NORMAL_OVERHEAD + len
    }
}

/// A frame read from the PN532, after its checksums were found correct.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// The PN532 accepted the command frame.
    Ack,
    /// The PN532 received a corrupt command frame.
    Nack,
    /// The PN532 found a syntax error in the command (application-level error frame).
    ApplicationError,
    /// A response: the packet data after the TFI (PD0 is the response code, command + 1).
    Info(&'a [u8]),
}

/// Why bytes are not a valid frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// LCS or DCS does not add up.
    Checksum,
    /// No preamble and start code, a wrong TFI, or fewer bytes than the length says.
    Malformed,
}

/// Writes the host-to-PN532 information frame of command `cmd` with the packet data `head`
/// followed by `data` into `out` (normal frame when LEN fits one byte, extended otherwise) and
/// returns its length; `None` if it does not fit `out` or the PN532's limit.
pub fn encode_command(cmd: u8, head: &[u8], data: &[u8], out: &mut [u8]) -> Option<usize> {
    // LEN counts TFI, the command code and the parameters.
    let len = 2 + head.len() + data.len();
    if len > MAX_EXTENDED_LEN {
        return None;
    }
    let total = info_frame_len(len);
    let out = out.get_mut(..total)?;
    out[..3].copy_from_slice(&[0x00, 0x00, 0xFF]);
    let mut at = 3;
    if len > MAX_NORMAL_LEN {
        let [m, l] = (len as u16).to_be_bytes();
        out[at..at + 5].copy_from_slice(&[0xFF, 0xFF, m, l, m.wrapping_add(l).wrapping_neg()]);
        at += 5;
    } else {
        out[at] = len as u8;
        out[at + 1] = (len as u8).wrapping_neg();
        at += 2;
    }
    let body_start = at;
    out[at] = TFI_HOST_TO_PN532;
    out[at + 1] = cmd;
    at += 2;
    out[at..at + head.len()].copy_from_slice(head);
    at += head.len();
    out[at..at + data.len()].copy_from_slice(data);
    at += data.len();
    out[at] = checksum(&out[body_start..at]);
    out[at + 1] = 0x00;
    Some(at + 2)
}

/// The byte that makes `bytes` plus itself sum to zero (mod 256).
fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |acc, b| acc.wrapping_add(*b))
        .wrapping_neg()
}

/// Decodes a frame sent by the PN532. Leading `00` bytes before the `FF` of the start code are
/// accepted (the preamble; some hosts see an extra one), trailing bytes after the frame are
/// ignored (reads are sized for the longest expected answer). The postamble is not checked: it
/// carries nothing and the checksums already cover the frame.
pub fn decode(bytes: &[u8]) -> Result<Frame<'_>, FrameError> {
    Ok(match locate(bytes)? {
        Located::Ack => Frame::Ack,
        Located::Nack => Frame::Nack,
        Located::ApplicationError => Frame::ApplicationError,
        Located::Info(range) => Frame::Info(&bytes[range]),
    })
}

/// [`decode`], giving the packet data as a range of `bytes` (so that the driver can keep using
/// its buffer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Located {
    Ack,
    Nack,
    ApplicationError,
    Info(core::ops::Range<usize>),
}

pub(crate) fn locate(bytes: &[u8]) -> Result<Located, FrameError> {
    let zeros = bytes.iter().take_while(|b| **b == 0x00).count();
    if zeros == 0 || bytes.get(zeros) != Some(&0xFF) {
        return Err(FrameError::Malformed);
    }
    let after_start = zeros + 1;
    let rest = &bytes[after_start..];
    let (len, lcs_ok, header) = match rest {
        [0x00, 0xFF, ..] => return Ok(Located::Ack),
        [0xFF, 0x00, ..] => return Ok(Located::Nack),
        [0xFF, 0xFF, m, l, lcs, ..] => {
            let len = u16::from_be_bytes([*m, *l]) as usize;
            (len, m.wrapping_add(*l).wrapping_add(*lcs) == 0, 5)
        }
        [len, lcs, ..] => (*len as usize, len.wrapping_add(*lcs) == 0, 2),
        _ => return Err(FrameError::Malformed),
    };
    if !lcs_ok {
        return Err(FrameError::Checksum);
    }
    // LEN 0 only exists as ACK (handled above).
    if len == 0 || len > MAX_EXTENDED_LEN {
        return Err(FrameError::Malformed);
    }
    let tfi_at = after_start + header;
    // TFI..PDn plus DCS must be present.
    let Some(with_dcs) = bytes.get(tfi_at..tfi_at + len + 1) else {
        return Err(FrameError::Malformed);
    };
    if with_dcs.iter().fold(0u8, |acc, b| acc.wrapping_add(*b)) != 0 {
        return Err(FrameError::Checksum);
    }
    match with_dcs[0] {
        // An answer always carries PD0, the response code (command + 1): a TFI-only D5 frame
        // would hand the driver an empty packet whose "code" is really the checksum byte.
        TFI_PN532_TO_HOST if len >= 2 => Ok(Located::Info(tfi_at + 1..tfi_at + len)),
        TFI_ERROR if len == 1 => Ok(Located::ApplicationError),
        _ => Err(FrameError::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_normal_frame_with_checksums() {
        // GetFirmwareVersion as given in UM0701-02 §7.2.2.
        let mut out = [0u8; 16];
        let n = encode_command(0x02, &[], &[], &mut out).unwrap();
        assert_eq!(
            &out[..n],
            &[0x00, 0x00, 0xFF, 0x02, 0xFE, 0xD4, 0x02, 0x2A, 0x00]
        );
    }

    #[test]
    fn encodes_extended_frame_beyond_255() {
        let data = [0x5Au8; 260];
        let mut out = [0u8; 400];
        let n = encode_command(0x40, &[0x01], &data, &mut out).unwrap();
        let len = 2 + 1 + 260;
        assert_eq!(n, len + 10);
        assert_eq!(&out[..5], &[0x00, 0x00, 0xFF, 0xFF, 0xFF]);
        assert_eq!(u16::from_be_bytes([out[5], out[6]]) as usize, len);
        assert_eq!(out[5].wrapping_add(out[6]).wrapping_add(out[7]), 0);
        let sum = out[8..8 + len + 1]
            .iter()
            .fold(0u8, |a, b| a.wrapping_add(*b));
        assert_eq!(sum, 0);
        assert_eq!(out[n - 1], 0x00);
    }

    #[test]
    fn refuses_frames_over_the_firmware_limit_or_the_buffer() {
        let mut out = [0u8; 400];
        assert!(encode_command(0x40, &[0x01], &[0; 263], &mut out).is_none());
        assert!(encode_command(0x40, &[0x01], &[0; 262], &mut out).is_some());
        let mut small = [0u8; 8];
        assert!(encode_command(0x02, &[], &[], &mut small).is_none());
    }

    #[test]
    fn round_trips_through_decode_when_tfi_is_pn532s() {
        for size in [0usize, 1, 252, 253, 262] {
            let data: std::vec::Vec<u8> = (0..size).map(|i| i as u8).collect();
            let mut out = [0u8; 300];
            let n = encode_command(0x41, &[0x00], &data, &mut out).unwrap();
            // Turn the host frame into a PN532 frame: TFI D4 -> D5 changes DCS by -1.
            let tfi_at = if 2 + 1 + size > 255 { 8 } else { 5 };
            out[tfi_at] = TFI_PN532_TO_HOST;
            out[n - 2] = out[n - 2].wrapping_sub(1);
            match decode(&out[..n]).unwrap() {
                Frame::Info(d) => {
                    assert_eq!(d[0], 0x41);
                    assert_eq!(d[1], 0x00);
                    assert_eq!(&d[2..], &data[..]);
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn decodes_ack_nack_and_error_frames() {
        assert_eq!(decode(&ACK), Ok(Frame::Ack));
        assert_eq!(decode(&NACK), Ok(Frame::Nack));
        let err = [0x00, 0x00, 0xFF, 0x01, 0xFF, 0x7F, 0x81, 0x00];
        assert_eq!(decode(&err), Ok(Frame::ApplicationError));
    }

    #[test]
    fn accepts_extra_preamble_and_trailing_padding() {
        let f = [
            0x00, 0x00, 0x00, 0xFF, 0x02, 0xFE, 0xD5, 0x15, 0x16, 0x00, 0x00, 0x00,
        ];
        assert_eq!(decode(&f), Ok(Frame::Info(&[0x15])));
    }

    #[test]
    fn rejects_bad_length_checksum() {
        let f = [0x00, 0x00, 0xFF, 0x02, 0xFD, 0xD5, 0x15, 0x16, 0x00];
        assert_eq!(decode(&f), Err(FrameError::Checksum));
    }

    #[test]
    fn rejects_bad_data_checksum() {
        let f = [0x00, 0x00, 0xFF, 0x02, 0xFE, 0xD5, 0x15, 0x17, 0x00];
        assert_eq!(decode(&f), Err(FrameError::Checksum));
    }

    #[test]
    fn rejects_bad_extended_length_checksum() {
        let f = [0x00, 0x00, 0xFF, 0xFF, 0xFF, 0x01, 0x00, 0x00, 0xD5];
        assert_eq!(decode(&f), Err(FrameError::Checksum));
    }

    #[test]
    fn rejects_missing_start_code() {
        assert_eq!(decode(&[]), Err(FrameError::Malformed));
        assert_eq!(decode(&[0x00, 0x00, 0x00]), Err(FrameError::Malformed));
        assert_eq!(
            decode(&[0xFF, 0x02, 0xFE, 0xD5, 0x15, 0x16, 0x00]),
            Err(FrameError::Malformed)
        );
        assert_eq!(
            decode(&[0x00, 0x01, 0xFF, 0x02, 0xFE, 0xD5, 0x15, 0x16]),
            Err(FrameError::Malformed)
        );
    }

    #[test]
    fn rejects_truncated_frames() {
        let f = [0x00, 0x00, 0xFF, 0x04, 0xFC, 0xD5, 0x15, 0x16];
        assert_eq!(decode(&f), Err(FrameError::Malformed));
        assert_eq!(
            decode(&[0x00, 0x00, 0xFF, 0x04]),
            Err(FrameError::Malformed)
        );
    }

    #[test]
    fn rejects_host_tfi_and_misplaced_error_tfi() {
        // A frame with TFI D4 is the host's own echo, not an answer.
        let f = [0x00, 0x00, 0xFF, 0x02, 0xFE, 0xD4, 0x15, 0x17, 0x00];
        assert_eq!(decode(&f), Err(FrameError::Malformed));
        // TFI 7F with data is not the error frame.
        let f = [0x00, 0x00, 0xFF, 0x02, 0xFE, 0x7F, 0x01, 0x80, 0x00];
        assert_eq!(decode(&f), Err(FrameError::Malformed));
    }

    #[test]
    fn rejects_an_answer_without_its_response_code() {
        // LEN 1, TFI D5 and no PD0; DCS 2B adds up (found by the pn532_frame fuzz target).
        let f = [0x00, 0xFF, 0x01, 0xFF, 0xD5, 0x2B];
        assert_eq!(decode(&f), Err(FrameError::Malformed));
        let f = [0x00, 0x00, 0xFF, 0x01, 0xFF, 0xD5, 0x2B, 0x00];
        assert_eq!(decode(&f), Err(FrameError::Malformed));
        // The same as an extended frame.
        let f = [
            0x00, 0x00, 0xFF, 0xFF, 0xFF, 0x00, 0x01, 0xFF, 0xD5, 0x2B, 0x00,
        ];
        assert_eq!(decode(&f), Err(FrameError::Malformed));
    }

    #[test]
    fn rejects_extended_length_over_limit() {
        let len: u16 = 266;
        let [m, l] = len.to_be_bytes();
        let mut f = std::vec![
            0x00,
            0x00,
            0xFF,
            0xFF,
            0xFF,
            m,
            l,
            m.wrapping_add(l).wrapping_neg()
        ];
        f.extend(core::iter::repeat_n(0u8, 300));
        assert_eq!(decode(&f), Err(FrameError::Malformed));
    }
}
