//! The applet: APDU framing (command chaining, `61xx`/GET RESPONSE, SCP03 unwrapping), the life
//! cycle gate, and one handler per command.
//!
//! Layers, outside in: [`Applet::process`] parses the short APDU and serves GET RESPONSE; secure
//! messaging (CLA bit 0x04) is removed by the SCP03 [`CardSession`]; chained blocks (CLA bit 0x10)
//! are collected; then `Card::dispatch` checks selection and life cycle and calls the handler.
//! Handlers return `Result<usize, u16>`: the answer length in the output buffer, or the ISO status
//! word of the refusal. Nothing on these paths panics: every index is checked and every decoder
//! refuses trailing bytes.

use rand_core::CryptoRng;
use shared_crypto::apdu::{self, sw as isw, AID};
use shared_crypto::model::{
    decode_command, decode_plain, transcript_hash, AttributeSet, BlockCommand, CardBlockBody,
    CardSerial, CredentialBody, CreditCommand, DebitIntent, DebitRequest, Disclosure,
    KeyCertificate, LifeCycle, PurseState, ReceiptBody, Role, SelectResponse, Service, ServiceSet,
    TapRequestBody, TapResponseBody, TerminalAuth, VoucherBody, NONCE_LEN,
};
use shared_crypto::scp03::{
    self, i_param, level, CardInit, CardSession, KeySet, ShortApdu, StaticKeys, DIV_DATA_LEN,
};
use shared_crypto::sig::{sha256_parts, sign_into, KeyId, P256Signer, PublicKey, Signed};
use shared_crypto::wire::{encode_versioned_into, Items, ItemsWriter};
use shared_crypto::Error as FormatError;

use crate::store::{self, RecordId, Store, StoreError, MAX_PAYLOAD};
use crate::{ins, sw, tag};

/// Applet version in the SELECT answer (major * 16 + minor): 1.0.
pub const APPLET_VERSION: u8 = 0x10;
/// Key version number of the card's SCP03 static keys.
pub const KVN: u8 = 0x30;
/// Size of a response buffer that holds any single answer (256 data bytes + SW1 SW2).
pub const MAX_RESPONSE: usize = 258;
/// Verified key certificates kept in RAM (by SHA-256 of the certificate envelope).
pub const CERT_CACHE_ENTRIES: usize = 4;

/// "i" parameter announced in INITIALIZE UPDATE: random card challenge, R-MAC and R-ENC supported.
const I_PARAM: u8 = i_param::R_MAC | i_param::R_ENCRYPTION;
/// Longest command data after chaining (TERMINAL AUTHENTICATE is ~300 bytes, disclosures < 648).
const CHAIN_MAX: usize = 1024;
/// Longest answer before GET RESPONSE splitting (a tap answer with every attribute is < 1300).
const OUT_MAX: usize = 1408;
/// Longest stored receipt (`Signed<ReceiptBody>` is about 130 bytes).
const RECEIPT_MAX: usize = 160;

const CLA_CHAIN: u8 = apdu::CLA_CHAINING;
const CLA_SM: u8 = scp03::CLA_SECURE_MESSAGING;

type Sw = u16;

fn mem(_: StoreError) -> Sw {
    sw::MEMORY_FAILURE
}

/// Signature failures are a security matter (6982); anything else is malformed data (6A80).
fn sig_err(e: FormatError) -> Sw {
    match e {
        FormatError::Signature | FormatError::WrongSigner { .. } => isw::SECURITY_STATUS,
        _ => isw::WRONG_DATA,
    }
}

/// A command after secure messaging and chaining were removed.
#[derive(Clone, Copy)]
struct Cmd<'a> {
    /// Class without the chaining and secure-messaging bits.
    cla: u8,
    /// Whether it arrived under SCP03 secure messaging (C-MAC verified).
    sm: bool,
    ins: u8,
    p1: u8,
    p2: u8,
    data: &'a [u8],
}

impl Cmd<'_> {
    fn p1p2(&self, p1: u8, p2: u8) -> Result<(), Sw> {
        if self.p1 == p1 && self.p2 == p2 {
            Ok(())
        } else {
            Err(isw::WRONG_P1P2)
        }
    }

    fn no_data(&self) -> Result<(), Sw> {
        if self.data.is_empty() {
            Ok(())
        } else {
            Err(isw::WRONG_LENGTH)
        }
    }
}

/// The tap session opened by a successful TERMINAL AUTHENTICATE: everything in it was signed by
/// the terminal over this session's challenge.
#[derive(Clone, Copy, Debug)]
struct TapSession {
    service: Service,
    terminal: KeyId,
    /// The request's time: the time of a receipt signed in this session.
    time: u64,
    /// The one debit this session may perform; taken by the DEBIT that uses it.
    intent: Option<DebitIntent>,
}

/// A verified key certificate kept in RAM.
#[derive(Clone, Copy, Debug)]
struct CachedCert {
    /// SHA-256 of `signer || body || sig` of the envelope that verified.
    digest: [u8; 32],
    role: Role,
    key: PublicKey,
    key_id: KeyId,
    services: ServiceSet,
    valid_from: u64,
    valid_until: u64,
}

impl CachedCert {
    fn valid_at(&self, t: u64) -> bool {
        self.valid_from <= t && t <= self.valid_until
    }
}

#[derive(Clone, Copy, Debug)]
enum Scp {
    None,
    Init(CardInit),
    Open(CardSession),
}

/// Debits whose receipts the purse keeps for a retry (docs/protocol-card.md, DEBIT): a terminal
/// retrying an interrupted debit gets its stored receipt even when the card has paid elsewhere
/// since, up to this many debits later.
pub const RECENT_DEBITS: usize = 3;

/// A debit the purse remembers: the terminal's reference and amount, and the receipt signed.
#[derive(Clone, Copy, Debug)]
struct Recent {
    reference: [u8; NONCE_LEN],
    amount: u32,
    receipt_len: usize,
    receipt: [u8; RECEIPT_MAX],
}

/// The purse record.
#[derive(Clone, Copy, Debug)]
struct Purse {
    balance: u32,
    counter: u32,
    voucher_seq: u32,
    /// The last debits, newest first (`recent_len` of them).
    recent: [Recent; RECENT_DEBITS],
    recent_len: usize,
}

// Purse payload: gen u32 | balance u32 | counter u32 | voucher_seq u32 | count u8 | then, newest
// first, count times: reference [16] | amount u32 | receipt_len u16 | receipt. (Applet 1.0 kept
// one debit in this layout with count 0 or 1; with 0 it wrote one all-zero entry, read as none.)
const PURSE_HEAD: usize = 4 + 4 + 4 + 4 + 1;
const RECENT_FIXED: usize = 16 + 4 + 2;
/// Largest purse payload.
const PURSE_MAX: usize = PURSE_HEAD + RECENT_DEBITS * (RECENT_FIXED + RECEIPT_MAX);
const _: () = assert!(PURSE_MAX <= store::PURSE_CAPACITY);

const NO_RECENT: Recent = Recent {
    reference: [0u8; NONCE_LEN],
    amount: 0,
    receipt_len: 0,
    receipt: [0u8; RECEIPT_MAX],
};

impl Purse {
    fn new(balance: u32) -> Self {
        Purse {
            balance,
            counter: 0,
            voucher_seq: 0,
            recent: [NO_RECENT; RECENT_DEBITS],
            recent_len: 0,
        }
    }

