//! Every message terminal-sim gives the operator, in English and Simplified Chinese.
//!
//! One function per message, so that the two languages are written side by side and the tests
//! below can check every message: both languages present, and the Chinese keeping the
//! English's identifiers (options, commands, file names, URLs), which the operator types or
//! looks for exactly as written. The English is the original: tests and `docs/terminal-sim.md`
//! quote it, so it does not change when a translation does.

use std::fmt::Debug;
use std::path::Path;

use terminal_core::{Lang, UpdateError};

use crate::flash::{FileFlashError, FlashFileError};
use crate::i18n::{pick, Text};

/// A short name of what was being fetched or sent, for the server's messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Label {
    /// English.
    pub en: &'static str,
    /// Simplified Chinese.
    pub zh: &'static str,
}

impl Label {
    /// A label.
    const fn new(en: &'static str, zh: &'static str) -> Self {
        Label { en, zh }
    }

    /// The label in `lang`.
    pub fn get(self, lang: Lang) -> &'static str {
        pick(lang, self.en, self.zh)
    }
}

/// `GET /root-key`.
pub const ROOT_KEY: Label = Label::new("root key", "根公钥");
/// `GET /trust-bundle`.
pub const TRUST_BUNDLE: Label = Label::new("trust bundle", "信任包");
/// `GET /status-list`.
pub const STATUS_LIST: Label = Label::new("status list", "状态列表");
/// `GET /status-list/delta`.
pub const STATUS_DELTA: Label = Label::new("status delta", "状态列表增量");
/// `GET /service-rules`.
pub const SERVICE_RULES: Label = Label::new("service rules", "服务规则");
/// `POST /terminals`.
pub const REGISTRATION: Label = Label::new("registration", "注册");
/// `POST /terminals/{key_id}/logs`.
pub const LOG_UPLOAD: Label = Label::new("log upload", "刷卡记录上传");

fn shown(p: &Path) -> String {
    p.display().to_string()
}

// --- files of the data directory ---

/// Reading a file failed.
pub fn reading(p: impl AsRef<Path>) -> Text {
    let p = shown(p.as_ref());
    Text::new(format!("reading {p}"), format!("读取 {p} 失败"))
}

/// Parsing a file failed.
pub fn parsing(p: &Path) -> Text {
    let p = shown(p);
    Text::new(format!("parsing {p}"), format!("解析 {p} 失败"))
}

/// Creating a file or directory failed.
pub fn creating(p: &Path) -> Text {
    let p = shown(p);
    Text::new(format!("creating {p}"), format!("创建 {p} 失败"))
}

/// Replacing a file failed.
pub fn replacing(p: &Path) -> Text {
    let p = shown(p);
    Text::new(format!("replacing {p}"), format!("替换 {p} 失败"))
}

/// Opening `flash.bin` failed.
pub fn opening(p: &Path) -> Text {
    let p = shown(p);
    Text::new(format!("opening {p}"), format!("打开 {p} 失败"))
}

/// `terminal.json` cannot be read: most likely `init` was not run.
pub fn reading_config(p: &Path, dir: &Path) -> Text {
    let (p, d) = (shown(p), shown(dir));
    Text::new(
        format!("reading {p} (run `terminal-sim init --data {d}` first)"),
        format!("读取 {p} 失败（请先运行 `terminal-sim init --data {d}`）"),
    )
}

/// `terminal.json` of another format version.
pub fn config_version(p: &Path, found: u32, expected: u32) -> Text {
    let p = shown(p);
    Text::new(
        format!("{p} has version {found}, this terminal-sim reads version {expected}"),
        format!("{p} 的格式版本为 {found}，本 terminal-sim 只能读取版本 {expected}"),
    )
}

/// `terminal.json` names no known service.
pub fn config_service(service: &str) -> Text {
    Text::new(
        format!(
            "terminal.json names service {service:?}; use transit, employment, rehab or welfare"
        ),
        format!(
            "terminal.json 中的服务 {service:?} 无效；请用 transit、employment、rehab 或 welfare"
        ),
    )
}

/// `root_key` of `terminal.json` is not hex.
pub fn config_root_not_hex() -> Text {
    Text::new(
        "root_key in terminal.json is not hex",
        "terminal.json 中的 root_key 不是十六进制",
    )
}

/// `root_key` of `terminal.json` has the wrong length.
pub fn config_root_length() -> Text {
    Text::new(
        "root_key in terminal.json is not 33 bytes",
        "terminal.json 中的 root_key 不是 33 字节",
    )
}

/// `root_key` of `terminal.json` is not a curve point.
pub fn config_root_not_p256() -> Text {
    Text::new(
        "root_key in terminal.json is not a P-256 key",
        "terminal.json 中的 root_key 不是 P-256 公钥",
    )
}

/// `terminal.key` does not hold a key.
pub fn key_file_bad(p: &Path) -> Text {
    let p = shown(p);
    Text::new(
        format!("{p} does not hold a 32-byte hex key"),
        format!("{p} 中没有 32 字节的十六进制密钥"),
    )
}

