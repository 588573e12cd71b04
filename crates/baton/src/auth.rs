//! Who may do what: API tokens, their roles, and the one table that says which
//! role every API endpoint needs.
//!
//! A token is `baton_` and 48 hex digits of randomness; the store keeps only its
//! SHA-256, so a copied database yields no usable token. Roles nest: a `viewer`
//! reads; an `operator` also moves rollouts (deploy, promote, pause, resume,
//! abort, approve, retry, rollback, record and replay traffic); an `admin` also
//! applies and deletes specs, manages tokens and stops everything. A token may be
//! limited to some apps. Pure: the middleware in `api` does the I/O.

use serde::{Deserialize, Serialize};
use sha2::Digest;

/// What a token may do. Ordered: each role may do everything the one before may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// `viewer`, `operator` or `admin`; the error says which are valid.
    pub fn parse(text: &str) -> Result<Role, String> {
        match text {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role {other:?}: use viewer (read), operator (move rollouts) or admin \
                 (also apply specs and manage tokens)"
            )),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a request asks to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Status, history, events, plans, diffs, hosts, metrics.
    Read,
    Deploy,
    Promote,
    Pause,
    Resume,
    Abort,
    Approve,
    Retry,
    Rollback,
    /// Record an app's requests (`baton mirror record`).
    Record,
    /// Replay recorded requests against a preview (`baton mirror replay`).
    Replay,
    /// Register an app or change its spec.
    Apply,
    /// Remove an app.
    Delete,
    /// Stop every instance, the router and the control plane.
    Down,
    /// Create, list and revoke tokens.
    ManageTokens,
}

impl Action {
    /// The least role that may do it.
    pub fn needs(self) -> Role {
        match self {
            Action::Read => Role::Viewer,
            Action::Deploy
            | Action::Promote
            | Action::Pause
            | Action::Resume
            | Action::Abort
            | Action::Approve
            | Action::Retry
            | Action::Rollback
            | Action::Record
            | Action::Replay => Role::Operator,
            Action::Apply | Action::Delete | Action::Down | Action::ManageTokens => Role::Admin,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Deploy => "deploy",
            Action::Promote => "promote",
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Abort => "abort",
            Action::Approve => "approve",
            Action::Retry => "retry",
            Action::Rollback => "rollback",
            Action::Record => "record",
            Action::Replay => "replay",
            Action::Apply => "apply",
            Action::Delete => "delete",
            Action::Down => "down",
            Action::ManageTokens => "manage_tokens",
        }
    }

    /// Whether it changes something (and so goes to the audit log).
    pub fn mutates(self) -> bool {
        self != Action::Read
    }
}

/// Who is calling: a token's name, role and apps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub name: String,
    pub role: Role,
    /// The apps it may act on; empty: every app.
    pub apps: Vec<String>,
}

impl Identity {
    /// Whether it may do `action` (on `app`, when the action is about one); the
    /// error says why not, for the 403 answer.
    pub fn may(&self, action: Action, app: Option<&str>) -> Result<(), String> {
        if self.role < action.needs() {
            return Err(format!(
                "{} (role {}) may not {}: it needs the {} role",
                self.name,
                self.role,
                action.as_str().replace('_', " "),
                action.needs()
            ));
        }
        match app {
            Some(app) if !self.apps.is_empty() && !self.apps.iter().any(|a| a == app) => {
                Err(format!(
                    "{} may only act on {}, not on {app}",
                    self.name,
                    self.apps.join(", ")
                ))
            }
            // A token limited to some apps acts on apps only, not on the whole
            // control plane (down, tokens).
            None if !self.apps.is_empty() && action.mutates() && action != Action::Apply => {
                Err(format!(
                    "{} is limited to {}; {} is for tokens not limited to apps",
                    self.name,
                    self.apps.join(", "),
                    action.as_str().replace('_', " ")
                ))
            }
            _ => Ok(()),
        }
    }
}