    /// The remembered debit with `reference`, if any.
    fn recent(&self, reference: &[u8; NONCE_LEN]) -> Option<&Recent> {
        self.recent[..self.recent_len]
            .iter()
            .find(|r| &r.reference == reference)
    }

    /// Remembers a debit as the newest; the oldest is forgotten when all are taken.
    fn remember(&mut self, debit: Recent) {
        self.recent.copy_within(0..RECENT_DEBITS - 1, 1);
        self.recent[0] = debit;
        self.recent_len = (self.recent_len + 1).min(RECENT_DEBITS);
    }

    fn encode(&self, gen: u32, out: &mut [u8; PURSE_MAX]) -> usize {
        out[0..4].copy_from_slice(&gen.to_be_bytes());
        out[4..8].copy_from_slice(&self.balance.to_be_bytes());
        out[8..12].copy_from_slice(&self.counter.to_be_bytes());
        out[12..16].copy_from_slice(&self.voucher_seq.to_be_bytes());
        out[16] = self.recent_len as u8;
        let mut at = PURSE_HEAD;
        for r in &self.recent[..self.recent_len] {
            let n = r.receipt_len.min(RECEIPT_MAX);
            out[at..at + 16].copy_from_slice(&r.reference);
            out[at + 16..at + 20].copy_from_slice(&r.amount.to_be_bytes());
            out[at + 20..at + 22].copy_from_slice(&(n as u16).to_be_bytes());
            out[at + 22..at + 22 + n].copy_from_slice(&r.receipt[..n]);
            at += RECENT_FIXED + n;
        }
        at
    }

    /// Decodes a payload whose generation was already checked.
    fn decode(p: &[u8]) -> Option<Self> {
        let head = p.get(..PURSE_HEAD)?;
        let u32_at =
            |i: usize| u32::from_be_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
        let count = usize::from(head[16]);
        if count > RECENT_DEBITS {
            return None;
        }
        let mut purse = Purse::new(u32_at(4));
        purse.counter = u32_at(8);
        purse.voucher_seq = u32_at(12);
        let mut rest = &p[PURSE_HEAD..];
        for _ in 0..count {
            let fixed = rest.get(..RECENT_FIXED)?;
            let n = usize::from(u16::from_be_bytes([fixed[20], fixed[21]]));
            if n > RECEIPT_MAX {
                return None;
            }
            let receipt = rest.get(RECENT_FIXED..RECENT_FIXED + n)?;
            let mut r = NO_RECENT;
            r.reference.copy_from_slice(&fixed[..16]);
            r.amount = u32::from_be_bytes([fixed[16], fixed[17], fixed[18], fixed[19]]);
            r.receipt_len = n;
            r.receipt[..n].copy_from_slice(receipt);
            purse.recent[purse.recent_len] = r;
            purse.recent_len += 1;
            rest = &rest[RECENT_FIXED + n..];
        }
        let rest_ok = rest.is_empty() || (count == 0 && rest == [0u8; RECENT_FIXED]);
        rest_ok.then_some(purse)
    }
}

/// The factory record: kvn, static keys, key diversification data.
struct Factory {
    keys: KeySet,
    div_data: [u8; DIV_DATA_LEN],
}

/// Everything but the framing buffers: store, RNG and RAM state.
struct Card<S, R> {
    store: S,
    rng: R,
    selected: bool,
    challenge: Option<[u8; NONCE_LEN]>,
    tap: Option<TapSession>,
    scp: Scp,
    /// Set by SET STATUS: close the secure channel once its answer is wrapped.
    close_scp: bool,
    cache: [Option<CachedCert>; CERT_CACHE_ENTRIES],
    cache_next: usize,
    pk_ops: u32,
}

/// The card applet over store `S` with random source `R`.
///
/// One call of [`Applet::process`] is one APDU. State that a card keeps in RAM (selection,
/// challenge, tap session, secure channel, chaining, pending answer, certificate cache) is lost at
/// [`Applet::power_on`]; everything else is in the store.
pub struct Applet<S: Store, R: CryptoRng> {
    card: Card<S, R>,
    chain: [u8; CHAIN_MAX],
    /// Header (CLA without chaining bit, INS, P1, P2) and length of the chain in progress.
    chain_state: Option<([u8; 4], usize)>,
    out: [u8; OUT_MAX],
    out_len: usize,
    out_pos: usize,
    out_sw: u16,
}

impl<S: Store, R: CryptoRng> core::fmt::Debug for Applet<S, R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Applet")
            .field("selected", &self.card.selected)
            .field("tap", &self.card.tap)
            .field("pk_ops", &self.card.pk_ops)
            .finish_non_exhaustive()
    }
}

impl<S: Store, R: CryptoRng> Applet<S, R> {
    /// An applet over an existing store (a card that was made before). A store without the
    /// factory records answers every command with 6985.
    pub fn new(store: S, rng: R) -> Self {
        Applet {
            card: Card {
                store,
                rng,
                selected: false,
                challenge: None,
                tap: None,
                scp: Scp::None,
                close_scp: false,
                cache: [None; CERT_CACHE_ENTRIES],
                cache_next: 0,
                pk_ops: 0,
            },
            chain: [0u8; CHAIN_MAX],
            chain_state: None,
            out: [0u8; OUT_MAX],
            out_len: 0,
            out_pos: 0,
            out_sw: isw::OK,
        }
    }

    /// The factory step: formats `store` (erasing every record) for a BLANK card with SCP03 static
    /// keys `keys` (key version [`KVN`]) and key diversification data `div_data`.
    pub fn new_blank(
        mut store: S,
        rng: R,
        keys: &StaticKeys,
        div_data: [u8; DIV_DATA_LEN],
    ) -> Result<Self, StoreError> {
        if store.capacity() < store::LAYOUT_SIZE {
            return Err(StoreError::TooSmall);
        }
        for id in RecordId::ALL {
            store::erase(&mut store, id)?;
        }
        let mut f = [0u8; 59];
        f[0] = KVN;
        f[1..17].copy_from_slice(&keys.enc);
        f[17..33].copy_from_slice(&keys.mac);
        f[33..49].copy_from_slice(&keys.dek);
        f[49..59].copy_from_slice(&div_data);
        store::commit(&mut store, RecordId::Factory, &f)?;
        store::commit(&mut store, RecordId::State, &[LifeCycle::Blank as u8])?;
        Ok(Self::new(store, rng))
    }

    /// Power-up (the card entered the field): clears every RAM state, the certificate cache and
    /// the public-key operation count included.
    pub fn power_on(&mut self) {
        self.reset();
        self.card.cache = [None; CERT_CACHE_ENTRIES];
        self.card.cache_next = 0;
        self.card.pk_ops = 0;
    }

    /// Warm reset: clears selection, challenge, tap session, secure channel, chaining and any
    /// pending answer. The cache of verified certificates (public data) is kept.
    pub fn reset(&mut self) {
        self.card.selected = false;
        self.card.challenge = None;
        self.card.tap = None;
        self.card.scp = Scp::None;
        self.card.close_scp = false;
        self.chain_state = None;
        self.clear_out();
    }

