//! Creating an office (`init`) and opening it (`serve` and the other commands).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use sqlx::Row;

use crate::auth::{create_user, Role};
use crate::config::Config;
use crate::db::Db;
use crate::keys::{DataDir, OfficeIdentity, OfficeKeys};
use crate::AppState;

/// What `init` needs.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// The data directory to create (must not exist, or be empty).
    pub data: PathBuf,
    /// `postgres://...` to use PostgreSQL; `None` for the SQLite file in the data directory.
    pub database_url: Option<String>,
    /// Office name (certificate subjects).
    pub office: String,
    /// Office region code (0 = national).
    pub region: u32,
    /// Login name of the first admin.
    pub admin: String,
}

/// What `init` made.
#[derive(Debug, Clone)]
pub struct InitOutcome {
    /// The first admin's token (shown once).
    pub admin_token: String,
    /// Hex key id of the root key.
    pub office_id: String,
}

/// The database URL of a data directory: `DATABASE_URL` if given, else its SQLite file
/// (`create` only for `init`: every other command needs the file to exist already).
pub fn database_url(dir: &DataDir, given: Option<&str>, create: bool) -> String {
    match given {
        Some(u) if !u.is_empty() => u.to_owned(),
        _ => {
            let mode = if create { "rwc" } else { "rw" };
            format!("sqlite://{}?mode={mode}", dir.sqlite().display())
        }
    }
}

fn is_empty_dir(p: &Path) -> Result<bool> {
    Ok(fs::read_dir(p)
        .with_context(|| format!("reading {}", p.display()))?
        .next()
        .is_none())
}

/// Creates a new office: keys, certificates, trust bundle, configuration, database and the first
/// admin. Refuses, changing nothing, when the directory holds anything or the database is
/// already initialized. Everything is built in a sibling directory first and renamed into place.
pub async fn init(opts: &InitOptions) -> Result<InitOutcome> {
    let target = &opts.data;
    if target.exists() {
        if !target.is_dir() {
            bail!(
                "{} exists and is not a directory; nothing was changed",
                target.display()
            );
        }
        if !is_empty_dir(target)? {
            bail!(
                "{} exists and is not empty: it looks like an office already; `init` never \
                 overwrites one, and nothing was changed",
                target.display()
            );
        }
    }
    if let Some(url) = opts.database_url.as_deref().filter(|u| !u.is_empty()) {
        let db = Db::connect_only(url).await?;
        let taken = sqlx::query("SELECT COUNT(*) AS n FROM meta")
            .fetch_one(db.pool())
            .await
            .ok()
            .map(|r| r.try_get::<i64, _>("n").unwrap_or(1))
            .unwrap_or(0);
        db.close().await;
        if taken > 0 {
            bail!(
                "the database at DATABASE_URL already belongs to an office; use an empty \
                 database; nothing was changed"
            );
        }
    }
    let config = Config {
        office: opts.office.clone(),
        region: opts.region,
        ..Config::default()
    };
    config.check()?;
    crate::auth::check_user_name(&opts.admin).map_err(|e| anyhow!("admin name: {e}"))?;

    let name = target
        .file_name()
        .ok_or_else(|| anyhow!("{} has no directory name", target.display()))?
        .to_string_lossy()
        .into_owned();
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let staging = parent.join(format!(".{name}.init-{}", std::process::id()));
    if staging.exists() {
        fs::remove_dir_all(&staging)?;
    }
    fs::create_dir(&staging).with_context(|| format!("creating {}", staging.display()))?;
    let result = build(&staging, opts, &config).await;
    match result {
        Ok(outcome) => {
            if target.exists() {
                fs::remove_dir(target)?;
            }
            fs::rename(&staging, target)
                .with_context(|| format!("moving {} to {}", staging.display(), target.display()))?;
            Ok(outcome)
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&staging);
            Err(e)
        }
    }
}

