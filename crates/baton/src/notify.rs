//! Notifications: webhooks told about an app's rollouts (started, each step,
//! waiting for approval, analysis failed, rolled back, promoted, succeeded,
//! stuck past its deadline), as generic JSON or a Slack-compatible message,
//! signed with an HMAC header. Each webhook has its own queue and delivers in
//! order, retrying with backoff; the controller only drops a notice in the queue,
//! so a receiver that is down or slow never holds a rollout back. Delivery
//! failures show in `status` and in the event log.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_engine::{AppState, EventKind, PauseReason};
use baton_spec::{WebhookFormat, WebhookSpec};
use bytes::Bytes;
use hmac::{KeyInit, Mac};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};

/// Notices queued per webhook; beyond, the oldest are dropped (and counted).
const QUEUE: usize = 1000;
/// Attempts per notice before it is given up.
const ATTEMPTS: u32 = 6;
/// First wait between attempts; doubled each time.
const BACKOFF: Duration = Duration::from_millis(500);

/// What happened to a rollout, as webhooks are told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Notice {
    Started,
    Step,
    WaitingForApproval,
    AnalysisFailed,
    RolledBack,
    Promoted,
    Succeeded,
    Stuck,
}

impl Notice {
    pub const ALL: [Notice; 8] = [
        Notice::Started,
        Notice::Step,
        Notice::WaitingForApproval,
        Notice::AnalysisFailed,
        Notice::RolledBack,
        Notice::Promoted,
        Notice::Succeeded,
        Notice::Stuck,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Notice::Started => "started",
            Notice::Step => "step",
            Notice::WaitingForApproval => "waiting_for_approval",
            Notice::AnalysisFailed => "analysis_failed",
            Notice::RolledBack => "rolled_back",
            Notice::Promoted => "promoted",
            Notice::Succeeded => "succeeded",
            Notice::Stuck => "stuck",
        }
    }
}

/// The notices one engine step calls for: from its events, and from the
/// phases before and after it (waiting for a person, stuck past the deadline).
/// Pure.
pub fn notices(
    before: &AppState,
    after: &AppState,
    events: &[(EventKind, String)],
) -> Vec<(Notice, String)> {
    let mut out = Vec::new();
    for (kind, message) in events {
        let notice = match kind {
            EventKind::RolloutStarted => Notice::Started,
            EventKind::StepStarted => Notice::Step,
            EventKind::AnalysisFailed => Notice::AnalysisFailed,
            EventKind::Promoted => Notice::Promoted,
            EventKind::RolloutFinished => Notice::Succeeded,
            EventKind::RolloutFailed | EventKind::RolloutAborted => Notice::RolledBack,
            _ => continue,
        };
        out.push((notice, message.clone()));
    }
    if after.phase_name() == "awaiting_approval" && before.phase_name() != "awaiting_approval" {
        out.push((
            Notice::WaitingForApproval,
            format!("{} is waiting for `baton approve {}`", after.app, after.app),
        ));
    }
    let stuck = |s: &AppState| {
        s.rollout.as_ref().and_then(|r| match &r.paused {
            Some(PauseReason::ProgressDeadline { detail }) => Some(detail.clone()),
            _ => None,
        })
    };
    if let (None, Some(detail)) = (stuck(before), stuck(after)) {
        out.push((
            Notice::Stuck,
            format!("no progress past the deadline: {detail}"),
        ));
    }
    out
}

/// One notice as sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    pub app: String,
    pub environment: String,
    pub event: Notice,
    pub message: String,
    /// The release being rolled out, and the one it replaces.
    pub version: Option<String>,
    pub from_version: Option<String>,
    pub history_id: Option<i64>,
    pub at_ms: i64,
    /// 1, 2, 3... per webhook since the control plane started: a receiver
    /// sees a gap if a notice was dropped.
    pub sequence: u64,
}

/// The body of a notice in `format`.
pub fn body(format: WebhookFormat, p: &Payload) -> Vec<u8> {
    match format {
        WebhookFormat::Json => serde_json::to_vec(p).unwrap_or_default(),
        WebhookFormat::Slack => {
            let version = match (&p.from_version, &p.version) {
                (Some(from), Some(to)) => format!(" {from} → {to}"),
                (None, Some(to)) => format!(" {to}"),
                _ => String::new(),
            };
            serde_json::to_vec(&serde_json::json!({
                "text": format!(
                    "*{}* ({}){version}: {} — {}",
                    p.app,
                    p.environment,
                    p.event.as_str().replace('_', " "),
                    p.message
                )
            }))
            .unwrap_or_default()
        }
    }
}

