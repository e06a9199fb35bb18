//! Tap-log ingestion: `POST /api/v1/terminals/{key_id}/logs`.
//!
//! A batch goes through three stages, and nothing is written unless all of them pass:
//! 1. **Open** (blocking thread): the envelope's signature is checked with ring
//!    (`ECDSA_P256_SHA256_FIXED`) over shared-crypto's [`SigningInput`] under the registered
//!    terminal key; only then the terminal's certificate (so that an unsigned POST learns
//!    nothing of it); then the body is decoded (verify, then decode), its records must run
//!    `first_seq..=last_seq`, and each record's exact bytes are hashed.
//! 2. **Verify receipts** (all cores): every card-signed receipt is checked under the key of the
//!    card it names. A receipt that does not verify, names another card or terminal, belongs to
//!    a card this office does not know, or sits on a record without a card refuses the whole
//!    batch (422 `forged_receipt`, naming the lowest such record).
//! 3. **Store** (one writing transaction): records stored before must be byte-identical (else 409
//!    `batch_conflict`); only new records are stored, so a batch sent twice is accepted once and
//!    a terminal that re-exports an overlapping batch after a restart is accepted too. The
//!    receipts go into the points ledger ([`crate::ledger`]), and the anomalies the batch shows
//!    are recorded ([`crate::anomalies`]): a sequence gap, clock drift, a revoked card accepted
//!    after its revocation, impossible travel, and the ledger's own.
//!
//! Throughput: the statements of stage 3 are multi-row and read only what the checks need (a
//! card's running totals, its neighbouring taps), since stage 3 is serialized; stages 1 and 2 of
//! other uploads run meanwhile. What never changes about a card is memoized ([`CardMemo`]), and
//! so are its running totals while no other process has written ([`crate::db::RowMemo`]), so a
//! batch of known cards reads almost nothing. `benches/ingest.rs` measures it.
//!
//! [`SigningInput`]: shared_crypto::sig::SigningInput

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use axum::body::Bytes;
use axum::http::StatusCode;
use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};
use serde::Serialize;
use shared_crypto::model::{
    KeyCertificate, KeyCertificateBody, LogBatchBody, Outcome, Reason, ReceiptBody,
    Role as KeyRole, Service, ServiceSet, TapRecord,
};
use shared_crypto::sig::{Domain, SignatureBytes};
use shared_crypto::wire::take_canonical;
use shared_crypto::{KeyId, PublicKey, Signed};
use sqlx::Row;

use crate::anomalies::{self, CardTap, Finding, Kind, Params, Place, TravelRule};
use crate::db::{get_u64, i64_of, Backend, WriteTx};
use crate::error::{ApiError, ApiResult};
use crate::ledger::{self, CardRow, Debit, Running};
use crate::AppState;

/// The terminal that uploads, as registered.
#[derive(Debug, Clone)]
pub struct Uploader {
    /// Terminal id.
    pub id: i64,
    /// Key id.
    pub key_id: KeyId,
    /// Its public key, compressed (as registered).
    pub public_key: [u8; 33],
    /// Its root-signed Terminal key certificate (wire bytes, as registered).
    pub certificate: Vec<u8>,
}

/// The answer to an upload. `accepted` is the number of records stored now (new), `duplicates`
/// the number that were stored before (byte-identical); `duplicate` is true when nothing was new.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct UploadAnswer {
    /// New records stored.
    pub accepted: u64,
    /// Whether the whole batch had been stored before.
    pub duplicate: bool,
    /// Records of the batch that were stored before.
    pub duplicates: u64,
    /// Receipts added to the points ledger.
    pub receipts: u64,
    /// Anomalies recorded (new findings only).
    pub anomalies: u64,
}

/// A card-signed receipt as it came in a record: the envelope's parts, the body borrowed from
/// the uploaded batch (decoded once, when the batch is opened).
#[derive(Debug, Clone)]
pub(crate) struct RecordReceipt {
    signer: KeyId,
    sig: SignatureBytes,
    body: Bytes,
}

impl RecordReceipt {
    fn signed(&self) -> Signed<'_> {
        Signed {
            signer: self.signer,
            body: &self.body,
            sig: self.sig,
        }
    }

    /// The envelope's wire bytes (as the card made them: encoding is canonical).
    pub(crate) fn wire(&self) -> Vec<u8> {
        self.signed().to_vec()
    }
}

/// One tap record, owned, after its batch verified.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub seq: u32,
    pub time: u64,
    pub service: Service,
    pub outcome: Outcome,
    pub reason: Reason,
    pub card: Option<[u8; 8]>,
    pub status_index: Option<u32>,
    pub status_epoch: u64,
    pub status_issued_at: u64,
    /// The card-signed receipt, if any.
    pub receipt: Option<RecordReceipt>,
    /// SHA-256 of the record's exact encoding in the batch.
    pub hash: [u8; 32],
}

#[derive(Debug)]
struct Opened {
    first_seq: u32,
    last_seq: u32,
    created_at: u64,
    /// Shared with the verification tasks.
    records: Arc<Vec<Record>>,
}

/// A card as ingestion needs it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CardInfo {
    /// Compressed card key.
    pub key: [u8; 33],
    /// Its key id (the signer a receipt must name).
    pub key_id: KeyId,
    /// The key uncompressed (what ring takes), none if the stored key is not a valid point.
    pub full_key: Option<[u8; 65]>,
    /// Points on the card when it was personalized.
    pub initial_points: u64,
    /// The card's id.
    pub id: i64,
    /// When it was revoked, if it was.
    pub revoked_at: Option<u64>,
    /// The status epoch that revoked it.
    pub revoke_epoch: Option<u64>,
}

/// Verifies `signed` as kind `domain` (empty context) with ring under `key` (uncompressed SEC1),
/// which must be the key `key_id` names. The same input as [`Signed::verify`]; only the library
/// differs.
pub fn ring_verify(
    signed: &Signed<'_>,
    domain: Domain,
    key_id: &KeyId,
    key: &[u8; 65],
) -> Result<(), shared_crypto::Error> {
    if signed.signer != *key_id {
        return Err(shared_crypto::Error::WrongSigner {
            expected: *key_id,
            found: signed.signer,
        });
    }
    // ring wants the message in one piece: assembled in a buffer each thread keeps, rather
    // than a fresh allocation per receipt.
    thread_local! {
        static MESSAGE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    MESSAGE.with(|m| {
        let mut m = m.borrow_mut();
        m.clear();
        for part in signed.signing_input(domain, &[]).parts() {
            m.extend_from_slice(part);
        }
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, key)
            .verify(&m, &signed.sig.0)
            .map_err(|_| shared_crypto::Error::Signature)
    })
}

fn uncompressed(key: &[u8; 33]) -> Option<[u8; 65]> {
    PublicKey::from_sec1(key)
        .ok()
        .map(|k| k.to_sec1_uncompressed())
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// What a terminal's certificate allows, once checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Certified {
    /// The services it may perform (and so log).
    pub services: ServiceSet,
    /// Start of its validity.
    pub valid_from: u64,
    /// End of its validity.
    pub valid_until: u64,
}

