//! The 20-character disability certificate number.
//!
//! A certificate number is the holder's 18-character resident identity number (GB 11643-1999,
//! "公民身份号码") followed by one digit for the disability category and one digit for the level:
//!
//! ```text
//! 110105 19491231 002 X 4 2
//! |      |        |   | | +-- level 1..=4 (1 the most severe)
//! |      |        |   | +---- category 1..=7 (see [`Category`])
//! |      |        |   +------ MOD 11-2 check character (GB 11643-1999 §5.4, ISO 7064), `X` for 10
//! |      |        +---------- sequence code (§5.3: odd for men, even for women)
//! |      +------------------- birth date YYYYMMDD (§5.2)
//! +-------------------------- administrative region code (§5.1, GB/T 2260)
//! ```
//!
//! Parsing checks, in this order, and stops at the first failure with one [`CertNoError`]:
//! the length in characters, every character's class, the region code, the birth date, the check
//! character, the category and the level. Everything here works without `alloc`.
//!
//! **Lower-case `x` is refused** in the check position ([`CertNoError::Character`]). GB 11643-1999
//! writes the check value 10 as the upper-case Roman numeral `X`; accepting both spellings would give
//! one person two different certificate-number strings (and two blind-index values on the server).
//! Callers that take free-form input may upper-case it themselves before parsing, visibly to the user.

use core::fmt;
use core::str::FromStr;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// Length of a resident identity number in characters.
pub const RESIDENT_ID_LEN: usize = 18;
/// Length of a certificate number in characters (resident ID, category digit, level digit).
pub const CERTIFICATE_NUMBER_LEN: usize = 20;

/// Position (0-based) of the MOD 11-2 check character inside the resident ID.
const CHECK_POS: usize = 17;
/// Position (0-based) of the category digit inside the certificate number.
const CATEGORY_POS: usize = 18;
/// Position (0-based) of the level digit inside the certificate number.
const LEVEL_POS: usize = 19;

/// GB 11643-1999 §5.4 weights `W_i = 2^(17-i) mod 11` for the first 17 characters.
const WEIGHTS: [u8; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
/// GB 11643-1999 §5.4: the check character for each value of `(Σ a_i·W_i) mod 11`.
const CHECK_CHARS: [u8; 11] = *b"10X98765432";

/// Birth years accepted in the date field. The issue fixes a plain calendar range rather than a
/// "not in the future" rule, so that parsing never needs a clock.
const YEARS: core::ops::RangeInclusive<u16> = 1800..=2999;

/// Why a resident ID or certificate number was refused. One variant per check, each holding what
/// the caller needs to show the person what to correct.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CertNoError {
    /// The input does not have the expected number of characters (Unicode scalar values, not bytes).
    Length {
        /// 18 for a resident ID, 20 for a certificate number.
        expected: usize,
        /// The number of characters found.
        found: usize,
    },
    /// A character is not allowed at its position: positions 0 to 16, 18 and 19 take the digits
    /// `0`-`9`, position 17 takes a digit or an upper-case `X` (lower-case `x` is refused).
    Character {
        /// 0-based index of the offending character.
        position: usize,
        /// The character found there.
        found: char,
    },
    /// The administrative region code (the first 6 digits) does not start with a digit 1 to 8,
    /// the first digits that GB/T 2260 assigns.
    Region,
    /// The birth date (characters 7 to 14) is not a real calendar date with a year in 1800..=2999.
    Date {
        /// Year as written.
        year: u16,
        /// Month as written.
        month: u8,
        /// Day as written.
        day: u8,
    },
    /// The MOD 11-2 check character does not match the first 17 digits.
    CheckCharacter {
        /// The check character the first 17 digits call for.
        expected: char,
        /// The check character found.
        found: char,
    },
    /// The category digit (character 19) is a digit outside 1..=7.
    Category {
        /// The digit found.
        found: char,
    },
    /// The level digit (character 20) is a digit outside 1..=4.
    Level {
        /// The digit found.
        found: char,
    },
}

impl CertNoError {
    /// A stable, machine-readable reason, used in the issuance server's 4xx bodies:
    /// `length`, `character`, `region`, `date`, `check_character`, `category` or `level`.
    pub const fn code(&self) -> &'static str {
        match self {
            Self::Length { .. } => "length",
            Self::Character { .. } => "character",
            Self::Region => "region",
            Self::Date { .. } => "date",
            Self::CheckCharacter { .. } => "check_character",
            Self::Category { .. } => "category",
            Self::Level { .. } => "level",
        }
    }
}

/// English ordinal of a 1-based position ("1st", "2nd", "3rd", "4th", ..., "11th", "21st").
struct Ordinal(usize);

impl fmt::Display for Ordinal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        let suffix = match (n % 10, n % 100) {
            (_, 11..=13) => "th",
            (1, _) => "st",
            (2, _) => "nd",
            (3, _) => "rd",
            _ => "th",
        };
        write!(f, "{n}{suffix}")
    }
}

