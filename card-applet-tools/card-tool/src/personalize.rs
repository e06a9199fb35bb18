//! The personalization flow: the server's job on one side, SCP03 on the card on the other.
//!
//! ```text
//! SELECT ............................ BLANK? (PERSONALIZED: finish a journalled job, or stop)
//! GET DATA (div data) ............... the card's 10-byte diversification data
//! POST personalization-jobs ......... the job (a new one, or the unfinished one resumed)
//! phase 1: SCP03 + GENERATE KEY PAIR  the card's public key (generated on the card)
//! journal + POST card-key ........... the credential the issuer signed for that key
//! check the credential .............. serial, key, validity and every digest match the job
//! phase 2: PUT DATA x4 + SET STATUS . credential, disclosures, root key, purse; lock
//! POST confirm ...................... the card is the certificate's active card
//! ```
//! The card stays BLANK until the lock, and a BLANK card restarts from phase 1 (a new session
//! discards what an earlier one wrote), so a failure anywhere before the lock is repaired by
//! running again; a failure after it (answer lost, server down) by the journal.

use std::fmt;
use std::time::Instant;

use serde::Serialize;
use shared_crypto::apdu::WireStats;
use shared_crypto::model::{
    attribute_digest, AttributeId, CredentialBody, LifeCycle, Role, TrustBundle, NONCE_LEN,
};
use shared_crypto::scp03::StaticKeys;
use shared_crypto::{PublicKey, Signed};

use card_applet::host::{HostError, PersoData};
use shared_crypto::model::Disclosure;

use crate::i18n::{error_text, table, Lang, Localized, Phrase, Text};
use crate::journal::{Entry, Journal};
use crate::reader::{CardLink, Counted, ReaderError};
use crate::server::{Client, JobState, PersonalizationJob, ServerError};
use crate::tap::{self, CardError};

/// Why a personalization stopped. Each message says what to do next.
///
/// `Display` is the English message; [`Localized::localized`] gives it in either language.
#[derive(Debug)]
#[non_exhaustive]
pub enum PersoError {
    /// The card is already personalized and no interrupted job of this application is known.
    AlreadyPersonalized {
        /// The reader.
        reader: String,
    },
    /// The card is blocked.
    Blocked {
        /// The reader.
        reader: String,
    },
    /// The reader or the card failed; nothing is lost.
    Card(CardError<ReaderError>),
    /// The reader failed before anything started.
    Reader(ReaderError),
    /// The server failed or refused.
    Server(ServerError),
    /// The server's job or credential is not consistent with the card or the contract.
    BadJob(Text),
    /// The journal could not be read or written.
    Journal(anyhow::Error),
}

impl Localized for PersoError {
    fn localized(&self, lang: Lang) -> String {
        use Lang::{En, Zh};
        match (self, lang) {
            (PersoError::AlreadyPersonalized { reader }, En) => format!(
                "the card in {reader} is already PERSONALIZED (its personalization commands are \
                 refused forever); put a blank card on the reader"
            ),
            (PersoError::AlreadyPersonalized { reader }, Zh) => format!(
                "{reader} 上的卡片已经是 PERSONALIZED（已个人化）状态，永远不再接受个人化命令；\
                 请在读卡器上放一张空白卡"
            ),
            (PersoError::Blocked { reader }, En) => {
                format!("the card in {reader} is BLOCKED; it cannot be personalized")
            }
            (PersoError::Blocked { reader }, Zh) => {
                format!("{reader} 上的卡片已被停用（BLOCKED），无法个人化")
            }
            (PersoError::Card(e), En) => format!(
                "{}. The card stays BLANK until its last step and the server keeps the job: put \
                 the card back and run the same command again",
                e.localized(En)
            ),
            (PersoError::Card(e), Zh) => format!(
                "{}。卡片在最后一步之前一直是 BLANK（空白）状态，服务器也保留着这个任务：\
                 请把卡片放回读卡器，再运行一次同一条命令",
                e.localized(Zh)
            ),
            (PersoError::Reader(e), _) => e.localized(lang),
            (PersoError::Server(e), _) => {
                let hint = if e.is_transient() {
                    lang.pick(
                        ". Nothing is lost: run the same command again when the server is back",
                        "。没有丢失任何数据：等服务器恢复后，再运行一次同一条命令",
                    )
                } else {
                    ""
                };
                format!("{}{hint}", e.localized(lang))
            }
            (PersoError::BadJob(why), En) => format!(
                "the server's job is inconsistent: {}. Nothing was locked; report this to the \
                 office's administrator",
                why.en
            ),
            (PersoError::BadJob(why), Zh) => format!(
                "服务器下发的个人化任务有问题：{}。卡片没有被锁定；请把此情况报告给本办证机构的管理员",
                why.zh
            ),
            (PersoError::Journal(e), En) => format!(
                "the personalization journal failed: {}",
                error_text(e, En)
            ),
            (PersoError::Journal(e), Zh) => {
                format!("个人化日志出错：{}", error_text(e, Zh))
            }
        }
    }
}

