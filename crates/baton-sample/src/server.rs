//! The HTTP server of the sample service (hyper 1, HTTP/1.1 with keep-alive).
//!
//! Endpoints, all answering with `X-Version: <version>`:
//! - `GET /` → `{"version", "pid", "port"}`, after the injected latency; a
//!   fraction `error_rate` of requests answer 500 instead.
//! - `GET /healthz` → 200 `ok`, or 503 when `never_ready`. No latency, no errors.
//! - `POST /echo` → the request body (same latency and error rate as `/`).
//! - `GET /slow?ms=N` → sleeps N ms, then 200. For drain tests; no faults.
//! - `GET /items` → a small catalogue `{"items": [{"id", "name", "price"}...],
//!   "currency", "version", "served_at"}`; `GET /items/N` → one item, with
//!   `version` and `served_at`. Their shape follows the `shape` knob; `version`
//!   and `served_at` differ between any two releases or answers, as real
//!   services' versions and timestamps do.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::options::{FaultKnobs, SampleOptions, Shape};

/// Largest body `POST /echo` accepts.
const MAX_ECHO_BYTES: usize = 16 * 1024 * 1024;
/// Longest sleep `GET /slow` accepts.
const MAX_SLOW_MS: u64 = 10 * 60 * 1000;

/// Live counters of a running server, for tests to wait on.
#[derive(Debug, Default)]
pub(crate) struct ServerState {
    /// Requests being handled right now.
    pub(crate) in_flight: AtomicUsize,
}

/// What every request handler needs.
struct Shared {
    version: HeaderValue,
    version_text: String,
    port: u16,
    knobs: FaultKnobs,
    state: Arc<ServerState>,
}

/// Counts a request as in flight until dropped (also when the connection is
/// closed under it and the handler future is dropped).
struct InFlight(Arc<ServerState>);

impl InFlight {
    fn new(state: &Arc<ServerState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(Arc::clone(state))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Background tasks for the crash and leak knobs; stopped when the server stops.
struct Chaos(Vec<JoinHandle<()>>);

impl Drop for Chaos {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

fn start_chaos(knobs: &FaultKnobs) -> Chaos {
    let mut tasks = Vec::new();
    if let Some(after) = knobs.crash_after {
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(after).await;
            eprintln!("baton-sample: crashing now (SAMPLE_CRASH_AFTER_MS)");
            // Abrupt on purpose: no graceful shutdown, like a real crash.
            std::process::exit(1);
        }));
    }
    if knobs.leak_mb_per_s > 0 {
        let bytes = usize::try_from(knobs.leak_mb_per_s)
            .unwrap_or(usize::MAX)
            .saturating_mul(1024 * 1024);
        tasks.push(tokio::spawn(async move {
            let mut kept: Vec<Vec<u8>> = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let mut chunk = vec![0u8; bytes];
                // Write to every page: a zeroed allocation is not resident until touched.
                for i in (0..chunk.len()).step_by(4096) {
                    chunk[i] = 1;
                }
                kept.push(std::hint::black_box(chunk));
            }
        }));
    }
    Chaos(tasks)
}

/// Binds `opts.listen` (after `knobs.startup`) and serves until `shutdown`
/// resolves, then stops accepting, closes idle connections, lets in-flight
/// requests finish and returns.
pub async fn serve(
    opts: SampleOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let _chaos = start_chaos(&opts.knobs);
    let mut shutdown = Box::pin(shutdown);
    if !opts.knobs.startup.is_zero() {
        tokio::select! {
            () = tokio::time::sleep(opts.knobs.startup) => {}
            () = &mut shutdown => return Ok(()),
        }
    }
    let listener = TcpListener::bind(opts.listen).await?;
    run(listener, opts, shutdown, Arc::default()).await
}

/// Like [`serve`], on a listener the caller has already bound (port 0 in tests,
/// or a socket handed over by a supervisor). `knobs.startup` delays accepting.
pub async fn serve_listener(
    listener: std::net::TcpListener,
    opts: SampleOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_listener_with_state(listener, opts, shutdown, Arc::default()).await
}

