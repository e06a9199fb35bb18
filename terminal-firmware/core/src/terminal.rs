//! The terminal: mount, tap, updates, log export.

use embedded_storage::nor_flash::NorFlash;
use rand_core::CryptoRng;
use shared_crypto::apdu::{
    self, exchange, sw, ExchangeError, Transport, WireStats, CLA_ISO, CLA_PROPRIETARY, INS_DEBIT,
    INS_SELECT, INS_TERMINAL_AUTHENTICATE,
};
use shared_crypto::certno::{Category, CertificateNumber, Level};
use shared_crypto::model::{
    transcript_hash, AttributeId, AttributeSet, AttributeValue, CardSerial, CredentialBody,
    DebitIntent, DebitRequest, Entitlements, LifeCycle, LogBatchBody, Outcome, Reason, ReceiptBody,
    Role, SelectResponse, Service, ServiceRulesBody, ServiceSet, StatusDeltaBody, StatusListBody,
    TapRecord, TapRequestBody, TapResponseBody, TerminalAuth, NONCE_LEN,
};
use shared_crypto::sig::{sign_body, sign_into, Domain, KeyId, Signed};
use shared_crypto::status_list::{
    apply_delta_resized, EncodeError, IndexSetView, StatusListError, StatusListView,
};
use shared_crypto::wire::{decode_exact, decode_versioned, encode_into, encode_versioned_into};
use shared_crypto::wire::{Items, ItemsWriter};
use shared_crypto::{Error, Signer};

use crate::feedback::Signal;
use crate::log::{LogError, LogState, TapLog, MAX_RECORD_LEN};
use crate::platform::{Clock, Feedback, MappedFlash, Verifier};
use crate::slots::{SlotError, SlotPair, MAX_WRITE_SIZE};
use crate::verify::{self, find_key, Key, LookupError};

/// Longest terminal certificate accepted (wire bytes of `Signed<KeyCertificateBody>`).
pub const MAX_CERT_LEN: usize = 320;
/// Longest card answer to TERMINAL AUTHENTICATE.
pub const MAX_TAP_RESPONSE: usize = 1024;
/// Longest welfare receipt kept (wire bytes of `Signed<ReceiptBody>`).
pub const MAX_RECEIPT_LEN: usize = 160;
/// Cards remembered for anti-passback, companion passages and rehab intervals.
pub const RECENT_CARDS: usize = 16;
const ISSUER_CACHE: usize = 4;

/// The flash partitions of a terminal, one [`NorFlash`] + [`MappedFlash`] value each.
#[derive(Debug)]
pub struct Storage<F> {
    /// Trust bundle, two slots.
    pub bundle: [F; 2],
    /// Status list, two slots (a delta is merged from one into the other).
    pub status: [F; 2],
    /// Service rules, two slots.
    pub rules: [F; 2],
    /// Tap log: a ring of at least two sectors.
    pub log: F,
}

/// The kinds of update a terminal installs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum UpdateKind {
    /// `Signed<TrustBundleBody>`, root-signed.
    TrustBundle = 1,
    /// `Signed<StatusListBody>`, StatusSigner-signed (the full list).
    StatusList = 2,
    /// `Signed<ServiceRulesBody>`, StatusSigner-signed.
    ServiceRules = 3,
}

/// What a terminal is given at start-up besides its partitions and devices.
#[derive(Clone, Copy, Debug)]
pub struct TerminalConfig<'a> {
    /// The root public key (compressed SEC1), installed once at manufacture.
    pub root_key: [u8; 33],
    /// The terminal's root-signed key certificate (`Signed<KeyCertificateBody>` wire bytes), role
    /// Terminal, for the key the signer holds.
    pub certificate: &'a [u8],
}

/// What the operator asks the terminal to do at the next tap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ServiceRequest {
    /// A gate passage.
    Transit,
    /// An employer's identity check.
    Employment,
    /// A rehabilitation session.
    Rehab,
    /// A welfare purchase of `amount` points.
    Welfare {
        /// Points to debit (1 ..= the rules' `max_debit_points`).
        amount: u32,
    },
}

impl ServiceRequest {
    /// The service.
    pub const fn service(self) -> Service {
        match self {
            ServiceRequest::Transit => Service::Transit,
            ServiceRequest::Employment => Service::Employment,
            ServiceRequest::Rehab => Service::Rehab,
            ServiceRequest::Welfare { .. } => Service::Welfare,
        }
    }
}

/// The attributes the terminal asks for: only what its decision uses (minimum disclosure), always
/// inside [`Service::release_policy`].
pub const fn requested_attributes(service: Service) -> AttributeSet {
    use AttributeId::*;
    let wanted = match service {
        Service::Transit | Service::Welfare => AttributeSet::of(&[Entitlements, CertificateExpiry]),
        Service::Employment => AttributeSet::of(&[
            Name,
            CertificateNumber,
            Category,
            Level,
            Entitlements,
            CertificateExpiry,
        ]),
        Service::Rehab => AttributeSet::of(&[Category, Level, Entitlements, CertificateExpiry]),
    };
    wanted.intersect(service.release_policy())
}

/// What the holder disclosed (only what the service asked for).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Holder {
    name: [u8; shared_crypto::model::MAX_NAME_LEN],
    name_len: u8,
    /// Certificate number (employment).
    pub certificate_number: Option<CertificateNumber>,
    /// Disability category.
    pub category: Option<Category>,
    /// Disability level.
    pub level: Option<Level>,
    /// Region code.
    pub region: Option<u32>,
    /// Birth year.
    pub birth_year: Option<u16>,
    /// Entitlement flags.
    pub entitlements: Option<Entitlements>,
    /// Expiry of the certificate (Unix seconds).
    pub certificate_expiry: Option<u64>,
}

impl Default for Holder {
    fn default() -> Self {
        Holder {
            name: [0; shared_crypto::model::MAX_NAME_LEN],
            name_len: 0,
            certificate_number: None,
            category: None,
            level: None,
            region: None,
            birth_year: None,
            entitlements: None,
            certificate_expiry: None,
        }
    }
}

impl Holder {
    /// The holder's name (employment).
    pub fn name(&self) -> Option<&str> {
        let bytes = self.name.get(..self.name_len as usize)?;
        if bytes.is_empty() {
            return None;
        }
        core::str::from_utf8(bytes).ok()
    }

    fn set(&mut self, value: AttributeValue<'_>) {
        match value {
            AttributeValue::Name(n) => {
                let b = n.as_bytes();
                let len = b.len().min(self.name.len());
                self.name[..len].copy_from_slice(&b[..len]);
                self.name_len = len as u8;
            }
            AttributeValue::CertificateNumber(c) => self.certificate_number = Some(c),
            AttributeValue::Category(c) => self.category = Some(c),
            AttributeValue::Level(l) => self.level = Some(l),
            AttributeValue::Region(r) => self.region = Some(r),
            AttributeValue::BirthYear(y) => self.birth_year = Some(y),
            AttributeValue::Entitlements(e) => self.entitlements = Some(e),
            AttributeValue::PhotoDigest(_) => {}
            AttributeValue::CertificateExpiry(t) => self.certificate_expiry = Some(t),
        }
    }
}

