//! The admin API over a real unix socket, through `run` and `AdminClient`.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use baton_router::{AdminClient, AppRoutes, RouterError, RouterOptions, RoutingConfig, run};
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
            ..Default::default()
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
            ..Default::default()
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
            ..Default::default()
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

// ---------------------------------------------------------------------------------
// Two-phase switch: `PUT /v1/config/staged`, then `POST /v1/config/commit`.

/// A router served by `run` on its own admin socket.
struct Running {
    admin: AdminClient,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), RouterError>>,
}

impl Running {
    async fn start() -> Running {
        let socket = temp_socket();
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(
            RouterOptions {
                admin_socket: socket.clone(),
                ..Default::default()
            },
            stop.clone(),
        ));
        let admin = AdminClient::new(socket);
        wait_up(&admin).await;
        Running { admin, stop, task }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
    }
}

/// `config` with its one app listening on `listen`.
fn config_at(
    listen: SocketAddr,
    generation: u64,
    versions: &[(&str, u32, &[SocketAddr])],
) -> RoutingConfig {
    let mut cfg = config(generation, 1000, versions);
    cfg.apps[0].listen = listen;
    cfg
}

/// An app named `name` on any port, all of it to `version` on `backend`.
fn other_app(name: &str, version: &str, backend: SocketAddr) -> AppRoutes {
    let mut app = config(0, 1000, &[(version, 1, &[backend])]).apps.remove(0);
    app.app = name.into();
    app
}

fn unix_micros() -> u64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    u64::try_from(d.as_micros()).unwrap()
}

/// Pushes generation 1 (app "web", all to `backend`) and returns its address.
async fn push_first(admin: &AdminClient, backend: SocketAddr) -> SocketAddr {
    let pushed = admin
        .push(&config(1, 1000, &[("v1", 1, &[backend])]))
        .await
        .unwrap();
    assert!(pushed.listeners[0].error.is_none(), "{pushed:?}");
    pushed.listeners[0].listen
}

#[tokio::test]
async fn stage_then_commit_moves_traffic_only_at_the_commit() {
    let r = Running::start().await;
    let (a, b) = (backend("a").await, backend("b").await);
    let listen = push_first(&r.admin, a.addr).await;

    let next = config_at(listen, 2, &[("v2", 1, &[b.addr])]);
    let staged = r.admin.stage(&next).await.unwrap();
    assert_eq!(staged.generation, 2);
    assert_eq!(staged.listeners.len(), 1);
    assert_eq!(staged.listeners[0].listen, listen);
    assert!(staged.listeners[0].error.is_none(), "{staged:?}");

    // Staged, not live: traffic, config, stats and health still show generation 1.
    assert_eq!(get(listen).await.body, "a");
    assert_eq!(r.admin.config().await.unwrap().generation, 1);
    let stats = r.admin.stats().await.unwrap();
    assert_eq!(stats.generation, 1);
    let versions: Vec<_> = stats.apps[0].versions.iter().map(|v| &v.version).collect();
    assert_eq!(versions, ["v1"], "the staged version is not counted yet");
    let health = r.admin.health().await.unwrap();
    assert_eq!((health.generation, health.staged), (1, Some(2)));
    let pushed_at = health.switched_at_us;
    assert!(pushed_at > 0, "the push's swap is recorded");

    let before = unix_micros();
    let done = r.admin.commit(2).await.unwrap();
    let after = unix_micros();
    assert_eq!(done.generation, 2);
    assert!(
        (before..=after).contains(&done.switched_at_us),
        "{before} <= {} <= {after}",
        done.switched_at_us
    );
    assert_eq!(get(listen).await.body, "b");
    assert_eq!(r.admin.config().await.unwrap(), next);
    let health = r.admin.health().await.unwrap();
    assert_eq!(health.generation, 2);
    assert_eq!(health.staged, None);
    assert_eq!(health.switched_at_us, done.switched_at_us);
    assert!(health.switched_at_us >= pushed_at);
    r.stop().await;
}

