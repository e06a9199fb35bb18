//! The host terminal's commands through the real core, a real applet in memory (the core's
//! testkit) and a file-backed flash, with the server replaced by an in-memory authority that
//! signs what the issuance server would. No network, no PC/SC: the same flows over HTTP and
//! pcscd are in `tests/with_server.rs`.
#![allow(clippy::unwrap_used)]

use anyhow::{anyhow, bail, Result};
use shared_crypto::model::{
    KeyCertificateBody, LogBatchBody, Role, Service, ServiceRulesBody, ServiceSet,
};
use shared_crypto::sig::sign_into;
use shared_crypto::{PublicKey, Signed, Signer};
use terminal_core::testkit::{issue_card, Authority, CardSpec};
use terminal_core::{Lang, ServiceRequest};
use terminal_sim::datadir::DataDir;
use terminal_sim::flash::LAYOUT;
use terminal_sim::platform::SystemClock;
use terminal_sim::report::{StatusReport, TapReport};
use terminal_sim::server::{
    Distribution, Fetched, Registered, Registration, RootKey, UploadAnswer,
};
use terminal_sim::sim::{init, InitRequest, Sim};

const NOW: u64 = 1_750_000_000;
const DAY: u64 = 86_400;
const TOKEN: &str = "admin-token-for-tests";
const LIST_SIZE: u32 = 64;

/// What the issuance server would serve, signed by the testkit's keys.
struct FakeServer {
    a: Authority,
    bundle_epoch: u64,
    /// A bundle to serve instead of the authority's (tampering tests).
    bundle_override: Option<Vec<u8>>,
    status_epoch: u64,
    /// (status index, epoch at which it was revoked)
    revoked: Vec<(u32, u64)>,
    deltas: bool,
    /// Serve this epoch's full list instead of the current one (rollback tests).
    stale_list: Option<u64>,
    /// Serve these bytes as every delta (a delta that does not continue the terminal's epoch).
    delta_override: Option<Vec<u8>>,
    /// The full list is unavailable (the server answers 503).
    list_down: bool,
    rules_epoch: u64,
    terminal: Option<PublicKey>,
    uploads: Vec<(u32, u32, usize)>,
    calls: Vec<String>,
}

impl FakeServer {
    fn new() -> Self {
        FakeServer {
            a: Authority::new(7, NOW - DAY, NOW + 365 * DAY).unwrap(),
            bundle_epoch: 1,
            bundle_override: None,
            status_epoch: 1,
            revoked: vec![],
            deltas: true,
            stale_list: None,
            delta_override: None,
            list_down: false,
            rules_epoch: 1,
            terminal: None,
            uploads: vec![],
            calls: vec![],
        }
    }

    fn revoke(&mut self, index: u32) {
        self.status_epoch += 1;
        self.revoked.push((index, self.status_epoch));
    }

    fn list_at(&self, epoch: u64) -> Vec<u8> {
        let revoked: Vec<u32> = self
            .revoked
            .iter()
            .filter(|(_, e)| *e <= epoch)
            .map(|(i, _)| *i)
            .collect();
        let mut out = [0u8; 1024];
        self.a
            .status_list(epoch, NOW - 3600, LIST_SIZE, &revoked, &mut out)
            .unwrap()
            .to_vec()
    }

    fn rules() -> ServiceRulesBody {
        ServiceRulesBody {
            epoch: 1,
            issued_at: NOW - 3600,
            max_status_age_s: 2 * DAY as u32,
            companion_window_s: 60,
            passback_s: 30,
            max_debit_points: 50,
            rehab_min_interval_s: 3600,
        }
    }
}

impl Distribution for FakeServer {
    fn root_key(&mut self) -> Result<RootKey> {
        self.calls.push("root_key".into());
        let root = self.a.root.public_key();
        Ok(RootKey {
            public_key: hex::encode(root.to_sec1()),
            key_id: hex::encode(root.key_id()),
        })
    }

