//! End-to-end tests of the request path over real sockets.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use baton_router::{Router, RouterError};
use common::*;
use http::StatusCode;
use tokio::sync::Semaphore;

fn start(router: &Router, cfg: baton_router::RoutingConfig) -> std::net::SocketAddr {
    let res = router.apply(cfg).expect("push accepted");
    assert_eq!(res.listeners.len(), 1);
    assert!(
        res.listeners[0].error.is_none(),
        "{:?}",
        res.listeners[0].error
    );
    res.listeners[0].listen
}

#[tokio::test]
async fn round_robin_across_three_backends() {
    let (a, b, c) = (backend("a").await, backend("b").await, backend("c").await);
    let router = Router::new();
    let listen = start(
        &router,
        config(1, 1000, &[("v1", 1, &[a.addr, b.addr, c.addr])]),
    );
    let mut client = Client::connect(listen).await;
    let mut seen = Vec::new();
    for _ in 0..30 {
        let r = client.send("GET", "/", b"").await;
        assert_eq!(r.status, StatusCode::OK);
        seen.push(r.body);
    }
    // Strict rotation: every window of 3 holds each backend once.
    for w in seen.chunks(3) {
        let mut w = w.to_vec();
        w.sort();
        assert_eq!(w, vec!["a", "b", "c"]);
    }
    for be in [&a, &b, &c] {
        assert_eq!(be.hits.load(Ordering::SeqCst), 10);
    }
}

#[tokio::test]
async fn weighted_split_is_exact() {
    let (old, new) = (backend("old").await, backend("new").await);
    let router = Router::new();
    let listen = start(
        &router,
        config(1, 1000, &[("v1", 90, &[old.addr]), ("v2", 10, &[new.addr])]),
    );
    let mut client = Client::connect(listen).await;
    let mut counts: HashMap<String, i64> = HashMap::new();
    for _ in 0..1000 {
        let r = client.send("GET", "/", b"").await;
        assert_eq!(r.status, StatusCode::OK);
        *counts.entry(r.body).or_default() += 1;
    }
    assert!((counts["new"] - 100).abs() <= 1, "{counts:?}");
    assert!((counts["old"] - 900).abs() <= 1, "{counts:?}");
    let stats = router.stats();
    let v2 = stats.apps[0]
        .versions
        .iter()
        .find(|v| v.version == "v2")
        .unwrap();
    assert!((v2.status_2xx as i64 - 100).abs() <= 1);
}

#[tokio::test]
async fn zero_weight_version_gets_no_traffic() {
    let (a, b) = (backend("a").await, backend("b").await);
    let router = Router::new();
    let listen = start(
        &router,
        config(1, 1000, &[("v1", 1, &[a.addr]), ("v2", 0, &[b.addr])]),
    );
    let mut client = Client::connect(listen).await;
    for _ in 0..20 {
        assert_eq!(client.send("GET", "/", b"").await.body, "a");
    }
    assert_eq!(b.hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn config_swap_applies_to_new_requests() {
    let (a, b) = (backend("a").await, backend("b").await);
    let router = Router::new();
    let listen = start(&router, config(1, 1000, &[("v1", 1, &[a.addr])]));
    assert_eq!(get(listen).await.body, "a");
    let res = router
        .apply(config(2, 1000, &[("v2", 1, &[b.addr])]))
        .unwrap();
    assert_eq!(res.listeners[0].listen, listen, "same listener kept");
    for _ in 0..5 {
        assert_eq!(get(listen).await.body, "b");
    }
    assert_eq!(router.generation(), 2);
}

#[tokio::test]
async fn forwards_path_body_and_forwarding_headers() {
    let a = backend("a").await;
    let router = Router::new();
    let listen = start(&router, config(1, 1000, &[("v1", 1, &[a.addr])]));
    let r = request(listen, "POST", b"hello body").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["x-method"], "POST");
    assert_eq!(r.headers["x-body-len"], "10");
    assert_eq!(r.headers["x-saw-xff"], "127.0.0.1");
    assert_eq!(r.headers["x-saw-xfh"], "app.example");
}

#[tokio::test]
async fn down_backend_costs_no_failed_get() {
    let a = backend("a").await;
    let dead = dead_addr().await;
    let router = Router::new();
    let listen = start(&router, config(1, 1000, &[("v1", 1, &[dead, a.addr])]));
    for _ in 0..20 {
        let r = get(listen).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body, "a");
    }
    let stats = router.stats();
    let v = &stats.apps[0].versions[0];
    assert!(v.retries >= 1, "{v:?}");
    assert_eq!(v.router_errors, 0);
}