/// A welfare debit the card confirmed with a signed receipt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Debit {
    /// Points debited.
    pub amount: u32,
    /// Balance after the debit.
    pub balance_after: u32,
    /// The card's purse counter after the debit.
    pub counter: u32,
    /// The terminal's transaction reference.
    pub reference: [u8; NONCE_LEN],
}

/// The decision of one tap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Service performed.
    pub service: Service,
    /// What the person was told.
    pub outcome: Outcome,
    /// Why.
    pub reason: Reason,
    /// The terminal's time (None when the clock is not set).
    pub time: Option<u64>,
    /// The card, once its credential verified.
    pub card_serial: Option<CardSerial>,
    /// The card's status index, once its credential verified.
    pub status_index: Option<u32>,
    /// What the holder disclosed (after every check passed; empty otherwise).
    pub holder: Holder,
    /// The welfare debit.
    pub debit: Option<Debit>,
    /// Sequence number of the tap-log record (None when it could not be logged).
    pub log_seq: Option<u32>,
    /// What was shown and sounded.
    pub signal: Signal,
    receipt: [u8; MAX_RECEIPT_LEN],
    receipt_len: u16,
}

impl Decision {
    fn new(service: Service, time: Option<u64>) -> Self {
        let signal = Signal::new(service, Reason::NoCard);
        Decision {
            service,
            outcome: signal.outcome,
            reason: Reason::NoCard,
            time,
            card_serial: None,
            status_index: None,
            holder: Holder::default(),
            debit: None,
            log_seq: None,
            signal,
            receipt: [0; MAX_RECEIPT_LEN],
            receipt_len: 0,
        }
    }

    fn set_reason(&mut self, reason: Reason) {
        self.reason = reason;
        self.signal = Signal::new(self.service, reason);
        self.outcome = self.signal.outcome;
    }

    /// The card-signed receipt of a welfare debit (`Signed<ReceiptBody>` wire bytes).
    pub fn receipt(&self) -> Option<&[u8]> {
        (self.receipt_len > 0).then(|| &self.receipt[..self.receipt_len as usize])
    }

    /// Whether the benefit was granted.
    pub fn accepted(&self) -> bool {
        self.outcome == Outcome::Accepted
    }
}

/// Why the terminal could not start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MountError<E> {
    /// The log partition could not be mounted.
    Log(LogError<E>),
    /// A partition's write unit is larger than 64 bytes or does not divide 64.
    BadGeometry,
    /// The root key is not a P-256 point.
    BadRootKey,
    /// The terminal certificate does not verify under the root key or is malformed.
    BadCertificate(Error),
    /// The certificate is not a Terminal certificate for the signer's key.
    CertificateNotForThisKey,
    /// The certificate is longer than [`MAX_CERT_LEN`].
    CertificateTooLong,
}

/// Why an update was refused; the version in force stays in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateError<E> {
    /// The flash failed (the update is not installed).
    Flash(E),
    /// The object does not fit its partition.
    TooLarge,
    /// Its epoch is not newer than the one in force.
    Stale {
        /// Epoch in force.
        installed: u64,
        /// Epoch offered.
        offered: u64,
    },
    /// A status delta does not start from the list in force: fetch the full list.
    EpochMismatch {
        /// Epoch in force.
        installed: u64,
        /// Epoch the delta starts from.
        from: u64,
    },
    /// The signature does not verify.
    Signature,
    /// The signer is not in the trust bundle with the required role, or not valid now.
    UnknownSigner,
    /// The object does not decode or is malformed.
    Malformed(Error),
    /// The status list codec refused the list or the delta.
    StatusList(StatusListError),
    /// A status list or rules arrived before any trust bundle, or a delta before any list.
    NotProvisioned,
    /// The clock is not set, so the signer's validity cannot be checked.
    ClockUnset,
    /// [`Terminal::write_update`] or [`Terminal::finish_update`] without [`Terminal::begin_update`].
    NotStaging,
}

impl<E: core::fmt::Debug> core::fmt::Display for MountError<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MountError::Log(e) => write!(f, "tap log: {e}"),
            MountError::BadGeometry => {
                f.write_str("flash write unit larger than 64 bytes or not dividing 64")
            }
            MountError::BadRootKey => f.write_str("the root key is not a P-256 point"),
            MountError::BadCertificate(e) => {
                write!(f, "terminal certificate refused: {e}")
            }
            MountError::CertificateNotForThisKey => {
                f.write_str("the certificate is not a Terminal certificate for this terminal's key")
            }
            MountError::CertificateTooLong => f.write_str("terminal certificate too long"),
        }
    }
}

#[cfg(feature = "std")]
impl<E: core::fmt::Debug> std::error::Error for MountError<E> {}

impl<E: core::fmt::Debug> core::fmt::Display for UpdateError<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            UpdateError::Flash(e) => write!(f, "flash failed ({e:?}); the previous version stays"),
            UpdateError::TooLarge => f.write_str("the update does not fit its flash partition"),
            UpdateError::Stale { installed, offered } => write!(
                f,
                "epoch {offered} is not newer than the installed epoch {installed}"
            ),
            UpdateError::EpochMismatch { installed, from } => write!(
                f,
                "delta starts from epoch {from} but epoch {installed} is installed: fetch the full list"
            ),
            UpdateError::Signature => f.write_str("signature does not verify"),
            UpdateError::UnknownSigner => {
                f.write_str("signer not in the trust bundle with the required role, or not valid now")
            }
            UpdateError::Malformed(e) => write!(f, "malformed: {e}"),
            UpdateError::StatusList(e) => write!(f, "status list: {e}"),
            UpdateError::NotProvisioned => {
                f.write_str("install a trust bundle (and a full status list) first")
            }
            UpdateError::ClockUnset => f.write_str("set the clock first"),
            UpdateError::NotStaging => f.write_str("no update is being written"),
        }
    }
}

#[cfg(feature = "std")]
impl<E: core::fmt::Debug> std::error::Error for UpdateError<E> {}

impl<E> From<SlotError<E>> for UpdateError<E> {
    fn from(e: SlotError<E>) -> Self {
        match e {
            SlotError::Flash(e) => UpdateError::Flash(e),
            SlotError::TooLarge => UpdateError::TooLarge,
            SlotError::NotStaging => UpdateError::NotStaging,
        }
    }
}

fn malformed<E>(e: Error) -> UpdateError<E> {
    match e {
        Error::Signature | Error::WrongSigner { .. } => UpdateError::Signature,
        Error::StaleEpoch { installed, offered } => UpdateError::Stale { installed, offered },
        Error::EpochMismatch { installed, from } => UpdateError::EpochMismatch { installed, from },
        e => UpdateError::Malformed(e),
    }
}