/// The action an API request asks for, and the app it is about, for every
/// endpoint of the API (`None`: no token needed, such as the health check).
/// Unknown paths need a valid token (of any role) and then get 404.
pub fn action_of(method: &http::Method, path: &str) -> Option<(Action, Option<String>)> {
    use http::Method;
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let get = *method == Method::GET || *method == Method::HEAD;
    let action = match (parts.as_slice(), method) {
        (["v1", "health"], _) => return None,
        // The dashboard's page and assets: it asks for a token itself.
        ([] | [""], _) if get => return None,
        (["ui", ..], _) if get => return None,
        (["v1", "apps"], _) if get => (Action::Read, None),
        (["v1", "apps"], &Method::POST) => (Action::Apply, None),
        (["v1", "apps", app], _) if get => (Action::Read, Some(*app)),
        (["v1", "apps", app, "plan" | "history" | "events" | "mirror"], _) if get => {
            (Action::Read, Some(*app))
        }
        (["v1", "apps", app, "mirror", "record"], _) if get => (Action::Read, Some(*app)),
        (["v1", "apps", app, "mirror", "record"], &Method::POST | &Method::DELETE) => {
            (Action::Record, Some(*app))
        }
        (["v1", "apps", app, "mirror", "replay"], &Method::POST) => (Action::Replay, Some(*app)),
        (["v1", "apps", app, verb], &Method::POST) => {
            let action = match *verb {
                "deploy" => Action::Deploy,
                "promote" => Action::Promote,
                "pause" => Action::Pause,
                "resume" => Action::Resume,
                "abort" => Action::Abort,
                "approve" => Action::Approve,
                "retry" => Action::Retry,
                "rollback" => Action::Rollback,
                "delete" => Action::Delete,
                // Not an endpoint: any valid token, then 404.
                _ => Action::Read,
            };
            (action, Some(*app))
        }
        (["v1", "hosts"], _) if get => (Action::Read, None),
        (["v1", "down"], &Method::POST) => (Action::Down, None),
        (["v1", "tokens"], _) | (["v1", "tokens", _], _) => (Action::ManageTokens, None),
        (["v1", "whoami"], _) => (Action::Read, None),
        _ => (Action::Read, None),
    };
    Some((action.0, action.1.map(str::to_owned)))
}

/// Length of a token's random part, in bytes.
const SECRET_BYTES: usize = 24;
/// Every token starts with it, so a leaked one is easy to spot (secret scanners).
pub const TOKEN_PREFIX: &str = "baton_";

/// A new token: `baton_` and 48 hex digits from the OS's random source.
pub fn new_token() -> std::io::Result<String> {
    let mut secret = [0u8; SECRET_BYTES];
    getrandom::fill(&mut secret).map_err(std::io::Error::other)?;
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{TOKEN_PREFIX}{hex}"))
}