impl fmt::Display for PersoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.localized(Lang::En))
    }
}

impl std::error::Error for PersoError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        // The causes the derived impl had: a server failure is caused by the server's error;
        // the other variants say what they wrap in their own message.
        match self {
            PersoError::Server(e) => Some(e),
            _ => None,
        }
    }
}

impl From<ReaderError> for PersoError {
    fn from(e: ReaderError) -> Self {
        PersoError::Reader(e)
    }
}

impl From<ServerError> for PersoError {
    fn from(e: ServerError) -> Self {
        PersoError::Server(e)
    }
}

impl From<CardError<ReaderError>> for PersoError {
    fn from(e: CardError<ReaderError>) -> Self {
        PersoError::Card(e)
    }
}

/// A personalized card.
#[derive(Clone, Debug, Serialize)]
pub struct Personalized {
    /// The reader.
    pub reader: String,
    /// The application.
    pub application_id: i64,
    /// The job.
    pub job_id: i64,
    /// The card serial (hex).
    pub card_serial: String,
    /// Status-list index.
    pub status_index: u32,
    /// The card's public key (hex).
    pub card_public_key: String,
    /// The server already had an unfinished job for this application (a resumed run).
    pub resumed_job: bool,
    /// Only the confirmation was left: the card had been locked in an interrupted run.
    pub finished_interrupted: bool,
    /// Wall time.
    pub seconds: f64,
    /// APDU traffic.
    pub apdus: u32,
}

impl Personalized {
    /// The result for people, in English.
    pub fn human(&self) -> String {
        self.human_in(Lang::En)
    }

    /// The result for people, in `lang`.
    pub fn human_in(&self, lang: Lang) -> String {
        if lang == Lang::Zh {
            let how = if self.finished_interrupted {
                "（完成了上次中断的个人化：卡片此前已锁定）"
            } else if self.resumed_job {
                "（继续了该申请未完成的任务）"
            } else {
                ""
            };
            return format!("已完成 {} 上卡片的个人化{how}\n", self.reader)
                + &table(&[
                    ("申请编号：", self.application_id.to_string()),
                    ("任务编号：", self.job_id.to_string()),
                    ("卡片序列号：", self.card_serial.clone()),
                    ("状态索引：", self.status_index.to_string()),
                    ("卡片公钥：", self.card_public_key.clone()),
                    (
                        "用时：",
                        format!("{:.2} 秒，{} 条 APDU", self.seconds, self.apdus),
                    ),
                ]);
        }
        let how = if self.finished_interrupted {
            " (finished an interrupted run: the card was already locked)"
        } else if self.resumed_job {
            " (resumed the application's unfinished job)"
        } else {
            ""
        };
        format!(
            "personalized the card in {}{how}\napplication:  {}\njob:          {}\n\
             card serial:  {}\nstatus index: {}\ncard key:     {}\ntime:         {:.2} s, {} APDUs\n",
            self.reader,
            self.application_id,
            self.job_id,
            self.card_serial,
            self.status_index,
            self.card_public_key,
            self.seconds,
            self.apdus
        )
    }
}

