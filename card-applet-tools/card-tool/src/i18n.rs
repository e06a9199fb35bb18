//! The languages card-tool speaks: Simplified Chinese and English.
//!
//! Every text meant for a person exists in both. The error types render in either language with
//! [`Localized::localized`]; their `Display` stays the English text, so code that formats them
//! (and the tests that match them) sees what it always saw. Texts without an enum of their own
//! (the anyhow failures of the command line, the journal, the key files) are a [`Text`], or a
//! [`Failure`] when they explain another error. The language is chosen once, on the command line
//! ([`LangChoice`]), and passed down to whatever renders text; nothing is kept in a global, so
//! library users and parallel tests each pick their own.

use std::error::Error;
use std::fmt;
use std::path::Path;

use crate::cli::Reported;
use crate::personalize::PersoError;
use crate::reader::ReaderError;
use crate::server::ServerError;
use crate::tap::CardError;

/// A language of the messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Lang {
    /// Simplified Chinese.
    Zh,
    /// English.
    En,
}

impl Lang {
    /// `en` or `zh`, whichever is this language.
    pub fn pick<T>(self, en: T, zh: T) -> T {
        match self {
            Lang::En => en,
            Lang::Zh => zh,
        }
    }

    /// The language a POSIX locale asks for: the first non-empty of `LC_ALL`, `LC_MESSAGES` and
    /// `LANG` decides (the order in which the C library looks at them for messages), and it
    /// means Chinese when it starts with `zh`. Anything else, or nothing set, is English.
    pub fn from_locale(
        lc_all: Option<&str>,
        lc_messages: Option<&str>,
        lang: Option<&str>,
    ) -> Lang {
        let locale = [lc_all, lc_messages, lang]
            .into_iter()
            .flatten()
            .find(|v| !v.is_empty());
        match locale {
            Some(l) if l.starts_with("zh") => Lang::Zh,
            _ => Lang::En,
        }
    }

    /// [`Lang::from_locale`] of this process's environment.
    pub fn from_env() -> Lang {
        let var = |name: &str| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned());
        let (all, messages, lang) = (var("LC_ALL"), var("LC_MESSAGES"), var("LANG"));
        Lang::from_locale(all.as_deref(), messages.as_deref(), lang.as_deref())
    }
}

/// What `--lang` asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LangChoice {
    /// Chinese when the first non-empty of LC_ALL, LC_MESSAGES, LANG starts with `zh`,
    /// English otherwise.
    #[default]
    Auto,
    /// 简体中文 (Simplified Chinese).
    Zh,
    /// English.
    En,
}

impl LangChoice {
    /// The language to speak (`Auto` reads the locale from the environment).
    pub fn resolve(self) -> Lang {
        match self {
            LangChoice::Auto => Lang::from_env(),
            LangChoice::Zh => Lang::Zh,
            LangChoice::En => Lang::En,
        }
    }
}

/// Something that can be said in either language.
pub trait Localized {
    /// The text in `lang`.
    fn localized(&self, lang: Lang) -> String;
}

/// A fixed text in both languages (a label, the meaning of a status word).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Phrase {
    /// English.
    pub en: &'static str,
    /// Simplified Chinese.
    pub zh: &'static str,
}

impl Phrase {
    /// A phrase.
    pub const fn new(en: &'static str, zh: &'static str) -> Self {
        Phrase { en, zh }
    }

    /// A technical name that reads the same in both languages (a command, a field).
    pub const fn same(name: &'static str) -> Self {
        Phrase { en: name, zh: name }
    }

    /// The phrase in `lang`.
    pub fn get(self, lang: Lang) -> &'static str {
        lang.pick(self.en, self.zh)
    }
}

impl fmt::Display for Phrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.en)
    }
}

/// A text made at run time, in both languages. As an error it is a failure with nothing
/// underneath; `Display` is the English text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Text {
    /// English.
    pub en: String,
    /// Simplified Chinese.
    pub zh: String,
}

impl Text {
    /// A text.
    pub fn new(en: impl Into<String>, zh: impl Into<String>) -> Self {
        Text {
            en: en.into(),
            zh: zh.into(),
        }
    }