/// `terminal.key` holds no valid P-256 key.
pub fn key_file_invalid(p: &Path, why: &dyn std::fmt::Display) -> Text {
    let p = shown(p);
    Text::new(format!("{p}: {why}"), format!("{p}：{why}"))
}

/// Why `flash.bin` cannot be used.
pub fn flash_file_error(e: &FlashFileError) -> Text {
    match e {
        FlashFileError::Io(io) => Text::new(io.to_string(), io.to_string()),
        FlashFileError::Busy => Text::new(
            e.to_string(),
            "另一个 terminal-sim 正在使用此数据目录；请等它结束",
        ),
        FlashFileError::WrongSize { found, expected } => Text::new(
            e.to_string(),
            format!(
                "flash.bin 有 {found} 字节，但本 terminal-sim 的布局是 {expected} 字节：它是由其他版本创建的；\
                 请初始化一个新的数据目录"
            ),
        ),
    }
}

/// Writing `flash.bin` failed.
pub fn writing_flash() -> Text {
    Text::new("writing the flash file", "写入闪存文件失败")
}

/// Writing a tap's record to `flash.bin` failed.
pub fn writing_tap_log() -> Text {
    Text::new(
        "writing the tap log to the flash file",
        "将刷卡记录写入闪存文件失败",
    )
}

// --- command line ---

/// `--ca-cert` cannot be read.
pub fn cannot_read_ca(p: &Path) -> Text {
    let p = shown(p);
    Text::new(
        format!("cannot read the CA certificate {p}"),
        format!("无法读取 CA 证书 {p}"),
    )
}

/// `--certificate` is not usable.
pub fn certificate_arg() -> Text {
    Text::new(
        "--certificate is neither hex nor @FILE",
        "--certificate 既不是十六进制，也不是 @FILE",
    )
}

/// `--root-key` is not 33 bytes of hex.
pub fn root_key_arg_length() -> Text {
    Text::new(
        "--root-key must be 33 bytes of hex (a compressed P-256 key)",
        "--root-key 必须是 33 字节的十六进制（压缩格式的 P-256 公钥）",
    )
}

/// `--root-key` is not a point.
pub fn root_key_arg_point() -> Text {
    Text::new(
        "--root-key is not a compressed P-256 public key",
        "--root-key 不是压缩格式的 P-256 公钥",
    )
}

/// A welfare tap without `--amount`.
pub fn amount_needed() -> Text {
    Text::new(
        "a welfare terminal needs --amount (points to debit)",
        "福利终端需要 --amount（要扣除的积分）",
    )
}

/// `--amount` on another service.
pub fn amount_not_welfare() -> Text {
    Text::new(
        "--amount is only for a welfare terminal",
        "--amount 仅用于福利终端",
    )
}

/// `sync` finished with refusals.
pub fn sync_failed(n: usize) -> Text {
    Text::new(
        format!("{n} of 3 objects could not be updated"),
        format!("3 个对象中有 {n} 个未能更新"),
    )
}

// --- init and registration ---

/// `init` on a directory with a certificate.
pub fn already_registered(dir: &Path) -> Text {
    let d = shown(dir);
    Text::new(
        format!(
            "{d} already holds a registered terminal; use another --data directory for another \
             terminal"
        ),
        format!("{d} 中已有一台已注册的终端；另一台终端请用另一个 --data 目录"),
    )
}

/// The terminal is not registered yet.
pub fn not_registered(public_key: &str, service: &str, dir: &Path) -> Text {
    let d = shown(dir);
    Text::new(
        format!(
            "this terminal is not registered yet. An admin registers public key {public_key} for \
             service {service}; then run `terminal-sim init --data {d} --certificate <hex>` (or \
             run init with --admin-token)"
        ),
        format!(
            "本终端尚未注册。请管理员为服务 {service} 注册公钥 {public_key}，然后运行 \
             `terminal-sim init --data {d} --certificate <hex>`（或用 --admin-token 运行 init）"
        ),
    )
}

/// Key generation failed.
pub fn key_generation(why: &dyn std::fmt::Display) -> Text {
    Text::new(
        format!("generating the terminal key: {why}"),
        format!("生成终端密钥失败：{why}"),
    )
}

/// The pinned root key is not the one the operator expects.
pub fn pinned_root_differs() -> Text {
    Text::new(
        "the root key pinned in terminal.json is not the one given with --root-key",
        "terminal.json 中固定的根公钥与 --root-key 给出的不一致",
    )
}

/// The server's certificate is not hex.
pub fn server_cert_not_hex() -> Text {
    Text::new(
        "the server's certificate is not hex",
        "服务器返回的证书不是十六进制",
    )
}

/// The server's root key has the wrong length.
pub fn server_root_length() -> Text {
    Text::new(
        "the server's root key is not 33 bytes of hex",
        "服务器的根公钥不是 33 字节的十六进制",
    )
}

/// The server's root key is not a curve point.
pub fn server_root_not_p256() -> Text {
    Text::new(
        "the server's root key is not a P-256 key",
        "服务器的根公钥不是 P-256 公钥",
    )
}