/// A job's inconsistency, said in both languages.
fn bad_job(en: String, zh: String) -> PersoError {
    PersoError::BadJob(Text::new(en, zh))
}

fn hex_array<const N: usize>(what: Phrase, s: &str) -> Result<[u8; N], PersoError> {
    hex::decode(s)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| {
            bad_job(
                format!("{} is not {N} bytes of hex", what.en),
                format!("{} 不是 {N} 字节的十六进制数据", what.zh),
            )
        })
}

fn static_keys(job: &PersonalizationJob) -> Result<StaticKeys, PersoError> {
    Ok(StaticKeys {
        enc: hex_array(Phrase::same("scp03.enc"), &job.scp03.enc)?,
        mac: hex_array(Phrase::same("scp03.mac"), &job.scp03.mac)?,
        dek: hex_array(Phrase::same("scp03.dek"), &job.scp03.dek)?,
    })
}

/// One attribute of a job: id, salt, canonical value.
type JobAttr = (AttributeId, [u8; NONCE_LEN], Vec<u8>);

/// The job's attributes, in attribute-id order.
fn job_attributes(job: &PersonalizationJob) -> Result<Vec<JobAttr>, PersoError> {
    let mut out = Vec::new();
    for a in &job.attributes {
        let n = a.attribute;
        let id = AttributeId::try_from(n).map_err(|_| {
            bad_job(
                format!("unknown attribute id {n}"),
                format!("未知的属性编号 {n}"),
            )
        })?;
        let salt = hex_array::<NONCE_LEN>(Phrase::new("attribute salt", "属性的盐值"), &a.salt)?;
        let value = hex::decode(&a.value).map_err(|_| {
            bad_job(
                format!("attribute {n} value is not hex"),
                format!("属性 {n} 的值不是十六进制数据"),
            )
        })?;
        out.push((id, salt, value));
    }
    out.sort_by_key(|(id, _, _)| *id as u8);
    Ok(out)
}

/// Checks the credential the server issued against the job and the card key: the card must
/// never be locked with a credential that would fail at every terminal.
fn check_credential(
    job: &PersonalizationJob,
    credential_wire: &[u8],
    card_key: &[u8; 33],
    attributes: &[JobAttr],
    trust: Option<(&PublicKey, &[u8])>,
) -> Result<(), PersoError> {
    // What failed to check: the object in both languages, shared-crypto's reason as it is.
    let bad = |what: Phrase| {
        move |e: shared_crypto::Error| {
            bad_job(format!("{}: {e}", what.en), format!("{}：{e}", what.zh))
        }
    };
    let credential = Phrase::new("credential", "凭证");
    let wrong = |en: &str, zh: &str| Err(bad_job(en.into(), zh.into()));
    let env = Signed::decode(credential_wire).map_err(bad(credential))?;
    let body: CredentialBody<'_> = match trust {
        Some((root, bundle)) => {
            let bundle = TrustBundle::verify(bundle, root, None)
                .map_err(bad(Phrase::new("trust bundle", "信任包")))?;
            let issuer = bundle
                .find(&env.signer, Role::Issuer, crate::now())
                .map_err(bad(Phrase::new("credential issuer", "凭证的签发方")))?;
            env.open(&[], &issuer.key)
                .map_err(bad(Phrase::new("credential signature", "凭证的签名")))?
        }
        None => env.decode_trusted().map_err(bad(credential))?,
    };
    body.check_structure().map_err(bad(credential))?;
    if hex::encode(body.card_serial) != job.card_serial.to_lowercase() {
        return wrong(
            "the credential names another card serial",
            "凭证上写的是另一张卡的序列号",
        );
    }
    if body.status_index != job.status_index
        || body.valid_from != job.valid_from
        || body.valid_until != job.valid_until
    {
        return wrong(
            "the credential's index or validity differ from the job",
            "凭证的状态索引或有效期与任务不一致",
        );
    }
    if &body.card_key.0 != card_key {
        return wrong(
            "the credential certifies another card key",
            "凭证认证的是另一张卡的公钥",
        );
    }
    if body.digests.len() != attributes.len() {
        return wrong(
            "the credential's digests do not match the job's attributes",
            "凭证中的摘要与任务的属性不一致",
        );
    }
    for (id, salt, value) in attributes {
        if body.digest_of(*id) != Some(attribute_digest(salt, *id, value)) {
            let n = *id as u8;
            return Err(bad_job(
                format!("the credential's digest of attribute {n} does not match its value"),
                format!("凭证中属性 {n} 的摘要与它的值不一致"),
            ));
        }
    }
    Ok(())
}