/// What the store keeps of a token: its SHA-256, hex.
pub fn token_hash(token: &str) -> String {
    sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    fn who(role: Role, apps: &[&str]) -> Identity {
        Identity {
            name: format!("{role}-token"),
            role,
            apps: apps.iter().map(|a| a.to_string()).collect(),
        }
    }

    /// Every endpoint of the API against every role: allowed, or refused.
    #[test]
    fn each_role_against_each_endpoint() {
        use Role::*;
        // (method, path, least role allowed; None: no token needed)
        let table: &[(Method, &str, Option<Role>)] = &[
            (Method::GET, "/v1/health", None),
            (Method::GET, "/v1/apps", Some(Viewer)),
            (Method::POST, "/v1/apps", Some(Admin)),
            (Method::GET, "/v1/apps/web", Some(Viewer)),
            (Method::POST, "/v1/apps/web/deploy", Some(Operator)),
            (Method::POST, "/v1/apps/web/abort", Some(Operator)),
            (Method::POST, "/v1/apps/web/promote", Some(Operator)),
            (Method::POST, "/v1/apps/web/pause", Some(Operator)),
            (Method::POST, "/v1/apps/web/resume", Some(Operator)),
            (Method::POST, "/v1/apps/web/approve", Some(Operator)),
            (Method::POST, "/v1/apps/web/retry", Some(Operator)),
            (Method::POST, "/v1/apps/web/rollback", Some(Operator)),
            (Method::GET, "/v1/apps/web/plan", Some(Viewer)),
            (Method::GET, "/v1/apps/web/history", Some(Viewer)),
            (Method::GET, "/v1/apps/web/events", Some(Viewer)),
            (Method::POST, "/v1/apps/web/delete", Some(Admin)),
            (Method::GET, "/v1/apps/web/mirror", Some(Viewer)),
            (Method::POST, "/v1/apps/web/mirror/record", Some(Operator)),
            (Method::GET, "/v1/apps/web/mirror/record", Some(Viewer)),
            (Method::DELETE, "/v1/apps/web/mirror/record", Some(Operator)),
            (Method::POST, "/v1/apps/web/mirror/replay", Some(Operator)),
            (Method::GET, "/v1/hosts", Some(Viewer)),
            (Method::POST, "/v1/down", Some(Admin)),
            (Method::GET, "/v1/tokens", Some(Admin)),
            (Method::POST, "/v1/tokens", Some(Admin)),
            (Method::DELETE, "/v1/tokens/ci", Some(Admin)),
            (Method::GET, "/v1/whoami", Some(Viewer)),
            (Method::GET, "/v1/stream", Some(Viewer)),
            (Method::GET, "/v1/audit", Some(Viewer)),
            (Method::GET, "/", None),
            (Method::GET, "/ui/", None),
            (Method::GET, "/ui/app.js", None),
            (Method::POST, "/ui/app.js", Some(Viewer)),
            (Method::GET, "/metrics", Some(Viewer)),
            (Method::GET, "/v1/unknown", Some(Viewer)),
        ];
        for (method, path, least) in table {
            let asked = action_of(method, path);
            match least {
                None => assert_eq!(asked, None, "{method} {path}"),
                Some(least) => {
                    let (action, app) =
                        asked.unwrap_or_else(|| panic!("{method} {path} needs a token"));
                    assert_eq!(action.needs(), *least, "{method} {path}");
                    for role in [Viewer, Operator, Admin] {
                        let ok = who(role, &[]).may(action, app.as_deref()).is_ok();
                        assert_eq!(ok, role >= *least, "{role} {method} {path}");
                    }
                }
            }
        }
    }

    #[test]
    fn tokens_limited_to_apps() {
        let ci = who(Role::Operator, &["web"]);
        assert!(ci.may(Action::Deploy, Some("web")).is_ok());
        let e = ci.may(Action::Deploy, Some("shop")).unwrap_err();
        assert!(e.contains("may only act on web, not on shop"), "{e}");
        assert!(ci.may(Action::Read, None).is_ok(), "lists what it may see");
        let admin = who(Role::Admin, &["web"]);
        assert!(admin.may(Action::Apply, Some("web")).is_ok());
        assert!(admin.may(Action::Apply, Some("shop")).is_err());
        assert!(admin.may(Action::Down, None).is_err());
        assert!(admin.may(Action::ManageTokens, None).is_err());
        let e = who(Role::Viewer, &[])
            .may(Action::Deploy, Some("web"))
            .unwrap_err();
        assert_eq!(
            e,
            "viewer-token (role viewer) may not deploy: it needs the operator role"
        );
    }

    #[test]
    fn tokens_are_random_and_kept_hashed() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_ne!(a, b);
        assert!(
            a.starts_with(TOKEN_PREFIX) && a.len() == TOKEN_PREFIX.len() + 48,
            "{a}"
        );
        assert_eq!(token_hash(&a).len(), 64);
        assert_ne!(token_hash(&a), token_hash(&b));
        let mut h = http::HeaderMap::new();
        h.insert("authorization", format!("Bearer {a}").parse().unwrap());
        assert_eq!(bearer(&h), Some(a.as_str()));
        h.insert("authorization", "Basic eDp5".parse().unwrap());
        assert_eq!(bearer(&h), None);
        assert_eq!(Role::parse("admin"), Ok(Role::Admin));
        assert!(Role::parse("root").unwrap_err().contains("viewer"));
    }
}