    fn trust_bundle(&mut self) -> Result<Vec<u8>> {
        self.calls.push("trust_bundle".into());
        if let Some(b) = &self.bundle_override {
            return Ok(b.clone());
        }
        let mut out = [0u8; 2048];
        Ok(self
            .a
            .trust_bundle(self.bundle_epoch, NOW - 3600, &[], &mut out)?
            .to_vec())
    }

    fn status_list(&mut self, current: Option<u64>) -> Result<Fetched> {
        self.calls.push(format!("status_list({current:?})"));
        if self.list_down {
            bail!("status list: the server answered 503 unavailable: try later");
        }
        let epoch = self.stale_list.unwrap_or(self.status_epoch);
        if current == Some(epoch) {
            return Ok(Fetched::NotModified);
        }
        Ok(Fetched::Body(self.list_at(epoch)))
    }

    fn status_delta(&mut self, from: u64) -> Result<Fetched> {
        self.calls.push(format!("status_delta({from})"));
        if let Some(d) = &self.delta_override {
            return Ok(Fetched::Body(d.clone()));
        }
        if from == self.status_epoch {
            return Ok(Fetched::NotModified);
        }
        if !self.deltas {
            return Ok(Fetched::Gone);
        }
        let added: Vec<u32> = self
            .revoked
            .iter()
            .filter(|(_, e)| *e > from)
            .map(|(i, _)| *i)
            .collect();
        let mut out = [0u8; 512];
        Ok(Fetched::Body(
            self.a
                .status_delta(
                    from,
                    self.status_epoch,
                    NOW - 60,
                    LIST_SIZE,
                    &added,
                    &mut out,
                )?
                .to_vec(),
        ))
    }

    fn service_rules(&mut self) -> Result<Vec<u8>> {
        self.calls.push("service_rules".into());
        let mut out = [0u8; 256];
        let rules = ServiceRulesBody {
            epoch: self.rules_epoch,
            ..Self::rules()
        };
        Ok(self.a.service_rules(&rules, &mut out)?.to_vec())
    }

    fn register(&mut self, admin_token: &str, req: &Registration<'_>) -> Result<Registered> {
        self.calls.push("register".into());
        if admin_token != TOKEN {
            bail!("registration: the server answered 401 unauthorized: bad token");
        }
        let bytes: [u8; 33] = hex::decode(req.public_key)?
            .try_into()
            .map_err(|_| anyhow!("key length"))?;
        let public = PublicKey::from_sec1(&bytes)?;
        let services = ServiceSet::of(
            &req.services
                .iter()
                .map(|s| Service::from_name(s).unwrap())
                .collect::<Vec<_>>(),
        );
        let body = KeyCertificateBody {
            key_id: public.key_id(),
            role: Role::Terminal,
            subject: req.subject,
            region: req.region,
            services,
            public_key: public.to_bytes(),
            valid_from: NOW - DAY,
            valid_until: NOW + 365 * DAY,
        };
        let (mut scratch, mut out) = ([0u8; 256], [0u8; 400]);
        let wire = sign_into(&body, &[], &self.a.root, &mut scratch, &mut out)?;
        self.terminal = Some(public);
        Ok(Registered {
            terminal_id: 1,
            key_id: hex::encode(public.key_id()),
            certificate: hex::encode(wire),
        })
    }

    fn upload_logs(&mut self, key_id_hex: &str, batch: &[u8]) -> Result<UploadAnswer> {
        self.calls.push("upload_logs".into());
        let key = self
            .terminal
            .ok_or_else(|| anyhow!("no terminal registered"))?;
        if key_id_hex != hex::encode(key.key_id()) {
            bail!("log upload for another terminal");
        }
        // What the server does: verify the terminal's signature, then the sequence.
        let signed = Signed::decode(batch)?;
        let body: LogBatchBody<'_> = signed.open(&[], &key)?;
        body.check_sequence()?;
        let duplicate = self
            .uploads
            .iter()
            .any(|(f, l, _)| (*f, *l) == (body.first_seq, body.last_seq));
        self.uploads
            .push((body.first_seq, body.last_seq, body.records.len()));
        Ok(UploadAnswer {
            accepted: if duplicate {
                0
            } else {
                body.records.len() as u64
            },
            duplicate,
        })
    }
}