/// Personalizes the card on `link` for `application_id`, resuming whatever an earlier run left.
pub fn personalize(
    link: &mut CardLink,
    client: &Client,
    application_id: i64,
    journal: &Journal,
) -> Result<Personalized, PersoError> {
    let started = Instant::now();
    let reader = link.reader();
    let mut stats = WireStats::default();
    let info = tap::select_applet(link, &mut stats).map_err(|e| match e {
        CardError::WrongState(_) => PersoError::Blocked {
            reader: reader.clone(),
        },
        other => PersoError::Card(other),
    })?;
    let server = client.base().to_owned();

    if info.life_cycle == LifeCycle::Personalized {
        // Locked in an earlier run whose confirmation did not reach the server?
        let pending = journal
            .pending(&server, application_id)
            .map_err(PersoError::Journal)?;
        let Some(entry) = pending else {
            return Err(PersoError::AlreadyPersonalized { reader });
        };
        let card_key = hex_array::<33>(
            Phrase::new("journalled card key", "日志中记录的卡片公钥"),
            &entry.card_public_key,
        )?;
        let job = client.confirm(entry.job_id, &card_key)?;
        journal
            .remove(&server, application_id)
            .map_err(PersoError::Journal)?;
        return Ok(Personalized {
            reader,
            application_id,
            job_id: job.job_id,
            card_serial: job.card_serial,
            status_index: job.status_index,
            card_public_key: entry.card_public_key,
            resumed_job: true,
            finished_interrupted: true,
            seconds: started.elapsed().as_secs_f64(),
            apdus: stats.apdus,
        });
    }
    if info.life_cycle != LifeCycle::Blank {
        return Err(PersoError::Blocked { reader });
    }

    let mut counted = Counted::new(link);
    let div_data = card_applet::host::read_div_data(&mut counted)
        .map_err(|e| host_err("GET DATA (div data)", e))?;
    let (job, created) = client.create_job(application_id, &div_data)?;
    if job.state == JobState::Completed {
        let id = job.job_id;
        return Err(bad_job(
            format!("job {id} of application {application_id} is already completed"),
            format!("申请 {application_id} 的任务 {id} 已经完成"),
        ));
    }
    if job.scp03.kvn != card_applet::KVN {
        let (job_kvn, card_kvn) = (job.scp03.kvn, card_applet::KVN);
        return Err(bad_job(
            format!("the job's SCP03 key version is {job_kvn:#04x}, the card's is {card_kvn:#04x}"),
            format!("任务的 SCP03 密钥版本是 {job_kvn:#04x}，卡片的是 {card_kvn:#04x}"),
        ));
    }
    let keys = static_keys(&job)?;
    let attributes = job_attributes(&job)?;
    let root_key = hex_array::<33>(Phrase::same("root_key"), &job.root_key)?;
    let root = PublicKey::from_sec1(&root_key)
        .map_err(|e| bad_job(format!("root key: {e}"), format!("根公钥：{e}")))?;

    // Phase 1: SCP03 and the key pair, generated on the card.
    let mut rng = rand_core::UnwrapErr(getrandom::SysRng);
    let (session, card_key) =
        card_applet::host::begin_personalization(&mut counted, &mut rng, &keys)
            .map_err(|e| host_err("SCP03 / GENERATE KEY PAIR", e))?;
    let card_key = card_key.to_sec1();
    let card_key_hex = hex::encode(card_key);

    let credential = client.bind_card_key(job.job_id, &card_key)?;
    let bundle = client.trust_bundle().ok();
    check_credential(
        &job,
        &credential,
        &card_key,
        &attributes,
        bundle.as_deref().map(|b| (&root, b)),
    )?;

    // Phase 2: the data, then the lock.
    let disclosures: Vec<Disclosure<'_>> = attributes
        .iter()
        .map(|(id, salt, value)| Disclosure {
            attribute: *id,
            salt: *salt,
            value: value.as_slice(),
        })
        .collect();
    // From here on the card may lock at any moment: the journal must know the key first.
    journal
        .record(Entry {
            server: server.clone(),
            application_id,
            job_id: job.job_id,
            card_public_key: card_key_hex.clone(),
            div_data: hex::encode(div_data),
            card_serial: job.card_serial.clone(),
        })
        .map_err(PersoError::Journal)?;
    let written = session.finish(
        &mut counted,
        &PersoData {
            credential: &credential,
            disclosures: &disclosures,
            root_key: root,
            initial_points: job.initial_points,
        },
    );
    if let Err(e) = written {
        // Unless the lock itself went out, the card is still BLANK and the entry is moot (and
        // must not later match some other, locked card).
        let lock_sent = counted.last_header.is_some_and(|[cla, ins]| {
            ins == card_applet::ins::SET_STATUS
                && cla & shared_crypto::scp03::CLA_SECURE_MESSAGING != 0
        });
        if !lock_sent {
            journal
                .remove(&server, application_id)
                .map_err(PersoError::Journal)?;
        }
        return Err(host_err("PUT DATA / SET STATUS", e));
    }
    stats = stats_sum(stats, counted.stats);

    let confirmed = confirm_with_retry(client, job.job_id, &card_key)?;
    journal
        .remove(&server, application_id)
        .map_err(PersoError::Journal)?;
    Ok(Personalized {
        reader,
        application_id,
        job_id: confirmed.job_id,
        card_serial: confirmed.card_serial,
        status_index: confirmed.status_index,
        card_public_key: card_key_hex,
        resumed_job: !created,
        finished_interrupted: false,
        seconds: started.elapsed().as_secs_f64(),
        apdus: stats.apdus,
    })
}