/// What is installed and how the log stands, for a staff screen and for the update client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TerminalState {
    /// The terminal key's id.
    pub key_id: KeyId,
    /// Services in the terminal certificate.
    pub services: ServiceSet,
    /// Epoch of the trust bundle in force.
    pub bundle_epoch: Option<u64>,
    /// Epoch of the status list in force.
    pub status_epoch: Option<u64>,
    /// When that list was signed.
    pub status_issued_at: Option<u64>,
    /// The service rules in force.
    pub rules: Option<ServiceRulesBody>,
    /// The log.
    pub log: LogState,
}

/// A log batch ready for upload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExportedBatch<'o> {
    /// `Signed<LogBatchBody>` wire bytes (POST them to `/api/v1/terminals/{key_id}/logs`).
    pub wire: &'o [u8],
    /// First record.
    pub first_seq: u32,
    /// Last record (pass it to [`Terminal::acknowledge_upload`] after the server accepted it).
    pub last_seq: u32,
    /// Number of records.
    pub records: u32,
}

#[derive(Clone, Copy, Debug)]
struct Recent {
    serial: CardSerial,
    service: Service,
    time: u64,
    companion_used: bool,
}

/// How long an interrupted debit is kept for its card's retry, in seconds. A holder whose card
/// left the field taps again within moments; a kept debit costs every other card's welfare tap
/// of its amount a second session, and holds the one slot a later interruption would need. A
/// card back after this is debited afresh: if the interrupted DEBIT had completed, it paid
/// twice, and the office sees the lost receipt as a gap in the card's receipt counters.
pub const PENDING_DEBIT_KEPT_S: u64 = 600;

#[derive(Clone, Copy, Debug)]
struct PendingDebit {
    serial: CardSerial,
    amount: u32,
    reference: [u8; NONCE_LEN],
    /// Request time of the first session that announced this debit: a receipt the card signed
    /// in any of its sessions carries a time from `since` on.
    since: u64,
}

/// The debit announced in a welfare request: its intent and, for a retry, the interrupted debit.
#[derive(Clone, Copy, Debug)]
struct Announced {
    intent: DebitIntent,
    retry_of: Option<PendingDebit>,
}

#[derive(Clone, Debug)]
struct CachedIssuer<K> {
    key: Key<K>,
    valid_from: u64,
    valid_until: u64,
}

/// The terminal core over flash partitions `F`, verification backend `V`, terminal key `S`,
/// clock `C`, randomness `R` and feedback device `B`.
pub struct Terminal<F, V: Verifier, S, C, R, B> {
    bundle: SlotPair<F>,
    status: SlotPair<F>,
    rules_slots: SlotPair<F>,
    log: TapLog<F>,
    verifier: V,
    signer: S,
    clock: C,
    rng: R,
    feedback: B,
    root: Key<V::Key>,
    cert: [u8; MAX_CERT_LEN],
    cert_len: usize,
    services: ServiceSet,
    key_id: KeyId,
    rules: Option<ServiceRulesBody>,
    staging: Option<UpdateKind>,
    issuers: [Option<CachedIssuer<V::Key>>; ISSUER_CACHE],
    issuer_next: usize,
    recent: [Option<Recent>; RECENT_CARDS],
    pending_debit: Option<PendingDebit>,
    stats: WireStats,
    /// The status list in force passed [`StatusListView::parse`] when it came into force.
    status_index_checked: bool,
}

/// How a tap ended early: the reason, and a card already identified.
type Step<T> = Result<T, Reason>;

/// What the card's transcript signature is checked with.
struct Transcript<'r, 'a, K> {
    response: &'r Signed<'a>,
    hash: &'r [u8; 32],
    card_key: &'r Key<K>,
}

impl<K: Clone> Transcript<'_, '_, K> {
    /// The card's signature over this session's transcript; a copied credential without the
    /// card's key fails here.
    fn verify<V: Verifier<Key = K>>(&self, verifier: &V) -> Step<()> {
        verify::verify(
            verifier,
            self.response,
            Domain::TapResponse,
            self.hash,
            self.card_key,
        )
        .map(|_| ())
        .map_err(|_| Reason::ClonedCard)
    }
}