impl fmt::Display for CertNoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Length { expected, found } => {
                let what = if expected == CERTIFICATE_NUMBER_LEN {
                    "a certificate number has 20 characters (the 18-character resident ID, \
                     then the category digit, then the level digit)"
                } else {
                    "a resident ID has 18 characters"
                };
                write!(f, "wrong length: {what}; found {found} characters (expected {expected})")
            }
            Self::Character { position, found } => write!(
                f,
                "invalid character {found:?} at index {position} (the {} character): \
                 only the digits 0-9 are allowed, except an upper-case X as the 18th character",
                Ordinal(position.saturating_add(1)),
            ),
            Self::Region => f.write_str(
                "invalid region code: the first 6 digits are an administrative division code \
                 and must start with a digit from 1 to 8",
            ),
            Self::Date { year, month, day } => write!(
                f,
                "invalid birth date {year:04}-{month:02}-{day:02} (characters 7 to 14, YYYYMMDD): \
                 it must be a real calendar date with a year from 1800 to 2999",
            ),
            Self::CheckCharacter { expected, found } => write!(
                f,
                "check character mismatch: the first 17 digits call for {expected:?} as the 18th \
                 character but {found:?} was found; one of the 18 characters is probably mistyped",
            ),
            Self::Category { found } => write!(
                f,
                "invalid disability category {found:?} (the 19th character): it must be 1 (vision), \
                 2 (hearing), 3 (speech), 4 (physical), 5 (intellectual), 6 (psychosocial) \
                 or 7 (multiple)",
            ),
            Self::Level { found } => write!(
                f,
                "invalid disability level {found:?} (the 20th character): it must be 1, 2, 3 or 4 \
                 (1 the most severe)",
            ),
        }
    }
}

// `core::error::Error` is `std::error::Error` (stable in core since Rust 1.81, below this
// workspace's 1.85), so the impl serves `std` users and `no_std` users alike.
impl core::error::Error for CertNoError {}

/// Disability category (the 19th character of the certificate number).
///
/// The discriminant is the digit written in the certificate number. Note that serde's derived
/// encoding is the variant (its name in JSON, its 0-based index in postcard), not [`Category::code`].
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[repr(u8)]
pub enum Category {
    /// 视力残疾.
    Vision = 1,
    /// 听力残疾.
    Hearing = 2,
    /// 言语残疾.
    Speech = 3,
    /// 肢体残疾.
    Physical = 4,
    /// 智力残疾.
    Intellectual = 5,
    /// 精神残疾.
    Psychosocial = 6,
    /// 多重残疾: two or more of the above.
    Multiple = 7,
}

impl Category {
    /// Every category, in code order.
    pub const ALL: [Category; 7] = [
        Self::Vision,
        Self::Hearing,
        Self::Speech,
        Self::Physical,
        Self::Intellectual,
        Self::Psychosocial,
        Self::Multiple,
    ];

    /// The category for the numeric code `1..=7` (the value, not the ASCII digit), `None` otherwise.
    pub const fn from_digit(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::Vision),
            2 => Some(Self::Hearing),
            3 => Some(Self::Speech),
            4 => Some(Self::Physical),
            5 => Some(Self::Intellectual),
            6 => Some(Self::Psychosocial),
            7 => Some(Self::Multiple),
            _ => None,
        }
    }

    /// The numeric code `1..=7` written in the certificate number.
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// Short English name: "vision", "hearing", "speech", "physical", "intellectual",
    /// "psychosocial" or "multiple".
    pub const fn name_en(self) -> &'static str {
        match self {
            Self::Vision => "vision",
            Self::Hearing => "hearing",
            Self::Speech => "speech",
            Self::Physical => "physical",
            Self::Intellectual => "intellectual",
            Self::Psychosocial => "psychosocial",
            Self::Multiple => "multiple",
        }
    }

    /// Chinese name as printed on the certificate, e.g. "肢体残疾".
    pub const fn name_zh(self) -> &'static str {
        match self {
            Self::Vision => "视力残疾",
            Self::Hearing => "听力残疾",
            Self::Speech => "言语残疾",
            Self::Physical => "肢体残疾",
            Self::Intellectual => "智力残疾",
            Self::Psychosocial => "精神残疾",
            Self::Multiple => "多重残疾",
        }
    }
}

/// Disability level 1 to 4 (the 20th character); level 1 is the most severe.
///
/// The field is private so that every `Level` holds 1..=4. `Ord` compares the number, so a
/// *smaller* level is a *more* severe one. Serde encodes it as the plain number and refuses
/// anything outside 1..=4 when decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Level(u8);

impl Level {
    /// Every level, most severe first.
    pub const ALL: [Level; 4] = [Level(1), Level(2), Level(3), Level(4)];

    /// The level `1..=4`, `None` for anything else.
    pub const fn new(level: u8) -> Option<Self> {
        match level {
            1..=4 => Some(Self(level)),
            _ => None,
        }
    }

    /// The number 1..=4.
    pub const fn get(self) -> u8 {
        self.0
    }

    /// English name, "level 1" to "level 4".
    pub const fn name_en(self) -> &'static str {
        match self.0 {
            1 => "level 1",
            2 => "level 2",
            3 => "level 3",
            _ => "level 4",
        }
    }

    /// Chinese name as printed on the certificate, "一级" to "四级".
    pub const fn name_zh(self) -> &'static str {
        match self.0 {
            1 => "一级",
            2 => "二级",
            3 => "三级",
            _ => "四级",
        }
    }
}

impl Serialize for Level {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u8(self.0)
    }
}

impl<'de> Deserialize<'de> for Level {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let n = u8::deserialize(deserializer)?;
        Level::new(n).ok_or_else(|| {
            de::Error::invalid_value(de::Unexpected::Unsigned(n.into()), &"a level from 1 to 4")
        })
    }
}

/// Sex as coded by the parity of the GB 11643-1999 sequence code (§5.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Sex {
    /// Odd sequence code.
    Male,
    /// Even sequence code.
    Female,
}

/// A validated 18-character resident identity number (GB 11643-1999), kept as its ASCII bytes.
///
/// Every value has passed [`ResidentId::parse`]: digits (and possibly a final `X`), a region code
/// starting 1-8, a real birth date in 1800..=2999 and a matching check character.
///
/// `Debug` masks the birth date and sequence code (`110105***********X`) because the number is
/// personal data that should not end up in logs; `Display` and [`ResidentId::as_str`] give it whole.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResidentId([u8; RESIDENT_ID_LEN]);

