//! A terminal on RAM flash with a demo authority, and cards: the real applet in memory.
#![allow(dead_code)]

use card_applet::sim::{InMemoryCard, TestRng};
use shared_crypto::model::{Role, ServiceRulesBody, ServiceSet};
use shared_crypto::sig::P256Signer;
use terminal_core::ram_flash::Tear;
use terminal_core::testkit::{
    issue_card, standard_rules, Authority, CardSpec, RecordingFeedback, TestClock,
};
use terminal_core::{P256Verifier, RamFlash, Storage, Terminal, TerminalConfig};

/// 1 KiB sectors, so a few records fill one and the ring logic is exercised.
pub type Flash = RamFlash<Vec<u8>, 4, 1024>;
pub type Term = Terminal<Flash, P256Verifier, P256Signer, TestClock, TestRng, RecordingFeedback>;

/// "Now" of the tests.
pub const T0: u64 = 1_750_000_000;
pub const DAY: u64 = 86_400;
pub const YEAR: u64 = 365 * DAY;
pub const LIST_SIZE: u32 = 64;
/// Revoked in the list every rig installs.
pub const REVOKED_INDEX: u32 = 5;

pub fn rules(epoch: u64) -> ServiceRulesBody {
    standard_rules(epoch, T0 - DAY)
}

pub fn flash(bytes: usize) -> Flash {
    Flash::erased(vec![0u8; bytes])
}

pub fn storage(log_sectors: usize) -> Storage<Flash> {
    Storage {
        bundle: [flash(4096), flash(4096)],
        status: [flash(2048), flash(2048)],
        rules: [flash(1024), flash(1024)],
        log: flash(1024 * log_sectors),
    }
}

pub struct Rig {
    pub auth: Authority,
    pub cert: Vec<u8>,
    pub term: Option<Term>,
}

pub fn all_services() -> ServiceSet {
    ServiceSet(0x0F)
}

impl Rig {
    /// A terminal certified for `services` with nothing installed.
    pub fn bare(services: ServiceSet, log_sectors: usize) -> Rig {
        let auth = Authority::new(7, T0 - YEAR, T0 + 5 * YEAR).unwrap();
        let mut cert = [0u8; 320];
        let cert = auth
            .terminal_certificate(services, &mut cert)
            .unwrap()
            .to_vec();
        let mut rig = Rig {
            auth,
            cert,
            term: None,
        };
        rig.mount(storage(log_sectors));
        rig
    }

    /// A terminal with bundle, status list (index 5 revoked) and rules installed.
    pub fn new() -> Rig {
        Self::with(all_services(), 8)
    }

    pub fn with(services: ServiceSet, log_sectors: usize) -> Rig {
        let mut rig = Rig::bare(services, log_sectors);
        rig.provision();
        rig
    }

    pub fn provision(&mut self) {
        let bundle = self.bundle(1);
        self.t().install_trust_bundle(&bundle).unwrap();
        let list = self.status_list(1, T0 - DAY, &[REVOKED_INDEX]);
        self.t().install_status_list(&list).unwrap();
        let r = self.rules(1);
        self.t().install_service_rules(&r).unwrap();
    }

    pub fn bundle(&self, epoch: u64) -> Vec<u8> {
        let mut out = [0u8; 4096];
        self.auth
            .trust_bundle(epoch, T0 - DAY, &[], &mut out)
            .unwrap()
            .to_vec()
    }

    pub fn status_list(&self, epoch: u64, issued_at: u64, revoked: &[u32]) -> Vec<u8> {
        let mut out = [0u8; 1024];
        self.auth
            .status_list(epoch, issued_at, LIST_SIZE, revoked, &mut out)
            .unwrap()
            .to_vec()
    }

    pub fn rules(&self, epoch: u64) -> Vec<u8> {
        let mut out = [0u8; 256];
        self.auth
            .service_rules(&rules(epoch), &mut out)
            .unwrap()
            .to_vec()
    }

    pub fn mount(&mut self, storage: Storage<Flash>) {
        let config = TerminalConfig {
            root_key: self.auth.root_key(),
            certificate: &self.cert,
        };
        let term = Terminal::mount(
            config,
            storage,
            P256Verifier,
            self.auth.terminal.clone(),
            TestClock::at(T0),
            TestRng::new(99),
            RecordingFeedback::default(),
        )
        .unwrap();
        self.term = Some(term);
    }

    /// Power off and on: every partition gets power back, the terminal mounts again (the clock
    /// keeps its time).
    pub fn reboot(&mut self) {
        let term = self.term.take().unwrap();
        let now = term.clock().0.get();
        let mut storage = term.into_storage();
        for f in storage
            .bundle
            .iter_mut()
            .chain(storage.status.iter_mut())
            .chain(storage.rules.iter_mut())
            .chain(std::iter::once(&mut storage.log))
        {
            f.restore_power();
        }
        self.mount(storage);
        self.t().clock().set(now);
    }

    pub fn t(&mut self) -> &mut Term {
        self.term.as_mut().unwrap()
    }

    pub fn clock(&mut self) -> &TestClock {
        self.t().clock()
    }

    /// A real card, valid around T0, entitled to everything, at `status_index`.
    pub fn card(&self, serial: u8, status_index: u32) -> InMemoryCard<TestRng> {
        let spec = CardSpec::entitled(serial, status_index, T0 - YEAR, T0 + YEAR);
        self.card_with(&spec, u64::from(serial))
    }

    pub fn card_with(&self, spec: &CardSpec<'_>, seed: u64) -> InMemoryCard<TestRng> {
        issue_card(&self.auth, spec, &self.auth.issuer, seed).unwrap()
    }

    /// Cuts the power in every partition after `n` more operations of each.
    pub fn cut_all(&mut self, n: u32, tear: Tear) {
        let (b, s, r, l) = self.t().partitions_mut();
        for f in b.iter_mut().chain(s.iter_mut()).chain(r.iter_mut()) {
            f.cut_after(n, tear);
        }
        l.cut_after(n, tear);
    }
}

pub const TEARS: [Tear; 3] = [Tear::Nothing, Tear::Half, Tear::AllButLast];

/// The role-less helper: a certificate of `role` for the rogue key.
pub fn rogue_cert(auth: &Authority, role: Role) -> Vec<u8> {
    let mut out = [0u8; 320];
    auth.certificate(&auth.rogue, role, "rogue", ServiceSet::NONE, &mut out)
        .unwrap()
        .to_vec()
}