    /// Processes one command APDU and writes the answer (data, then SW1 SW2) into `response`,
    /// returning its length. Answers longer than `response` allows (or than Le) are split with
    /// `61xx` / GET RESPONSE. Returns 0 only if `response` is shorter than 2 bytes.
    pub fn process(&mut self, command: &[u8], response: &mut [u8]) -> usize {
        let Some(cap) = response.len().checked_sub(2) else {
            return 0;
        };
        let (n, sw) = self.process_inner(command, &mut response[..cap]);
        let n = n.min(cap);
        response[n..n + 2].copy_from_slice(&sw.to_be_bytes());
        n + 2
    }

    /// Life cycle, or `None` when the store holds no formatted card (or cannot be read).
    pub fn life_cycle(&self) -> Option<LifeCycle> {
        self.card.life_cycle().ok().flatten()
    }

    /// The purse balance, once the purse is written.
    pub fn balance(&self) -> Option<u32> {
        self.card.purse_inspect().map(|p| p.balance)
    }

    /// The debit counter, once the purse is written.
    pub fn counter(&self) -> Option<u32> {
        self.card.purse_inspect().map(|p| p.counter)
    }

    /// Sequence number of the last voucher credited (0 before any).
    pub fn voucher_seq(&self) -> Option<u32> {
        self.card.purse_inspect().map(|p| p.voucher_seq)
    }

    /// The card's public key, once generated.
    pub fn card_public_key(&self) -> Option<PublicKey> {
        let mut buf = [0u8; MAX_PAYLOAD];
        let k = self.card.card_key(&mut buf).ok().flatten()?;
        PublicKey::from_sec1(&k.public).ok()
    }

    /// The highest authenticated time the card has seen (0 before any).
    pub fn last_seen_time(&self) -> u64 {
        self.card.last_seen().unwrap_or(0)
    }

    /// Public-key operations (signature verifications and signatures) since [`Applet::power_on`].
    pub fn public_key_ops(&self) -> u32 {
        self.card.pk_ops
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.card.store
    }

    /// The store, mutably (tests arm power cuts through it).
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.card.store
    }

    /// Gives the store back.
    pub fn into_store(self) -> S {
        self.card.store
    }

    fn clear_out(&mut self) {
        self.out_len = 0;
        self.out_pos = 0;
        self.out_sw = isw::OK;
    }

    fn process_inner(&mut self, command: &[u8], resp: &mut [u8]) -> (usize, Sw) {
        let Ok(apdu) = ShortApdu::parse(command) else {
            self.clear_out();
            self.chain_state = None;
            return (0, isw::WRONG_LENGTH);
        };
        let [cla, ins_byte, p1, p2] = apdu.header;
        if cla == apdu::CLA_ISO && ins_byte == apdu::INS_GET_RESPONSE {
            return self.get_response(p1, p2, &apdu, resp);
        }
        self.clear_out();
        // Valid classes: 00 / 80, with the chaining bit and (80 only) the secure-messaging bit;
        // logical channels are not supported (ISO 7816-4 §5.4.1).
        let base = cla & !(CLA_CHAIN | CLA_SM);
        if !(base == apdu::CLA_ISO || base == apdu::CLA_PROPRIETARY)
            || (base == apdu::CLA_ISO && cla & CLA_SM != 0)
        {
            self.chain_state = None;
            return (0, isw::CLA_NOT_SUPPORTED);
        }
        let sm = cla & CLA_SM != 0;
        if sm && ins_byte == ins::EXTERNAL_AUTHENTICATE && cla & CLA_CHAIN == 0 {
            self.chain_state = None;
            let sw = self.card.external_authenticate(command);
            return (0, sw);
        }

        // Secure messaging: verify and decrypt (Amendment D §6.2.4, §6.2.6).
        let mut plain = [0u8; 5 + 256 + 1];
        let apdu = if sm {
            let Scp::Open(session) = &mut self.card.scp else {
                self.chain_state = None;
                return (0, isw::SECURITY_STATUS);
            };
            match session.unwrap_command(command, &mut plain) {
                Ok(n) => match ShortApdu::parse(&plain[..n]) {
                    Ok(a) => a,
                    Err(_) => return (0, isw::WRONG_LENGTH),
                },
                Err(_) => {
                    // GP: a secure-messaging failure ends the session.
                    self.card.scp = Scp::None;
                    self.chain_state = None;
                    return (0, isw::SECURITY_STATUS);
                }
            }
        } else {
            apdu
        };

        // Command chaining (ISO 7816-4 §5.1.1.1).
        let key = [cla & !CLA_CHAIN, ins_byte, p1, p2];
        let chaining = cla & CLA_CHAIN != 0;
        let chainable = matches!(
            ins_byte,
            apdu::INS_TERMINAL_AUTHENTICATE
                | apdu::INS_DEBIT
                | apdu::INS_CREDIT
                | ins::BLOCK
                | ins::PUT_DATA
        ) && base == apdu::CLA_PROPRIETARY;
        let data: &[u8] = match (self.chain_state, chaining) {
            (Some((k, _)), _) if k != key => {
                self.chain_state = None;
                return self.finish(sm, 0, apdu::sw::LAST_COMMAND_EXPECTED, None, resp);
            }
            (_, true) if !chainable => {
                self.chain_state = None;
                return self.finish(sm, 0, sw::CHAINING_NOT_SUPPORTED, None, resp);
            }
            (state, true) => {
                let used = state.map_or(0, |(_, n)| n);
                let end = used + apdu.data.len();
                let Some(dst) = self.chain.get_mut(used..end) else {
                    self.chain_state = None;
                    return self.finish(sm, 0, sw::NOT_ENOUGH_MEMORY, None, resp);
                };
                dst.copy_from_slice(apdu.data);
                self.chain_state = Some((key, end));
                return self.finish(sm, 0, isw::OK, None, resp);
            }
            (Some((_, used)), false) => {
                self.chain_state = None;
                let end = used + apdu.data.len();
                let Some(dst) = self.chain.get_mut(used..end) else {
                    return self.finish(sm, 0, sw::NOT_ENOUGH_MEMORY, None, resp);
                };
                dst.copy_from_slice(apdu.data);
                &self.chain[..end]
            }
            (None, false) => apdu.data,
        };
        let cmd = Cmd {
            cla: base,
            sm,
            ins: ins_byte,
            p1,
            p2,
            data,
        };
        let (n, sw) = match self.card.dispatch(&cmd, &mut self.out) {
            Ok(n) => (n, isw::OK),
            Err(sw) => (0, sw),
        };
        self.finish(sm, n, sw, apdu.le, resp)
    }

    /// Protects the answer in `self.out[..n]` if the command came under secure messaging, then
    /// delivers it.
    fn finish(
        &mut self,
        sm: bool,
        n: usize,
        sw: Sw,
        le: Option<u8>,
        resp: &mut [u8],
    ) -> (usize, Sw) {
        let mut n = n;
        let mut sw = sw;
        if sm {
            if let Scp::Open(session) = &self.card.scp {
                let mut wrapped = [0u8; 256];
                match self
                    .out
                    .get(..n)
                    .map(|d| session.wrap_response(d, sw, &mut wrapped))
                {
                    Some(Ok(m)) => {
                        self.out[..m].copy_from_slice(&wrapped[..m]);
                        n = m;
                    }
                    _ => {
                        n = 0;
                        sw = isw::UNKNOWN;
                    }
                }
            }
            if self.card.close_scp {
                self.card.scp = Scp::None;
                self.card.close_scp = false;
            }
        }
        self.out_len = n;
        self.out_pos = 0;
        self.serve(le, sw, resp)
    }

    /// Sends the next piece of the pending answer: at most Le (00 or absent = 256) bytes and what
    /// `resp` holds; `61xx` announces what is left (xx = 00 for 256 or more).
    fn serve(&mut self, le: Option<u8>, sw: Sw, resp: &mut [u8]) -> (usize, Sw) {
        let max = match le {
            Some(0) | None => 256,
            Some(x) => x as usize,
        }
        .min(resp.len());
        let remaining = self.out_len.saturating_sub(self.out_pos);
        let k = remaining.min(max);
        let (Some(src), Some(dst)) = (
            self.out.get(self.out_pos..self.out_pos + k),
            resp.get_mut(..k),
        ) else {
            self.clear_out();
            return (0, isw::UNKNOWN);
        };
        dst.copy_from_slice(src);
        self.out_pos += k;
        let left = remaining - k;
        if left == 0 {
            self.clear_out();
            (k, sw)
        } else {
            self.out_sw = sw;
            (k, 0x6100 | (left.min(256) & 0xFF) as u16)
        }
    }

    fn get_response(
        &mut self,
        p1: u8,
        p2: u8,
        apdu: &ShortApdu<'_>,
        resp: &mut [u8],
    ) -> (usize, Sw) {
        if p1 != 0 || p2 != 0 {
            return (0, isw::WRONG_P1P2);
        }
        if !apdu.data.is_empty() {
            return (0, isw::WRONG_LENGTH);
        }
        if self.out_pos >= self.out_len {
            self.clear_out();
            return (0, isw::CONDITIONS);
        }
        let sw = self.out_sw;
        self.serve(apdu.le, sw, resp)
    }
}