impl<F, V, S, C, R, B> Terminal<F, V, S, C, R, B>
where
    F: NorFlash + MappedFlash,
    V: Verifier,
    S: Signer,
    C: Clock,
    R: CryptoRng,
    B: Feedback,
{
    /// Starts the terminal: checks its certificate, mounts every partition (the last complete
    /// version of each object is in force, a torn log tail is dropped) and rebuilds the memory of
    /// recent taps from the log.
    pub fn mount(
        config: TerminalConfig<'_>,
        storage: Storage<F>,
        verifier: V,
        signer: S,
        clock: C,
        rng: R,
        feedback: B,
    ) -> Result<Self, MountError<F::Error>> {
        if F::WRITE_SIZE > MAX_WRITE_SIZE || MAX_WRITE_SIZE % F::WRITE_SIZE != 0 {
            return Err(MountError::BadGeometry);
        }
        let root = Key::parse(&verifier, &config.root_key).ok_or(MountError::BadRootKey)?;
        let signed = Signed::decode(config.certificate).map_err(MountError::BadCertificate)?;
        let (body, _) = verify::verify_certificate(&verifier, &signed, &root)
            .map_err(MountError::BadCertificate)?;
        if body.role != Role::Terminal || body.key_id != signer.key_id() {
            return Err(MountError::CertificateNotForThisKey);
        }
        let services = body.services;
        let key_id = body.key_id;
        let mut cert = [0u8; MAX_CERT_LEN];
        cert.get_mut(..config.certificate.len())
            .ok_or(MountError::CertificateTooLong)?
            .copy_from_slice(config.certificate);

        let log = TapLog::mount(storage.log).map_err(MountError::Log)?;
        let rules_slots = SlotPair::mount(storage.rules, UpdateKind::ServiceRules);
        let rules = rules_slots.view().and_then(decode_rules);
        let mut t = Terminal {
            bundle: SlotPair::mount(storage.bundle, UpdateKind::TrustBundle),
            status: SlotPair::mount(storage.status, UpdateKind::StatusList),
            rules_slots,
            log,
            verifier,
            signer,
            clock,
            rng,
            feedback,
            root,
            cert,
            cert_len: config.certificate.len(),
            services,
            key_id,
            rules,
            staging: None,
            issuers: [const { None }; ISSUER_CACHE],
            issuer_next: 0,
            recent: [None; RECENT_CARDS],
            pending_debit: None,
            stats: WireStats::default(),
            status_index_checked: false,
        };
        t.check_status_index();
        t.rebuild_recent();
        Ok(t)
    }

    /// Checks the block index of the list in force once, when it comes into force (mount, full
    /// install, delta), so that a tap looks it up with [`StatusListView::parse_installed`]
    /// instead of re-checking every index entry: for 38 M entries that re-check was ~0.26 M of a
    /// tap's ~2.2 M instructions. Its payload hash was checked at mount or written at commit.
    fn check_status_index(&mut self) {
        self.status_index_checked = self
            .status
            .view()
            .is_some_and(|list| StatusListView::parse(list).is_ok());
    }

    /// Replays the log so that anti-passback, companion passages and rehab intervals survive a
    /// restart.
    fn rebuild_recent(&mut self) {
        let mut recent = [None; RECENT_CARDS];
        for raw in self.log.records() {
            let Ok(r) = decode_exact::<TapRecord<'_>>(Domain::None, raw.payload) else {
                continue;
            };
            if let Some(serial) = r.card_serial {
                note_recent(&mut recent, serial, r.service, r.reason, r.time);
            }
        }
        self.recent = recent;
    }

    /// Performs one tap with `card` for `request`: decides, shows the signal, logs the record.
    pub fn tap<T: Transport>(&mut self, card: &mut T, request: ServiceRequest) -> Decision {
        let service = request.service();
        let now = self.clock.now();
        let mut d = Decision::new(service, now);
        let reason = match self.decide(card, request, now, &mut d) {
            Ok(r) | Err(r) => r,
        };
        d.set_reason(reason);
        if reason != Reason::LogFull {
            match self.append_record(&d) {
                Ok(seq) => d.log_seq = Some(seq),
                // The decision cannot be kept: a person must look (never an unlogged benefit).
                Err(_) => d.set_reason(Reason::LogFull),
            }
        }
        if let (Some(serial), Some(time)) = (d.card_serial, now) {
            note_recent(&mut self.recent, serial, service, d.reason, time);
        }
        self.feedback.show(&d.signal);
        d
    }

    fn decide<T: Transport>(
        &mut self,
        card: &mut T,
        request: ServiceRequest,
        now: Option<u64>,
        d: &mut Decision,
    ) -> Step<Reason> {
        let service = request.service();
        let now = now.ok_or(Reason::ClockUnset)?;
        let rules = self.rules.ok_or(Reason::NotProvisioned)?;
        let status = *self.status.active().ok_or(Reason::NotProvisioned)?;
        if self.bundle.active().is_none() {
            return Err(Reason::NotProvisioned);
        }
        if !self.log.has_room() {
            return Err(Reason::LogFull);
        }
        if !self.services.contains(service) {
            return Err(Reason::ServiceNotAllowed);
        }
        if let ServiceRequest::Welfare { amount } = request {
            if amount == 0 || amount > rules.max_debit_points {
                return Err(Reason::AmountOverLimit);
            }
        }

        // Welfare: the debit goes into the signed request, since the card debits nothing else
        // (docs/protocol-card.md §3). The card is not known yet, so an interrupted debit of the
        // same amount is announced again under its reference: the card that completed it
        // answers with its stored receipt instead of debiting twice. When another card answers
        // that announcement, its session is dropped before DEBIT and a second one announces a
        // fresh debit: the interrupted reference is left to its own card (its stored receipt stays
        // the one it can show), and the other card is debited under a reference of its own.
        let mut debit = match request {
            ServiceRequest::Welfare { amount } => Some(self.debit_intent(amount, now)),
            _ => None,
        };
        let mut sel = [0u8; 64];
        let mut req_buf = [0u8; 64];
        let mut auth_buf = [0u8; MAX_CERT_LEN + 160];
        let mut rsp = [0u8; MAX_TAP_RESPONSE];
        // At most two sessions: the second announces a fresh debit, so it is never dropped.
        let (n, transcript) = loop {
            // 1. SELECT: the card says nothing about its holder yet.
            let n = match exchange(
                card,
                CLA_ISO,
                INS_SELECT,
                0x04,
                0x00,
                &apdu::AID,
                true,
                &mut sel,
                &mut self.stats,
            ) {
                Ok(n) => n,
                Err(ExchangeError::Status(sw::BLOCKED)) => return Err(Reason::CardBlocked),
                Err(ExchangeError::Transport(_)) => return Err(Reason::NoCard),
                Err(_) => return Err(Reason::NotOurCard),
            };
            let select: SelectResponse =
                decode_versioned(&sel[..n]).map_err(|_| Reason::NotOurCard)?;
            match select.life_cycle {
                LifeCycle::Personalized => {}
                LifeCycle::Blocked => return Err(Reason::CardBlocked),
                LifeCycle::Blank => return Err(Reason::NotOurCard),
            }

            // 2. TERMINAL AUTHENTICATE: our certificate and a request signed over the card
            // challenge, with the debit announced (welfare).
            let mut terminal_nonce = [0u8; NONCE_LEN];
            self.rng.fill_bytes(&mut terminal_nonce);
            let req = TapRequestBody {
                terminal_nonce,
                service,
                requested: requested_attributes(service),
                time: now,
                debit: debit.map(|a| a.intent),
            };
            let req_body =
                encode_versioned_into(&req, &mut req_buf).map_err(|_| Reason::TerminalRejected)?;
            let request_env = sign_body(
                &self.signer,
                Domain::TapRequest,
                &select.challenge,
                req_body,
            )
            .map_err(|_| Reason::TerminalRejected)?;
            let terminal_cert = Signed::decode(&self.cert[..self.cert_len])
                .map_err(|_| Reason::TerminalRejected)?;
            let auth = TerminalAuth {
                terminal_cert,
                request: request_env,
            };
            let auth_data = encode_versioned_into(&auth, &mut auth_buf)
                .map_err(|_| Reason::TerminalRejected)?;
            let n = match exchange(
                card,
                CLA_PROPRIETARY,
                INS_TERMINAL_AUTHENTICATE,
                0,
                0,
                auth_data,
                true,
                &mut rsp,
                &mut self.stats,
            ) {
                Ok(n) => n,
                Err(ExchangeError::Transport(_)) => return Err(Reason::NoCard),
                Err(ExchangeError::Status(sw::SECURITY_STATUS)) => {
                    return Err(Reason::TerminalRejected)
                }
                Err(ExchangeError::Status(sw::BLOCKED)) => return Err(Reason::CardBlocked),
                Err(_) => return Err(Reason::NotOurCard),
            };
            let transcript = transcript_hash(&select.challenge, auth_data);
            if let Some(Announced {
                intent,
                retry_of: Some(p),
            }) = debit
            {
                if answered_by_another(&rsp[..n], &p.serial) {
                    debit = Some(self.fresh_intent(intent.amount));
                    continue;
                }
            }
            break (n, transcript);
        };

        // 3. The answer. Its body must be decoded before its signature can be checked (the card
        // key is inside the credential); nothing of it is used before both signatures verified.
        let response = Signed::decode(&rsp[..n]).map_err(|_| Reason::Malformed)?;
        let body: TapResponseBody<'_> =
            decode_versioned(response.body).map_err(|_| Reason::Malformed)?;
        let credential_env = body.credential;
        let issuer = self.issuer_key(&credential_env.signer, now)?;
        let credential: CredentialBody<'_> =
            verify::open(&self.verifier, &credential_env, &[], &issuer).map_err(|e| match e {
                Error::Signature | Error::WrongSigner { .. } => Reason::ForgedCredential,
                _ => Reason::Malformed,
            })?;
        credential
            .check_structure()
            .map_err(|_| Reason::Malformed)?;
        let card_key =
            Key::parse(&self.verifier, &credential.card_key.0).ok_or(Reason::Malformed)?;
        d.card_serial = Some(credential.card_serial);
        d.status_index = Some(credential.status_index);
        // The card's transcript signature proves it holds the key the credential certifies. A
        // welfare debit proves it too, with one signature less: the receipt is signed by the
        // same key over our fresh reference and key id (see `debit`), so there the transcript is
        // checked only when no fresh receipt arrives.
        let transcript_check = Transcript {
            response: &response,
            hash: &transcript,
            card_key: &card_key,
        };
        if !matches!(request, ServiceRequest::Welfare { .. }) {
            transcript_check.verify(&self.verifier)?;
        }

        // 4. Validity, status, disclosures.
        credential.check_time(now).map_err(|e| match e {
            Error::NotYetValid { .. } => Reason::NotYetValid,
            _ => Reason::Expired,
        })?;
        let list_bytes = self.status.view().ok_or(Reason::NotProvisioned)?;
        let list = if self.status_index_checked {
            StatusListView::parse_installed(list_bytes)
        } else {
            StatusListView::parse(list_bytes)
        }
        .map_err(|_| Reason::StatusListOutdated)?;
        match list.is_revoked(credential.status_index) {
            Ok(true) => return Err(Reason::Revoked),
            Ok(false) => {}
            // Issued after the list was made: it cannot be in it. Otherwise the list does not
            // match the credential and a person must look.
            Err(StatusListError::IndexOutOfRange { .. })
                if credential.valid_from > status.issued_at => {}
            Err(_) => return Err(Reason::StatusListOutdated),
        }
        if now.saturating_sub(status.issued_at) > u64::from(rules.max_status_age_s) {
            return Err(Reason::StatusListOutdated);
        }
        credential
            .check_disclosures(&body.disclosures)
            .map_err(|e| match e {
                Error::DisclosureMismatch { .. } | Error::UnexpectedDisclosure { .. } => {
                    Reason::DisclosureMismatch
                }
                _ => Reason::Malformed,
            })?;
        let requested = requested_attributes(service);
        let mut holder = Holder::default();
        let mut disclosed = AttributeSet::NONE;
        for disclosure in body.disclosures.iter() {
            if !requested.contains(disclosure.attribute) {
                continue; // more than asked: not kept
            }
            let value = disclosure.typed_value().map_err(|_| Reason::Malformed)?;
            holder.set(value);
            disclosed.0 |= 1 << (disclosure.attribute as u8);
        }
        // Every requested attribute the credential covers must be disclosed.
        for id in requested.iter() {
            if credential.digest_of(id).is_some() && !disclosed.contains(id) {
                return Err(Reason::Malformed);
            }
        }
        if holder.certificate_expiry.is_some_and(|t| now > t) {
            return Err(Reason::CertificateExpired);
        }
        let entitlements = holder.entitlements.ok_or(Reason::NotEntitled)?;
        let serial = credential.card_serial;

        // 5. The service rule.
        let reason = match request {
            ServiceRequest::Transit => {
                if !entitlements.has(Entitlements::FREE_TRANSIT) {
                    return Err(Reason::NotEntitled);
                }
                self.transit_rule(serial, entitlements, now, &rules)
            }
            ServiceRequest::Employment => {
                if !entitlements.has(Entitlements::QUOTA_EMPLOYMENT) {
                    return Err(Reason::NotEntitled);
                }
                if holder.name().is_none()
                    || holder.certificate_number.is_none()
                    || holder.category.is_none()
                    || holder.level.is_none()
                {
                    return Err(Reason::Malformed);
                }
                Reason::Ok
            }
            ServiceRequest::Rehab => {
                if !entitlements.has(Entitlements::REHAB_SUBSIDY) {
                    return Err(Reason::NotEntitled);
                }
                if holder.category.is_none() || holder.level.is_none() {
                    return Err(Reason::Malformed);
                }
                let last = self.recent_time(serial, Service::Rehab);
                if last
                    .is_some_and(|t| now.saturating_sub(t) < u64::from(rules.rehab_min_interval_s))
                {
                    Reason::TooSoon
                } else {
                    Reason::Ok
                }
            }
            ServiceRequest::Welfare { .. } => {
                if !entitlements.has(Entitlements::WELFARE_POINTS) {
                    return Err(Reason::NotEntitled);
                }
                d.holder = holder;
                let announced = debit.ok_or(Reason::Malformed)?;
                return self.debit(card, serial, announced, now, &transcript_check, d);
            }
        };
        d.holder = holder;
        Ok(reason)
    }

    fn transit_rule(
        &mut self,
        serial: CardSerial,
        entitlements: Entitlements,
        now: u64,
        rules: &ServiceRulesBody,
    ) -> Reason {
        let Some(r) = self
            .recent
            .iter()
            .flatten()
            .find(|r| r.serial == serial && r.service == Service::Transit)
        else {
            return Reason::Ok;
        };
        let age = now.saturating_sub(r.time);
        if entitlements.has(Entitlements::COMPANION)
            && !r.companion_used
            && age <= u64::from(rules.companion_window_s)
        {
            return Reason::CompanionPassage;
        }
        if age < u64::from(rules.passback_s) {
            return Reason::Passback;
        }
        Reason::Ok
    }

    fn recent_time(&self, serial: CardSerial, service: Service) -> Option<u64> {
        self.recent
            .iter()
            .flatten()
            .find(|r| r.serial == serial && r.service == service)
            .map(|r| r.time)
    }

    /// The debit to announce for `amount`: the interrupted one of the same amount again (and
    /// it), or a fresh reference. An interrupted debit older than [`PENDING_DEBIT_KEPT_S`] is
    /// given up first.
    fn debit_intent(&mut self, amount: u32, now: u64) -> Announced {
        if self
            .pending_debit
            .is_some_and(|p| now.saturating_sub(p.since) > PENDING_DEBIT_KEPT_S)
        {
            self.pending_debit = None;
        }
        match self.pending_debit {
            Some(p) if p.amount == amount => Announced {
                intent: DebitIntent {
                    amount,
                    reference: p.reference,
                },
                retry_of: Some(p),
            },
            _ => self.fresh_intent(amount),
        }
    }

    /// A debit of `amount` under a fresh reference.
    fn fresh_intent(&mut self, amount: u32) -> Announced {
        let mut reference = [0u8; NONCE_LEN];
        self.rng.fill_bytes(&mut reference);
        Announced {
            intent: DebitIntent { amount, reference },
            retry_of: None,
        }
    }

    /// Step 6, DEBIT (welfare): exactly the debit announced in this session's signed request;
    /// the card-signed receipt is verified under the card key and kept.
    fn debit<T: Transport>(
        &mut self,
        card: &mut T,
        serial: CardSerial,
        announced: Announced,
        now: u64,
        transcript: &Transcript<'_, '_, V::Key>,
        d: &mut Decision,
    ) -> Step<Reason> {
        let card_key = transcript.card_key;
        let Announced { intent, retry_of } = announced;
        // A retry announced an earlier reference, whose receipt may have been seen by others in
        // the interrupted session, so that receipt is no proof of the key in this one: the
        // transcript is checked first. (Also when another card answered: it could be a clone
        // holding the receipt of the card that was interrupted.)
        //
        // The one interrupted debit kept (`pending_debit`) belongs to its card: only that card's
        // answer to its retry ends it. Other cards never reach DEBIT under its reference (their
        // first session is dropped, see `decide`, so a retry here is always answered by its own
        // card), and their own debits leave it in place.
        let own_retry = retry_of.is_some_and(|p| p.serial == serial);
        let since = match retry_of {
            Some(p) => {
                transcript.verify(&self.verifier)?;
                if p.serial == serial {
                    p.since
                } else {
                    now
                }
            }
            None => {
                if self
                    .pending_debit
                    .is_some_and(|p| p.serial == serial && p.amount == intent.amount)
                {
                    // Only reachable when the card that answered the retry's session as another
                    // card answers the fresh session as the interrupted one: debiting it now
                    // could debit it twice. Its next tap announces the retry again.
                    transcript.verify(&self.verifier)?;
                    return Err(Reason::DebitInterrupted);
                }
                now
            }
        };
        // The card checks these against the signed intent and request time (6982 otherwise).
        let req = DebitRequest {
            amount: intent.amount,
            reference: intent.reference,
            time: now,
        };
        let mut req_buf = [0u8; 48];
        let data = encode_versioned_into(&req, &mut req_buf).map_err(|_| Reason::Malformed)?;
        let mut rsp = [0u8; MAX_RECEIPT_LEN];
        let n = match exchange(
            card,
            CLA_PROPRIETARY,
            INS_DEBIT,
            0,
            0,
            data,
            true,
            &mut rsp,
            &mut self.stats,
        ) {
            Ok(n) => n,
            Err(e) => {
                // No receipt: the refusal's reason holds only for the card the credential
                // certifies.
                transcript.verify(&self.verifier)?;
                if let ExchangeError::Transport(_) = e {
                    // Kept for a retry, if no interrupted debit is kept yet. A retry interrupted
                    // again keeps its debit as it is. One slot only (fixed memory): while it
                    // holds another debit (of another card, or of this card for another
                    // amount), this interruption is logged but not kept, and its card's next tap
                    // is a fresh debit; if this DEBIT had completed, that card is debited twice
                    // (the server sees the gap in its receipt counters). The kept debit is not
                    // given up for a newer one: its card may already have paid it.
                    if self.pending_debit.is_none() {
                        self.pending_debit = Some(PendingDebit {
                            serial,
                            amount: intent.amount,
                            reference: intent.reference,
                            since,
                        });
                    }
                    return Err(Reason::DebitInterrupted);
                }
                if own_retry {
                    // The card refused the retried debit: it holds no receipt of it.
                    self.pending_debit = None;
                }
                return Err(match e {
                    ExchangeError::Status(sw::CONDITIONS) => Reason::PurseEmpty,
                    ExchangeError::Status(sw::SECURITY_STATUS) => Reason::TerminalRejected,
                    _ => Reason::Malformed,
                });
            }
        };
        if own_retry {
            // The card answered the retry: with its stored receipt (the earlier debit completed)
            // or a fresh one (it did not). Either way it is debited once. (A debit of another
            // amount by that card leaves the retry kept: the card remembers its last three
            // debits, so it can still show the interrupted one's receipt.)
            self.pending_debit = None;
        }
        let receipt_env = Signed::decode(&rsp[..n]).map_err(|_| Reason::Malformed)?;
        let receipt: ReceiptBody = verify::open(&self.verifier, &receipt_env, &[], card_key)
            .map_err(|e| match e {
                Error::Signature | Error::WrongSigner { .. } => Reason::ClonedCard,
                _ => Reason::Malformed,
            })?;
        // The card writes the signed request time of the session that debited: this one, or
        // (a stored receipt) an earlier session that announced the same debit.
        if receipt.card_serial != serial
            || receipt.amount != intent.amount
            || receipt.terminal != self.key_id
            || receipt.reference != intent.reference
            || receipt.time < since
            || receipt.time > now
        {
            return Err(Reason::Malformed);
        }
        d.receipt[..n].copy_from_slice(&rsp[..n]);
        d.receipt_len = n as u16;
        d.debit = Some(Debit {
            amount: intent.amount,
            balance_after: receipt.balance_after,
            counter: receipt.counter,
            reference: intent.reference,
        });
        Ok(Reason::Ok)
    }

    /// The Issuer key `key_id` valid at `now`, from the cache or the trust bundle.
    fn issuer_key(&mut self, key_id: &KeyId, now: u64) -> Step<Key<V::Key>> {
        for c in self.issuers.iter().flatten() {
            if &c.key.id == key_id {
                if now < c.valid_from || now > c.valid_until {
                    return Err(Reason::UnknownIssuer);
                }
                return Ok(c.key.clone());
            }
        }
        let wire = self.bundle.view().ok_or(Reason::NotProvisioned)?;
        let bundle = verify::installed_bundle(wire).map_err(|_| Reason::NotProvisioned)?;
        let (key, valid_from, valid_until) =
            find_key(&self.verifier, &bundle, key_id, Role::Issuer, now).map_err(|e| match e {
                LookupError::Unknown | LookupError::WrongRole | LookupError::OutOfValidity => {
                    Reason::UnknownIssuer
                }
                LookupError::Malformed => Reason::UnknownIssuer,
            })?;
        self.issuers[self.issuer_next] = Some(CachedIssuer {
            key: key.clone(),
            valid_from,
            valid_until,
        });
        self.issuer_next = (self.issuer_next + 1) % ISSUER_CACHE;
        Ok(key)
    }

    fn append_record(&mut self, d: &Decision) -> Result<u32, LogError<F::Error>> {
        let status = self.status.active().copied();
        let receipt = match d.receipt() {
            Some(wire) => Some(Signed::decode(wire).map_err(|_| LogError::TooLong)?),
            None => None,
        };
        let record = TapRecord {
            seq: self.log.next_seq(),
            time: d.time.unwrap_or(0),
            service: d.service,
            outcome: d.outcome,
            reason: d.reason,
            card_serial: d.card_serial,
            status_index: d.status_index,
            status_epoch: status.map_or(0, |s| s.epoch),
            status_issued_at: status.map_or(0, |s| s.issued_at),
            receipt,
        };
        let mut buf = [0u8; MAX_RECORD_LEN];
        let bytes = encode_into(&record, &mut buf).map_err(|_| LogError::TooLong)?;
        self.log.append(bytes)
    }

    // ------------------------------------------------------------------------------------------
    // Updates

    /// Starts a streamed update of `kind`: erases the slot not in force.
    pub fn begin_update(&mut self, kind: UpdateKind) -> Result<(), UpdateError<F::Error>> {
        self.abort_update();
        self.slots(kind).begin()?;
        self.staging = Some(kind);
        Ok(())
    }

    /// Appends bytes of the object being staged.
    pub fn write_update(&mut self, chunk: &[u8]) -> Result<(), UpdateError<F::Error>> {
        let kind = self.staging.ok_or(UpdateError::NotStaging)?;
        let r = self.slots(kind).write(chunk);
        if r.is_err() {
            self.abort_update();
        }
        Ok(r?)
    }

    /// Verifies the staged object where it lies in flash and, if it is valid and newer, puts it in
    /// force. Returns its epoch.
    pub fn finish_update(&mut self) -> Result<u64, UpdateError<F::Error>> {
        let kind = self.staging.take().ok_or(UpdateError::NotStaging)?;
        let r = self.finish_kind(kind);
        if r.is_err() {
            self.slots(kind).abort();
        }
        r
    }

    fn abort_update(&mut self) {
        if let Some(kind) = self.staging.take() {
            self.slots(kind).abort();
        }
    }

    fn slots(&mut self, kind: UpdateKind) -> &mut SlotPair<F> {
        match kind {
            UpdateKind::TrustBundle => &mut self.bundle,
            UpdateKind::StatusList => &mut self.status,
            UpdateKind::ServiceRules => &mut self.rules_slots,
        }
    }

    fn finish_kind(&mut self, kind: UpdateKind) -> Result<u64, UpdateError<F::Error>> {
        let now = self.clock.now();
        let bundle_wire = self.bundle.view();
        let (len, off, view_len, epoch, issued_at, rules) = match kind {
            UpdateKind::TrustBundle => {
                let installed = self.bundle.active().map(|h| h.epoch);
                let staged = self.bundle.staged()?;
                let body =
                    verify::verify_bundle(&self.verifier, staged, &self.root).map_err(malformed)?;
                check_newer(installed, body.epoch)?;
                let len = staged.len() as u32;
                (len, 0, len, body.epoch, body.issued_at, None)
            }
            UpdateKind::StatusList => {
                let installed = self.status.active().map(|h| h.epoch);
                let staged = self.status.staged()?;
                let signed = Signed::decode(staged).map_err(malformed)?;
                let key = signer_key(&self.verifier, bundle_wire, &signed.signer, now)?;
                let body: StatusListBody<'_> =
                    verify::open(&self.verifier, &signed, &[], &key).map_err(malformed)?;
                check_newer(installed, body.epoch)?;
                let list = StatusListView::parse(body.list).map_err(UpdateError::StatusList)?;
                list.validate().map_err(UpdateError::StatusList)?;
                // The list is a sub-slice of the staged bytes: remember where it lies.
                let off = (body.list.as_ptr() as usize).wrapping_sub(staged.as_ptr() as usize);
                let len = staged.len() as u32;
                (
                    len,
                    off as u32,
                    body.list.len() as u32,
                    body.epoch,
                    body.issued_at,
                    None,
                )
            }
            UpdateKind::ServiceRules => {
                let installed = self.rules_slots.active().map(|h| h.epoch);
                let staged = self.rules_slots.staged()?;
                let signed = Signed::decode(staged).map_err(malformed)?;
                let key = signer_key(&self.verifier, bundle_wire, &signed.signer, now)?;
                let body: ServiceRulesBody =
                    verify::open(&self.verifier, &signed, &[], &key).map_err(malformed)?;
                check_newer(installed, body.epoch)?;
                let len = staged.len() as u32;
                (len, 0, len, body.epoch, body.issued_at, Some(body))
            }
        };
        self.slots(kind)
            .commit(len, off, view_len, epoch, issued_at)?;
        match kind {
            UpdateKind::TrustBundle => self.issuers = [const { None }; ISSUER_CACHE],
            UpdateKind::ServiceRules => self.rules = rules,
            UpdateKind::StatusList => self.check_status_index(),
        }
        Ok(epoch)
    }

    fn install(&mut self, kind: UpdateKind, wire: &[u8]) -> Result<u64, UpdateError<F::Error>> {
        self.begin_update(kind)?;
        self.write_update(wire)?;
        self.finish_update()
    }

    /// Verifies and installs a trust bundle (`Signed<TrustBundleBody>`, root-signed, newer epoch).
    pub fn install_trust_bundle(&mut self, wire: &[u8]) -> Result<u64, UpdateError<F::Error>> {
        self.install(UpdateKind::TrustBundle, wire)
    }

    /// Verifies and installs a full status list (`Signed<StatusListBody>` by a StatusSigner of the
    /// trust bundle, newer epoch, list fully checked).
    pub fn install_status_list(&mut self, wire: &[u8]) -> Result<u64, UpdateError<F::Error>> {
        self.install(UpdateKind::StatusList, wire)
    }

    /// Verifies and installs service rules (`Signed<ServiceRulesBody>` by a StatusSigner, newer
    /// epoch).
    pub fn install_service_rules(&mut self, wire: &[u8]) -> Result<u64, UpdateError<F::Error>> {
        self.install(UpdateKind::ServiceRules, wire)
    }

    /// Verifies a status delta (`Signed<StatusDeltaBody>`) and applies it onto the list in force:
    /// the merged list is streamed into the other slot and put in force when complete. A delta
    /// that does not start from the epoch in force is refused with
    /// [`UpdateError::EpochMismatch`]: fetch the full list then.
    pub fn apply_status_delta(&mut self, wire: &[u8]) -> Result<u64, UpdateError<F::Error>> {
        self.abort_update();
        let now = self.clock.now();
        let signed = Signed::decode(wire).map_err(malformed)?;
        let key = signer_key(&self.verifier, self.bundle.view(), &signed.signer, now)?;
        let body: StatusDeltaBody<'_> =
            verify::open(&self.verifier, &signed, &[], &key).map_err(malformed)?;
        let installed = *self.status.active().ok_or(UpdateError::NotProvisioned)?;
        body.check_continues(installed.epoch).map_err(malformed)?;
        let added = IndexSetView::parse(body.added).map_err(UpdateError::StatusList)?;
        let Some((old_bytes, mut sink)) = self.status.derive()? else {
            return Err(UpdateError::NotProvisioned);
        };
        let old = StatusListView::parse(old_bytes).map_err(UpdateError::StatusList)?;
        let written =
            apply_delta_resized(&old, &added, body.size, &mut sink).map_err(|e| match e {
                EncodeError::Sink(e) => UpdateError::from(e),
                EncodeError::Codec(e) => UpdateError::StatusList(e),
            })?;
        let FlashSink { flash, mut writer } = sink;
        writer.finish(flash)?;
        let len = written as u32;
        self.status
            .commit(len, 0, len, body.to_epoch, body.issued_at)?;
        self.check_status_index();
        Ok(body.to_epoch)
    }

    // ------------------------------------------------------------------------------------------
    // Log upload

    /// Writes the oldest records not yet acknowledged (at most `max_records`, as many as fit) into
    /// a terminal-signed `Signed<LogBatchBody>` in `buf`. `None` when nothing is pending.
    pub fn export_log_batch<'o>(
        &mut self,
        max_records: usize,
        buf: &'o mut [u8],
    ) -> Result<Option<ExportedBatch<'o>>, LogError<F::Error>> {
        // Items, the encoded body, and the envelope each get a part of `buf`.
        const BODY_OVERHEAD: usize = 48;
        const ENVELOPE_OVERHEAD: usize = 96;
        let items_cap = buf
            .len()
            .saturating_sub(2 * BODY_OVERHEAD + ENVELOPE_OVERHEAD)
            / 3;
        let (items_buf, rest) = buf.split_at_mut(items_cap);
        let (body_buf, out) = rest.split_at_mut(items_cap + BODY_OVERHEAD);
        let mut writer = ItemsWriter::new(items_buf);
        let mut first = None;
        let mut last = 0u32;
        let mut count = 0u32;
        let mut used = 0usize;
        for r in self.log.pending().take(max_records) {
            if used + r.payload.len() > items_cap {
                break;
            }
            writer
                .push_encoded(r.payload)
                .map_err(|_| LogError::BufferTooSmall)?;
            used += r.payload.len();
            first.get_or_insert(r.seq);
            last = r.seq;
            count += 1;
        }
        let Some(first_seq) = first else {
            return if self.log.pending().next().is_some() {
                Err(LogError::BufferTooSmall)
            } else {
                Ok(None)
            };
        };
        let records: Items<'_, TapRecord<'_>> = writer
            .finish(Domain::LogBatch)
            .map_err(|_| LogError::BufferTooSmall)?;
        let body = LogBatchBody {
            terminal: self.key_id,
            first_seq,
            last_seq: last,
            created_at: self.clock.now().unwrap_or(0),
            records,
        };
        let wire = sign_into(&body, &[], &self.signer, body_buf, out)
            .map_err(|_| LogError::BufferTooSmall)?;
        Ok(Some(ExportedBatch {
            wire,
            first_seq,
            last_seq: last,
            records: count,
        }))
    }

    /// The server accepted every record up to `last_seq`: sectors holding only acknowledged
    /// records are erased.
    pub fn acknowledge_upload(&mut self, last_seq: u32) -> Result<(), LogError<F::Error>> {
        self.log.acknowledge(last_seq)
    }

    // ------------------------------------------------------------------------------------------
    // Inspection

    /// What is installed and how the log stands.
    pub fn state(&self) -> TerminalState {
        TerminalState {
            key_id: self.key_id,
            services: self.services,
            bundle_epoch: self.bundle.active().map(|h| h.epoch),
            status_epoch: self.status.active().map(|h| h.epoch),
            status_issued_at: self.status.active().map(|h| h.issued_at),
            rules: self.rules,
            log: self.log.state(),
        }
    }

    /// Forgets the cached Issuer keys, so that the next tap looks its Issuer up in the trust bundle
    /// and parses the key again (for measuring the worst case; a terminal never needs this).
    pub fn clear_key_cache(&mut self) {
        self.issuers = [const { None }; ISSUER_CACHE];
    }

    /// Counts of what crossed the card interface so far.
    pub fn wire_stats(&self) -> WireStats {
        self.stats
    }

    /// The tap log (records can be read with [`TapLog::records`]).
    pub fn log(&self) -> &TapLog<F> {
        &self.log
    }

    /// The clock.
    pub fn clock(&self) -> &C {
        &self.clock
    }

    /// The clock, e.g. to set it.
    pub fn clock_mut(&mut self) -> &mut C {
        &mut self.clock
    }

    /// The feedback device.
    pub fn feedback(&self) -> &B {
        &self.feedback
    }

    /// The feedback device.
    pub fn feedback_mut(&mut self) -> &mut B {
        &mut self.feedback
    }

    /// Shuts down and returns the partitions (to mount them again, or save them).
    pub fn into_storage(self) -> Storage<F> {
        Storage {
            bundle: self.bundle.into_inner(),
            status: self.status.into_inner(),
            rules: self.rules_slots.into_inner(),
            log: self.log.into_inner(),
        }
    }

    /// The partitions, for tests that cut the power in one of them.
    pub fn partitions_mut(&mut self) -> (&mut [F; 2], &mut [F; 2], &mut [F; 2], &mut F) {
        (
            self.bundle.slots_mut(),
            self.status.slots_mut(),
            self.rules_slots.slots_mut(),
            self.log.flash_mut(),
        )
    }
}

