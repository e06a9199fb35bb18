//! Test and emulation support (feature `testkit`): **never for a real terminal**.
//!
//! * [`Authority`]: a root, an Issuer, a StatusSigner and a terminal key from a seed, and the signed
//!   objects a server would send (certificates, trust bundle, status list and delta, rules), all
//!   built without allocation so the Cortex-M4 image can use them too.
//! * [`CardSpec`] + [`issue_card`]: a real applet in memory, personalized over SCP03
//!   (`card_applet::sim::personalize_in_memory`); [`forge_card`] personalizes a real applet with a
//!   credential whose issuer signature is forged.
//! * [`EmulatedCard`]: an attacker's card that plays the tap protocol with content of our choice and
//!   its own key — a *clone* (another card's credential and disclosures, dumped, without that
//!   card's key) or a card that lies about a disclosure. The real applet refuses to be personalized
//!   with either, which is why an emulator stands in for the attacker's device.
//! * [`TestClock`], [`RecordingFeedback`].
//!
//! The keys come from a seed through `card_applet::sim::TestRng`: anyone who knows the seed knows
//! them. That is the point for tests and for QEMU (which has no hardware RNG); nothing here may
//! ship in a terminal.

use core::cell::Cell;

use card_applet::host::{self, CardProfile, HostError};
use card_applet::sim::{personalize_in_memory, CardGone, InMemoryCard, TestRng};
use card_applet::StaticKeys;
use rand_core::Rng;
use shared_crypto::apdu::{self, sw, Transport};
use shared_crypto::certno::CertificateNumber;
use shared_crypto::model::{
    transcript_hash, AttributeDigest, AttributeId, AttributeValue, BlockCommand, CardBlockBody,
    CardSerial, CredentialBody, DebitRequest, Disclosure, Entitlements, KeyCertificateBody,
    LifeCycle, ReceiptBody, Role, SelectResponse, ServiceRulesBody, ServiceSet, StatusDeltaBody,
    StatusListBody, TapResponseBody, TerminalAuth, TrustBundleBody, NONCE_LEN,
};
use shared_crypto::scp03::{diversify, DIV_DATA_LEN};
use shared_crypto::sig::{sha256_parts, sign_into, KeyId, P256Signer, SignError, Signer};
use shared_crypto::status_list::{write_index_set, SliceSink, StatusListEncoder};
use shared_crypto::wire::{encode_versioned_into, ByteArray, Items, ItemsWriter};
use shared_crypto::Error;

use crate::feedback::Signal;
use crate::platform::{Clock, Feedback};

pub use card_applet::sim::TestRng as EmulationRng;

/// The factory master key of the emulated card manufacturer (tests only).
pub const FACTORY_MASTER: [u8; 16] = *b"emulation-only!!";

fn key_from(seed: u64, label: &[u8]) -> Result<P256Signer, Error> {
    let mut rng = TestRng::from_seed(sha256_parts(&[b"testkit key", label, &seed.to_be_bytes()]));
    P256Signer::generate(&mut rng)
}

/// A signer that claims another key's id but signs with its own key: a forger.
pub struct ForgingSigner<'a> {
    /// The key id claimed.
    pub claimed: KeyId,
    /// The key that actually signs.
    pub key: &'a P256Signer,
}

impl Signer for ForgingSigner<'_> {
    fn key_id(&self) -> KeyId {
        self.claimed
    }
    fn sign_parts(&self, parts: &[&[u8]]) -> Result<[u8; 64], SignError> {
        self.key.sign_parts(parts)
    }
}

/// The keys of a demo platform and the objects its server would sign.
pub struct Authority {
    /// Root key (certifies every other key).
    pub root: P256Signer,
    /// Issuer key in the trust bundle.
    pub issuer: P256Signer,
    /// An Issuer key certified by the root but absent from the bundle.
    pub other_issuer: P256Signer,
    /// StatusSigner key in the bundle.
    pub status_signer: P256Signer,
    /// A key that is nobody's.
    pub rogue: P256Signer,
    /// The terminal's key.
    pub terminal: P256Signer,
    /// Validity start of every certificate.
    pub valid_from: u64,
    /// Validity end of every certificate.
    pub valid_until: u64,
}

