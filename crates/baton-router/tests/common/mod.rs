//! Test harness: tiny named backends, an HTTP client, config builders, polling.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use baton_router::config::{Match, NamedMatch, RouteRule, ValueMatch};
use baton_router::{AppRoutes, Backend, RoutingConfig, VersionRoute};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// A backend answering 200 with its name as body, plus headers describing what it saw.
pub struct TestBackend {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicU64>,
}

pub async fn backend(name: &'static str) -> TestBackend {
    backend_gated(name, None).await
}

/// A backend that waits for a permit of `gate` before answering, when given.
pub async fn backend_gated(name: &'static str, gate: Option<Arc<Semaphore>>) -> TestBackend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicU64::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let h = h.clone();
            let gate = gate.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let h = h.clone();
                    let gate = gate.clone();
                    async move {
                        h.fetch_add(1, Ordering::SeqCst);
                        let xff = req.headers().get("x-forwarded-for").cloned();
                        let xfh = req.headers().get("x-forwarded-host").cloned();
                        let method = req.method().to_string();
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        if let Some(g) = gate {
                            g.acquire().await.unwrap().forget();
                        }
                        let mut resp =
                            Response::new(Full::new(Bytes::from_static(name.as_bytes())));
                        let hd = resp.headers_mut();
                        hd.insert("x-method", method.parse().unwrap());
                        hd.insert("x-body-len", body.len().to_string().parse().unwrap());
                        if let Some(v) = xff {
                            hd.insert("x-saw-xff", v);
                        }
                        if let Some(v) = xfh {
                            hd.insert("x-saw-xfh", v);
                        }
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    TestBackend { addr, hits }
}

/// A backend that reads a request head and closes the connection without answering.
pub async fn resetting_backend() -> TestBackend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicU64::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let h = h.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                h.fetch_add(1, Ordering::SeqCst);
                drop(stream);
            });
        }
    });
    TestBackend { addr, hits }
}

/// An address with nothing listening on it.
pub async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// One client connection, reused for sequential requests (keep-alive).
pub struct Client {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        Client { sender }
    }

    pub async fn send(&mut self, method: &str, path: &str, body: &'static [u8]) -> Answer {
        self.sender.ready().await.expect("connection still usable");
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "app.example")
            .body(Full::new(Bytes::from_static(body)))
            .unwrap();
        let resp = self.sender.send_request(req).await.expect("response");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }
}

impl Client {
    /// A request with extra headers.
    pub async fn send_with(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &'static [u8],
    ) -> Answer {
        self.sender.ready().await.expect("connection still usable");
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "app.example");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::from_static(body))).unwrap();
        let resp = self.sender.send_request(req).await.expect("response");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }
}

/// One request on a fresh connection.
pub async fn request(addr: SocketAddr, method: &str, body: &'static [u8]) -> Answer {
    Client::connect(addr)
        .await
        .send(method, "/hello?x=1", body)
        .await
}

pub async fn get(addr: SocketAddr) -> Answer {
    request(addr, "GET", b"").await
}

pub fn listen_any() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A rule sending requests whose header `name` equals `value` to `version`.
pub fn header_rule(name: &str, value: &str, version: &str) -> RouteRule {
    RouteRule {
        matches: vec![Match::Header(NamedMatch {
            name: name.into(),
            value: ValueMatch::Equals(value.into()),
        })],
        version: version.into(),
    }
}

/// A config with one app; versions given as (name, weight, backend addresses).
pub fn config(
    generation: u64,
    hold_ms: u64,
    versions: &[(&str, u32, &[SocketAddr])],
) -> RoutingConfig {
    RoutingConfig {
        generation,
        apps: vec![AppRoutes {
            app: "web".into(),
            listen: listen_any(),
            hold_timeout_ms: hold_ms,
            versions: versions
                .iter()
                .map(|(v, w, addrs)| VersionRoute {
                    version: (*v).into(),
                    weight: *w,
                    backends: addrs
                        .iter()
                        .enumerate()
                        .map(|(i, a)| Backend {
                            id: format!("{v}-{i}"),
                            address: *a,
                        })
                        .collect(),
                })
                .collect(),
            rules: Vec::new(),
            sticky: None,
            mirror: None,
            shield: None,
            limits: Default::default(),
            balance: Default::default(),
        }],
    }
}

