//! The host side of the card protocol: SELECT, the tap as a terminal (TERMINAL AUTHENTICATE,
//! DEBIT, GET BALANCE) and CREDIT, with every answer verified through shared-crypto.

use std::fmt;

use serde::Serialize;
use shared_crypto::apdu::{
    self, sw, ExchangeError, Transport, WireStats, AID, CLA_ISO, CLA_PROPRIETARY, INS_CREDIT,
    INS_DEBIT, INS_GET_BALANCE, INS_SELECT, INS_TERMINAL_AUTHENTICATE,
};
use shared_crypto::model::{
    transcript_hash, AttributeId, AttributeSet, AttributeValue, CredentialBody, CreditCommand,
    DebitIntent, DebitRequest, LifeCycle, ReceiptBody, Role, SelectResponse, Service,
    TapRequestBody, TapResponseBody, TerminalAuth, TrustBundle, NONCE_LEN,
};
use shared_crypto::wire::{decode_versioned, encode_versioned};
use shared_crypto::{PublicKey, Signed, Signer};

use crate::i18n::{Lang, Localized, Phrase, Text};

/// Largest answer the tools accept (a tap answer is well under 1 KiB).
const MAX_ANSWER: usize = 4096;

/// Why a card exchange failed.
///
/// `Display` is the English message; [`Localized::localized`] gives it in either language (for
/// a transport error that can itself be localized, such as [`ReaderError`](crate::reader::ReaderError)).
#[derive(Debug)]
#[non_exhaustive]
pub enum CardError<E: fmt::Display> {
    /// The reader or the link failed.
    Transport(E),
    /// The card answered a step with an error status word.
    Status {
        /// Which command.
        step: &'static str,
        /// The status word.
        sw: u16,
        /// What it means here.
        meaning: Phrase,
    },
    /// The card does not answer like the applet.
    Malformed {
        /// Which command.
        step: &'static str,
        /// What was wrong.
        detail: Text,
    },
    /// Verification of the card's answer failed.
    Verification(Text),
    /// The card is not in the state this operation needs.
    WrongState(Text),
}

impl<E: fmt::Display> CardError<E> {
    /// The message in `lang`, with the transport error rendered by `transport`.
    fn render(&self, lang: Lang, transport: impl FnOnce(&E) -> String) -> String {
        use Lang::{En, Zh};
        match (self, lang) {
            (CardError::Transport(e), _) => transport(e),
            (CardError::Status { step, sw, meaning }, En) => format!(
                "the card refused {step} with status {sw:04X} ({})",
                meaning.en
            ),
            (CardError::Status { step, sw, meaning }, Zh) => {
                format!("卡片拒绝了 {step} 命令，状态字 {sw:04X}（{}）", meaning.zh)
            }
            (CardError::Malformed { step, detail }, En) => {
                format!("the card's answer to {step} is malformed: {}", detail.en)
            }
            (CardError::Malformed { step, detail }, Zh) => {
                format!("卡片对 {step} 命令的应答格式不正确：{}", detail.zh)
            }
            (CardError::Verification(why), En) => {
                format!("the card's answer does not verify: {}", why.en)
            }
            (CardError::Verification(why), Zh) => {
                format!("卡片的应答没有通过验证：{}", why.zh)
            }
            (CardError::WrongState(why), _) => why.get(lang).to_owned(),
        }
    }
}

impl<E: fmt::Display + Localized> Localized for CardError<E> {
    fn localized(&self, lang: Lang) -> String {
        self.render(lang, |e| e.localized(lang))
    }
}

impl<E: fmt::Display> fmt::Display for CardError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(Lang::En, |e| e.to_string()))
    }
}

impl<E: fmt::Display + fmt::Debug> std::error::Error for CardError<E> {}

/// What an ISO status word means (for messages), in both languages.
pub fn sw_meaning(sw: u16) -> Phrase {
    let (en, zh) = match sw {
        sw::OK => ("ok", "成功"),
        sw::BLOCKED => (
            "selected, but the card is blocked",
            "已选中，但卡片已被停用",
        ),
        sw::WRONG_LENGTH => ("wrong length", "长度错误"),
        sw::LAST_COMMAND_EXPECTED => (
            "last command of a chain expected",
            "此处应为命令链的最后一条命令",
        ),
        sw::SECURITY_STATUS => ("security status not satisfied", "安全状态不满足"),
        sw::CONDITIONS => ("conditions of use not satisfied", "使用条件不满足"),
        sw::WRONG_DATA => ("wrong data", "数据错误"),
        sw::WRONG_P1P2 => ("wrong P1/P2", "P1/P2 参数错误"),
        sw::NOT_FOUND => ("referenced data not found", "找不到所引用的数据"),
        sw::INS_NOT_SUPPORTED => (
            "instruction not supported (is this the applet?)",
            "不支持该指令（这是残疾人证应用吗？）",
        ),
        sw::CLA_NOT_SUPPORTED => ("class not supported", "不支持该类别字节（CLA）"),
        0x6A82 => (
            "application not found: the card does not hold the certificate applet",
            "找不到应用：这张卡片上没有残疾人证应用",
        ),
        _ => ("unexpected status", "意外的状态字"),
    };
    Phrase::new(en, zh)
}

/// 6982 to TERMINAL AUTHENTICATE: the card does not accept this terminal.
const REFUSED_TERMINAL: Phrase = Phrase::new(
    "the card refused this terminal: its certificate is not signed by the card's root, has \
     expired, is not a Terminal certificate, does not allow this service, or the request \
     signature is wrong",
    "卡片拒绝了这台终端：终端证书不是由卡片信任的根密钥签发、已过期、不是 Terminal（终端）\
     证书、不允许这项服务，或者请求的签名不对",
);

/// 6985 to DEBIT.
const NOT_ENOUGH_POINTS: Phrase = Phrase::new("not enough points on the card", "卡内积分不足");