#[tokio::test]
async fn a_commit_of_another_generation_is_refused_and_changes_nothing() {
    let r = Running::start().await;
    let (a, b) = (backend("a").await, backend("b").await);
    let listen = push_first(&r.admin, a.addr).await;

    match r.admin.commit(2).await {
        Err(RouterError::NotStaged {
            generation: 2,
            staged: None,
            live: 1,
        }) => {}
        other => panic!("expected a 409 naming nothing staged, got {other:?}"),
    }

    r.admin
        .stage(&config_at(listen, 2, &[("v2", 1, &[b.addr])]))
        .await
        .unwrap();
    let refused = r.admin.commit(3).await;
    match &refused {
        Err(RouterError::NotStaged {
            generation: 3,
            staged: Some(2),
            live: 1,
        }) => {}
        other => panic!("expected a 409 naming generation 2, got {other:?}"),
    }
    let message = refused.unwrap_err().to_string();
    assert!(message.contains("generation 2 is staged"), "{message}");

    assert_eq!(get(listen).await.body, "a");
    let health = r.admin.health().await.unwrap();
    assert_eq!((health.generation, health.staged), (1, Some(2)));

    // The staged table survived the refused commit.
    r.admin.commit(2).await.unwrap();
    assert_eq!(get(listen).await.body, "b");
    r.stop().await;
}

#[tokio::test]
async fn a_repeated_commit_answers_the_first_switch() {
    let r = Running::start().await;
    let (a, b) = (backend("a").await, backend("b").await);
    let listen = push_first(&r.admin, a.addr).await;

    r.admin
        .stage(&config_at(listen, 2, &[("v2", 1, &[b.addr])]))
        .await
        .unwrap();
    let first = r.admin.commit(2).await.unwrap();
    let again = r.admin.commit(2).await.unwrap();
    assert_eq!(again, first);

    // Still so with a newer table staged meanwhile, which stays staged.
    r.admin
        .stage(&config_at(listen, 3, &[("v1", 1, &[a.addr])]))
        .await
        .unwrap();
    assert_eq!(r.admin.commit(2).await.unwrap(), first);
    let health = r.admin.health().await.unwrap();
    assert_eq!((health.generation, health.staged), (2, Some(3)));
    assert_eq!(health.switched_at_us, first.switched_at_us);
    assert_eq!(get(listen).await.body, "b");
    r.stop().await;
}

#[tokio::test]
async fn a_stage_not_newer_than_the_live_generation_is_refused() {
    let r = Running::start().await;
    let a = backend("a").await;
    r.admin
        .push(&config(5, 1000, &[("v1", 1, &[a.addr])]))
        .await
        .unwrap();
    r.admin
        .stage(&config(6, 1000, &[("v1", 1, &[a.addr])]))
        .await
        .unwrap();

    for stale in [4, 5] {
        match r.admin.stage(&config(stale, 1000, &[])).await {
            Err(RouterError::StaleGeneration { current: 5, pushed }) if pushed == stale => {}
            other => panic!("expected a 409 for generation {stale}, got {other:?}"),
        }
    }
    // Refused stages leave the staged table alone.
    let health = r.admin.health().await.unwrap();
    assert_eq!((health.generation, health.staged), (5, Some(6)));
    r.stop().await;
}

#[tokio::test]
async fn a_listener_bound_by_a_stage_serves_from_the_commit() {
    let r = Running::start().await;
    let (a, b) = (backend("a").await, backend("b").await);
    let listen = push_first(&r.admin, a.addr).await;

    let mut next = config_at(listen, 2, &[("v1", 1, &[a.addr])]);
    next.apps.push(other_app("api", "v1", b.addr));
    let staged = r.admin.stage(&next).await.unwrap();
    let api = staged.listeners.iter().find(|l| l.app == "api").unwrap();
    assert!(api.error.is_none(), "{api:?}");
    let api = api.listen;
    assert_ne!(api.port(), 0, "bound at the stage");

    // The socket is already open: a client connecting now waits in its backlog.
    let mut early = Client::connect(api).await;
    let early = tokio::spawn(async move { early.send("GET", "/", b"").await });
    assert!(!early.is_finished());
    let stats = r.admin.stats().await.unwrap();
    assert!(
        stats.listeners.iter().all(|l| l.app != "api"),
        "not listed before the commit: {:?}",
        stats.listeners
    );

    r.admin.commit(2).await.unwrap();
    assert_eq!(early.await.unwrap().body, "b");
    assert_eq!(get(api).await.body, "b");
    assert_eq!(get(listen).await.body, "a");
    let stats = r.admin.stats().await.unwrap();
    let listed = stats.listeners.iter().find(|l| l.app == "api").unwrap();
    assert_eq!((listed.listen, &listed.error), (api, &None));
    r.stop().await;
}

