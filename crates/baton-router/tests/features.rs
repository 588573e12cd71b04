//! Match rules, per-version metrics, shielding, sticky cohorts and mirroring, end to
//! end over real sockets.

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::time::Duration;

use baton_router::config::{Balance, MirrorConfig, ShieldConfig, StickyConfig};
use baton_router::metrics::WindowStats;
use baton_router::{AdminClient, Router, RouterOptions, RoutingConfig, run};
use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A backend whose answers `f` computes from the request head.
async fn programmable<F, Fut>(f: F) -> SocketAddr
where
    F: Fn(http::request::Parts) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let f = f.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let f = f.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let _ = body.collect().await;
                        Ok::<_, Infallible>(f(parts).await)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

fn answer(status: u16, version: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r.headers_mut()
        .insert("x-version", version.parse().unwrap());
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

/// A backend of `version` answering the status asked for in `x-status` (200 when
/// absent), with its version as body.
async fn status_backend(version: &'static str) -> SocketAddr {
    programmable(move |p| async move {
        let status = p
            .headers
            .get("x-status")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(200);
        answer(status, version, version)
    })
    .await
}

fn start(router: &Router, cfg: RoutingConfig) -> SocketAddr {
    let res = router.apply(cfg).expect("push accepted");
    assert!(
        res.listeners[0].error.is_none(),
        "{:?}",
        res.listeners[0].error
    );
    res.listeners[0].listen
}

fn window<'a>(w: &'a baton_router::WindowsReport, version: &str) -> &'a WindowStats {
    &w.apps[0]
        .versions
        .iter()
        .find(|v| v.version == version)
        .unwrap_or_else(|| panic!("no window for {version}: {w:?}"))
        .stats
}

/// Polls the router's windows until `total` requests are recorded over every version
/// (the record happens when the response body ends, which may be just after the client
/// has read it).
async fn windows_when(router: &Router, total: u64) -> baton_router::WindowsReport {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let w = router.windows(Duration::from_secs(60));
        let n: u64 = w
            .apps
            .iter()
            .flat_map(|a| &a.versions)
            .map(|v| v.stats.requests)
            .sum();
        if n >= total || tokio::time::Instant::now() > deadline {
            return w;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------------
// Rules

#[tokio::test]
async fn split_10_90_and_header_rules_override_weights() {
    let (a, b, c) = (
        status_backend("v1").await,
        status_backend("v2").await,
        status_backend("v3").await,
    );
    let router = Router::new();
    let mut cfg = config(
        1,
        1000,
        &[("v1", 90, &[a]), ("v2", 10, &[b]), ("v3", 0, &[c])],
    );
    cfg.apps[0].rules = vec![
        header_rule("X-Canary", "always", "v2"),
        header_rule("X-Baton-Preview", "1", "v3"),
        // A rule naming an absent version falls through to the split.
        header_rule("X-Gone", "1", "v9"),
    ];
    let listen = start(&router, cfg);
    let mut client = Client::connect(listen).await;
    let mut counts: HashMap<String, i64> = HashMap::new();
    for _ in 0..10_000 {
        let r = client.send("GET", "/", b"").await;
        assert_eq!(r.status, StatusCode::OK);
        *counts.entry(r.body).or_default() += 1;
    }
    // Within 1 percentage point of 10/90 (100 requests of 10,000).
    assert!((counts["v2"] - 1000).abs() <= 100, "{counts:?}");
    assert!((counts["v1"] - 9000).abs() <= 100, "{counts:?}");
    assert!(!counts.contains_key("v3"), "{counts:?}");
    for _ in 0..50 {
        let r = client
            .send_with("GET", "/", &[("x-canary", "always")], b"")
            .await;
        assert_eq!(r.body, "v2");
        // A weight-0 version is reachable by its rule (blue-green preview).
        let r = client
            .send_with("GET", "/", &[("x-baton-preview", "1")], b"")
            .await;
        assert_eq!(r.body, "v3");
        let r = client
            .send_with("GET", "/", &[("x-canary", "sometimes")], b"")
            .await;
        assert_ne!(r.body, "v3");
    }
    let mut gone = HashMap::<String, u32>::new();
    for _ in 0..20 {
        let r = client.send_with("GET", "/", &[("x-gone", "1")], b"").await;
        assert_eq!(r.status, StatusCode::OK);
        *gone.entry(r.body).or_default() += 1;
    }
    assert!(gone.contains_key("v1"), "{gone:?}");

    // A rule whose version has no backend falls through to the split too.
    let mut cfg = config(2, 1000, &[("v1", 1, &[a]), ("v3", 0, &[])]);
    cfg.apps[0].rules = vec![header_rule("X-Baton-Preview", "1", "v3")];
    router.apply(cfg).unwrap();
    let r = client
        .send_with("GET", "/", &[("x-baton-preview", "1")], b"")
        .await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "v1"));
}