pub(crate) async fn serve_listener_with_state(
    listener: std::net::TcpListener,
    opts: SampleOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
    state: Arc<ServerState>,
) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    let _chaos = start_chaos(&opts.knobs);
    let mut shutdown = Box::pin(shutdown);
    if !opts.knobs.startup.is_zero() {
        tokio::select! {
            () = tokio::time::sleep(opts.knobs.startup) => {}
            () = &mut shutdown => return Ok(()),
        }
    }
    run(listener, opts, shutdown, state).await
}

async fn run(
    listener: TcpListener,
    opts: SampleOptions,
    shutdown: impl Future<Output = ()> + Send,
    state: Arc<ServerState>,
) -> io::Result<()> {
    let local: SocketAddr = listener.local_addr()?;
    let version = HeaderValue::from_str(&opts.version).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("version {:?} cannot be sent in a header", opts.version),
        )
    })?;
    let shared = Arc::new(Shared {
        version,
        version_text: opts.version.clone(),
        port: local.port(),
        knobs: opts.knobs,
        state,
    });
    eprintln!(
        "baton-sample: version {} listening on {} (pid {})",
        opts.version,
        local,
        std::process::id()
    );

    let graceful = GracefulShutdown::new();
    let mut shutdown = pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Small responses: send them at once.
                    let _ = stream.set_nodelay(true);
                    let shared = Arc::clone(&shared);
                    let service = service_fn(move |req| handle(Arc::clone(&shared), req));
                    let conn = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), service);
                    let conn = graceful.watch(conn);
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = &mut shutdown => break,
        }
    }
    // Stop accepting first, so new connections are refused while we drain.
    drop(listener);
    eprintln!(
        "baton-sample: shutting down, waiting for {} connection(s)",
        graceful.count()
    );
    graceful.shutdown().await;
    Ok(())
}

type Resp = Response<Full<Bytes>>;