    /// Technical detail that reads the same in both languages (another library's error
    /// message, a wire format's complaint): kept as it is rather than half translated.
    pub fn same(s: impl Into<String>) -> Self {
        let s = s.into();
        Text {
            en: s.clone(),
            zh: s,
        }
    }

    /// The text in `lang`.
    pub fn get(&self, lang: Lang) -> &str {
        lang.pick(&self.en, &self.zh)
    }
}

impl From<Phrase> for Text {
    fn from(p: Phrase) -> Self {
        Text::new(p.en, p.zh)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.en)
    }
}

impl Error for Text {}

impl Localized for Text {
    fn localized(&self, lang: Lang) -> String {
        self.get(lang).to_owned()
    }
}

/// A failure explained in both languages, caused by another error: what `anyhow::Context`
/// makes, except that the explanation can be shown in Chinese. Its `Display` is the English
/// explanation alone and the cause is its `source`, exactly like a context, so `{:#}` prints
/// what `.with_context` printed.
#[derive(Debug)]
pub struct Failure {
    text: Text,
    // An anyhow::Error rather than a Box<dyn Error>: boxing an anyhow::Error hides the concrete
    // type of what it holds, and the cause must stay recognizable to be shown in Chinese.
    cause: anyhow::Error,
}

impl Failure {
    /// The failure `text`, caused by `cause`.
    pub fn new(text: Text, cause: impl Into<anyhow::Error>) -> Self {
        Failure {
            text,
            cause: cause.into(),
        }
    }

    /// The explanation (without the cause).
    pub fn text(&self) -> &Text {
        &self.text
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text.en)
    }
}

impl Error for Failure {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        let cause: &(dyn Error + Send + Sync + 'static) = self.cause.as_ref();
        Some(cause)
    }
}

/// `.with_context` with a [`Text`]: the failure is explained in both languages.
pub trait WithText<T> {
    /// Wraps the error in a [`Failure`] explained by `text()`.
    fn with_text(self, text: impl FnOnce() -> Text) -> anyhow::Result<T>;
}

impl<T, E> WithText<T> for Result<T, E>
where
    E: Into<anyhow::Error>,
{
    fn with_text(self, text: impl FnOnce() -> Text) -> anyhow::Result<T> {
        self.map_err(|e| Failure::new(text(), e).into())
    }
}

/// "reading PATH": what failed when a file could not be read.
pub fn reading(path: &Path) -> Text {
    let p = path.display();
    Text::new(format!("reading {p}"), format!("读取 {p} 时出错"))
}

/// "writing PATH": what failed when a file could not be written.
pub fn writing(path: &Path) -> Text {
    let p = path.display();
    Text::new(format!("writing {p}"), format!("写入 {p} 时出错"))
}

/// "creating PATH": what failed when a file or directory could not be created.
pub fn creating(path: &Path) -> Text {
    let p = path.display();
    Text::new(format!("creating {p}"), format!("创建 {p} 时出错"))
}

