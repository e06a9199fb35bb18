//! Wire building blocks shared by every format: fixed byte arrays longer than serde's 32, versioned
//! bodies, and borrowed lists that are validated when decoded and read without allocation.

use core::fmt;
use core::marker::PhantomData;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeTuple, Serializer};
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::sig::Domain;

/// A fixed-size byte array encoded as exactly `N` raw bytes (postcard encodes a tuple without a
/// length). serde's own impls stop at 32 bytes, and keys (33) and signatures (64) are longer.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ByteArray<const N: usize>(pub [u8; N]);

impl<const N: usize> fmt::Debug for ByteArray<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", crate::error::Hex(&self.0))
    }
}

impl<const N: usize> Serialize for ByteArray<N> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(N)?;
        for b in &self.0 {
            t.serialize_element(b)?;
        }
        t.end()
    }
}

impl<'de, const N: usize> Deserialize<'de> for ByteArray<N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<const N: usize>;
        impl<'de, const N: usize> Visitor<'de> for V<N> {
            type Value = ByteArray<N>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{N} bytes")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = [0u8; N];
                for (i, slot) in out.iter_mut().enumerate() {
                    *slot = seq
                        .next_element()?
                        .ok_or_else(|| de::Error::invalid_length(i, &self))?;
                }
                Ok(ByteArray(out))
            }
        }
        d.deserialize_tuple(N, V::<N>)
    }
}

/// A format that travels as `version byte || postcard(fields)`.
///
/// The version is checked before postcard sees a single field, so an unknown version is reported
/// as such and not as a confusing decoding error.
pub trait Versioned<'a>: Serialize + Deserialize<'a> {
    /// The kind of object (also the domain tag when it is signed).
    const KIND: Domain;
    /// The format version this code speaks.
    const VERSION: u8;
}

/// Decodes `version || postcard(T)`, rejecting unknown versions and trailing bytes.
pub fn decode_versioned<'a, T: Versioned<'a>>(bytes: &'a [u8]) -> Result<T, Error> {
    let (&version, rest) = bytes
        .split_first()
        .ok_or(Error::Truncated { kind: T::KIND })?;
    if version != T::VERSION {
        return Err(Error::UnknownVersion {
            kind: T::KIND,
            expected: T::VERSION,
            found: version,
        });
    }
    decode_exact(T::KIND, rest)
}

/// Decodes one postcard value from the front of `bytes`, refusing non-canonical encodings.
///
/// postcard accepts over-long varints (`d4 00` for 84); we measure the decoded value again and refuse
/// it when its canonical encoding is shorter than what it consumed. So every object has exactly one
/// encoding, and a receipt or a batch cannot be re-encoded into "new" bytes with the same meaning.
pub fn take_canonical<'a, T: Deserialize<'a> + Serialize>(
    kind: Domain,
    bytes: &'a [u8],
) -> Result<(T, &'a [u8]), Error> {
    let (value, rest) =
        postcard::take_from_bytes::<T>(bytes).map_err(|e| Error::from_postcard(kind, e))?;
    let used = bytes.len() - rest.len();
    match postcard::serialize_with_flavor::<T, _, usize>(
        &value,
        postcard::ser_flavors::Size::default(),
    ) {
        Ok(n) if n == used => Ok((value, rest)),
        _ => Err(Error::Malformed { kind }),
    }
}

/// Decodes a postcard value that must use every byte of `bytes` (canonical encoding only).
pub fn decode_exact<'a, T: Deserialize<'a> + Serialize>(
    kind: Domain,
    bytes: &'a [u8],
) -> Result<T, Error> {
    let (value, rest) = take_canonical::<T>(kind, bytes)?;
    if !rest.is_empty() {
        return Err(Error::TrailingBytes {
            kind,
            count: rest.len(),
        });
    }
    Ok(value)
}

/// Encodes `version || postcard(value)` into `buf`, returning the used prefix.
pub fn encode_versioned_into<'b, 'a, T: Versioned<'a>>(
    value: &T,
    buf: &'b mut [u8],
) -> Result<&'b mut [u8], Error> {
    let (first, rest) = buf.split_first_mut().ok_or(Error::BufferTooSmall)?;
    *first = T::VERSION;
    let used = postcard::to_slice(value, rest)
        .map_err(|_| Error::BufferTooSmall)?
        .len();
    Ok(&mut buf[..1 + used])
}

/// Encodes `version || postcard(value)` into a new vector.
#[cfg(feature = "alloc")]
pub fn encode_versioned<'a, T: Versioned<'a>>(value: &T) -> alloc::vec::Vec<u8> {
    let out = alloc::vec![T::VERSION];
    // postcard's extend_vec flavour cannot fail for in-memory vectors except on serde errors,
    // which our types never raise.
    postcard::to_extend(value, out).unwrap_or_default()
}

/// Encodes a plain postcard value (no version byte) into `buf`.
pub fn encode_into<'b, T: Serialize>(value: &T, buf: &'b mut [u8]) -> Result<&'b mut [u8], Error> {
    postcard::to_slice(value, buf).map_err(|_| Error::BufferTooSmall)
}

/// Encodes a plain postcard value (no version byte) into a new vector.
#[cfg(feature = "alloc")]
pub fn encode<T: Serialize>(value: &T) -> alloc::vec::Vec<u8> {
    postcard::to_allocvec(value).unwrap_or_default()
}

