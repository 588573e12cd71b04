//! A small JSON client for the control plane's API, used by the CLI and tests.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

#[derive(Clone)]
pub struct ApiClient {
    base: String,
    /// Sent as `Authorization: Bearer`; the server records its name as the operator.
    token: Option<String>,
    http: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// Why an https:// server cannot be trusted (a bad `BATON_CA_CERT`).
    tls_error: Option<String>,
}

/// The token the CLI sends to `server`: `BATON_TOKEN`, else the one `baton login`
/// saved for it, else, for a control plane on this machine, the admin token its
/// first start wrote to its data dir (`BATON_DATA_DIR`, else `.baton`) when this
/// user can read it.
pub fn token_for(server: &str) -> Option<String> {
    if let Some(t) = std::env::var("BATON_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
    {
        return Some(t.trim().to_string());
    }
    if let Some(t) = saved_logins().remove(server) {
        return Some(t);
    }
    let loopback = server
        .parse::<hyper::Uri>()
        .ok()
        .and_then(|u| u.host().map(str::to_owned))
        .is_some_and(|h| {
            h == "localhost"
                || h.trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        });
    if !loopback {
        return None;
    }
    let dir = std::env::var_os("BATON_DATA_DIR")
        .map_or_else(|| ".baton".into(), std::path::PathBuf::from);
    std::fs::read_to_string(crate::tokens::admin_token_path(&dir))
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// Where `baton login` keeps tokens, by server: `$XDG_CONFIG_HOME/baton/logins.json`,
/// else `~/.config/baton/logins.json`.
fn logins_path() -> Option<std::path::PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".config")))?;
    Some(base.join("baton").join("logins.json"))
}

fn saved_logins() -> std::collections::BTreeMap<String, String> {
    logins_path()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// Saves `token` for `server` (the file is readable by this user only).
pub fn save_login(server: &str, token: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = logins_path().ok_or("neither XDG_CONFIG_HOME nor HOME is set")?;
    let mut logins = saved_logins();
    logins.insert(server.to_string(), token.to_string());
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let tmp = path.with_extension("json.tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(
            serde_json::to_string_pretty(&logins)
                .unwrap_or_default()
                .as_bytes(),
        )?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    write().map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Where the CLI looks for the control plane unless told otherwise.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7077";

/// A failed call: either the server could not be reached, or it answered with an error.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No answer: nothing listens there, or the connection broke.
    #[error("cannot reach the baton control plane at {url}: {detail}\n  hint: {}", start_hint(.url))]
    Unreachable { url: String, detail: String },
    #[error("{message}")]
    Api { status: StatusCode, message: String },
}

impl ClientError {
    /// 4xx answers are the caller's mistake (exit 2); the rest are failures (exit 1).
    pub fn is_bad_input(&self) -> bool {
        matches!(self, ClientError::Api { status, .. } if status.is_client_error())
    }

    /// The control plane did not answer at all.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ClientError::Unreachable { .. })
    }
}

/// How to get a control plane answering at `url`: `baton serve` listens on
/// the default address, any other one needs its `--api`.
fn start_hint(url: &str) -> String {
    let authority = url
        .parse::<hyper::Uri>()
        .ok()
        .and_then(|u| u.authority().map(|a| a.to_string()));
    let serve = match authority {
        Some(a) if url != DEFAULT_SERVER => format!("`baton serve --api {a}`"),
        _ => "`baton serve`".to_string(),
    };
    format!(
        "is it running? start one with {serve}, or point --server (or BATON_SERVER) at the one you run"
    )
}

/// An error with its causes: hyper's own message ("client error (Connect)")
/// does not say that the connection was refused.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Check a control plane address before using it: `http://HOST:PORT`.
/// The error says what is wrong and what to write instead.
pub fn check_server_url(url: &str) -> Result<(), String> {
    let bad = |why: &str, fix: String| {
        Err(format!(
            "the control plane address {url:?} (--server or BATON_SERVER) {why}; {fix}"
        ))
    };
    if !url.contains("://") {
        return bad("has no scheme", format!("write it as http://{url}"));
    }
    let uri = match url.parse::<hyper::Uri>() {
        Ok(u) => u,
        Err(e) => {
            return bad(
                &format!("is not a URL ({e})"),
                format!("write it as {DEFAULT_SERVER}"),
            );
        }
    };
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return bad(
            "does not start with http:// or https://",
            format!(
                "write it as {DEFAULT_SERVER}, or https://HOST:PORT for a control plane serving TLS"
            ),
        );
    }
    if uri.authority().is_none_or(|a| a.host().is_empty()) {
        return bad("names no host", format!("write it as {DEFAULT_SERVER}"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return bad(
            "has a path",
            "give only the scheme, host and port, e.g. http://127.0.0.1:7077".into(),
        );
    }
    Ok(())
}

impl ApiClient {
    pub fn new(base: &str, token: Option<String>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(3)));
        connector.enforce_http(false);
        let (tls, tls_error) = match crate::tls::client_config() {
            Ok(c) => (c, None),
            // Plain http:// still works; https:// reports this.
            Err(e) => (
                rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .expect("default protocol versions")
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
                Some(e),
            ),
        };
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        ApiClient {
            base: base.trim_end_matches('/').to_string(),
            token,
            http: Client::builder(TokioExecutor::new()).build(https),
            tls_error,
        }
    }

    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Result<Value, ClientError> {
        self.call(Method::DELETE, path, None).await
    }

    /// A POST that may take long (a replay starts an instance and sends every
    /// recorded request): waits up to `timeout` for the answer.
    pub async fn post_slow(
        &self,
        path: &str,
        body: &Value,
        timeout: Duration,
    ) -> Result<Value, ClientError> {
        self.call_within(Method::POST, path, Some(body), timeout)
            .await
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        self.call_within(method, path, body, Duration::from_secs(30))
            .await
    }

    async fn call_within(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<Value, ClientError> {
        let url = format!("{}{}", self.base, path);
        let unreachable = |detail: String| ClientError::Unreachable {
            url: self.base.clone(),
            detail,
        };
        if let (true, Some(e)) = (self.base.starts_with("https://"), &self.tls_error) {
            return Err(unreachable(e.clone()));
        }
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        let mut req = Request::builder()
            .method(method)
            .uri(&url)
            .header("content-type", "application/json");
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req
            .body(Full::new(Bytes::from(payload)))
            .map_err(|e| unreachable(e.to_string()))?;
        let resp = tokio::time::timeout(timeout, self.http.request(req))
            .await
            .map_err(|_| unreachable(format!("timed out after {}s", timeout.as_secs())))?
            .map_err(|e| unreachable(with_causes(&e)))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if !status.is_success() {
            let message = value
                .get("error")
                .and_then(|e| e.as_str())
                .map(str::to_string)
                .unwrap_or_else(|| format!("HTTP {status}: {}", String::from_utf8_lossy(&bytes)));
            return Err(ClientError::Api { status, message });
        }
        Ok(value)
    }
}