impl Authority {
    /// Keys derived from `seed`; certificates valid from `valid_from` to `valid_until`.
    pub fn new(seed: u64, valid_from: u64, valid_until: u64) -> Result<Self, Error> {
        Ok(Authority {
            root: key_from(seed, b"root")?,
            issuer: key_from(seed, b"issuer")?,
            other_issuer: key_from(seed, b"other issuer")?,
            status_signer: key_from(seed, b"status signer")?,
            rogue: key_from(seed, b"rogue")?,
            terminal: key_from(seed, b"terminal")?,
            valid_from,
            valid_until,
        })
    }

    /// The root public key, compressed.
    pub fn root_key(&self) -> [u8; 33] {
        self.root.public_key().to_sec1()
    }

    /// A root-signed key certificate for `key`.
    pub fn certificate<'o>(
        &self,
        key: &P256Signer,
        role: Role,
        subject: &str,
        services: ServiceSet,
        out: &'o mut [u8],
    ) -> Result<&'o [u8], Error> {
        let body = KeyCertificateBody {
            key_id: key.key_id(),
            role,
            subject,
            region: 110105,
            services,
            public_key: key.public_key().to_bytes(),
            valid_from: self.valid_from,
            valid_until: self.valid_until,
        };
        let mut scratch = [0u8; 256];
        Ok(sign_into(&body, &[], &self.root, &mut scratch, out)?)
    }

    /// The terminal's certificate for `services`.
    pub fn terminal_certificate<'o>(
        &self,
        services: ServiceSet,
        out: &'o mut [u8],
    ) -> Result<&'o [u8], Error> {
        self.certificate(&self.terminal, Role::Terminal, "gate 7", services, out)
    }

    /// A root-signed trust bundle holding the Issuer and the StatusSigner (and `extra` certs).
    pub fn trust_bundle<'o>(
        &self,
        epoch: u64,
        issued_at: u64,
        extra: &[&[u8]],
        out: &'o mut [u8],
    ) -> Result<&'o [u8], Error> {
        let mut c1 = [0u8; 256];
        let mut c2 = [0u8; 256];
        let issuer = self.certificate(
            &self.issuer,
            Role::Issuer,
            "office 110105",
            ServiceSet::NONE,
            &mut c1,
        )?;
        let status = self.certificate(
            &self.status_signer,
            Role::StatusSigner,
            "status",
            ServiceSet::NONE,
            &mut c2,
        )?;
        let mut items = [0u8; 2048];
        let mut w = ItemsWriter::new(&mut items);
        w.push_encoded(issuer)?;
        w.push_encoded(status)?;
        for e in extra {
            w.push_encoded(e)?;
        }
        let certs = w.finish(shared_crypto::sig::Domain::TrustBundle)?;
        let body = TrustBundleBody {
            epoch,
            issued_at,
            certs,
        };
        let mut scratch = [0u8; 2200];
        Ok(sign_into(&body, &[], &self.root, &mut scratch, out)?)
    }

    /// A status list of `size` entries with `revoked` (strictly increasing), signed by `signer`.
    pub fn status_list_by<'o>(
        &self,
        signer: &dyn Signer,
        epoch: u64,
        issued_at: u64,
        size: u32,
        revoked: &[u32],
        out: &'o mut [u8],
    ) -> Result<&'o [u8], Error> {
        let mut list = [0u8; 512];
        let mut sink = SliceSink::new(&mut list);
        StatusListEncoder::new(size)
            .write(revoked.iter().copied(), &mut sink)
            .map_err(|_| Error::BufferTooSmall)?;
        let body = StatusListBody {
            epoch,
            issued_at,
            list: sink.written(),
        };
        let mut scratch = [0u8; 600];
        Ok(sign_into(&body, &[], signer, &mut scratch, out)?)
    }

    /// A status list signed by the StatusSigner.
    pub fn status_list<'o>(
        &self,
        epoch: u64,
        issued_at: u64,
        size: u32,
        revoked: &[u32],
        out: &'o mut [u8],
    ) -> Result<&'o [u8], Error> {
        self.status_list_by(&self.status_signer, epoch, issued_at, size, revoked, out)
    }

    /// A status delta `from -> to` adding `added` (strictly increasing).
    pub fn status_delta<'o>(
        &self,
        from_epoch: u64,
        to_epoch: u64,
        issued_at: u64,
        size: u32,
        added: &[u32],
        out: &'o mut [u8],
    ) -> Result<&'o [u8], Error> {
        let mut set = [0u8; 256];
        let mut sink = SliceSink::new(&mut set);
        write_index_set(added.iter().copied(), &mut sink).map_err(|_| Error::BufferTooSmall)?;
        let body = StatusDeltaBody {
            from_epoch,
            to_epoch,
            issued_at,
            size,
            added: sink.written(),
        };
        let mut scratch = [0u8; 320];
        Ok(sign_into(
            &body,
            &[],
            &self.status_signer,
            &mut scratch,
            out,
        )?)
    }

    /// Service rules signed by the StatusSigner.
    pub fn service_rules<'o>(
        &self,
        rules: &ServiceRulesBody,
        out: &'o mut [u8],
    ) -> Result<&'o [u8], Error> {
        let mut scratch = [0u8; 96];
        Ok(sign_into(
            rules,
            &[],
            &self.status_signer,
            &mut scratch,
            out,
        )?)
    }

    /// An Issuer-signed order blocking `serial` and the Issuer's certificate, as BLOCK command data.
    pub fn block_command<'o>(
        &self,
        serial: CardSerial,
        time: u64,
        out: &'o mut [u8],
    ) -> Result<&'o [u8], Error> {
        let mut cert = [0u8; 256];
        let issuer_cert = self.certificate(
            &self.issuer,
            Role::Issuer,
            "office 110105",
            ServiceSet::NONE,
            &mut cert,
        )?;
        let order = CardBlockBody {
            card_serial: serial,
            time,
            reason: 1,
        };
        let mut scratch = [0u8; 64];
        let mut order_wire = [0u8; 160];
        let order_wire = sign_into(&order, &[], &self.issuer, &mut scratch, &mut order_wire)?;
        let cmd = BlockCommand {
            issuer_cert: shared_crypto::Signed::decode(issuer_cert)?,
            order: shared_crypto::Signed::decode(order_wire)?,
        };
        Ok(encode_versioned_into(&cmd, out)?)
    }
}

