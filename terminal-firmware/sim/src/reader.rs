//! The card reader: any PC/SC reader (a desktop contactless reader at a service point, the vpcd
//! virtual reader in tests) as the core's card [`Transport`].

use std::ffi::{CStr, CString};
use std::time::{Duration, Instant};

use anyhow::Result;
use shared_crypto::apdu::Transport;

use crate::i18n::TextContext;
use crate::msg;

/// A connected card.
pub struct PcscCard {
    card: pcsc::Card,
    reader: String,
}

impl PcscCard {
    /// The reader's name.
    pub fn reader(&self) -> &str {
        &self.reader
    }

    /// Leaves the card powered for the next tap (no reset: the applet starts every tap with its
    /// own SELECT anyway).
    pub fn release(self) -> Result<()> {
        self.card
            .disconnect(pcsc::Disposition::LeaveCard)
            .map_err(|(_, e)| msg::disconnecting(&self.reader, &e).into())
    }
}

impl Transport for PcscCard {
    type Error = pcsc::Error;

    fn transceive(&mut self, command: &[u8], response: &mut [u8]) -> Result<usize, pcsc::Error> {
        let n = self.card.transmit(command, response)?.len();
        // Every ISO 7816 answer ends with a two-byte status word. Some readers (vpcd among them)
        // report a card that left the field mid-command as an empty answer rather than an error;
        // that is a lost card, not a malformed one, so the core treats it as an interrupted
        // exchange (a torn debit is then retried with the same reference, never repeated).
        if n < 2 {
            return Err(pcsc::Error::RemovedCard);
        }
        Ok(n)
    }
}

/// How to find the card.
#[derive(Clone, Debug, Default)]
pub struct ReaderChoice {
    /// A reader name, or a part of one (case-insensitive); `None`: any reader with a card.
    pub name: Option<String>,
    /// Wait up to this long for a card instead of failing at once.
    pub wait: Option<Duration>,
}

/// Picks the readers that `filter` names (all when `None`).
pub fn matching_readers(all: &[String], filter: Option<&str>) -> Result<Vec<String>> {
    if all.is_empty() {
        return Err(msg::no_reader().into());
    }
    let Some(f) = filter else {
        return Ok(all.to_vec());
    };
    if let Some(exact) = all.iter().find(|r| r.as_str() == f) {
        return Ok(vec![exact.clone()]);
    }
    let low = f.to_lowercase();
    let hits: Vec<String> = all
        .iter()
        .filter(|r| r.to_lowercase().contains(&low))
        .cloned()
        .collect();
    match hits.len() {
        0 => Err(msg::no_reader_matches(f, all).into()),
        1 => Ok(hits),
        _ => Err(msg::several_readers(f, &hits).into()),
    }
}

/// The PC/SC readers pcscd knows.
pub fn list_readers(ctx: &pcsc::Context) -> Result<Vec<String>> {
    match ctx.list_readers_owned() {
        Ok(r) => Ok(r.iter().map(|n| n.to_string_lossy().into_owned()).collect()),
        Err(pcsc::Error::NoReadersAvailable) => Ok(vec![]),
        Err(e) => Err(msg::listing_readers(&e).into()),
    }
}

/// Connects to the card on the chosen reader (waiting for one if asked).
pub fn connect(choice: &ReaderChoice) -> Result<PcscCard> {
    let ctx = pcsc::Context::establish(pcsc::Scope::User).with_text(msg::no_pcsc)?;
    let readers = matching_readers(&list_readers(&ctx)?, choice.name.as_deref())?;
    let names: Vec<CString> = readers
        .iter()
        .map(|r| CString::new(r.as_str()))
        .collect::<Result<_, _>>()?;
    let deadline = choice.wait.map(|w| Instant::now() + w);
    let mut states: Vec<pcsc::ReaderState> = names
        .iter()
        .map(|n| pcsc::ReaderState::new(n.clone(), pcsc::State::UNAWARE))
        .collect();
    loop {
        match ctx.get_status_change(Duration::ZERO, &mut states) {
            Ok(()) | Err(pcsc::Error::Timeout) => {}
            Err(e) => return Err(msg::reader_state(&e).into()),
        }
        let with_card = states.iter().find(|s| {
            let st = s.event_state();
            st.contains(pcsc::State::PRESENT) && !st.contains(pcsc::State::MUTE)
        });
        if let Some(s) = with_card {
            return open(&ctx, s.name());
        }
        let Some(deadline) = deadline else {
            return Err(msg::no_card(&readers).into());
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(msg::no_card_in_time(&readers).into());
        }
        for s in &mut states {
            s.sync_current_state();
        }
        // Sleeps in pcscd until a reader changes or the time is up.
        match ctx.get_status_change(left.min(Duration::from_secs(1)), &mut states) {
            Ok(()) | Err(pcsc::Error::Timeout) => {}
            Err(e) => return Err(msg::waiting_for_card(&e).into()),
        }
    }
}

fn open(ctx: &pcsc::Context, name: &CStr) -> Result<PcscCard> {
    let reader = name.to_string_lossy().into_owned();
    let card = ctx
        .connect(name, pcsc::ShareMode::Shared, pcsc::Protocols::ANY)
        .with_text(|| msg::connecting_card(&reader))?;
    Ok(PcscCard { card, reader })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readers() -> Vec<String> {
        vec![
            "Virtual PCD 00 00".to_owned(),
            "Virtual PCD 00 01".to_owned(),
            "ACS ACR122U PICC Interface 00 00".to_owned(),
        ]
    }

    #[test]
    fn exact_name_wins_over_substring() {
        assert_eq!(
            matching_readers(&readers(), Some("Virtual PCD 00 00")).unwrap(),
            ["Virtual PCD 00 00"]
        );
    }

    #[test]
    fn unique_substring_is_enough_case_insensitive() {
        assert_eq!(
            matching_readers(&readers(), Some("acr122")).unwrap(),
            ["ACS ACR122U PICC Interface 00 00"]
        );
    }

    #[test]
    fn ambiguous_missing_and_absent_readers_are_refused_with_the_list() {
        let e = matching_readers(&readers(), Some("virtual")).unwrap_err();
        assert!(e.to_string().contains("several readers"), "{e}");
        let e = matching_readers(&readers(), Some("omnikey")).unwrap_err();
        assert!(e.to_string().contains("Virtual PCD 00 01"), "{e}");
        assert!(matching_readers(&[], None).is_err());
    }

    #[test]
    fn no_filter_means_every_reader() {
        assert_eq!(matching_readers(&readers(), None).unwrap().len(), 3);
    }
}