impl ResidentId {
    /// Parses and validates a resident ID: exactly 18 characters, checked as described in the
    /// [module documentation](self).
    pub fn parse(s: &str) -> Result<Self, CertNoError> {
        let bytes = ascii_fields::<RESIDENT_ID_LEN>(s)?;
        validate_id(&bytes)?;
        Ok(Self(bytes))
    }

    /// Validates a resident ID given as bytes, with the same rules as [`ResidentId::parse`].
    /// A byte that is not ASCII is reported as the character U+FFFD at its index.
    pub fn from_ascii(bytes: &[u8; RESIDENT_ID_LEN]) -> Result<Self, CertNoError> {
        for (position, &b) in bytes.iter().enumerate() {
            if !allowed_at(position, b) {
                let found = if b.is_ascii() {
                    char::from(b)
                } else {
                    char::REPLACEMENT_CHARACTER
                };
                return Err(CertNoError::Character { position, found });
            }
        }
        validate_id(bytes)?;
        Ok(Self(*bytes))
    }

    /// The MOD 11-2 check character (`b'0'..=b'9'` or `b'X'`) for the first 17 digits
    /// (GB 11643-1999 §5.4). Useful to make valid test numbers.
    ///
    /// A byte that is not an ASCII digit gives [`CertNoError::Character`] with its index.
    pub fn check_char(first17: &[u8; 17]) -> Result<u8, CertNoError> {
        let mut sum: u32 = 0;
        for (position, (&b, &w)) in first17.iter().zip(WEIGHTS.iter()).enumerate() {
            if !b.is_ascii_digit() {
                let found = if b.is_ascii() {
                    char::from(b)
                } else {
                    char::REPLACEMENT_CHARACTER
                };
                return Err(CertNoError::Character { position, found });
            }
            sum += u32::from(b - b'0') * u32::from(w);
        }
        // `sum % 11` is below 11, the length of the table.
        Ok(CHECK_CHARS[(sum % 11) as usize])
    }

    /// The 18 characters.
    pub fn as_str(&self) -> &str {
        // Every constructor admits ASCII only, so this never fails; the fallback avoids a panic path.
        core::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The 18 ASCII bytes.
    pub const fn as_bytes(&self) -> &[u8; RESIDENT_ID_LEN] {
        &self.0
    }

    /// The 6-digit administrative region code (GB/T 2260), e.g. `110105`.
    pub fn region(&self) -> u32 {
        decimal(&self.0[0..6])
    }

    /// The birth date as (year, month, day); always a real date with the year in 1800..=2999.
    pub fn birth_date(&self) -> (u16, u8, u8) {
        birth_date_of(&self.0)
    }

    /// The birth year, 1800..=2999.
    pub fn birth_year(&self) -> u16 {
        self.birth_date().0
    }

    /// The 3-digit sequence code (0..=999) that tells apart people of one region born on one day.
    pub fn sequence(&self) -> u16 {
        // Three digits: at most 999.
        decimal(&self.0[14..17]) as u16
    }

    /// The sex coded by the sequence code's parity (GB 11643-1999 §5.3: odd male, even female).
    pub fn sex(&self) -> Sex {
        if self.sequence() % 2 == 1 {
            Sex::Male
        } else {
            Sex::Female
        }
    }
}

impl fmt::Debug for ResidentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Region and check character only: enough to tell two numbers apart in a test failure,
        // not enough to identify a person from a log line.
        let region = core::str::from_utf8(&self.0[0..6]).unwrap_or_default();
        let check = char::from(self.0[CHECK_POS]);
        write!(f, "ResidentId({region}***********{check})")
    }
}

impl fmt::Display for ResidentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ResidentId {
    type Err = CertNoError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for ResidentId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ResidentId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(StrVisitor::<ResidentId>::new("an 18-character resident ID"))
    }
}

/// A validated 20-character disability certificate number.
///
/// The fields are public: each is valid on its own, and any combination is a valid number.
/// Serde encodes it as the 20-character string and validates it when decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CertificateNumber {
    /// The holder's resident ID (the first 18 characters).
    pub id: ResidentId,
    /// The disability category (the 19th character).
    pub category: Category,
    /// The disability level (the 20th character).
    pub level: Level,
}

impl CertificateNumber {
    /// Parses and validates a certificate number: exactly 20 characters, checked as described in
    /// the [module documentation](self).
    pub fn parse(s: &str) -> Result<Self, CertNoError> {
        let bytes = ascii_fields::<CERTIFICATE_NUMBER_LEN>(s)?;
        let mut id = [0u8; RESIDENT_ID_LEN];
        id.copy_from_slice(&bytes[..RESIDENT_ID_LEN]);
        validate_id(&id)?;

        let c = bytes[CATEGORY_POS];
        let category = Category::from_digit(c - b'0').ok_or(CertNoError::Category {
            found: char::from(c),
        })?;
        let l = bytes[LEVEL_POS];
        let level = Level::new(l - b'0').ok_or(CertNoError::Level {
            found: char::from(l),
        })?;

        Ok(Self {
            id: ResidentId(id),
            category,
            level,
        })
    }

    /// Puts a certificate number together from its validated parts.
    pub const fn from_parts(id: ResidentId, category: Category, level: Level) -> Self {
        Self {
            id,
            category,
            level,
        }
    }