/// `X-Baton-Signature`: `sha256=` and the HMAC-SHA256, hex, of the timestamp
/// (`X-Baton-Timestamp`, ms), a dot and the body, keyed with the webhook's secret.
pub fn signature(secret: &[u8], timestamp_ms: i64, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(timestamp_ms.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

/// How one webhook is doing, for `status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WebhookStatus {
    pub name: String,
    pub delivered: u64,
    /// Notices given up after every attempt failed, or dropped from a full queue.
    pub failed: u64,
    /// Waiting to be sent.
    pub pending: usize,
    pub last_error: Option<String>,
    pub last_delivered_ms: Option<i64>,
}

struct Queue {
    items: VecDeque<Payload>,
    status: WebhookStatus,
    sequence: u64,
}

/// One webhook's queue and the task that delivers it.
struct Hook {
    spec: WebhookSpec,
    /// The HMAC key, from the environment variable the spec names; `Err`: it
    /// names one that is not set (nothing is sent unsigned then).
    secret: Result<Option<Vec<u8>>, String>,
    queue: Mutex<Queue>,
    wake: tokio::sync::Notify,
}

/// The webhooks of one app.
pub struct Notifier {
    hooks: Vec<Arc<Hook>>,
    /// Reports failed deliveries (for the event log).
    failures: tokio::sync::mpsc::UnboundedSender<(String, String)>,
}

type HttpsClient = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

impl Notifier {
    /// Starts a delivery task per webhook of `specs`, until `stop`. Failures
    /// (webhook name, why) come out of the returned receiver.
    pub fn start(
        specs: &[WebhookSpec],
        stop: tokio_util::sync::CancellationToken,
    ) -> (
        Notifier,
        tokio::sync::mpsc::UnboundedReceiver<(String, String)>,
    ) {
        let (failures, rx) = tokio::sync::mpsc::unbounded_channel();
        let client = https_client();
        let hooks: Vec<Arc<Hook>> = specs
            .iter()
            .map(|spec| {
                let secret = match &spec.secret_env {
                    None => Ok(None),
                    Some(var) => match std::env::var(var) {
                        Ok(v) if !v.is_empty() => Ok(Some(v.into_bytes())),
                        _ => Err(format!(
                            "its secret_env {var} is not set in the control plane's environment: \
                             nothing is sent unsigned"
                        )),
                    },
                };
                Arc::new(Hook {
                    spec: spec.clone(),
                    secret,
                    queue: Mutex::new(Queue {
                        items: VecDeque::new(),
                        status: WebhookStatus {
                            name: spec.name.clone(),
                            ..WebhookStatus::default()
                        },
                        sequence: 0,
                    }),
                    wake: tokio::sync::Notify::new(),
                })
            })
            .collect();
        for hook in &hooks {
            let (hook, client, stop, failures) =
                (hook.clone(), client.clone(), stop.clone(), failures.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = deliver(hook, client, failures) => {}
                }
            });
        }
        (Notifier { hooks, failures }, rx)
    }

    /// Queues `notice` for every webhook that wants it. Never waits.
    pub fn send(&self, notice: Notice, mut payload: Payload) {
        for hook in &self.hooks {
            if !hook.spec.events.is_empty()
                && !hook.spec.events.iter().any(|e| e == notice.as_str())
            {
                continue;
            }
            let mut q = hook.queue.lock().unwrap_or_else(|p| p.into_inner());
            q.sequence += 1;
            payload.sequence = q.sequence;
            payload.event = notice;
            if q.items.len() >= QUEUE {
                q.items.pop_front();
                q.status.failed += 1;
                let _ = self.failures.send((
                    hook.spec.name.clone(),
                    format!("its queue is full ({QUEUE} notices): the oldest was dropped"),
                ));
            }
            q.items.push_back(payload.clone());
            drop(q);
            hook.wake.notify_one();
        }
    }

    /// How every webhook is doing.
    pub fn status(&self) -> Vec<WebhookStatus> {
        self.hooks
            .iter()
            .map(|h| {
                let q = h.queue.lock().unwrap_or_else(|p| p.into_inner());
                WebhookStatus {
                    pending: q.items.len(),
                    ..q.status.clone()
                }
            })
            .collect()
    }
}

/// The public web's roots, plus `BATON_CA_CERT`'s (a receiver with a private
/// certificate), as the CLI trusts.
fn https_client() -> HttpsClient {
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match crate::tls::client_config() {
        Ok(config) => builder.with_tls_config(config),
        Err(e) => {
            tracing::warn!(error = %e, "webhooks trust the public roots only");
            builder.with_webpki_roots()
        }
    };
    Client::builder(TokioExecutor::new()).build(builder.https_or_http().enable_http1().build())
}