async fn build(staging: &Path, opts: &InitOptions, config: &Config) -> Result<InitOutcome> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(staging, fs::Permissions::from_mode(0o700))?;
    let dir = DataDir::new(staging);
    let now = crate::now();
    let keys = OfficeKeys::generate(
        &dir,
        &OfficeIdentity {
            office: config.office.clone(),
            region: config.region,
            key_validity_days: config.key_validity_days,
        },
        now,
    )?;
    let mut text = serde_json::to_string_pretty(config)?;
    text.push('\n');
    crate::keys::write_public(&dir.config(), text.as_bytes())?;
    let url = database_url(&dir, opts.database_url.as_deref(), true);
    let db = Db::connect(&url).await?;
    if db.backend() == crate::db::Backend::Sqlite {
        // Encrypted or not, the registry is nobody else's business.
        fs::set_permissions(dir.sqlite(), fs::Permissions::from_mode(0o600))?;
    }
    let office_id = keys.office_id();
    let mut tx = db.begin_write().await?;
    sqlx::query("INSERT INTO meta (key, value) VALUES ('office_id', $1), ('created_at', $2)")
        .bind(&office_id)
        .bind(now.to_string())
        .execute(tx.conn())
        .await?;
    crate::status::init(&mut tx).await?;
    crate::distribution::store_rules(&mut tx, &keys, crate::distribution::Rules::default())
        .await
        .map_err(|e| anyhow!("{e}"))?;
    tx.audit(
        "cli",
        "office.init",
        format!("office:{office_id}"),
        serde_json::json!({"office": config.office, "region": config.region}),
    );
    let (_, token) = create_user(&mut tx, "cli", &opts.admin, Role::Admin)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    tx.commit().await?;
    db.close().await;
    Ok(InitOutcome {
        admin_token: token,
        office_id,
    })
}

/// Opens an existing office: configuration, keys, database (migrated to this version), and
/// the check that the database belongs to these keys.
pub async fn open(data: &Path, database_url: Option<&str>) -> Result<AppState> {
    let dir = DataDir::new(data);
    if !dir.config().exists() {
        bail!(
            "{} is not an office data directory (no config.json); create one with \
             `issuance-server init --data {}`",
            data.display(),
            data.display()
        );
    }
    let config = Config::load(&dir.config())?;
    let keys = OfficeKeys::load(&dir)?;
    let url = database_url_for(&dir, database_url)?;
    let db = Db::connect(&url).await?;
    let stored: Option<String> =
        sqlx::query_scalar("SELECT value FROM meta WHERE key = 'office_id'")
            .fetch_optional(db.pool())
            .await?;
    if stored.as_deref() != Some(keys.office_id().as_str()) {
        db.close().await;
        bail!(
            "the database does not belong to the keys in {} (office {} expected, {} found); \
             check DATABASE_URL",
            data.display(),
            keys.office_id(),
            stored.unwrap_or_else(|| "none".into())
        );
    }
    Ok(AppState::new(db, Arc::new(keys), config, dir))
}

fn database_url_for(dir: &DataDir, given: Option<&str>) -> Result<String> {
    let url = database_url(dir, given, false);
    if url.starts_with("sqlite:") && given.is_none_or(str::is_empty) && !dir.sqlite().exists() {
        bail!(
            "{} does not exist: this office's database is elsewhere (set DATABASE_URL to it)",
            dir.sqlite().display()
        );
    }
    Ok(url)
}

/// Creates a user from the command line; returns the token.
pub async fn add_user(state: &AppState, name: &str, role: Role) -> Result<String> {
    let mut tx = state.db.begin_write().await?;
    let (_, token) = create_user(&mut tx, "cli", name, role)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    tx.commit().await?;
    Ok(token)
}

/// The time `init` ran, from the database.
pub async fn created_at(db: &Db) -> Result<u64> {
    let v: String = sqlx::query_scalar("SELECT value FROM meta WHERE key = 'created_at'")
        .fetch_one(db.pool())
        .await?;
    v.parse().context("meta.created_at")
}
