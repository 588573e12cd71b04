//! Test harness: tiny named backends, an HTTP client, config builders, polling.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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
