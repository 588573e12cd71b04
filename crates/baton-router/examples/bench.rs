//! Helpers for `bench/router.sh`.
//!
//! `bench backend PORT`: a minimal HTTP/1.1 responder (one thread, fixed 13-byte
//! answer, keep-alive unless the request says `Connection: close`) so the backend is
//! never what limits a proxy benchmark.
//! `bench router LISTEN UPSTREAM WORKERS`: baton's standalone router, for builds
//! of the `baton` binary without `--workers`.
//! `bench backend-json PORT`: like `backend`, answering a 0.3 KiB JSON document
//! whose `served_at` changes with every answer.
//! `bench mirror LISTEN UPSTREAM PERCENT`: baton's router (one worker) with version
//! v1 at UPSTREAM taking every request, and `PERCENT` of them copied to v2 (the same
//! UPSTREAM) and compared as JSON with `$.served_at` left out, as a mirror step
//! does; `off` for no mirroring configured at all.
//! `bench routed LISTEN UPSTREAM`: baton's router (one worker) with an app that a
//! canary rollout configures: two header rules (`X-Canary: always` to v2, `X-User`
//! matching `^qa-` to v2), sticky cohorts, and v1/v2 weighted 90/10 (both at
//! UPSTREAM); requests carry neither header, so every rule is evaluated and fails,
//! and the client's cohort cookie picks the version.
//! `bench relay LISTEN UPSTREAM`: no HTTP at all: each client connection gets its own
//! upstream connection and bytes are copied both ways (`copy_bidirectional`, one
//! task per pair, one thread). The least work any user-space proxy can do per
//! request, so its req/s is this machine's ceiling for the benchmark.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Answers given by the backend.
static COUNT: AtomicU64 = AtomicU64::new(0);

const ANSWER: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain\r\n\r\nHello, world!";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match args.first().map(String::as_str) {
        Some("backend") => {
            let port: u16 = args.get(1).and_then(|p| p.parse().ok()).expect("PORT");
            rt.block_on(backend(port));
        }
        Some("backend-json") => {
            let port: u16 = args.get(1).and_then(|p| p.parse().ok()).expect("PORT");
            rt.block_on(backend_with(port, json_answer));
        }
        Some("mirror") => {
            let listen: SocketAddr = args.get(1).and_then(|a| a.parse().ok()).expect("LISTEN");
            let upstream: SocketAddr = args.get(2).and_then(|a| a.parse().ok()).expect("UPSTREAM");
            let percent: Option<f64> = match args.get(3).map(String::as_str) {
                Some("off") => None,
                other => Some(other.and_then(|a| a.parse().ok()).expect("PERCENT or off")),
            };
            rt.block_on(mirror(listen, upstream, percent));
        }
        Some("routed") => {
            let listen: SocketAddr = args.get(1).and_then(|a| a.parse().ok()).expect("LISTEN");
            let upstream: SocketAddr = args.get(2).and_then(|a| a.parse().ok()).expect("UPSTREAM");
            rt.block_on(routed(listen, upstream));
        }
        Some("relay") => {
            let listen: SocketAddr = args.get(1).and_then(|a| a.parse().ok()).expect("LISTEN");
            let upstream: SocketAddr = args.get(2).and_then(|a| a.parse().ok()).expect("UPSTREAM");
            rt.block_on(relay(listen, upstream));
        }
        Some("router") => {
            let listen: SocketAddr = args.get(1).and_then(|a| a.parse().ok()).expect("LISTEN");
            let upstream: SocketAddr = args.get(2).and_then(|a| a.parse().ok()).expect("UPSTREAM");
            let workers: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(1);
            let stop = CancellationToken::new();
            rt.block_on(async {
                let token = stop.clone();
                tokio::spawn(async move {
                    let _ = tokio::signal::ctrl_c().await;
                    token.cancel();
                });
                let opts = baton_router::StandaloneOptions {
                    listen,
                    upstreams: vec![upstream],
                    workers: Some(workers),
                    metrics_listen: None,
                    balance: Default::default(),
                    handover_socket: None,
                    take_over: false,
                    drain_grace: None,
                };
                if let Err(e) = baton_router::run_standalone_with(opts, stop).await {
                    eprintln!("router: {e}");
                    std::process::exit(1);
                }
            });
        }
        _ => {
            eprintln!(
                "usage: bench backend PORT | bench backend-json PORT | \
                 bench router LISTEN UPSTREAM WORKERS | bench mirror LISTEN UPSTREAM PERCENT | \
                 bench routed LISTEN UPSTREAM | bench relay LISTEN UPSTREAM"
            );
            std::process::exit(2);
        }
    }
}

/// Copies bytes between each client connection and an upstream connection of its own.
async fn relay(listen: SocketAddr, upstream: SocketAddr) {
    let l = tokio::net::TcpListener::bind(listen).await.expect("bind");
    loop {
        let Ok((mut client, _)) = l.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = up.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
        });
    }
}