use crate::slots::FlashSink;

fn check_newer<E>(installed: Option<u64>, offered: u64) -> Result<(), UpdateError<E>> {
    match installed {
        Some(installed) if offered <= installed => Err(UpdateError::Stale { installed, offered }),
        _ => Ok(()),
    }
}

/// The StatusSigner key `key_id`, valid now, from the installed bundle.
fn signer_key<V: Verifier, E>(
    verifier: &V,
    bundle_wire: Option<&[u8]>,
    key_id: &KeyId,
    now: Option<u64>,
) -> Result<Key<V::Key>, UpdateError<E>> {
    let now = now.ok_or(UpdateError::ClockUnset)?;
    let wire = bundle_wire.ok_or(UpdateError::NotProvisioned)?;
    let bundle = verify::installed_bundle(wire).map_err(UpdateError::Malformed)?;
    find_key(verifier, &bundle, key_id, Role::StatusSigner, now)
        .map(|(k, _, _)| k)
        .map_err(|_| UpdateError::UnknownSigner)
}

/// Whether the answer to TERMINAL AUTHENTICATE comes from a card other than `serial`, read
/// from its credential before any signature is checked: that only chooses a fresh session, in
/// which every check is made. An answer that does not decode is left to those checks.
fn answered_by_another(answer: &[u8], serial: &CardSerial) -> bool {
    let Ok(response) = Signed::decode(answer) else {
        return false;
    };
    let Ok(body) = decode_versioned::<TapResponseBody<'_>>(response.body) else {
        return false;
    };
    body.credential
        .decode_trusted::<CredentialBody<'_>>()
        .is_ok_and(|c| &c.card_serial != serial)
}