/// What to put on a card.
#[derive(Clone, Copy, Debug)]
pub struct CardSpec<'a> {
    /// Serial number.
    pub serial: CardSerial,
    /// Status-list index.
    pub status_index: u32,
    /// Credential validity start.
    pub valid_from: u64,
    /// Credential validity end.
    pub valid_until: u64,
    /// Holder's name.
    pub name: &'a str,
    /// Certificate number (20 characters, valid).
    pub certificate_number: &'a str,
    /// Entitlement flags.
    pub entitlements: u8,
    /// Certificate expiry attribute.
    pub certificate_expiry: u64,
    /// Initial welfare points.
    pub initial_points: u32,
}

impl CardSpec<'_> {
    /// A card entitled to everything, valid from `from` to `until`.
    pub fn entitled(serial: u8, status_index: u32, from: u64, until: u64) -> Self {
        CardSpec {
            serial: [0xC0, 0, 0, 0, 0, 0, 0, serial],
            status_index,
            valid_from: from,
            valid_until: until,
            name: "张三",
            certificate_number: "11010519491231002X42",
            entitlements: Entitlements::ALL,
            certificate_expiry: until,
            initial_points: 100,
        }
    }
}

/// The disclosures of a card, with storage for their values.
pub struct Attributes {
    values: [([u8; 64], usize, AttributeId, [u8; NONCE_LEN]); 8],
    count: usize,
}