fn request(service: Service) -> InitRequest<'static> {
    InitRequest {
        ca_pem: None,
        server: "http://127.0.0.1:9",
        service,
        subject: "gate 7",
        region: 110105,
        admin_token: Some(TOKEN),
        certificate: None,
        expect_root: None,
    }
}

fn registered(server: &mut FakeServer, service: Service) -> (tempfile::TempDir, DataDir) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = DataDir::new(tmp.path().join("t"));
    let r = init(&dir, &request(service), server, &LAYOUT).unwrap();
    assert!(r.registered && r.new_key);
    (tmp, dir)
}

fn open(dir: &DataDir, t: u64) -> Sim {
    Sim::open(dir, SystemClock::fixed(t)).unwrap()
}

fn card(server: &FakeServer, serial: u8, status_index: u32) -> impl shared_crypto::apdu::Transport {
    let spec = CardSpec::entitled(serial, status_index, NOW - DAY, NOW + 300 * DAY);
    issue_card(&server.a, &spec, &server.a.issuer, u64::from(serial)).unwrap()
}

#[test]
fn init_sync_tap_upload_status_end_to_end() {
    let mut server = FakeServer::new();
    let (_tmp, dir) = registered(&mut server, Service::Transit);
    let mut sim = open(&dir, NOW);

    // Nothing installed: the terminal asks staff rather than deciding.
    let mut c1 = card(&server, 1, 5);
    let tap = sim.tap(&mut c1, ServiceRequest::Transit).unwrap();
    assert_eq!(tap.decision.reason.name(), "not_provisioned");

    let report = sim.sync(&mut server).unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    let actions: Vec<_> = report.done.iter().map(|o| (o.object, o.action)).collect();
    assert_eq!(
        actions,
        [
            ("trust_bundle", "installed"),
            ("status_list", "installed"),
            ("service_rules", "installed")
        ]
    );

    // A second sync finds everything current, asking for a delta rather than the list.
    server.calls.clear();
    let report = sim.sync(&mut server).unwrap();
    assert!(report.done.iter().all(|o| o.action == "up_to_date"));
    assert!(server.calls.contains(&"status_delta(1)".to_owned()));
    assert!(!server.calls.iter().any(|c| c.starts_with("status_list")));

    let tap = sim.tap(&mut c1, ServiceRequest::Transit).unwrap();
    assert!(tap.decision.accepted(), "{:?}", tap.decision.reason);
    assert_eq!(tap.shown.len(), 1, "the decision is shown once");
    assert_eq!(tap.shown[0], tap.decision.signal);
    let r = TapReport::new(&tap.decision, Lang::ZhCn, Some("reader"));
    assert_eq!((r.outcome, r.reason), ("accepted", "ok"));
    assert_eq!(r.sees.light.color, "green");
    assert_eq!(r.hears.voice, "验证通过，请通行。");
    assert_eq!(r.hears.voice_en, "Verified. Please go through.");
    assert_eq!(r.card_serial.as_deref(), Some("c000000000000001"));
    // Transit reads only entitlements and expiry: no name on the display.
    assert_eq!(r.sees.holder.name, None);
    assert!(r
        .sees
        .holder
        .entitlements
        .as_ref()
        .unwrap()
        .contains(&"free_transit"));
    let text = r.to_text(Lang::En);
    assert!(text.contains("SEES   green light steady"), "{text}");
    assert!(text.contains("HEARS  buzzer [2093 Hz 200 ms]"), "{text}");
    assert!(text.contains("Verified. Please go through."), "{text}");

    // The office revokes the card; the terminal gets a delta and refuses it (a minute later,
    // past the anti-passback window).
    server.revoke(5);
    drop(sim);
    let mut sim = open(&dir, NOW + 60);
    let report = sim.sync(&mut server).unwrap();
    let status = report
        .done
        .iter()
        .find(|o| o.object == "status_list")
        .unwrap();
    assert_eq!(
        (status.action, status.from, status.epoch),
        ("delta_applied", Some(1), Some(2))
    );
    let tap = sim.tap(&mut c1, ServiceRequest::Transit).unwrap();
    assert_eq!(tap.decision.reason.name(), "revoked");
    let r = TapReport::new(&tap.decision, Lang::ZhCn, None);
    assert_eq!((r.outcome, r.sees.light.color), ("refused", "red"));
    assert_eq!(r.hears.voice, "此卡已停用，请联系发证机构。");

    // Three taps logged; upload sends them signed, then nothing is pending.
    let before = sim.state().log;
    assert_eq!(before.pending, 3);
    let up = sim.upload(&mut server).unwrap();
    assert_eq!((up.records, up.accepted, up.duplicates), (3, 3, 0));
    assert_eq!(server.uploads.iter().map(|u| u.2).sum::<usize>(), 3);
    assert_eq!(sim.state().log.pending, 0);
    assert_eq!(sim.upload(&mut server).unwrap().batches, 0);

    // A restart does not send them again; a new tap goes up alone.
    drop(sim);
    let mut sim = open(&dir, NOW + 120);
    assert_eq!(sim.state().log.pending, 0);
    assert_eq!(sim.upload(&mut server).unwrap().batches, 0);
    let mut c2 = card(&server, 9, 7);
    sim.tap(&mut c2, ServiceRequest::Transit).unwrap();
    drop(sim);
    let mut sim = open(&dir, NOW + 130);
    assert_eq!(sim.state().log.pending, 1);
    let up = sim.upload(&mut server).unwrap();
    assert_eq!((up.records, up.accepted), (1, 1));
    assert_eq!(server.uploads.last().map(|u| (u.0, u.1)), Some((3, 3)));

    let s = StatusReport::new(&sim.state(), sim.now(), "transit", "http://127.0.0.1:9");
    assert_eq!(
        (s.bundle_epoch, s.status_epoch, s.rules_epoch),
        (Some(1), Some(2), Some(1))
    );
    // The delta was signed at NOW - 60; it is NOW + 130.
    assert_eq!(s.status_age_s, Some(190));
    assert_eq!(s.status_too_old, Some(false));
    assert_eq!(s.services, ["transit"]);
}

