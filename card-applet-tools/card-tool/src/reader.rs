//! The PC/SC layer: readers, cards, and the [`Transport`] the protocol code runs over.

use std::ffi::{CStr, CString};
use std::fmt;
use std::time::{Duration, Instant};

use pcsc::{Context, Disposition, Protocols, ReaderState, Scope, ShareMode, State};
use shared_crypto::apdu::{Transport, WireStats};

use crate::i18n::{Lang, Localized, Phrase};

/// Why talking to a reader or a card failed; each message says what to do next.
///
/// `Display` is the English message; [`Localized::localized`] gives it in either language.
#[derive(Debug)]
#[non_exhaustive]
pub enum ReaderError {
    /// pcscd is not running (or not reachable).
    NoService,
    /// pcscd runs but has no reader.
    NoReaders,
    /// The named reader does not exist.
    UnknownReader {
        /// The name asked for.
        name: String,
        /// The readers present, quoted and comma-separated; empty when they are not known.
        known: String,
    },
    /// No reader holds a card.
    NoCard,
    /// The named reader holds no card.
    NoCardIn(String),
    /// The card left the reader or was reset in the middle of an exchange.
    CardLost(pcsc::Error),
    /// Waiting for a card (or its removal) took too long.
    Timeout(Duration, Phrase),
    /// Any other PC/SC failure.
    Pcsc(pcsc::Error),
}

/// What [`Readers::wait_for_card`] waits for, as [`ReaderError::Timeout`] names it.
const AWAIT_CARD: Phrase = Phrase::new("a card", "放入卡片");
const AWAIT_REMOVAL: Phrase = Phrase::new("the card to be removed", "取走卡片");

impl Localized for ReaderError {
    fn localized(&self, lang: Lang) -> String {
        use Lang::{En, Zh};
        match (self, lang) {
            (ReaderError::NoService, En) => {
                "the PC/SC service is not running: start it with `pcscd -f` (and keep it running)"
                    .into()
            }
            (ReaderError::NoService, Zh) => {
                "PC/SC 服务没有运行：请用 `pcscd -f` 启动它（并让它一直运行）".into()
            }
            (ReaderError::NoReaders, En) => "no reader found: is pcscd running with a reader \
                driver? For the virtual card, install vsmartcard-vpcd and start `pcscd -f`"
                .into(),
            (ReaderError::NoReaders, Zh) => "找不到读卡器：pcscd 是否已在运行，并装有读卡器驱动？\
                使用虚拟卡时，请安装 vsmartcard-vpcd 并启动 `pcscd -f`"
                .into(),
            (ReaderError::UnknownReader { name, known }, En) => {
                let known = if known.is_empty() {
                    "(see `card-tool readers`)"
                } else {
                    known
                };
                format!(
                    "no reader named {name:?}; the readers are: {known}. List them with \
                     `card-tool readers`"
                )
            }
            (ReaderError::UnknownReader { name, known }, Zh) => {
                let known = if known.is_empty() {
                    "（见 `card-tool readers`）"
                } else {
                    known
                };
                format!(
                    "没有名为 {name:?} 的读卡器；现有的读卡器是：{known}。可用 \
                     `card-tool readers` 列出全部读卡器"
                )
            }
            (ReaderError::NoCard, En) => {
                "no card in any reader: put a card on the reader (or start `virtual-card run`)"
                    .into()
            }
            (ReaderError::NoCard, Zh) => {
                "所有读卡器上都没有卡片：请把卡片放到读卡器上（或启动 `virtual-card run`）".into()
            }
            (ReaderError::NoCardIn(reader), En) => {
                format!("no card in reader {reader:?}: put a card on it")
            }
            (ReaderError::NoCardIn(reader), Zh) => {
                format!("读卡器 {reader:?} 上没有卡片：请把卡片放上去")
            }
            (ReaderError::CardLost(e), En) => format!(
                "the card was removed or reset during the exchange ({e}); put it back and run \
                 the command again"
            ),
            (ReaderError::CardLost(e), Zh) => format!(
                "与卡片通信时卡片被拿走或被复位（{e}）；请把卡片放回读卡器，再运行一次该命令"
            ),
            (ReaderError::Timeout(after, what), En) => {
                format!("timed out after {after:?} waiting for {}", what.en)
            }
            (ReaderError::Timeout(after, what), Zh) => {
                format!("等待{}超时（已等 {after:?}）", what.zh)
            }
            (ReaderError::Pcsc(e), En) => format!("PC/SC error: {e}"),
            (ReaderError::Pcsc(e), Zh) => format!("PC/SC 错误：{e}"),
        }
    }
}

impl fmt::Display for ReaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.localized(Lang::En))
    }
}

impl std::error::Error for ReaderError {}

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
                    // Not listed here: the message points to `card-tool readers`.
                    known: String::new(),
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
                        if present { AWAIT_CARD } else { AWAIT_REMOVAL },
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::i18n::check;

    #[test]
    fn every_reader_error_says_what_to_do_in_both_languages() {
        let all = [
            ReaderError::NoService,
            ReaderError::NoReaders,
            ReaderError::UnknownReader {
                name: "ACS ACR1252 00 00".into(),
                known: "\"Virtual PCD 00 00\", \"Virtual PCD 00 01\"".into(),
            },
            ReaderError::UnknownReader {
                name: "ACS ACR1252 00 00".into(),
                known: String::new(),
            },
            ReaderError::NoCard,
            ReaderError::NoCardIn("Virtual PCD 00 01".into()),
            ReaderError::CardLost(pcsc::Error::RemovedCard),
            ReaderError::Timeout(Duration::from_secs(120), AWAIT_CARD),
            ReaderError::Timeout(Duration::from_secs(120), AWAIT_REMOVAL),
            ReaderError::Pcsc(pcsc::Error::InternalError),
        ];
        for e in &all {
            // A new variant must be added to the list above (this match stops compiling).
            match e {
                ReaderError::NoService
                | ReaderError::NoReaders
                | ReaderError::UnknownReader { .. }
                | ReaderError::NoCard
                | ReaderError::NoCardIn(_)
                | ReaderError::CardLost(_)
                | ReaderError::Timeout(..)
                | ReaderError::Pcsc(_) => check(&format!("{e:?}"), e),
            }
        }
        // The wording the end-to-end tests and the docs rely on.
        let e = ReaderError::NoCardIn("Virtual PCD 00 01".into());
        assert_eq!(
            e.to_string(),
            "no card in reader \"Virtual PCD 00 01\": put a card on it"
        );
        assert_eq!(
            e.localized(Lang::Zh),
            "读卡器 \"Virtual PCD 00 01\" 上没有卡片：请把卡片放上去"
        );
        let unknown = ReaderError::UnknownReader {
            name: "X".into(),
            known: String::new(),
        };
        assert_eq!(
            unknown.to_string(),
            "no reader named \"X\"; the readers are: (see `card-tool readers`). List them with \
             `card-tool readers`"
        );
    }
}
