//! One host terminal: the core mounted on the data directory's flash, with the commands' logic
//! (init, sync, tap, upload, status). The CLI in `main.rs` only parses and prints.

use anyhow::Result;
use serde::Serialize;
use shared_crypto::apdu::Transport;
use shared_crypto::model::{KeyCertificate, Role, Service};
use shared_crypto::{P256Signer, PublicKey, Signed, Signer};
use terminal_core::{
    Clock, Decision, LogError, P256Verifier, ServiceRequest, Signal, Terminal, TerminalConfig,
    TerminalState, UpdateError,
};

use crate::datadir::{DataDir, SimConfig, CONFIG_VERSION};
use crate::flash::{FileFlash, FileFlashError, FlashFile, Layout, LAYOUT};
use crate::i18n::{Text, TextContext};
use crate::msg;
use crate::platform::{os_rng, OsRng, Recorder, SystemClock};
use crate::server::{server_base, Distribution, Fetched, Registration};

/// The core with the PC's devices.
pub type SimTerminal = Terminal<FileFlash, P256Verifier, P256Signer, SystemClock, OsRng, Recorder>;

/// What `init` was asked.
#[derive(Clone, Debug)]
pub struct InitRequest<'a> {
    /// Server base URL (`https://`, or `http://` on loopback).
    pub server: &'a str,
    /// The office CA (PEM) the server's certificate must come from, pinned in the data directory.
    pub ca_pem: Option<&'a [u8]>,
    /// The service of this point.
    pub service: Service,
    /// Certificate subject to ask for.
    pub subject: &'a str,
    /// Region code (0 = national).
    pub region: u32,
    /// Register at once with this admin token.
    pub admin_token: Option<&'a str>,
    /// A certificate obtained out of band (hex of the wire bytes), instead of registering.
    pub certificate: Option<Vec<u8>>,
    /// The root key the operator expects (hex); refuses a server that serves another.
    pub expect_root: Option<[u8; 33]>,
}

/// What `init` did.
#[derive(Clone, Debug, Serialize)]
pub struct InitReport {
    /// The terminal's public key (hex): give it to the admin who registers the terminal.
    pub public_key: String,
    /// Its key id (hex).
    pub key_id: String,
    /// The root key pinned (hex).
    pub root_key: String,
    /// Whether the terminal is registered (certificate stored).
    pub registered: bool,
    /// The server's id of the terminal, when registered now through the API.
    pub terminal_id: Option<i64>,
    /// Whether a key was made now (false: continuing an earlier `init`).
    pub new_key: bool,
}

/// Creates (or completes) a terminal in `dir`.
///
/// First run: makes the key and the flash file, fetches and pins the root key, and, with an
/// admin token, registers. A later run on the same directory (key present, no certificate yet)
/// registers or installs the certificate the admin handed over; the key is never replaced.
pub fn init(
    dir: &DataDir,
    req: &InitRequest<'_>,
    server: &mut dyn Distribution,
    layout: &Layout,
) -> Result<InitReport> {
    let base = server_base(req.server)?;
    std::fs::create_dir_all(dir.path()).with_text(|| msg::creating(dir.path()))?;
    if dir.load_certificate()?.is_some() {
        return Err(msg::already_registered(dir.path()).into());
    }
    if let Some(pem) = req.ca_pem {
        crate::server::parse_ca(pem)?;
        dir.save_ca(pem)?;
    }
    let new_key = !dir.is_initialized();
    let (key, config) = if new_key {
        let root = fetch_root(server, req.expect_root)?;
        let key = P256Signer::generate(&mut os_rng()?).map_err(|e| msg::key_generation(&e))?;
        let config = SimConfig {
            version: CONFIG_VERSION,
            server: base,
            service: req.service.name().to_owned(),
            subject: req.subject.to_owned(),
            region: req.region,
            root_key: hex::encode(root),
            public_key: hex::encode(key.public_key().to_sec1()),
        };
        // The key file is written last: a run interrupted before it is simply started again
        // (the directory only counts as initialized with both terminal.json and the key).
        if !dir.flash_path().exists() {
            FlashFile::create(&dir.flash_path(), layout)?;
        }
        dir.save_config(&config)?;
        dir.create_key(&key)?;
        (key, config)
    } else {
        let config = dir.load_config()?;
        if let Some(expect) = req.expect_root {
            if config.root_key()? != expect {
                return Err(msg::pinned_root_differs().into());
            }
        }
        (dir.load_key()?, config)
    };
    let public_key = hex::encode(key.public_key().to_sec1());
    let mut terminal_id = None;
    let cert = if let Some(c) = &req.certificate {
        Some(c.clone())
    } else if let Some(token) = req.admin_token {
        let r = server.register(
            token,
            &Registration {
                subject: &config.subject,
                public_key: &public_key,
                services: vec![config.service()?.name()],
                region: config.region,
            },
        )?;
        terminal_id = Some(r.terminal_id);
        Some(hex::decode(r.certificate.trim()).with_text(msg::server_cert_not_hex)?)
    } else {
        None
    };
    if let Some(cert) = &cert {
        check_certificate(cert, &config.root_key()?, &key, config.service()?)?;
        dir.save_certificate(cert)?;
    }
    Ok(InitReport {
        key_id: hex::encode(key.key_id()),
        public_key,
        root_key: config.root_key,
        registered: cert.is_some(),
        terminal_id,
        new_key,
    })
}