/// 6982 to DEBIT: the debit is not the one the signed request announced.
const DEBIT_ALTERED: Phrase = Phrase::new(
    "the card refused a debit that differs from the one this session's signed request announced \
     (altered between this tool and the card?); nothing was debited: tap the card again, and if \
     this repeats, stop using this reader and report it",
    "卡片拒绝了一笔与本次会话已签名请求所声明的不一致的扣减（在本工具与卡片之间被篡改？）；\
     没有扣减任何积分：请再刷一次卡，如果仍然出现，请停止使用这台读卡器并上报",
);

/// 6985 to CREDIT.
const VOUCHER_REFUSED: Phrase = Phrase::new(
    "the card refused the voucher: already credited (sequence not above the last), expired, or \
     for another card",
    "卡片拒绝了这张积分券：已经充值过（序号不大于上一张）、已过期，或者是给另一张卡的",
);

fn card_err<E: fmt::Display>(step: &'static str, e: ExchangeError<E>) -> CardError<E> {
    match e {
        ExchangeError::Transport(t) => CardError::Transport(t),
        ExchangeError::Status(sw) => CardError::Status {
            step,
            sw,
            meaning: sw_meaning(sw),
        },
        ExchangeError::ResponseTooLong => CardError::Malformed {
            step,
            detail: Text::new("answer too long", "应答过长"),
        },
        ExchangeError::Malformed => CardError::Malformed {
            step,
            detail: Text::new("answer shorter than a status word", "应答比状态字还短"),
        },
    }
}

/// One logical exchange (chaining and GET RESPONSE included) returning the answer's data.
fn exchange<T: Transport>(
    t: &mut T,
    cla: u8,
    ins: u8,
    p1: u8,
    data: &[u8],
    le: bool,
    stats: &mut WireStats,
) -> Result<Vec<u8>, ExchangeError<T::Error>> {
    let mut out = vec![0u8; MAX_ANSWER];
    let n = apdu::exchange(t, cla, ins, p1, 0, data, le, &mut out, stats)?;
    out.truncate(n);
    Ok(out)
}

/// The applet's answer to SELECT: all a card says before a terminal authenticates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct CardInfo {
    /// Applet version (major * 16 + minor).
    pub applet_version: u8,
    /// Life-cycle state.
    #[serde(serialize_with = "ser_life_cycle")]
    pub life_cycle: LifeCycle,
    /// This session's card challenge.
    #[serde(serialize_with = "ser_hex")]
    pub challenge: [u8; NONCE_LEN],
}

fn ser_hex<S: serde::Serializer, B: AsRef<[u8]>>(b: &B, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(b))
}

fn ser_life_cycle<S: serde::Serializer>(l: &LifeCycle, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(life_cycle_name(*l))
}

/// Stable name of a life-cycle state.
pub fn life_cycle_name(l: LifeCycle) -> &'static str {
    match l {
        LifeCycle::Blank => "BLANK",
        LifeCycle::Personalized => "PERSONALIZED",
        LifeCycle::Blocked => "BLOCKED",
    }
}

/// A life-cycle state for people: the stable name, and in Chinese what it means after it.
pub fn life_cycle_shown(l: LifeCycle, lang: Lang) -> String {
    let name = life_cycle_name(l);
    match lang {
        Lang::En => name.to_owned(),
        Lang::Zh => {
            let meaning = match l {
                LifeCycle::Blank => "空白卡",
                LifeCycle::Personalized => "已个人化",
                LifeCycle::Blocked => "已停用",
            };
            format!("{name}（{meaning}）")
        }
    }
}

/// The result of SELECT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selected {
    /// The applet answered.
    Applet(CardInfo),
    /// The applet is there but the card is blocked (6283).
    Blocked,
    /// No applet with our AID (or not a card of ours).
    NotOurCard(u16),
}

/// SELECTs the applet by AID.
pub fn select<T: Transport>(
    t: &mut T,
    stats: &mut WireStats,
) -> Result<Selected, CardError<T::Error>>
where
    T::Error: fmt::Display,
{
    match exchange(t, CLA_ISO, INS_SELECT, 0x04, &AID, true, stats) {
        Ok(answer) => {
            let info: SelectResponse =
                decode_versioned(&answer).map_err(|e| CardError::Malformed {
                    step: "SELECT",
                    detail: Text::same(e.to_string()),
                })?;
            Ok(Selected::Applet(CardInfo {
                applet_version: info.applet_version,
                life_cycle: info.life_cycle,
                challenge: info.challenge,
            }))
        }
        Err(ExchangeError::Status(sw::BLOCKED)) => Ok(Selected::Blocked),
        Err(ExchangeError::Status(sw)) => Ok(Selected::NotOurCard(sw)),
        Err(e) => Err(card_err("SELECT", e)),
    }
}

/// SELECTs the applet and requires it to answer (any life cycle).
pub fn select_applet<T: Transport>(
    t: &mut T,
    stats: &mut WireStats,
) -> Result<CardInfo, CardError<T::Error>>
where
    T::Error: fmt::Display,
{
    match select(t, stats)? {
        Selected::Applet(info) => Ok(info),
        Selected::Blocked => Err(CardError::WrongState(Text::new(
            "the card is BLOCKED (an office blocked it): it answers nothing but SELECT",
            "卡片已被停用（BLOCKED，由办证机构停用）：除 SELECT 外不再应答任何命令",
        ))),
        Selected::NotOurCard(sw) => Err(CardError::Status {
            step: "SELECT",
            sw,
            meaning: sw_meaning(sw),
        }),
    }
}

/// The keys a verifier trusts: the root key and a trust bundle it signed.
pub struct Trust {
    /// The root public key.
    pub root: PublicKey,
    /// Wire bytes of the trust bundle.
    pub bundle: Vec<u8>,
}

