//! The virtual card's answer to reset.

use shared_crypto::apdu::AID;

/// Number of historical bytes: the category indicator and one compact-TLV object.
const HISTORICAL_LEN: usize = 2 + AID.len();

/// Length of the whole ATR.
pub const ATR_LEN: usize = 4 + HISTORICAL_LEN + 1;

/// The ATR: `3B` (direct convention), T0 = `8K` (TD1 follows, K historical bytes), TD1 = `80`
/// (TD2 follows, T=0), TD2 = `01` (T=1), the historical bytes, and TCK (ISO 7816-3 §8.2.5: present
/// because T=1 is indicated; the XOR of T0 to TCK is zero).
///
/// The historical bytes are category indicator `80` (ISO 7816-4 §8.1.1.1: compact-TLV objects
/// follow) and the compact-TLV object `F6` (tag F "application identifier", §8.1.1.2.2; length 6)
/// holding the applet's AID, so a reader log shows what the card is.
pub const fn atr() -> [u8; ATR_LEN] {
    let mut a = [0u8; ATR_LEN];
    a[0] = 0x3B;
    a[1] = 0x80 | HISTORICAL_LEN as u8;
    a[2] = 0x80;
    a[3] = 0x01;
    a[4] = 0x80;
    a[5] = 0xF0 | AID.len() as u8;
    let mut i = 0;
    while i < AID.len() {
        a[6 + i] = AID[i];
        i += 1;
    }
    let mut tck = 0u8;
    let mut j = 1;
    while j < ATR_LEN - 1 {
        tck ^= a[j];
        j += 1;
    }
    a[ATR_LEN - 1] = tck;
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_byte_makes_the_xor_zero_and_the_aid_is_in_the_history() {
        let a = atr();
        assert_eq!(a[1..].iter().fold(0u8, |x, b| x ^ b), 0);
        assert_eq!(a[1] & 0x0F, HISTORICAL_LEN as u8);
        assert_eq!(&a[6..12], &AID);
        assert_eq!(
            hex::encode(a),
            "3b888001".to_owned() + "80f6f04344504601" + &hex::encode([a[ATR_LEN - 1]])
        );
    }
}