/// Checks the uploader's registered certificate: signed by this office's root key, a Terminal
/// certificate, for the registered key, and valid at `now` (the server's clock: the server
/// cannot tell when a batch was really signed, and after `valid_until` the key is trusted for
/// nothing). 403 with `terminal_certificate_invalid`, `terminal_certificate_expired` or
/// `terminal_certificate_not_yet_valid`.
pub(crate) fn check_certificate(up: &Uploader, root: &PublicKey, now: u64) -> ApiResult<Certified> {
    let invalid = |why: String| {
        ApiError::forbidden(
            "terminal_certificate_invalid",
            format!(
                "this terminal's registered certificate {why}; its uploads are refused \
                 (本终端登记的证书无效，上传被拒绝)"
            ),
        )
    };
    let signed = Signed::decode(&up.certificate)
        .map_err(|e| invalid(format!("is not a signed object: {e}")))?;
    let root_full = uncompressed_cached(&root.to_sec1())
        .ok_or_else(|| anyhow::anyhow!("the office's root key is not a valid point"))?;
    ring_verify(&signed, Domain::KeyCertificate, &root.key_id(), &root_full)
        .map_err(|e| invalid(format!("does not verify under this office's root key: {e}")))?;
    let body: KeyCertificateBody<'_> = signed
        .decode_trusted()
        .map_err(|e| invalid(format!("does not decode: {e}")))?;
    let cert = KeyCertificate::from_trusted_body(body, signed.signer)
        .map_err(|e| invalid(format!("is malformed: {e}")))?;
    cert.check_role(KeyRole::Terminal)
        .map_err(|e| invalid(format!("is not a Terminal certificate: {e}")))?;
    if cert.body.key_id != up.key_id || cert.body.public_key.0 != up.public_key {
        return Err(invalid(
            "certifies another key than the one registered".to_owned(),
        ));
    }
    cert.check_time(now).map_err(|e| match e {
        shared_crypto::Error::Expired { valid_until, now } => ApiError::forbidden(
            "terminal_certificate_expired",
            format!(
                "this terminal's certificate expired at {valid_until} (now {now}); the terminal \
                 must be registered again with a new key (终端证书已过期，请用新密钥重新登记)"
            ),
        ),
        shared_crypto::Error::NotYetValid { valid_from, now } => ApiError::forbidden(
            "terminal_certificate_not_yet_valid",
            format!(
                "this terminal's certificate is valid from {valid_from} only (now {now}) \
                 (终端证书尚未生效)"
            ),
        ),
        other => invalid(format!("has a bad validity window: {other}")),
    })?;
    Ok(Certified {
        services: cert.body.services,
        valid_from: cert.body.valid_from,
        valid_until: cert.body.valid_until,
    })
}

/// Stage 1: the batch's signature, the terminal's certificate (at `now`, the server's clock),
/// the batch's body and sequence, each record's service against the certificate.
///
/// The signature comes first: until the batch is shown to be the terminal's, the answer says
/// nothing about the terminal (anyone may POST to its URL; the state of its certificate is
/// for the terminal and the office to know).
fn open_batch(wire: &Bytes, uploader: &Uploader, root: &PublicKey, now: u64) -> ApiResult<Opened> {
    let signed = Signed::decode(wire).map_err(|e| {
        ApiError::bad_request(
            "malformed_batch",
            format!("the body is not a signed object: {e}"),
        )
    })?;
    let key = uncompressed_cached(&uploader.public_key)
        .ok_or_else(|| anyhow::anyhow!("stored terminal key invalid"))?;
    ring_verify(&signed, Domain::LogBatch, &uploader.key_id, &key).map_err(|e| {
        ApiError::refused(
            StatusCode::UNPROCESSABLE_ENTITY,
            e.code(),
            format!("the log batch does not verify under this terminal's key: {e}"),
        )
    })?;
    let cert = check_certificate(uploader, root, now)?;
    let batch: LogBatchBody<'_> = signed.decode_trusted().map_err(|e| {
        ApiError::refused(
            StatusCode::UNPROCESSABLE_ENTITY,
            e.code(),
            format!("the log batch verifies but does not decode: {e}"),
        )
    })?;
    if batch.terminal != uploader.key_id {
        return Err(ApiError::invalid(
            "wrong_terminal",
            "the batch names another terminal than the URL",
        ));
    }
    let out_of_sequence = || {
        ApiError::invalid(
            "malformed_batch",
            "the batch's records do not run from first_seq to last_seq without gaps",
        )
    };
    // One pass over the records (the body's decoding checked the list item by item): the
    // sequence (what `LogBatchBody::check_sequence` checks), each record's exact bytes (which a
    // re-sent record must repeat), and each receipt's parts, kept without copying or decoding
    // them again.
    let mut records = Vec::with_capacity(batch.records.len());
    let mut rest = batch.records.raw();
    let mut expected = batch.first_seq;
    while !rest.is_empty() {
        let (r, left) = take_canonical::<TapRecord<'_>>(Domain::LogBatch, rest)
            .map_err(|e| ApiError::invalid(e.code(), format!("a tap record is malformed: {e}")))?;
        let raw = &rest[..rest.len() - left.len()];
        if r.seq != expected {
            return Err(out_of_sequence());
        }
        expected = expected.wrapping_add(1);
        if !cert.services.contains(r.service) {
            return Err(ApiError::invalid(
                "service_not_certified",
                format!(
                    "record seq {}: service {} is not one this terminal's certificate allows; \
                     the batch was refused and nothing of it was stored (终端证书未授权该服务)",
                    r.seq,
                    r.service.name()
                ),
            ));
        }
        records.push(Record {
            seq: r.seq,
            time: r.time,
            service: r.service,
            outcome: r.outcome,
            reason: r.reason,
            card: r.card_serial,
            status_index: r.status_index,
            status_epoch: r.status_epoch,
            status_issued_at: r.status_issued_at,
            receipt: r.receipt.map(|s| RecordReceipt {
                signer: s.signer,
                sig: s.sig,
                body: wire.slice_ref(s.body),
            }),
            hash: sha256(raw),
        });
        rest = left;
    }
    let n = u32::try_from(records.len()).map_err(|_| out_of_sequence())?;
    if n == 0 || batch.last_seq != batch.first_seq.wrapping_add(n - 1) {
        return Err(out_of_sequence());
    }
    if batch.last_seq < batch.first_seq {
        // shared-crypto lets a sequence wrap past u32::MAX; four billion taps are not a
        // terminal's life, and the stored ranges assume first <= last.
        return Err(ApiError::invalid(
            "malformed_batch",
            "the batch's sequence numbers wrap around past 4294967295",
        ));
    }
    Ok(Opened {
        first_seq: batch.first_seq,
        last_seq: batch.last_seq,
        created_at: batch.created_at,
        records: Arc::new(records),
    })
}

/// Terminal keys already decompressed (ring takes only uncompressed points; decompressing is a
/// modular square root). A memo of a pure function, so one for the process; emptied when it
/// reaches [`KEY_CACHE_ENTRIES`]. Card keys are memoized with the rest of the card
/// ([`CardMemo`]).
static KEY_CACHE: std::sync::Mutex<Option<HashMap<[u8; 33], [u8; 65]>>> =
    std::sync::Mutex::new(None);

/// Bound of [`KEY_CACHE`] (about 100 bytes each).
const KEY_CACHE_ENTRIES: usize = 100_000;

fn uncompressed_cached(key: &[u8; 33]) -> Option<[u8; 65]> {
    if let Some(full) = KEY_CACHE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .and_then(|c| c.get(key))
    {
        return Some(*full);
    }
    let full = uncompressed(key)?;
    let mut cache = KEY_CACHE.lock().unwrap_or_else(|e| e.into_inner());
    let cache = cache.get_or_insert_with(HashMap::new);
    if cache.len() >= KEY_CACHE_ENTRIES {
        cache.clear();
    }
    cache.insert(*key, full);
    Some(full)
}