/// What the terminal asks.
#[derive(Clone, Copy, Debug)]
pub struct TapRequest {
    /// The service performed.
    pub service: Service,
    /// Attributes asked for (the card releases those the service's policy allows).
    pub requested: AttributeSet,
    /// The terminal's time (Unix seconds).
    pub now: u64,
    /// Welfare: points to debit after the authentication (announced in the signed request).
    pub debit: Option<u32>,
    /// Welfare: report the purse (from the card-signed tap answer, or the receipt after a
    /// debit).
    pub read_balance: bool,
}

/// One disclosed attribute, shown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ShownAttribute {
    /// Attribute id.
    pub id: u8,
    /// Stable name.
    pub name: &'static str,
    /// Human form of the value.
    pub value: String,
    /// The same in Chinese (category and level as the certificate prints them). Only for
    /// people: the JSON keeps `value` alone.
    #[serde(skip)]
    pub value_zh: String,
}

/// A verified debit receipt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReceiptInfo {
    /// Purse counter after the debit.
    pub counter: u32,
    /// Points debited.
    pub amount: u32,
    /// Balance after.
    pub balance_after: u32,
    /// Transaction reference (hex).
    pub reference: String,
    /// Receipt wire bytes (hex).
    pub wire: String,
}

/// Exchanges and bytes of a tap, for diagnostics and the benchmark.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Wire {
    /// Logical exchanges (command + whole answer).
    pub exchanges: u32,
    /// Physical APDUs (chained blocks and GET RESPONSEs included).
    pub apdus: u32,
    /// Bytes to the card.
    pub bytes_out: u32,
    /// Bytes from the card (status words included).
    pub bytes_in: u32,
}

impl From<WireStats> for Wire {
    fn from(s: WireStats) -> Self {
        Wire {
            exchanges: s.exchanges,
            apdus: s.apdus,
            bytes_out: s.bytes_out,
            bytes_in: s.bytes_in,
        }
    }
}

impl Wire {
    /// Both directions.
    pub fn total_bytes(&self) -> u32 {
        self.bytes_out + self.bytes_in
    }

    /// Time the bytes take on the air at `kbit_s` (ISO 14443 runs at 106 kbit/s at its slowest),
    /// in milliseconds, counting 8 bits per byte (framing and parity overhead not included).
    pub fn air_ms(&self, kbit_s: f64) -> f64 {
        f64::from(self.total_bytes()) * 8.0 / kbit_s
    }
}

/// The verified outcome of a tap.
#[derive(Clone, Debug, Serialize)]
pub struct TapReport {
    /// The service.
    pub service: &'static str,
    /// Card serial (hex).
    pub card_serial: String,
    /// Status-list index.
    pub status_index: u32,
    /// Credential validity.
    pub valid_from: u64,
    /// Credential validity.
    pub valid_until: u64,
    /// Whether the credential is valid at the terminal's time.
    pub valid_now: bool,
    /// Key id of the credential's signer (hex).
    pub issuer: String,
    /// Whether the credential's signature was checked against a trusted Issuer key (needs the
    /// root key and the trust bundle); without them only the card's signature is checked.
    pub issuer_verified: bool,
    /// The disclosed attributes (each checked against its signed digest).
    pub attributes: Vec<ShownAttribute>,
    /// The debit receipt, when one was asked for.
    pub receipt: Option<ReceiptInfo>,
    /// Purse balance and counter, when asked for (after the debit, if one was made).
    pub balance: Option<(u32, u32)>,
    /// SELECT + TERMINAL AUTHENTICATE (the tap proper).
    pub tap_wire: Wire,
    /// The same plus DEBIT (and GET BALANCE, only outside a welfare session) when done.
    pub total_wire: Wire,
}

/// Stable lower-case name of an attribute.
pub fn attribute_name(id: AttributeId) -> &'static str {
    match id {
        AttributeId::Name => "name",
        AttributeId::CertificateNumber => "certificate_number",
        AttributeId::Category => "category",
        AttributeId::Level => "level",
        AttributeId::Region => "region",
        AttributeId::BirthYear => "birth_year",
        AttributeId::Entitlements => "entitlements",
        AttributeId::PhotoDigest => "photo_digest",
        AttributeId::CertificateExpiry => "certificate_expiry",
    }
}

fn show_value(v: &AttributeValue<'_>, lang: Lang) -> String {
    use shared_crypto::model::Entitlements as E;
    match v {
        AttributeValue::Name(s) => (*s).to_owned(),
        AttributeValue::CertificateNumber(c) => c.to_string(),
        AttributeValue::Category(c) => match lang {
            Lang::En => format!("{} ({})", c.code(), c.name_en()),
            Lang::Zh => format!("{}（{}）", c.code(), c.name_zh()),
        },
        AttributeValue::Level(l) => match lang {
            Lang::En => format!("{} ({})", l.get(), l.name_en()),
            Lang::Zh => format!("{}（{}）", l.get(), l.name_zh()),
        },
        AttributeValue::Region(r) => format!("{r:06}"),
        AttributeValue::BirthYear(y) => y.to_string(),
        AttributeValue::Entitlements(e) => {
            let names: Vec<&str> = [
                (E::FREE_TRANSIT, "free_transit"),
                (E::COMPANION, "companion"),
                (E::REHAB_SUBSIDY, "rehab_subsidy"),
                (E::QUOTA_EMPLOYMENT, "quota_employment"),
                (E::WELFARE_POINTS, "welfare_points"),
            ]
            .iter()
            .filter(|(f, _)| e.has(*f))
            .map(|(_, n)| *n)
            .collect();
            if names.is_empty() {
                lang.pick("none", "无").into()
            } else {
                names.join(",")
            }
        }
        AttributeValue::PhotoDigest(d) => hex::encode(d),
        AttributeValue::CertificateExpiry(t) => t.to_string(),
    }
}

fn fresh_nonce() -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    // The OS RNG does not fail on Linux once booted; an all-zero nonce would only weaken this
    // diagnostic session, never a key.
    let _ = getrandom::fill(&mut n);
    n
}