impl Attributes {
    /// Every attribute of `spec` with salts derived from `seed`.
    pub fn of(spec: &CardSpec<'_>, seed: u64) -> Result<Self, Error> {
        let certno = CertificateNumber::parse(spec.certificate_number)
            .map_err(|_| Error::BadAttributeValue { attribute: 2 })?;
        let values = [
            AttributeValue::Name(spec.name),
            AttributeValue::CertificateNumber(certno),
            AttributeValue::Category(certno.category),
            AttributeValue::Level(certno.level),
            AttributeValue::Region(110105),
            AttributeValue::BirthYear(1949),
            AttributeValue::Entitlements(Entitlements(spec.entitlements)),
            AttributeValue::CertificateExpiry(spec.certificate_expiry),
        ];
        let mut a = Attributes {
            values: [([0u8; 64], 0, AttributeId::Name, [0u8; NONCE_LEN]); 8],
            count: 0,
        };
        let mut rng = TestRng::from_seed(sha256_parts(&[b"salts", &seed.to_be_bytes()]));
        for v in values {
            let mut buf = [0u8; 64];
            let n = v.encode(&mut buf).len();
            let mut salt = [0u8; NONCE_LEN];
            rng.fill_bytes(&mut salt);
            a.values[a.count] = (buf, n, v.id(), salt);
            a.count += 1;
        }
        Ok(a)
    }

    /// Replaces the value of `id` (to make a disclosure lie).
    pub fn set(&mut self, value: AttributeValue<'_>) {
        for (buf, n, id, _) in self.values.iter_mut().take(self.count) {
            if *id == value.id() {
                *n = value.encode(buf).len();
            }
        }
    }

    /// The disclosures.
    pub fn disclosures(&self) -> [Disclosure<'_>; 8] {
        core::array::from_fn(|i| {
            let (buf, n, id, salt) = &self.values[i];
            Disclosure {
                attribute: *id,
                salt: *salt,
                value: &buf[..*n],
            }
        })
    }
}

/// The credential for `card_key` with the digests of `attrs`, signed by `issuer`.
pub fn credential<'o>(
    spec: &CardSpec<'_>,
    attrs: &Attributes,
    card_key: &[u8; 33],
    issuer: &dyn Signer,
    out: &'o mut [u8],
) -> Result<&'o [u8], Error> {
    let mut digests = [0u8; 256];
    let mut w = ItemsWriter::new(&mut digests);
    for d in attrs.disclosures() {
        w.push(&AttributeDigest {
            attribute: d.attribute,
            digest: d.digest(),
        })?;
    }
    let digests = w.finish::<AttributeDigest>(shared_crypto::sig::Domain::Credential)?;
    let body = CredentialBody {
        card_serial: spec.serial,
        status_index: spec.status_index,
        valid_from: spec.valid_from,
        valid_until: spec.valid_until,
        card_key: ByteArray(*card_key),
        digests,
    };
    let mut scratch = [0u8; 512];
    Ok(sign_into(&body, &[], issuer, &mut scratch, out)?)
}

/// Why a card could not be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KitError {
    /// Personalization failed.
    Personalization(HostError<CardGone>),
    /// Encoding or signing failed.
    Format(Error),
    /// The applet's store failed.
    Store,
}

impl From<Error> for KitError {
    fn from(e: Error) -> Self {
        KitError::Format(e)
    }
}

impl From<HostError<CardGone>> for KitError {
    fn from(e: HostError<CardGone>) -> Self {
        KitError::Personalization(e)
    }
}

fn blank_card(seed: u64) -> Result<(InMemoryCard<TestRng>, StaticKeys), KitError> {
    let mut div = [0u8; DIV_DATA_LEN];
    div[..8].copy_from_slice(&seed.to_be_bytes());
    let card = InMemoryCard::blank(TestRng::new(seed), &FACTORY_MASTER, div)
        .map_err(|_| KitError::Store)?;
    Ok((card, diversify(&FACTORY_MASTER, &div)))
}

/// A real applet in memory, personalized over SCP03 with `spec`, its credential signed by
/// `issuer`.
pub fn issue_card(
    authority: &Authority,
    spec: &CardSpec<'_>,
    issuer: &dyn Signer,
    seed: u64,
) -> Result<InMemoryCard<TestRng>, KitError> {
    let (mut card, keys) = blank_card(seed)?;
    let attrs = Attributes::of(spec, seed)?;
    let disclosures = attrs.disclosures();
    let profile = CardProfile {
        card_serial: spec.serial,
        status_index: spec.status_index,
        valid_from: spec.valid_from,
        valid_until: spec.valid_until,
        disclosures: &disclosures,
        root_key: authority.root.public_key(),
        initial_points: spec.initial_points,
    };
    let mut host_rng = TestRng::new(seed ^ 0x5A5A);
    personalize_in_memory(&mut card, &mut host_rng, &keys, issuer, &profile)?;
    Ok(card)
}

