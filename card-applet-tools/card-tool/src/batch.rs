//! Many cards in one run: the blank cards of every reader at once, or one card after another on
//! one reader, with a progress bar and a summary.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Result;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use shared_crypto::apdu::WireStats;
use shared_crypto::model::LifeCycle;

use crate::i18n::{display_width, pad, reading, Lang, Localized, Text, WithText};
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
    /// Why it failed (in the language of the run).
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

    /// The summary for people, in English.
    pub fn human(&self) -> String {
        self.human_in(Lang::En)
    }

    /// The summary for people, in `lang`.
    pub fn human_in(&self, lang: Lang) -> String {
        if lang == Lang::Zh {
            return self.human_zh();
        }
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

    /// The Chinese table: the columns of the English one, padded by terminal columns (a
    /// Chinese character takes two).
    fn human_zh(&self) -> String {
        // Column widths (in terminal columns) of application, result, serial, job, seconds.
        const W: [usize; 5] = [11, 6, 16, 5, 7];
        let seconds = "耗时/秒";
        let mut s = format!(
            "{}  {}  {}  {} {}{seconds}  读卡器 / 原因\n",
            pad("申请编号", W[0]),
            pad("结果", W[1]),
            pad("卡片序列号", W[2]),
            pad("任务", W[3]),
            " ".repeat(W[4].saturating_sub(display_width(seconds))),
        );
        for r in &self.results {
            let job = r.job_id.map_or("-".into(), |j| j.to_string());
            let reason = if r.ok {
                r.reader.clone().unwrap_or_default()
            } else {
                r.error.clone().unwrap_or_default()
            };
            s += &format!(
                "{}  {}  {}  {} {:>7.2}  {reason}\n",
                pad(&r.application_id.to_string(), W[0]),
                pad(if r.ok { "成功" } else { "失败" }, W[1]),
                pad(r.card_serial.as_deref().unwrap_or("-"), W[2]),
                pad(&job, W[3]),
                r.seconds,
            );
        }
        s += &format!(
            "成功个人化 {} 张，失败 {} 张，共用时 {:.2} 秒\n",
            self.succeeded, self.failed, self.seconds
        );
        s
    }
}

/// Reads application ids from a file: one per line, blank lines and `#` comments ignored.
pub fn read_application_file(path: &Path) -> Result<Vec<i64>> {
    let text = std::fs::read_to_string(path).with_text(|| reading(path))?;
    let mut ids = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        ids.push(line.parse::<i64>().with_text(|| {
            let (p, n) = (path.display(), n + 1);
            Text::new(
                format!("{p} line {n}: {line:?} is not an application id"),
                format!("{p} 第 {n} 行：{line:?} 不是申请编号"),
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
    lang: Lang,
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
                error: Some(e.localized(lang)),
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

/// Runs a batch. `progress` shows a bar on stderr; its labels and the reasons of failed cards
/// are in `lang`.
pub fn run(
    client: &Client,
    journal: &Journal,
    applications: &[i64],
    mode: &BatchMode,
    progress: bool,
    lang: Lang,
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
                return Err(Text::new(
                    "no reader holds a blank card: put blank cards on the readers \
                     (`card-tool readers` lists them), or use --sequential",
                    "没有一台读卡器上放着空白卡：请把空白卡放到读卡器上（`card-tool readers` \
                     可以列出读卡器），或者使用 --sequential",
                )
                .into());
            }
            let pairs: Vec<_> = blank.iter().zip(applications.iter().copied()).collect();
            let b = bar(pairs.len(), progress);
            let n = pairs.len();
            b.set_message(lang.pick(
                format!("personalizing {n} cards"),
                format!("正在个人化 {n} 张卡片"),
            ));
            let results = Mutex::new(Vec::new());
            std::thread::scope(|scope| {
                for (reader, app) in &pairs {
                    let (b, results) = (&b, &results);
                    scope.spawn(move || {
                        // One PC/SC context per thread: contexts are not shared across threads.
                        let r = match Readers::new() {
                            Ok(readers) => one(&readers, reader, client, journal, *app, lang).0,
                            Err(e) => missing(*app, &e.localized(lang)),
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
                done.push(missing(
                    *app,
                    lang.pick(
                        "no blank card left in the readers",
                        "读卡器上已经没有空白卡了",
                    ),
                ));
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
                    names
                        .into_iter()
                        .next()
                        .ok_or_else(|| Text::new("no reader found", "找不到读卡器"))?
                }
            };
            let b = bar(applications.len(), progress);
            let mut results = Vec::new();
            for (i, app) in applications.iter().copied().enumerate() {
                let mut attempts = 0;
                let result = loop {
                    attempts += 1;
                    let (n, of) = (i + 1, applications.len());
                    b.set_message(lang.pick(
                        format!("insert a blank card for application {app} ({n} of {of})"),
                        format!("请为申请 {app} 放入一张空白卡（第 {n} 张，共 {of} 张）"),
                    ));
                    if let Err(e) = readers.wait_for_card(&name, true, *wait) {
                        break missing(app, &e.localized(lang));
                    }
                    b.set_message(lang.pick(
                        format!("personalizing application {app}"),
                        format!("正在为申请 {app} 个人化卡片"),
                    ));
                    let (r, err) = one(&readers, &name, client, journal, app, lang);
                    b.set_message(match (r.ok, lang) {
                        (true, Lang::En) => format!("application {app} done: remove the card"),
                        (true, Lang::Zh) => format!("申请 {app} 已完成：请取走卡片"),
                        (false, Lang::En) => format!("application {app} failed: remove the card"),
                        (false, Lang::Zh) => format!("申请 {app} 失败：请取走卡片"),
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
        assert!(h.starts_with("application  result  serial "), "{h}");
    }

    #[test]
    fn the_chinese_summary_keeps_the_columns_of_the_english_one() {
        let ok = CardResult {
            application_id: 12,
            reader: Some("Virtual PCD 00 00".into()),
            ok: true,
            card_serial: Some("0102030405060708".into()),
            job_id: Some(3),
            error: None,
            seconds: 0.5,
        };
        let s = Summary::new(
            vec![ok, missing(13, "读卡器上已经没有空白卡了")],
            Instant::now(),
        );
        let zh = s.human_in(Lang::Zh);
        let en = s.human_in(Lang::En);
        // The last column (reader or reason): from terminal column 54 on.
        fn last_column(line: &str) -> Option<&str> {
            line.char_indices()
                .map(|(i, _)| i)
                .find(|i| display_width(&line[..*i]) == 54)
                .map(|i| &line[i..])
        }
        let lines: Vec<&str> = zh.lines().collect();
        assert_eq!(lines.len(), 4, "{zh}");
        assert_eq!(last_column(lines[0]), Some("读卡器 / 原因"), "{zh}");
        assert_eq!(last_column(lines[1]), Some("Virtual PCD 00 00"), "{zh}");
        assert_eq!(
            last_column(lines[2]),
            Some("读卡器上已经没有空白卡了"),
            "{zh}"
        );
        assert_eq!(
            lines[3],
            format!("成功个人化 1 张，失败 1 张，共用时 {:.2} 秒", s.seconds)
        );
        for (e, z) in en.lines().zip(zh.lines()).skip(1).take(2) {
            // The same values at the same columns, up to the reason.
            assert_eq!(e[..13], z[..13], "{en}\n{zh}");
        }
        assert!(
            crate::i18n::has_cjk(lines[1]) && lines[2].contains("失败"),
            "{zh}"
        );
    }
}