/// What never changes about a card once it exists (its id, key and initial points), memoized
/// per database, and the revocations seen since the memo started, so that a batch reads only
/// what is new. Revocations are only ever added, each in a new status epoch higher than every
/// epoch before it, by a serialized writer: so a card loaded after the memo read the highest
/// revoked epoch `W` shows every revocation up to `W`, and every later one has an epoch above
/// `W` and is found by [`refresh_revocations`] (inside each batch's writing transaction, so as
/// fresh as the batch).
#[derive(Debug, Default)]
pub struct CardMemo {
    inner: std::sync::Mutex<MemoInner>,
}

#[derive(Debug, Default)]
struct MemoInner {
    cards: HashMap<[u8; 8], CardInfo>,
    /// Highest revocation epoch read; none before the first upload.
    watermark: Option<i64>,
    /// Card id -> (revoked_at, epoch) for revocations above the first watermark.
    revoked: HashMap<i64, (u64, u64)>,
}

/// Bound of the card memo (about 200 bytes each); emptied when reached.
const CARD_MEMO_ENTRIES: usize = 500_000;

impl CardMemo {
    fn lock(&self) -> std::sync::MutexGuard<'_, MemoInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The cards named by `serials` that this office knows (memoized; see [`CardMemo`]).
async fn load_cards(
    state: &AppState,
    serials: &BTreeSet<[u8; 8]>,
) -> ApiResult<HashMap<[u8; 8], CardInfo>> {
    let memo = state.db.card_memo();
    let backend = state.db.backend();
    let mut conn = None;
    if memo.lock().watermark.is_none() {
        let c = conn.insert(state.db.pool().acquire().await?);
        let top: Option<i64> = sqlx::query_scalar("SELECT MAX(epoch) FROM revocations")
            .fetch_one(&mut **c)
            .await?;
        let top = top.unwrap_or(0);
        // Two first uploads at once: the lower reading is the safe one (cards loaded after
        // either reading show at least the revocations up to the lower).
        let mut m = memo.lock();
        m.watermark = Some(m.watermark.map_or(top, |w| w.min(top)));
    }
    let mut out = HashMap::with_capacity(serials.len());
    let mut missing: Vec<[u8; 8]> = Vec::new();
    {
        let m = memo.lock();
        for s in serials {
            match m.cards.get(s) {
                Some(c) => {
                    out.insert(*s, *c);
                }
                None => missing.push(*s),
            }
        }
    }
    if missing.is_empty() {
        return Ok(out);
    }
    let mut c = match conn {
        Some(c) => c,
        None => state.db.pool().acquire().await?,
    };
    let mut loaded = Vec::with_capacity(missing.len());
    for chunk in missing.chunks(1000) {
        let mut p = Params::new(backend);
        let marks = p.list(chunk.iter().map(|s| s.to_vec()));
        let sql = format!(
            "SELECT c.id, c.serial, c.card_key, j.initial_points, r.revoked_at, r.epoch \
             FROM cards c JOIN personalization_jobs j ON j.id = c.job_id \
             LEFT JOIN revocations r ON r.card_id = c.id WHERE c.serial IN ({})",
            marks
        );
        for row in p.query(sql).fetch_all(&mut *c).await? {
            let serial: [u8; 8] = crate::db::get_array(&row, "serial")?;
            let key: [u8; 33] = crate::db::get_array(&row, "card_key")?;
            let revoked_at: Option<i64> = row.try_get("revoked_at")?;
            let epoch: Option<i64> = row.try_get("epoch")?;
            loaded.push((
                serial,
                CardInfo {
                    id: row.try_get("id")?,
                    key,
                    key_id: shared_crypto::sig::key_id_of(&key),
                    full_key: None,
                    initial_points: get_u64(&row, "initial_points")?,
                    revoked_at: revoked_at.and_then(|v| u64::try_from(v).ok()),
                    revoke_epoch: epoch.and_then(|v| u64::try_from(v).ok()),
                },
            ));
        }
    }
    drop(c);
    // Decompressing the keys is the costly part of a new card: on the blocking pool.
    let loaded = tokio::task::spawn_blocking(move || {
        for (_, card) in &mut loaded {
            card.full_key = uncompressed(&card.key);
        }
        loaded
    })
    .await
    .map_err(|e| anyhow::anyhow!("card key task: {e}"))?;
    let mut m = memo.lock();
    if m.cards.len() + loaded.len() > CARD_MEMO_ENTRIES {
        m.cards.clear();
    }
    for (serial, card) in loaded {
        m.cards.insert(serial, card);
        out.insert(serial, card);
    }
    Ok(out)
}

/// Inside a writing transaction: reads the revocations above the memo's watermark and brings
/// `cards` up to date with every revocation committed before this transaction.
async fn refresh_revocations(
    state: &AppState,
    tx: &mut WriteTx,
    cards: &mut HashMap<[u8; 8], CardInfo>,
) -> ApiResult<()> {
    let memo = state.db.card_memo();
    let watermark = memo.lock().watermark.unwrap_or(0);
    let rows = sqlx::query("SELECT card_id, revoked_at, epoch FROM revocations WHERE epoch > $1")
        .bind(watermark)
        .fetch_all(tx.conn())
        .await?;
    let mut m = memo.lock();
    for row in rows {
        let id: i64 = row.try_get("card_id")?;
        let epoch: i64 = row.try_get("epoch")?;
        let at = get_u64(&row, "revoked_at")?;
        m.revoked
            .insert(id, (at, u64::try_from(epoch).unwrap_or(0)));
        m.watermark = Some(m.watermark.map_or(epoch, |w| w.max(epoch)));
    }
    if !m.revoked.is_empty() {
        for card in cards.values_mut() {
            if let Some((at, epoch)) = m.revoked.get(&card.id) {
                card.revoked_at = Some(*at);
                card.revoke_epoch = Some(*epoch);
            }
        }
    }
    Ok(())
}

fn forged(seq: u32, why: impl std::fmt::Display) -> ApiError {
    ApiError::invalid(
        "forged_receipt",
        format!("record seq {seq}: {why}; the batch was refused and nothing of it was stored"),
    )
}

/// One receipt to verify: its record and card.
#[derive(Debug, Clone, Copy)]
struct ReceiptJob {
    index: usize,
    serial: [u8; 8],
    key_id: KeyId,
    full_key: Option<[u8; 65]>,
}

fn check_receipt(
    r: &RecordReceipt,
    job: &ReceiptJob,
    terminal: &KeyId,
) -> Result<ReceiptBody, String> {
    let key = job
        .full_key
        .ok_or_else(|| "the card's registered key is unusable".to_owned())?;
    let signed = r.signed();
    ring_verify(&signed, Domain::Receipt, &job.key_id, &key)
        .map_err(|e| format!("the receipt does not verify under the card's key: {e}"))?;
    let body: ReceiptBody = signed
        .decode_trusted()
        .map_err(|e| format!("the receipt does not decode: {e}"))?;
    if body.card_serial != job.serial {
        return Err(format!(
            "the receipt is card {}'s, the record names card {}",
            hex::encode(body.card_serial),
            hex::encode(job.serial)
        ));
    }
    if body.terminal != *terminal {
        return Err(format!(
            "the receipt was made for terminal {}, not this one",
            hex::encode(body.terminal)
        ));
    }
    Ok(body)
}

/// Receipts per task of the verification pool: small enough that the cores finish a batch
/// together (and the next batch's tasks fill in behind), large enough that queueing costs
/// nothing next to 64 verifications.
const VERIFY_CHUNK: usize = 64;

type Task = Box<dyn FnOnce() + Send>;

/// A fixed set of threads, one per core, that verify receipts, fed first in, first out: the
/// batches of several uploads queue here, so a batch's receipts are verified while an earlier
/// batch is being written, with no thread started per batch.
struct VerifyPool {
    queue: std::sync::Mutex<std::collections::VecDeque<Task>>,
    ready: std::sync::Condvar,
}

impl VerifyPool {
    fn get() -> &'static VerifyPool {
        static POOL: std::sync::OnceLock<&'static VerifyPool> = std::sync::OnceLock::new();
        POOL.get_or_init(|| {
            let pool: &'static VerifyPool = Box::leak(Box::new(VerifyPool {
                queue: std::sync::Mutex::new(std::collections::VecDeque::new()),
                ready: std::sync::Condvar::new(),
            }));
            let threads = std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1);
            for i in 0..threads {
                let spawned = std::thread::Builder::new()
                    .name(format!("receipt-verify-{i}"))
                    .spawn(move || pool.work());
                if let Err(e) = spawned {
                    tracing::error!("starting a receipt verification thread: {e}");
                }
            }
            pool
        })
    }

    fn work(&self) {
        loop {
            let task = {
                let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    if let Some(t) = q.pop_front() {
                        break t;
                    }
                    q = self.ready.wait(q).unwrap_or_else(|e| e.into_inner());
                }
            };
            // A task that panics must not take its thread with it: once every thread had gone,
            // uploads would wait for ever. Its dropped answer channel already fails its upload.
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(task)).is_err() {
                tracing::error!("a receipt verification task panicked");
            }
        }
    }

    fn submit(&self, tasks: impl IntoIterator<Item = Task>) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.extend(tasks);
        drop(q);
        self.ready.notify_all();
    }
}

