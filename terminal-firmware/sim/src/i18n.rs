//! The languages terminal-sim speaks to the operator: Simplified Chinese and English.
//!
//! The tap's decision (voice prompt, display line) is the core's and has its own texts
//! ([`terminal_core::Signal::text`]). Everything else the operator reads, above all the errors,
//! is made here: an error that a person should understand is a [`Text`] (both languages), or
//! carries one as context ([`TextContext::with_text`]). `Display` of both is the English text,
//! so `{:#}` and the library's callers (and the tests matching them) see what they always saw;
//! [`error_text`] renders a whole error chain in either language.
//!
//! The language is not kept in a global: `main` chooses it once ([`lang_from_locale`] for
//! `--lang auto`) and passes it to whatever renders text.

use std::error::Error;
use std::fmt;

use terminal_core::Lang;

/// The language a POSIX locale asks for: the first non-empty of `LC_ALL`, `LC_MESSAGES` and
/// `LANG` decides (the order in which the C library looks for the messages' language), and it
/// means Chinese when it starts with `zh` (`zh_CN.UTF-8`, `zh_TW`, `zh`). Anything else, or
/// nothing set, is English: an operator who did not choose Chinese reads the English original.
pub fn lang_from_locale(
    lc_all: Option<&str>,
    lc_messages: Option<&str>,
    lang: Option<&str>,
) -> Lang {
    match [lc_all, lc_messages, lang]
        .into_iter()
        .flatten()
        .find(|v| !v.is_empty())
    {
        Some(l) if l.starts_with("zh") => Lang::ZhCn,
        _ => Lang::En,
    }
}

/// [`lang_from_locale`] of this process's environment.
pub fn lang_from_env() -> Lang {
    let var = |name: &str| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned());
    let (all, messages, lang) = (var("LC_ALL"), var("LC_MESSAGES"), var("LANG"));
    lang_from_locale(all.as_deref(), messages.as_deref(), lang.as_deref())
}

/// `en` or `zh`, whichever is `lang`.
pub fn pick<T>(lang: Lang, en: T, zh: T) -> T {
    match lang {
        Lang::En => en,
        Lang::ZhCn => zh,
    }
}

/// A text for the operator in both languages. As an error it is a failure with nothing
/// underneath; `Display` is the English text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Text {
    /// English (the original: tests and docs quote it).
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

    /// The text in `lang`.
    pub fn get(&self, lang: Lang) -> &str {
        pick(lang, &self.en, &self.zh)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.en)
    }
}

impl Error for Text {}

/// A [`Text`] explaining another error: what `anyhow::Context` makes, except that the
/// explanation is known here and can be shown in Chinese. `Display` is the English text alone and
/// the cause is the `source`, exactly like an anyhow context, so `{:#}` prints the same.
#[derive(Debug)]
struct Explained {
    text: Text,
    // An anyhow::Error, not a Box<dyn Error>: the cause's concrete type must stay visible to
    // the chain walk, so that a Text underneath is still shown in Chinese.
    cause: anyhow::Error,
}

impl fmt::Display for Explained {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text.en)
    }
}

impl Error for Explained {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        let cause: &(dyn Error + 'static) = self.cause.as_ref();
        Some(cause)
    }
}

/// Attaches a [`Text`] to a failure, in place of `anyhow::Context`.
pub trait TextContext<T> {
    /// The failure explained by `text()` (only called on failure).
    fn with_text(self, text: impl FnOnce() -> Text) -> anyhow::Result<T>;
}

impl<T, E: Into<anyhow::Error>> TextContext<T> for Result<T, E> {
    fn with_text(self, text: impl FnOnce() -> Text) -> anyhow::Result<T> {
        self.map_err(|e| {
            anyhow::Error::new(Explained {
                text: text(),
                cause: e.into(),
            })
        })
    }
}

/// One link of an error chain in `lang`: ours in the language, another library's detail (I/O,
/// TLS, PC/SC, the server's own words) as it is.
fn link_text(link: &(dyn Error + 'static), lang: Lang) -> String {
    if let Some(t) = link.downcast_ref::<Text>() {
        return t.get(lang).to_owned();
    }
    if let Some(x) = link.downcast_ref::<Explained>() {
        return x.text.get(lang).to_owned();
    }
    if let Some(f) = link.downcast_ref::<crate::flash::FlashFileError>() {
        return crate::msg::flash_file_error(f).get(lang).to_owned();
    }
    link.to_string()
}

/// The whole chain of `e` in `lang`, outermost first, joined as anyhow's `{:#}` joins it (`: `,
/// or `：` in Chinese). In English this is exactly `format!("{e:#}")`.
pub fn error_text(e: &anyhow::Error, lang: Lang) -> String {
    let sep = pick(lang, ": ", "：");
    e.chain()
        .map(|link| link_text(link, lang))
        .collect::<Vec<_>>()
        .join(sep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locale_chooser_takes_the_first_non_empty_variable() {
        let f = lang_from_locale;
        assert_eq!(f(None, None, None), Lang::En);
        assert_eq!(f(None, None, Some("zh_CN.UTF-8")), Lang::ZhCn);
        assert_eq!(f(None, None, Some("C")), Lang::En);
        assert_eq!(f(None, None, Some("en_US.UTF-8")), Lang::En);
        // LC_ALL over LC_MESSAGES over LANG; an empty one does not count.
        assert_eq!(f(Some("C"), Some("zh_CN"), Some("zh_CN")), Lang::En);
        assert_eq!(f(Some(""), Some("zh_CN.UTF-8"), Some("C")), Lang::ZhCn);
        assert_eq!(f(Some(""), Some(""), Some("zh_TW.UTF-8")), Lang::ZhCn);
        assert_eq!(f(Some("zh"), None, Some("en_US")), Lang::ZhCn);
        assert_eq!(f(Some(""), Some(""), Some("")), Lang::En);
        // "zh" must begin the locale, not appear in it.
        assert_eq!(f(None, None, Some("en_ZH")), Lang::En);
    }

    #[test]
    fn english_rendering_is_anyhows_and_chinese_walks_the_chain() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e: anyhow::Error = Err::<(), _>(io)
            .with_text(|| Text::new("reading terminal.json", "读取 terminal.json 失败"))
            .with_text(|| Text::new("opening the terminal", "打开终端失败"))
            .unwrap_err();
        assert_eq!(error_text(&e, Lang::En), format!("{e:#}"));
        assert_eq!(
            error_text(&e, Lang::En),
            "opening the terminal: reading terminal.json: no such file"
        );
        assert_eq!(
            error_text(&e, Lang::ZhCn),
            "打开终端失败：读取 terminal.json 失败：no such file"
        );
        // A Text as the root, and under an anyhow context of another library.
        let e = anyhow::Error::new(Text::new("not registered yet", "尚未注册")).context("outer");
        assert_eq!(error_text(&e, Lang::ZhCn), "outer：尚未注册");
        assert_eq!(e.to_string(), "outer");
        assert_eq!(error_text(&e, Lang::En), format!("{e:#}"));
    }
}