/// What failed to verify: `what` names the object, the shared-crypto error says why (its text is
/// technical and stays as it is in both languages).
fn verification<E: fmt::Display>(what: Phrase) -> impl Fn(shared_crypto::Error) -> CardError<E> {
    move |e| {
        CardError::Verification(Text::new(
            format!("{}: {e}", what.en),
            format!("{}：{e}", what.zh),
        ))
    }
}

/// Taps the card as a terminal: SELECT, TERMINAL AUTHENTICATE (and DEBIT / GET BALANCE for
/// welfare when asked), verifying every answer.
pub fn tap<T: Transport, K: Signer>(
    t: &mut T,
    key: &K,
    terminal_cert: &[u8],
    trust: Option<&Trust>,
    request: &TapRequest,
) -> Result<TapReport, CardError<T::Error>>
where
    T::Error: fmt::Display,
{
    let mut stats = WireStats::default();
    if request.debit.is_some() && request.service != Service::Welfare {
        let service = request.service.name();
        return Err(CardError::WrongState(Text::new(
            format!("only a welfare terminal debits points, not {service}"),
            format!("只有 welfare（福利积分）终端才能扣减积分，{service} 终端不能"),
        )));
    }
    let info = select_applet(t, &mut stats)?;
    if info.life_cycle != LifeCycle::Personalized {
        let state = life_cycle_name(info.life_cycle);
        return Err(CardError::WrongState(Text::new(
            format!("the card is {state}: only a personalized card can be tapped"),
            format!("卡片处于 {state} 状态：只有已个人化的卡片才能刷卡"),
        )));
    }

    // The request, signed with the card's challenge as context (single use). A debit is
    // announced in it: the card debits exactly that and nothing else in this session.
    let intent = request.debit.map(|amount| DebitIntent {
        amount,
        reference: fresh_nonce(),
    });
    let body = TapRequestBody {
        terminal_nonce: fresh_nonce(),
        service: request.service,
        requested: request.requested,
        time: request.now,
        debit: intent,
    };
    let request_wire = shared_crypto::sig::sign(&body, &info.challenge, key).map_err(|e| {
        CardError::Verification(Text::new(
            format!("signing the tap request: {e}"),
            format!("签署刷卡请求时出错：{e}"),
        ))
    })?;
    let cert = Signed::decode(terminal_cert).map_err(|e| {
        CardError::WrongState(Text::new(
            format!("the terminal certificate is malformed: {e}"),
            format!("终端证书格式不正确：{e}"),
        ))
    })?;
    let request_signed = Signed::decode(&request_wire).map_err(|e| {
        CardError::WrongState(Text::new(
            format!("internal: request envelope: {e}"),
            format!("内部错误：请求的签名封装：{e}"),
        ))
    })?;
    let auth = encode_versioned(&TerminalAuth {
        terminal_cert: cert,
        request: request_signed,
    });
    let answer = exchange(
        t,
        CLA_PROPRIETARY,
        INS_TERMINAL_AUTHENTICATE,
        0,
        &auth,
        true,
        &mut stats,
    )
    .map_err(|e| match e {
        ExchangeError::Status(sw::SECURITY_STATUS) => CardError::Status {
            step: "TERMINAL AUTHENTICATE",
            sw: sw::SECURITY_STATUS,
            meaning: REFUSED_TERMINAL,
        },
        other => card_err("TERMINAL AUTHENTICATE", other),
    })?;
    let tap_wire = Wire::from(stats);

    // Verify, then decode. The card key needed to check the envelope is inside the credential,
    // so the credential is read first (and checked against the issuer when we can).
    let envelope = Signed::decode(&answer).map_err(verification(Phrase::new(
        "tap answer envelope",
        "刷卡应答的签名封装",
    )))?;
    let untrusted: TapResponseBody<'_> = envelope.decode_trusted().map_err(verification(
        Phrase::new("tap answer body", "刷卡应答的内容"),
    ))?;
    let credential_env = untrusted.credential;
    let (credential, issuer_verified): (CredentialBody<'_>, bool) = match trust {
        Some(trust) => {
            let bundle = TrustBundle::verify(&trust.bundle, &trust.root, None)
                .map_err(verification(Phrase::new("trust bundle", "信任包")))?;
            let issuer = bundle
                .find(&credential_env.signer, Role::Issuer, request.now)
                .map_err(verification(Phrase::new(
                    "credential issuer",
                    "凭证的签发方",
                )))?;
            (
                credential_env
                    .open(&[], &issuer.key)
                    .map_err(verification(Phrase::new(
                        "credential signature",
                        "凭证的签名",
                    )))?,
                true,
            )
        }
        None => (
            credential_env
                .decode_trusted()
                .map_err(verification(Phrase::new("credential", "凭证")))?,
            false,
        ),
    };
    credential
        .check_structure()
        .map_err(verification(Phrase::new(
            "credential structure",
            "凭证的结构",
        )))?;
    let card_key = credential
        .card_public_key()
        .map_err(verification(Phrase::new("card key", "卡片公钥")))?;
    let context = transcript_hash(&info.challenge, &auth);
    let verified: TapResponseBody<'_> =
        envelope
            .open(&context, &card_key)
            .map_err(verification(Phrase::new(
                "card signature over the transcript (a copied credential?)",
                "卡片对本次会话记录的签名（凭证被复制了？）",
            )))?;
    let released = credential
        .check_disclosures(&verified.disclosures)
        .map_err(verification(Phrase::new("disclosures", "披露的属性")))?;
    let allowed = request
        .requested
        .intersect(request.service.release_policy());
    if !released.is_subset_of(allowed) {
        let service = request.service.name();
        return Err(CardError::Verification(Text::new(
            format!("the card released attributes beyond what {service} may read"),
            format!("卡片披露的属性超出了 {service} 服务可以读取的范围"),
        )));
    }
    let mut attributes = Vec::new();
    for d in verified.disclosures.iter() {
        let v = d
            .typed_value()
            .map_err(verification(Phrase::new("attribute value", "属性值")))?;
        attributes.push(ShownAttribute {
            id: d.attribute as u8,
            name: attribute_name(d.attribute),
            value: show_value(&v, Lang::En),
            value_zh: show_value(&v, Lang::Zh),
        });
    }

    let mut receipt = None;
    if let Some(intent) = intent {
        receipt = Some(debit(
            t,
            &card_key,
            &credential,
            key,
            intent,
            request.now,
            &mut stats,
        )?);
    }
    // The purse: after a debit from its receipt; otherwise from the signed answer (welfare);
    // GET BALANCE only to show the card's refusal outside a welfare session.
    let balance = match (request.read_balance, &receipt, verified.purse) {
        (false, _, _) => None,
        (true, Some(r), _) => Some((r.balance_after, r.counter)),
        (true, None, Some(p)) => Some((p.balance, p.counter)),
        (true, None, None) => Some(get_balance(t, &mut stats)?),
    };

    Ok(TapReport {
        service: request.service.name(),
        card_serial: hex::encode(credential.card_serial),
        status_index: credential.status_index,
        valid_from: credential.valid_from,
        valid_until: credential.valid_until,
        valid_now: credential.check_time(request.now).is_ok(),
        issuer: hex::encode(credential_env.signer),
        issuer_verified,
        attributes,
        receipt,
        balance,
        tap_wire,
        total_wire: Wire::from(stats),
    })
}