/// Stage 2: every receipt, on the verification pool. Answers the decoded receipt of each record
/// that has one.
async fn verify_receipts(
    records: Arc<Vec<Record>>,
    cards: &HashMap<[u8; 8], CardInfo>,
    terminal: KeyId,
) -> ApiResult<Vec<Option<ReceiptBody>>> {
    // The cheap refusals first, in record order.
    let mut jobs: Vec<ReceiptJob> = Vec::new();
    for (i, r) in records.iter().enumerate() {
        if r.receipt.is_none() {
            continue;
        }
        let Some(serial) = r.card else {
            return Err(forged(r.seq, "a receipt on a record without a card"));
        };
        let Some(card) = cards.get(&serial) else {
            return Err(forged(
                r.seq,
                format!(
                    "a receipt of card {}, which this office did not issue",
                    hex::encode(serial)
                ),
            ));
        };
        jobs.push(ReceiptJob {
            index: i,
            serial,
            key_id: card.key_id,
            full_key: card.full_key,
        });
    }
    let mut out = vec![None; records.len()];
    if jobs.is_empty() {
        return Ok(out);
    }
    type Results = Vec<(usize, Result<ReceiptBody, String>)>;
    let (send, mut receive) = tokio::sync::mpsc::unbounded_channel::<Results>();
    // Once a receipt fails the batch is refused, and the refusal names the lowest failing
    // record: receipts after the lowest failure found so far are skipped (none of them can be
    // the one named), those before it are still checked. Each task runs its receipts in
    // ascending order, so it stops at the first one past the failure.
    let lowest_failure = Arc::new(std::sync::atomic::AtomicUsize::new(usize::MAX));
    let chunks: Vec<Vec<ReceiptJob>> = jobs.chunks(VERIFY_CHUNK).map(<[_]>::to_vec).collect();
    let n = chunks.len();
    VerifyPool::get().submit(chunks.into_iter().map(|part| {
        let (records, send, lowest) = (records.clone(), send.clone(), lowest_failure.clone());
        Box::new(move || {
            let mut results = Vec::with_capacity(part.len());
            for job in &part {
                if job.index > lowest.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let Some(receipt) = records[job.index].receipt.as_ref() else {
                    continue;
                };
                let r = check_receipt(receipt, job, &terminal);
                if r.is_err() {
                    lowest.fetch_min(job.index, std::sync::atomic::Ordering::Relaxed);
                }
                results.push((job.index, r));
            }
            // The upload may have gone (client gone): nothing to tell then.
            let _ = send.send(results);
        }) as Task
    }));
    drop(send);
    let mut first_failure: Option<(usize, String)> = None;
    for _ in 0..n {
        let results = receive
            .recv()
            .await
            .ok_or_else(|| anyhow::anyhow!("a receipt verification task failed"))?;
        for (i, r) in results {
            match r {
                Ok(body) => out[i] = Some(body),
                Err(why) => {
                    if first_failure.as_ref().is_none_or(|(j, _)| i < *j) {
                        first_failure = Some((i, why));
                    }
                }
            }
        }
    }
    if let Some((i, why)) = first_failure {
        return Err(forged(records[i].seq, why));
    }
    if jobs.iter().any(|j| out[j.index].is_none()) {
        return Err(anyhow::anyhow!("a receipt was not verified").into());
    }
    Ok(out)
}

/// Handles one upload (stages in the module documentation).
pub async fn upload(state: &AppState, uploader: Uploader, wire: Bytes) -> ApiResult<UploadAnswer> {
    let received_at = crate::now();
    let up = uploader.clone();
    let root = state.keys.root.public_key();
    let kept = wire.clone();
    let opened = tokio::task::spawn_blocking(move || open_batch(&kept, &up, &root, received_at))
        .await
        .map_err(|e| anyhow::anyhow!("batch verification task: {e}"))??;
    let serials: BTreeSet<[u8; 8]> = opened.records.iter().filter_map(|r| r.card).collect();
    let cards = load_cards(state, &serials).await?;
    let receipts = verify_receipts(opened.records.clone(), &cards, uploader.key_id).await?;
    store(
        state,
        &uploader,
        &wire,
        opened,
        receipts,
        cards,
        received_at,
    )
    .await
}

/// Whether a stored tap row is the record `r` (by hash; rows from before the hash was kept are
/// compared by the fields they have).
fn same_record(row: &sqlx::any::AnyRow, r: &Record) -> Result<bool, sqlx::Error> {
    let hash: Option<Vec<u8>> = row.try_get("record_hash")?;
    if let Some(h) = hash {
        return Ok(h == r.hash);
    }
    let card: Option<Vec<u8>> = row.try_get("card_serial")?;
    let index: Option<i64> = row.try_get("status_index")?;
    Ok(get_u64(row, "time")? == r.time
        && get_u64(row, "service")? == u64::from(r.service as u8)
        && get_u64(row, "outcome")? == u64::from(r.outcome as u8)
        && get_u64(row, "reason")? == u64::from(r.reason as u8)
        && card.as_deref() == r.card.as_ref().map(|c| c.as_slice())
        && index == r.status_index.map(i64::from)
        && get_u64(row, "status_epoch")? == r.status_epoch)
}