    /// The 20 ASCII characters.
    pub fn as_bytes(&self) -> [u8; CERTIFICATE_NUMBER_LEN] {
        let mut out = [0u8; CERTIFICATE_NUMBER_LEN];
        out[..RESIDENT_ID_LEN].copy_from_slice(&self.id.0);
        out[CATEGORY_POS] = b'0' + self.category.code();
        out[LEVEL_POS] = b'0' + self.level.get();
        out
    }
}

impl fmt::Display for CertificateNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.as_bytes();
        // ASCII by construction; see `ResidentId::as_str`.
        f.write_str(core::str::from_utf8(&bytes).unwrap_or_default())
    }
}

impl FromStr for CertificateNumber {
    type Err = CertNoError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for CertificateNumber {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let bytes = self.as_bytes();
        serializer.serialize_str(core::str::from_utf8(&bytes).unwrap_or_default())
    }
}

impl<'de> Deserialize<'de> for CertificateNumber {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(StrVisitor::<CertificateNumber>::new(
            "a 20-character certificate number",
        ))
    }
}

/// Serde visitor that parses a string with `FromStr`. Only `visit_str` is needed: serde forwards
/// borrowed strings (postcard's case) to it, so nothing is copied or allocated.
struct StrVisitor<T> {
    expecting: &'static str,
    target: core::marker::PhantomData<T>,
}

impl<T> StrVisitor<T> {
    const fn new(expecting: &'static str) -> Self {
        Self {
            expecting,
            target: core::marker::PhantomData,
        }
    }
}

impl<T: FromStr<Err = CertNoError>> de::Visitor<'_> for StrVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        // The reason goes into the error text so that a JSON client learns what to fix.
        v.parse()
            .map_err(|e: CertNoError| E::custom(format_args!("{} ({e})", e.code())))
    }
}

/// Whether the ASCII byte `b` may stand at 0-based `position` of a resident ID or certificate
/// number: a digit everywhere, or an upper-case `X` in the check position.
fn allowed_at(position: usize, b: u8) -> bool {
    b.is_ascii_digit() || (position == CHECK_POS && b == b'X')
}

/// Checks the length in characters and every character's class, and returns the ASCII bytes.
fn ascii_fields<const N: usize>(s: &str) -> Result<[u8; N], CertNoError> {
    // Count characters rather than bytes so that a person who typed a full-width digit is told
    // which character is wrong instead of getting a puzzling length.
    let found = s.chars().count();
    if found != N {
        return Err(CertNoError::Length { expected: N, found });
    }
    let mut out = [0u8; N];
    for (position, (slot, c)) in out.iter_mut().zip(s.chars()).enumerate() {
        match u8::try_from(c) {
            Ok(b) if allowed_at(position, b) => *slot = b,
            _ => return Err(CertNoError::Character { position, found: c }),
        }
    }
    Ok(out)
}

/// Region, date and check-character rules for 18 bytes whose character classes are already checked.
fn validate_id(id: &[u8; RESIDENT_ID_LEN]) -> Result<(), CertNoError> {
    if !(b'1'..=b'8').contains(&id[0]) {
        return Err(CertNoError::Region);
    }
    let (year, month, day) = birth_date_of(id);
    if !is_real_date(year, month, day) {
        return Err(CertNoError::Date { year, month, day });
    }
    let mut first17 = [0u8; 17];
    first17.copy_from_slice(&id[..CHECK_POS]);
    let expected = ResidentId::check_char(&first17)?;
    let found = id[CHECK_POS];
    if expected != found {
        return Err(CertNoError::CheckCharacter {
            expected: char::from(expected),
            found: char::from(found),
        });
    }
    Ok(())
}

/// The birth date digits (characters 7 to 14) of an ID whose first 17 characters are digits.
fn birth_date_of(id: &[u8; RESIDENT_ID_LEN]) -> (u16, u8, u8) {
    // Four and two digits: at most 9999 and 99, so the narrowing casts are exact.
    (
        decimal(&id[6..10]) as u16,
        decimal(&id[10..12]) as u8,
        decimal(&id[12..14]) as u8,
    )
}

/// The value of a short run of ASCII digits.
fn decimal(digits: &[u8]) -> u32 {
    digits
        .iter()
        .fold(0, |acc, &d| acc * 10 + u32::from(d.wrapping_sub(b'0')))
}