fn respond(
    shared: &Shared,
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Resp {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert("x-version", shared.version.clone());
    if let Ok(ct) = HeaderValue::from_str(content_type) {
        headers.insert(CONTENT_TYPE, ct);
    }
    resp
}

fn json(shared: &Shared, status: StatusCode, value: &serde_json::Value) -> Resp {
    respond(shared, status, "application/json", value.to_string() + "\n")
}

fn text(shared: &Shared, status: StatusCode, body: &'static str) -> Resp {
    respond(shared, status, "text/plain; charset=utf-8", body)
}

/// Applies the latency and error-rate knobs; `Some` is the injected error.
async fn faults(shared: &Shared) -> Option<Resp> {
    if !shared.knobs.latency.is_zero() {
        tokio::time::sleep(shared.knobs.latency).await;
    }
    (shared.knobs.error_rate > 0.0 && fastrand::f64() < shared.knobs.error_rate).then(|| {
        json(
            shared,
            StatusCode::INTERNAL_SERVER_ERROR,
            &serde_json::json!({
                "error": "injected fault (SAMPLE_ERROR_RATE)",
                "version": shared.version_text,
            }),
        )
    })
}

/// The catalogue of `/items`: id, name, price in cents.
const ITEMS: &[(u64, &str, u64)] = &[(1, "tea", 450), (2, "coffee", 300), (3, "cocoa", 525)];

/// One item as the `shape` knob says.
fn item_json(
    shape: Shape,
    &(id, name, cents): &(u64, &str, u64),
    single: bool,
) -> serde_json::Value {
    let cents = if shape == Shape::Changed && single && id == 2 {
        cents + 50
    } else {
        cents
    };
    let price = serde_json::json!(cents as f64 / 100.0);
    let key = if shape == Shape::Renamed {
        "cost"
    } else {
        "price"
    };
    let mut item = serde_json::json!({ "id": id, "name": name });
    item[key] = price;
    item
}

fn served_at() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `GET /items` and `GET /items/N`; `None` for another path under `/items/`.
fn items(shared: &Shared, path: &str) -> Option<Resp> {
    let shape = shared.knobs.shape;
    let body = match path.strip_prefix("/items") {
        Some("" | "/") => serde_json::json!({
            "items": ITEMS.iter().map(|i| item_json(shape, i, false)).collect::<Vec<_>>(),
            "currency": "EUR",
            "version": shared.version_text,
            "served_at": served_at(),
        }),
        Some(rest) => {
            let id: u64 = rest.strip_prefix('/')?.parse().ok()?;
            let found = ITEMS.iter().find(|i| i.0 == id)?;
            let mut one = item_json(shape, found, true);
            one["version"] = serde_json::json!(shared.version_text);
            one["served_at"] = serde_json::json!(served_at());
            one
        }
        None => return None,
    };
    Some(json(shared, StatusCode::OK, &body))
}

fn slow_ms(query: Option<&str>) -> Result<u64, ()> {
    let value = query
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix("ms="));
    match value {
        None => Ok(1000),
        Some(v) => v
            .parse::<u64>()
            .map(|ms| ms.min(MAX_SLOW_MS))
            .map_err(|_| ()),
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Resp, Infallible> {
    let _in_flight = InFlight::new(&shared.state);
    let method = req.method().clone();
    let resp = match (req.uri().path(), &method) {
        ("/", &Method::GET | &Method::HEAD) => match faults(&shared).await {
            Some(err) => err,
            None => json(
                &shared,
                StatusCode::OK,
                &serde_json::json!({
                    "version": shared.version_text,
                    "pid": std::process::id(),
                    "port": shared.port,
                }),
            ),
        },
        ("/healthz", &Method::GET | &Method::HEAD) => {
            if shared.knobs.never_ready {
                text(&shared, StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            } else {
                text(&shared, StatusCode::OK, "ok\n")
            }
        }
        ("/echo", &Method::POST) => {
            let content_type = req
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/octet-stream")
                .to_owned();
            match Limited::new(req.into_body(), MAX_ECHO_BYTES)
                .collect()
                .await
            {
                Err(_) => text(
                    &shared,
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body too large or broken\n",
                ),
                Ok(body) => match faults(&shared).await {
                    Some(err) => err,
                    None => respond(&shared, StatusCode::OK, &content_type, body.to_bytes()),
                },
            }
        }
        ("/slow", &Method::GET) => match slow_ms(req.uri().query()) {
            Ok(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                json(
                    &shared,
                    StatusCode::OK,
                    &serde_json::json!({ "version": shared.version_text, "slept_ms": ms }),
                )
            }
            Err(()) => text(
                &shared,
                StatusCode::BAD_REQUEST,
                "ms must be a whole number of milliseconds\n",
            ),
        },
        (path, &Method::GET | &Method::HEAD) if path == "/items" || path.starts_with("/items/") => {
            match faults(&shared).await {
                Some(err) => err,
                None => items(&shared, path)
                    .unwrap_or_else(|| text(&shared, StatusCode::NOT_FOUND, "no such item\n")),
            }
        }
        (path @ ("/" | "/healthz" | "/echo" | "/slow"), _) => {
            let allow = match path {
                "/echo" => "POST",
                "/slow" => "GET",
                _ => "GET, HEAD",
            };
            let mut resp = text(
                &shared,
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed\n",
            );
            resp.headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allow));
            resp
        }
        _ => text(&shared, StatusCode::NOT_FOUND, "not found\n"),
    };
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::slow_ms;

    #[test]
    fn slow_query() {
        assert_eq!(slow_ms(None), Ok(1000));
        assert_eq!(slow_ms(Some("ms=250")), Ok(250));
        assert_eq!(slow_ms(Some("a=1&ms=5")), Ok(5));
        assert_eq!(slow_ms(Some("ms=99999999999")), Ok(super::MAX_SLOW_MS));
        assert_eq!(slow_ms(Some("ms=x")), Err(()));
    }
}
