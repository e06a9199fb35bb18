//! The terminal refuses to start with a root key or certificate that does not fit it.
#![allow(clippy::unwrap_used)]

mod common;

use card_applet::sim::TestRng;
use common::*;
use shared_crypto::model::{Role, ServiceSet};
use terminal_core::testkit::{RecordingFeedback, TestClock};
use terminal_core::{MountError, P256Verifier, Terminal, TerminalConfig};

fn mount(
    rig: &Rig,
    root_key: [u8; 33],
    cert: &[u8],
) -> Result<Term, MountError<terminal_core::RamFlashError>> {
    Terminal::mount(
        TerminalConfig {
            root_key,
            certificate: cert,
        },
        storage(4),
        P256Verifier,
        rig.auth.terminal.clone(),
        TestClock::at(T0),
        TestRng::new(1),
        RecordingFeedback::default(),
    )
}

#[test]
fn a_terminal_starts_only_with_its_own_root_signed_certificate() {
    let rig = Rig::bare(all_services(), 4);
    assert!(mount(&rig, rig.auth.root_key(), &rig.cert).is_ok());
    // Not a point.
    let mut bad_root = rig.auth.root_key();
    bad_root[0] = 0x04;
    assert!(matches!(
        mount(&rig, bad_root, &rig.cert),
        Err(MountError::BadRootKey)
    ));
    // Another root.
    let other_root = rig.auth.rogue.public_key().to_sec1();
    assert!(matches!(
        mount(&rig, other_root, &rig.cert),
        Err(MountError::BadCertificate(_))
    ));
    // A certificate for another key, and one of another role.
    let mut out = [0u8; 320];
    let other = rig
        .auth
        .certificate(
            &rig.auth.rogue,
            Role::Terminal,
            "other",
            all_services(),
            &mut out,
        )
        .unwrap()
        .to_vec();
    assert!(matches!(
        mount(&rig, rig.auth.root_key(), &other),
        Err(MountError::CertificateNotForThisKey)
    ));
    let issuer_role = rig
        .auth
        .certificate(
            &rig.auth.terminal,
            Role::Issuer,
            "gate",
            ServiceSet::NONE,
            &mut out,
        )
        .unwrap()
        .to_vec();
    assert!(matches!(
        mount(&rig, rig.auth.root_key(), &issuer_role),
        Err(MountError::CertificateNotForThisKey)
    ));
    // Truncated.
    assert!(matches!(
        mount(&rig, rig.auth.root_key(), &rig.cert[..rig.cert.len() - 1]),
        Err(MountError::BadCertificate(_))
    ));
}