/// Stage 3: everything in one writing transaction.
async fn store(
    state: &AppState,
    up: &Uploader,
    wire: &[u8],
    opened: Opened,
    receipts: Vec<Option<ReceiptBody>>,
    mut cards: HashMap<[u8; 8], CardInfo>,
    received_at: u64,
) -> ApiResult<UploadAnswer> {
    let Opened {
        first_seq,
        last_seq,
        created_at,
        records,
    } = opened;
    let records: &[Record] = &records;
    let mut tx = state.db.begin_write().await?;

    // Records stored before must be the same bytes.
    let stored_rows = sqlx::query(
        "SELECT seq, record_hash, time, service, outcome, reason, card_serial, status_index, \
         status_epoch FROM taps WHERE terminal_id = $1 AND seq >= $2 AND seq <= $3",
    )
    .bind(up.id)
    .bind(i64::from(first_seq))
    .bind(i64::from(last_seq))
    .fetch_all(tx.conn())
    .await?;
    let mut stored: HashSet<u32> = HashSet::with_capacity(stored_rows.len());
    for row in &stored_rows {
        let seq = u32::try_from(get_u64(row, "seq")?)
            .map_err(|_| anyhow::anyhow!("stored seq out of range"))?;
        let r = &records[(seq - first_seq) as usize];
        if !same_record(row, r)? {
            return Err(ApiError::conflict(
                "batch_conflict",
                format!(
                    "record seq {seq} differs from the record stored with that sequence number \
                     before; nothing of this batch was stored"
                ),
            ));
        }
        stored.insert(seq);
    }
    let duplicates = stored.len() as u64;
    let fresh: Vec<usize> = (0..records.len())
        .filter(|i| !stored.contains(&records[*i].seq))
        .collect();
    if fresh.is_empty() {
        // Seen before, byte for byte: nothing to write (the transaction rolls back).
        return Ok(UploadAnswer {
            accepted: 0,
            duplicate: true,
            duplicates,
            receipts: 0,
            anomalies: 0,
        });
    }
    // The terminal's sequence (a gap before this batch, or a gap it fills) and its clock.
    let highest: Option<i64> =
        sqlx::query_scalar("SELECT MAX(seq) FROM taps WHERE terminal_id = $1")
            .bind(up.id)
            .fetch_one(tx.conn())
            .await?;
    let mut findings = terminal_findings(
        up,
        &BatchHead {
            first_seq,
            last_seq,
            created_at,
        },
        highest,
        received_at,
        state.config.clock_drift_bound_s,
    );
    let fills_gap = highest.is_some_and(|h| fresh.iter().any(|&i| i64::from(records[i].seq) < h));

    // The upload and its new records.
    let low = records[fresh[0]].seq;
    let high = records[fresh[fresh.len() - 1]].seq;
    let batch_id: i64 = sqlx::query_scalar(
        "INSERT INTO log_batches (terminal_id, first_seq, last_seq, terminal_time, wire, \
         received_at) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
    )
    .bind(up.id)
    .bind(i64::from(low))
    .bind(i64::from(high))
    .bind(i64_of(created_at))
    .bind(wire.to_vec())
    .bind(i64_of(received_at))
    .fetch_one(tx.conn())
    .await?;
    let backend = state.db.backend();
    // The running totals and latest tap of every card of the new records, in one read.
    let tapped: BTreeSet<[u8; 8]> = fresh.iter().filter_map(|&i| records[i].card).collect();
    let rows = load_card_rows(&mut tx, backend, &tapped).await?;
    // Impossible travel, against the card's neighbouring taps anywhere (read before this
    // batch's taps are stored; they are added from memory).
    let travel = travel_findings(state, &mut tx, up, records, &fresh, &rows).await?;
    insert_taps(&mut tx, backend, up.id, batch_id, records, &fresh).await?;

    // The points ledger.
    let mut debits: BTreeMap<[u8; 8], Vec<Debit>> = BTreeMap::new();
    for &i in &fresh {
        let (Some(body), Some(wire)) = (&receipts[i], &records[i].receipt) else {
            continue;
        };
        debits.entry(body.card_serial).or_default().push(Debit {
            counter: body.counter,
            amount: u64::from(body.amount),
            balance_after: u64::from(body.balance_after),
            terminal_id: up.id,
            terminal: up.key_id,
            time: body.time,
            reference: body.reference,
            tap_seq: Some(i64::from(records[i].seq)),
            wire: wire.wire(),
        });
    }
    let ledger = ledger::apply(&mut tx, backend, up.id, debits, &cards, &rows).await?;
    findings.extend(ledger.findings);
    write_card_rows(
        &mut tx,
        backend,
        up.id,
        records,
        &fresh,
        &rows,
        &ledger.totals,
    )
    .await?;

    // A revoked card accepted after its revocation (as of every revocation committed before
    // this transaction).
    refresh_revocations(state, &mut tx, &mut cards).await?;
    for &i in &fresh {
        let r = &records[i];
        let (Outcome::Accepted, Some(serial)) = (r.outcome, r.card) else {
            continue;
        };
        let Some(card) = cards.get(&serial) else {
            continue;
        };
        let (Some(revoked_at), Some(epoch)) = (card.revoked_at, card.revoke_epoch) else {
            continue;
        };
        // Times are whole seconds from two different clocks: a tap in the very second of the
        // revocation cannot be ordered after it, so only a later second is evidence.
        if r.time <= revoked_at {
            continue; // accepted while still valid (or not provably after)
        }
        findings.push(revoked_finding(up, r, serial, revoked_at, epoch));
    }

    findings.extend(travel);

    let mut anomalies = anomalies::record(&mut tx, backend, &findings).await?;
    // Interrupted debits that completed on the card: for the cards with a new counter gap or a
    // new interrupted tap (rare), now that both are stored.
    let suspects: BTreeSet<[u8; 8]> = findings
        .iter()
        .filter(|f| f.kind == anomalies::Kind::CounterGap)
        .filter_map(|f| f.card)
        .chain(fresh.iter().filter_map(|&i| {
            let r = &records[i];
            (r.reason == Reason::DebitInterrupted)
                .then_some(r.card)
                .flatten()
        }))
        .collect();
    if !suspects.is_empty() {
        let lost = ledger::interrupted_debit_findings(&mut tx, up.id, &suspects).await?;
        anomalies += anomalies::record(&mut tx, backend, &lost).await?;
    }
    if fills_gap {
        resolve_sequence_gaps(&mut tx, up.id).await?;
    }
    tx.audit(
        &format!("terminal:{}", hex::encode(up.key_id)),
        "logs.upload",
        format!("log_batch:{batch_id}"),
        serde_json::json!({
            "first_seq": first_seq,
            "last_seq": last_seq,
            "new": fresh.len(),
            "duplicates": duplicates,
            "receipts": ledger.stored,
            "anomalies": anomalies,
        }),
    );
    tx.commit().await?;
    Ok(UploadAnswer {
        accepted: fresh.len() as u64,
        duplicate: false,
        duplicates,
        receipts: ledger.stored,
        anomalies,
    })
}

/// What a batch says about its terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BatchHead {
    first_seq: u32,
    last_seq: u32,
    created_at: u64,
}