#[tokio::test]
async fn post_to_down_backend_is_retried() {
    let a = backend("a").await;
    let dead = dead_addr().await;
    let router = Router::new();
    // The dead backend is first in round-robin order, so the first POST hits it.
    let listen = start(&router, config(1, 1000, &[("v1", 1, &[dead, a.addr])]));
    for _ in 0..6 {
        let r = request(listen, "POST", b"payload").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.headers["x-body-len"], "7", "body replayed intact");
    }
}

#[tokio::test]
async fn retries_other_versions_when_the_picked_one_is_down() {
    let b = backend("b").await;
    let (d1, d2) = (dead_addr().await, dead_addr().await);
    let router = Router::new();
    let listen = start(
        &router,
        config(1, 1000, &[("v1", 1, &[d1, d2]), ("v2", 1, &[b.addr])]),
    );
    for _ in 0..10 {
        let r = get(listen).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body, "b");
    }
}

#[tokio::test]
async fn reset_after_request_is_retried_for_get_not_post() {
    let a = backend("a").await;
    let reset = resetting_backend().await;
    let router = Router::new();
    let listen = start(
        &router,
        config(1, 1000, &[("v1", 1, &[reset.addr, a.addr])]),
    );
    for _ in 0..6 {
        let r = get(listen).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body, "a");
    }
    assert!(
        reset.hits.load(Ordering::SeqCst) >= 1,
        "the resetting backend was tried"
    );
    // A POST may have reached the app: it is not replayed, so one of two fails.
    let mut statuses = Vec::new();
    for _ in 0..2 {
        statuses.push(request(listen, "POST", b"x").await.status);
    }
    assert!(statuses.contains(&StatusCode::BAD_GATEWAY), "{statuses:?}");
    assert!(statuses.contains(&StatusCode::OK), "{statuses:?}");
    let stats = router.stats();
    assert_eq!(stats.apps[0].versions[0].router_errors, 1);
}

#[tokio::test]
async fn every_attempt_failing_gives_502() {
    let router = Router::new();
    let listen = start(&router, config(1, 1000, &[("v1", 1, &[dead_addr().await])]));
    let r = get(listen).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert!(!r.body.is_empty());
}

#[tokio::test]
async fn held_request_succeeds_after_a_push() {
    let a = backend("a").await;
    let router = Router::new();
    let listen = start(&router, config(1, 10_000, &[]));
    let held = tokio::spawn(get(listen));
    let r2 = router.clone();
    eventually("request held", || {
        r2.stats().apps.first().is_some_and(|s| s.held == 1)
    })
    .await;
    router
        .apply(config(2, 10_000, &[("v1", 1, &[a.addr])]))
        .unwrap();
    let r = held.await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, "a");
}

#[tokio::test]
async fn empty_table_answers_503_after_hold_timeout() {
    let router = Router::new();
    let listen = start(&router, config(1, 100, &[("v1", 1, &[])]));
    let started = std::time::Instant::now();
    let r = get(listen).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers["retry-after"], "1");
    assert!(started.elapsed() >= std::time::Duration::from_millis(100));
    assert_eq!(router.stats().apps[0].no_backend, 1);
}

#[tokio::test]
async fn lower_generation_is_refused() {
    let a = backend("a").await;
    let router = Router::new();
    start(&router, config(5, 1000, &[("v1", 1, &[a.addr])]));
    match router.apply(config(4, 1000, &[])) {
        Err(RouterError::StaleGeneration {
            current: 5,
            pushed: 4,
        }) => {}
        other => panic!("expected a stale generation error, got {other:?}"),
    }
    // Equal generation is accepted (idempotent re-push).
    router
        .apply(config(5, 1000, &[("v1", 1, &[a.addr])]))
        .unwrap();
    assert_eq!(router.generation(), 5);
}