/// A router mirroring `percent` of the requests (`None`: mirroring not configured),
/// until Ctrl-C.
async fn mirror(listen: SocketAddr, upstream: SocketAddr, percent: Option<f64>) {
    use baton_router::config::MirrorConfig;
    let mut app = bench_app(listen, upstream, &[("v1", 100), ("v2", 0)]);
    app.mirror = percent.map(|p| {
        let mut m = MirrorConfig::new("v2", p);
        m.ignore_json_paths = vec!["$.served_at".into()];
        m
    });
    serve_app(app).await;
}

/// A router serving one app with header rules and sticky cohorts, until Ctrl-C.
async fn routed(listen: SocketAddr, upstream: SocketAddr) {
    use baton_router::config::{Match, NamedMatch, RouteRule, StickyConfig, ValueMatch};
    let header = |name: &str, value: ValueMatch| {
        Match::Header(NamedMatch {
            name: name.into(),
            value,
        })
    };
    let mut app = bench_app(listen, upstream, &[("v1", 90), ("v2", 10)]);
    app.rules = vec![
        RouteRule {
            matches: vec![header("x-canary", ValueMatch::Equals("always".into()))],
            version: "v2".into(),
        },
        RouteRule {
            matches: vec![header("x-user", ValueMatch::Regex("^qa-".into()))],
            version: "v2".into(),
        },
    ];
    app.sticky = Some(StickyConfig {
        new_version: Some("v2".into()),
        ..StickyConfig::default()
    });
    serve_app(app).await;
}

/// An app named "bench" listening on `listen`, with `versions` (name, weight) all at
/// `upstream`, and nothing else configured.
fn bench_app(
    listen: SocketAddr,
    upstream: SocketAddr,
    versions: &[(&str, u32)],
) -> baton_router::AppRoutes {
    use baton_router::{AppRoutes, Backend, VersionRoute};
    AppRoutes {
        app: "bench".into(),
        listen,
        hold_timeout_ms: 5_000,
        versions: versions
            .iter()
            .map(|(name, weight)| VersionRoute {
                version: (*name).into(),
                weight: *weight,
                backends: vec![Backend {
                    id: format!("{name}-0"),
                    address: upstream,
                }],
            })
            .collect(),
        rules: Vec::new(),
        sticky: None,
        mirror: None,
        shield: None,
        limits: Default::default(),
        balance: Default::default(),
    }
}

/// Serves `app` on a router with one worker until Ctrl-C.
async fn serve_app(app: baton_router::AppRoutes) {
    let router = baton_router::Router::with_workers(1);
    let cfg = baton_router::RoutingConfig {
        generation: 1,
        apps: vec![app],
    };
    router.apply(cfg).expect("a valid config");
    let _ = tokio::signal::ctrl_c().await;
    router.shutdown(std::time::Duration::from_secs(2)).await;
}

fn json_answer(n: u64) -> Cow<'static, [u8]> {
    let body = format!(
        r#"{{"items":[{{"id":1,"name":"tea","price":4.5}},{{"id":2,"name":"coffee","price":3.0}},{{"id":3,"name":"cocoa","price":5.25}},{{"id":4,"name":"mate","price":4.0}}],"currency":"EUR","page":{{"number":1,"size":4,"total":4}},"served_at":{n}}}"#
    );
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/json\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
    .into()
}

async fn backend(port: u16) {
    backend_with(port, |_| Cow::Borrowed(ANSWER)).await;
}

/// Answers every request with `answer(n)`, `n` counting the answers.
async fn backend_with(port: u16, answer: fn(u64) -> Cow<'static, [u8]>) {
    let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    loop {
        let Ok((mut s, _)) = l.accept().await else {
            continue;
        };
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            let mut have = 0;
            let mut out = Vec::with_capacity(4096);
            // Body bytes of the last request still to come (and be skipped).
            let mut body_left = 0usize;
            loop {
                match s.read(&mut buf[have..]).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => have += n,
                }
                let mut close = false;
                let mut start = body_left.min(have);
                body_left -= start;
                while let Some(end) = buf[start..have].windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = &buf[start..start + end];
                    if head
                        .windows(17)
                        .any(|w| w.eq_ignore_ascii_case(b"connection: close"))
                    {
                        close = true;
                    }
                    let length = content_length(head);
                    out.extend_from_slice(&answer(COUNT.fetch_add(1, Ordering::Relaxed)));
                    start += end + 4;
                    let here = length.min(have - start);
                    start += here;
                    body_left = length - here;
                }
                buf.copy_within(start..have, 0);
                have -= start;
                if have == buf.len() {
                    return; // a head larger than the buffer: not a benchmark request
                }
                if !out.is_empty() {
                    if s.write_all(&out).await.is_err() {
                        return;
                    }
                    out.clear();
                }
                if close {
                    return;
                }
            }
        });
    }
}

/// The `Content-Length` of a request head (0 when absent).
fn content_length(head: &[u8]) -> usize {
    head.split(|&c| c == b'\n')
        .filter_map(|line| {
            let (name, value) = line.split_at(line.iter().position(|&c| c == b':')?);
            name.eq_ignore_ascii_case(b"content-length")
                .then(|| std::str::from_utf8(&value[1..]).ok()?.trim().parse().ok())?
        })
        .next()
        .unwrap_or(0)
}
