//! Resident IDs and certificate numbers: never panic, agree with an independent statement of the
//! rules (GB 11643-1999 with the full-sum form of MOD 11-2), and round-trip through text and postcard.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shared_crypto::certno::{CertNoError, CertificateNumber, ResidentId, Sex};

/// The rules written a second way: `Σ value_i · 2^(17-i) ≡ 1 (mod 11)` over all 18 characters
/// instead of the lookup table, and a day count per month from a list instead of a match.
fn reference_valid(b: &[u8]) -> bool {
    if b.len() != 18 && b.len() != 20 {
        return false;
    }
    let digit = |i: usize| b[i].is_ascii_digit();
    if !(0..17).all(digit) || !(digit(17) || b[17] == b'X') {
        return false;
    }
    let num =
        |r: core::ops::Range<usize>| b[r].iter().fold(0u32, |a, &d| a * 10 + u32::from(d - b'0'));
    let (year, month, day) = (num(6..10), num(10..12), num(12..14));
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let lengths = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    let date_ok = (1800..=2999).contains(&year)
        && (1..=12).contains(&month)
        && day >= 1
        && day <= lengths[month as usize - 1];
    let sum: u32 = (0..18)
        .map(|i| {
            let v = if b[i] == b'X' {
                10
            } else {
                u32::from(b[i] - b'0')
            };
            v * ((1u32 << (17 - i)) % 11)
        })
        .sum();
    let tail_ok = b.len() == 18
        || (digit(18)
            && digit(19)
            && (b'1'..=b'7').contains(&b[18])
            && (b'1'..=b'4').contains(&b[19]));
    (b'1'..=b'8').contains(&b[0]) && date_ok && sum % 11 == 1 && tail_ok
}

fn check_error(e: CertNoError) {
    assert!(matches!(
        e.code(),
        "length" | "character" | "region" | "date" | "check_character" | "category" | "level"
    ));
    assert!(!e.to_string().is_empty());
}

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = core::str::from_utf8(data) {
        match ResidentId::parse(s) {
            Ok(id) => {
                assert!(reference_valid(data), "accepted {s:?}");
                assert_eq!(id.as_str(), s);
                assert_eq!(id.to_string(), s);
                let (year, month, day) = id.birth_date();
                assert!(
                    (1800..=2999).contains(&year)
                        && (1..=12).contains(&month)
                        && (1..=31).contains(&day)
                );
                assert!((100_000..900_000).contains(&id.region()));
                assert_eq!(id.sex() == Sex::Male, id.sequence() % 2 == 1);
                let bytes: [u8; 18] = data.try_into().unwrap();
                assert_eq!(ResidentId::from_ascii(&bytes), Ok(id));
            }
            Err(e) => {
                assert!(
                    !reference_valid(data) || data.len() == 20,
                    "refused {s:?}: {e}"
                );
                check_error(e);
            }
        }
        match CertificateNumber::parse(s) {
            Ok(c) => {
                assert!(data.len() == 20 && reference_valid(data), "accepted {s:?}");
                assert_eq!(&c.as_bytes()[..], data);
                assert_eq!(c.to_string(), s);
                let mut buf = [0u8; 32];
                let enc = postcard::to_slice(&c, &mut buf).unwrap();
                assert_eq!(postcard::from_bytes::<CertificateNumber>(enc).unwrap(), c);
            }
            Err(e) => {
                assert!(
                    data.len() != 20 || !reference_valid(data),
                    "refused {s:?}: {e}"
                );
                check_error(e);
            }
        }
    }
    if let Ok(first17) = <&[u8; 17]>::try_from(data.get(..17).unwrap_or_default()) {
        if let Ok(check) = ResidentId::check_char(first17) {
            let mut full = [0u8; 18];
            full[..17].copy_from_slice(first17);
            full[17] = check;
            // The computed character satisfies the full-sum rule whenever region and date allow.
            if let Ok(id) = ResidentId::from_ascii(&full) {
                assert!(reference_valid(id.as_bytes()));
            }
        }
    }
    // Arbitrary bytes as postcard: only valid numbers decode.
    if let Ok(c) = postcard::from_bytes::<CertificateNumber>(data) {
        assert!(reference_valid(&c.as_bytes()));
    }
});
