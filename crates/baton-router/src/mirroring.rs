//! The I/O side of mirroring: a copy of a request sent to the version under test, off
//! the user's path, its answer compared with the user's ([`crate::mirror`] decides
//! what is copied and how answers compare).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri};
use http_body_util::BodyExt;

use crate::limits::Limits;
use crate::mirror::{Captured, Comparison, Difference};
use crate::table::{AppTable, MirrorState, MirrorTable};
use crate::upstream::{self, UpBody};

/// Marks the copies sent to a mirror target.
const X_BATON_MIRROR: HeaderName = HeaderName::from_static("x-baton-mirror");

/// The request head kept for a retry.
#[derive(Clone)]
pub(crate) struct Head {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
}

impl Head {
    pub(crate) fn from_parts(p: http::request::Parts) -> Self {
        Head {
            method: p.method,
            uri: p.uri,
            headers: p.headers,
        }
    }
}

/// The mirror copy of one request, decided before the first attempt.
pub(crate) struct MirrorPlan {
    pub app: Arc<AppTable>,
    pub head: Head,
    pub body: Option<Bytes>,
}

/// Frees a mirror slot when the copy's task ends.
struct MirrorSlot(Arc<MirrorState>);

impl Drop for MirrorSlot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The user's response as captured for a mirror comparison: chunks are shared with
/// what is sent (no copy on the user's path).
pub(crate) struct Tee {
    max: usize,
    len: usize,
    chunks: Vec<Bytes>,
    truncated: bool,
    status: u16,
    headers: Vec<(String, String)>,
    tx: tokio::sync::oneshot::Sender<PrimaryCapture>,
}

struct PrimaryCapture {
    status: u16,
    headers: Vec<(String, String)>,
    chunks: Vec<Bytes>,
    truncated: bool,
}

impl Tee {
    pub(crate) fn push(&mut self, d: &Bytes) {
        let room = self.max - self.len;
        if d.len() > room {
            self.truncated = true;
        }
        let n = d.len().min(room);
        if n > 0 {
            self.chunks.push(d.slice(..n));
            self.len += n;
        }
    }

    /// The captured body is known to be cut short.
    pub(crate) fn mark_truncated(&mut self) {
        self.truncated = true;
    }

    pub(crate) fn send(self) {
        let _ = self.tx.send(PrimaryCapture {
            status: self.status,
            headers: self.headers,
            chunks: self.chunks,
            truncated: self.truncated,
        });
    }
}

/// Starts the mirror copy of a request whose primary answered with `parts` from
/// version `primary`: spawns the copy (never awaited by the user's request) and
/// returns the tee that captures the user's response for the comparison. `None` when
/// the primary is the mirror version itself or too many copies are under way.
pub(crate) fn start_mirror(
    plan: MirrorPlan,
    primary: usize,
    status: StatusCode,
    response_headers: &HeaderMap,
    limits: &Limits,
) -> Option<Box<Tee>> {
    let m = plan.app.mirror.as_ref()?;
    if primary == m.version {
        return None;
    }
    let state = &m.state;
    if state.in_flight.fetch_add(1, Ordering::Relaxed) >= m.max_in_flight {
        state.in_flight.fetch_sub(1, Ordering::Relaxed);
        state.dropped.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    let slot = MirrorSlot(state.clone());
    let headers = m.rules.capture_headers(response_headers);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tee = Box::new(Tee {
        max: m.cfg.max_body_bytes,
        len: 0,
        chunks: Vec::new(),
        truncated: false,
        status: status.as_u16(),
        headers,
        tx,
    });
    tokio::spawn(run_mirror(plan, slot, rx, limits.clone()));
    Some(tee)
}

/// Sends the copy, waits for both responses, compares them and records the outcome.
async fn run_mirror(
    plan: MirrorPlan,
    slot: MirrorSlot,
    primary: tokio::sync::oneshot::Receiver<PrimaryCapture>,
    limits: Limits,
) {
    let Some(m) = plan.app.mirror.as_ref() else {
        return;
    };
    let mirrored =
        match tokio::time::timeout(limits.response_timeout, mirror_call(&plan, m, &limits)).await {
            Ok(r) => r,
            Err(_) => Err("the mirror did not answer in time".to_string()),
        };
    let primary = match tokio::time::timeout(limits.response_timeout, primary).await {
        Ok(Ok(p)) => p,
        // The user's response did not complete: nothing to compare with.
        _ => {
            slot.0.abandoned.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let body = match primary.chunks.len() {
        0 => Bytes::new(),
        1 => primary.chunks[0].clone(),
        _ => {
            let mut b = BytesMut::new();
            for c in &primary.chunks {
                b.extend_from_slice(c);
            }
            b.freeze()
        }
    };
    let primary = Captured {
        status: primary.status,
        headers: primary.headers,
        body,
        truncated: primary.truncated,
    };
    let (outcome, mirror) = match mirrored {
        Ok(c) => (m.rules.compare(&primary, &c), c),
        Err(error) => (
            Comparison::Mismatch {
                differences: vec![Difference::MirrorFailed { error }],
            },
            Captured::default(),
        ),
    };
    plan.app.versions[m.version]
        .counters
        .record_mirror(Instant::now(), outcome.is_match());
    let at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    m.state.samples().record(
        plan.head.method.as_str(),
        plan.head.uri.path(),
        &primary,
        &mirror,
        &outcome,
        at_ms,
    );
    drop(slot);
}

/// One request to a backend of the mirror version, its response captured up to
/// `max_body_bytes`.
async fn mirror_call(
    plan: &MirrorPlan,
    m: &MirrorTable,
    limits: &Limits,
) -> Result<Captured, String> {
    let addr = plan
        .app
        .pick_in_version(m.version)
        .ok_or_else(|| "no backend".to_string())?;
    let mut headers = plan.head.headers.clone();
    headers.insert(X_BATON_MIRROR, HeaderValue::from_static("1"));
    let (status, resp_headers, mut body) = upstream::call(
        addr,
        limits,
        &plan.head.method,
        &plan.head.uri,
        &headers,
        UpBody::Full(plan.body.clone()),
    )
    .await
    .map_err(|e| e.to_string())?;
    let headers = m.rules.capture_headers(&resp_headers);
    let max = m.cfg.max_body_bytes;
    let mut buf = BytesMut::new();
    let mut truncated = false;
    while let Some(frame) = body.frame().await {
        let Ok(d) = frame.map_err(|e| e.to_string())?.into_data() else {
            continue;
        };
        let room = max - buf.len();
        if d.len() > room {
            buf.extend_from_slice(&d[..room]);
            truncated = true;
            // The rest is not read: that connection is not reused.
            body.abandon();
            break;
        }
        buf.extend_from_slice(&d);
    }
    Ok(Captured {
        status: status.as_u16(),
        headers,
        body: buf.freeze(),
        truncated,
    })
}