struct CardKeyRecord {
    gen: u32,
    secret: [u8; 32],
    public: [u8; 33],
}

impl<S: Store, R: CryptoRng> Card<S, R> {
    // ----- store access -----

    fn life_cycle(&self) -> Result<Option<LifeCycle>, StoreError> {
        let mut buf = [0u8; MAX_PAYLOAD];
        Ok(match store::load(&self.store, RecordId::State, &mut buf)? {
            Some(1) => LifeCycle::try_from(buf[0]).ok(),
            _ => None,
        })
    }

    fn factory(&self) -> Result<Factory, Sw> {
        let mut buf = [0u8; MAX_PAYLOAD];
        match store::load(&self.store, RecordId::Factory, &mut buf).map_err(mem)? {
            Some(59) => {}
            _ => return Err(isw::CONDITIONS),
        }
        let key = |i: usize| {
            let mut k = [0u8; 16];
            k.copy_from_slice(&buf[i..i + 16]);
            k
        };
        let mut div_data = [0u8; DIV_DATA_LEN];
        div_data.copy_from_slice(&buf[49..59]);
        Ok(Factory {
            keys: KeySet::from_static(
                buf[0],
                &StaticKeys {
                    enc: key(1),
                    mac: key(17),
                    dek: key(33),
                },
            ),
            div_data,
        })
    }