/// A real applet in memory whose credential claims the bundle's Issuer but is signed by the
/// rogue key (the card cannot tell: it holds only the root key).
pub fn forge_card(
    authority: &Authority,
    spec: &CardSpec<'_>,
    seed: u64,
) -> Result<InMemoryCard<TestRng>, KitError> {
    let forger = ForgingSigner {
        claimed: authority.issuer.key_id(),
        key: &authority.rogue,
    };
    issue_card(authority, spec, &forger, seed)
}

/// Sends BLOCK (Issuer-signed order) to a card.
pub fn block_card(
    authority: &Authority,
    card: &mut InMemoryCard<TestRng>,
    serial: CardSerial,
    time: u64,
) -> Result<(), KitError> {
    let mut data = [0u8; 512];
    let data = authority.block_command(serial, time, &mut data)?;
    let mut stats = apdu::WireStats::default();
    let mut out = [0u8; 16];
    host::select(card)?;
    apdu::exchange(
        card,
        apdu::CLA_PROPRIETARY,
        card_applet::ins::BLOCK,
        0,
        0,
        data,
        false,
        &mut out,
        &mut stats,
    )
    .map_err(|e| KitError::Personalization(HostError::from(e)))?;
    Ok(())
}

/// An attacker's card: answers SELECT and TERMINAL AUTHENTICATE like the applet, with a credential
/// and disclosures of our choice, signing the transcript with its own key.
pub struct EmulatedCard {
    credential: [u8; 512],
    credential_len: usize,
    disclosures: [u8; 512],
    disclosures_len: usize,
    disclosures_count: u32,
    key: P256Signer,
    counter: u64,
    challenge: [u8; NONCE_LEN],
    command: [u8; 1024],
    command_len: usize,
    answer: [u8; 1024],
    answer_len: usize,
    answer_pos: usize,
    terminal: KeyId,
    counter_debits: u32,
}

