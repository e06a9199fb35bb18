//! The host side of personalization (card-tool, the terminal tests, the in-memory card), generic
//! over [`Transport`] and `no_std`.
//!
//! Two phases, so that the caller can talk to the issuance server in between:
//! 1. [`begin_personalization`]: SELECT (the card must be BLANK), INITIALIZE UPDATE and EXTERNAL
//!    AUTHENTICATE at security level 0x33 with the card's static keys, GENERATE KEY PAIR -> the
//!    card's public key (send it to the server, get the credential back).
//! 2. [`PersoSession::finish`]: PUT DATA credential, disclosures, root key, purse; SET STATUS lock.
//!
//! A failure anywhere leaves a BLANK card; the caller starts again at phase 1 (a new secure channel
//! and a new key pair, which wipes whatever the earlier attempt wrote). Every protected command is
//! at most [`MAX_PLAIN_DATA`] plain bytes per APDU; longer data goes out as a chain of protected
//! APDUs (each with its own C-MAC, CLA bit 0x10 on all but the last).

use rand_core::CryptoRng;
use shared_crypto::apdu::{self, exchange, select_command, Transport, WireStats};
use shared_crypto::model::{
    AttributeDigest, AttributeId, CardSerial, CredentialBody, Disclosure, LifeCycle, SelectResponse,
};
use shared_crypto::scp03::{
    level, HostInit, HostSession, KeySet, Scp03Error, StaticKeys, DIV_DATA_LEN, MAX_PLAIN_DATA,
};
use shared_crypto::sig::{sign_into, PublicKey, Signer};
use shared_crypto::wire::{decode_versioned, encode_into, ItemsWriter};

use crate::{ins, tag, KVN};

/// Why a host-side step failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HostError<E> {
    /// The transport failed (reader gone, card left the field).
    Transport(E),
    /// The card refused with this status word.
    Status(u16),
    /// Secure channel failure (wrong static keys, bad R-MAC, ...).
    Scp(Scp03Error),
    /// The card's answer does not have the expected form.
    Malformed,
    /// The card is not BLANK (personalization is refused once PERSONALIZED).
    NotBlank(LifeCycle),
    /// Local data does not fit the encoding buffers (too many or too long attributes).
    Encoding,
    /// The issuer signer failed.
    Sign,
}

impl<E: core::fmt::Debug> core::fmt::Display for HostError<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            HostError::Transport(e) => write!(f, "transport error: {e:?}"),
            HostError::Status(sw) => write!(f, "card refused with status {sw:04X}"),
            HostError::Scp(e) => write!(f, "secure channel: {e}"),
            HostError::Malformed => f.write_str("malformed card answer"),
            HostError::NotBlank(lc) => write!(f, "card is not blank (life cycle {lc:?})"),
            HostError::Encoding => f.write_str("personalization data too large"),
            HostError::Sign => f.write_str("issuer signing failed"),
        }
    }
}

impl<E: core::fmt::Debug> core::error::Error for HostError<E> {}

impl<E> From<Scp03Error> for HostError<E> {
    fn from(e: Scp03Error) -> Self {
        HostError::Scp(e)
    }
}

impl<E> From<apdu::ExchangeError<E>> for HostError<E> {
    fn from(e: apdu::ExchangeError<E>) -> Self {
        match e {
            apdu::ExchangeError::Transport(e) => HostError::Transport(e),
            apdu::ExchangeError::Status(sw) => HostError::Status(sw),
            apdu::ExchangeError::ResponseTooLong | apdu::ExchangeError::Malformed => {
                HostError::Malformed
            }
        }
    }
}

/// SELECTs the applet and decodes its answer. A BLOCKED card gives `Status(0x6283)`.
pub fn select<T: Transport>(t: &mut T) -> Result<SelectResponse, HostError<T::Error>> {
    let mut stats = WireStats::default();
    let cmd = select_command();
    let mut out = [0u8; 64];
    let n = exchange(
        t,
        cmd[0],
        cmd[1],
        cmd[2],
        cmd[3],
        &cmd[5..11],
        true,
        &mut out,
        &mut stats,
    )?;
    decode_versioned(&out[..n]).map_err(|_| HostError::Malformed)
}

