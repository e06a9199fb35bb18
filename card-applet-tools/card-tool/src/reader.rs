//! The PC/SC layer: readers, cards, and the [`Transport`] the protocol code runs over.

use std::ffi::{CStr, CString};
use std::time::{Duration, Instant};

use pcsc::{Context, Disposition, Protocols, ReaderState, Scope, ShareMode, State};
use shared_crypto::apdu::{Transport, WireStats};

/// Why talking to a reader or a card failed; each message says what to do next.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReaderError {
    /// pcscd is not running (or not reachable).
    #[error("the PC/SC service is not running: start it with `pcscd -f` (and keep it running)")]
    NoService,
    /// pcscd runs but has no reader.
    #[error(
        "no reader found: is pcscd running with a reader driver? For the virtual card, \
             install vsmartcard-vpcd and start `pcscd -f`"
    )]
    NoReaders,
    /// The named reader does not exist.
    #[error(
        "no reader named {name:?}; the readers are: {known}. List them with `card-tool readers`"
    )]
    UnknownReader {
        /// The name asked for.
        name: String,
        /// The readers present.
        known: String,
    },
    /// No reader holds a card.
    #[error("no card in any reader: put a card on the reader (or start `virtual-card run`)")]
    NoCard,
    /// The named reader holds no card.
    #[error("no card in reader {0:?}: put a card on it")]
    NoCardIn(String),
    /// The card left the reader or was reset in the middle of an exchange.
    #[error("the card was removed or reset during the exchange ({0}); put it back and run the command again")]
    CardLost(pcsc::Error),
    /// Waiting for a card (or its removal) took too long.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, &'static str),
    /// Any other PC/SC failure.
    #[error("PC/SC error: {0}")]
    Pcsc(pcsc::Error),
}

impl From<pcsc::Error> for ReaderError {
    fn from(e: pcsc::Error) -> Self {
        match e {
            pcsc::Error::NoReadersAvailable => ReaderError::NoReaders,
            pcsc::Error::NoService | pcsc::Error::ServiceStopped => ReaderError::NoService,
            pcsc::Error::RemovedCard
            | pcsc::Error::ResetCard
            | pcsc::Error::NotTransacted
            | pcsc::Error::NoSmartcard
            | pcsc::Error::UnpoweredCard
            | pcsc::Error::UnresponsiveCard => ReaderError::CardLost(e),
            other => ReaderError::Pcsc(other),
        }
    }
}

/// One reader and what is in it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ReaderInfo {
    /// The reader's name.
    pub name: String,
    /// Whether a card is present.
    pub card_present: bool,
    /// The card's ATR (hex), when present.
    pub atr: Option<String>,
}

/// A PC/SC context.
pub struct Readers {
    ctx: Context,
}

impl Readers {
    /// Connects to pcscd.
    pub fn new() -> Result<Self, ReaderError> {
        let ctx = Context::establish(Scope::User).map_err(|e| match e {
            pcsc::Error::NoService | pcsc::Error::ServiceStopped => ReaderError::NoService,
            other => ReaderError::Pcsc(other),
        })?;
        Ok(Readers { ctx })
    }

    /// The reader names.
    pub fn names(&self) -> Result<Vec<CString>, ReaderError> {
        match self.ctx.list_readers_owned() {
            Ok(names) if names.is_empty() => Err(ReaderError::NoReaders),
            Ok(names) => Ok(names),
            Err(pcsc::Error::NoReadersAvailable) => Err(ReaderError::NoReaders),
            Err(e) => Err(e.into()),
        }
    }

    /// Every reader with its card state.
    pub fn list(&self) -> Result<Vec<ReaderInfo>, ReaderError> {
        let names = self.names()?;
        let mut states: Vec<ReaderState> = names
            .iter()
            .map(|n| ReaderState::new(n.clone(), State::UNAWARE))
            .collect();
        self.ctx.get_status_change(Duration::ZERO, &mut states)?;
        Ok(states
            .iter()
            .map(|s| {
                let present = s.event_state().contains(State::PRESENT);
                ReaderInfo {
                    name: s.name().to_string_lossy().into_owned(),
                    card_present: present,
                    atr: present.then(|| hex::encode(s.atr())),
                }
            })
            .collect())
    }

    /// Finds a reader by exact name, or the first reader holding a card.
    pub fn choose(&self, name: Option<&str>) -> Result<CString, ReaderError> {
        let list = self.list()?;
        match name {
            Some(name) => {
                let found = list.iter().find(|r| r.name == name).ok_or_else(|| {
                    ReaderError::UnknownReader {
                        name: name.to_owned(),
                        known: list
                            .iter()
                            .map(|r| format!("{:?}", r.name))
                            .collect::<Vec<_>>()
                            .join(", "),
                    }
                })?;
                CString::new(found.name.clone()).map_err(|_| ReaderError::NoReaders)
            }
            None => {
                let found = list
                    .iter()
                    .find(|r| r.card_present)
                    .ok_or(ReaderError::NoCard)?;
                CString::new(found.name.clone()).map_err(|_| ReaderError::NoReaders)
            }
        }
    }