fn decode_rules(wire: &[u8]) -> Option<ServiceRulesBody> {
    Signed::decode(wire).ok()?.decode_trusted().ok()
}

fn note_recent(
    recent: &mut [Option<Recent>; RECENT_CARDS],
    serial: CardSerial,
    service: Service,
    reason: Reason,
    time: u64,
) {
    let tracked = matches!(
        (service, reason),
        (Service::Transit, Reason::Ok | Reason::CompanionPassage) | (Service::Rehab, Reason::Ok)
    );
    if !tracked {
        return;
    }
    if let Some(r) = recent
        .iter_mut()
        .flatten()
        .find(|r| r.serial == serial && r.service == service)
    {
        if reason == Reason::CompanionPassage {
            r.companion_used = true;
        } else {
            r.time = time;
            r.companion_used = false;
        }
        return;
    }
    if reason == Reason::CompanionPassage {
        return;
    }
    // A free slot, else the oldest entry.
    let slot = match recent.iter().position(Option::is_none) {
        Some(i) => i,
        None => recent
            .iter()
            .enumerate()
            .min_by_key(|(_, r)| r.map_or(0, |r| r.time))
            .map_or(0, |(i, _)| i),
    };
    recent[slot] = Some(Recent {
        serial,
        service,
        time,
        companion_used: false,
    });
}