#[test]
fn state_survives_a_restart_in_the_flash_file() {
    let mut server = FakeServer::new();
    let (_tmp, dir) = registered(&mut server, Service::Transit);
    let mut sim = open(&dir, NOW);
    sim.sync(&mut server).unwrap();
    let mut c = card(&server, 2, 9);
    let seq = sim
        .tap(&mut c, ServiceRequest::Transit)
        .unwrap()
        .decision
        .log_seq
        .unwrap();
    drop(sim);
    let mut sim = open(&dir, NOW + 5);
    let st = sim.state();
    assert_eq!((st.bundle_epoch, st.status_epoch), (Some(1), Some(1)));
    assert_eq!(st.log.next_seq, seq + 1);
    // The first tap is remembered across the restart (rebuilt from the log in flash): the card
    // has the companion entitlement, so the next tap is the companion's passage, and one more
    // is anti-passback.
    let d = sim.tap(&mut c, ServiceRequest::Transit).unwrap().decision;
    assert_eq!(d.reason.name(), "companion_passage");
    drop(sim);
    let mut sim = open(&dir, NOW + 10);
    let d = sim.tap(&mut c, ServiceRequest::Transit).unwrap().decision;
    assert_eq!(d.reason.name(), "passback");
}

#[test]
fn sync_falls_back_to_the_full_list_when_no_delta_exists() {
    let mut server = FakeServer::new();
    let (_tmp, dir) = registered(&mut server, Service::Transit);
    let mut sim = open(&dir, NOW);
    sim.sync(&mut server).unwrap();
    server.revoke(3);
    server.revoke(4);
    server.deltas = false;
    server.calls.clear();
    let report = sim.sync(&mut server).unwrap();
    let status = report
        .done
        .iter()
        .find(|o| o.object == "status_list")
        .unwrap();
    assert_eq!((status.action, status.epoch), ("installed", Some(3)));
    assert_eq!(
        server
            .calls
            .iter()
            .filter(|c| c.starts_with("status"))
            .collect::<Vec<_>>(),
        ["status_delta(1)", "status_list(Some(1))"]
    );
}