/// One error of a chain in `lang`, and whether its causes still need saying: the crate's error
/// enums already include whatever they wrap, a [`Failure`] does not. `None` for errors of other
/// libraries (shown as they are).
fn localize_one(e: &(dyn Error + 'static), lang: Lang) -> Option<(String, bool)> {
    if let Some(f) = e.downcast_ref::<Failure>() {
        return Some((f.text.get(lang).to_owned(), true));
    }
    let whole = if let Some(t) = e.downcast_ref::<Text>() {
        t.localized(lang)
    } else if let Some(r) = e.downcast_ref::<ReaderError>() {
        r.localized(lang)
    } else if let Some(s) = e.downcast_ref::<ServerError>() {
        s.localized(lang)
    } else if let Some(p) = e.downcast_ref::<PersoError>() {
        p.localized(lang)
    } else if let Some(c) = e.downcast_ref::<CardError<ReaderError>>() {
        c.localized(lang)
    } else if let Some(r) = e.downcast_ref::<Reported>() {
        r.localized(lang)
    } else {
        return None;
    };
    Some((whole, false))
}

/// An error and its causes in `lang`, joined by `": "` as anyhow's `{:#}` joins them (for
/// English the same text, except that an error that already includes its cause does not
/// repeat it).
pub fn error_text(e: &anyhow::Error, lang: Lang) -> String {
    let sep = lang.pick(": ", "：");
    let mut parts = Vec::new();
    let first: &(dyn Error + 'static) = e.as_ref();
    let mut next = Some(first);
    while let Some(cause) = next {
        match localize_one(cause, lang) {
            Some((text, true)) => parts.push(text),
            Some((text, false)) => {
                parts.push(text);
                break;
            }
            None => parts.push(cause.to_string()),
        }
        next = cause.source();
    }
    parts.join(sep)
}

/// Columns `c` takes on a terminal: CJK characters and full-width forms take two.
fn char_width(c: char) -> usize {
    let wide = matches!(
        u32::from(c),
        0x1100..=0x115F
            | 0x2E80..=0x303E
            | 0x3041..=0x33FF
            | 0x3400..=0x4DBF
            | 0x4E00..=0x9FFF
            | 0xA000..=0xA4CF
            | 0xAC00..=0xD7A3
            | 0xF900..=0xFAFF
            | 0xFE30..=0xFE4F
            | 0xFF00..=0xFF60
            | 0xFFE0..=0xFFE6
    );
    if wide {
        2
    } else {
        1
    }
}

/// Columns `s` takes on a terminal (`format!`'s widths count characters, which misaligns
/// Chinese text).
pub fn display_width(s: &str) -> usize {
    s.chars().map(char_width).sum()
}

/// `s` padded with spaces on the right to `width` columns.
pub fn pad(s: &str, width: usize) -> String {
    let mut out = s.to_owned();
    out.extend(std::iter::repeat_n(
        ' ',
        width.saturating_sub(display_width(s)),
    ));
    out
}

/// Label–value lines with the values in one column, one line each.
pub fn table(rows: &[(&str, String)]) -> String {
    let width = rows
        .iter()
        .map(|(l, _)| display_width(l))
        .max()
        .unwrap_or(0)
        + 1;
    rows.iter()
        .map(|(label, value)| format!("{}{value}\n", pad(label, width)))
        .collect()
}

/// Whether `s` holds Chinese characters (for the tests of every module).
#[cfg(test)]
pub(crate) fn has_cjk(s: &str) -> bool {
    s.chars().any(|c| matches!(u32::from(c), 0x4E00..=0x9FFF))
}

/// The technical names in an English message that its Chinese form must keep as they are:
/// anything in backticks, options (`--server`), and words without lower-case letters (status
/// words like `6982`, states like `BLANK`, commands like `SELECT`, `PC/SC`, numbers).
#[cfg(test)]
pub(crate) fn identifiers(en: &str) -> Vec<String> {
    let mut out: Vec<String> = en
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    let is_word = |c: char| c.is_ascii_alphanumeric() || "_-/#.".contains(c);
    for word in en.split(|c: char| !is_word(c)) {
        let word = word.trim_matches(|c: char| c == '.' || c == '/');
        let option = word.starts_with("--") && word.len() > 2;
        let caps = word.chars().any(|c| c.is_ascii_alphanumeric())
            && !word.chars().any(|c| c.is_ascii_lowercase())
            && !word.starts_with('-');
        if option || caps {
            out.push(word.to_owned());
        }
    }
    out
}

/// The terminal column where the value of each `label：value` line starts (lines without a
/// value, and indented ones, are left out): a table is aligned when they are all equal.
#[cfg(test)]
pub(crate) fn value_columns(text: &str) -> Vec<usize> {
    text.lines()
        .filter(|l| !l.starts_with(' ') && !l.ends_with('：'))
        .filter_map(|l| {
            let colon = l.find('：')? + '：'.len_utf8();
            let value = colon + l[colon..].len() - l[colon..].trim_start().len();
            Some(display_width(&l[..value]))
        })
        .collect()
}

/// Checks one message in both languages: the Chinese form is Chinese and keeps the English
/// form's technical names.
#[cfg(test)]
pub(crate) fn check_pair(what: &str, en: &str, zh: &str) {
    assert!(!en.is_empty() && !has_cjk(en), "{what}: English {en:?}");
    assert!(has_cjk(zh), "{what}: no Chinese in {zh:?}");
    for id in identifiers(en) {
        assert!(
            zh.contains(&id),
            "{what}: {id:?} of {en:?} is missing in {zh:?}"
        );
    }
}

/// Checks a [`Localized`] value whose `Display` is its English text.
#[cfg(test)]
pub(crate) fn check<L: Localized + fmt::Display>(what: &str, value: &L) {
    let en = value.localized(Lang::En);
    assert_eq!(
        en,
        value.to_string(),
        "{what}: Display is not the English text"
    );
    check_pair(what, &en, &value.localized(Lang::Zh));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_follows_the_first_locale_variable_that_is_set() {
        use Lang::{En, Zh};
        // LC_ALL, LC_MESSAGES, LANG, and the language they choose.
        type Case<'a> = (Option<&'a str>, Option<&'a str>, Option<&'a str>, Lang);
        let cases: [Case<'_>; 9] = [
            (None, None, None, En),
            (None, None, Some("zh_CN.UTF-8"), Zh),
            (None, None, Some("en_US.UTF-8"), En),
            (None, Some("zh_CN.UTF-8"), Some("en_US.UTF-8"), Zh),
            (Some("C"), Some("zh_CN.UTF-8"), Some("zh_CN.UTF-8"), En),
            (Some("zh_TW"), None, Some("C.UTF-8"), Zh),
            // An empty variable counts as unset.
            (Some(""), Some(""), Some("zh_CN.GB18030"), Zh),
            (Some(""), None, Some(""), En),
            (None, None, Some("C.UTF-8"), En),
        ];
        for (all, messages, lang, want) in cases {
            assert_eq!(
                Lang::from_locale(all, messages, lang),
                want,
                "LC_ALL={all:?} LC_MESSAGES={messages:?} LANG={lang:?}"
            );
        }
        assert_eq!(LangChoice::Zh.resolve(), Zh);
        assert_eq!(LangChoice::En.resolve(), En);
    }

    #[test]
    fn failures_read_like_contexts_and_render_in_either_language() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let r: Result<(), _> = Err(io);
        let e = r
            .with_text(|| Text::new("reading ids.txt", "读取 ids.txt 时出错"))
            .unwrap_err();
        assert_eq!(format!("{e:#}"), "reading ids.txt: No such file");
        assert_eq!(error_text(&e, Lang::En), "reading ids.txt: No such file");
        assert_eq!(
            error_text(&e, Lang::Zh),
            "读取 ids.txt 时出错：No such file"
        );
        // A crate error inside a failure is rendered in the language too, and only once.
        let inner: anyhow::Error = ServerError::Unreachable {
            url: "http://127.0.0.1:9".into(),
            detail: "refused".into(),
        }
        .into();
        let e: anyhow::Error = Failure::new(Text::new("outer", "外层"), inner).into();
        let zh = error_text(&e, Lang::Zh);
        assert!(zh.starts_with("外层：无法连接"), "{zh}");
        assert_eq!(zh.matches("http://127.0.0.1:9").count(), 1, "{zh}");
    }

    #[test]
    fn tables_align_chinese_labels_by_columns() {
        let t = table(&[("读卡器：", "a".into()), ("ATR：", "b".into())]);
        let lines: Vec<&str> = t.lines().collect();
        let col = |l: &str| display_width(&l[..l.len() - 1]);
        assert_eq!(col(lines[0]), col(lines[1]), "{t}");
        assert_eq!(display_width("申请 ok"), 7);
        assert_eq!(pad("失败", 6), "失败  ");
    }

    #[test]
    fn identifiers_are_the_technical_names() {
        let ids = identifiers(
            "the card refused DEBIT with status 6982; run `pcscd -f`, use --server. Is it PC/SC?",
        );
        for want in ["DEBIT", "6982", "pcscd -f", "--server", "PC/SC"] {
            assert!(ids.iter().any(|i| i == want), "{want} not in {ids:?}");
        }
        assert!(!ids.iter().any(|i| i == "card" || i == "Is"), "{ids:?}");
    }
}