/// A list of `count` postcard-encoded items stored back to back in `bytes`.
///
/// Wire form: `varint(count) || varint(len) || len bytes`. Decoding checks that the bytes hold exactly
/// `count` well-formed items, so iterating afterwards cannot fail; the items are decoded again on
/// each pass (lists live in flash on a terminal, and RAM is the scarce resource there).
pub struct Items<'a, T> {
    count: u32,
    bytes: &'a [u8],
    _item: PhantomData<fn() -> T>,
}

impl<T> Clone for Items<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Items<'_, T> {}

impl<T> fmt::Debug for Items<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Items({} in {} bytes)", self.count, self.bytes.len())
    }
}

impl<T> PartialEq for Items<'_, T> {
    fn eq(&self, other: &Self) -> bool {
        self.count == other.count && self.bytes == other.bytes
    }
}
impl<T> Eq for Items<'_, T> {}

impl<'a, T: Deserialize<'a> + Serialize> Items<'a, T> {
    /// Wraps already-concatenated item encodings after checking them (`count` items, nothing left).
    pub fn new(count: u32, bytes: &'a [u8], kind: Domain) -> Result<Self, Error> {
        let mut rest = bytes;
        for _ in 0..count {
            let (_, r) = take_canonical::<T>(kind, rest)?;
            rest = r;
        }
        if !rest.is_empty() {
            return Err(Error::TrailingBytes {
                kind,
                count: rest.len(),
            });
        }
        Ok(Items {
            count,
            bytes,
            _item: PhantomData,
        })
    }

    /// The empty list.
    pub fn empty() -> Self {
        Items {
            count: 0,
            bytes: &[],
            _item: PhantomData,
        }
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The concatenated item encodings.
    pub fn raw(&self) -> &'a [u8] {
        self.bytes
    }

    /// The items, decoded one by one.
    pub fn iter(&self) -> ItemsIter<'a, T> {
        ItemsIter {
            left: self.count,
            rest: self.bytes,
            _item: PhantomData,
        }
    }
}

/// Iterator over [`Items`].
pub struct ItemsIter<'a, T> {
    left: u32,
    rest: &'a [u8],
    _item: PhantomData<fn() -> T>,
}

impl<'a, T: Deserialize<'a>> Iterator for ItemsIter<'a, T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // Checked in `Items::new`; a failure here would mean the bytes changed under us, and
        // ending the iteration is the safe answer.
        match postcard::take_from_bytes::<T>(self.rest) {
            Ok((item, rest)) => {
                self.rest = rest;
                Some(item)
            }
            Err(_) => {
                self.left = 0;
                None
            }
        }
    }
}

#[derive(Serialize, Deserialize)]
struct RawItems<'a> {
    count: u32,
    #[serde(borrow)]
    bytes: &'a [u8],
}

impl<T> Serialize for Items<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        RawItems {
            count: self.count,
            bytes: self.bytes,
        }
        .serialize(s)
    }
}

impl<'de: 'a, 'a, T: Deserialize<'a> + Serialize> Deserialize<'de> for Items<'a, T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawItems::deserialize(d)?;
        Items::new(raw.count, raw.bytes, Domain::None)
            .map_err(|_| de::Error::custom("malformed list item"))
    }
}

/// Builds the bytes of an [`Items`] list on the heap.
#[cfg(feature = "alloc")]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ItemsBuf {
    count: u32,
    bytes: alloc::vec::Vec<u8>,
}

#[cfg(feature = "alloc")]
impl ItemsBuf {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one item.
    pub fn push<T: Serialize>(&mut self, item: &T) {
        self.bytes.extend_from_slice(&encode(item));
        self.count += 1;
    }

    /// A borrowed view for embedding in a body.
    pub fn as_items<'a, T: Deserialize<'a> + Serialize>(&'a self) -> Items<'a, T> {
        Items {
            count: self.count,
            bytes: &self.bytes,
            _item: PhantomData,
        }
    }
}

#[cfg(feature = "alloc")]
impl<T: Serialize> FromIterator<T> for ItemsBuf {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        let mut b = ItemsBuf::new();
        for item in iter {
            b.push(&item);
        }
        b
    }
}

/// Builds the bytes of an [`Items`] list in a caller's buffer (no allocation: card and terminal).
pub struct ItemsWriter<'b> {
    count: u32,
    used: usize,
    buf: &'b mut [u8],
}

impl<'b> ItemsWriter<'b> {
    /// Starts an empty list in `buf`.
    pub fn new(buf: &'b mut [u8]) -> Self {
        ItemsWriter {
            count: 0,
            used: 0,
            buf,
        }
    }

    /// Appends one item.
    pub fn push<T: Serialize>(&mut self, item: &T) -> Result<(), Error> {
        let n = postcard::to_slice(item, &mut self.buf[self.used..])
            .map_err(|_| Error::BufferTooSmall)?
            .len();
        self.used += n;
        self.count += 1;
        Ok(())
    }

    /// Appends one item that is already encoded.
    pub fn push_encoded(&mut self, encoded: &[u8]) -> Result<(), Error> {
        let end = self.used + encoded.len();
        self.buf
            .get_mut(self.used..end)
            .ok_or(Error::BufferTooSmall)?
            .copy_from_slice(encoded);
        self.used = end;
        self.count += 1;
        Ok(())
    }

    /// Finishes the list, checking the items decode as `T`.
    pub fn finish<'a, T: Deserialize<'a> + Serialize>(
        self,
        kind: Domain,
    ) -> Result<Items<'a, T>, Error>
    where
        'b: 'a,
    {
        let buf: &'b [u8] = self.buf;
        Items::new(self.count, &buf[..self.used], kind)
    }
}