/// Polls `cond` until it holds, failing the test after 10 s.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------------------------
// Helpers of the protocol and robustness tests.

/// Pushes a config with one app and returns the address it is served on.
pub fn start_app(router: &baton_router::Router, cfg: RoutingConfig) -> SocketAddr {
    let res = router.apply(cfg).expect("push accepted");
    assert_eq!(res.listeners.len(), 1);
    assert!(
        res.listeners[0].error.is_none(),
        "{:?}",
        res.listeners[0].error
    );
    res.listeners[0].listen
}

/// In-flight count of the backend at `addr` in the router's stats (0 when absent).
pub fn backend_in_flight(router: &baton_router::Router, addr: SocketAddr) -> u64 {
    router
        .stats()
        .apps
        .iter()
        .flat_map(|a| a.backends.iter())
        .filter(|b| b.address == addr)
        .map(|b| b.in_flight)
        .sum()
}

/// What a [`recording_backend`] saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub version: http::Version,
    pub headers: http::HeaderMap,
    pub body_len: usize,
}

pub struct RecordingBackend {
    pub addr: SocketAddr,
    pub seen: Arc<std::sync::Mutex<Vec<Seen>>>,
}

impl RecordingBackend {
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// A backend that records every request head and answers 200 with the request path as
/// body, plus a hop-by-hop header of its own (`X-Backend-Hop`, named in `Connection`).
/// With `together`, each request waits (up to 10 s) until that many requests are being
/// handled at once, and answers 500 if they never are: a proof of concurrency.
pub async fn recording_backend(together: Option<usize>) -> RecordingBackend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let barrier = together.map(|n| Arc::new(tokio::sync::Barrier::new(n)));
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let s = s.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let s = s.clone();
                    let barrier = barrier.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.map(|b| b.to_bytes());
                        let body_len = body.as_ref().map_or(0, Bytes::len);
                        s.lock().unwrap().push(Seen {
                            method: parts.method.to_string(),
                            uri: parts.uri.to_string(),
                            version: parts.version,
                            headers: parts.headers.clone(),
                            body_len,
                        });
                        let mut status = StatusCode::OK;
                        if let Some(b) = barrier {
                            let waited =
                                tokio::time::timeout(Duration::from_secs(10), b.wait()).await;
                            if waited.is_err() {
                                status = StatusCode::INTERNAL_SERVER_ERROR;
                            }
                        }
                        let mut resp =
                            Response::new(Full::new(Bytes::from(parts.uri.path().to_string())));
                        *resp.status_mut() = status;
                        let hd = resp.headers_mut();
                        hd.insert("x-backend-hop", "1".parse().unwrap());
                        hd.insert("connection", "x-backend-hop".parse().unwrap());
                        hd.insert("x-body-len", body_len.to_string().parse().unwrap());
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    RecordingBackend { addr, seen }
}

/// A backend that accepts connections and reads request heads (counting them in
/// `hits`) but never answers; it keeps each socket open until the peer closes it.
pub async fn silent_backend() -> TestBackend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicU64::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let h = h.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let mut counted = false;
                loop {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    if !counted && buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        counted = true;
                        h.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
    });
    TestBackend { addr, hits }
}