    /// Connects to the card in `reader` (shared, T=0 or T=1).
    pub fn connect(&self, reader: &CStr) -> Result<CardLink, ReaderError> {
        let card = self
            .ctx
            .connect(reader, ShareMode::Shared, Protocols::ANY)
            .map_err(|e| match e {
                pcsc::Error::NoSmartcard | pcsc::Error::RemovedCard => {
                    ReaderError::NoCardIn(reader.to_string_lossy().into_owned())
                }
                pcsc::Error::UnknownReader => ReaderError::UnknownReader {
                    name: reader.to_string_lossy().into_owned(),
                    known: String::from("(see `card-tool readers`)"),
                },
                other => other.into(),
            })?;
        Ok(CardLink {
            card,
            reader: reader.to_owned(),
        })
    }

    /// Connects to the card in the named reader, or in the first reader holding one.
    pub fn connect_any(&self, name: Option<&str>) -> Result<CardLink, ReaderError> {
        let reader = self.choose(name)?;
        self.connect(&reader)
    }

    /// Waits until `reader` holds a card (`present`) or holds none (`!present`).
    pub fn wait_for_card(
        &self,
        reader: &CStr,
        present: bool,
        timeout: Duration,
    ) -> Result<(), ReaderError> {
        let deadline = Instant::now() + timeout;
        let mut states = [ReaderState::new(reader.to_owned(), State::UNAWARE)];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.ctx.get_status_change(left, &mut states) {
                Ok(()) => {}
                Err(pcsc::Error::Timeout) => {
                    return Err(ReaderError::Timeout(
                        timeout,
                        if present {
                            "a card"
                        } else {
                            "the card to be removed"
                        },
                    ))
                }
                Err(e) => return Err(e.into()),
            }
            let s = states[0].event_state();
            // A card that is present but still being powered up is not ready yet.
            let has_card = s.contains(State::PRESENT) && !s.contains(State::MUTE);
            if has_card == present && !(present && s.contains(State::EMPTY)) {
                return Ok(());
            }
            states[0].sync_current_state();
        }
    }
}

/// A connected card. Implements [`Transport`], so every protocol step runs over it.
pub struct CardLink {
    card: pcsc::Card,
    reader: CString,
}

impl CardLink {
    /// The reader's name.
    pub fn reader(&self) -> String {
        self.reader.to_string_lossy().into_owned()
    }

    /// The card's ATR.
    pub fn atr(&self) -> Result<Vec<u8>, ReaderError> {
        Ok(self.card.status2_owned()?.atr().to_vec())
    }

    /// Resets the card and reconnects (after a tear, or to start a clean session).
    pub fn reset(&mut self) -> Result<(), ReaderError> {
        self.card
            .reconnect(ShareMode::Shared, Protocols::ANY, Disposition::ResetCard)?;
        Ok(())
    }

    /// Disconnects, resetting the card (ending the applet session).
    pub fn close(self) {
        let _ = self.card.disconnect(Disposition::ResetCard);
    }
}

impl Transport for CardLink {
    type Error = ReaderError;

    fn transceive(&mut self, command: &[u8], response: &mut [u8]) -> Result<usize, ReaderError> {
        let got = self.card.transmit(command, response)?.len();
        if got < 2 {
            // vpcd (and some readers) report a card that vanished mid-command as an empty answer.
            return Err(ReaderError::CardLost(pcsc::Error::NotTransacted));
        }
        Ok(got)
    }
}

/// A transport that counts the APDUs and bytes passing through it (for protocol code that keeps
/// no statistics of its own).
pub struct Counted<'a, T> {
    inner: &'a mut T,
    /// What passed so far (each APDU counts as one exchange here).
    pub stats: WireStats,
    /// CLA and INS of the last command sent (answered or not).
    pub last_header: Option<[u8; 2]>,
}

impl<'a, T> Counted<'a, T> {
    /// Wraps `inner`.
    pub fn new(inner: &'a mut T) -> Self {
        Counted {
            inner,
            stats: WireStats::default(),
            last_header: None,
        }
    }
}

impl<T: Transport> Transport for Counted<'_, T> {
    type Error = T::Error;

    fn transceive(&mut self, command: &[u8], response: &mut [u8]) -> Result<usize, T::Error> {
        if let [cla, ins, ..] = command {
            self.last_header = Some([*cla, *ins]);
        }
        let n = self.inner.transceive(command, response)?;
        self.stats.exchanges += 1;
        self.stats.apdus += 1;
        self.stats.bytes_out += command.len() as u32;
        self.stats.bytes_in += n as u32;
        Ok(n)
    }
}
