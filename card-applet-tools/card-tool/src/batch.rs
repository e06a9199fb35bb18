//! Many cards in one run: the blank cards of every reader at once, or one card after another on
//! one reader, with a progress bar and a summary.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use shared_crypto::apdu::WireStats;
use shared_crypto::model::LifeCycle;

use crate::journal::Journal;
use crate::personalize::{self, PersoError};
use crate::reader::Readers;
use crate::server::Client;
use crate::tap::{self, Selected};

/// How the cards arrive.
#[derive(Clone, Debug)]
pub enum BatchMode {
    /// A blank card already sits in each reader; they are personalized in parallel.
    PerReader,
    /// One reader; the operator inserts the cards one after another.
    Sequential {
        /// The reader (default: the first one).
        reader: Option<String>,
        /// How long to wait for each insertion or removal.
        wait: Duration,
    },
}

/// What happened to one application.
#[derive(Clone, Debug, Serialize)]
pub struct CardResult {
    /// The application.
    pub application_id: i64,
    /// The reader used, if a card was found for it.
    pub reader: Option<String>,
    /// Whether the card is personalized and the job confirmed.
    pub ok: bool,
    /// The card's serial.
    pub card_serial: Option<String>,
    /// The job.
    pub job_id: Option<i64>,
    /// Why it failed.
    pub error: Option<String>,
    /// Time spent on this card.
    pub seconds: f64,
}

/// The batch's summary.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// One entry per application, in the order given.
    pub results: Vec<CardResult>,
    /// Cards personalized.
    pub succeeded: usize,
    /// Applications that failed or found no card.
    pub failed: usize,
    /// Wall time of the whole batch.
    pub seconds: f64,
}

impl Summary {
    fn new(results: Vec<CardResult>, started: Instant) -> Self {
        let succeeded = results.iter().filter(|r| r.ok).count();
        Summary {
            failed: results.len() - succeeded,
            succeeded,
            results,
            seconds: started.elapsed().as_secs_f64(),
        }
    }

    /// The summary for people.
    pub fn human(&self) -> String {
        let mut s =
            String::from("application  result  serial            job   seconds  reader / reason\n");
        for r in &self.results {
            s += &format!(
                "{:<11}  {:<6}  {:<16}  {:<5} {:>7.2}  {}\n",
                r.application_id,
                if r.ok { "ok" } else { "FAILED" },
                r.card_serial.as_deref().unwrap_or("-"),
                r.job_id.map_or("-".into(), |j| j.to_string()),
                r.seconds,
                if r.ok {
                    r.reader.clone().unwrap_or_default()
                } else {
                    r.error.clone().unwrap_or_default()
                }
            );
        }
        s += &format!(
            "{} personalized, {} failed, {:.2} s in all\n",
            self.succeeded, self.failed, self.seconds
        );
        s
    }
}

/// Reads application ids from a file: one per line, blank lines and `#` comments ignored.
pub fn read_application_file(path: &Path) -> Result<Vec<i64>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut ids = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        ids.push(line.parse().with_context(|| {
            format!(
                "{} line {}: {line:?} is not an application id",
                path.display(),
                n + 1
            )
        })?);
    }
    Ok(ids)
}

fn bar(len: usize, show: bool) -> ProgressBar {
    let b = ProgressBar::new(len as u64);
    if show {
        b.set_draw_target(ProgressDrawTarget::stderr());
        if let Ok(style) =
            ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} {elapsed} {wide_msg}")
        {
            b.set_style(style.progress_chars("=> "));
        }
        b.enable_steady_tick(Duration::from_millis(120));
    } else {
        b.set_draw_target(ProgressDrawTarget::hidden());
    }
    b
}

fn one(
    readers: &Readers,
    reader: &std::ffi::CStr,
    client: &Client,
    journal: &Journal,
    application_id: i64,
) -> (CardResult, Option<PersoError>) {
    let started = Instant::now();
    let name = reader.to_string_lossy().into_owned();
    let outcome = readers
        .connect(reader)
        .map_err(PersoError::from)
        .and_then(|mut link| {
            let r = personalize::personalize(&mut link, client, application_id, journal);
            link.close();
            r
        });
    match outcome {
        Ok(done) => (
            CardResult {
                application_id,
                reader: Some(name),
                ok: true,
                card_serial: Some(done.card_serial),
                job_id: Some(done.job_id),
                error: None,
                seconds: started.elapsed().as_secs_f64(),
            },
            None,
        ),
        Err(e) => (
            CardResult {
                application_id,
                reader: Some(name),
                ok: false,
                card_serial: None,
                job_id: None,
                error: Some(e.to_string()),
                seconds: started.elapsed().as_secs_f64(),
            },
            Some(e),
        ),
    }
}

fn missing(application_id: i64, why: &str) -> CardResult {
    CardResult {
        application_id,
        reader: None,
        ok: false,
        card_serial: None,
        job_id: None,
        error: Some(why.to_owned()),
        seconds: 0.0,
    }
}

