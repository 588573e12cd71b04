//! The admin API over a real unix socket, through `run` and `AdminClient`.

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use baton_router::{AdminClient, RouterError, RouterOptions, run};
use common::*;
use http::StatusCode;
use tokio_util::sync::CancellationToken;

fn temp_socket() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "baton-router-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("admin.sock")
}

async fn wait_up(client: &AdminClient) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while client.health().await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "router never answered"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn admin_protocol_end_to_end() {
    let socket = temp_socket();
    // A stale socket file from a dead router is replaced.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let stop = CancellationToken::new();
    let task = tokio::spawn(run(
        RouterOptions {
            admin_socket: socket.clone(),
        },
        stop.clone(),
    ));
    let admin = AdminClient::new(socket.clone());
    wait_up(&admin).await;

    let health = admin.health().await.unwrap();
    assert_eq!(health.pid, std::process::id());
    assert_eq!(health.generation, 0);
    assert!(health.started_ms > 0);

    let a = backend("a").await;
    let cfg = config(3, 1000, &[("v1", 1, &[a.addr])]);
    let pushed = admin.push(&cfg).await.unwrap();
    assert_eq!(pushed.generation, 3);
    let listen = pushed.listeners[0].listen;
    assert!(pushed.listeners[0].error.is_none());
    assert_eq!(admin.config().await.unwrap(), cfg);

    let r = get(listen).await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "a"));

    let stats = admin.stats().await.unwrap();
    assert_eq!(stats.generation, 3);
    let app = &stats.apps[0];
    assert_eq!(app.app, "web");
    assert_eq!(app.versions[0].requests, 1);
    assert_eq!(app.versions[0].status_2xx, 1);
    assert_eq!(app.backends[0].address, a.addr);
    assert_eq!(app.backends[0].requests, 1);

    match admin.push(&config(2, 1000, &[])).await {
        Err(RouterError::StaleGeneration {
            current: 3,
            pushed: 2,
        }) => {}
        other => panic!("expected 409, got {other:?}"),
    }
    assert_eq!(admin.health().await.unwrap().generation, 3);

    // A second router on the same socket refuses to start.
    match run(
        RouterOptions {
            admin_socket: socket.clone(),
        },
        CancellationToken::new(),
    )
    .await
    {
        Err(RouterError::AlreadyRunning { .. }) => {}
        other => panic!("expected AlreadyRunning, got {other:?}"),
    }

    stop.cancel();
    task.await.unwrap().unwrap();
    assert!(!socket.exists(), "socket removed on exit");
    assert!(matches!(
        admin.health().await,
        Err(RouterError::Unreachable { .. })
    ));
}

#[tokio::test]
async fn raw_http_conflict_status() {
    // The 409 is a plain HTTP status, visible to any client, not just AdminClient.
    let socket = temp_socket();
    let stop = CancellationToken::new();
    let task = tokio::spawn(run(
        RouterOptions {
            admin_socket: socket.clone(),
        },
        stop.clone(),
    ));
    let admin = AdminClient::new(socket.clone());
    wait_up(&admin).await;
    admin.push(&config(7, 1000, &[])).await.unwrap();

    let stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let body = serde_json::to_vec(&config(6, 1000, &[])).unwrap();
    let req = http::Request::put("/v1/config")
        .header("host", "x")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    stop.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn standalone_balances() {
    let (a, b) = (backend("a").await, backend("b").await);
    // Take a free port for the standalone listener.
    let listen = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let stop = CancellationToken::new();
    let task = tokio::spawn(baton_router::run_standalone(
        listen,
        vec![a.addr, b.addr],
        stop.clone(),
    ));
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while tokio::net::TcpStream::connect(listen).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let mut bodies = vec![get(listen).await.body, get(listen).await.body];
    bodies.sort();
    assert_eq!(bodies, vec!["a", "b"]);
    stop.cancel();
    task.await.unwrap().unwrap();
}