/// The server's root key id does not match.
pub fn server_root_id() -> Text {
    Text::new(
        "the server's root key id does not match its key",
        "服务器的根公钥标识与公钥本身不符",
    )
}

/// The server serves another root key than `--root-key`.
pub fn server_root_unexpected(served: &str, expected: &str) -> Text {
    Text::new(
        format!(
            "the server serves root key {served} but --root-key says {expected}: this is not the \
             expected server"
        ),
        format!(
            "服务器提供的根公钥是 {served}，而 --root-key 给出的是 {expected}：这不是预期的服务器"
        ),
    )
}

/// The certificate does not decode.
pub fn cert_decode(why: &dyn std::fmt::Display) -> Text {
    Text::new(
        format!("the certificate does not decode: {why}"),
        format!("证书无法解码：{why}"),
    )
}

/// The certificate is not the root's.
pub fn cert_not_root_signed(why: &dyn std::fmt::Display) -> Text {
    Text::new(
        format!("the certificate is not signed by the pinned root key: {why}"),
        format!("证书不是由固定的根公钥签发的：{why}"),
    )
}

/// The certificate has another role.
pub fn cert_not_terminal(why: &dyn std::fmt::Display) -> Text {
    Text::new(
        format!("the certificate is not a terminal certificate: {why}"),
        format!("该证书不是终端证书：{why}"),
    )
}

/// The certificate is for another key.
pub fn cert_other_key() -> Text {
    Text::new(
        "the certificate is for another key than this terminal's",
        "该证书属于另一把密钥，不是本终端的",
    )
}

/// The certificate lacks the service.
pub fn cert_service(service: &str) -> Text {
    Text::new(
        format!("the certificate does not allow service {service}; register the terminal for it"),
        format!("该证书不允许服务 {service}；请为该服务注册终端"),
    )
}

/// Why the core cannot mount the terminal.
pub fn mount_error(e: &terminal_core::MountError<FileFlashError>) -> Text {
    use terminal_core::MountError;
    match e {
        MountError::Log(l) => Text::new(
            format!("the tap log in flash.bin cannot be mounted: {l:?}"),
            format!("flash.bin 中的刷卡记录无法挂载：{l:?}"),
        ),
        MountError::BadGeometry => Text::new(
            "flash geometry not supported by the core",
            "终端核心不支持这种闪存结构",
        ),
        MountError::BadRootKey => Text::new(
            "the pinned root key is not a P-256 key",
            "固定的根公钥不是 P-256 公钥",
        ),
        MountError::BadCertificate(err) => Text::new(
            format!("terminal.cert does not verify under the pinned root key: {err}"),
            format!("terminal.cert 无法用固定的根公钥验证：{err}"),
        ),
        MountError::CertificateNotForThisKey => Text::new(
            "terminal.cert is not a terminal certificate for terminal.key",
            "terminal.cert 不是 terminal.key 的终端证书",
        ),
        MountError::CertificateTooLong => {
            Text::new("terminal.cert is too long", "terminal.cert 太长")
        }
    }
}

// --- sync, log ---

/// Why an update was refused.
pub fn update_error(e: &UpdateError<FileFlashError>) -> Text {
    match e {
        UpdateError::Flash(f) => Text::new(
            format!("the flash file failed ({f})"),
            format!("闪存文件出错（{f}）"),
        ),
        UpdateError::TooLarge => Text::new(
            "it does not fit its flash partition",
            "它超出了所在闪存分区的大小",
        ),
        UpdateError::Stale { installed, offered } => Text::new(
            format!(
                "the server offers epoch {offered}, older than epoch {installed} in force (a \
                 rollback is never installed)"
            ),
            format!(
                "服务器提供的版本 {offered} 比当前生效的版本 {installed} 旧（绝不安装回退的版本）"
            ),
        ),
        UpdateError::EpochMismatch { installed, from } => Text::new(
            format!("a delta from epoch {from} does not continue epoch {installed}"),
            format!("从版本 {from} 开始的增量接不上当前的版本 {installed}"),
        ),
        UpdateError::Signature => Text::new("its signature does not verify", "签名验证失败"),
        UpdateError::UnknownSigner => Text::new(
            "its signer is not in the trust bundle with the right role, or not valid now",
            "签名者不在信任包中、角色不符，或当前不在有效期内",
        ),
        UpdateError::Malformed(err) => Text::new(
            format!("it is malformed ({err})"),
            format!("格式错误（{err}）"),
        ),
        UpdateError::StatusList(err) => Text::new(
            format!("the status list codec refused it ({err:?})"),
            format!("状态列表解码器拒绝了它（{err:?}）"),
        ),
        UpdateError::NotProvisioned => {
            Text::new("no trust bundle is installed yet", "尚未安装信任包")
        }
        UpdateError::ClockUnset => Text::new("the clock is not set", "时钟未设置"),
        UpdateError::NotStaging => {
            Text::new("internal: no update staged", "内部错误：没有暂存的更新")
        }
    }
}