// ---------------------------------------------------------------------------------
// Metrics

#[tokio::test]
async fn windows_and_prometheus_match_counts_sent() {
    let socket = std::env::temp_dir().join(format!(
        "baton-router-features-{}/admin.sock",
        std::process::id()
    ));
    std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(run(
        RouterOptions {
            admin_socket: socket.clone(),
            ..Default::default()
        },
        stop.clone(),
    ));
    let admin = AdminClient::new(socket);
    eventually_async(|| async { admin.health().await.is_ok() }).await;

    let (a, b) = (status_backend("v1").await, status_backend("v2").await);
    let mut cfg = config(1, 1000, &[("v1", 1, &[a]), ("v2", 1, &[b])]);
    cfg.apps[0].rules = vec![
        header_rule("X-To", "v1", "v1"),
        header_rule("X-To", "v2", "v2"),
    ];
    let listen = admin.push(&cfg).await.unwrap().listeners[0].listen;
    let mut client = Client::connect(listen).await;
    // (version, status, how many)
    let plan = [
        ("v1", "200", 30),
        ("v1", "500", 7),
        ("v2", "200", 11),
        ("v2", "503", 13),
    ];
    for (v, status, n) in plan {
        for _ in 0..n {
            let r = client
                .send_with("GET", "/", &[("x-to", v), ("x-status", status)], b"")
                .await;
            assert_eq!(r.status.as_str(), status);
            assert_eq!(r.body, v);
        }
    }
    let total: u64 = plan.iter().map(|p| p.2).sum();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let w = loop {
        let w = admin.windows(60).await.unwrap();
        let n: u64 = w.apps[0].versions.iter().map(|v| v.stats.requests).sum();
        if n == total || tokio::time::Instant::now() > deadline {
            break w;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(w.window_s, 60);
    assert_eq!(w.apps[0].app, "web");
    assert_eq!(w.apps[0].connections, 1);
    let v1 = window(&w, "v1");
    assert_eq!((v1.requests, v1.status), (37, [0, 30, 0, 0, 7]));
    assert_eq!(v1.router_errors, 0);
    assert_eq!(v1.bytes_out, 37 * 2);
    assert!(v1.p50_us > 0 && v1.p50_us <= v1.p99_us && v1.p99_us <= v1.max_us);
    let v2 = window(&w, "v2");
    assert_eq!((v2.requests, v2.status), (24, [0, 11, 0, 0, 13]));

    let text = admin.metrics().await.unwrap();
    for (line, n) in [
        (
            r#"baton_requests_total{app="web",version="v1",code_class="2xx"}"#,
            30,
        ),
        (
            r#"baton_requests_total{app="web",version="v1",code_class="5xx"}"#,
            7,
        ),
        (
            r#"baton_requests_total{app="web",version="v2",code_class="2xx"}"#,
            11,
        ),
        (
            r#"baton_requests_total{app="web",version="v2",code_class="5xx"}"#,
            13,
        ),
        (
            r#"baton_request_duration_seconds_count{app="web",version="v2"}"#,
            24,
        ),
        (r#"baton_bytes_sent_total{app="web",version="v1"}"#, 74),
        (r#"baton_client_connections{app="web"}"#, 1),
    ] {
        assert!(
            text.lines().any(|l| l == format!("{line} {n}")),
            "{line} {n} not in\n{text}"
        );
    }
    drop(client);
    stop.cancel();
    task.await.unwrap().unwrap();
}

async fn eventually_async<F, Fut>(mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn slow_backend_shows_in_p99_and_router_errors_are_counted() {
    let slow = programmable(|_| async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        answer(200, "v1", "slow")
    })
    .await;
    let dead = dead_addr().await;
    let router = Router::new();
    let listen = start(&router, config(1, 1000, &[("v1", 1, &[slow])]));
    let mut client = Client::connect(listen).await;
    for _ in 0..10 {
        assert_eq!(client.send("GET", "/", b"").await.status, StatusCode::OK);
    }
    let w = windows_when(&router, 10).await;
    let v1 = window(&w, "v1");
    assert_eq!(v1.requests, 10);
    assert!(v1.p99_us >= 200_000, "{v1:?}");
    assert!(v1.p50_us >= 200_000, "{v1:?}");

    // Every attempt failing: a 502 counted as a router error of the version.
    router
        .apply(config(2, 1000, &[("v2", 1, &[dead])]))
        .unwrap();
    let r = client.send("GET", "/", b"").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    let w = windows_when(&router, 11).await;
    let v2 = window(&w, "v2");
    assert_eq!((v2.requests, v2.router_errors, v2.status[4]), (1, 1, 1));
}

#[tokio::test]
async fn standalone_serves_metrics_over_tcp() {
    let a = status_backend("up").await;
    let listen = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let metrics = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let stop = CancellationToken::new();
    let task = tokio::spawn(baton_router::run_standalone_with(
        baton_router::StandaloneOptions {
            listen,
            upstreams: vec![a],
            workers: Some(1),
            metrics_listen: Some(metrics),
            balance: Default::default(),
            handover_socket: None,
            take_over: false,
            drain_grace: None,
        },
        stop.clone(),
    ));
    let mut tries = 0;
    let mut client = loop {
        match tokio::net::TcpStream::connect(listen).await {
            Ok(_) => break Client::connect(listen).await,
            Err(_) if tries < 200 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    for _ in 0..5 {
        assert_eq!(client.send("GET", "/", b"").await.status, StatusCode::OK);
    }
    let want = r#"baton_requests_total{app="standalone",version="upstream",code_class="2xx"} 5"#;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut m = Client::connect(metrics).await;
        let r = m.send("GET", "/metrics", b"").await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(
            r.headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain; version=0.0.4")
        );
        if r.body.lines().any(|l| l == want) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{}", r.body);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(client);
    stop.cancel();
    task.await.unwrap().unwrap();
}

// ---------------------------------------------------------------------------------
// Shielding

async fn failing_canary(shield: bool) -> (Router, SocketAddr) {
    let good = status_backend("v1").await;
    let bad = programmable(|_| async { answer(500, "v2", "boom") }).await;
    let router = Router::new();
    let mut cfg = config(1, 1000, &[("v1", 50, &[good]), ("v2", 50, &[bad])]);
    if shield {
        cfg.apps[0].shield = Some(ShieldConfig {
            version: "v1".into(),
        });
    }
    let listen = start(&router, cfg);
    (router, listen)
}

/// Sends `n` requests from 4 concurrent keep-alive clients; returns the status counts.
async fn blast(listen: SocketAddr, method: &'static str, n: usize) -> HashMap<u16, usize> {
    let mut tasks = Vec::new();
    for _ in 0..4 {
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(listen).await;
            let mut seen = HashMap::<u16, usize>::new();
            for _ in 0..n / 4 {
                let r = c.send(method, "/", b"x").await;
                *seen.entry(r.status.as_u16()).or_default() += 1;
            }
            seen
        }));
    }
    let mut all = HashMap::new();
    for t in tasks {
        for (k, v) in t.await.unwrap() {
            *all.entry(k).or_default() += v;
        }
    }
    all
}

#[tokio::test]
async fn shield_hides_a_failing_canary_from_idempotent_requests() {
    let (router, listen) = failing_canary(true).await;
    let seen = blast(listen, "GET", 1000).await;
    assert_eq!(seen.get(&200), Some(&1000), "{seen:?}");
    let w = windows_when(&router, 1500).await;
    let v2 = window(&w, "v2");
    // Weighted 50/50: exactly every other request went to v2 and failed there.
    assert_eq!(v2.status[4], 500, "{v2:?}");
    assert_eq!(v2.requests, 500);
    let v1 = window(&w, "v1");
    assert_eq!((v1.requests, v1.status[1]), (1000, 1000));
    let stats = router.stats();
    let s2 = stats.apps[0]
        .versions
        .iter()
        .find(|v| v.version == "v2")
        .unwrap();
    assert_eq!((s2.shielded, s2.status_5xx), (500, 500));

    // Non-idempotent requests are not shielded.
    let seen = blast(listen, "POST", 100).await;
    assert_eq!(seen.get(&500), Some(&50), "{seen:?}");
    assert_eq!(seen.get(&200), Some(&50), "{seen:?}");
}

#[tokio::test]
async fn without_shield_users_see_the_canary_errors() {
    let (_router, listen) = failing_canary(false).await;
    let seen = blast(listen, "GET", 200).await;
    assert_eq!(seen.get(&500), Some(&100), "{seen:?}");
}

#[tokio::test]
async fn shield_covers_a_canary_that_refuses_connections() {
    let good = status_backend("v1").await;
    let dead = dead_addr().await;
    let router = Router::new();
    let mut cfg = config(1, 1000, &[("v1", 50, &[good]), ("v2", 50, &[dead])]);
    cfg.apps[0].shield = Some(ShieldConfig {
        version: "v1".into(),
    });
    let listen = start(&router, cfg);
    let seen = blast(listen, "GET", 100).await;
    assert_eq!(seen.get(&200), Some(&100), "{seen:?}");
    // A refused connection marks the backend down for a moment, so later picks of v2
    // go elsewhere at once; the failures that happened count against v2.
    let stats = router.stats();
    let s2 = stats.apps[0]
        .versions
        .iter()
        .find(|v| v.version == "v2")
        .unwrap();
    assert!(s2.shielded >= 1, "{s2:?}");
    let w = windows_when(&router, 100 + s2.shielded).await;
    let v2 = window(&w, "v2");
    assert_eq!((v2.requests, v2.router_errors), (s2.shielded, s2.shielded));
    assert_eq!(window(&w, "v1").status[1], 100);
}

// ---------------------------------------------------------------------------------
// Sticky cohorts

fn sticky_config(generation: u64, v2_weight: u32, a: SocketAddr, b: SocketAddr) -> RoutingConfig {
    let mut cfg = config(
        generation,
        1000,
        &[("v1", 100 - v2_weight, &[a]), ("v2", v2_weight, &[b])],
    );
    cfg.apps[0].listen = listen_any();
    cfg.apps[0].sticky = Some(StickyConfig {
        new_version: Some("v2".into()),
        ..StickyConfig::default()
    });
    cfg
}

#[tokio::test]
async fn sticky_cohorts_never_switch_back_as_the_weight_rises() {
    let (a, b) = (status_backend("v1").await, status_backend("v2").await);
    let router = Router::new();
    let listen = start(&router, sticky_config(1, 10, a, b));
    let mut conn = Client::connect(listen).await;
    const CLIENTS: usize = 1000;
    // Each client's cookie, assigned by its first request.
    let mut cookies: Vec<String> = Vec::with_capacity(CLIENTS);
    let mut on: Vec<String> = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let r = conn.send("GET", "/", b"").await;
        let set = r.headers["set-cookie"].to_str().unwrap();
        assert!(set.contains("Path=/") && set.contains("HttpOnly"), "{set}");
        cookies.push(set.split(';').next().unwrap().to_string());
        on.push(r.body);
    }
    let cohort = |c: &str| c.split('=').nth(1).unwrap().parse::<u32>().unwrap();
    let mut generation = 1;
    for weight in [10u32, 50, 100] {
        if weight != 10 {
            generation += 1;
            router
                .apply(sticky_config(generation, weight, a, b))
                .unwrap();
        }
        for round in 0..2 {
            for i in 0..CLIENTS {
                let r = conn
                    .send_with("GET", "/", &[("cookie", &cookies[i])], b"")
                    .await;
                assert!(!r.headers.contains_key("set-cookie"));
                // Exactly the cohorts below the boundary are on v2.
                let want = if cohort(&cookies[i]) < weight * 100 {
                    "v2"
                } else {
                    "v1"
                };
                assert_eq!(r.body, want, "client {i} at weight {weight} round {round}");
                assert!(
                    !(on[i] == "v2" && r.body == "v1"),
                    "client {i} moved back to v1 at weight {weight}"
                );
                on[i] = r.body;
            }
            let share = on.iter().filter(|v| *v == "v2").count() as f64 / CLIENTS as f64;
            // Cohorts are random: 1,000 clients give a binomial spread of about 1.6
            // points at 50%, so allow 5.
            assert!(
                (share * 100.0 - f64::from(weight)).abs() <= 5.0,
                "share {share} at weight {weight}"
            );
        }
    }
}

/// `run` (the router process's body) on an admin socket of its own, named by
/// `tag`: its client, once it answers, and the handle that stops it.
async fn admin_router(tag: &str) -> (AdminClient, RunningRouter) {
    let socket = std::env::temp_dir().join(format!("{tag}-{}/admin.sock", std::process::id()));
    std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(run(
        RouterOptions {
            admin_socket: socket.clone(),
            ..Default::default()
        },
        stop.clone(),
    ));
    let admin = AdminClient::new(socket);
    eventually_async(|| async { admin.health().await.is_ok() }).await;
    (admin, RunningRouter { stop, task })
}

struct RunningRouter {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), baton_router::RouterError>>,
}

impl RunningRouter {
    /// Stops it and checks it ended cleanly.
    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
    }
}

