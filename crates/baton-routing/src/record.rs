//! Recording a slice of an app's real requests, so that a new version can be checked
//! against them before it takes any traffic (`baton mirror record`, then `replay`).
//!
//! The control plane arms a recording on a router (`POST /v1/record/{app}`), reads
//! what it caught (`GET`), and disarms it (`DELETE`). While armed, each eligible request
//! is copied as the client sent it, redacted, until the bound is reached. Nothing is recorded when disarmed,
//! and the cost then is one atomic load per request.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Most requests one recording keeps.
pub const MAX_RECORDED: usize = 100_000;

/// Body of `POST /v1/record/{app}`: what to record.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RecordSpec {
    /// Stop recording after this many requests (1..=[`MAX_RECORDED`]).
    pub max_requests: usize,
    /// Requests with a larger body are skipped (counted in `skipped`).
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Methods recorded; empty: every method.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Headers never recorded besides the credential ones
    /// ([`crate::mirror::CREDENTIAL_HEADERS`]).
    #[serde(default)]
    pub redact_headers: Vec<String>,
}

fn default_max_body() -> usize {
    64 * 1024
}

/// One recorded request: what a replay sends again.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RecordedRequest {
    /// Request method.
    pub method: String,
    /// Path and query, as the client sent them.
    pub uri: String,
    /// Headers as the client sent them, without hop-by-hop and credential headers.
    pub headers: Vec<(String, String)>,
    /// The body as UTF-8 text (bodies that are not text are skipped).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub body: String,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// Answer of `GET` and `DELETE /v1/record/{app}`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct RecordingReport {
    /// Whether the recording is still taking requests.
    pub armed: bool,
    /// Requests recorded, oldest first.
    pub requests: Vec<RecordedRequest>,
    /// Eligible requests not recorded (a body too large, not text, or not complete).
    pub skipped: u64,
}

/// The recording state of one app; survives config pushes.
#[derive(Default)]
pub struct RecordState {
    armed: AtomicBool,
    inner: Mutex<Recording>,
}

#[derive(Default)]
struct Recording {
    spec: Option<RecordSpec>,
    requests: Vec<RecordedRequest>,
    skipped: u64,
}

impl RecordState {
    fn lock(&self) -> MutexGuard<'_, Recording> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether requests should be offered. One relaxed load: the hot path's only cost.
    #[inline]
    pub fn armed(&self) -> bool {
        self.armed.load(Ordering::Relaxed)
    }

    /// Starts a new recording, dropping what an earlier one kept.
    pub fn arm(&self, spec: RecordSpec) {
        let mut r = self.lock();
        *r = Recording {
            spec: Some(spec),
            ..Recording::default()
        };
        self.armed.store(true, Ordering::Relaxed);
    }

    /// What was recorded; `disarm` also stops the recording and forgets it.
    pub fn report(&self, disarm: bool) -> RecordingReport {
        let mut r = self.lock();
        let report = RecordingReport {
            armed: self.armed(),
            requests: r.requests.clone(),
            skipped: r.skipped,
        };
        if disarm {
            self.armed.store(false, Ordering::Relaxed);
            *r = Recording::default();
        }
        report
    }

    /// Records one request if the recording wants it. `body`: the whole body when
    /// the router read it (`None`: a streamed body, which cannot be kept).
    pub fn offer(
        &self,
        method: &http::Method,
        uri: &http::Uri,
        headers: &http::HeaderMap,
        body: Option<&Bytes>,
    ) {
        let mut r = self.lock();
        let Some(spec) = r.spec.as_ref() else {
            return;
        };
        if !spec.methods.is_empty() && !spec.methods.iter().any(|m| m == method.as_str()) {
            return;
        }
        let body = match body.map(|b| std::str::from_utf8(b)) {
            Some(Ok(text)) if text.len() <= spec.max_body_bytes => text.to_string(),
            None if !has_body(headers) => String::new(),
            _ => {
                r.skipped += 1;
                return;
            }
        };
        let kept = headers
            .iter()
            .filter(|(name, _)| {
                !crate::mirror::is_credential(name.as_str(), &spec.redact_headers)
                    && !is_hop_by_hop(name)
            })
            .filter_map(|(name, v)| Some((name.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect();
        let max = spec.max_requests.min(MAX_RECORDED);
        r.requests.push(RecordedRequest {
            method: method.as_str().to_string(),
            uri: uri
                .path_and_query()
                .map_or_else(|| uri.path().to_string(), |pq| pq.as_str().to_string()),
            headers: kept,
            body,
            at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        });
        if r.requests.len() >= max {
            self.armed.store(false, Ordering::Relaxed);
            r.spec = None;
        }
    }
}

fn has_body(headers: &http::HeaderMap) -> bool {
    headers.contains_key(http::header::TRANSFER_ENCODING)
        || headers
            .get(http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

fn is_hop_by_hop(name: &http::HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "content-length"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header_map;

    #[test]
    fn records_redacted_requests_up_to_the_bound() {
        let st = RecordState::default();
        let get = http::Method::GET;
        let uri: http::Uri = "/items?page=2".parse().unwrap();
        let h = header_map(&[
            ("accept", "application/json"),
            ("authorization", "Bearer secret"),
            ("cookie", "session=secret"),
            ("x-api-key", "secret"),
            ("connection", "keep-alive"),
        ]);
        st.offer(&get, &uri, &h, Some(&Bytes::new()));
        assert!(st.report(false).requests.is_empty(), "not armed: nothing");
        st.arm(RecordSpec {
            max_requests: 2,
            max_body_bytes: 4,
            methods: vec![],
            redact_headers: vec!["X-Api-Key".into()],
        });
        assert!(st.armed());
        st.offer(&get, &uri, &h, Some(&Bytes::new()));
        // Too large a body: skipped, counted.
        st.offer(
            &http::Method::POST,
            &uri,
            &h,
            Some(&Bytes::from_static(b"12345")),
        );
        // A body that is not text: skipped.
        st.offer(
            &http::Method::POST,
            &uri,
            &h,
            Some(&Bytes::from_static(b"\xff")),
        );
        st.offer(
            &http::Method::POST,
            &uri,
            &h,
            Some(&Bytes::from_static(b"1234")),
        );
        assert!(!st.armed(), "the bound stops the recording");
        st.offer(&get, &uri, &h, Some(&Bytes::new()));
        let r = st.report(true);
        assert_eq!(r.requests.len(), 2);
        assert_eq!(r.skipped, 2);
        assert_eq!(r.requests[0].uri, "/items?page=2");
        assert_eq!(
            r.requests[0].headers,
            vec![("accept".to_string(), "application/json".to_string())]
        );
        assert_eq!(r.requests[1].body, "1234");
        let text = serde_json::to_string(&r).unwrap();
        assert!(!text.contains("secret"), "{text}");
        assert!(st.report(false).requests.is_empty(), "disarm forgets");
    }
}