/// An update refused by the core.
pub fn refused(why: &Text) -> Text {
    Text::new(
        format!("refused: {}", why.en),
        format!("被拒绝：{}", why.zh),
    )
}

/// A status delta refused for a reason the full list cannot settle.
pub fn delta_refused(why: &Text) -> Text {
    Text::new(
        format!("the status delta was refused: {}", why.en),
        format!("状态列表增量被拒绝：{}", why.zh),
    )
}

/// A status delta refused, and the full list failed too.
pub fn delta_and_full_failed(why: &Text) -> Text {
    Text::new(
        format!(
            "the status delta was refused ({}) and the full list did not settle it",
            why.en
        ),
        format!("状态列表增量被拒绝（{}），完整的状态列表也未能解决", why.zh),
    )
}

/// The server has no status list.
pub fn no_status_list() -> Text {
    Text::new(
        "the server has no status list (410)",
        "服务器没有状态列表（410）",
    )
}

/// The core could not free uploaded records.
pub fn freeing_records(why: &dyn Debug) -> Text {
    Text::new(
        format!("freeing uploaded log records: {why:?}"),
        format!("释放已上传的刷卡记录失败：{why:?}"),
    )
}

/// The core could not export the log.
pub fn reading_log(why: &dyn Debug) -> Text {
    Text::new(
        format!("reading the tap log: {why:?}"),
        format!("读取刷卡记录失败：{why:?}"),
    )
}

/// The upload loop's guard.
pub fn log_not_emptied() -> Text {
    Text::new(
        "the log did not empty after 100000 batches",
        "上传 100000 批后刷卡记录仍未清空",
    )
}

/// The OS RNG failed.
pub fn rng_failed(why: &dyn std::fmt::Display) -> Text {
    Text::new(
        format!("the operating system's random number generator failed: {why}"),
        format!("操作系统的随机数生成器出错：{why}"),
    )
}

// --- server ---

/// A URL without a host.
pub fn url_no_host(url: &str) -> Text {
    Text::new(
        format!("server URL {url:?} names no host"),
        format!("服务器地址 {url:?} 中没有主机名"),
    )
}

/// A URL of another scheme.
pub fn url_scheme(url: &str) -> Text {
    Text::new(
        format!(
            "server URL {url:?} must start with https:// (or http:// for a server on this \
             machine, 127.0.0.1)"
        ),
        format!(
            "服务器地址 {url:?} 必须以 https:// 开头（本机上的服务器可用 http://，即 127.0.0.1）"
        ),
    )
}

/// Plain HTTP off loopback.
pub fn url_plain_http(url: &str) -> Text {
    Text::new(
        format!(
            "server URL {url:?} is plain HTTP to another machine: use https:// (with \
             --ca-cert for the office's own CA), or http:// only to a server on this machine \
             (127.0.0.1, ::1 or localhost)"
        ),
        format!(
            "服务器地址 {url:?} 是通往另一台机器的明文 HTTP：请使用 https://（办事处有自己的 CA 时\
             加 --ca-cert），http:// 只能用于本机上的服务器（127.0.0.1、::1 或 localhost）"
        ),
    )
}

/// The CA file is not PEM.
pub fn ca_not_pem(why: &dyn std::fmt::Display) -> Text {
    Text::new(
        format!("the CA file is not valid PEM: {why}"),
        format!("CA 文件不是有效的 PEM：{why}"),
    )
}

/// The CA file holds no certificate.
pub fn ca_empty() -> Text {
    Text::new(
        "the CA file holds no certificate (expected -----BEGIN CERTIFICATE-----)",
        "CA 文件中没有证书（应含有 -----BEGIN CERTIFICATE-----）",
    )
}

/// A CA for an `http://` server.
pub fn ca_needs_https(base: &str) -> Text {
    Text::new(
        format!("a CA certificate is only used with an https:// server, not {base}"),
        format!("CA 证书只用于 https:// 服务器，不能用于 {base}"),
    )
}

/// The server refused, with its JSON explanation.
pub fn server_refused(what: Label, status: u16, code: &str, message: &str) -> Text {
    Text::new(
        format!(
            "{}: the server answered {status} {code}: {message}",
            what.en
        ),
        format!("{}：服务器返回 {status} {code}：{message}", what.zh),
    )
}

/// The server refused, with a body that is not the API's error JSON.
pub fn server_refused_raw(what: Label, status: u16, body: &str) -> Text {
    Text::new(
        format!("{}: the server answered {status} {body}", what.en),
        format!("{}：服务器返回 {status} {body}", what.zh),
    )
}

/// The server cannot be reached.
pub fn unreachable(what: Label, api: &str) -> Text {
    Text::new(
        format!("{}: cannot reach the server at {api}", what.en),
        format!("{}：无法连接位于 {api} 的服务器", what.zh),
    )
}

/// The answer could not be read.
pub fn reading_answer(what: Label) -> Text {
    Text::new(
        format!("{}: reading the answer", what.en),
        format!("{}：读取服务器应答失败", what.zh),
    )
}

