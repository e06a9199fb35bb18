//! PN532 frames from arbitrary bytes (what a broken or hostile chip, or a noisy bus, can hand the
//! host): `decode` never panics; what it accepts is a frame whose checksums hold, whose packet
//! data lies inside the input, that decodes the same with one more preamble byte or trailing
//! bytes, and that the host's own encoder writes again byte for byte (UM0701-02 §6.2.1).
#![no_main]
use libfuzzer_sys::fuzz_target;
use terminal_drivers::pn532::{
    decode, encode_command, Frame, MAX_EXTENDED_LEN, TFI_HOST_TO_PN532, TFI_PN532_TO_HOST,
};

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = decode(data) else {
        return;
    };

    // The decoder skips a preamble of 00 bytes and ignores what follows the frame.
    let mut longer = Vec::with_capacity(data.len() + 8);
    longer.push(0x00);
    longer.extend_from_slice(data);
    longer.extend_from_slice(&[0x00, 0xFF, 0x5A, 0x00, 0xD5]);
    assert_eq!(decode(&longer), Ok(frame));

    let Frame::Info(payload) = frame else {
        return;
    };
    // PD0 is there (LEN counts TFI and at least it) and within the chip's limit.
    assert!(!payload.is_empty());
    assert!(payload.len() < MAX_EXTENDED_LEN);
    // The packet data is a part of the input, not a copy from elsewhere.
    let start = payload.as_ptr() as usize - data.as_ptr() as usize;
    assert!(start + payload.len() <= data.len());
    // The byte before PD0 is the PN532's TFI, and the data checksum that follows adds up.
    assert_eq!(data[start - 1], TFI_PN532_TO_HOST);
    let dcs = data[start + payload.len()];
    let sum = payload
        .iter()
        .fold(TFI_PN532_TO_HOST.wrapping_add(dcs), |a, b| {
            a.wrapping_add(*b)
        });
    assert_eq!(sum, 0);

    // Encoding the same packet as a host frame and turning it into the chip's (TFI D4 -> D5, so
    // DCS - 1) gives a frame that decodes to the same packet: decoder and encoder agree on
    // lengths, checksums and the normal/extended switch.
    let mut out = vec![0u8; payload.len() + 16];
    let n = encode_command(payload[0], &[], &payload[1..], &mut out).expect("fits");
    let tfi_at = n - payload.len() - 3;
    assert_eq!(out[tfi_at], TFI_HOST_TO_PN532);
    out[tfi_at] = TFI_PN532_TO_HOST;
    out[n - 2] = out[n - 2].wrapping_sub(1);
    assert_eq!(decode(&out[..n]), Ok(Frame::Info(payload)));
});