/// SELECT, then GET DATA 'CF': the 10 bytes of key diversification data of a BLANK card (what the
/// server's personalization job needs to derive the card's static keys).
pub fn read_div_data<T: Transport>(t: &mut T) -> Result<[u8; DIV_DATA_LEN], HostError<T::Error>> {
    let sel = select(t)?;
    if sel.life_cycle != LifeCycle::Blank {
        return Err(HostError::NotBlank(sel.life_cycle));
    }
    let mut stats = WireStats::default();
    let mut out = [0u8; 32];
    let n = exchange(
        t,
        apdu::CLA_PROPRIETARY,
        ins::GET_DATA,
        0x00,
        tag::DIV_DATA,
        &[],
        true,
        &mut out,
        &mut stats,
    )?;
    out[..n].try_into().map_err(|_| HostError::Malformed)
}

/// An open SCP03 session (level 0x33) on a BLANK card whose key pair was generated.
#[derive(Clone, Copy, Debug)]
pub struct PersoSession {
    scp: HostSession,
    div_data: [u8; DIV_DATA_LEN],
    card_key: PublicKey,
}

/// What phase 2 writes.
#[derive(Clone, Copy, Debug)]
pub struct PersoData<'a> {
    /// Wire bytes of the issuer-signed `Signed<CredentialBody>` for this card's key.
    pub credential: &'a [u8],
    /// One disclosure per attribute the credential covers (any order; sent in id order).
    pub disclosures: &'a [Disclosure<'a>],
    /// The root public key.
    pub root_key: PublicKey,
    /// Initial welfare points.
    pub initial_points: u32,
}

/// Phase 1: SELECT (the card must be BLANK), open SCP03 at level 0x33 with `keys` (key version
/// [`KVN`]), GENERATE KEY PAIR. Returns the session and the card's new public key.
pub fn begin_personalization<T: Transport, R: CryptoRng>(
    t: &mut T,
    rng: &mut R,
    keys: &StaticKeys,
) -> Result<(PersoSession, PublicKey), HostError<T::Error>> {
    let sel = select(t)?;
    if sel.life_cycle != LifeCycle::Blank {
        return Err(HostError::NotBlank(sel.life_cycle));
    }
    let mut host_challenge = [0u8; 8];
    rng.fill_bytes(&mut host_challenge);
    let init = HostInit::new(KVN, host_challenge);
    let mut rsp = [0u8; 64];
    let (n, sw) = transmit(t, &init.command(), &mut rsp)?;
    if sw != apdu::sw::OK {
        return Err(HostError::Status(sw));
    }
    let keyset = KeySet::from_static(KVN, keys);
    let (scp, info, ext_auth) = init.authenticate(&keyset, &rsp[..n], level::FULL)?;
    let (_, sw) = transmit(t, &ext_auth, &mut rsp)?;
    if sw != apdu::sw::OK {
        return Err(HostError::Status(sw));
    }
    let mut scp = scp;
    let mut out = [0u8; 64];
    let n = send_protected(
        &mut scp,
        t,
        ins::GENERATE_KEY_PAIR,
        tag::GENERATE_P1,
        0x00,
        &[],
        true,
        &mut out,
    )?;
    let card_key = PublicKey::from_sec1(&out[..n]).map_err(|_| HostError::Malformed)?;
    Ok((
        PersoSession {
            scp,
            div_data: info.div_data,
            card_key,
        },
        card_key,
    ))
}

impl PersoSession {
    /// The card's key diversification data (from INITIALIZE UPDATE).
    pub fn div_data(&self) -> [u8; DIV_DATA_LEN] {
        self.div_data
    }

    /// The card public key generated in phase 1.
    pub fn card_key(&self) -> PublicKey {
        self.card_key
    }