/// A genuine, correctly signed delta that starts from another epoch (2 -> 3 offered to a terminal
/// at 1) is refused, and when the full list cannot be fetched either the report names the epoch
/// mismatch, not only the unavailable list.
#[test]
fn a_delta_from_another_epoch_is_refused_and_the_report_names_the_epochs() {
    let mut server = FakeServer::new();
    let (_tmp, dir) = registered(&mut server, Service::Transit);
    let mut sim = open(&dir, NOW);
    sim.sync(&mut server).unwrap();
    assert_eq!(sim.state().status_epoch, Some(1));
    server.revoke(3);
    server.revoke(4);
    let wrong = match server.status_delta(2).unwrap() {
        Fetched::Body(b) => b,
        _ => panic!("the fake server made no delta"),
    };
    server.delta_override = Some(wrong);
    server.list_down = true;
    let report = sim.sync(&mut server).unwrap();
    let (object, why) = report
        .failed
        .iter()
        .find(|(o, _)| o == "status_list")
        .unwrap();
    assert_eq!(object, "status_list");
    assert!(
        why.contains("a delta from epoch 2 does not continue epoch 1"),
        "{why}"
    );
    assert!(why.contains("503"), "{why}");
    assert_eq!(
        sim.state().status_epoch,
        Some(1),
        "nothing of the delta applied"
    );

    // With the full list back, the same wrong delta is refused and the list settles it.
    server.list_down = false;
    let report = sim.sync(&mut server).unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    let status = report
        .done
        .iter()
        .find(|o| o.object == "status_list")
        .unwrap();
    assert_eq!((status.action, status.epoch), ("installed", Some(3)));
}

#[test]
fn a_rolled_back_status_list_is_refused_and_the_newer_stays() {
    let mut server = FakeServer::new();
    let (_tmp, dir) = registered(&mut server, Service::Transit);
    let mut sim = open(&dir, NOW);
    server.revoke(1);
    sim.sync(&mut server).unwrap();
    assert_eq!(sim.state().status_epoch, Some(2));
    // The server (or a man in the middle) offers epoch 1 again.
    server.deltas = false;
    server.status_epoch = 3;
    server.stale_list = Some(1);
    let report = sim.sync(&mut server).unwrap();
    let (object, why) = &report.failed[0];
    assert_eq!(object, "status_list");
    assert!(why.contains("rollback"), "{why}");
    assert_eq!(sim.state().status_epoch, Some(2));
}