/// The terminal's faults a batch shows: records skipped since the highest stored one
/// (`highest`, none for a terminal's first batch, whose log starts at 0), and a clock further
/// than `bound_s` from the server's at `received_at`.
fn terminal_findings(
    up: &Uploader,
    b: &BatchHead,
    highest: Option<i64>,
    received_at: u64,
    bound_s: u64,
) -> Vec<Finding> {
    let mut findings = Vec::new();
    let terminal = hex::encode(up.key_id);
    let expected = highest.map_or(0, |h| h + 1);
    if i64::from(b.first_seq) > expected {
        let (from, to) = (expected, i64::from(b.first_seq) - 1);
        findings.push(Finding {
            kind: Kind::SequenceGap,
            terminal_id: up.id,
            card: None,
            detail: format!(
                "terminal {terminal} skipped records {from} to {to} ({} missing) before this \
                 batch",
                to - from + 1
            ),
            evidence: serde_json::json!({
                "terminal": terminal,
                "missing_from": from,
                "missing_to": to,
                "missing": to - from + 1,
                "highest_stored": highest,
                "batch_first_seq": b.first_seq,
                "batch_last_seq": b.last_seq,
            }),
            fingerprint: format!("{}:{from}-{to}", up.id),
        });
    }
    let drift = i128::from(b.created_at) - i128::from(received_at);
    if drift.unsigned_abs() > u128::from(bound_s) {
        findings.push(Finding {
            kind: Kind::ClockDrift,
            terminal_id: up.id,
            card: None,
            detail: format!(
                "terminal {terminal} made this batch at {} by its clock, {} s {} the server's \
                 clock at arrival (bound {bound_s} s)",
                b.created_at,
                drift.unsigned_abs(),
                if drift > 0 { "ahead of" } else { "behind" },
            ),
            evidence: serde_json::json!({
                "terminal": terminal,
                "batch_created_at": b.created_at,
                "received_at": received_at,
                "drift_s": i64::try_from(drift).unwrap_or(i64::MAX),
                "bound_s": bound_s,
                "batch_first_seq": b.first_seq,
                "batch_last_seq": b.last_seq,
            }),
            fingerprint: format!("{}:{}-{}:{}", up.id, b.first_seq, b.last_seq, b.created_at),
        });
    }
    findings
}

async fn insert_taps(
    tx: &mut WriteTx,
    backend: Backend,
    terminal_id: i64,
    batch_id: i64,
    records: &[Record],
    fresh: &[usize],
) -> Result<(), sqlx::Error> {
    for chunk in fresh.chunks(500) {
        let mut p = Params::new(backend);
        let rows: Vec<String> = chunk
            .iter()
            .map(|&i| {
                let r = &records[i];
                p.row(vec![
                    terminal_id.into(),
                    i64::from(r.seq).into(),
                    i64_of(r.time).into(),
                    i64::from(r.service as u8).into(),
                    i64::from(r.outcome as u8).into(),
                    i64::from(r.reason as u8).into(),
                    r.card.map(|c| c.to_vec()).into(),
                    r.status_index.map(i64::from).into(),
                    i64_of(r.status_epoch).into(),
                    batch_id.into(),
                    r.hash.to_vec().into(),
                    i64_of(r.status_issued_at).into(),
                ])
            })
            .collect();
        let sql = format!(
            "INSERT INTO taps (terminal_id, seq, time, service, outcome, reason, card_serial, \
             status_index, status_epoch, batch_id, record_hash, status_issued_at) VALUES {}",
            rows.join(",")
        );
        p.query(sql).execute(tx.conn()).await?;
    }
    Ok(())
}

/// The `card_points` rows of `serials` (see [`CardRow`]), from the memo where it is valid (see
/// [`crate::db::RowMemo`]); a card without a row is absent.
async fn load_card_rows(
    tx: &mut WriteTx,
    backend: Backend,
    serials: &BTreeSet<[u8; 8]>,
) -> ApiResult<HashMap<[u8; 8], CardRow>> {
    // Rows this process read or wrote since the last commit of anyone else need no reading.
    let (mut out, list) = tx.memoized_rows(serials);
    out.reserve(list.len());
    for chunk in list.chunks(1000) {
        let mut p = Params::new(backend);
        let marks = p.list(chunk.iter().map(|s| s.to_vec()));
        let sql = format!(
            "SELECT card_serial, receipts, debited, top_counter, top_balance, last_tap_time, \
             last_tap_terminal, last_tap_seq FROM card_points WHERE card_serial IN ({marks})"
        );
        for row in p.query(sql).fetch_all(tx.conn()).await? {
            let serial: [u8; 8] = crate::db::get_array(&row, "card_serial")?;
            let receipts = get_u64(&row, "receipts")?;
            let top = u32::try_from(get_u64(&row, "top_counter")?)
                .map_err(|_| anyhow::anyhow!("stored counter out of range"))?;
            let time: Option<i64> = row.try_get("last_tap_time")?;
            let terminal: Option<i64> = row.try_get("last_tap_terminal")?;
            let seq: Option<i64> = row.try_get("last_tap_seq")?;
            let last_tap = match (time, terminal, seq) {
                (Some(t), Some(id), Some(s)) => Some((
                    u64::try_from(t).map_err(|_| anyhow::anyhow!("stored time negative"))?,
                    id,
                    u32::try_from(s).map_err(|_| anyhow::anyhow!("stored seq out of range"))?,
                )),
                _ => None,
            };
            out.insert(
                serial,
                CardRow {
                    receipts,
                    debited: get_u64(&row, "debited")?,
                    top: (receipts > 0).then_some((top, get_u64(&row, "top_balance")?)),
                    last_tap,
                },
            );
        }
    }
    Ok(out)
}

/// Writes the `card_points` rows that the new records change: the running totals of the
/// receipts stored (`totals`) and the latest tap. Absolute values: the rows were read in this
/// transaction, and writers are serialized.
async fn write_card_rows(
    tx: &mut WriteTx,
    backend: Backend,
    terminal_id: i64,
    records: &[Record],
    fresh: &[usize],
    rows: &HashMap<[u8; 8], CardRow>,
    totals: &BTreeMap<[u8; 8], Running>,
) -> Result<(), sqlx::Error> {
    let mut changed: BTreeMap<[u8; 8], CardRow> = BTreeMap::new();
    for &i in fresh {
        let r = &records[i];
        let Some(serial) = r.card else { continue };
        let row = changed
            .entry(serial)
            .or_insert_with(|| rows.get(&serial).copied().unwrap_or_default());
        let key = (r.time, terminal_id, r.seq);
        if row.last_tap.is_none_or(|last| key > last) {
            row.last_tap = Some(key);
        }
    }
    let none = Running::default();
    let after: Vec<([u8; 8], CardRow)> = changed
        .into_iter()
        .map(|(s, row)| (s, row.plus(totals.get(&s).unwrap_or(&none))))
        .collect();
    // Every tapped card's row as this transaction leaves it, for the memo.
    tx.remember_rows(after.iter().copied());
    let changed: Vec<([u8; 8], CardRow)> = after
        .into_iter()
        .filter(|(s, row)| rows.get(s) != Some(row))
        .collect();
    for chunk in changed.chunks(500) {
        let mut p = Params::new(backend);
        let values: Vec<String> = chunk
            .iter()
            .map(|(serial, row)| {
                let (top, balance) = row.top.unwrap_or((0, 0));
                let last = row.last_tap;
                p.row(vec![
                    serial.to_vec().into(),
                    i64_of(row.receipts).into(),
                    i64_of(row.debited).into(),
                    i64::from(top).into(),
                    i64_of(balance).into(),
                    last.map(|l| i64_of(l.0)).into(),
                    last.map(|l| l.1).into(),
                    last.map(|l| i64::from(l.2)).into(),
                ])
            })
            .collect();
        let sql = format!(
            "INSERT INTO card_points (card_serial, receipts, debited, top_counter, top_balance, \
             last_tap_time, last_tap_terminal, last_tap_seq) VALUES {} ON CONFLICT (card_serial) \
             DO UPDATE SET receipts = excluded.receipts, debited = excluded.debited, \
             top_counter = excluded.top_counter, top_balance = excluded.top_balance, \
             last_tap_time = excluded.last_tap_time, last_tap_terminal = excluded.last_tap_terminal, \
             last_tap_seq = excluded.last_tap_seq",
            values.join(",")
        );
        p.query(sql).execute(tx.conn()).await?;
    }
    Ok(())
}