/// An answer that does not fit the request.
pub fn unexpected_answer(what: Label, answer: &dyn Debug) -> Text {
    Text::new(
        format!("{}: unexpected answer {answer:?}", what.en),
        format!("{}：意外的应答 {answer:?}", what.zh),
    )
}

/// An answer that is not the expected JSON.
pub fn answer_not_json(what: Label) -> Text {
    Text::new(
        format!("{}: the answer is not the expected JSON", what.en),
        format!("{}：服务器应答不是预期的 JSON", what.zh),
    )
}

// --- reader ---

/// Letting go of the card failed.
pub fn disconnecting(reader: &str, why: &dyn std::fmt::Display) -> Text {
    Text::new(
        format!("disconnecting from {reader}: {why}"),
        format!("与 {reader} 断开连接失败：{why}"),
    )
}

/// No PC/SC reader at all.
pub fn no_reader() -> Text {
    Text::new(
        "no card reader found: connect a PC/SC reader (is pcscd running?)",
        "未找到读卡器：请连接 PC/SC 读卡器（pcscd 是否在运行？）",
    )
}

fn quoted_list(names: &[String], sep: &str) -> String {
    names
        .iter()
        .map(|r| format!("{r:?}"))
        .collect::<Vec<_>>()
        .join(sep)
}

/// `--reader` matches no reader.
pub fn no_reader_matches(filter: &str, all: &[String]) -> Text {
    Text::new(
        format!(
            "no reader matches {filter:?}; readers: {}",
            quoted_list(all, ", ")
        ),
        format!(
            "没有与 {filter:?} 匹配的读卡器；现有读卡器：{}",
            quoted_list(all, "、")
        ),
    )
}

/// `--reader` matches several readers.
pub fn several_readers(filter: &str, hits: &[String]) -> Text {
    Text::new(
        format!(
            "{filter:?} matches several readers ({}); give more of the name",
            quoted_list(hits, ", ")
        ),
        format!(
            "{filter:?} 匹配多个读卡器（{}）；请给出更完整的名称",
            quoted_list(hits, "、")
        ),
    )
}

/// Listing readers failed.
pub fn listing_readers(why: &dyn std::fmt::Display) -> Text {
    Text::new(
        format!("listing card readers: {why}"),
        format!("列出读卡器失败：{why}"),
    )
}

/// pcscd cannot be reached.
pub fn no_pcsc() -> Text {
    Text::new(
        "cannot reach the PC/SC service (is pcscd running?)",
        "无法连接 PC/SC 服务（pcscd 是否在运行？）",
    )
}

/// Reading the readers' state failed.
pub fn reader_state(why: &dyn std::fmt::Display) -> Text {
    Text::new(
        format!("reading the readers' state: {why}"),
        format!("读取读卡器状态失败：{why}"),
    )
}

fn readers_words(readers: &[String]) -> Text {
    match readers {
        [one] => Text::new(format!("reader {one:?}"), format!("读卡器 {one:?}")),
        _ => Text::new("any reader", "任何读卡器"),
    }
}

/// No card on the reader(s).
pub fn no_card(readers: &[String]) -> Text {
    let r = readers_words(readers);
    Text::new(
        format!(
            "no card on {}: put the card on the reader, or use --wait",
            r.en
        ),
        format!("{} 上没有卡片：请把卡片放到读卡器上，或使用 --wait", r.zh),
    )
}

/// No card came while waiting.
pub fn no_card_in_time(readers: &[String]) -> Text {
    let r = readers_words(readers);
    Text::new(
        format!("no card came to {} in time", r.en),
        format!("等待超时：{} 上一直没有卡片", r.zh),
    )
}

/// Waiting for a card failed.
pub fn waiting_for_card(why: &dyn std::fmt::Display) -> Text {
    Text::new(
        format!("waiting for a card: {why}"),
        format!("等待卡片时出错：{why}"),
    )
}

/// Connecting to the card failed.
pub fn connecting_card(reader: &str) -> Text {
    Text::new(
        format!("connecting to the card on {reader:?}"),
        format!("连接 {reader:?} 上的卡片失败"),
    )
}

// --- text results of init, sync, upload, status ---

/// `init`: the key id line.
pub fn init_key_id(id: &str) -> Text {
    Text::new(
        format!("terminal key id  {id}"),
        format!("终端密钥标识  {id}"),
    )
}

/// `init`: the public key line.
pub fn init_public_key(key: &str) -> Text {
    Text::new(
        format!("public key       {key}"),
        format!("终端公钥      {key}"),
    )
}

/// `init`: the pinned root key line.
pub fn init_root_key(key: &str) -> Text {
    Text::new(
        format!("root key         {key}"),
        format!("根公钥        {key}"),
    )
}

/// `init`: registered.
pub fn init_registered(cert: &Path) -> Text {
    let c = shown(cert);
    Text::new(
        format!("registered: certificate stored in {c}"),
        format!("已注册：证书已保存到 {c}"),
    )
}

/// `init`: what to run next.
pub fn init_next(dir: &Path) -> Text {
    let d = shown(dir);
    Text::new(
        format!("next: terminal-sim sync --data {d}"),
        format!("下一步：terminal-sim sync --data {d}"),
    )
}