#[test]
fn a_bundle_not_signed_by_the_root_is_refused_and_the_old_one_stays() {
    let mut server = FakeServer::new();
    let (_tmp, dir) = registered(&mut server, Service::Transit);
    let mut sim = open(&dir, NOW);
    sim.sync(&mut server).unwrap();
    // A newer bundle signed by a key that is not the root.
    let good = {
        let mut out = [0u8; 2048];
        server
            .a
            .trust_bundle(2, NOW, &[], &mut out)
            .unwrap()
            .to_vec()
    };
    let signed = Signed::decode(&good).unwrap();
    let (mut scratch, mut out) = ([0u8; 2200], [0u8; 2300]);
    let body = signed
        .decode_trusted::<shared_crypto::model::TrustBundleBody<'_>>()
        .unwrap();
    let forged = sign_into(&body, &[], &server.a.rogue, &mut scratch, &mut out).unwrap();
    server.bundle_override = Some(forged.to_vec());
    let report = sim.sync(&mut server).unwrap();
    assert_eq!(report.failed.len(), 1, "{:?}", report);
    assert_eq!(report.failed[0].0, "trust_bundle");
    assert_eq!(sim.state().bundle_epoch, Some(1));
    // The others went on.
    assert_eq!(report.done.len(), 2);
}

#[test]
fn welfare_debit_is_decided_and_its_receipt_kept() {
    let mut server = FakeServer::new();
    let (_tmp, dir) = registered(&mut server, Service::Welfare);
    let mut sim = open(&dir, NOW);
    sim.sync(&mut server).unwrap();
    let mut c = card(&server, 3, 11);
    let d = sim
        .tap(&mut c, ServiceRequest::Welfare { amount: 30 })
        .unwrap()
        .decision;
    assert!(d.accepted(), "{:?}", d.reason);
    let r = TapReport::new(&d, Lang::En, None);
    let debit = r.sees.debit.unwrap();
    assert_eq!((debit.amount, debit.balance_after), (30, 70));
    assert!(debit.receipt.is_some());
    // Over the rules' limit (50): refused without touching the purse.
    let d = sim
        .tap(&mut c, ServiceRequest::Welfare { amount: 51 })
        .unwrap()
        .decision;
    assert_eq!(d.reason.name(), "amount_over_limit");
}

#[test]
fn init_without_a_token_waits_for_a_certificate_and_then_completes() {
    let mut server = FakeServer::new();
    let tmp = tempfile::tempdir().unwrap();
    let dir = DataDir::new(tmp.path().join("t"));
    let mut req = request(Service::Rehab);
    req.admin_token = None;
    let first = init(&dir, &req, &mut server, &LAYOUT).unwrap();
    assert!(!first.registered && first.new_key);
    // Not registered: opening says what to do, with the public key.
    let e = Sim::open(&dir, SystemClock::fixed(NOW))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains(&first.public_key), "{e}");
    // The admin registers the printed key; the certificate is handed over.
    let reg = server
        .register(
            TOKEN,
            &Registration {
                subject: "rehab desk",
                public_key: &first.public_key,
                services: vec!["rehab"],
                region: 0,
            },
        )
        .unwrap();
    req.certificate = Some(hex::decode(reg.certificate).unwrap());
    let second = init(&dir, &req, &mut server, &LAYOUT).unwrap();
    assert!(second.registered && !second.new_key);
    assert_eq!(second.public_key, first.public_key);
    // Only the first init asked for the root key.
    assert_eq!(server.calls.iter().filter(|c| *c == "root_key").count(), 1);
    open(&dir, NOW);
    // A third init on a registered terminal is refused.
    assert!(init(&dir, &req, &mut server, &LAYOUT).is_err());
}

#[test]
fn init_refuses_a_certificate_for_another_key_or_service() {
    let mut server = FakeServer::new();
    let tmp = tempfile::tempdir().unwrap();
    let dir = DataDir::new(tmp.path().join("t"));
    let mut req = request(Service::Transit);
    req.admin_token = None;
    init(&dir, &req, &mut server, &LAYOUT).unwrap();
    // The testkit's own terminal key, not ours.
    let mut out = [0u8; 400];
    let other = server
        .a
        .terminal_certificate(ServiceSet::of(&[Service::Transit]), &mut out)
        .unwrap()
        .to_vec();
    req.certificate = Some(other);
    let e = init(&dir, &req, &mut server, &LAYOUT)
        .unwrap_err()
        .to_string();
    assert!(e.contains("another key"), "{e}");
    // Our key, but for employment only.
    let key = dir.load_key().unwrap();
    let reg = server
        .register(
            TOKEN,
            &Registration {
                subject: "x",
                public_key: &hex::encode(key.public_key().to_sec1()),
                services: vec!["employment"],
                region: 0,
            },
        )
        .unwrap();
    req.certificate = Some(hex::decode(reg.certificate).unwrap());
    let e = init(&dir, &req, &mut server, &LAYOUT)
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not allow service transit"), "{e}");
    assert_eq!(dir.load_certificate().unwrap(), None);
}

