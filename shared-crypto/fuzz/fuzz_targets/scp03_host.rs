//! The host side of SCP03 (what card-tool runs against a card it does not trust yet): the
//! INITIALIZE UPDATE answer parser, the card-cryptogram check, and the unwrapping of protected
//! answers (R-MAC, R-ENCRYPTION, padding) inside a genuine session.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shared_crypto::scp03::{
    diversify, i_param, level, CardInit, HostInit, InitUpdateResponse, KeySet, Scp03Error,
};

const MASTER: [u8; 16] = [0x4d; 16];
const DIV: [u8; 10] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
const HOST_CHALLENGE: [u8; 8] = [0xa5; 8];
const CARD_CHALLENGE: [u8; 8] = [0x5a; 8];

fuzz_target!(|data: &[u8]| {
    let keys = KeySet::from_static(0x30, &diversify(&MASTER, &DIV));
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let level = [level::C_MAC, level::FULL, 0x13, 0x11, selector][usize::from(selector % 5)];

    // 1. An arbitrary INITIALIZE UPDATE answer: parsing is total, and authentication succeeds
    //    only for the answer a card holding the keys would give (the fuzzer cannot forge it).
    let genuine = CardInit::new(
        &keys,
        DIV,
        i_param::R_MAC | i_param::R_ENCRYPTION,
        HOST_CHALLENGE,
        CARD_CHALLENGE,
        None,
    );
    let take = rest.len().min(32);
    if let Ok(r) = InitUpdateResponse::parse(&rest[..take]) {
        let mut enc = [0u8; 32];
        let n = r.encode(&mut enc);
        assert_eq!(&enc[..n], &rest[..take], "the parser must be canonical");
    }
    if let Ok((_, r, _)) = HostInit::new(0x30, HOST_CHALLENGE).authenticate(&keys, &rest[..take], level)
    {
        assert_eq!(r.card_cryptogram, genuine.response().card_cryptogram);
        assert_eq!(r.card_challenge, CARD_CHALLENGE);
    }

    // 2. Arbitrary answers inside a genuine session: nothing panics on any length or padding, and
    //    whatever the host accepts is exactly what the genuine card would have sent for that
    //    plain answer (so an accepted answer carries the card's R-MAC). The fuzzer is not asked
    //    to fail at forging: libFuzzer's comparison tracing sees both sides of the 8-byte MAC
    //    comparison under this fixed key and can learn it, which no card-side attacker can.
    let mut enc = [0u8; 32];
    let n = genuine.response().encode(&mut enc);
    let Ok((mut host, _, ext_auth)) =
        HostInit::new(0x30, HOST_CHALLENGE).authenticate(&keys, &enc[..n], level)
    else {
        return;
    };
    let Ok(mut card) = genuine.external_authenticate(&ext_auth) else {
        panic!("a genuine EXTERNAL AUTHENTICATE must be accepted");
    };
    let mut wrapped = [0u8; 300];
    let Ok(n) = host.wrap_command(&[0x80, 0xca, 0x00, 0x00, 0x00], &mut wrapped) else {
        return;
    };
    let mut plain = [0u8; 300];
    if card.unwrap_command(&wrapped[..n], &mut plain).is_err() {
        panic!("the card must accept the host's genuine command");
    }
    for answer in rest.get(take..).unwrap_or_default().chunks(64) {
        let (sw_bytes, body) = match answer {
            [a, b, body @ ..] => ([*a, *b], body),
            _ => continue,
        };
        let sw = u16::from_be_bytes(sw_bytes);
        let mut out = [0u8; 300];
        match host.unwrap_response(body, sw, &mut out) {
            Ok(len) => {
                assert!(len <= body.len());
                let mut again = [0u8; 300];
                let m = card
                    .wrap_response(&out[..len], sw, &mut again)
                    .expect("the card wraps any plain answer the host accepted");
                assert_eq!(&again[..m], body, "accepted an answer the card would not send");
            }
            Err(
                Scp03Error::Mac
                | Scp03Error::Malformed
                | Scp03Error::Padding
                | Scp03Error::BufferTooSmall,
            ) => {}
            Err(e) => panic!("unexpected error {e:?}"),
        }
    }
});