fn stats_sum(a: WireStats, b: WireStats) -> WireStats {
    WireStats {
        exchanges: a.exchanges + b.exchanges,
        apdus: a.apdus + b.apdus,
        bytes_out: a.bytes_out + b.bytes_out,
        bytes_in: a.bytes_in + b.bytes_in,
    }
}

fn host_err(step: &'static str, e: HostError<ReaderError>) -> PersoError {
    PersoError::Card(match e {
        HostError::Transport(t) => CardError::Transport(t),
        HostError::Status(sw) => CardError::Status {
            step,
            sw,
            meaning: tap::sw_meaning(sw),
        },
        HostError::Scp(e) => CardError::Verification(Text::new(
            format!(
                "{step}: secure channel failed ({e}); were the card's keys made from this \
                 office's SCP03 master key?"
            ),
            format!(
                "{step}：安全通道建立失败（{e}）；这张卡的密钥是用本办证机构的 SCP03 主密钥生成的吗？"
            ),
        )),
        HostError::NotBlank(lc) => {
            let state = tap::life_cycle_name(lc);
            CardError::WrongState(Text::new(
                format!("{step}: the card is {state} now"),
                format!("{step}：卡片现在是 {state} 状态"),
            ))
        }
        HostError::Malformed => CardError::Malformed {
            step,
            detail: Text::new("unexpected answer", "意外的应答"),
        },
        HostError::Encoding => CardError::WrongState(Text::new(
            format!("{step}: {}", HostError::<ReaderError>::Encoding),
            format!("{step}：个人化数据过大"),
        )),
        HostError::Sign => CardError::WrongState(Text::new(
            format!("{step}: {}", HostError::<ReaderError>::Sign),
            format!("{step}：签发方签名失败"),
        )),
        // A kind of failure added to card-applet later: its own (English) words.
        other => CardError::WrongState(Text::same(format!("{step}: {other}"))),
    })
}