#[test]
fn init_refuses_a_server_whose_root_is_not_the_expected_one() {
    let mut server = FakeServer::new();
    let tmp = tempfile::tempdir().unwrap();
    let dir = DataDir::new(tmp.path().join("t"));
    let mut req = request(Service::Transit);
    req.expect_root = Some(server.a.rogue.public_key().to_sec1());
    let e = init(&dir, &req, &mut server, &LAYOUT)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not the expected server"), "{e}");
    assert!(!dir.is_initialized());
    req.expect_root = Some(server.a.root_key());
    assert!(init(&dir, &req, &mut server, &LAYOUT).unwrap().registered);
}

#[test]
fn init_with_a_bad_token_keeps_the_key_for_a_retry() {
    let mut server = FakeServer::new();
    let tmp = tempfile::tempdir().unwrap();
    let dir = DataDir::new(tmp.path().join("t"));
    let mut req = request(Service::Transit);
    req.admin_token = Some("wrong");
    let e = init(&dir, &req, &mut server, &LAYOUT)
        .unwrap_err()
        .to_string();
    assert!(e.contains("401"), "{e}");
    let key = dir.load_key().unwrap().key_id();
    req.admin_token = Some(TOKEN);
    init(&dir, &req, &mut server, &LAYOUT).unwrap();
    assert_eq!(dir.load_key().unwrap().key_id(), key);
}

#[test]
fn init_refuses_a_remote_server() {
    let mut server = FakeServer::new();
    let tmp = tempfile::tempdir().unwrap();
    let dir = DataDir::new(tmp.path().join("t"));
    let mut req = request(Service::Transit);
    req.server = "http://192.0.2.1:8080";
    assert!(init(&dir, &req, &mut server, &LAYOUT).is_err());
    assert!(server.calls.is_empty());
}

#[test]
fn a_tampered_certificate_file_stops_the_terminal() {
    let mut server = FakeServer::new();
    let (_tmp, dir) = registered(&mut server, Service::Transit);
    let mut cert = dir.load_certificate().unwrap().unwrap();
    let n = cert.len();
    cert[n - 1] ^= 1;
    dir.save_certificate(&cert).unwrap();
    let e = Sim::open(&dir, SystemClock::fixed(NOW))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("terminal.cert"), "{e}");
}

#[test]
fn an_old_status_list_makes_the_terminal_ask_staff() {
    let mut server = FakeServer::new();
    let (_tmp, dir) = registered(&mut server, Service::Transit);
    let mut sim = open(&dir, NOW);
    sim.sync(&mut server).unwrap();
    drop(sim);
    // Three days later, without a sync (the rules allow two).
    let mut sim = open(&dir, NOW + 3 * DAY);
    let s = StatusReport::new(&sim.state(), sim.now(), "transit", "x");
    assert_eq!(s.status_too_old, Some(true));
    assert!(s.to_text(Lang::En).contains("TOO OLD"));
    let mut c = card(&server, 4, 2);
    let d = sim.tap(&mut c, ServiceRequest::Transit).unwrap().decision;
    assert_eq!(d.reason.name(), "status_list_outdated");
    let r = TapReport::new(&d, Lang::ZhCn, None);
    assert_eq!((r.outcome, r.sees.light.color), ("ask_staff", "amber"));
}