fn debit<T: Transport, K: Signer>(
    t: &mut T,
    card_key: &PublicKey,
    credential: &CredentialBody<'_>,
    terminal: &K,
    intent: DebitIntent,
    now: u64,
    stats: &mut WireStats,
) -> Result<ReceiptInfo, CardError<T::Error>>
where
    T::Error: fmt::Display,
{
    let DebitIntent { amount, reference } = intent;
    let data = encode_versioned(&DebitRequest {
        amount,
        reference,
        time: now,
    });
    let answer =
        exchange(t, CLA_PROPRIETARY, INS_DEBIT, 0, &data, true, stats).map_err(|e| match e {
            ExchangeError::Status(sw::CONDITIONS) => CardError::Status {
                step: "DEBIT",
                sw: sw::CONDITIONS,
                meaning: NOT_ENOUGH_POINTS,
            },
            ExchangeError::Status(sw::SECURITY_STATUS) => CardError::Status {
                step: "DEBIT",
                sw: sw::SECURITY_STATUS,
                meaning: DEBIT_ALTERED,
            },
            other => card_err("DEBIT", other),
        })?;
    let env = Signed::decode(&answer).map_err(verification(Phrase::new(
        "receipt envelope",
        "收据的签名封装",
    )))?;
    let r: ReceiptBody = env
        .open(&[], card_key)
        .map_err(verification(Phrase::new("receipt signature", "收据的签名")))?;
    if r.card_serial != credential.card_serial
        || r.amount != amount
        || r.reference != reference
        || r.terminal != terminal.key_id()
        || r.time != now
    {
        return Err(CardError::Verification(Text::new(
            "the receipt does not match the debit asked for",
            "收据与所请求的扣减不符",
        )));
    }
    Ok(ReceiptInfo {
        counter: r.counter,
        amount: r.amount,
        balance_after: r.balance_after,
        reference: hex::encode(reference),
        wire: hex::encode(&answer),
    })
}

/// GET BALANCE: `(balance, counter)`; needs a Welfare authentication in this session.
pub fn get_balance<T: Transport>(
    t: &mut T,
    stats: &mut WireStats,
) -> Result<(u32, u32), CardError<T::Error>>
where
    T::Error: fmt::Display,
{
    // GET BALANCE carries Le = 08 (the answer has a fixed length), which `apdu::exchange` does
    // not produce, so it goes out as one raw APDU.
    let cmd = [CLA_PROPRIETARY, INS_GET_BALANCE, 0, 0, 8];
    stats.exchanges += 1;
    stats.apdus += 1;
    stats.bytes_out += cmd.len() as u32;
    let mut rsp = [0u8; 258];
    let n = t.transceive(&cmd, &mut rsp).map_err(CardError::Transport)?;
    stats.bytes_in += n as u32;
    let rsp = rsp.get(..n).unwrap_or(&[]);
    match rsp {
        [b0, b1, b2, b3, c0, c1, c2, c3, 0x90, 0x00] => Ok((
            u32::from_be_bytes([*b0, *b1, *b2, *b3]),
            u32::from_be_bytes([*c0, *c1, *c2, *c3]),
        )),
        [.., s1, s2] if n == 2 => {
            let sw = u16::from_be_bytes([*s1, *s2]);
            Err(CardError::Status {
                step: "GET BALANCE",
                sw,
                meaning: sw_meaning(sw),
            })
        }
        _ => Err(CardError::Malformed {
            step: "GET BALANCE",
            detail: Text::new(format!("{n} bytes"), format!("{n} 字节")),
        }),
    }
}