    /// Phase 2: PUT DATA credential, disclosures, root key, purse, then SET STATUS (lock). The
    /// card checks that the credential certifies its key and that the disclosures match it.
    pub fn finish<T: Transport>(
        mut self,
        t: &mut T,
        data: &PersoData<'_>,
    ) -> Result<(), HostError<T::Error>> {
        let mut disc = [0u8; 1024];
        let dn =
            encode_disclosures(data.disclosures, &mut disc).map_err(|_| HostError::Encoding)?;
        let mut none = [0u8; 16];
        let p1 = tag::PUT_DATA_P1;
        send_protected(
            &mut self.scp,
            t,
            ins::PUT_DATA,
            p1,
            tag::CREDENTIAL,
            data.credential,
            false,
            &mut none,
        )?;
        send_protected(
            &mut self.scp,
            t,
            ins::PUT_DATA,
            p1,
            tag::DISCLOSURES,
            &disc[..dn],
            false,
            &mut none,
        )?;
        send_protected(
            &mut self.scp,
            t,
            ins::PUT_DATA,
            p1,
            tag::ROOT_KEY,
            &data.root_key.to_sec1(),
            false,
            &mut none,
        )?;
        send_protected(
            &mut self.scp,
            t,
            ins::PUT_DATA,
            p1,
            tag::PURSE,
            &data.initial_points.to_be_bytes(),
            false,
            &mut none,
        )?;
        send_protected(
            &mut self.scp,
            t,
            ins::SET_STATUS,
            tag::SET_STATUS_P1,
            tag::SET_STATUS_PERSONALIZED,
            &[],
            false,
            &mut none,
        )?;
        Ok(())
    }
}

/// Sends one protected command (chained when longer than [`MAX_PLAIN_DATA`]) and returns the
/// unprotected answer of the last block in `out`.
#[allow(clippy::too_many_arguments)] // mirrors the APDU header fields
fn send_protected<T: Transport>(
    scp: &mut HostSession,
    t: &mut T,
    ins: u8,
    p1: u8,
    p2: u8,
    data: &[u8],
    le: bool,
    out: &mut [u8],
) -> Result<usize, HostError<T::Error>> {
    let mut chunks = data.chunks(MAX_PLAIN_DATA).peekable();
    loop {
        let chunk = chunks.next().unwrap_or(&[]);
        let last = chunks.peek().is_none();
        let mut plain = [0u8; 5 + MAX_PLAIN_DATA + 1];
        plain[0] = if last {
            apdu::CLA_PROPRIETARY
        } else {
            apdu::CLA_PROPRIETARY | apdu::CLA_CHAINING
        };
        plain[1] = ins;
        plain[2] = p1;
        plain[3] = p2;
        let mut n = 4;
        if !chunk.is_empty() {
            plain[4] = chunk.len() as u8;
            plain[5..5 + chunk.len()].copy_from_slice(chunk);
            n += 1 + chunk.len();
        }
        if last && le {
            plain[n] = 0x00;
            n += 1;
        }
        let mut wrapped = [0u8; 5 + 256 + 1];
        let wn = scp.wrap_command(&plain[..n], &mut wrapped)?;
        let mut rsp = [0u8; 512];
        let (rn, sw) = transmit_collect(t, &wrapped[..wn], &mut rsp)?;
        let mut plain_rsp = [0u8; 512];
        let pn = scp.unwrap_response(&rsp[..rn], sw, &mut plain_rsp)?;
        if sw != apdu::sw::OK {
            return Err(HostError::Status(sw));
        }
        if last {
            let o = out.get_mut(..pn).ok_or(HostError::Malformed)?;
            o.copy_from_slice(&plain_rsp[..pn]);
            return Ok(pn);
        }
    }
}

/// Sends one APDU, returning the answer's data length in `out` and its status word.
pub fn transmit<T: Transport>(
    t: &mut T,
    command: &[u8],
    out: &mut [u8],
) -> Result<(usize, u16), HostError<T::Error>> {
    let mut rsp = [0u8; 258];
    let got = t
        .transceive(command, &mut rsp)
        .map_err(HostError::Transport)?;
    if !(2..=rsp.len()).contains(&got) {
        return Err(HostError::Malformed);
    }
    let sw = u16::from_be_bytes([rsp[got - 2], rsp[got - 1]]);
    let n = got - 2;
    out.get_mut(..n)
        .ok_or(HostError::Malformed)?
        .copy_from_slice(&rsp[..n]);
    Ok((n, sw))
}