fn fetch_root(server: &mut dyn Distribution, expect: Option<[u8; 33]>) -> Result<[u8; 33]> {
    let r = server.root_key()?;
    let key: [u8; 33] = hex::decode(r.public_key.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(msg::server_root_length)?;
    let public = PublicKey::from_sec1(&key).with_text(msg::server_root_not_p256)?;
    if hex::encode(public.key_id()) != r.key_id.trim().to_lowercase() {
        return Err(msg::server_root_id().into());
    }
    if let Some(e) = expect {
        if e != key {
            return Err(msg::server_root_unexpected(&hex::encode(key), &hex::encode(e)).into());
        }
    }
    Ok(key)
}

/// Checks a certificate before storing it: root-signed, role Terminal, for our key, with our
/// service (the core checks it again at every start).
pub fn check_certificate(
    wire: &[u8],
    root: &[u8; 33],
    key: &P256Signer,
    service: Service,
) -> Result<()> {
    let root = PublicKey::from_sec1(root)?;
    let signed = Signed::decode(wire).map_err(|e| msg::cert_decode(&e))?;
    let cert = KeyCertificate::verify_untimed(&signed, &root)
        .map_err(|e| msg::cert_not_root_signed(&e))?;
    cert.check_role(Role::Terminal)
        .map_err(|e| msg::cert_not_terminal(&e))?;
    if cert.body.key_id != key.key_id() {
        return Err(msg::cert_other_key().into());
    }
    if !cert.body.services.contains(service) {
        return Err(msg::cert_service(service.name()).into());
    }
    Ok(())
}

/// A mounted host terminal.
pub struct Sim {
    /// `terminal.json`.
    pub config: SimConfig,
    dir: DataDir,
    terminal: SimTerminal,
    flash: FlashFile,
}

/// What happened to one object during `sync`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ObjectSync {
    /// `trust_bundle`, `status_list` or `service_rules`.
    pub object: &'static str,
    /// `installed`, `delta_applied`, `up_to_date`.
    pub action: &'static str,
    /// Epoch before.
    pub from: Option<u64>,
    /// Epoch now.
    pub epoch: Option<u64>,
}

/// What `sync` did, object by object, and what failed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SyncReport {
    /// Objects brought up to date (or found current).
    pub done: Vec<ObjectSync>,
    /// Objects that could not be updated, with the reason (English).
    pub failed: Vec<(String, String)>,
    /// The reasons of `failed`, in both languages (same order).
    #[serde(skip)]
    pub failed_text: Vec<Text>,
}

impl SyncReport {
    /// `failed` with the reasons in `lang`.
    pub fn failed_in(&self, lang: terminal_core::Lang) -> Vec<(String, String)> {
        self.failed
            .iter()
            .zip(&self.failed_text)
            .map(|((object, _), why)| (object.clone(), why.get(lang).to_owned()))
            .collect()
    }
}

/// What `upload` did.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct UploadReport {
    /// Batches sent.
    pub batches: u32,
    /// Records sent.
    pub records: u32,
    /// Records the server accepted as new.
    pub accepted: u64,
    /// Batches the server had seen before.
    pub duplicates: u32,
}

/// One tap's result and what the feedback devices were asked to do.
#[derive(Clone, Debug)]
pub struct Tap {
    /// The core's decision.
    pub decision: Decision,
    /// Signals shown during the tap (the decision's).
    pub shown: Vec<Signal>,
}