/// CREDIT: hands a Voucher-signed grant to the card; returns the new balance.
pub fn credit<T: Transport>(
    t: &mut T,
    voucher_cert: &[u8],
    voucher: &[u8],
    stats: &mut WireStats,
) -> Result<u32, CardError<T::Error>>
where
    T::Error: fmt::Display,
{
    let command = CreditCommand {
        voucher_cert: Signed::decode(voucher_cert).map_err(|e| {
            CardError::WrongState(Text::new(
                format!("the voucher certificate is malformed: {e}"),
                format!("积分券的证书格式不正确：{e}"),
            ))
        })?,
        voucher: Signed::decode(voucher).map_err(|e| {
            CardError::WrongState(Text::new(
                format!("the voucher is malformed: {e}"),
                format!("积分券格式不正确：{e}"),
            ))
        })?,
    };
    let data = encode_versioned(&command);
    let answer =
        exchange(t, CLA_PROPRIETARY, INS_CREDIT, 0, &data, true, stats).map_err(|e| match e {
            ExchangeError::Status(sw::CONDITIONS) => CardError::Status {
                step: "CREDIT",
                sw: sw::CONDITIONS,
                meaning: VOUCHER_REFUSED,
            },
            other => card_err("CREDIT", other),
        })?;
    match answer.as_slice() {
        [a, b, c, d] => Ok(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => Err(CardError::Malformed {
            step: "CREDIT",
            detail: Text::new(
                format!("{} bytes instead of 4", answer.len()),
                format!("{} 字节，应为 4 字节", answer.len()),
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    //! The verifier against the real applet in memory (no pcscd): what a tap shows, and every
    //! refusal.
    use super::*;
    use card_applet::host::CardProfile;
    use card_applet::sim::{personalize_in_memory, InMemoryCard, TestRng};
    use shared_crypto::model::{Disclosure, KeyCertificateBody, ServiceSet, TrustBundleBody};
    use shared_crypto::wire::ItemsBuf;
    use shared_crypto::P256Signer;

    const NOW: u64 = 1_800_000_000;

    fn key(seed: u8) -> P256Signer {
        P256Signer::from_bytes(&[seed; 32]).unwrap()
    }

    fn cert(root: &P256Signer, subject: &P256Signer, role: Role, services: &[Service]) -> Vec<u8> {
        let body = KeyCertificateBody {
            key_id: subject.public_key().key_id(),
            role,
            subject: "test",
            region: 0,
            services: ServiceSet::of(services),
            public_key: subject.public_key().to_bytes(),
            valid_from: NOW - 1000,
            valid_until: NOW + 1000,
        };
        shared_crypto::sig::sign(&body, &[], root).unwrap()
    }

    struct Fixture {
        card: InMemoryCard<TestRng>,
        root: P256Signer,
        terminal: P256Signer,
        terminal_cert: Vec<u8>,
        trust: Trust,
    }

    fn fixture() -> Fixture {
        let master = [5u8; 16];
        let div = [6u8; 10];
        let mut card = InMemoryCard::blank(TestRng::new(1), &master, div).unwrap();
        let (root, issuer, terminal) = (key(1), key(2), key(3));
        let name = "Li Si".as_bytes();
        let ent = [0x1Fu8];
        let region = 110101u32.to_be_bytes();
        let disclosures = [
            Disclosure {
                attribute: AttributeId::Name,
                salt: [1; 16],
                value: name,
            },
            Disclosure {
                attribute: AttributeId::Region,
                salt: [2; 16],
                value: &region,
            },
            Disclosure {
                attribute: AttributeId::Entitlements,
                salt: [3; 16],
                value: &ent,
            },
        ];
        let profile = CardProfile {
            card_serial: [0xAB; 8],
            status_index: 7,
            valid_from: NOW - 100,
            valid_until: NOW + 100,
            disclosures: &disclosures,
            root_key: root.public_key(),
            initial_points: 40,
        };
        let keys = shared_crypto::scp03::diversify(&master, &div);
        personalize_in_memory(&mut card, &mut TestRng::new(2), &keys, &issuer, &profile).unwrap();
        let issuer_cert = cert(&root, &issuer, Role::Issuer, &[]);
        let certs: ItemsBuf = [Signed::decode(&issuer_cert).unwrap()]
            .into_iter()
            .collect();
        let bundle = shared_crypto::sig::sign(
            &TrustBundleBody {
                epoch: 1,
                issued_at: NOW,
                certs: certs.as_items(),
            },
            &[],
            &root,
        )
        .unwrap();
        let terminal_cert = cert(&root, &terminal, Role::Terminal, Service::ALL);
        Fixture {
            card,
            trust: Trust {
                root: root.public_key(),
                bundle,
            },
            root,
            terminal,
            terminal_cert,
        }
    }

    fn request(service: Service) -> TapRequest {
        TapRequest {
            service,
            requested: AttributeSet::ALL,
            now: NOW,
            debit: None,
            read_balance: false,
        }
    }

    #[test]
    fn each_service_sees_only_what_its_policy_releases() {
        let mut f = fixture();
        for service in Service::ALL {
            let r = tap(
                &mut f.card,
                &f.terminal,
                &f.terminal_cert,
                Some(&f.trust),
                &request(*service),
            )
            .unwrap();
            assert!(r.issuer_verified && r.valid_now);
            assert_eq!(r.card_serial, "abababababababab");
            let shown: Vec<&str> = r.attributes.iter().map(|a| a.name).collect();
            let allowed: Vec<&str> = [
                AttributeId::Name,
                AttributeId::Region,
                AttributeId::Entitlements,
            ]
            .into_iter()
            .filter(|a| service.release_policy().contains(*a))
            .map(attribute_name)
            .collect();
            assert_eq!(shown, allowed, "{}", service.name());
            assert_eq!(r.tap_wire.exchanges, 2);
        }
    }

    #[test]
    fn welfare_debits_with_a_verified_receipt_and_refuses_an_empty_purse() {
        let mut f = fixture();
        let mut req = request(Service::Welfare);
        req.debit = Some(15);
        req.read_balance = true;
        let r = tap(&mut f.card, &f.terminal, &f.terminal_cert, None, &req).unwrap();
        assert!(!r.issuer_verified);
        let receipt = r.receipt.unwrap();
        assert_eq!((receipt.amount, receipt.balance_after), (15, 25));
        assert_eq!(r.balance, Some((25, receipt.counter)));
        // SELECT, TERMINAL AUTHENTICATE, DEBIT: the purse needs no GET BALANCE.
        assert_eq!(r.total_wire.exchanges, 3);
        // Without a debit the signed answer reports the purse.
        req.debit = None;
        let r = tap(&mut f.card, &f.terminal, &f.terminal_cert, None, &req).unwrap();
        assert_eq!(r.balance, Some((25, 1)));
        assert_eq!(r.total_wire.exchanges, 2);
        req.debit = Some(15);
        req.debit = Some(26);
        match tap(&mut f.card, &f.terminal, &f.terminal_cert, None, &req) {
            Err(CardError::Status {
                sw: sw::CONDITIONS,
                step: "DEBIT",
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        // A debit outside welfare is refused before the card is asked.
        let mut transit = request(Service::Transit);
        transit.debit = Some(1);
        match tap(&mut f.card, &f.terminal, &f.terminal_cert, None, &transit) {
            Err(CardError::WrongState(m)) => assert!(m.en.contains("welfare"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(f.card.applet().balance(), Some(25));
    }

    /// How a relay rewrites a DEBIT command.
    type Alteration = fn(&mut DebitRequest);

    /// A relay between the tool and the card that rewrites the DEBIT command after the signed
    /// tap request (which announced the debit) has gone through.
    struct AlteringRelay<'a> {
        card: &'a mut InMemoryCard<TestRng>,
        alter: Alteration,
        altered: u32,
    }

    impl Transport for AlteringRelay<'_> {
        type Error = <InMemoryCard<TestRng> as Transport>::Error;

        fn transceive(
            &mut self,
            command: &[u8],
            response: &mut [u8],
        ) -> Result<usize, Self::Error> {
            if command.get(1) != Some(&INS_DEBIT) {
                return self.card.transceive(command, response);
            }
            // A short APDU: header, Lc, data, Le.
            let lc = usize::from(command[4]);
            let mut req: DebitRequest = decode_versioned(&command[5..5 + lc]).unwrap();
            (self.alter)(&mut req);
            let data = encode_versioned(&req);
            let mut cmd = command[..4].to_vec();
            cmd.push(u8::try_from(data.len()).unwrap());
            cmd.extend_from_slice(&data);
            cmd.extend_from_slice(&command[5 + lc..]);
            self.altered += 1;
            self.card.transceive(&cmd, response)
        }
    }

    #[test]
    fn a_debit_altered_after_the_announcement_is_refused_and_nothing_is_debited() {
        let mut f = fixture();
        let mut req = request(Service::Welfare);
        req.debit = Some(15);
        req.read_balance = true;
        let alterations: [(&str, Alteration); 2] = [
            ("amount", |r| r.amount = 30),
            ("reference", |r| r.reference[0] ^= 1),
        ];
        for (what, alter) in alterations {
            let mut relay = AlteringRelay {
                card: &mut f.card,
                alter,
                altered: 0,
            };
            let err = tap(&mut relay, &f.terminal, &f.terminal_cert, None, &req).unwrap_err();
            assert_eq!(relay.altered, 1, "{what}: the relay saw no DEBIT");
            assert!(
                matches!(
                    err,
                    CardError::Status {
                        step: "DEBIT",
                        sw: sw::SECURITY_STATUS,
                        ..
                    }
                ),
                "{what}: {err:?}"
            );
            let m = err.to_string();
            for part in [
                "the card refused DEBIT with status 6982",
                "differs from the one this session's signed request announced",
                "nothing was debited",
                "tap the card again",
                "stop using this reader",
            ] {
                assert!(m.contains(part), "{what}: {part:?} not in {m:?}");
            }
        }
        // Read back through a fresh tap: the purse is as personalized, with no debit counted.
        req.debit = None;
        let r = tap(&mut f.card, &f.terminal, &f.terminal_cert, None, &req).unwrap();
        assert_eq!(r.balance, Some((40, 0)));
        assert_eq!(f.card.applet().balance(), Some(40));
    }

    #[test]
    fn the_card_refuses_foreign_and_misused_terminal_certificates() {
        let mut f = fixture();
        let foreign = cert(&key(9), &f.terminal, Role::Terminal, Service::ALL);
        let transit_only = cert(&f.root, &f.terminal, Role::Terminal, &[Service::Transit]);
        let not_a_terminal = cert(&f.root, &f.terminal, Role::Voucher, Service::ALL);
        for (what, c, service) in [
            ("foreign root", &foreign, Service::Transit),
            ("service not certified", &transit_only, Service::Employment),
            ("wrong role", &not_a_terminal, Service::Transit),
        ] {
            match tap(&mut f.card, &f.terminal, c, None, &request(service)) {
                Err(CardError::Status {
                    sw: sw::SECURITY_STATUS,
                    ..
                }) => {}
                other => panic!("{what}: {other:?}"),
            }
        }
        // A key that does not match the certificate.
        match tap(
            &mut f.card,
            &key(4),
            &f.terminal_cert,
            None,
            &request(Service::Transit),
        ) {
            Err(CardError::Status {
                sw: sw::SECURITY_STATUS,
                ..
            }) => {}
            other => panic!("wrong key: {other:?}"),
        }
    }

    #[test]
    fn a_credential_from_an_untrusted_issuer_is_refused_by_the_verifier() {
        let mut f = fixture();
        // A bundle that holds another key as Issuer: the card's credential issuer is unknown.
        let other = cert(&f.root, &key(8), Role::Issuer, &[]);
        let certs: ItemsBuf = [Signed::decode(&other).unwrap()].into_iter().collect();
        let bundle = shared_crypto::sig::sign(
            &TrustBundleBody {
                epoch: 1,
                issued_at: NOW,
                certs: certs.as_items(),
            },
            &[],
            &f.root,
        )
        .unwrap();
        let trust = Trust {
            root: f.root.public_key(),
            bundle,
        };
        match tap(
            &mut f.card,
            &f.terminal,
            &f.terminal_cert,
            Some(&trust),
            &request(Service::Transit),
        ) {
            Err(CardError::Verification(m)) => assert!(m.en.contains("issuer"), "{m}"),
            other => panic!("{other:?}"),
        }
        // A bundle signed by another root does not verify at all.
        let trust = Trust {
            root: key(9).public_key(),
            bundle: f.trust.bundle.clone(),
        };
        assert!(matches!(
            tap(
                &mut f.card,
                &f.terminal,
                &f.terminal_cert,
                Some(&trust),
                &request(Service::Transit)
            ),
            Err(CardError::Verification(_))
        ));
    }

    #[test]
    fn a_blank_or_absent_card_is_not_tapped() {
        let mut blank = InMemoryCard::blank(TestRng::new(3), &[1; 16], [2; 10]).unwrap();
        let f = fixture();
        match tap(
            &mut blank,
            &f.terminal,
            &f.terminal_cert,
            None,
            &request(Service::Transit),
        ) {
            Err(CardError::WrongState(m)) => assert!(m.en.contains("BLANK"), "{m}"),
            other => panic!("{other:?}"),
        }
        blank.remove();
        assert!(matches!(
            tap(
                &mut blank,
                &f.terminal,
                &f.terminal_cert,
                None,
                &request(Service::Transit)
            ),
            Err(CardError::Transport(_))
        ));
    }

    #[test]
    fn status_words_mean_the_same_in_both_languages() {
        let words = [
            sw::OK,
            sw::BLOCKED,
            sw::WRONG_LENGTH,
            sw::LAST_COMMAND_EXPECTED,
            sw::SECURITY_STATUS,
            sw::CONDITIONS,
            sw::WRONG_DATA,
            sw::WRONG_P1P2,
            sw::NOT_FOUND,
            sw::INS_NOT_SUPPORTED,
            sw::CLA_NOT_SUPPORTED,
            0x6A82,
            0x6F00,
        ];
        for w in words {
            let m = sw_meaning(w);
            crate::i18n::check_pair(&format!("{w:04X}"), m.en, m.zh);
        }
        for m in [
            REFUSED_TERMINAL,
            NOT_ENOUGH_POINTS,
            DEBIT_ALTERED,
            VOUCHER_REFUSED,
        ] {
            crate::i18n::check_pair(m.en, m.en, m.zh);
        }
    }

    #[test]
    fn every_card_error_speaks_both_languages() {
        use crate::reader::ReaderError;
        let all: [CardError<ReaderError>; 6] = [
            CardError::Transport(ReaderError::NoCardIn("Virtual PCD 00 00".into())),
            CardError::Status {
                step: "TERMINAL AUTHENTICATE",
                sw: sw::SECURITY_STATUS,
                meaning: REFUSED_TERMINAL,
            },
            CardError::Status {
                step: "SELECT",
                sw: 0x6A82,
                meaning: sw_meaning(0x6A82),
            },
            CardError::Malformed {
                step: "CREDIT",
                detail: Text::new("3 bytes instead of 4", "3 字节，应为 4 字节"),
            },
            CardError::Verification(Text::new(
                "the receipt does not match the debit asked for",
                "收据与所请求的扣减不符",
            )),
            CardError::WrongState(Text::new(
                "the card is BLANK: only a personalized card can be tapped",
                "卡片处于 BLANK 状态：只有已个人化的卡片才能刷卡",
            )),
        ];
        for e in &all {
            match e {
                CardError::Transport(_)
                | CardError::Status { .. }
                | CardError::Malformed { .. }
                | CardError::Verification(_)
                | CardError::WrongState(_) => crate::i18n::check(&format!("{e:?}"), e),
            }
        }
        assert_eq!(
            all[2].localized(Lang::Zh),
            "卡片拒绝了 SELECT 命令，状态字 6A82（找不到应用：这张卡片上没有残疾人证应用）"
        );
    }

    #[test]
    fn refusals_found_on_the_card_are_explained_in_both_languages() {
        let mut f = fixture();
        // Each refusal as the card makes it, rendered with the in-memory card's transport.
        type Refusal = CardError<<InMemoryCard<TestRng> as Transport>::Error>;
        let zh = |e: &Refusal| e.render(Lang::Zh, |t| t.to_string());
        let mut blank = InMemoryCard::blank(TestRng::new(3), &[1; 16], [2; 10]).unwrap();
        let e = tap(
            &mut blank,
            &f.terminal,
            &f.terminal_cert,
            None,
            &request(Service::Transit),
        )
        .unwrap_err();
        crate::i18n::check_pair("blank", &e.to_string(), &zh(&e));
        let mut req = request(Service::Welfare);
        req.debit = Some(1000);
        let e = tap(&mut f.card, &f.terminal, &f.terminal_cert, None, &req).unwrap_err();
        assert!(zh(&e).contains("卡内积分不足"), "{}", zh(&e));
        crate::i18n::check_pair("debit", &e.to_string(), &zh(&e));
        let foreign = cert(&key(9), &f.terminal, Role::Terminal, Service::ALL);
        let e = tap(
            &mut f.card,
            &f.terminal,
            &foreign,
            None,
            &request(Service::Transit),
        )
        .unwrap_err();
        crate::i18n::check_pair("foreign", &e.to_string(), &zh(&e));
        let bad_root = Trust {
            root: key(9).public_key(),
            bundle: f.trust.bundle.clone(),
        };
        let e = tap(
            &mut f.card,
            &f.terminal,
            &f.terminal_cert,
            Some(&bad_root),
            &request(Service::Transit),
        )
        .unwrap_err();
        assert!(
            zh(&e).starts_with("卡片的应答没有通过验证：信任包："),
            "{}",
            zh(&e)
        );
    }

    #[test]
    fn air_time_at_106_kbits() {
        let w = Wire {
            exchanges: 2,
            apdus: 3,
            bytes_out: 300,
            bytes_in: 400,
        };
        assert!((w.air_ms(106.0) - 700.0 * 8.0 / 106.0).abs() < 1e-9);
    }
}