// ---------------------------------------------------------------------------------
// Mirroring

/// v1 and v2 answer identically except on `/differs`, where v2's price differs; the
/// `x-version` header (not compared) tells the user who answered.
async fn mirror_pair() -> (SocketAddr, SocketAddr) {
    let make = |version: &'static str| {
        programmable(move |p| async move {
            let price = if p.uri.path() == "/differs" && version == "v2" {
                12
            } else {
                10
            };
            answer(
                200,
                version,
                format!(r#"{{"path": "{}", "price": {price}}}"#, p.uri.path()),
            )
        })
    };
    (make("v1").await, make("v2").await)
}

fn mirror_config(a: SocketAddr, mirror_to: SocketAddr) -> RoutingConfig {
    let mut cfg = config(1, 1000, &[("v1", 100, &[a]), ("v2", 0, &[mirror_to])]);
    let mut m = MirrorConfig::new("v2", 100.0);
    // Each side names itself: not a difference that matters.
    m.ignore_headers.push("x-version".into());
    cfg.apps[0].mirror = Some(m);
    cfg
}

/// Answers that differ on `$.price` and carry a session cookie and a secret header
/// of their own; the user's request carries credentials too.
#[tokio::test]
async fn mirror_samples_never_hold_credentials_and_users_get_their_answer() {
    let make = |version: &'static str| {
        programmable(move |p| async move {
            let mut r = answer(
                200,
                version,
                format!(
                    r#"{{"price": {}, "auth_seen": {}}}"#,
                    if version == "v1" { 10 } else { 12 },
                    p.headers.contains_key("authorization")
                ),
            );
            let h = r.headers_mut();
            h.insert(
                "set-cookie",
                format!("session=secret-{version}").parse().unwrap(),
            );
            h.insert("x-api-key", format!("secret-{version}").parse().unwrap());
            r
        })
    };
    let (a, b) = (make("v1").await, make("v2").await);
    let router = Router::new();
    let mut cfg = mirror_config(a, b);
    cfg.apps[0].mirror.as_mut().unwrap().redact_headers = vec!["X-Api-Key".into()];
    let listen = start(&router, cfg);
    let mut client = Client::connect(listen).await;
    for _ in 0..10 {
        let r = client
            .send_with(
                "GET",
                "/price?token=x",
                &[
                    ("authorization", "Bearer secret-user"),
                    ("cookie", "id=secret-user"),
                ],
                b"",
            )
            .await;
        assert_eq!(r.status, StatusCode::OK);
        // The user's answer is v1's, untouched, cookie and all.
        assert_eq!(r.headers["set-cookie"], "session=secret-v1");
        assert!(
            r.body.contains(r#""price": 10, "auth_seen": true"#),
            "{}",
            r.body
        );
    }
    let rep = eventually_report(&router, 10).await;
    let text = serde_json::to_string(&rep).unwrap();
    assert!(!text.contains("secret"), "a credential was kept: {text}");
    let sample = &rep.apps[0].report.samples[0];
    assert_eq!(sample.path, "/price", "the query is not kept");
    assert_eq!(
        sample.differences,
        vec![baton_router::mirror::Difference::Json {
            path: "$.price".into(),
            primary: Some(serde_json::json!(10)),
            mirror: Some(serde_json::json!(12)),
        }]
    );
    assert_eq!(rep.apps[0].report.paths[0].fields[0].field, "$.price");
}