/// `init`: not registered yet, and how to finish.
pub fn init_not_registered(dir: &Path) -> Text {
    let d = shown(dir);
    Text::new(
        format!(
            "not registered yet: an admin registers the public key above for this service, then \
             run\n  terminal-sim init --data {d} --certificate <hex>"
        ),
        format!(
            "尚未注册：请管理员为本服务注册上面的公钥，然后运行\n  terminal-sim init --data {d} \
             --certificate <hex>"
        ),
    )
}

/// `sync`: an object's name.
pub fn sync_object(object: &str) -> Label {
    match object {
        "trust_bundle" => Label::new("trust_bundle", "信任包"),
        "status_list" => Label::new("status_list", "状态列表"),
        "service_rules" => Label::new("service_rules", "服务规则"),
        _ => Label::new("object", "对象"),
    }
}

/// `sync`: what was done to an object.
pub fn sync_action(action: &str) -> Label {
    match action {
        "installed" => Label::new("installed", "已安装"),
        "delta_applied" => Label::new("delta_applied", "已应用增量"),
        "up_to_date" => Label::new("up_to_date", "已是最新"),
        _ => Label::new("done", "完成"),
    }
}

/// `sync`: an object that could not be updated.
pub const SYNC_FAILED: Label = Label::new("FAILED", "失败");

impl From<Label> for Text {
    fn from(l: Label) -> Text {
        Text::new(l.en, l.zh)
    }
}

/// `sync`: the epochs of an object (empty when it has none).
pub fn sync_epochs(from: Option<u64>, to: Option<u64>) -> Text {
    match (from, to) {
        (Some(f), Some(e)) if f != e => {
            Text::new(format!("epoch {f} -> {e}"), format!("版本 {f} -> {e}"))
        }
        (_, Some(e)) => Text::new(format!("epoch {e}"), format!("版本 {e}")),
        _ => Text::new("", ""),
    }
}

/// `upload`: the log was empty.
pub fn upload_nothing() -> Text {
    Text::new("nothing to upload", "没有需要上传的刷卡记录")
}

/// `upload`: what was sent.
pub fn uploaded(records: u32, batches: u32, accepted: u64, duplicates: u32) -> Text {
    let (dup_en, dup_zh) = if duplicates > 0 {
        (
            format!(", {duplicates} batches seen before"),
            format!("，其中 {duplicates} 批服务器此前已收到"),
        )
    } else {
        (String::new(), String::new())
    };
    Text::new(
        format!(
            "uploaded {records} records in {batches} batches ({accepted} new on the \
             server{dup_en})"
        ),
        format!("已分 {batches} 批上传 {records} 条刷卡记录（服务器新收 {accepted} 条{dup_zh}）"),
    )
}

/// `status`: an object not installed yet.
pub fn status_epoch_none() -> Text {
    Text::new("none (run sync)", "无（请运行 terminal-sim sync）")
}

fn duration_words(s: u64) -> Text {
    if s < 3600 {
        Text::new(format!("{} min", s / 60), format!("{} 分钟", s / 60))
    } else {
        let h = s as f64 / 3600.0;
        Text::new(format!("{h:.1} h"), format!("{h:.1} 小时"))
    }
}

/// `status`: the status list's age, and whether it is too old to decide.
pub fn status_age(age_s: u64, too_old: bool) -> Text {
    let d = duration_words(age_s);
    if too_old {
        Text::new(
            format!(", {} old: TOO OLD, taps ask staff; run sync", d.en),
            format!(
                "，已有 {}：太旧，刷卡一律转工作人员处理；请运行 terminal-sim sync",
                d.zh
            ),
        )
    } else {
        Text::new(format!(", {} old", d.en), format!("，已有 {}", d.zh))
    }
}

/// What `status` reports, as [`status_lines`] needs it.
#[derive(Clone, Debug, Default)]
pub struct StatusWords<'a> {
    /// Key id (hex).
    pub key_id: &'a str,
    /// The configured service.
    pub service: &'a str,
    /// Services in the certificate.
    pub services: &'a [&'a str],
    /// Server URL.
    pub server: &'a str,
    /// Bundle epoch.
    pub bundle_epoch: Option<u64>,
    /// Status list epoch.
    pub status_epoch: Option<u64>,
    /// The list's age (seconds) and whether it is too old.
    pub age: Option<(u64, bool)>,
    /// Rules epoch.
    pub rules_epoch: Option<u64>,
    /// Log: records, not uploaded, sectors used, sectors, next sequence number.
    pub log: [u32; 5],
}