impl Sim {
    /// Mounts the terminal in `dir` (registered) with `clock`.
    pub fn open(dir: &DataDir, clock: SystemClock) -> Result<Self> {
        Self::open_with(dir, clock, &LAYOUT)
    }

    /// [`Sim::open`] with another flash layout (tests).
    pub fn open_with(dir: &DataDir, clock: SystemClock, layout: &Layout) -> Result<Self> {
        let config = dir.load_config()?;
        let key = dir.load_key()?;
        let cert = dir
            .load_certificate()?
            .ok_or_else(|| msg::not_registered(&config.public_key, &config.service, dir.path()))?;
        let (flash, storage) = FlashFile::open(&dir.flash_path(), layout)
            .with_text(|| msg::opening(&dir.flash_path()))?;
        let terminal = Terminal::mount(
            TerminalConfig {
                root_key: config.root_key()?,
                certificate: &cert,
            },
            storage,
            P256Verifier,
            key,
            clock,
            os_rng()?,
            Recorder::default(),
        )
        .map_err(|e| msg::mount_error(&e))?;
        let mut sim = Sim {
            config,
            dir: dir.clone(),
            terminal,
            flash,
        };
        if let Some(last) = dir.load_uploaded()? {
            match sim.terminal.acknowledge_upload(last) {
                // Not in flash any more: its sector was reclaimed, everything left is newer.
                Ok(()) | Err(LogError::BadAcknowledge) => {}
                Err(e) => return Err(msg::freeing_records(&e).into()),
            }
            sim.flash.sync().with_text(msg::writing_flash)?;
        }
        Ok(sim)
    }

    /// The core.
    pub fn terminal(&self) -> &SimTerminal {
        &self.terminal
    }

    /// The core, mutably (tests).
    pub fn terminal_mut(&mut self) -> &mut SimTerminal {
        &mut self.terminal
    }

    /// What is installed.
    pub fn state(&self) -> TerminalState {
        self.terminal.state()
    }

    /// The terminal's time.
    pub fn now(&self) -> Option<u64> {
        self.terminal.clock().now()
    }

    /// Fetches trust bundle, status list (delta when possible) and rules; the core verifies each
    /// before installing it. Objects are independent: one failing does not stop the others, and
    /// the report lists both.
    pub fn sync(&mut self, server: &mut dyn Distribution) -> Result<SyncReport> {
        let mut report = SyncReport::default();
        // The bundle first: the status list and the rules are checked against its signers.
        for (name, step) in [
            ("trust_bundle", Self::sync_bundle as SyncStep),
            ("status_list", Self::sync_status),
            ("service_rules", Self::sync_rules),
        ] {
            match step(self, server) {
                Ok(o) => report.done.push(o),
                Err(e) => {
                    let why = Text::new(
                        crate::i18n::error_text(&e, terminal_core::Lang::En),
                        crate::i18n::error_text(&e, terminal_core::Lang::ZhCn),
                    );
                    report.failed.push((name.to_owned(), why.en.clone()));
                    report.failed_text.push(why);
                }
            }
        }
        self.flash.sync().with_text(msg::writing_flash)?;
        Ok(report)
    }

    fn sync_bundle(&mut self, server: &mut dyn Distribution) -> Result<ObjectSync> {
        let from = self.state().bundle_epoch;
        let wire = server.trust_bundle()?;
        let r = self.terminal.install_trust_bundle(&wire);
        settle("trust_bundle", from, r)
    }

    fn sync_rules(&mut self, server: &mut dyn Distribution) -> Result<ObjectSync> {
        let from = self.state().rules.map(|r| r.epoch);
        let wire = server.service_rules()?;
        let r = self.terminal.install_service_rules(&wire);
        settle("service_rules", from, r)
    }

