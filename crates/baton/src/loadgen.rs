//! A bounded HTTP load generator: steady GET traffic over keep-alive
//! connections and over a new connection per request, counting failures and
//! the `X-Version` of every answer. Used by `baton demo` and by the tests.
//! It stops after `max_requests` or `max_duration`, whichever comes first.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub target: SocketAddr,
    pub path: String,
    /// Workers that reuse one connection for many requests.
    pub keepalive_workers: usize,
    /// Workers that open a new connection for every request.
    pub fresh_workers: usize,
    pub max_requests: u64,
    pub max_duration: Duration,
    /// Pause between two requests of one worker (zero: as fast as possible).
    pub pace: Duration,
}

impl LoadConfig {
    pub fn new(target: SocketAddr) -> Self {
        LoadConfig {
            target,
            path: "/".into(),
            keepalive_workers: 4,
            fresh_workers: 2,
            max_requests: 1_000_000,
            max_duration: Duration::from_secs(300),
            pace: Duration::ZERO,
        }
    }
}

/// What the load saw.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LoadReport {
    pub requests: u64,
    pub failures: u64,
    pub by_version: BTreeMap<String, u64>,
    /// The first few failures, for the error message.
    pub failure_samples: Vec<String>,
    /// Every failure counted by its kind: `HTTP <status> from <X-Version>` for an
    /// answer that was not 2xx (`none` when the router itself answered), else what
    /// failed (`connect`, `handshake`, `connection`, `request`, `body`, `timed out`).
    pub failure_kinds: BTreeMap<String, u64>,
    pub elapsed_ms: u64,
}

#[derive(Default)]
struct Counters {
    started: AtomicU64,
    requests: AtomicU64,
    failures: AtomicU64,
}

pub struct LoadHandle {
    stop: CancellationToken,
    counters: Arc<Counters>,
    tasks: JoinSet<WorkerReport>,
    started: Instant,
}

#[derive(Default)]
struct WorkerReport {
    by_version: BTreeMap<String, u64>,
    failures: Vec<String>,
    failure_kinds: BTreeMap<String, u64>,
}

/// Start sending load in the background.
pub fn start(cfg: LoadConfig) -> LoadHandle {
    let stop = CancellationToken::new();
    let counters = Arc::new(Counters::default());
    let mut tasks = JoinSet::new();
    let deadline = Instant::now() + cfg.max_duration;
    for i in 0..cfg.keepalive_workers + cfg.fresh_workers {
        let keepalive = i < cfg.keepalive_workers;
        tasks.spawn(worker(
            cfg.clone(),
            keepalive,
            deadline,
            stop.clone(),
            counters.clone(),
        ));
    }
    LoadHandle {
        stop,
        counters,
        tasks,
        started: Instant::now(),
    }
}

impl LoadHandle {
    /// Requests answered so far and how many of them failed.
    pub fn progress(&self) -> (u64, u64) {
        (
            self.counters.requests.load(Ordering::Relaxed),
            self.counters.failures.load(Ordering::Relaxed),
        )
    }

    /// Wait until at least `n` requests were answered (or the load ended).
    pub async fn wait_for_requests(&self, n: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.counters.requests.load(Ordering::Relaxed) >= n {
                return true;
            }
            if self.tasks.is_empty() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Stop and collect the report.
    pub async fn finish(mut self) -> LoadReport {
        self.stop.cancel();
        let mut report = LoadReport::default();
        while let Some(r) = self.tasks.join_next().await {
            let Ok(r) = r else { continue };
            for (v, n) in r.by_version {
                *report.by_version.entry(v).or_default() += n;
            }
            for (k, n) in r.failure_kinds {
                *report.failure_kinds.entry(k).or_default() += n;
            }
            for f in r.failures {
                if report.failure_samples.len() < 10 {
                    report.failure_samples.push(f);
                }
            }
        }
        report.requests = self.counters.requests.load(Ordering::Relaxed);
        report.failures = self.counters.failures.load(Ordering::Relaxed);
        report.elapsed_ms = self.started.elapsed().as_millis() as u64;
        report
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(target: SocketAddr) -> Result<Sender, String> {
    let stream = TcpStream::connect(target)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn worker(
    cfg: LoadConfig,
    keepalive: bool,
    deadline: Instant,
    stop: CancellationToken,
    counters: Arc<Counters>,
) -> WorkerReport {
    let mut report = WorkerReport::default();
    let mut conn: Option<Sender> = None;
    loop {
        if stop.is_cancelled() || Instant::now() >= deadline {
            break;
        }
        // Reserve a request slot so the total never exceeds max_requests.
        if counters.started.fetch_add(1, Ordering::Relaxed) >= cfg.max_requests {
            break;
        }
        let result = tokio::time::timeout(
            Duration::from_secs(30),
            one_request(&cfg, keepalive, &mut conn),
        )
        .await
        .unwrap_or_else(|_| Err("timed out after 30s".into()));
        counters.requests.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(version) => *report.by_version.entry(version).or_default() += 1,
            Err(e) => {
                counters.failures.fetch_add(1, Ordering::Relaxed);
                conn = None;
                *report.failure_kinds.entry(failure_kind(&e)).or_default() += 1;
                if report.failures.len() < 10 {
                    report.failures.push(e);
                }
            }
        }
        if !cfg.pace.is_zero() {
            tokio::time::sleep(cfg.pace).await;
        }
    }
    report
}

/// The kind of a failure message of [`one_request`]: the status and version of an
/// answer that was not 2xx, else the step that failed.
fn failure_kind(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("HTTP ") {
        return format!("HTTP {}", rest.split_once(':').map_or(rest, |(k, _)| k));
    }
    message
        .split_once(':')
        .map_or(message, |(k, _)| k)
        .trim_end_matches(" after 30s")
        .to_string()
}

async fn one_request(
    cfg: &LoadConfig,
    keepalive: bool,
    conn: &mut Option<Sender>,
) -> Result<String, String> {
    if conn.as_ref().is_none_or(|c| c.is_closed()) || !keepalive {
        *conn = Some(connect(cfg.target).await?);
    }
    let sender = conn.as_mut().expect("connection just set");
    sender
        .ready()
        .await
        .map_err(|e| format!("connection: {e}"))?;
    let mut req = Request::get(&cfg.path).header("host", cfg.target.to_string());
    if !keepalive {
        req = req.header("connection", "close");
    }
    let req = req.body(Empty::new()).map_err(|e| e.to_string())?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status();
    let version = resp
        .headers()
        .get("x-version")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none")
        .to_string();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    if !status.is_success() {
        return Err(format!(
            "HTTP {status} from {version}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ));
    }
    if !keepalive {
        *conn = None;
    }
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::failure_kind;

    #[test]
    fn failures_are_counted_by_status_and_version_or_by_step() {
        assert_eq!(
            failure_kind("HTTP 500 Internal Server Error from v3: {\"error\":\"x: y\"}"),
            "HTTP 500 Internal Server Error from v3"
        );
        assert_eq!(
            failure_kind("HTTP 502 Bad Gateway from none: bad gateway: no backend answered"),
            "HTTP 502 Bad Gateway from none"
        );
        assert_eq!(failure_kind("connect: Connection refused"), "connect");
        assert_eq!(failure_kind("timed out after 30s"), "timed out");
    }
}