#[tokio::test]
async fn a_newer_stage_replaces_the_staged_one_and_keeps_its_sockets() {
    let r = Running::start().await;
    let (a, b) = (backend("a").await, backend("b").await);
    let listen = push_first(&r.admin, a.addr).await;

    let mut second = config_at(listen, 2, &[("v1", 1, &[a.addr])]);
    second.apps.push(other_app("api", "v1", a.addr));
    let staged = r.admin.stage(&second).await.unwrap();
    let api = staged
        .listeners
        .iter()
        .find(|l| l.app == "api")
        .unwrap()
        .listen;

    let mut early = Client::connect(api).await;
    let early = tokio::spawn(async move { early.send("GET", "/", b"").await });

    // The same fixed port again: the replaced stage's socket is taken over, with the
    // connection waiting in its backlog.
    let mut third = config_at(listen, 3, &[("v1", 1, &[a.addr])]);
    let mut app = other_app("api", "v2", b.addr);
    app.listen = api;
    third.apps.push(app);
    let staged = r.admin.stage(&third).await.unwrap();
    let listed = staged.listeners.iter().find(|l| l.app == "api").unwrap();
    assert_eq!((listed.listen, &listed.error), (api, &None));
    assert_eq!(r.admin.health().await.unwrap().staged, Some(3));

    assert!(matches!(
        r.admin.commit(2).await,
        Err(RouterError::NotStaged {
            staged: Some(3),
            ..
        })
    ));
    r.admin.commit(3).await.unwrap();
    assert_eq!(early.await.unwrap().body, "b");
    assert_eq!(get(api).await.body, "b");
    r.stop().await;
}

#[tokio::test]
async fn a_push_discards_the_staged_table() {
    let r = Running::start().await;
    let (a, b) = (backend("a").await, backend("b").await);
    let listen = push_first(&r.admin, a.addr).await;

    let mut next = config_at(listen, 2, &[("v2", 1, &[b.addr])]);
    next.apps.push(other_app("api", "v2", b.addr));
    let staged = r.admin.stage(&next).await.unwrap();
    let api = staged
        .listeners
        .iter()
        .find(|l| l.app == "api")
        .unwrap()
        .listen;

    r.admin
        .push(&config_at(listen, 3, &[("v1", 1, &[a.addr])]))
        .await
        .unwrap();
    assert_eq!(r.admin.health().await.unwrap().staged, None);
    match r.admin.commit(2).await {
        Err(RouterError::NotStaged {
            generation: 2,
            staged: None,
            live: 3,
        }) => {}
        other => panic!("expected a 409, got {other:?}"),
    }
    assert_eq!(get(listen).await.body, "a");
    // The discarded stage's listener is closed with it.
    let refused = tokio::net::TcpStream::connect(api).await;
    assert!(refused.is_err(), "{api} still open");
    r.stop().await;
}

#[tokio::test]
async fn raw_http_commit_shapes() {
    // The routes and JSON shapes, as any client sees them.
    let r = Running::start().await;
    let a = backend("a").await;
    push_first(&r.admin, a.addr).await;
    let socket = r.admin.socket().to_path_buf();
    let call = |method: &'static str, path: &'static str, body: String| {
        let socket = socket.clone();
        async move {
            let stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            let req = http::Request::builder()
                .method(method)
                .uri(path)
                .header("host", "x")
                .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                .unwrap();
            let resp = sender.send_request(req).await.unwrap();
            let status = resp.status();
            let body = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .unwrap()
                .to_bytes();
            (
                status,
                serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
            )
        }
    };

    let cfg = serde_json::to_string(&config(2, 1000, &[("v1", 1, &[a.addr])])).unwrap();
    let (status, body) = call("PUT", "/v1/config/staged", cfg).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["generation"], 2);

    let (status, body) = call("POST", "/v1/config/commit", r#"{"generation": 3}"#.into()).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        (&body["generation"], &body["staged"]),
        (&1.into(), &2.into())
    );
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("generation 2 is staged")
    );

    let (status, body) = call("POST", "/v1/config/commit", r#"{"generation": 2}"#.into()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["generation"], 2);
    assert!(body["switched_at_us"].as_u64().unwrap() > 0);

    let (status, body) = call("GET", "/v1/health", String::new()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["staged"], serde_json::Value::Null);
    assert!(body["switched_at_us"].as_u64().unwrap() > 0);

    let (status, _) = call("POST", "/v1/config/commit", r#"{"gen": 2}"#.into()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    r.stop().await;
}