    fn sync_status(&mut self, server: &mut dyn Distribution) -> Result<ObjectSync> {
        let from = self.state().status_epoch;
        // Why a delta was not applied, when the full list has to settle it: if the full list
        // fails too, the report names both (the delta's reason is what an operator must see when
        // the server hands out a delta that does not continue this terminal's epoch).
        let mut delta_refused: Option<Text> = None;
        if let Some(e) = from {
            match server.status_delta(e)? {
                Fetched::NotModified => {
                    return Ok(ObjectSync {
                        object: "status_list",
                        action: "up_to_date",
                        from,
                        epoch: from,
                    })
                }
                Fetched::Body(wire) => match self.terminal.apply_status_delta(&wire) {
                    Ok(epoch) => {
                        return Ok(ObjectSync {
                            object: "status_list",
                            action: "delta_applied",
                            from,
                            epoch: Some(epoch),
                        })
                    }
                    // The delta does not continue our list, or the codec cannot apply it: the
                    // full list settles it.
                    Err(e @ (UpdateError::EpochMismatch { .. } | UpdateError::StatusList(_))) => {
                        delta_refused = Some(msg::update_error(&e));
                    }
                    Err(other) => return Err(msg::delta_refused(&msg::update_error(&other)).into()),
                },
                Fetched::Gone => {}
            }
        }
        let full = self.sync_full_list(server, from);
        match delta_refused {
            Some(why) => full.with_text(|| msg::delta_and_full_failed(&why)),
            None => full,
        }
    }

    /// The full status list (no delta, or a delta that did not apply).
    fn sync_full_list(
        &mut self,
        server: &mut dyn Distribution,
        from: Option<u64>,
    ) -> Result<ObjectSync> {
        match server.status_list(from)? {
            Fetched::NotModified => Ok(ObjectSync {
                object: "status_list",
                action: "up_to_date",
                from,
                epoch: from,
            }),
            Fetched::Body(wire) => {
                let r = self.terminal.install_status_list(&wire);
                settle("status_list", from, r)
            }
            Fetched::Gone => Err(msg::no_status_list().into()),
        }
    }

    /// Runs one tap with `card` and makes the log record durable.
    pub fn tap<T: Transport>(&mut self, card: &mut T, request: ServiceRequest) -> Result<Tap> {
        self.terminal.feedback_mut().shown.clear();
        let decision = self.terminal.tap(card, request);
        self.flash.sync().with_text(msg::writing_tap_log)?;
        let shown = std::mem::take(&mut self.terminal.feedback_mut().shown);
        Ok(Tap { decision, shown })
    }

    /// Uploads every pending log record in signed batches; each batch is acknowledged (its
    /// sectors freed) only after the server accepted it.
    pub fn upload(&mut self, server: &mut dyn Distribution) -> Result<UploadReport> {
        let key_id = hex::encode(self.state().key_id);
        let mut report = UploadReport::default();
        let mut buf = vec![0u8; 96 * 1024];
        // Each round acknowledges at least one record, so the loop ends; the bound guards a core
        // that would not advance.
        for _ in 0..100_000 {
            let batch = self
                .terminal
                .export_log_batch(256, &mut buf)
                .map_err(|e| msg::reading_log(&e))?;
            let Some(batch) = batch else {
                return Ok(report);
            };
            let (last, records) = (batch.last_seq, batch.records);
            let answer = server.upload_logs(&key_id, batch.wire)?;
            // Durable first (the core keeps acknowledgements in RAM until a sector is freed).
            self.dir.save_uploaded(last)?;
            self.terminal
                .acknowledge_upload(last)
                .map_err(|e| msg::freeing_records(&e))?;
            self.flash.sync().with_text(msg::writing_flash)?;
            report.batches += 1;
            report.records += records;
            report.accepted += answer.accepted;
            report.duplicates += u32::from(answer.duplicate);
        }
        Err(msg::log_not_emptied().into())
    }
}

type SyncStep = fn(&mut Sim, &mut dyn Distribution) -> Result<ObjectSync>;

/// An install's result as a report line: installed, already current, or refused.
fn settle(
    object: &'static str,
    from: Option<u64>,
    r: Result<u64, UpdateError<FileFlashError>>,
) -> Result<ObjectSync> {
    match r {
        Ok(epoch) => Ok(ObjectSync {
            object,
            action: "installed",
            from,
            epoch: Some(epoch),
        }),
        Err(UpdateError::Stale { installed, offered }) if installed == offered => Ok(ObjectSync {
            object,
            action: "up_to_date",
            from,
            epoch: Some(installed),
        }),
        Err(e) => Err(msg::refused(&msg::update_error(&e)).into()),
    }
}

/// Words for an update refusal (English; [`msg::update_error`] has both languages).
pub fn update_error(e: &UpdateError<FileFlashError>) -> String {
    msg::update_error(e).en
}