/// Sends the queue of `hook` in order, each notice until it is delivered or
/// its attempts run out.
async fn deliver(
    hook: Arc<Hook>,
    client: HttpsClient,
    failures: tokio::sync::mpsc::UnboundedSender<(String, String)>,
) {
    loop {
        let next = hook
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .items
            .front()
            .cloned();
        let Some(payload) = next else {
            hook.wake.notified().await;
            continue;
        };
        let mut wait = BACKOFF;
        let mut outcome = Err(String::new());
        for attempt in 1..=ATTEMPTS {
            outcome = match &hook.secret {
                Ok(secret) => post(&client, &hook.spec, secret.as_deref(), &payload).await,
                Err(why) => Err(why.clone()),
            };
            if hook.secret.is_err() {
                break;
            }
            if outcome.is_ok() || attempt == ATTEMPTS {
                break;
            }
            tokio::time::sleep(wait).await;
            wait *= 2;
        }
        let mut q = hook.queue.lock().unwrap_or_else(|p| p.into_inner());
        // The front is still this notice unless the queue overflowed meanwhile.
        if q.items.front() == Some(&payload) {
            q.items.pop_front();
        }
        match outcome {
            Ok(()) => {
                q.status.delivered += 1;
                q.status.last_delivered_ms = Some(crate::effects::wall_clock_ms());
            }
            Err(why) => {
                q.status.failed += 1;
                q.status.last_error = Some(why.clone());
                let _ = failures.send((
                    hook.spec.name.clone(),
                    format!(
                        "notice {} ({}) not delivered after {ATTEMPTS} attempts: {why}",
                        payload.sequence,
                        payload.event.as_str()
                    ),
                ));
            }
        }
    }
}

/// One attempt: 2xx is delivered.
async fn post(
    client: &HttpsClient,
    spec: &WebhookSpec,
    secret: Option<&[u8]>,
    payload: &Payload,
) -> Result<(), String> {
    let body = body(spec.format, payload);
    let now = crate::effects::wall_clock_ms();
    let mut req = http::Request::post(&spec.url)
        .header("content-type", "application/json")
        .header("user-agent", concat!("baton/", env!("CARGO_PKG_VERSION")))
        .header("x-baton-event", payload.event.as_str())
        .header("x-baton-timestamp", now.to_string());
    if let Some(secret) = secret {
        req = req.header("x-baton-signature", signature(secret, now, &body));
    }
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(spec.timeout, client.request(req)).await {
        Err(_) => Err(format!("no answer within {:?}", spec.timeout)),
        Ok(Err(e)) => Err(format!("{e}")),
        Ok(Ok(resp)) if resp.status().is_success() => Ok(()),
        Ok(Ok(resp)) => Err(format!("answered {}", resp.status())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_covers_timestamp_and_body() {
        let a = signature(b"secret", 1000, b"{}");
        assert!(a.starts_with("sha256=") && a.len() == 7 + 64, "{a}");
        assert_ne!(a, signature(b"secret", 1001, b"{}"));
        assert_ne!(a, signature(b"secret", 1000, b"{ }"));
        assert_ne!(a, signature(b"other", 1000, b"{}"));
        // HMAC-SHA256 of "1000.{}" keyed "secret", as any other implementation
        // computes it (Python's hmac module gave this value).
        assert_eq!(
            a,
            "sha256=026360fb6284f077f1148b1ae7c62679730497810a6a0321574de01e8b009e7a"
        );
    }

    #[test]
    fn payloads_as_json_and_for_slack() {
        let p = Payload {
            app: "web".into(),
            environment: "prod".into(),
            event: Notice::RolledBack,
            message: "analysis failed: error rate 20%".into(),
            version: Some("v2".into()),
            from_version: Some("v1".into()),
            history_id: Some(4),
            at_ms: 5,
            sequence: 9,
        };
        let json: serde_json::Value =
            serde_json::from_slice(&body(WebhookFormat::Json, &p)).unwrap();
        assert_eq!(json["event"], "rolled_back");
        assert_eq!(json["sequence"], 9);
        let slack: serde_json::Value =
            serde_json::from_slice(&body(WebhookFormat::Slack, &p)).unwrap();
        assert_eq!(
            slack["text"],
            "*web* (prod) v1 → v2: rolled back — analysis failed: error rate 20%"
        );
    }
}