    fn card_key(&self, buf: &mut [u8; MAX_PAYLOAD]) -> Result<Option<CardKeyRecord>, StoreError> {
        match store::load(&self.store, RecordId::CardKey, buf)? {
            Some(69) => {
                let mut secret = [0u8; 32];
                secret.copy_from_slice(&buf[4..36]);
                let mut public = [0u8; 33];
                public.copy_from_slice(&buf[36..69]);
                Ok(Some(CardKeyRecord {
                    gen: u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]),
                    secret,
                    public,
                }))
            }
            _ => Ok(None),
        }
    }

    /// The current personalization generation (0 before the first GENERATE KEY PAIR).
    fn generation(&self) -> Result<u32, Sw> {
        let mut buf = [0u8; MAX_PAYLOAD];
        Ok(self.card_key(&mut buf).map_err(mem)?.map_or(0, |k| k.gen))
    }

    fn signer(&self) -> Result<P256Signer, Sw> {
        let mut buf = [0u8; MAX_PAYLOAD];
        let k = self
            .card_key(&mut buf)
            .map_err(mem)?
            .ok_or(isw::CONDITIONS)?;
        P256Signer::from_bytes(&k.secret).map_err(|_| isw::UNKNOWN)
    }

    /// Loads a personalization record of generation `gen`, returning its data after the
    /// generation prefix; a record of another generation counts as absent.
    fn perso<'b>(
        &self,
        id: RecordId,
        gen: u32,
        buf: &'b mut [u8; MAX_PAYLOAD],
    ) -> Result<Option<&'b [u8]>, Sw> {
        let Some(n) = store::load(&self.store, id, buf).map_err(mem)? else {
            return Ok(None);
        };
        if n < 4 || buf[..4] != gen.to_be_bytes() {
            return Ok(None);
        }
        Ok(Some(&buf[4..n]))
    }

    fn commit_perso(&mut self, id: RecordId, gen: u32, data: &[u8]) -> Result<(), Sw> {
        let mut p = [0u8; MAX_PAYLOAD];
        let end = 4 + data.len();
        let dst = p.get_mut(4..end).ok_or(isw::WRONG_LENGTH)?;
        dst.copy_from_slice(data);
        p[..4].copy_from_slice(&gen.to_be_bytes());
        store::commit(&mut self.store, id, &p[..end]).map_err(|e| match e {
            StoreError::TooLarge => isw::WRONG_LENGTH,
            _ => sw::MEMORY_FAILURE,
        })
    }

    fn purse(&self, gen: u32) -> Result<Option<Purse>, Sw> {
        let mut buf = [0u8; MAX_PAYLOAD];
        let Some(n) = store::load(&self.store, RecordId::Purse, &mut buf).map_err(mem)? else {
            return Ok(None);
        };
        if n < 4 || buf[..4] != gen.to_be_bytes() {
            return Ok(None);
        }
        Ok(Purse::decode(&buf[..n]))
    }

    fn commit_purse(&mut self, gen: u32, purse: &Purse) -> Result<(), Sw> {
        let mut p = [0u8; PURSE_MAX];
        let n = purse.encode(gen, &mut p);
        store::commit(&mut self.store, RecordId::Purse, &p[..n]).map_err(mem)
    }

    fn purse_inspect(&self) -> Option<Purse> {
        let gen = self.generation().ok()?;
        self.purse(gen).ok().flatten()
    }

    fn root_key(&self, gen: u32) -> Result<PublicKey, Sw> {
        let mut buf = [0u8; MAX_PAYLOAD];
        let k = self
            .perso(RecordId::RootKey, gen, &mut buf)?
            .ok_or(isw::CONDITIONS)?;
        PublicKey::from_sec1(k).map_err(|_| isw::UNKNOWN)
    }

    fn card_serial(&self, gen: u32) -> Result<CardSerial, Sw> {
        let mut buf = [0u8; MAX_PAYLOAD];
        let wire = self
            .perso(RecordId::Credential, gen, &mut buf)?
            .ok_or(isw::CONDITIONS)?;
        let signed = Signed::decode(wire).map_err(|_| isw::UNKNOWN)?;
        let body: CredentialBody<'_> = signed.decode_trusted().map_err(|_| isw::UNKNOWN)?;
        Ok(body.card_serial)
    }

    fn last_seen(&self) -> Result<u64, Sw> {
        let mut buf = [0u8; MAX_PAYLOAD];
        Ok(
            match store::load(&self.store, RecordId::Clock, &mut buf).map_err(mem)? {
                Some(8) => {
                    let mut t = [0u8; 8];
                    t.copy_from_slice(&buf[..8]);
                    u64::from_be_bytes(t)
                }
                _ => 0,
            },
        )
    }

    /// Raises the last-seen time to `t` (an authenticated time) if it is higher.
    fn raise_clock(&mut self, t: u64) -> Result<(), Sw> {
        if t > self.last_seen()? {
            store::commit(&mut self.store, RecordId::Clock, &t.to_be_bytes()).map_err(mem)?;
        }
        Ok(())
    }

    fn require(&self, wanted: LifeCycle) -> Result<(), Sw> {
        match self.life_cycle().map_err(mem)? {
            Some(lc) if lc == wanted => Ok(()),
            _ => Err(isw::CONDITIONS),
        }
    }

    fn require_scp(&self, cmd: &Cmd<'_>) -> Result<(), Sw> {
        match self.scp {
            Scp::Open(ref s) if cmd.sm && s.level() == level::FULL => Ok(()),
            _ => Err(isw::SECURITY_STATUS),
        }
    }

    // ----- public-key operations (counted) -----

    /// Verifies a root-signed key certificate of role `role`, answering from the RAM cache when
    /// the identical envelope verified before.
    fn verify_cert(
        &mut self,
        cert: &Signed<'_>,
        root: &PublicKey,
        role: Role,
    ) -> Result<CachedCert, Sw> {
        let digest = sha256_parts(&[&cert.signer, cert.body, &cert.sig.0]);
        let hit = self
            .cache
            .iter()
            .flatten()
            .find(|c| c.digest == digest)
            .copied();
        let entry = match hit {
            Some(c) => c,
            None => {
                self.pk_ops = self.pk_ops.wrapping_add(1);
                let c =
                    KeyCertificate::verify_untimed(cert, root).map_err(|_| isw::SECURITY_STATUS)?;
                let entry = CachedCert {
                    digest,
                    role: c.body.role,
                    key: c.key,
                    key_id: c.body.key_id,
                    services: c.body.services,
                    valid_from: c.body.valid_from,
                    valid_until: c.body.valid_until,
                };
                self.cache[self.cache_next % CERT_CACHE_ENTRIES] = Some(entry);
                self.cache_next = (self.cache_next + 1) % CERT_CACHE_ENTRIES;
                entry
            }
        };
        if entry.role != role {
            return Err(isw::SECURITY_STATUS);
        }
        Ok(entry)
    }

    fn open<'a, T: shared_crypto::Versioned<'a>>(
        &mut self,
        signed: &Signed<'a>,
        context: &[u8],
        key: &PublicKey,
    ) -> Result<T, Sw> {
        self.pk_ops = self.pk_ops.wrapping_add(1);
        signed.open(context, key).map_err(sig_err)
    }

    // ----- dispatch -----

    fn dispatch(&mut self, c: &Cmd<'_>, out: &mut [u8]) -> Result<usize, Sw> {
        use shared_crypto::apdu::{
            INS_CREDIT, INS_DEBIT, INS_GET_BALANCE, INS_SELECT, INS_TERMINAL_AUTHENTICATE,
        };
        const ISO: u8 = apdu::CLA_ISO;
        const PROP: u8 = apdu::CLA_PROPRIETARY;
        match (c.cla, c.ins) {
            (ISO, INS_SELECT) => return self.select(c, out),
            (PROP, INS_SELECT) => return Err(isw::CLA_NOT_SUPPORTED),
            _ => {}
        }
        let known = matches!(
            c.ins,
            ins::INITIALIZE_UPDATE
                | INS_TERMINAL_AUTHENTICATE
                | INS_DEBIT
                | INS_CREDIT
                | INS_GET_BALANCE
                | ins::BLOCK
                | ins::GET_DATA
                | ins::GENERATE_KEY_PAIR
                | ins::PUT_DATA
                | ins::SET_STATUS
        );
        if !known {
            return Err(isw::INS_NOT_SUPPORTED);
        }
        if c.cla != PROP {
            return Err(isw::CLA_NOT_SUPPORTED);
        }
        if !self.selected {
            return Err(isw::CONDITIONS);
        }
        match c.ins {
            ins::INITIALIZE_UPDATE => self.initialize_update(c, out),
            INS_TERMINAL_AUTHENTICATE => self.terminal_authenticate(c, out),
            INS_DEBIT => self.debit(c, out),
            INS_CREDIT => self.credit(c, out),
            INS_GET_BALANCE => self.get_balance(c, out),
            ins::BLOCK => self.block(c),
            ins::GET_DATA => self.get_data(c, out),
            ins::GENERATE_KEY_PAIR => self.generate_key_pair(c, out),
            ins::PUT_DATA => self.put_data(c),
            _ => self.set_status(c),
        }
    }

    // ----- SELECT -----

    fn select(&mut self, c: &Cmd<'_>, out: &mut [u8]) -> Result<usize, Sw> {
        c.p1p2(0x04, 0x00)?;
        // Selecting ends every session (GP: SELECT closes the secure channel).
        self.scp = Scp::None;
        self.tap = None;
        self.challenge = None;
        self.selected = false;
        if c.data != AID {
            return Err(0x6A82);
        }
        let lc = self.life_cycle().map_err(mem)?.ok_or(isw::CONDITIONS)?;
        self.selected = true;
        if lc == LifeCycle::Blocked {
            return Err(isw::BLOCKED);
        }
        let mut challenge = [0u8; NONCE_LEN];
        self.rng.fill_bytes(&mut challenge);
        self.challenge = Some(challenge);
        let answer = SelectResponse {
            applet_version: APPLET_VERSION,
            life_cycle: lc,
            challenge,
        };
        Ok(encode_versioned_into(&answer, out)
            .map_err(|_| isw::UNKNOWN)?
            .len())
    }

    // ----- the tap -----

    fn terminal_authenticate(&mut self, c: &Cmd<'_>, out: &mut [u8]) -> Result<usize, Sw> {
        self.require(LifeCycle::Personalized)?;
        c.p1p2(0, 0)?;
        // The challenge is single use: any attempt, good or bad, consumes it.
        let challenge = self.challenge.take().ok_or(isw::CONDITIONS)?;
        self.tap = None;
        let ta: TerminalAuth<'_> = decode_command(c.data).map_err(|_| isw::WRONG_DATA)?;
        let gen = self.generation()?;
        let root = self.root_key(gen)?;
        // Public-key operation 1 (skipped on a cache hit): the terminal certificate.
        let cert = self.verify_cert(&ta.terminal_cert, &root, Role::Terminal)?;
        // Operation 2: the terminal's signature over the request, bound to this challenge.
        let req: TapRequestBody = self.open(&ta.request, &challenge, &cert.key)?;
        if !cert.valid_at(req.time) || !cert.services.contains(req.service) {
            return Err(isw::SECURITY_STATUS);
        }
        // A debit intent belongs to a welfare session and names a positive amount.
        if let Some(intent) = req.debit {
            if req.service != Service::Welfare || intent.amount == 0 {
                return Err(isw::WRONG_DATA);
            }
        }
        // Welfare: the purse goes into the signed answer, so the terminal reads an authenticated
        // balance without GET BALANCE (whose answer a relay could alter).
        let purse = match req.service {
            Service::Welfare => {
                let p = self.purse(gen)?.ok_or(isw::UNKNOWN)?;
                Some(PurseState {
                    balance: p.balance,
                    counter: p.counter,
                })
            }
            _ => None,
        };
        let release: AttributeSet = req.requested.intersect(req.service.release_policy());

        let mut cred_buf = [0u8; MAX_PAYLOAD];
        let cred_wire = self
            .perso(RecordId::Credential, gen, &mut cred_buf)?
            .ok_or(isw::UNKNOWN)?;
        let credential = Signed::decode(cred_wire).map_err(|_| isw::UNKNOWN)?;
        let mut disc_buf = [0u8; MAX_PAYLOAD];
        let disc = self
            .perso(RecordId::Disclosures, gen, &mut disc_buf)?
            .ok_or(isw::UNKNOWN)?;
        let all: Items<'_, Disclosure<'_>> = decode_plain(disc).map_err(|_| isw::UNKNOWN)?;
        let mut list = [0u8; MAX_PAYLOAD];
        let mut w = ItemsWriter::new(&mut list);
        for d in all.iter().filter(|d| release.contains(d.attribute)) {
            w.push(&d).map_err(|_| isw::UNKNOWN)?;
        }
        let disclosures = w
            .finish::<Disclosure<'_>>(shared_crypto::sig::Domain::None)
            .map_err(|_| isw::UNKNOWN)?;
        let body = TapResponseBody {
            credential,
            disclosures,
            purse,
        };
        // Operation 3: the card's signature over the whole transcript.
        let context = transcript_hash(&challenge, c.data);
        let signer = self.signer()?;
        let mut scratch = [0u8; OUT_MAX];
        self.pk_ops = self.pk_ops.wrapping_add(1);
        let n = sign_into(&body, &context, &signer, &mut scratch, out)
            .map_err(|_| isw::UNKNOWN)?
            .len();
        self.raise_clock(req.time)?;
        self.tap = Some(TapSession {
            service: req.service,
            terminal: cert.key_id,
            time: req.time,
            intent: req.debit,
        });
        Ok(n)
    }

    fn welfare_session(&self) -> Result<TapSession, Sw> {
        match self.tap {
            Some(t) if t.service == Service::Welfare => Ok(t),
            _ => Err(isw::SECURITY_STATUS),
        }
    }

    fn debit(&mut self, c: &Cmd<'_>, out: &mut [u8]) -> Result<usize, Sw> {
        self.require(LifeCycle::Personalized)?;
        c.p1p2(0, 0)?;
        let tap = self.welfare_session()?;
        let req: DebitRequest = decode_command(c.data).map_err(|_| isw::WRONG_DATA)?;
        if req.amount == 0 {
            return Err(isw::WRONG_DATA);
        }
        // Only the debit the terminal signed into this session (DESIGN "the tap" step 3: inside
        // the authenticated session), and only once: a relay that swaps amount or reference, or
        // adds a DEBIT to a session that announced none, gets 6982 and nothing changes.
        let signed = DebitIntent {
            amount: req.amount,
            reference: req.reference,
        };
        if tap.intent != Some(signed) || req.time != tap.time {
            return Err(isw::SECURITY_STATUS);
        }
        if let Some(t) = self.tap.as_mut() {
            t.intent = None;
        }
        let gen = self.generation()?;
        let mut purse = self.purse(gen)?.ok_or(isw::UNKNOWN)?;
        if let Some(done) = purse.recent(&req.reference) {
            // A retry after tearing (also after debits elsewhere since): the same receipt, no
            // second debit.
            if done.amount != req.amount {
                return Err(isw::WRONG_DATA);
            }
            let n = done.receipt_len;
            out.get_mut(..n)
                .ok_or(isw::UNKNOWN)?
                .copy_from_slice(&done.receipt[..n]);
            return Ok(n);
        }
        if purse.balance < req.amount || purse.counter == u32::MAX {
            return Err(isw::CONDITIONS);
        }
        let body = ReceiptBody {
            card_serial: self.card_serial(gen)?,
            counter: purse.counter + 1,
            amount: req.amount,
            balance_after: purse.balance - req.amount,
            terminal: tap.terminal,
            // The verified request time, not the unsigned DEBIT data.
            time: tap.time,
            reference: req.reference,
        };
        let signer = self.signer()?;
        let mut scratch = [0u8; RECEIPT_MAX];
        let mut receipt = [0u8; RECEIPT_MAX];
        self.pk_ops = self.pk_ops.wrapping_add(1);
        let n = sign_into(&body, &[], &signer, &mut scratch, &mut receipt)
            .map_err(|_| isw::UNKNOWN)?
            .len();
        purse.balance = body.balance_after;
        purse.counter = body.counter;
        purse.remember(Recent {
            reference: req.reference,
            amount: req.amount,
            receipt_len: n,
            receipt,
        });
        // The one write of a debit: balance, counter and receipt change together.
        self.commit_purse(gen, &purse)?;
        out.get_mut(..n)
            .ok_or(isw::UNKNOWN)?
            .copy_from_slice(&receipt[..n]);
        Ok(n)
    }

    fn get_balance(&mut self, c: &Cmd<'_>, out: &mut [u8]) -> Result<usize, Sw> {
        self.require(LifeCycle::Personalized)?;
        c.p1p2(0, 0)?;
        c.no_data()?;
        self.welfare_session()?;
        let gen = self.generation()?;
        let purse = self.purse(gen)?.ok_or(isw::UNKNOWN)?;
        let o = out.get_mut(..8).ok_or(isw::UNKNOWN)?;
        o[..4].copy_from_slice(&purse.balance.to_be_bytes());
        o[4..].copy_from_slice(&purse.counter.to_be_bytes());
        Ok(8)
    }

    fn credit(&mut self, c: &Cmd<'_>, out: &mut [u8]) -> Result<usize, Sw> {
        self.require(LifeCycle::Personalized)?;
        c.p1p2(0, 0)?;
        let cc: CreditCommand<'_> = decode_command(c.data).map_err(|_| isw::WRONG_DATA)?;
        let gen = self.generation()?;
        let root = self.root_key(gen)?;
        let cert = self.verify_cert(&cc.voucher_cert, &root, Role::Voucher)?;
        let v: VoucherBody = self.open(&cc.voucher, &[], &cert.key)?;
        if !cert.valid_at(v.issued_at) {
            return Err(isw::SECURITY_STATUS);
        }
        if v.card_serial != self.card_serial(gen)? {
            return Err(isw::NOT_FOUND);
        }
        if v.amount == 0 || v.issued_at > v.valid_until {
            return Err(isw::WRONG_DATA);
        }
        // The server numbers a card's grants from 1 (issuance-server `cards.rs`), and the purse
        // starts at voucher_seq 0: a grant numbered 0 would pass "not below the last" on every
        // attempt and be credited again and again.
        if v.seq == 0 {
            return Err(isw::WRONG_DATA);
        }
        let mut purse = self.purse(gen)?.ok_or(isw::UNKNOWN)?;
        if v.seq == purse.voucher_seq {
            // The grant already credited (a retry after tearing): answer the balance again.
            out.get_mut(..4)
                .ok_or(isw::UNKNOWN)?
                .copy_from_slice(&purse.balance.to_be_bytes());
            return Ok(4);
        }
        if v.seq < purse.voucher_seq || v.valid_until < self.last_seen()? {
            return Err(isw::CONDITIONS);
        }
        let balance = purse.balance.checked_add(v.amount).ok_or(isw::CONDITIONS)?;
        purse.balance = balance;
        purse.voucher_seq = v.seq;
        // The one write of a credit: balance and accepted sequence number change together.
        self.commit_purse(gen, &purse)?;
        self.raise_clock(v.issued_at)?;
        out.get_mut(..4)
            .ok_or(isw::UNKNOWN)?
            .copy_from_slice(&balance.to_be_bytes());
        Ok(4)
    }

    fn block(&mut self, c: &Cmd<'_>) -> Result<usize, Sw> {
        self.require(LifeCycle::Personalized)?;
        c.p1p2(0, 0)?;
        let bc: BlockCommand<'_> = decode_command(c.data).map_err(|_| isw::WRONG_DATA)?;
        let gen = self.generation()?;
        let root = self.root_key(gen)?;
        let cert = self.verify_cert(&bc.issuer_cert, &root, Role::Issuer)?;
        let order: CardBlockBody = self.open(&bc.order, &[], &cert.key)?;
        if !cert.valid_at(order.time) {
            return Err(isw::SECURITY_STATUS);
        }
        if order.card_serial != self.card_serial(gen)? {
            return Err(isw::NOT_FOUND);
        }
        store::commit(
            &mut self.store,
            RecordId::State,
            &[LifeCycle::Blocked as u8],
        )
        .map_err(mem)?;
        self.tap = None;
        self.challenge = None;
        Ok(0)
    }

    // ----- personalization -----

    fn get_data(&mut self, c: &Cmd<'_>, out: &mut [u8]) -> Result<usize, Sw> {
        self.require(LifeCycle::Blank)?;
        c.no_data()?;
        if c.p1 != 0x00 || c.p2 != tag::DIV_DATA {
            return Err(isw::NOT_FOUND);
        }
        let f = self.factory()?;
        out.get_mut(..DIV_DATA_LEN)
            .ok_or(isw::UNKNOWN)?
            .copy_from_slice(&f.div_data);
        Ok(DIV_DATA_LEN)
    }

    fn initialize_update(&mut self, c: &Cmd<'_>, out: &mut [u8]) -> Result<usize, Sw> {
        self.require(LifeCycle::Blank)?;
        self.scp = Scp::None;
        let f = self.factory()?;
        if c.p1 != 0 && c.p1 != f.keys.kvn {
            return Err(isw::NOT_FOUND);
        }
        if c.p2 != 0 {
            return Err(isw::WRONG_P1P2);
        }
        let host_challenge: [u8; 8] = c.data.try_into().map_err(|_| isw::WRONG_LENGTH)?;
        let mut card_challenge = [0u8; 8];
        self.rng.fill_bytes(&mut card_challenge);
        let init = CardInit::new(
            &f.keys,
            f.div_data,
            I_PARAM,
            host_challenge,
            card_challenge,
            None,
        );
        let mut r = [0u8; scp03::INIT_UPDATE_RESPONSE_LEN_SEQ];
        let n = init.response().encode(&mut r);
        out.get_mut(..n)
            .ok_or(isw::UNKNOWN)?
            .copy_from_slice(&r[..n]);
        self.scp = Scp::Init(init);
        Ok(n)
    }

    fn external_authenticate(&mut self, raw: &[u8]) -> Sw {
        if !self.selected {
            return isw::CONDITIONS;
        }
        if let Err(sw) = self.require(LifeCycle::Blank) {
            return sw;
        }
        let Scp::Init(init) = core::mem::replace(&mut self.scp, Scp::None) else {
            return isw::CONDITIONS;
        };
        match init.external_authenticate(raw) {
            // This card personalizes only at the full level (C-DEC, C-MAC, R-ENC, R-MAC).
            Ok(session) if session.level() == level::FULL => {
                self.scp = Scp::Open(session);
                isw::OK
            }
            _ => isw::SECURITY_STATUS,
        }
    }

    fn generate_key_pair(&mut self, c: &Cmd<'_>, out: &mut [u8]) -> Result<usize, Sw> {
        self.require(LifeCycle::Blank)?;
        self.require_scp(c)?;
        c.p1p2(tag::GENERATE_P1, 0x00)?;
        c.no_data()?;
        let gen = self.generation()?.wrapping_add(1);
        let signer = P256Signer::generate(&mut self.rng).map_err(|_| isw::UNKNOWN)?;
        let public = signer.public_key().to_sec1();
        let mut rec = [0u8; 69];
        rec[..4].copy_from_slice(&gen.to_be_bytes());
        rec[4..36].copy_from_slice(&signer.secret_bytes());
        rec[36..69].copy_from_slice(&public);
        // The commit point of a restart: the new generation makes every earlier personalization
        // record stale at once; the erasures below only remove their bytes.
        store::commit(&mut self.store, RecordId::CardKey, &rec).map_err(mem)?;
        for id in [
            RecordId::Credential,
            RecordId::Disclosures,
            RecordId::RootKey,
            RecordId::Purse,
        ] {
            store::erase(&mut self.store, id).map_err(mem)?;
        }
        out.get_mut(..33)
            .ok_or(isw::UNKNOWN)?
            .copy_from_slice(&public);
        Ok(33)
    }

    fn put_data(&mut self, c: &Cmd<'_>) -> Result<usize, Sw> {
        self.require(LifeCycle::Blank)?;
        self.require_scp(c)?;
        if c.p1 != tag::PUT_DATA_P1 {
            return Err(isw::WRONG_P1P2);
        }
        let gen = self.generation()?;
        if gen == 0 {
            return Err(isw::CONDITIONS);
        }
        match c.p2 {
            tag::CREDENTIAL => {
                self.check_credential(gen, c.data)?;
                self.commit_perso(RecordId::Credential, gen, c.data)?;
            }
            tag::DISCLOSURES => {
                self.check_disclosures(gen, c.data)?;
                self.commit_perso(RecordId::Disclosures, gen, c.data)?;
            }
            tag::ROOT_KEY => {
                PublicKey::from_sec1(c.data).map_err(|_| isw::WRONG_DATA)?;
                self.commit_perso(RecordId::RootKey, gen, c.data)?;
            }
            tag::PURSE => {
                let points: [u8; 4] = c.data.try_into().map_err(|_| isw::WRONG_LENGTH)?;
                self.commit_purse(gen, &Purse::new(u32::from_be_bytes(points)))?;
            }
            _ => return Err(isw::NOT_FOUND),
        }
        Ok(0)
    }

    /// A credential must decode, be well formed and certify this card's key. (The card cannot
    /// check the issuer's signature: it holds only the root key; terminals check it at each tap.)
    fn check_credential(&self, gen: u32, wire: &[u8]) -> Result<(), Sw> {
        if wire.len() + 4 > RecordId::Credential.capacity() {
            return Err(isw::WRONG_LENGTH);
        }
        let signed = Signed::decode(wire).map_err(|_| isw::WRONG_DATA)?;
        let body: CredentialBody<'_> = signed.decode_trusted().map_err(|_| isw::WRONG_DATA)?;
        body.check_structure().map_err(|_| isw::WRONG_DATA)?;
        let mut buf = [0u8; MAX_PAYLOAD];
        let key = self
            .card_key(&mut buf)
            .map_err(mem)?
            .ok_or(isw::CONDITIONS)?;
        if key.gen != gen || body.card_key.0 != key.public {
            return Err(isw::WRONG_DATA);
        }
        Ok(())
    }

    /// Disclosures must match the stored credential one to one, in attribute-id order.
    fn check_disclosures(&self, gen: u32, data: &[u8]) -> Result<(), Sw> {
        if data.len() + 4 > RecordId::Disclosures.capacity() {
            return Err(isw::WRONG_LENGTH);
        }
        let mut buf = [0u8; MAX_PAYLOAD];
        let wire = self
            .perso(RecordId::Credential, gen, &mut buf)?
            .ok_or(isw::CONDITIONS)?;
        let signed = Signed::decode(wire).map_err(|_| isw::UNKNOWN)?;
        let body: CredentialBody<'_> = signed.decode_trusted().map_err(|_| isw::UNKNOWN)?;
        let items: Items<'_, Disclosure<'_>> = decode_plain(data).map_err(|_| isw::WRONG_DATA)?;
        let seen = body
            .check_disclosures(&items)
            .map_err(|_| isw::WRONG_DATA)?;
        let mut covered = AttributeSet::NONE;
        for d in body.digests.iter() {
            covered.0 |= 1 << (d.attribute as u8);
        }
        let mut last = 0u8;
        for d in items.iter() {
            if (d.attribute as u8) <= last {
                return Err(isw::WRONG_DATA);
            }
            last = d.attribute as u8;
        }
        if seen != covered {
            return Err(isw::WRONG_DATA);
        }
        Ok(())
    }

    fn set_status(&mut self, c: &Cmd<'_>) -> Result<usize, Sw> {
        self.require(LifeCycle::Blank)?;
        self.require_scp(c)?;
        c.p1p2(tag::SET_STATUS_P1, tag::SET_STATUS_PERSONALIZED)?;
        c.no_data()?;
        let gen = self.generation()?;
        if gen == 0 {
            return Err(isw::CONDITIONS);
        }
        // Everything must be there and consistent before the lock; otherwise the card stays
        // BLANK and can be personalized again from the start.
        let mut buf = [0u8; MAX_PAYLOAD];
        let cred = self
            .perso(RecordId::Credential, gen, &mut buf)?
            .ok_or(isw::CONDITIONS)?;
        let mut cred_copy = [0u8; MAX_PAYLOAD];
        let n = cred.len();
        cred_copy[..n].copy_from_slice(cred);
        self.check_credential(gen, &cred_copy[..n])
            .map_err(|_| isw::CONDITIONS)?;
        let mut dbuf = [0u8; MAX_PAYLOAD];
        let disc = self
            .perso(RecordId::Disclosures, gen, &mut dbuf)?
            .ok_or(isw::CONDITIONS)?;
        let mut disc_copy = [0u8; MAX_PAYLOAD];
        let m = disc.len();
        disc_copy[..m].copy_from_slice(disc);
        self.check_disclosures(gen, &disc_copy[..m])
            .map_err(|_| isw::CONDITIONS)?;
        self.root_key(gen)?;
        self.purse(gen)?.ok_or(isw::CONDITIONS)?;
        store::commit(
            &mut self.store,
            RecordId::State,
            &[LifeCycle::Personalized as u8],
        )
        .map_err(mem)?;
        self.close_scp = true;
        self.challenge = None;
        Ok(0)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    fn debit(reference: u8, amount: u32, len: usize) -> Recent {
        let mut r = NO_RECENT;
        r.reference = [reference; NONCE_LEN];
        r.amount = amount;
        r.receipt_len = len;
        r.receipt[..len].fill(reference);
        r
    }

    #[test]
    fn the_purse_keeps_its_last_three_debits_newest_first() {
        let mut p = Purse::new(100);
        p.counter = 4;
        p.voucher_seq = 2;
        let mut out = [0u8; PURSE_MAX];
        for (i, reference) in [1u8, 2, 3, 4].into_iter().enumerate() {
            p.remember(debit(reference, u32::from(reference) * 10, 120 + i));
            let n = p.encode(9, &mut out);
            let q = Purse::decode(&out[..n]).unwrap();
            assert_eq!(q.recent_len, (i + 1).min(RECENT_DEBITS));
            assert_eq!((q.balance, q.counter, q.voucher_seq), (100, 4, 2));
            for (a, b) in q.recent[..q.recent_len].iter().zip(&p.recent) {
                assert_eq!(
                    (a.reference, a.amount, a.receipt_len),
                    (b.reference, b.amount, b.receipt_len)
                );
                assert_eq!(a.receipt[..a.receipt_len], b.receipt[..b.receipt_len]);
            }
        }
        // Newest first; the first debit is forgotten.
        let refs: Vec<u8> = p.recent.iter().map(|r| r.reference[0]).collect();
        assert_eq!(refs, [4, 3, 2]);
        assert!(p.recent(&[1; NONCE_LEN]).is_none());
        assert_eq!(p.recent(&[2; NONCE_LEN]).unwrap().amount, 20);
        // The largest purse fits its record.
        let mut full = Purse::new(0);
        for r in 0..3 {
            full.remember(debit(r, 1, RECEIPT_MAX));
        }
        assert_eq!(full.encode(1, &mut out), PURSE_MAX);
    }

    #[test]
    fn purses_of_applet_1_0_decode() {
        // One debit kept: the layout with count 1.
        let mut v1 = Vec::new();
        for v in [7u32, 480, 1, 0] {
            v1.extend_from_slice(&v.to_be_bytes());
        }
        v1.push(1);
        v1.extend_from_slice(&[0x77; 16]);
        v1.extend_from_slice(&20u32.to_be_bytes());
        v1.extend_from_slice(&3u16.to_be_bytes());
        v1.extend_from_slice(&[1, 2, 3]);
        let p = Purse::decode(&v1).unwrap();
        assert_eq!((p.balance, p.counter, p.recent_len), (480, 1, 1));
        assert_eq!(p.recent(&[0x77; 16]).unwrap().receipt[..3], [1, 2, 3]);
        // None kept: count 0 and one all-zero entry.
        let mut none = v1[..16].to_vec();
        none.push(0);
        none.extend_from_slice(&[0; RECENT_FIXED]);
        let p = Purse::decode(&none).unwrap();
        assert_eq!(p.recent_len, 0);
        // Anything else after the entries is refused, as are more entries than kept.
        let mut extra = none.clone();
        extra.push(0);
        assert!(Purse::decode(&extra).is_none());
        let mut many = v1[..16].to_vec();
        many.push(RECENT_DEBITS as u8 + 1);
        assert!(Purse::decode(&many).is_none());
        assert!(Purse::decode(&v1[..v1.len() - 1]).is_none());
    }
}