#[tokio::test]
async fn in_flight_goes_back_to_zero() {
    let gate = Arc::new(Semaphore::new(0));
    let a = backend_gated("a", Some(gate.clone())).await;
    let router = Router::new();
    let listen = start(&router, config(1, 1000, &[("v1", 1, &[a.addr])]));
    let pending = tokio::spawn(get(listen));
    let backend_in_flight = |r: &Router| r.stats().apps[0].backends[0].in_flight;
    eventually("one in flight", || backend_in_flight(&router) == 1).await;
    assert_eq!(router.stats().apps[0].versions[0].in_flight, 1);
    // Draining: the backend is removed from the config but stays visible while busy.
    router.apply(config(2, 1000, &[("v1", 1, &[])])).unwrap();
    assert_eq!(backend_in_flight(&router), 1);
    gate.add_permits(1);
    assert_eq!(pending.await.unwrap().status, StatusCode::OK);
    eventually("nothing in flight", || {
        let s = router.stats();
        s.apps[0].backends.iter().all(|b| b.in_flight == 0) && s.apps[0].versions[0].in_flight == 0
    })
    .await;
}

#[tokio::test]
async fn keep_alive_survives_config_swaps() {
    let (a, b) = (backend("a").await, backend("b").await);
    let router = Router::new();
    let listen = start(&router, config(1, 1000, &[("v1", 1, &[a.addr])]));
    let mut client = Client::connect(listen).await;
    for i in 0..200u64 {
        if i % 10 == 9 {
            let set: &[_] = if (i / 10) % 2 == 0 {
                &[b.addr]
            } else {
                &[a.addr, b.addr]
            };
            router
                .apply(config(2 + i, 1000, &[("v1", 1, set)]))
                .unwrap();
        }
        let r = client.send("GET", "/", b"").await;
        assert_eq!(r.status, StatusCode::OK, "request {i}");
    }
    assert!(b.hits.load(Ordering::SeqCst) > 0);
}

#[tokio::test]
async fn removed_app_stops_listening_and_bind_errors_are_per_app() {
    let a = backend("a").await;
    let router = Router::new();
    let listen = start(&router, config(1, 1000, &[("v1", 1, &[a.addr])]));
    // A second app asking for the first app's port fails alone.
    let mut cfg = config(2, 1000, &[("v1", 1, &[a.addr])]);
    let mut other = cfg.apps[0].clone();
    other.app = "api".into();
    other.listen = listen;
    cfg.apps.push(other);
    let res = router.apply(cfg).unwrap();
    assert!(res.listeners[0].error.is_none());
    assert!(res.listeners[1].error.is_some());
    assert_eq!(get(listen).await.body, "a");
    // Removing the app closes its listener.
    router
        .apply(baton_router::RoutingConfig {
            generation: 3,
            apps: vec![],
        })
        .unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while tokio::net::TcpStream::connect(listen).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "listener still open"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(router.shutdown(std::time::Duration::from_secs(5)).await);
}

#[tokio::test]
async fn large_body_is_streamed() {
    let a = backend("a").await;
    let router = Router::new();
    let listen = start(&router, config(1, 1000, &[("v1", 1, &[a.addr])]));
    // Over the 1 MiB replay buffer: forwarded as a stream, intact.
    let body: &'static [u8] = Box::leak(vec![7u8; 3 * 1024 * 1024].into_boxed_slice());
    let r = request(listen, "PUT", body).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["x-body-len"], (3 * 1024 * 1024).to_string());
}

#[tokio::test]
async fn changed_listen_address_rebinds() {
    let a = backend("a").await;
    let router = Router::new();
    let first = start(&router, config(1, 1000, &[("v1", 1, &[a.addr])]));
    let mut client = Client::connect(first).await;
    assert_eq!(client.send("GET", "/", b"").await.body, "a");
    let mut cfg = config(2, 1000, &[("v1", 1, &[a.addr])]);
    cfg.apps[0].listen = "127.0.0.2:0".parse().unwrap();
    let second = start(&router, cfg);
    assert_ne!(first, second);
    assert_eq!(router.listen_addr("web"), Some(second));
    assert_eq!(get(second).await.body, "a");
    // The old listener stops accepting; its idle keep-alive connection is closed.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while tokio::net::TcpStream::connect(first).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "old listener still open"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}