/// `status`'s text report, one line each: terminal, server, bundle, status list, rules, log.
pub fn status_lines(s: &StatusWords<'_>, lang: Lang) -> Vec<String> {
    let epoch = |e: Option<u64>| {
        e.map_or_else(
            || status_epoch_none().get(lang).to_owned(),
            |e| e.to_string(),
        )
    };
    let age = s
        .age
        .map(|(a, old)| status_age(a, old).get(lang).to_owned())
        .unwrap_or_default();
    let [records, pending, used, sectors, next] = s.log;
    match lang {
        Lang::En => vec![
            format!(
                "terminal    {} ({}), certified for {}",
                s.key_id,
                s.service,
                s.services.join(", ")
            ),
            format!("server      {}", s.server),
            format!("bundle      epoch {}", epoch(s.bundle_epoch)),
            format!("status list epoch {}{age}", epoch(s.status_epoch)),
            format!("rules       epoch {}", epoch(s.rules_epoch)),
            format!(
                "tap log     {records} records, {pending} not uploaded, {used}/{sectors} sectors \
                 used, next #{next}"
            ),
        ],
        Lang::ZhCn => vec![
            format!(
                "终端        {}（{}），证书允许的服务：{}",
                s.key_id,
                s.service,
                s.services.join("、")
            ),
            format!("服务器      {}", s.server),
            format!("信任包      版本 {}", epoch(s.bundle_epoch)),
            format!("状态列表    版本 {}{age}", epoch(s.status_epoch)),
            format!("服务规则    版本 {}", epoch(s.rules_epoch)),
            format!(
                "刷卡记录    {records} 条，未上传 {pending} 条，已用扇区 {used}/{sectors}，下一条 \
                 #{next}"
            ),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// Every message, with sample arguments.
    pub(crate) fn samples() -> Vec<Text> {
        let p = PathBuf::from("/srv/gate/terminal.json");
        let d = PathBuf::from("/srv/gate");
        let r1 = vec!["ACS ACR122U 00 00".to_owned()];
        let r2 = vec![
            "Virtual PCD 00 00".to_owned(),
            "Virtual PCD 00 01".to_owned(),
        ];
        let why = "os error 2";
        let t = Text::new("its signature does not verify", "签名验证失败");
        let mut all = vec![
            reading(&p),
            parsing(&p),
            creating(&p),
            replacing(&p),
            opening(&d.join("flash.bin")),
            reading_config(&p, &d),
            config_version(&p, 2, 1),
            config_service("parking"),
            config_root_not_hex(),
            config_root_length(),
            config_root_not_p256(),
            key_file_bad(&d.join("terminal.key")),
            key_file_invalid(&d.join("terminal.key"), &why),
            flash_file_error(&FlashFileError::Busy),
            flash_file_error(&FlashFileError::WrongSize {
                found: 1,
                expected: 2,
            }),
            writing_flash(),
            writing_tap_log(),
            cannot_read_ca(&d.join("office-ca.pem")),
            certificate_arg(),
            root_key_arg_length(),
            root_key_arg_point(),
            amount_needed(),
            amount_not_welfare(),
            sync_failed(2),
            already_registered(&d),
            not_registered("02ab", "transit", &d),
            key_generation(&why),
            pinned_root_differs(),
            server_cert_not_hex(),
            server_root_length(),
            server_root_not_p256(),
            server_root_id(),
            server_root_unexpected("02ab", "03cd"),
            cert_decode(&why),
            cert_not_root_signed(&why),
            cert_not_terminal(&why),
            cert_other_key(),
            cert_service("welfare"),
            refused(&t),
            delta_refused(&t),
            delta_and_full_failed(&t),
            no_status_list(),
            freeing_records(&"BadAcknowledge"),
            reading_log(&"Flash"),
            log_not_emptied(),
            rng_failed(&why),
            url_no_host("https://"),
            url_scheme("ftp://127.0.0.1"),
            url_plain_http("http://10.0.0.1:8080"),
            ca_not_pem(&why),
            ca_empty(),
            ca_needs_https("http://127.0.0.1:8080"),
            server_refused(TRUST_BUNDLE, 503, "unavailable", "try later"),
            server_refused_raw(STATUS_LIST, 502, "Bad Gateway"),
            unreachable(REGISTRATION, "https://office.example:8443/api/v1"),
            reading_answer(STATUS_DELTA),
            unexpected_answer(SERVICE_RULES, &"NotModified"),
            answer_not_json(LOG_UPLOAD),
            answer_not_json(ROOT_KEY),
            disconnecting("ACS ACR122U 00 00", &why),
            no_reader(),
            no_reader_matches("omnikey", &r2),
            several_readers("virtual", &r2),
            listing_readers(&why),
            no_pcsc(),
            reader_state(&why),
            no_card(&r1),
            no_card(&r2),
            no_card_in_time(&r1),
            waiting_for_card(&why),
            connecting_card("ACS ACR122U 00 00"),
        ];
        for e in [
            UpdateError::TooLarge,
            UpdateError::Stale {
                installed: 3,
                offered: 2,
            },
            UpdateError::EpochMismatch {
                installed: 1,
                from: 2,
            },
            UpdateError::Signature,
            UpdateError::UnknownSigner,
            UpdateError::NotProvisioned,
            UpdateError::ClockUnset,
            UpdateError::NotStaging,
        ] {
            all.push(update_error(&e));
        }
        for e in [
            terminal_core::MountError::<FileFlashError>::BadGeometry,
            terminal_core::MountError::BadRootKey,
            terminal_core::MountError::CertificateNotForThisKey,
            terminal_core::MountError::CertificateTooLong,
        ] {
            all.push(mount_error(&e));
        }
        all.extend([
            init_key_id("ab12"),
            init_public_key("02ab"),
            init_root_key("03cd"),
            init_registered(&d.join("terminal.cert")),
            init_next(&d),
            init_not_registered(&d),
            upload_nothing(),
            uploaded(12, 1, 12, 0),
            uploaded(12, 2, 3, 1),
            sync_epochs(Some(1), Some(2)),
            sync_epochs(None, Some(2)),
            status_epoch_none(),
            status_age(7200, false),
            status_age(7200, true),
            status_age(60, true),
        ]);
        for object in ["trust_bundle", "status_list", "service_rules"] {
            all.push(sync_object(object).into());
        }
        for action in ["installed", "delta_applied", "up_to_date"] {
            all.push(sync_action(action).into());
        }
        all.push(SYNC_FAILED.into());
        for lang in [Lang::En, Lang::ZhCn] {
            let lines: Vec<String> = status_lines(&sample_status(), lang);
            assert_eq!(lines.len(), 6);
        }
        all.push(Text::new(
            status_lines(&sample_status(), Lang::En).join("\n"),
            status_lines(&sample_status(), Lang::ZhCn).join("\n"),
        ));
        all
    }

    /// The identifiers of an English text that the Chinese must keep as they are: options,
    /// `terminal-sim` commands in backticks, file names, URLs, quoted names, the PEM marker.
    fn identifiers(en: &str) -> Vec<String> {
        let mut ids: Vec<String> = en
            .split(|c: char| c.is_whitespace() || matches!(c, '(' | ')' | ',' | ';'))
            .map(|w| w.trim_end_matches([':', '.']))
            .filter(|w| {
                w.starts_with("--")
                    || w.starts_with("http")
                    || w.starts_with('/')
                    || w.starts_with('"')
                    || w.starts_with("-----")
                    || [".json", ".key", ".cert", ".bin", ".pem"]
                        .iter()
                        .any(|ext| w.ends_with(ext))
                    || [
                        "terminal-sim",
                        "pcscd",
                        "PC/SC",
                        "P-256",
                        "PEM",
                        "JSON",
                        "@FILE",
                    ]
                    .contains(w)
            })
            .map(str::to_owned)
            .collect();
        // A command in backticks is copied whole.
        ids.extend(en.split('`').skip(1).step_by(2).map(str::to_owned));
        ids
    }

    fn sample_status() -> StatusWords<'static> {
        StatusWords {
            key_id: "ab12",
            service: "transit",
            services: &["transit", "welfare"],
            server: "https://office.example:8443",
            bundle_epoch: Some(1),
            status_epoch: None,
            age: Some((90_000, true)),
            rules_epoch: Some(2),
            log: [3, 2, 1, 64, 4],
        }
    }

    #[test]
    fn every_message_exists_in_both_languages_with_the_same_identifiers() {
        for t in samples() {
            assert!(!t.en.trim().is_empty() && !t.zh.trim().is_empty(), "{t:?}");
            assert!(
                // Chinese words, or at least Chinese punctuation around a path and a detail.
                t.zh.chars().any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c)
                    || ('\u{ff00}'..='\u{ffef}').contains(&c)),
                "not Chinese: {t:?}"
            );
            assert!(t.en.is_ascii(), "{t:?}");
            for id in identifiers(&t.en) {
                assert!(
                    t.zh.contains(&id),
                    "{id:?} missing in {:?} ({:?})",
                    t.zh,
                    t.en
                );
            }
        }
    }

    #[test]
    fn the_identifier_check_sees_what_matters() {
        let ids = identifiers(&amount_needed().en);
        assert!(ids.contains(&"--amount".to_owned()), "{ids:?}");
        let ids = identifiers(&not_registered("02ab", "transit", Path::new("/d")).en);
        for id in [
            "terminal-sim init --data /d --certificate <hex>",
            "--admin-token",
        ] {
            assert!(ids.contains(&id.to_owned()), "{id} not in {ids:?}");
        }
        let ids = identifiers(&url_plain_http("http://10.0.0.1:8080").en);
        assert!(
            ids.contains(&"\"http://10.0.0.1:8080\"".to_owned()),
            "{ids:?}"
        );
        assert!(ids.contains(&"--ca-cert".to_owned()), "{ids:?}");
    }

    #[test]
    fn english_is_unchanged() {
        // The texts docs/terminal-sim.md and the tests quote.
        assert_eq!(
            no_card(&["R".to_owned()]).en,
            "no card on reader \"R\": put the card on the reader, or use --wait"
        );
        assert_eq!(
            flash_file_error(&FlashFileError::Busy).en,
            "another terminal-sim is using this data directory; wait for it to finish"
        );
        assert_eq!(
            amount_needed().en,
            "a welfare terminal needs --amount (points to debit)"
        );
    }
}