/// Runs a batch. `progress` shows a bar on stderr.
pub fn run(
    client: &Client,
    journal: &Journal,
    applications: &[i64],
    mode: &BatchMode,
    progress: bool,
) -> Result<Summary> {
    let started = Instant::now();
    match mode {
        BatchMode::PerReader => {
            let readers = Readers::new()?;
            // The readers holding a blank card, in reader order.
            let mut blank = Vec::new();
            for r in readers.list()? {
                if !r.card_present {
                    continue;
                }
                let Ok(name) = std::ffi::CString::new(r.name.clone()) else {
                    continue;
                };
                let Ok(mut link) = readers.connect(&name) else {
                    continue;
                };
                let mut stats = WireStats::default();
                let is_blank = matches!(
                    tap::select(&mut link, &mut stats),
                    Ok(Selected::Applet(i)) if i.life_cycle == LifeCycle::Blank
                );
                link.close();
                if is_blank {
                    blank.push(name);
                }
            }
            if blank.is_empty() {
                bail!(
                    "no reader holds a blank card: put blank cards on the readers \
                     (`card-tool readers` lists them), or use --sequential"
                );
            }
            let pairs: Vec<_> = blank.iter().zip(applications.iter().copied()).collect();
            let b = bar(pairs.len(), progress);
            b.set_message(format!("personalizing {} cards", pairs.len()));
            let results = Mutex::new(Vec::new());
            std::thread::scope(|scope| {
                for (reader, app) in &pairs {
                    let (b, results) = (&b, &results);
                    scope.spawn(move || {
                        // One PC/SC context per thread: contexts are not shared across threads.
                        let r = match Readers::new() {
                            Ok(readers) => one(&readers, reader, client, journal, *app).0,
                            Err(e) => missing(*app, &e.to_string()),
                        };
                        b.inc(1);
                        if let Ok(mut v) = results.lock() {
                            v.push(r);
                        }
                    });
                }
            });
            b.finish_and_clear();
            let mut done = results.into_inner().unwrap_or_default();
            for app in applications.iter().skip(pairs.len()) {
                done.push(missing(*app, "no blank card left in the readers"));
            }
            let order = |id: i64| applications.iter().position(|a| *a == id);
            done.sort_by_key(|r| order(r.application_id));
            Ok(Summary::new(done, started))
        }
        BatchMode::Sequential { reader, wait } => {
            let readers = Readers::new()?;
            let name = match reader {
                Some(r) => readers.choose(Some(r))?,
                None => {
                    let names = readers.names()?;
                    names.into_iter().next().context("no reader found")?
                }
            };
            let b = bar(applications.len(), progress);
            let mut results = Vec::new();
            for (i, app) in applications.iter().copied().enumerate() {
                let mut attempts = 0;
                let result = loop {
                    attempts += 1;
                    b.set_message(format!(
                        "insert a blank card for application {app} ({} of {})",
                        i + 1,
                        applications.len()
                    ));
                    if let Err(e) = readers.wait_for_card(&name, true, *wait) {
                        break missing(app, &e.to_string());
                    }
                    b.set_message(format!("personalizing application {app}"));
                    let (r, err) = one(&readers, &name, client, journal, app);
                    b.set_message(if r.ok {
                        format!("application {app} done: remove the card")
                    } else {
                        format!("application {app} failed: remove the card")
                    });
                    let removed = readers.wait_for_card(&name, false, *wait);
                    // A card that was already personalized is not this application's card: ask
                    // for a blank one and try again (a few times).
                    if matches!(err, Some(PersoError::AlreadyPersonalized { .. }))
                        && attempts < 3
                        && removed.is_ok()
                    {
                        continue;
                    }
                    break r;
                };
                results.push(result);
                b.inc(1);
            }
            b.finish_and_clear();
            Ok(Summary::new(results, started))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn application_files_allow_comments_and_refuse_junk() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ids.txt");
        std::fs::write(&p, "12\n# a comment\n\n13  # trailing\n").unwrap();
        assert_eq!(read_application_file(&p).unwrap(), vec![12, 13]);
        std::fs::write(&p, "12\nthirteen\n").unwrap();
        let e = read_application_file(&p).unwrap_err();
        assert!(format!("{e:#}").contains("line 2"));
    }

    #[test]
    fn summary_counts_and_names_failures() {
        let ok = CardResult {
            application_id: 1,
            reader: Some("r".into()),
            ok: true,
            card_serial: Some("aa".into()),
            job_id: Some(3),
            error: None,
            seconds: 0.5,
        };
        let s = Summary::new(vec![ok, missing(2, "no blank card left")], Instant::now());
        assert_eq!((s.succeeded, s.failed), (1, 1));
        let h = s.human();
        assert!(
            h.contains("FAILED") && h.contains("no blank card left"),
            "{h}"
        );
    }
}