/// A WebSocket echo backend; `hits` counts the upgraded connections.
pub async fn ws_echo_backend() -> TestBackend {
    use futures_util::{SinkExt, StreamExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicU64::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let h = h.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                h.fetch_add(1, Ordering::SeqCst);
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    TestBackend { addr, hits }
}

/// A response body fed by a channel.
pub struct ChannelBody(pub tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|o| o.map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

pub struct SseBackend {
    pub addr: SocketAddr,
    /// Events written so far, over every connection.
    pub sent: Arc<AtomicU64>,
    /// Streams that sent all their events.
    pub finished: Arc<AtomicU64>,
}

/// A server-sent-events backend: every request gets `text/event-stream` with `events`
/// events (`data: N`), one every `every`.
pub async fn sse_backend(every: Duration, events: u64) -> SseBackend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(AtomicU64::new(0));
    let (s, f) = (sent.clone(), finished.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (s, f) = (s.clone(), f.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<Incoming>| {
                    let (s, f) = (s.clone(), f.clone());
                    async move {
                        let (tx, rx) = tokio::sync::mpsc::channel(4);
                        tokio::spawn(async move {
                            let mut tick = tokio::time::interval(every);
                            for i in 0..events {
                                tick.tick().await;
                                let ev = Bytes::from(format!("data: {i}\n\n"));
                                if tx.send(ev).await.is_err() {
                                    return;
                                }
                                s.fetch_add(1, Ordering::SeqCst);
                            }
                            f.fetch_add(1, Ordering::SeqCst);
                        });
                        let mut resp = Response::new(ChannelBody(rx));
                        resp.headers_mut()
                            .insert("content-type", "text/event-stream".parse().unwrap());
                        resp.headers_mut()
                            .insert("cache-control", "no-cache".parse().unwrap());
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    SseBackend {
        addr,
        sent,
        finished,
    }
}

/// What came back on a raw connection.
#[derive(Debug)]
pub struct RawReply {
    /// Everything read, lossily decoded.
    pub text: String,
    /// The peer closed the connection (EOF or reset) before the deadline.
    pub closed: bool,
    /// The connection ended with a reset rather than a clean EOF.
    pub reset: bool,
}

impl RawReply {
    /// The first line of the reply (empty when nothing came back).
    pub fn status_line(&self) -> &str {
        self.text.lines().next().unwrap_or("")
    }

    /// How many responses the reply holds (status lines at line starts).
    pub fn responses(&self) -> usize {
        self.text
            .split("\r\n")
            .filter(|l| l.starts_with("HTTP/1."))
            .count()
    }

    /// The value of response header `name` (case-insensitive) in the first response.
    pub fn header(&self, name: &str) -> Option<String> {
        let head = self.text.split("\r\n\r\n").next()?;
        head.split("\r\n").skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

/// Reads from `stream` until EOF, a reset, or `within` passes.
pub async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> RawReply {
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let (closed, reset) = loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => break (false, false),
            Ok(Ok(0)) => break (true, false),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(_)) => break (true, true),
        }
    };
    RawReply {
        text: String::from_utf8_lossy(&buf).into_owned(),
        closed,
        reset,
    }
}

/// Connects to `addr`, writes `bytes` (a write error is ignored: the peer may close
/// early), and reads until the connection closes or `within` passes.
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8], within: Duration) -> RawReply {
    use tokio::io::AsyncWriteExt;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(bytes).await;
    read_until_closed(&mut stream, within).await
}

/// Reads exactly one response with a `Content-Length` body from `stream`; returns its
/// head (status line and headers) and body. Panics after 10 s.
pub async fn read_one_response(stream: &mut TcpStream) -> (String, Vec<u8>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .expect("response head in time")
            .expect("read");
        assert!(n > 0, "connection closed before a response head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let len: usize = head
        .split("\r\n")
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .expect("a Content-Length response");
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .expect("response body in time")
            .expect("read");
        assert!(n > 0, "connection closed inside a response body");
        body.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(body.len(), len, "no bytes beyond the response");
    (head, body)
}

/// Polls `cond` until it holds, failing the test after `within`.
pub async fn eventually_within(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