/// Like [`transmit`], following `61xx` with GET RESPONSE and concatenating the pieces.
fn transmit_collect<T: Transport>(
    t: &mut T,
    command: &[u8],
    out: &mut [u8],
) -> Result<(usize, u16), HostError<T::Error>> {
    let (mut total, mut sw) = transmit(t, command, out)?;
    // Bounded: a card that keeps announcing data without sending any cannot hold us forever.
    let mut rounds = 0;
    while sw >> 8 == 0x61 {
        rounds += 1;
        if rounds > 32 {
            return Err(HostError::Malformed);
        }
        let get = [
            apdu::CLA_ISO,
            apdu::INS_GET_RESPONSE,
            0,
            0,
            (sw & 0xFF) as u8,
        ];
        let rest = out.get_mut(total..).ok_or(HostError::Malformed)?;
        let (n, s) = transmit(t, &get, rest)?;
        total += n;
        sw = s;
    }
    Ok((total, sw))
}

/// Encodes disclosures as the card stores them: `postcard(Items<Disclosure>)` in attribute-id
/// order. Returns the length written to `out`.
pub fn encode_disclosures(
    disclosures: &[Disclosure<'_>],
    out: &mut [u8],
) -> Result<usize, shared_crypto::Error> {
    let mut scratch = [0u8; 1024];
    let mut w = ItemsWriter::new(&mut scratch);
    for id in AttributeId::ALL {
        for d in disclosures.iter().filter(|d| d.attribute == *id) {
            w.push(d)?;
        }
    }
    let items = w.finish::<Disclosure<'_>>(shared_crypto::sig::Domain::None)?;
    Ok(encode_into(&items, out)?.len())
}

/// Everything a test personalization needs besides the transport (see [`personalize`]).
#[derive(Clone, Copy, Debug)]
pub struct CardProfile<'a> {
    /// The card's serial number.
    pub card_serial: CardSerial,
    /// Position in the status list.
    pub status_index: u32,
    /// Start of validity.
    pub valid_from: u64,
    /// End of validity.
    pub valid_until: u64,
    /// The attributes (salt and canonical value each).
    pub disclosures: &'a [Disclosure<'a>],
    /// The root public key the card will trust.
    pub root_key: PublicKey,
    /// Initial welfare points.
    pub initial_points: u32,
}

/// Both phases in one go with a local issuer key instead of the server (terminal tests, the
/// in-memory card): phase 1, then the credential `{serial, status index, validity, card key,
/// digests}` signed by `issuer`, then phase 2. Returns the card's public key.
pub fn personalize<T: Transport, R: CryptoRng, S: Signer + ?Sized>(
    t: &mut T,
    rng: &mut R,
    keys: &StaticKeys,
    issuer: &S,
    profile: &CardProfile<'_>,
) -> Result<PublicKey, HostError<T::Error>> {
    let (session, card_key) = begin_personalization(t, rng, keys)?;
    let mut digests = [0u8; 256];
    let mut w = ItemsWriter::new(&mut digests);
    for id in AttributeId::ALL {
        for d in profile.disclosures.iter().filter(|d| d.attribute == *id) {
            w.push(&AttributeDigest {
                attribute: d.attribute,
                digest: d.digest(),
            })
            .map_err(|_| HostError::Encoding)?;
        }
    }
    let digests = w
        .finish::<AttributeDigest>(shared_crypto::sig::Domain::Credential)
        .map_err(|_| HostError::Encoding)?;
    let body = CredentialBody {
        card_serial: profile.card_serial,
        status_index: profile.status_index,
        valid_from: profile.valid_from,
        valid_until: profile.valid_until,
        card_key: card_key.to_bytes(),
        digests,
    };
    let mut scratch = [0u8; 512];
    let mut cred = [0u8; 512];
    let cred = sign_into(&body, &[], issuer, &mut scratch, &mut cred).map_err(|e| match e {
        shared_crypto::Error::Signature => HostError::Sign,
        _ => HostError::Encoding,
    })?;
    session.finish(
        t,
        &PersoData {
            credential: cred,
            disclosures: profile.disclosures,
            root_key: profile.root_key,
            initial_points: profile.initial_points,
        },
    )?;
    Ok(card_key)
}
