//! The card reader: any PC/SC reader (a desktop contactless reader at a service point, the vpcd
//! virtual reader in tests) as the core's card [`Transport`].

use std::ffi::{CStr, CString};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use shared_crypto::apdu::Transport;

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
            .map_err(|(_, e)| anyhow!("disconnecting from {}: {e}", self.reader))
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
        bail!("no card reader found: connect a PC/SC reader (is pcscd running?)");
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
        0 => bail!(
            "no reader matches {f:?}; readers: {}",
            all.iter()
                .map(|r| format!("{r:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        1 => Ok(hits),
        _ => bail!(
            "{f:?} matches several readers ({}); give more of the name",
            hits.iter()
                .map(|r| format!("{r:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The PC/SC readers pcscd knows.
pub fn list_readers(ctx: &pcsc::Context) -> Result<Vec<String>> {
    match ctx.list_readers_owned() {
        Ok(r) => Ok(r.iter().map(|n| n.to_string_lossy().into_owned()).collect()),
        Err(pcsc::Error::NoReadersAvailable) => Ok(vec![]),
        Err(e) => Err(anyhow!("listing card readers: {e}")),
    }
}

/// Connects to the card on the chosen reader (waiting for one if asked).
pub fn connect(choice: &ReaderChoice) -> Result<PcscCard> {
    let ctx = pcsc::Context::establish(pcsc::Scope::User)
        .context("cannot reach the PC/SC service (is pcscd running?)")?;
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
            Err(e) => bail!("reading the readers' state: {e}"),
        }
        let with_card = states.iter().find(|s| {
            let st = s.event_state();
            st.contains(pcsc::State::PRESENT) && !st.contains(pcsc::State::MUTE)
        });
        if let Some(s) = with_card {
            return open(&ctx, s.name());
        }
        let Some(deadline) = deadline else {
            bail!(
                "no card on {}: put the card on the reader, or use --wait",
                describe(&readers)
            );
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("no card came to {} in time", describe(&readers));
        }
        for s in &mut states {
            s.sync_current_state();
        }
        // Sleeps in pcscd until a reader changes or the time is up.
        match ctx.get_status_change(left.min(Duration::from_secs(1)), &mut states) {
            Ok(()) | Err(pcsc::Error::Timeout) => {}
            Err(e) => bail!("waiting for a card: {e}"),
        }
    }
}

fn describe(readers: &[String]) -> String {
    match readers {
        [one] => format!("reader {one:?}"),
        _ => "any reader".to_owned(),
    }
}

fn open(ctx: &pcsc::Context, name: &CStr) -> Result<PcscCard> {
    let reader = name.to_string_lossy().into_owned();
    let card = ctx
        .connect(name, pcsc::ShareMode::Shared, pcsc::Protocols::ANY)
        .with_context(|| format!("connecting to the card on {reader:?}"))?;
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