/// Whether (year, month, day) is a date of the proleptic Gregorian calendar with the year in range.
fn is_real_date(year: u16, month: u8, day: u8) -> bool {
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    YEARS.contains(&year) && (1..=days_in_month).contains(&day)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    extern crate std;

    use super::*;
    use std::string::{String, ToString};
    use std::vec::Vec;

    /// Known-good resident IDs: the issue's examples.
    const VALID_IDS: [&str; 2] = ["11010519491231002X", "440524188001010014"];

    /// A resident ID built from 17 digits plus the check character computed by `check_char`.
    fn id_with_check(first17: &str) -> String {
        let mut bytes = [0u8; 17];
        bytes.copy_from_slice(first17.as_bytes());
        let check = ResidentId::check_char(&bytes).unwrap();
        let mut s = String::from(first17);
        s.push(char::from(check));
        s
    }

    fn err(s: &str) -> CertNoError {
        CertificateNumber::parse(s).unwrap_err()
    }

    fn id_err(s: &str) -> CertNoError {
        ResidentId::parse(s).unwrap_err()
    }

    #[test]
    fn known_ids_parse_with_their_fields() {
        let id = ResidentId::parse("11010519491231002X").unwrap();
        assert_eq!(id.as_str(), "11010519491231002X");
        assert_eq!(id.region(), 110105);
        assert_eq!(id.birth_date(), (1949, 12, 31));
        assert_eq!(id.birth_year(), 1949);
        assert_eq!(id.sequence(), 2);
        assert_eq!(id.sex(), Sex::Female);

        let id = ResidentId::parse("440524188001010014").unwrap();
        assert_eq!(id.region(), 440524);
        assert_eq!(id.birth_date(), (1880, 1, 1));
        assert_eq!(id.sequence(), 1);
        assert_eq!(id.sex(), Sex::Male);
        assert_eq!(id.to_string(), "440524188001010014");
        assert_eq!("440524188001010014".parse::<ResidentId>(), Ok(id));
    }

    #[test]
    fn known_certificate_number_is_physical_level_2() {
        let cn = CertificateNumber::parse("11010519491231002X42").unwrap();
        assert_eq!(cn.id, ResidentId::parse("11010519491231002X").unwrap());
        assert_eq!(cn.category, Category::Physical);
        assert_eq!(cn.level, Level::new(2).unwrap());
        assert_eq!(cn.category.name_zh(), "肢体残疾");
        assert_eq!(cn.level.name_zh(), "二级");
        assert_eq!(&cn.as_bytes(), b"11010519491231002X42");
        assert_eq!(cn.to_string(), "11010519491231002X42");
        assert_eq!("11010519491231002X42".parse::<CertificateNumber>(), Ok(cn));
    }

    #[test]
    fn from_parts_matches_parse_for_every_category_and_level() {
        let id = ResidentId::parse(VALID_IDS[1]).unwrap();
        for category in Category::ALL {
            for level in Level::ALL {
                let cn = CertificateNumber::from_parts(id, category, level);
                let mut text = String::from(VALID_IDS[1]);
                text.push(char::from(b'0' + category.code()));
                text.push(char::from(b'0' + level.get()));
                assert_eq!(cn.to_string(), text);
                assert_eq!(CertificateNumber::parse(&text), Ok(cn));
            }
        }
    }

    #[test]
    fn category_codes_and_names() {
        let zh = [
            "视力残疾",
            "听力残疾",
            "言语残疾",
            "肢体残疾",
            "智力残疾",
            "精神残疾",
            "多重残疾",
        ];
        let en = [
            "vision",
            "hearing",
            "speech",
            "physical",
            "intellectual",
            "psychosocial",
            "multiple",
        ];
        for (i, category) in Category::ALL.into_iter().enumerate() {
            let code = u8::try_from(i + 1).unwrap();
            assert_eq!(category.code(), code);
            assert_eq!(Category::from_digit(code), Some(category));
            assert_eq!(category.name_zh(), zh[i]);
            assert_eq!(category.name_en(), en[i]);
        }
        assert_eq!(Category::from_digit(0), None);
        assert_eq!(Category::from_digit(8), None);
        assert_eq!(
            Category::from_digit(b'1'),
            None,
            "takes the value, not the ASCII digit"
        );
    }

    #[test]
    fn level_range_and_names() {
        let zh = ["一级", "二级", "三级", "四级"];
        for n in 0..=u8::MAX {
            match Level::new(n) {
                Some(level) => {
                    assert!((1..=4).contains(&n));
                    assert_eq!(level.get(), n);
                    assert_eq!(level.name_en(), std::format!("level {n}"));
                    assert_eq!(level.name_zh(), zh[usize::from(n - 1)]);
                }
                None => assert!(!(1..=4).contains(&n), "level {n} refused"),
            }
        }
        assert_eq!(Level::ALL.map(Level::get), [1, 2, 3, 4]);
    }

    #[test]
    fn rejects_length() {
        for s in [
            "",
            "11010519491231002",
            "11010519491231002X4",
            "11010519491231002X421",
        ] {
            assert_eq!(
                err(s),
                CertNoError::Length {
                    expected: 20,
                    found: s.len()
                },
                "{s:?}"
            );
        }
        // A bare resident ID is not a certificate number, and the reverse.
        assert_eq!(
            err(VALID_IDS[0]),
            CertNoError::Length {
                expected: 20,
                found: 18
            }
        );
        assert_eq!(
            id_err("11010519491231002X42"),
            CertNoError::Length {
                expected: 18,
                found: 20
            }
        );
        // Characters, not bytes: 19 characters that take 21 bytes.
        let s = "１1010519491231002X4";
        assert_eq!(s.len(), 21);
        assert_eq!(
            err(s),
            CertNoError::Length {
                expected: 20,
                found: 19
            }
        );
        assert_eq!(err(s).code(), "length");
    }

    #[test]
    fn rejects_character() {
        assert_eq!(
            err("1101051949123100AX42"),
            CertNoError::Character {
                position: 16,
                found: 'A'
            }
        );
        assert_eq!(
            err(" 1010519491231002X42"),
            CertNoError::Character {
                position: 0,
                found: ' '
            }
        );
        // X is only for the check position.
        assert_eq!(
            err("X1010519491231002X42"),
            CertNoError::Character {
                position: 0,
                found: 'X'
            }
        );
        assert_eq!(
            err("11010519491231002XX2"),
            CertNoError::Character {
                position: 18,
                found: 'X'
            }
        );
        assert_eq!(
            err("11010519491231002X4-"),
            CertNoError::Character {
                position: 19,
                found: '-'
            }
        );
        // A full-width digit is reported at its character index.
        assert_eq!(
            err("11010５19491231002X42"),
            CertNoError::Character {
                position: 5,
                found: '５'
            }
        );
        assert_eq!(err("+1010519491231002X42").code(), "character");
        assert_eq!(
            id_err("11010519491231002?"),
            CertNoError::Character {
                position: 17,
                found: '?'
            }
        );
    }

    #[test]
    fn rejects_lower_case_x() {
        assert_eq!(
            id_err("11010519491231002x"),
            CertNoError::Character {
                position: 17,
                found: 'x'
            }
        );
        assert_eq!(
            err("11010519491231002x42"),
            CertNoError::Character {
                position: 17,
                found: 'x'
            }
        );
        assert_eq!(
            ResidentId::from_ascii(b"11010519491231002x"),
            Err(CertNoError::Character {
                position: 17,
                found: 'x'
            })
        );
    }

    #[test]
    fn rejects_region() {
        // Check characters are made correct so that only the region is wrong.
        for first in ['0', '9'] {
            let mut first17 = String::from("10010519491231002");
            first17.replace_range(0..1, first.encode_utf8(&mut [0; 4]));
            let id = id_with_check(&first17);
            assert_eq!(id_err(&id), CertNoError::Region, "{id}");
            assert_eq!(err(&(id + "42")), CertNoError::Region);
        }
        for first in '1'..='8' {
            let mut first17 = String::from("10010519491231002");
            first17.replace_range(0..1, first.encode_utf8(&mut [0; 4]));
            assert!(
                ResidentId::parse(&id_with_check(&first17)).is_ok(),
                "{first17}"
            );
        }
        assert_eq!(CertNoError::Region.code(), "region");
    }

    #[test]
    fn rejects_date() {
        let cases: [(&str, u16, u8, u8); 9] = [
            ("19000229", 1900, 2, 29), // divisible by 100, not by 400: not leap
            ("20230229", 2023, 2, 29),
            ("20240230", 2024, 2, 30),
            ("19491301", 1949, 13, 1),
            ("19490001", 1949, 0, 1),
            ("19490100", 1949, 1, 0),
            ("19490431", 1949, 4, 31),
            ("17991231", 1799, 12, 31),
            ("30000101", 3000, 1, 1),
        ];
        for (date, year, month, day) in cases {
            let id = id_with_check(&std::format!("110105{date}002"));
            assert_eq!(id_err(&id), CertNoError::Date { year, month, day }, "{id}");
            assert_eq!(err(&(id + "11")), CertNoError::Date { year, month, day });
        }
        assert_eq!(
            CertNoError::Date {
                year: 1,
                month: 1,
                day: 1
            }
            .code(),
            "date"
        );
    }

    #[test]
    fn february_29_follows_the_gregorian_leap_rule() {
        for (year, leap) in [
            (1900, false),
            (2000, true),
            (1996, true),
            (2023, false),
            (2024, true),
            (2100, false),
        ] {
            let id = id_with_check(&std::format!("110105{year}0229002"));
            let parsed = ResidentId::parse(&id);
            if leap {
                assert_eq!(parsed.unwrap().birth_date(), (year, 2, 29));
            } else {
                assert_eq!(
                    parsed,
                    Err(CertNoError::Date {
                        year,
                        month: 2,
                        day: 29
                    })
                );
            }
        }
    }

    #[test]
    fn month_lengths() {
        let lengths = [31u8, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
        for (month, last) in (1u8..=12).zip(lengths) {
            let ok = id_with_check(&std::format!("1101052023{month:02}{last:02}002"));
            assert_eq!(
                ResidentId::parse(&ok).unwrap().birth_date(),
                (2023, month, last)
            );
            let day = last + 1;
            let bad = id_with_check(&std::format!("1101052023{month:02}{day:02}002"));
            assert_eq!(
                id_err(&bad),
                CertNoError::Date {
                    year: 2023,
                    month,
                    day
                },
                "{bad}"
            );
        }
    }

    #[test]
    fn accepts_the_ends_of_the_year_range() {
        for date in ["18000101", "29991231"] {
            let id = id_with_check(&std::format!("110105{date}003"));
            assert!(ResidentId::parse(&id).is_ok(), "{id}");
        }
    }

    #[test]
    fn rejects_check_character() {
        assert_eq!(
            id_err("110105194912310021"),
            CertNoError::CheckCharacter {
                expected: 'X',
                found: '1'
            }
        );
        assert_eq!(
            err("44052418800101001X37"),
            CertNoError::CheckCharacter {
                expected: '4',
                found: 'X'
            }
        );
        assert_eq!(err("44052418800101001537").code(), "check_character");
    }

    #[test]
    fn rejects_category() {
        for c in ['0', '8', '9'] {
            let s = std::format!("11010519491231002X{c}2");
            assert_eq!(err(&s), CertNoError::Category { found: c }, "{s}");
            assert_eq!(err(&s).code(), "category");
        }
    }

    #[test]
    fn rejects_level() {
        for l in ['0', '5', '6', '7', '8', '9'] {
            let s = std::format!("11010519491231002X4{l}");
            assert_eq!(err(&s), CertNoError::Level { found: l }, "{s}");
            assert_eq!(err(&s).code(), "level");
        }
    }

    #[test]
    fn check_char_rejects_non_digits() {
        assert_eq!(
            ResidentId::check_char(b"1101051949123100X"),
            Err(CertNoError::Character {
                position: 16,
                found: 'X'
            })
        );
        assert_eq!(
            ResidentId::check_char(&[0xFF; 17]),
            Err(CertNoError::Character {
                position: 0,
                found: char::REPLACEMENT_CHARACTER
            })
        );
    }

    #[test]
    fn from_ascii_agrees_with_parse() {
        for s in VALID_IDS {
            let bytes: [u8; 18] = s.as_bytes().try_into().unwrap();
            assert_eq!(ResidentId::from_ascii(&bytes), ResidentId::parse(s));
            assert_eq!(ResidentId::from_ascii(&bytes).unwrap().as_bytes(), &bytes);
        }
        let mut bad = *b"11010519491231002X";
        bad[3] = 0xC3;
        assert_eq!(
            ResidentId::from_ascii(&bad),
            Err(CertNoError::Character {
                position: 3,
                found: char::REPLACEMENT_CHARACTER
            })
        );
        assert_eq!(
            ResidentId::from_ascii(b"110105194912310021"),
            ResidentId::parse("110105194912310021")
        );
    }

    /// GB 11643-1999's MOD 11-2 code detects every single-character substitution: every weight is
    /// non-zero modulo the prime 11. Exhaustive over positions and replacement characters.
    #[test]
    fn every_single_substitution_is_rejected() {
        let alphabet = b"0123456789X";
        let mut tried = 0;
        for valid in VALID_IDS {
            let original: [u8; 18] = valid.as_bytes().try_into().unwrap();
            for position in 0..18 {
                for &replacement in alphabet {
                    if replacement == original[position] {
                        continue;
                    }
                    let mut mutated = original;
                    mutated[position] = replacement;
                    let text = core::str::from_utf8(&mutated).unwrap();
                    assert!(ResidentId::parse(text).is_err(), "{text} accepted");
                    let mut cert = String::from(text);
                    cert.push_str("42");
                    assert!(CertificateNumber::parse(&cert).is_err(), "{cert} accepted");
                    // Whatever rule fires first, the checksum alone would also have caught a
                    // changed digit.
                    if position < CHECK_POS && replacement != b'X' {
                        let first17: [u8; 17] = mutated[..17].try_into().unwrap();
                        assert_ne!(
                            ResidentId::check_char(&first17).unwrap(),
                            original[CHECK_POS]
                        );
                    }
                    tried += 1;
                }
            }
        }
        assert_eq!(tried, 2 * 18 * 10);
    }

    /// Swapping two adjacent different digits changes the weighted sum by `(W_i - W_{i+1})(b - a)`,
    /// never 0 mod 11 because `W_i = 2·W_{i+1}`; including the swap of the last digit with a numeric
    /// check character (weights 2 and 1).
    #[test]
    fn adjacent_transpositions_are_detected() {
        let ids = [
            VALID_IDS[0],
            VALID_IDS[1],
            &id_with_check("37028519870614253"),
            &id_with_check("52262719330807118"),
            &id_with_check("65010220000229765"),
        ];
        let mut swapped = 0;
        for valid in ids {
            let original: [u8; 18] = valid.as_bytes().try_into().unwrap();
            for i in 0..17 {
                if original[i] == original[i + 1] || original[i + 1] == b'X' {
                    continue;
                }
                let mut mutated = original;
                mutated.swap(i, i + 1);
                let text = core::str::from_utf8(&mutated).unwrap();
                assert!(ResidentId::parse(text).is_err(), "{text} accepted");
                if i + 1 < CHECK_POS {
                    let first17: [u8; 17] = mutated[..17].try_into().unwrap();
                    assert_ne!(
                        ResidentId::check_char(&first17).unwrap(),
                        original[CHECK_POS]
                    );
                }
                swapped += 1;
            }
        }
        assert!(swapped > 50, "only {swapped} transpositions tried");
    }

    #[test]
    fn generated_ids_round_trip() {
        // Walk many region/date/sequence combinations; every generated number must parse and
        // give back its fields.
        let regions = [110105u32, 310104, 440524, 510107, 650102, 820000];
        let mut n = 0;
        for region in regions {
            for (year, month, day) in [
                (1800u16, 1u8, 1u8),
                (1949, 10, 1),
                (2000, 2, 29),
                (2999, 12, 31),
            ] {
                for sequence in [0u16, 1, 2, 37, 998, 999] {
                    let first17 =
                        std::format!("{region:06}{year:04}{month:02}{day:02}{sequence:03}");
                    let text = id_with_check(&first17);
                    let id = ResidentId::parse(&text).unwrap();
                    assert_eq!(id.as_str(), text);
                    assert_eq!(id.region(), region);
                    assert_eq!(id.birth_date(), (year, month, day));
                    assert_eq!(id.sequence(), sequence);
                    assert_eq!(
                        id.sex(),
                        if sequence % 2 == 1 {
                            Sex::Male
                        } else {
                            Sex::Female
                        }
                    );
                    n += 1;
                }
            }
        }
        assert_eq!(n, 6 * 4 * 6);
    }

    #[test]
    fn check_char_spreads_over_all_eleven_values() {
        // Every check character, X included, is reachable by changing the sequence code.
        let mut seen = Vec::new();
        for sequence in 0..40u16 {
            let first17 = std::format!("11010519491231{sequence:03}");
            let bytes: [u8; 17] = first17.as_bytes().try_into().unwrap();
            let c = ResidentId::check_char(&bytes).unwrap();
            if !seen.contains(&c) {
                seen.push(c);
            }
        }
        seen.sort_unstable();
        assert_eq!(seen, b"0123456789X");
    }

    /// ISO 7064 MOD 11-2 stated without the lookup table: with the check value (X = 10) weighted 1,
    /// the weighted sum of all 18 characters is 1 modulo 11 (GB 11643-1999 §5.4).
    #[test]
    fn check_char_satisfies_the_full_sum_rule() {
        let mut values_seen = [false; 11];
        for sequence in 0..200u16 {
            let first17 = std::format!("44052418800101{sequence:03}");
            let bytes: [u8; 17] = first17.as_bytes().try_into().unwrap();
            let check = ResidentId::check_char(&bytes).unwrap();
            let value = if check == b'X' {
                10
            } else {
                u32::from(check - b'0')
            };
            let sum: u32 = bytes
                .iter()
                .enumerate()
                .map(|(i, &d)| u32::from(d - b'0') * ((1u32 << (17 - i)) % 11))
                .sum();
            assert_eq!((sum + value) % 11, 1, "{first17} -> {}", char::from(check));
            values_seen[value as usize] = true;
        }
        assert_eq!(values_seen, [true; 11]);
    }

    #[test]
    fn postcard_round_trip_is_the_borrowed_string() {
        let cn = CertificateNumber::parse("11010519491231002X42").unwrap();
        let mut buf = [0u8; 32];
        let used = postcard::to_slice(&cn, &mut buf).unwrap();
        // postcard writes a str as a varint length and the bytes.
        assert_eq!(used[0], 20);
        assert_eq!(&used[1..], b"11010519491231002X42");
        let back: CertificateNumber = postcard::from_bytes(used).unwrap();
        assert_eq!(back, cn);

        let id = cn.id;
        let used = postcard::to_slice(&id, &mut buf).unwrap();
        assert_eq!(&used[1..], b"11010519491231002X");
        assert_eq!(postcard::from_bytes::<ResidentId>(used).unwrap(), id);

        let level = Level::new(3).unwrap();
        let used = postcard::to_slice(&level, &mut buf).unwrap();
        assert_eq!(used, [3]);
        assert_eq!(postcard::from_bytes::<Level>(used).unwrap(), level);
    }

    #[test]
    fn postcard_rejects_invalid_strings() {
        let mut buf = [0u8; 32];
        for bad in [
            "11010519491231002X49",
            "11010519491231002X4",
            "110105194912310021",
            "1101051949123100AX42",
        ] {
            let bytes = postcard::to_slice(&bad, &mut buf).unwrap();
            assert!(
                postcard::from_bytes::<CertificateNumber>(bytes).is_err(),
                "{bad} accepted"
            );
        }
        let bytes = postcard::to_slice(&"110105194912310021", &mut buf).unwrap();
        assert!(postcard::from_bytes::<ResidentId>(bytes).is_err());
        for bad in [0u8, 5, 255] {
            let bytes = postcard::to_slice(&bad, &mut buf).unwrap();
            assert!(
                postcard::from_bytes::<Level>(bytes).is_err(),
                "level {bad} accepted"
            );
        }
    }

    #[test]
    fn json_uses_the_string_and_reports_the_reason() {
        let cn = CertificateNumber::parse("44052418800101001471").unwrap();
        let json = serde_json::to_string(&cn).unwrap();
        assert_eq!(json, "\"44052418800101001471\"");
        assert_eq!(
            serde_json::from_str::<CertificateNumber>(&json).unwrap(),
            cn
        );
        // An escaped string is not borrowed from the input: the visitor still accepts it.
        assert_eq!(
            serde_json::from_str::<CertificateNumber>("\"\\u00344052418800101001471\"").unwrap(),
            cn
        );
        let e = serde_json::from_str::<CertificateNumber>("\"44052418800101001481\"").unwrap_err();
        assert!(e.to_string().starts_with("category "), "{e}");
        let e = serde_json::from_str::<CertificateNumber>("4405241880").unwrap_err();
        assert!(
            e.to_string().contains("a 20-character certificate number"),
            "{e}"
        );
    }

    #[test]
    fn messages_say_what_to_fix() {
        let cases = [
            (
                CertNoError::Length {
                    expected: 20,
                    found: 19,
                },
                "found 19 characters (expected 20)",
            ),
            (
                CertNoError::Length {
                    expected: 18,
                    found: 3,
                },
                "a resident ID has 18 characters",
            ),
            (
                CertNoError::Character {
                    position: 0,
                    found: 'a',
                },
                "index 0 (the 1st character)",
            ),
            (
                CertNoError::Character {
                    position: 1,
                    found: 'a',
                },
                "(the 2nd character)",
            ),
            (
                CertNoError::Character {
                    position: 2,
                    found: 'a',
                },
                "(the 3rd character)",
            ),
            (
                CertNoError::Character {
                    position: 10,
                    found: 'a',
                },
                "(the 11th character)",
            ),
            (
                CertNoError::Character {
                    position: 17,
                    found: 'x',
                },
                "'x' at index 17 (the 18th",
            ),
            (
                CertNoError::Character {
                    position: 20,
                    found: 'a',
                },
                "(the 21st character)",
            ),
            (CertNoError::Region, "start with a digit from 1 to 8"),
            (
                CertNoError::Date {
                    year: 1900,
                    month: 2,
                    day: 29,
                },
                "birth date 1900-02-29",
            ),
            (
                CertNoError::CheckCharacter {
                    expected: 'X',
                    found: '1',
                },
                "call for 'X'",
            ),
            (CertNoError::Category { found: '8' }, "category '8'"),
            (CertNoError::Level { found: '5' }, "level '5'"),
        ];
        for (error, needle) in cases {
            // Through the `Error` trait object, as an `anyhow`/`Box<dyn Error>` caller sees it.
            let dyn_error: &dyn core::error::Error = &error;
            assert!(dyn_error.source().is_none());
            let text = dyn_error.to_string();
            assert!(text.contains(needle), "{text:?} lacks {needle:?}");
        }
    }

    #[test]
    fn debug_masks_the_personal_part() {
        let cn = CertificateNumber::parse("11010519491231002X42").unwrap();
        let text = std::format!("{cn:?}");
        assert!(text.contains("ResidentId(110105***********X)"), "{text}");
        assert!(!text.contains("19491231"), "{text}");
    }
}
