//! API tokens on disk: created, looked up by their hash, revoked; and the admin
//! token the first `baton serve` writes to its data dir, so that the person who
//! started it can use it (mode 0600: only they can read it).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use baton_store::TokenRecord;

use crate::auth::{Identity, Role};
use crate::controller::Shared;

/// Name of the token the first start creates.
pub const ADMIN_TOKEN_NAME: &str = "admin";

/// Where the first start writes the admin token.
pub fn admin_token_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.token")
}

/// Why a token was not created.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Bad input; the message says how to fix it.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// The identity of `token`, if it is a live token.
pub fn identify(shared: &Shared, token: &str) -> anyhow::Result<Option<Identity>> {
    let Some(rec) = shared
        .store()
        .token_by_hash(&crate::auth::token_hash(token))?
    else {
        return Ok(None);
    };
    let role = Role::parse(&rec.role).map_err(anyhow::Error::msg)?;
    Ok(Some(Identity {
        name: rec.name,
        role,
        apps: rec.apps,
    }))
}

/// Creates token `name` and returns it (the only time it is seen: the store
/// keeps its hash).
pub fn create(
    shared: &Shared,
    name: &str,
    role: Role,
    apps: &[String],
    by: &str,
) -> Result<String, TokenError> {
    let valid_name = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b));
    if !valid_name {
        return Err(TokenError::Invalid(format!(
            "token name {name:?}: use 1 to 64 letters, digits, '.', '_', '-' or '@' \
             (it is recorded as the operator of what the token does)"
        )));
    }
    if let Some(bad) = apps.iter().find(|a| a.is_empty()) {
        return Err(TokenError::Invalid(format!("app name {bad:?} is empty")));
    }
    let mut store = shared.store();
    if store
        .list_tokens()
        .context("listing tokens")?
        .iter()
        .any(|t| t.name == name)
    {
        return Err(TokenError::Invalid(format!(
            "a token named {name:?} exists (or existed: names of revoked tokens are not reused); \
             pick another name"
        )));
    }
    let token = crate::auth::new_token().context("reading the OS's random source")?;
    store
        .create_token(&TokenRecord {
            name: name.to_string(),
            role: role.as_str().to_string(),
            apps: apps.to_vec(),
            hash: crate::auth::token_hash(&token),
            created_by: by.to_string(),
            created_ms: shared.now_ms(),
            revoked_ms: None,
        })
        .context("storing the token")?;
    Ok(token)
}

/// At start: when no token exists yet, creates the admin token and writes it to
/// the data dir (0600). Returns its path when it did.
pub fn bootstrap(shared: &Shared) -> anyhow::Result<Option<PathBuf>> {
    if !shared.store().list_tokens()?.is_empty() {
        return Ok(None);
    }
    let path = admin_token_path(&shared.data_dir);
    let token = create(shared, ADMIN_TOKEN_NAME, Role::Admin, &[], "baton serve")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let _ = std::fs::remove_file(&path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("writing the admin token to {}", path.display()))?;
    writeln!(f, "{token}").with_context(|| format!("writing {}", path.display()))?;
    Ok(Some(path))
}