fn revoked_finding(
    up: &Uploader,
    r: &Record,
    serial: [u8; 8],
    revoked_at: u64,
    epoch: u64,
) -> Finding {
    let behind = i128::from(revoked_at) - i128::from(r.status_issued_at);
    let list_age = i128::from(r.time) - i128::from(r.status_issued_at);
    let epochs_behind = i128::from(epoch) - i128::from(r.status_epoch);
    let why = if epochs_behind > 0 {
        format!(
            "its status list (epoch {}, issued {} s before the revocation) was {} epoch(s) behind",
            r.status_epoch, behind, epochs_behind
        )
    } else {
        format!(
            "its status list (epoch {}) already held the revocation (epoch {epoch})",
            r.status_epoch
        )
    };
    Finding {
        kind: Kind::RevokedCardAccepted,
        terminal_id: up.id,
        card: Some(serial),
        detail: format!(
            "terminal {} accepted card {} (record seq {}) {} s after its revocation; {why}",
            hex::encode(up.key_id),
            hex::encode(serial),
            r.seq,
            r.time - revoked_at
        ),
        evidence: serde_json::json!({
            "terminal": hex::encode(up.key_id),
            "seq": r.seq,
            "service": r.service.name(),
            "tap_time": r.time,
            "revoked_at": revoked_at,
            "revocation_epoch": epoch,
            "status_epoch": r.status_epoch,
            "status_issued_at": r.status_issued_at,
            "epochs_behind": epochs_behind as i64,
            "list_age_at_tap_s": list_age as i64,
            "list_issued_before_revocation_s": behind as i64,
        }),
        fingerprint: format!("{}:{}", up.id, r.seq),
    }
}

/// A tap in the order the travel rule walks a card's taps: (time, terminal id, seq).
type TapKey = (u64, i64, u32);

/// Finds the card's nearest earlier and later taps around each new tap (any terminal, any
/// batch, and the batch itself) and applies the travel rule to each neighbouring pair with a new
/// tap in it. Runs before the new taps are stored.
async fn travel_findings(
    state: &AppState,
    tx: &mut WriteTx,
    up: &Uploader,
    records: &[Record],
    fresh: &[usize],
    rows: &HashMap<[u8; 8], CardRow>,
) -> ApiResult<Vec<Finding>> {
    let rule = TravelRule::of(&state.config);
    let horizon = i64_of(rule.horizon_s());
    // Per card: the time span of its new taps, and the first of them in tap order.
    let mut spans: BTreeMap<[u8; 8], (i64, i64, TapKey)> = BTreeMap::new();
    for &i in fresh {
        let r = &records[i];
        if let Some(c) = r.card {
            let t = i64_of(r.time);
            let key = (r.time, up.id, r.seq);
            let e = spans.entry(c).or_insert((t, t, key));
            e.0 = e.0.min(t);
            e.1 = e.1.max(t);
            e.2 = e.2.min(key);
        }
    }
    if spans.is_empty() {
        return Ok(Vec::new());
    }
    let new_taps: HashSet<u32> = fresh.iter().map(|&i| records[i].seq).collect();
    let mut taps: BTreeMap<[u8; 8], BTreeSet<(u64, i64, u32)>> = BTreeMap::new();
    // The usual case needs no search: the card's new taps all come after its latest stored
    // one (kept in its `card_points` row), which is then the only stored tap next to one of
    // them (the nearest earlier; no later one exists), and only within the horizon, as the
    // search below would find it. A card without a row or without a latest tap has no stored
    // tap. The other cards (taps arriving out of order) are searched in the index.
    let mut list: Vec<([u8; 8], (i64, i64))> = Vec::new();
    for (serial, (lo, hi, first)) in spans {
        match rows.get(&serial).and_then(|r| r.last_tap) {
            None => {}
            Some(last) if last < first && i64_of(last.0) >= lo.saturating_sub(horizon) => {
                taps.entry(serial).or_default().insert(last);
            }
            Some(last) if last < first => {}
            Some(_) => list.push((serial, (lo, hi))),
        }
    }
    let backend = state.db.backend();
    for chunk in list.chunks(500) {
        // Within each card's span: every tap. Before and after it: the nearest ones within the
        // horizon (farther ones cannot break the rule), each found by one index seek. CROSS JOIN
        // keeps SQLite's planner from scanning all taps instead (it orders the loops as
        // written); PostgreSQL treats it as the inner join it is.
        let mut p = Params::new(backend);
        let rows: Vec<String> = chunk
            .iter()
            .map(|(serial, (lo, hi))| {
                p.row(vec![
                    serial.to_vec().into(),
                    (*lo).into(),
                    (*hi).into(),
                    lo.saturating_sub(horizon).into(),
                    hi.saturating_add(horizon).into(),
                ])
            })
            .collect();
        let sql = format!(
            "WITH w (s, lo, hi, fl, ce) AS (VALUES {}) \
             SELECT t.card_serial, t.terminal_id, t.seq, t.time FROM w CROSS JOIN taps t \
             WHERE t.card_serial = w.s AND t.time >= w.lo AND t.time <= w.hi \
             UNION ALL SELECT t.card_serial, t.terminal_id, t.seq, t.time FROM w CROSS JOIN taps t \
             WHERE t.card_serial = w.s AND t.time = (SELECT MAX(b.time) FROM taps b \
             WHERE b.card_serial = w.s AND b.time < w.lo AND b.time >= w.fl) \
             UNION ALL SELECT t.card_serial, t.terminal_id, t.seq, t.time FROM w CROSS JOIN taps t \
             WHERE t.card_serial = w.s AND t.time = (SELECT MIN(a.time) FROM taps a \
             WHERE a.card_serial = w.s AND a.time > w.hi AND a.time <= w.ce)",
            rows.join(",")
        );
        for row in p.query(sql).fetch_all(tx.conn()).await? {
            let serial: [u8; 8] = crate::db::get_array(&row, "card_serial")?;
            let seq = u32::try_from(get_u64(&row, "seq")?).unwrap_or(u32::MAX);
            taps.entry(serial).or_default().insert((
                get_u64(&row, "time")?,
                row.try_get("terminal_id")?,
                seq,
            ));
        }
    }
    for &i in fresh {
        let r = &records[i];
        if let Some(c) = r.card {
            taps.entry(c).or_default().insert((r.time, up.id, r.seq));
        }
    }
    let terminal_ids: BTreeSet<i64> = taps.values().flatten().map(|t| t.1).collect();
    let places = load_places(tx, backend, &terminal_ids).await?;
    let mut findings = Vec::new();
    for (serial, list) in &taps {
        let list: Vec<CardTap> = list
            .iter()
            .filter_map(|(time, tid, seq)| {
                places.get(tid).map(|p| CardTap {
                    place: *p,
                    seq: *seq,
                    time: *time,
                })
            })
            .collect();
        for pair in list.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            let is_new = |t: &CardTap| t.place.terminal_id == up.id && new_taps.contains(&t.seq);
            if !is_new(a) && !is_new(b) {
                continue;
            }
            let Some(evidence) = anomalies::impossible_travel(a, b, &rule) else {
                continue;
            };
            findings.push(Finding {
                kind: Kind::ImpossibleTravel,
                terminal_id: up.id,
                card: Some(*serial),
                detail: format!(
                    "card {} tapped at terminal {} (seq {}) and at terminal {} (seq {}) {} s \
                     apart, too far for the time between ({} rule)",
                    hex::encode(serial),
                    hex::encode(a.place.key_id),
                    a.seq,
                    hex::encode(b.place.key_id),
                    b.seq,
                    a.time.abs_diff(b.time),
                    evidence["rule"].as_str().unwrap_or("?")
                ),
                evidence,
                fingerprint: anomalies::travel_fingerprint(serial, a, b),
            });
        }
    }
    Ok(findings)
}

