//! Announced, timed steps and the closing summary table.

use std::time::{Duration, Instant};

use anyhow::Result;

/// How a step ended when it did not fail (a failure is the step's `Err`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done.
    Pass,
    /// Done, with something worth reading in the summary.
    PassNote(String),
    /// Done, but something is missing that makes later results weaker (e.g. no PostgreSQL).
    Warn(String),
    /// Not run, for the given reason (nothing to do, a tool is missing, switched off).
    Skip(String),
    /// Not run because the part it shows is not built yet (the demo's later chapters).
    NotYet(String),
}

struct Record {
    name: String,
    label: &'static str,
    note: String,
    elapsed: Duration,
}

/// A run of steps: each is announced with a header line, timed, and listed in the summary.
pub struct Steps {
    records: Vec<Record>,
    started: Instant,
}

impl Steps {
    /// Starts the clock for the whole run and prints its title.
    pub fn new(title: &str) -> Self {
        println!("{title}");
        Self {
            records: Vec::new(),
            started: Instant::now(),
        }
    }

    /// Runs one step; returns false only if it failed.
    pub fn run(&mut self, name: &str, step: impl FnOnce() -> Result<Outcome>) -> bool {
        let number = self.records.len() + 1;
        println!();
        println!("==> [{number}] {name}");
        let started = Instant::now();
        let result = step();
        let elapsed = started.elapsed();
        let (label, note) = match result {
            Ok(Outcome::Pass) => ("PASS", String::new()),
            Ok(Outcome::PassNote(note)) => ("PASS", note),
            Ok(Outcome::Warn(note)) => ("WARN", note),
            Ok(Outcome::Skip(note)) => ("SKIP", note),
            Ok(Outcome::NotYet(note)) => ("NOT YET", note),
            Err(error) => ("FAIL", format!("{error:#}")),
        };
        let detail = if note.is_empty() {
            String::new()
        } else {
            format!(": {note}")
        };
        println!(
            "<== [{number}] {label} {name} ({}){detail}",
            seconds(elapsed)
        );
        self.records.push(Record {
            name: name.to_owned(),
            label,
            note,
            elapsed,
        });
        label != "FAIL"
    }

    /// Records a step that is not run, with the reason.
    pub fn skip(&mut self, name: &str, reason: &str) {
        self.run(name, || Ok(Outcome::Skip(reason.to_owned())));
    }

    /// How many steps failed so far.
    pub fn failed(&self) -> usize {
        self.records.iter().filter(|r| r.label == "FAIL").count()
    }

    /// Prints the table of steps with results and durations; returns true when none failed.
    pub fn summary(&self) -> bool {
        let width = self
            .records
            .iter()
            .map(|r| r.name.chars().count())
            .max()
            .unwrap_or(4)
            .max(4);
        println!();
        println!("==> Summary");
        println!(
            "  #  {:width$}  {:7}  {:>8}  note",
            "step", "result", "time"
        );
        for (i, r) in self.records.iter().enumerate() {
            println!(
                "{:>3}  {:width$}  {:7}  {:>8}  {}",
                i + 1,
                r.name,
                r.label,
                seconds(r.elapsed),
                first_line(&r.note, 90)
            );
        }
        let count = |label: &str| self.records.iter().filter(|r| r.label == label).count();
        println!(
            "total {}: {} passed, {} warned, {} skipped, {} not built yet, {} failed",
            seconds(self.started.elapsed()),
            count("PASS"),
            count("WARN"),
            count("SKIP"),
            count("NOT YET"),
            count("FAIL"),
        );
        self.failed() == 0
    }
}

/// `12.3 s`.
pub fn seconds(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// The first line of `text`, cut to `max` characters.
fn first_line(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or("");
    if line.chars().count() > max || text.lines().nth(1).is_some() {
        let cut: String = line.chars().take(max).collect();
        format!("{cut} ...")
    } else {
        line.to_owned()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use anyhow::bail;

    #[test]
    fn failures_are_counted_and_other_outcomes_are_not() {
        let mut steps = Steps::new("test run");
        assert!(steps.run("a", || Ok(Outcome::Pass)));
        assert!(steps.run("b", || Ok(Outcome::Warn("no database".into()))));
        steps.skip("c", "nothing to do");
        assert!(steps.run("d", || Ok(Outcome::NotYet("later".into()))));
        assert!(steps.summary());
        assert!(!steps.run("e", || bail!("broken")));
        assert_eq!(steps.failed(), 1);
        assert!(!steps.summary());
    }

    #[test]
    fn first_line_cuts_long_and_multi_line_notes() {
        assert_eq!(first_line("short", 10), "short");
        assert_eq!(first_line("0123456789abc", 10), "0123456789 ...");
        assert_eq!(first_line("one\ntwo", 10), "one ...");
        assert_eq!(first_line("", 10), "");
    }
}
