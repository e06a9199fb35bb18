//! The applet as a [`SimulatedCard`]: a RAM store loaded from, and saved to, the state file.

use std::io;
use std::path::Path;

use card_applet::{Applet, RamStore, StaticKeys, MAX_RESPONSE};
use shared_crypto::model::LifeCycle;
use shared_crypto::PublicKey;

use crate::atr::{atr, ATR_LEN};
use crate::state_file::StateFile;
use crate::vpcd::SimulatedCard;

/// The card's random source: the operating system's.
pub type CardRng = rand_core::UnwrapErr<getrandom::SysRng>;

/// How many bytes of the torn store write land in a [`SimulatedCard::process_with_power_cut`]
/// (a header of the record layer is 16 bytes: cutting inside it is the nastiest case).
const TORN_WRITE_BYTES: usize = 7;

fn store_error(what: &str, e: card_applet::StoreError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{what}: {e}"))
}

/// The applet with its state file.
pub struct AppletCard {
    applet: Applet<RamStore, CardRng>,
    file: StateFile,
    atr: [u8; ATR_LEN],
}

impl AppletCard {
    /// Loads the card kept in `path`.
    pub fn load(path: &Path) -> io::Result<Self> {
        let (file, bytes) = StateFile::open(path)?;
        let store = RamStore::from_bytes(&bytes).map_err(|e| {
            store_error(
                &format!(
                    "{} is not a card state file of this version",
                    path.display()
                ),
                e,
            )
        })?;
        let applet = Applet::new(store, rand_core::UnwrapErr(getrandom::SysRng));
        if applet.life_cycle().is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} holds no formatted card; make one with `virtual-card init`",
                    path.display()
                ),
            ));
        }
        Ok(AppletCard {
            applet,
            file,
            atr: atr(),
        })
    }

    /// The factory step: a BLANK card in `path` whose static SCP03 keys are diversified from the
    /// office `master` key and `div_data` (what a card manufacturer does for an office).
    pub fn create_blank(
        path: &Path,
        master: &[u8; 16],
        div_data: [u8; 10],
        force: bool,
    ) -> io::Result<Self> {
        let keys: StaticKeys = shared_crypto::scp03::diversify(master, &div_data);
        let applet = Applet::new_blank(
            RamStore::new(),
            rand_core::UnwrapErr(getrandom::SysRng),
            &keys,
            div_data,
        )
        .map_err(|e| store_error("formatting the card", e))?;
        let file = StateFile::create(path, applet.store().as_bytes(), force)?;
        Ok(AppletCard {
            applet,
            file,
            atr: atr(),
        })
    }

    /// Life cycle.
    pub fn life_cycle(&self) -> Option<LifeCycle> {
        self.applet.life_cycle()
    }

    /// Purse balance (personalized cards).
    pub fn balance(&self) -> Option<u32> {
        self.applet.balance()
    }

    /// Purse counter.
    pub fn counter(&self) -> Option<u32> {
        self.applet.counter()
    }

    /// The card's public key (generated at personalization).
    pub fn card_public_key(&self) -> Option<PublicKey> {
        self.applet.card_public_key()
    }

    /// The state file.
    pub fn state_path(&self) -> &Path {
        self.file.path()
    }
}

impl SimulatedCard for AppletCard {
    fn atr(&self) -> &[u8] {
        &self.atr
    }

    fn power_on(&mut self) {
        self.applet.power_on();
    }

    fn reset(&mut self) {
        // A warm reset (pcscd's SCardReconnect / disconnect with RESET): a new session, but the
        // cache of verified terminal certificates (public data) survives, as on a real card.
        self.applet.reset();
    }

    fn power_off(&mut self) {
        self.applet.power_on();
    }

    fn process(&mut self, command: &[u8]) -> Vec<u8> {
        let mut rsp = vec![0u8; MAX_RESPONSE];
        let n = self.applet.process(command, &mut rsp);
        rsp.truncate(n);
        rsp
    }

    fn process_with_power_cut(&mut self, command: &[u8]) {
        let store = self.applet.store_mut();
        store.cut_power_at(0, TORN_WRITE_BYTES);
        let _lost = self.process(command);
        // What reached the memory stays; the next session starts with power back.
        self.applet.store_mut().restore_power();
    }

    fn persist(&mut self) -> io::Result<bool> {
        self.file.save_if_changed(self.applet.store().as_bytes())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use shared_crypto::apdu::select_command;

    #[test]
    fn a_blank_card_survives_a_restart_and_answers_select() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("card.bin");
        let mut card = AppletCard::create_blank(&p, &[7u8; 16], [1; 10], false).unwrap();
        card.power_on();
        let r = card.process(&select_command());
        assert_eq!(&r[r.len() - 2..], &[0x90, 0x00]);
        card.persist().unwrap();
        drop(card);
        let mut again = AppletCard::load(&p).unwrap();
        assert_eq!(again.life_cycle(), Some(LifeCycle::Blank));
        again.power_on();
        // GET DATA 'CF' gives back the diversification data the card was made with.
        again.process(&select_command());
        let r = again.process(&[0x80, 0xCA, 0x00, 0xCF, 0x00]);
        assert_eq!(r, [[1u8; 10].as_slice(), &[0x90, 0x00]].concat());
        assert!(AppletCard::create_blank(&p, &[7u8; 16], [1; 10], false).is_err());
    }

    #[test]
    fn junk_is_not_a_card() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("junk.bin");
        std::fs::write(&p, b"junk").unwrap();
        let e = AppletCard::load(&p).err().unwrap();
        assert!(e.to_string().contains("not a card state file"), "{e}");
        std::fs::write(&p, vec![0xFFu8; RamStore::SIZE]).unwrap();
        let e = AppletCard::load(&p).err().unwrap();
        assert!(e.to_string().contains("virtual-card init"), "{e}");
    }
}