/// The card is locked: a short hiccup of the server must not need a rerun.
fn confirm_with_retry(
    client: &Client,
    job_id: i64,
    card_key: &[u8; 33],
) -> Result<PersonalizationJob, ServerError> {
    let mut wait = std::time::Duration::from_millis(200);
    for _ in 0..3 {
        match client.confirm(job_id, card_key) {
            Err(e) if e.is_transient() => {
                std::thread::sleep(wait);
                wait *= 2;
            }
            other => return other,
        }
    }
    client.confirm(job_id, card_key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::{JobAttribute, Scp03Keys};
    use shared_crypto::model::{AttributeDigest, KeyCertificateBody, ServiceSet, TrustBundleBody};
    use shared_crypto::sig::sign;
    use shared_crypto::wire::ItemsBuf;
    use shared_crypto::P256Signer;

    fn key(seed: u8) -> P256Signer {
        P256Signer::from_bytes(&[seed; 32]).unwrap()
    }

    fn job() -> PersonalizationJob {
        PersonalizationJob {
            job_id: 1,
            state: JobState::Created,
            card_serial: "0102030405060708".into(),
            status_index: 3,
            scp03: Scp03Keys {
                kvn: card_applet::KVN,
                enc: "00".repeat(16),
                mac: "11".repeat(16),
                dek: "22".repeat(16),
            },
            root_key: hex::encode(key(1).public_key().to_sec1()),
            valid_from: 10,
            valid_until: u64::MAX / 2,
            attributes: vec![
                JobAttribute {
                    attribute: 7,
                    salt: "07".repeat(16),
                    value: "1f".into(),
                },
                JobAttribute {
                    attribute: 1,
                    salt: "01".repeat(16),
                    value: hex::encode("Wang"),
                },
            ],
            initial_points: 0,
        }
    }

    /// A credential as the server would issue it for `job` and `card_key`, changed by `edit`.
    fn credential(
        job: &PersonalizationJob,
        card_key: &[u8; 33],
        issuer: &P256Signer,
        edit: impl FnOnce(&mut CredentialBody<'_>),
    ) -> Vec<u8> {
        let attrs = job_attributes(job).unwrap();
        let digests: ItemsBuf = attrs
            .iter()
            .map(|(id, salt, value)| AttributeDigest {
                attribute: *id,
                digest: attribute_digest(salt, *id, value),
            })
            .collect();
        let mut body = CredentialBody {
            card_serial: hex_array(Phrase::same("serial"), &job.card_serial).unwrap(),
            status_index: job.status_index,
            valid_from: job.valid_from,
            valid_until: job.valid_until,
            card_key: shared_crypto::wire::ByteArray(*card_key),
            digests: digests.as_items(),
        };
        edit(&mut body);
        sign(&body, &[], issuer).unwrap()
    }

    fn bundle(root: &P256Signer, issuer: &P256Signer) -> Vec<u8> {
        let body = KeyCertificateBody {
            key_id: issuer.public_key().key_id(),
            role: Role::Issuer,
            subject: "office",
            region: 0,
            services: ServiceSet::NONE,
            public_key: issuer.public_key().to_bytes(),
            valid_from: 0,
            valid_until: u64::MAX / 2,
        };
        let c = sign(&body, &[], root).unwrap();
        let certs: ItemsBuf = [Signed::decode(&c).unwrap()].into_iter().collect();
        sign(
            &TrustBundleBody {
                epoch: 1,
                issued_at: 0,
                certs: certs.as_items(),
            },
            &[],
            root,
        )
        .unwrap()
    }

    #[test]
    fn every_personalization_error_says_what_to_do_in_both_languages() {
        let reader = String::from("Virtual PCD 00 00");
        let unreachable = || ServerError::Unreachable {
            url: "http://127.0.0.1:9/api/v1/personalization-jobs".into(),
            detail: "Connection refused".into(),
        };
        let journal: anyhow::Error = crate::i18n::Failure::new(
            crate::i18n::reading(std::path::Path::new("/tmp/journal.json")),
            std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        )
        .into();
        let all = [
            PersoError::AlreadyPersonalized {
                reader: reader.clone(),
            },
            PersoError::Blocked {
                reader: reader.clone(),
            },
            PersoError::Card(CardError::Status {
                step: "PUT DATA / SET STATUS",
                sw: 0x6982,
                meaning: tap::sw_meaning(0x6982),
            }),
            PersoError::Card(CardError::Transport(ReaderError::CardLost(
                pcsc::Error::RemovedCard,
            ))),
            PersoError::Reader(ReaderError::NoCard),
            PersoError::Server(unreachable()),
            PersoError::Server(ServerError::Api {
                status: 409,
                code: "not_approved".into(),
                message: "application 12 is not approved".into(),
            }),
            PersoError::BadJob(Text::new(
                "the credential certifies another card key",
                "凭证认证的是另一张卡的公钥",
            )),
            PersoError::Journal(journal),
        ];
        for e in &all {
            match e {
                PersoError::AlreadyPersonalized { .. }
                | PersoError::Blocked { .. }
                | PersoError::Card(_)
                | PersoError::Reader(_)
                | PersoError::Server(_)
                | PersoError::BadJob(_)
                | PersoError::Journal(_) => crate::i18n::check(&format!("{e:?}"), e),
            }
        }
        // A server outage says that nothing is lost, in both languages.
        let down = PersoError::Server(unreachable());
        assert!(down.to_string().contains("run the same command again"));
        assert!(down.localized(Lang::Zh).contains("再运行一次同一条命令"));
        // The journal's own failure is rendered in the language too.
        let zh = all[8].localized(Lang::Zh);
        assert!(
            zh.starts_with("个人化日志出错：读取 /tmp/journal.json 时出错："),
            "{zh}"
        );
    }

    #[test]
    fn inconsistent_jobs_are_explained_in_both_languages() {
        let mut bad = job();
        bad.attributes[0].attribute = 99;
        bad.scp03.enc = "zz".into();
        let errors = [
            job_attributes(&bad).err(),
            static_keys(&bad).err(),
            check_credential(&job(), &[1, 2, 3], &[2; 33], &[], None).err(),
        ];
        for e in errors {
            let Some(PersoError::BadJob(why)) = e else {
                panic!("{e:?}")
            };
            crate::i18n::check_pair("bad job", &why.en, &why.zh);
        }
        let wrong = [
            host_err("SCP03 / GENERATE KEY PAIR", HostError::Malformed),
            host_err(
                "PUT DATA / SET STATUS",
                HostError::NotBlank(LifeCycle::Personalized),
            ),
            host_err("PUT DATA / SET STATUS", HostError::Encoding),
            host_err("PUT DATA / SET STATUS", HostError::Sign),
            host_err("GET DATA (div data)", HostError::Status(0x6A88)),
        ];
        for e in &wrong {
            crate::i18n::check(&format!("{e:?}"), e);
        }
    }

    #[test]
    fn the_result_reads_in_both_languages() {
        let done = Personalized {
            reader: "Virtual PCD 00 00".into(),
            application_id: 12,
            job_id: 7,
            card_serial: "0102030405060708".into(),
            status_index: 3,
            card_public_key: "02ab".into(),
            resumed_job: true,
            finished_interrupted: false,
            seconds: 0.25,
            apdus: 31,
        };
        let en = done.human();
        assert!(en.starts_with(
            "personalized the card in Virtual PCD 00 00 (resumed the application's unfinished \
             job)\napplication:  12\n"
        ));
        let zh = done.human_in(Lang::Zh);
        crate::i18n::check_pair("human", &en, &zh);
        let columns = crate::i18n::value_columns(&zh);
        assert_eq!(columns.len(), 6, "{zh}");
        assert!(columns.iter().all(|c| *c == columns[0]), "{zh}");
    }

    #[test]
    fn attributes_come_out_in_id_order_and_junk_is_refused() {
        let j = job();
        let attrs = job_attributes(&j).unwrap();
        assert_eq!(attrs[0].0, AttributeId::Name);
        assert_eq!(attrs[1].0, AttributeId::Entitlements);
        let mut bad = job();
        bad.attributes[0].attribute = 99;
        assert!(matches!(job_attributes(&bad), Err(PersoError::BadJob(_))));
        let mut bad = job();
        bad.attributes[0].salt = "00".into();
        assert!(matches!(job_attributes(&bad), Err(PersoError::BadJob(_))));
        let mut bad = job();
        bad.scp03.enc = "zz".into();
        assert!(matches!(static_keys(&bad), Err(PersoError::BadJob(_))));
    }

    #[test]
    fn the_credential_must_match_the_job_and_the_card_before_the_card_is_locked() {
        let j = job();
        let (root, issuer) = (key(1), key(2));
        let card_key = key(3).public_key().to_sec1();
        let attrs = job_attributes(&j).unwrap();
        let b = bundle(&root, &issuer);
        let trust = Some((&root.public_key(), b.as_slice()));
        let good = credential(&j, &card_key, &issuer, |_| {});
        check_credential(&j, &good, &card_key, &attrs, trust).unwrap();
        check_credential(&j, &good, &card_key, &attrs, None).unwrap();

        let other_key = key(4).public_key().to_sec1();
        type TrustRef<'a> = Option<(&'a PublicKey, &'a [u8])>;
        let cases: Vec<(&str, Vec<u8>, [u8; 33], TrustRef<'_>)> = vec![
            ("another card key", good.clone(), other_key, trust),
            (
                "another serial",
                credential(&j, &card_key, &issuer, |c| c.card_serial = [9; 8]),
                card_key,
                trust,
            ),
            (
                "another index",
                credential(&j, &card_key, &issuer, |c| c.status_index = 4),
                card_key,
                trust,
            ),
            (
                "no digests",
                credential(&j, &card_key, &issuer, |c| {
                    c.digests = shared_crypto::wire::Items::empty()
                }),
                card_key,
                trust,
            ),
            (
                "an unknown issuer",
                credential(&j, &card_key, &key(5), |_| {}),
                card_key,
                trust,
            ),
            ("garbage", vec![1, 2, 3], card_key, None),
        ];
        for (what, cred, ck, t) in cases {
            match check_credential(&j, &cred, &ck, &attrs, t) {
                Err(PersoError::BadJob(_)) => {}
                other => panic!("{what}: {other:?}"),
            }
        }
        // A digest that does not match the job's value.
        let mut changed = job();
        changed.attributes[1].value = hex::encode("Zhao");
        let cattrs = job_attributes(&changed).unwrap();
        assert!(matches!(
            check_credential(&changed, &good, &card_key, &cattrs, trust),
            Err(PersoError::BadJob(m)) if m.en.contains("digest")
        ));
    }
}