impl EmulatedCard {
    /// An emulator holding `credential` (wire bytes) and `disclosures`, signing with `key`.
    pub fn new(
        credential: &[u8],
        disclosures: &[Disclosure<'_>],
        key: P256Signer,
    ) -> Result<Self, Error> {
        let mut e = EmulatedCard {
            credential: [0; 512],
            credential_len: credential.len(),
            disclosures: [0; 512],
            disclosures_len: 0,
            disclosures_count: 0,
            key,
            counter: 0,
            challenge: [0; NONCE_LEN],
            command: [0; 1024],
            command_len: 0,
            answer: [0; 1024],
            answer_len: 0,
            answer_pos: 0,
            terminal: [0; 8],
            counter_debits: 0,
        };
        e.credential
            .get_mut(..credential.len())
            .ok_or(Error::BufferTooSmall)?
            .copy_from_slice(credential);
        let mut w = ItemsWriter::new(&mut e.disclosures);
        for d in disclosures {
            w.push(d)?;
        }
        let items: Items<'_, Disclosure<'_>> = w.finish(shared_crypto::sig::Domain::None)?;
        e.disclosures_len = items.raw().len();
        e.disclosures_count = items.len() as u32;
        Ok(e)
    }

    /// A clone of a card: `credential` and `disclosures` dumped from it, and a key of the
    /// cloner's own (the original key never leaves the original card).
    pub fn clone_of(
        credential: &[u8],
        disclosures: &[Disclosure<'_>],
        seed: u64,
    ) -> Result<Self, Error> {
        Self::new(credential, disclosures, key_from(seed, b"cloner")?)
    }

    fn answer(&mut self, data: &[u8], sw: u16, response: &mut [u8]) -> usize {
        let n = data.len().min(response.len().saturating_sub(2));
        response[..n].copy_from_slice(&data[..n]);
        response[n..n + 2].copy_from_slice(&sw.to_be_bytes());
        n + 2
    }

    fn serve(&mut self, response: &mut [u8]) -> usize {
        let left = self.answer_len - self.answer_pos;
        let take = left.min(256);
        let start = self.answer_pos;
        self.answer_pos += take;
        let rest = self.answer_len - self.answer_pos;
        let sw = if rest == 0 {
            sw::OK
        } else {
            0x6100 | (rest.min(256) & 0xFF) as u16
        };
        let mut chunk = [0u8; 256];
        chunk[..take].copy_from_slice(&self.answer[start..start + take]);
        self.answer(&chunk[..take], sw, response)
    }

    /// DEBIT: a receipt signed with the emulator's own key (what a clone can do at best).
    fn debit(&mut self, data: &[u8]) -> Result<(), Error> {
        let req: DebitRequest = shared_crypto::model::decode_command(data)?;
        let credential = shared_crypto::Signed::decode(&self.credential[..self.credential_len])?;
        let body: CredentialBody<'_> = credential.decode_trusted()?;
        self.counter_debits += 1;
        let receipt = ReceiptBody {
            card_serial: body.card_serial,
            counter: self.counter_debits,
            amount: req.amount,
            balance_after: 1000,
            terminal: self.terminal,
            time: req.time,
            reference: req.reference,
        };
        let mut scratch = [0u8; 128];
        let n = sign_into(&receipt, &[], &self.key, &mut scratch, &mut self.answer)?.len();
        self.answer_len = n;
        self.answer_pos = 0;
        Ok(())
    }

    fn authenticate(&mut self) -> Result<(), Error> {
        let data = &self.command[..self.command_len];
        let auth: TerminalAuth<'_> = shared_crypto::model::decode_command(data)?;
        self.terminal = auth.request.signer;
        let context = transcript_hash(&self.challenge, data);
        let credential = shared_crypto::Signed::decode(&self.credential[..self.credential_len])?;
        let disclosures = Items::new(
            self.disclosures_count,
            &self.disclosures[..self.disclosures_len],
            shared_crypto::sig::Domain::None,
        )?;
        let body = TapResponseBody {
            credential,
            disclosures,
            purse: None,
        };
        let mut scratch = [0u8; 1024];
        let n = sign_into(&body, &context, &self.key, &mut scratch, &mut self.answer)?.len();
        self.answer_len = n;
        self.answer_pos = 0;
        Ok(())
    }
}

impl Transport for EmulatedCard {
    type Error = CardGone;

    fn transceive(&mut self, command: &[u8], response: &mut [u8]) -> Result<usize, CardGone> {
        if command.len() < 4 || response.len() < 258 {
            return Err(CardGone);
        }
        let (cla, ins) = (command[0], command[1]);
        let data = if command.len() > 5 {
            let lc = command[4] as usize;
            command.get(5..5 + lc).unwrap_or(&[])
        } else {
            &[]
        };
        match (cla & !apdu::CLA_CHAINING, ins) {
            (apdu::CLA_ISO, apdu::INS_SELECT) => {
                self.counter += 1;
                let c = sha256_parts(&[b"emulated challenge", &self.counter.to_be_bytes()]);
                self.challenge.copy_from_slice(&c[..NONCE_LEN]);
                let sel = SelectResponse {
                    applet_version: 0x10,
                    life_cycle: LifeCycle::Personalized,
                    challenge: self.challenge,
                };
                let mut buf = [0u8; 32];
                let n = encode_versioned_into(&sel, &mut buf).map_or(0, |b| b.len());
                self.command_len = 0;
                Ok(self.answer(&buf[..n], sw::OK, response))
            }
            (apdu::CLA_PROPRIETARY, apdu::INS_TERMINAL_AUTHENTICATE) => {
                let end = self.command_len + data.len();
                let Some(slot) = self.command.get_mut(self.command_len..end) else {
                    return Ok(self.answer(&[], sw::WRONG_LENGTH, response));
                };
                slot.copy_from_slice(data);
                self.command_len = end;
                if cla & apdu::CLA_CHAINING != 0 {
                    return Ok(self.answer(&[], sw::OK, response));
                }
                if self.authenticate().is_err() {
                    return Ok(self.answer(&[], sw::UNKNOWN, response));
                }
                self.command_len = 0;
                Ok(self.serve(response))
            }
            (apdu::CLA_PROPRIETARY, apdu::INS_DEBIT) => {
                if self.debit(data).is_err() {
                    return Ok(self.answer(&[], sw::WRONG_DATA, response));
                }
                Ok(self.serve(response))
            }
            (apdu::CLA_ISO, apdu::INS_GET_RESPONSE) => Ok(self.serve(response)),
            _ => Ok(self.answer(&[], sw::INS_NOT_SUPPORTED, response)),
        }
    }
}

/// A card built by the attacker with its own key, certified by the real issuer, whose disclosure
/// of `lie` differs from the value the issuer signed.
pub fn lying_card(
    authority: &Authority,
    spec: &CardSpec<'_>,
    lie: AttributeValue<'_>,
    seed: u64,
) -> Result<EmulatedCard, Error> {
    let key = key_from(seed, b"liar")?;
    let attrs = Attributes::of(spec, seed)?;
    let mut cred = [0u8; 512];
    let cred = credential(
        spec,
        &attrs,
        &key.public_key().to_sec1(),
        &authority.issuer,
        &mut cred,
    )?;
    let mut lied = Attributes::of(spec, seed)?;
    lied.set(lie);
    EmulatedCard::new(cred, &lied.disclosures(), key)
}

/// A clone of the card issued for `spec` with `seed` whose key is `original`: the credential and
/// the disclosures it would release (same salts, same values), and the cloner's own key.
pub fn clone_card(
    authority: &Authority,
    spec: &CardSpec<'_>,
    original: &[u8; 33],
    seed: u64,
) -> Result<EmulatedCard, Error> {
    let attrs = Attributes::of(spec, seed)?;
    let mut cred = [0u8; 512];
    let cred = credential(spec, &attrs, original, &authority.issuer, &mut cred)?;
    EmulatedCard::clone_of(cred, &attrs.disclosures(), seed)
}

/// A clock tests set by hand.
#[derive(Debug, Default)]
pub struct TestClock(pub Cell<Option<u64>>);

impl TestClock {
    /// A clock showing `t`.
    pub fn at(t: u64) -> Self {
        TestClock(Cell::new(Some(t)))
    }
    /// Sets the time (None = unset).
    pub fn set(&self, t: Option<u64>) {
        self.0.set(t);
    }
    /// Advances by `s` seconds.
    pub fn advance(&self, s: u64) {
        self.0.set(self.0.get().map(|t| t + s));
    }
}

impl Clock for TestClock {
    fn now(&self) -> Option<u64> {
        self.0.get()
    }
}

/// Remembers the signals shown.
#[derive(Debug, Default)]
pub struct RecordingFeedback {
    /// The last signal.
    pub last: Option<Signal>,
    /// Signals shown.
    pub count: u32,
}

impl Feedback for RecordingFeedback {
    fn show(&mut self, signal: &Signal) {
        self.last = Some(*signal);
        self.count += 1;
    }
}

/// A transport that forwards to `inner` but lets a test tamper with answers.
pub struct Tamper<T, F> {
    /// The card.
    pub inner: T,
    /// Called with (command, answer bytes incl. SW) before the answer is returned.
    pub edit: F,
}

impl<T: Transport, F: FnMut(&[u8], &mut [u8], usize) -> usize> Transport for Tamper<T, F> {
    type Error = T::Error;
    fn transceive(&mut self, command: &[u8], response: &mut [u8]) -> Result<usize, T::Error> {
        let n = self.inner.transceive(command, response)?;
        Ok((self.edit)(command, response, n))
    }
}

/// The service rules every test rig installs (core tests, the PN532 taps, the Cortex-M4 image):
/// a status list may be a week old, a companion passes within 2 minutes, anti-passback 1 minute,
/// at most 50 points per debit, one rehab session per hour.
pub fn standard_rules(epoch: u64, issued_at: u64) -> ServiceRulesBody {
    ServiceRulesBody {
        epoch,
        issued_at,
        max_status_age_s: 7 * 86_400,
        companion_window_s: 120,
        passback_s: 60,
        max_debit_points: 50,
        rehab_min_interval_s: 3600,
    }
}