/// Terminal id -> place, for `ids`.
pub(crate) async fn load_places(
    tx: &mut WriteTx,
    backend: Backend,
    ids: &BTreeSet<i64>,
) -> Result<HashMap<i64, Place>, sqlx::Error> {
    let ids: Vec<i64> = ids.iter().copied().collect();
    let mut out = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(1000) {
        let mut p = Params::new(backend);
        let marks = p.list(chunk.iter().copied());
        let sql = format!(
            "SELECT id, key_id, region, latitude, longitude FROM terminals WHERE id IN ({})",
            marks
        );
        for row in p.query(sql).fetch_all(tx.conn()).await? {
            let lat: Option<i64> = row.try_get("latitude")?;
            let lon: Option<i64> = row.try_get("longitude")?;
            let id: i64 = row.try_get("id")?;
            out.insert(
                id,
                Place {
                    terminal_id: id,
                    key_id: crate::db::get_array(&row, "key_id")?,
                    region: u32::try_from(get_u64(&row, "region")?).unwrap_or(0),
                    location: lat.zip(lon),
                },
            );
        }
    }
    Ok(out)
}

/// Marks the terminal's open sequence gaps that are now filled as resolved.
async fn resolve_sequence_gaps(tx: &mut WriteTx, terminal_id: i64) -> ApiResult<()> {
    let open = sqlx::query(
        "SELECT id, evidence FROM anomalies WHERE kind = $1 AND terminal_id = $2 AND \
         resolved_at IS NULL",
    )
    .bind(Kind::SequenceGap.name())
    .bind(terminal_id)
    .fetch_all(tx.conn())
    .await?;
    for row in open {
        let id: i64 = row.try_get("id")?;
        let evidence: String = row.try_get("evidence")?;
        let Some((from, to)) = ledger::missing_range(&evidence) else {
            continue;
        };
        let present: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM taps WHERE terminal_id = $1 AND seq >= $2 AND seq <= $3",
        )
        .bind(terminal_id)
        .bind(from)
        .bind(to)
        .fetch_one(tx.conn())
        .await?;
        if present == to - from + 1 {
            anomalies::resolve(tx, id).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::RingSigner;
    use shared_crypto::{P256Signer, Signer};

    #[test]
    fn sequence_gaps_and_clock_drift_of_a_batch() {
        let up = Uploader {
            id: 3,
            key_id: [0xAA; 8],
            public_key: [2; 33],
            certificate: Vec::new(),
        };
        let head = |first_seq, created_at| BatchHead {
            first_seq,
            last_seq: first_seq + 9,
            created_at,
        };
        let kinds = |f: &[Finding]| f.iter().map(|f| f.kind).collect::<Vec<_>>();
        // A first batch from 0, a next batch right after the highest stored record, or one
        // overlapping stored records: nothing.
        assert!(terminal_findings(&up, &head(0, 1000), None, 1000, 300).is_empty());
        assert!(terminal_findings(&up, &head(10, 1000), Some(9), 1000, 300).is_empty());
        assert!(terminal_findings(&up, &head(5, 1000), Some(9), 1000, 300).is_empty());
        // Records 10 and 11 never came.
        let f = terminal_findings(&up, &head(12, 1000), Some(9), 1000, 300);
        assert_eq!(kinds(&f), [Kind::SequenceGap]);
        assert_eq!(f[0].evidence["missing_from"], 10);
        assert_eq!(f[0].evidence["missing_to"], 11);
        assert_eq!(f[0].fingerprint, "3:10-11");
        // A first batch not from 0.
        let f = terminal_findings(&up, &head(1, 1000), None, 1000, 300);
        assert_eq!(
            (
                f[0].evidence["missing_from"].clone(),
                f[0].evidence["missing_to"].clone()
            ),
            (0.into(), 0.into())
        );
        // The clock: 300 s either way is within the bound, 301 is not.
        assert!(terminal_findings(&up, &head(0, 1300), None, 1000, 300).is_empty());
        assert!(terminal_findings(&up, &head(0, 700), None, 1000, 300).is_empty());
        let f = terminal_findings(&up, &head(0, 1301), None, 1000, 300);
        assert_eq!(kinds(&f), [Kind::ClockDrift]);
        assert_eq!(f[0].evidence["drift_s"], 301);
        assert!(f[0].detail.contains("ahead of"));
        let f = terminal_findings(&up, &head(0, 699), None, 1000, 300);
        assert_eq!(f[0].evidence["drift_s"], -301);
        assert!(f[0].detail.contains("behind"));
        // Both at once.
        let f = terminal_findings(&up, &head(20, 5000), Some(9), 1000, 300);
        assert_eq!(kinds(&f), [Kind::SequenceGap, Kind::ClockDrift]);
    }

    /// ring verifies what shared-crypto's signers (p256 on cards and terminals, ring on the
    /// server) sign, and refuses every alteration: the same answers as shared-crypto's own
    /// verification.
    #[test]
    fn ring_verifies_what_shared_crypto_signs() {
        let card = P256Signer::from_bytes(&[7u8; 32]).unwrap();
        let (server, _) = RingSigner::generate().unwrap();
        let body = ReceiptBody {
            card_serial: [1; 8],
            counter: 3,
            amount: 20,
            balance_after: 80,
            terminal: [2; 8],
            time: 1_700_000_000,
            reference: [9; 16],
        };
        for signer in [&card as &dyn Signer, &server as &dyn Signer] {
            let wire = shared_crypto::sig::sign(&body, &[], signer).unwrap();
            let signed = Signed::decode(&wire).unwrap();
            let key = PublicKey::from_sec1(
                &(if signer.key_id() == card.key_id() {
                    card.public_key()
                } else {
                    server.public_key()
                })
                .to_sec1(),
            )
            .unwrap();
            let full = key.to_sec1_uncompressed();
            let id = key.key_id();
            ring_verify(&signed, Domain::Receipt, &id, &full).unwrap();
            assert_eq!(
                signed.open::<ReceiptBody>(&[], &key).unwrap(),
                body,
                "p256 agrees"
            );
            assert_eq!(
                ring_verify(&signed, Domain::Voucher, &id, &full),
                Err(shared_crypto::Error::Signature)
            );
            assert!(matches!(
                ring_verify(&signed, Domain::Receipt, &[0; 8], &full),
                Err(shared_crypto::Error::WrongSigner { .. })
            ));
            for i in 0..wire.len() {
                let mut bad = wire.clone();
                bad[i] ^= 0x01;
                let Ok(s) = Signed::decode(&bad) else {
                    continue;
                };
                let ours = ring_verify(&s, Domain::Receipt, &id, &full).is_ok();
                let theirs = s.verify(Domain::Receipt, &[], &key).is_ok();
                assert_eq!(ours, theirs, "byte {i}");
                assert!(!ours, "byte {i} flipped still verifies");
            }
        }
    }
}
