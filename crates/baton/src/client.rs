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
    operator: String,
    http: Client<HttpConnector, Full<Bytes>>,
}

/// A failed call: either the server could not be reached, or it answered with an error.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the baton control plane at {url}: {detail}\n  hint: start it with `baton serve`, or point --server / BATON_SERVER at it"
    )]
    Unreachable { url: String, detail: String },
    #[error("{message}")]
    Api { status: StatusCode, message: String },
}

impl ClientError {
    /// 4xx answers are the caller's mistake (exit 2); the rest are failures (exit 1).
    pub fn is_bad_input(&self) -> bool {
        matches!(self, ClientError::Api { status, .. } if status.is_client_error())
    }
}

impl ApiClient {
    pub fn new(base: &str, operator: &str) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(3)));
        ApiClient {
            base: base.trim_end_matches('/').to_string(),
            operator: operator.to_string(),
            http: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.call(Method::POST, path, Some(body)).await
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let url = format!("{}{}", self.base, path);
        let unreachable = |detail: String| ClientError::Unreachable {
            url: self.base.clone(),
            detail,
        };
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        let req = Request::builder()
            .method(method)
            .uri(&url)
            .header("content-type", "application/json")
            .header("x-baton-operator", &self.operator)
            .body(Full::new(Bytes::from(payload)))
            .map_err(|e| unreachable(e.to_string()))?;
        let resp = tokio::time::timeout(Duration::from_secs(30), self.http.request(req))
            .await
            .map_err(|_| unreachable("timed out after 30s".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
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