/// Waits until `router` has compared `n` mirrored requests.
async fn eventually_report(router: &Router, n: u64) -> baton_router::MirrorReports {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = router.mirror_reports();
        let t = m.apps.first().map(|a| a.report.total);
        if t.is_some_and(|t| t.matches + t.mismatches >= n) {
            return m;
        }
        assert!(tokio::time::Instant::now() < deadline, "{m:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A recording armed over the admin socket takes the next requests of a plain app
/// (no mirroring), redacted, up to its bound, and ends by itself.
#[tokio::test]
async fn recording_keeps_a_bounded_redacted_slice_of_requests() {
    let (admin, router) = admin_router("baton-router-features-record").await;
    let (a, _) = mirror_pair().await;
    let listen = admin
        .push(&config(1, 1000, &[("v1", 100, &[a])]))
        .await
        .unwrap()
        .listeners[0]
        .listen;
    let mut client = Client::connect(listen).await;
    assert_eq!(
        client.send("GET", "/before", b"").await.status,
        StatusCode::OK
    );
    let spec = baton_router::record::RecordSpec {
        max_requests: 3,
        max_body_bytes: 1024,
        methods: vec![],
        redact_headers: vec!["x-tenant-key".into()],
    };
    assert!(admin.arm_record("web", &spec).await.unwrap().armed);
    let missing = admin
        .arm_record("nope", &spec)
        .await
        .unwrap_err()
        .to_string();
    assert!(missing.contains("no app \"nope\""), "{missing}");
    for i in 0..5 {
        let r = client
            .send_with(
                "GET",
                &format!("/items/{i}?sort=asc"),
                &[
                    ("authorization", "Bearer secret"),
                    ("x-tenant-key", "secret"),
                    ("accept", "application/json"),
                ],
                b"",
            )
            .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let r = admin.recording("web", true).await.unwrap();
    assert!(!r.armed, "the bound ended it");
    let uris: Vec<&str> = r.requests.iter().map(|q| q.uri.as_str()).collect();
    assert_eq!(
        uris,
        vec![
            "/items/0?sort=asc",
            "/items/1?sort=asc",
            "/items/2?sort=asc"
        ]
    );
    let text = serde_json::to_string(&r).unwrap();
    assert!(!text.contains("secret"), "{text}");
    assert!(
        r.requests[0]
            .headers
            .contains(&("accept".into(), "application/json".into()))
    );
    assert!(
        admin
            .recording("web", false)
            .await
            .unwrap()
            .requests
            .is_empty()
    );
    drop(client);
    router.stop().await;
}

#[tokio::test]
async fn mirror_counts_and_samples_only_the_differing_path() {
    let (a, b) = mirror_pair().await;
    let router = Router::new();
    let listen = start(&router, mirror_config(a, b));
    let mut client = Client::connect(listen).await;
    for i in 0..100 {
        let path = if i % 2 == 0 { "/same" } else { "/differs" };
        let r = client.send("GET", path, b"").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.headers["x-version"], "v1");
        assert!(r.body.contains(r#""price": 10"#), "{}", r.body);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let rep = loop {
        let m = router.mirror_reports();
        let t = m.apps.first().map(|a| a.report.total);
        if t.is_some_and(|t| t.matches + t.mismatches == 100)
            || tokio::time::Instant::now() > deadline
        {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let app = &rep.apps[0];
    assert_eq!(
        (app.app.as_str(), app.version.as_deref()),
        ("web", Some("v2"))
    );
    assert_eq!(
        (app.report.total.matches, app.report.total.mismatches),
        (50, 50)
    );
    let path = |p: &str| {
        app.report
            .paths
            .iter()
            .find(|x| x.path == p)
            .unwrap()
            .counts
    };
    assert_eq!((path("/same").matches, path("/same").mismatches), (50, 0));
    assert_eq!(
        (path("/differs").matches, path("/differs").mismatches),
        (0, 50)
    );
    assert_eq!(app.report.samples.len(), 20);
    for s in &app.report.samples {
        assert_eq!(s.path, "/differs");
        assert_eq!(s.reasons, vec!["body $.price: 10 vs 12".to_string()]);
    }
    // The comparisons count in the mirror version's metrics; the user's requests in
    // the primary's only.
    let w = router.windows(Duration::from_secs(60));
    let v2 = window(&w, "v2");
    assert_eq!((v2.mirror_matches, v2.mirror_mismatches), (50, 50));
    assert_eq!(v2.requests, 0);
    assert_eq!(window(&w, "v1").requests, 100);
}

#[tokio::test]
async fn mirror_report_over_the_admin_socket() {
    let (admin, router) = admin_router("baton-router-features-mirror").await;
    let (a, b) = mirror_pair().await;
    let listen = admin.push(&mirror_config(a, b)).await.unwrap().listeners[0].listen;
    let mut client = Client::connect(listen).await;
    client.send("GET", "/differs", b"").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let m = loop {
        let m = admin.mirror().await.unwrap();
        if m.apps
            .first()
            .is_some_and(|a| a.report.total.mismatches == 1)
        {
            break m;
        }
        assert!(tokio::time::Instant::now() < deadline, "{m:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(m.apps[0].report.samples[0].mirror.status, 200);
    assert!(
        m.apps[0].report.samples[0]
            .mirror
            .body_preview
            .contains("12")
    );
    drop(client);
    router.stop().await;
}

/// p99 of `n` sequential GETs, in microseconds; every one must be a 200 from v1.
async fn p99_of_gets(listen: SocketAddr, n: usize) -> u128 {
    let mut client = Client::connect(listen).await;
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = std::time::Instant::now();
        let r = client.send("GET", "/same", b"").await;
        lat.push(t.elapsed().as_micros());
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.headers["x-version"], "v1");
    }
    lat.sort_unstable();
    lat[n * 99 / 100]
}

#[tokio::test]
async fn slow_or_refusing_mirror_adds_no_latency_and_no_errors() {
    let (a, _) = mirror_pair().await;
    let slow = programmable(|_| async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        answer(200, "v2", "late")
    })
    .await;
    let dead = dead_addr().await;
    let baseline = {
        let router = Router::new();
        let listen = start(&router, config(1, 1000, &[("v1", 1, &[a])]));
        p99_of_gets(listen, 200).await
    };
    for target in [slow, dead] {
        let router = Router::new();
        let listen = start(&router, mirror_config(a, target));
        let p99 = p99_of_gets(listen, 200).await;
        // Loose: a mirror that waited on the user's path would add 2 s (slow) or a
        // connect failure (dead) to every request.
        assert!(
            p99 < baseline + 50_000,
            "p99 {p99} µs with mirror vs {baseline} µs without"
        );
        let stats = router.stats();
        let v1 = stats.apps[0]
            .versions
            .iter()
            .find(|v| v.version == "v1")
            .unwrap();
        assert_eq!((v1.status_2xx, v1.status_5xx), (200, 0));
    }
}

// ---------------------------------------------------------------------------------
// Per-app limits

#[tokio::test]
async fn per_app_limits_come_from_the_pushed_config() {
    let a = status_backend("v1").await;
    let router = Router::new();
    let mut cfg = config(1, 1000, &[("v1", 1, &[a])]);
    cfg.apps[0].limits.max_body_bytes = 10;
    let listen = start(&router, cfg.clone());
    let r = request(listen, "POST", b"0123456789abcdef").await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    let r = request(listen, "POST", b"0123456789").await;
    assert_eq!(r.status, StatusCode::OK);
    // A config without `limits` gets the defaults.
    let mut json = serde_json::to_value(&cfg).unwrap();
    json["apps"][0].as_object_mut().unwrap().remove("limits");
    json["generation"] = 2.into();
    let back: RoutingConfig = serde_json::from_value(json).unwrap();
    assert_eq!(back.apps[0].limits, baton_router::AppLimits::default());
    router.apply(back).unwrap();
    let r = request(listen, "POST", b"0123456789abcdef").await;
    assert_eq!(r.status, StatusCode::OK);
}

/// Least-requests balancing: a backend that holds its requests stops getting new ones
/// while its siblings are idle; round robin sends it every other request.
#[tokio::test]
async fn least_requests_steers_around_a_backend_that_holds_its_requests() {
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let held = Arc::new(AtomicUsize::new(0));
    let slow = {
        let (release, held) = (release.clone(), held.clone());
        programmable(move |_| {
            let (release, held) = (release.clone(), held.clone());
            async move {
                held.fetch_add(1, AtomicOrdering::SeqCst);
                let _ = release.acquire().await;
                answer(200, "v1", "slow")
            }
        })
        .await
    };
    let fast = programmable(|_| async { answer(200, "v1", "fast") }).await;
    let router = Router::new();
    // Round robin first: of six requests at once, three are held by the slow backend.
    let mut cfg = config(1, 1000, &[("v1", 1, &[slow, fast])]);
    let listen = start(&router, cfg.clone());
    let early: Vec<_> = (0..6).map(|_| tokio::spawn(get(listen))).collect();
    eventually_async(|| {
        let held = held.clone();
        async move { held.load(AtomicOrdering::SeqCst) == 3 }
    })
    .await;
    // Least requests from the next push on: every request finds the slow backend
    // with three in flight and the fast one with none (or the one whose answer is
    // still being recorded), so none is sent to the slow one.
    cfg.generation = 2;
    cfg.apps[0].balance = Balance::LeastRequests;
    start(&router, cfg);
    for i in 0..40 {
        let a = tokio::time::timeout(Duration::from_secs(10), get(listen))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "request {i} was sent to the busy backend (held {}): {:#?}",
                    held.load(AtomicOrdering::SeqCst),
                    router.stats().apps[0].backends
                )
            });
        assert_eq!(a.body, "fast", "request {i}");
    }
    assert_eq!(held.load(AtomicOrdering::SeqCst), 3);
    release.add_permits(3);
    let mut bodies = Vec::new();
    for r in early {
        bodies.push(r.await.unwrap().body);
    }
    assert_eq!(
        bodies.iter().filter(|b| *b == "slow").count(),
        3,
        "{bodies:?}"
    );
}
