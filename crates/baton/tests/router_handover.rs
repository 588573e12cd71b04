//! Replacing the router process under load (`baton router --take-over`, `baton router
//! upgrade`, and `baton serve` finding a router of another build): the real binary,
//! real sockets, load with keep-alive and new-connection clients, and a WebSocket
//! open across the replacement.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{BATON, Harness, LoadConfig, assert_no_failures, free_port, loadgen, wait_until};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// A directory of its own for one test, removed when dropped (kept when it fails).
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("baton-handover-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("test dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test files kept in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A `baton` process, killed (by its pid) when dropped.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(dir: &Path, name: &str, args: &[&str]) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("log file");
        let child = Command::new(BATON)
            .args(args)
            .env("BATON_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("start baton");
        Proc { child, log }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit by itself; its exit code.
    fn wait_exit(&mut self, what: &str, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what} to exit; its log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// SIGTERM (a graceful stop), then wait for the exit.
    fn terminate(&mut self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid()).expect("pid"));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        self.wait_exit("the router after SIGTERM", Duration::from_secs(20));
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// One `GET path` with `Connection: close`: (status, body).
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status in {text:?}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Ok((status, body))
}

/// Requests answered 2xx so far, by the router serving `/metrics` on `metrics`.
fn requests_served(metrics: SocketAddr) -> u64 {
    let (status, body) = http_get(metrics, "/metrics").expect("metrics");
    assert_eq!(status, 200, "{body}");
    body.lines()
        .filter(|l| l.starts_with("baton_requests_total{") && l.contains("code_class=\"2xx\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A backend for the standalone router: `200 ok` to every request (keep-alive unless
/// the request says `Connection: close`), and a WebSocket echo on an upgrade.
async fn start_backend() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("backend");
    let addr = listener.local_addr().expect("backend addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_backend(stream));
        }
    });
    addr
}

async fn serve_backend(mut stream: tokio::net::TcpStream) {
    let mut buf = Vec::new();
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let raw = String::from_utf8_lossy(&buf[..end]).into_owned();
        let head = raw.to_ascii_lowercase();
        buf.drain(..end);
        if head.contains("upgrade: websocket") {
            let key = raw
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("sec-websocket-key")
                        .then(|| value.trim().to_string())
                })
                .unwrap_or_default();
            let accept =
                tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
            let answer = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            );
            if stream.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
            let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                stream,
                tokio_tungstenite::tungstenite::protocol::Role::Server,
                None,
            )
            .await;
            while let Some(Ok(m)) = ws.next().await {
                if m.is_text() && ws.send(m).await.is_err() {
                    return;
                }
            }
            return;
        }
        let close = head.contains("connection: close");
        let answer: &[u8] = if close {
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        };
        if stream.write_all(answer).await.is_err() || close {
            return;
        }
    }
}

fn load_config(target: SocketAddr) -> LoadConfig {
    let mut cfg = LoadConfig::new(target);
    cfg.keepalive_workers = 4;
    cfg.fresh_workers = 4;
    cfg.max_requests = 400_000;
    cfg.max_duration = Duration::from_secs(90);
    cfg
}

async fn wait_for_more(load: &loadgen::LoadHandle, more: u64, what: &str) {
    let (done, _) = load.progress();
    assert!(
        load.wait_for_requests(done + more, Duration::from_secs(30))
            .await,
        "the load stalled waiting for {what}"
    );
}

fn standalone_args<'a>(
    listen: &'a str,
    upstream: &'a str,
    metrics: &'a str,
    socket: &'a str,
) -> Vec<&'a str> {
    vec![
        "router",
        "--listen",
        listen,
        "--upstream",
        upstream,
        "--workers",
        "2",
        "--metrics-listen",
        metrics,
        "--handover-socket",
        socket,
    ]
}

/// A standalone router with a handover socket, in a test directory of its own.
struct Standalone {
    dir: TempDir,
    backend: SocketAddr,
    listen: SocketAddr,
    metrics: SocketAddr,
    socket: PathBuf,
}

impl Standalone {
    /// Starts the backend and the first router ("old"), and waits until it serves.
    async fn start(name: &str) -> (Standalone, Proc) {
        let dir = TempDir::new(name);
        let socket = dir.0.join("handover.sock");
        let s = Standalone {
            dir,
            backend: start_backend().await,
            listen: local(free_port()),
            metrics: local(free_port()),
            socket,
        };
        let old = s.spawn("old", s.listen, &[]);
        let listen = s.listen;
        wait_until("the router to serve", Duration::from_secs(20), || {
            http_get(listen, "/").is_ok_and(|(s, _)| s == 200)
        });
        (s, old)
    }

    /// A router process `name` listening on `listen`, with `extra` arguments.
    fn spawn(&self, name: &str, listen: SocketAddr, extra: &[&str]) -> Proc {
        let (listen, backend, metrics) = (
            listen.to_string(),
            self.backend.to_string(),
            self.metrics.to_string(),
        );
        let socket = self.socket.to_str().expect("utf-8 path");
        let mut args = standalone_args(&listen, &backend, &metrics, socket);
        args.extend(extra);
        Proc::spawn(&self.dir.0, name, &args)
    }

    /// A successor that takes over, its open streams given `drain_grace`.
    fn take_over(&self, name: &str, drain_grace: &str) -> Proc {
        self.spawn(
            name,
            self.listen,
            &["--take-over", "--drain-grace", drain_grace],
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_router_is_replaced_under_load_without_a_failed_request() {
    let (router, mut old) = Standalone::start("standalone").await;
    let (listen, metrics) = (router.listen, router.metrics);

    // A WebSocket through the old router.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{listen}/ws"))
        .await
        .expect("websocket through the router");
    ws.send(Message::text("hello")).await.expect("ws send");
    let echo = ws.next().await.expect("echo").expect("echo");
    assert_eq!(echo, Message::text("hello"));

    let load = loadgen::start(load_config(listen));
    assert!(
        load.wait_for_requests(500, Duration::from_secs(30)).await,
        "load did not get going"
    );
    let by_old = requests_served(metrics);
    assert!(by_old > 0, "the old router served requests");

    let mut new = router.take_over("new", "2s");
    let replaced_at = Instant::now();

    // The WebSocket keeps working while the old router drains, then gets 1001.
    let mut echoes_after = 0;
    let close_code = loop {
        assert!(
            replaced_at.elapsed() < Duration::from_secs(30),
            "no close frame; old router's log:\n{}",
            old.log_text()
        );
        let text = format!("ping {echoes_after}");
        if ws.send(Message::text(text.clone())).await.is_err() {
            panic!("the WebSocket failed before its close frame");
        }
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                assert_eq!(t.as_str(), text);
                echoes_after += 1;
            }
            Ok(Some(Ok(Message::Close(frame)))) => {
                break frame.map(|f| u16::from(f.code));
            }
            other => panic!("unexpected WebSocket event {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(close_code, Some(1001), "closed with 1001 going away");
    assert!(
        echoes_after >= 5,
        "the WebSocket kept working during the drain ({echoes_after} echoes)"
    );
    assert!(
        replaced_at.elapsed() >= Duration::from_millis(1500),
        "the WebSocket was kept for the drain grace"
    );

    let code = old.wait_exit("the old router", Duration::from_secs(20));
    assert_eq!(code, Some(0), "old router log:\n{}", old.log_text());
    assert!(new.alive(), "new router log:\n{}", new.log_text());
    wait_for_more(&load, 1000, "the new router").await;
    let by_new = requests_served(metrics);
    assert!(by_new > 0, "the new router served requests");
    let report = load.finish().await;
    assert_no_failures(&report);
    eprintln!(
        "{} requests, 0 failed; old router served {by_old}+ before the handover, the new one {by_new}+",
        report.requests
    );
    let old_log = old.log_text();
    assert!(old_log.contains("handed over to a new router"), "{old_log}");
    let new_log = new.log_text();
    assert!(
        new_log.contains("listening on the socket handed over"),
        "{new_log}"
    );

    // The new router is a normal router: a plain stop removes its handover socket.
    new.terminate();
    assert!(!router.socket.exists(), "handover socket left behind");
}

/// An HTTP/2 (h2c) connection to `addr`: its request sender, and its driver's end
/// (`Ok` for a graceful close).
async fn h2c_connection(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    tokio::task::JoinHandle<Result<(), hyper::Error>>,
) {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect for h2c");
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2c handshake");
    (sender, tokio::spawn(conn))
}

/// A stream above the last one a graceful GOAWAY (`NO_ERROR`) let through: never
/// processed, safe to send again (RFC 9113 6.8).
fn refused_by_goaway(e: &hyper::Error) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<h2::Error>())
        .is_some_and(|h| h.is_go_away() && h.reason() == Some(h2::Reason::NO_ERROR))
}

fn h2_get(addr: SocketAddr) -> hyper::Request<http_body_util::Empty<bytes::Bytes>> {
    hyper::Request::get(format!("http://{addr}/"))
        .body(http_body_util::Empty::new())
        .expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_is_sent_goaway_at_a_handover_and_no_stream_it_took_fails() {
    let (router, mut old) = Standalone::start("h2c").await;
    let listen = router.listen;
    let (mut sender, driver) = h2c_connection(listen).await;
    let first = sender
        .send_request(h2_get(listen))
        .await
        .expect("h2 answer");
    assert_eq!(first.status(), 200);

    let mut new = router.take_over("new", "2s");
    let replaced_at = Instant::now();
    // Streams keep going on the old connection until its GOAWAY: every stream the old
    // router took is answered; one refused after the GOAWAY was never processed (a
    // client sends it again on a new connection).
    let (mut answered, mut refused) = (0u32, 0u32);
    loop {
        assert!(
            replaced_at.elapsed() < Duration::from_secs(30),
            "no GOAWAY; old router's log:\n{}",
            old.log_text()
        );
        if sender.ready().await.is_err() {
            break;
        }
        match sender.send_request(h2_get(listen)).await {
            Ok(resp) => {
                assert_eq!(resp.status(), 200);
                answered += 1;
            }
            Err(e) if e.is_canceled() || e.is_closed() || refused_by_goaway(&e) => {
                refused += 1;
                break;
            }
            Err(e) => panic!("a stream failed across the handover: {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ended = tokio::time::timeout(Duration::from_secs(20), driver)
        .await
        .expect("the old connection ended")
        .expect("its driver");
    assert!(ended.is_ok(), "closed by a GOAWAY, not an error: {ended:?}");
    assert!(answered > 0, "streams were answered during the drain");
    assert!(refused <= 1, "{refused} streams refused");

    // A new connection reaches the successor.
    let code = old.wait_exit("the old router", Duration::from_secs(20));
    assert_eq!(code, Some(0), "old router log:\n{}", old.log_text());
    let (mut sender, _driver) = h2c_connection(listen).await;
    let resp = sender
        .send_request(h2_get(listen))
        .await
        .expect("h2 answer from the new router");
    assert_eq!(resp.status(), 200);
    assert!(new.alive(), "new router log:\n{}", new.log_text());
    eprintln!(
        "{answered} streams answered on the old connection during the drain, {refused} refused after its GOAWAY"
    );
    new.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successor_that_fails_before_ready_leaves_the_old_router_serving() {
    let (router, mut old) = Standalone::start("failing").await;
    let (listen, socket) = (router.listen, router.socket.clone());
    let load = loadgen::start(load_config(listen));
    assert!(
        load.wait_for_requests(300, Duration::from_secs(30)).await,
        "load did not get going"
    );

    // 1. A successor that dies after receiving the sockets (before "ready").
    {
        let mut s = std::os::unix::net::UnixStream::connect(&socket).expect("handover socket");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let hello = serde_json::json!({"type": "hello", "protocol": 1, "pid": 1, "build": "test"});
        let body = serde_json::to_vec(&hello).unwrap();
        s.write_all(&(body.len() as u32).to_be_bytes()).unwrap();
        s.write_all(&body).unwrap();
        let mut len = [0u8; 4];
        s.read_exact(&mut len).unwrap();
        let mut offer = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut offer).unwrap();
        let offer: serde_json::Value = serde_json::from_slice(&offer).unwrap();
        assert_eq!(offer["type"], "offer", "{offer}");
        assert_eq!(offer["sockets"][0]["bound"], listen.to_string(), "{offer}");
        // Gone without a word (the descriptors it was sent close with it).
    }
    wait_for_more(&load, 500, "the old router after an abandoned handover").await;
    assert!(old.alive());

    // 2. A real successor that cannot start: its listen address is taken.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut bad = router.spawn("bad", taken.local_addr().unwrap(), &["--take-over"]);
    let code = bad.wait_exit("the failing successor", Duration::from_secs(20));
    assert_eq!(code, Some(1), "{}", bad.log_text());
    assert!(
        bad.log_text().contains("cannot listen"),
        "{}",
        bad.log_text()
    );
    wait_for_more(&load, 500, "the old router after a failed successor").await;
    assert!(old.alive(), "old router log:\n{}", old.log_text());
    assert!(
        old.log_text().contains("did not take over; serving on"),
        "{}",
        old.log_text()
    );

    // 3. And it still hands over to a good one.
    let mut good = router.take_over("good", "1s");
    old.wait_exit("the old router", Duration::from_secs(20));
    wait_for_more(&load, 500, "the new router").await;
    let report = load.finish().await;
    assert_no_failures(&report);
    assert!(good.alive());
    good.terminate();
    assert!(!socket.exists(), "handover socket left behind");
}

#[test]
fn bad_take_over_input_exits_2() {
    let out = Command::new(BATON)
        .args([
            "router",
            "--listen",
            "127.0.0.1:1",
            "--upstream",
            "127.0.0.1:2",
            "--take-over",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--handover-socket"), "{err}");
    let dir = TempDir::new("no-router");
    let out = Command::new(BATON)
        .args(["router", "upgrade", "--data-dir"])
        .arg(&dir.0)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no router socket"), "{err}");
}

/// `baton serve`'s router replaced twice under load: by `baton router upgrade`, then
/// by a restarted `baton serve` of another build finding it; the control plane keeps
/// pushing tables to the new router (a deploy completes through it).
#[test]
fn the_control_planes_router_is_replaced_under_load() {
    let mut h = Harness::new();
    h.bring_up("web", 2, "");
    let first = h.router_pids();
    assert_eq!(first.len(), 1, "{first:?}");
    let (after, report) = common::with_load(h.load(400_000), 2000, || {
        // 1. `baton router upgrade`.
        let out = h.cli_ok(&[
            "router",
            "upgrade",
            "--data-dir",
            common::path_str(&h.dir),
            "--drain-grace",
            "1s",
            "--json",
        ]);
        let done: serde_json::Value = serde_json::from_str(&out).expect("json");
        assert_eq!(done["old_pid"], first[0], "{done}");
        let second = u32::try_from(done["new_pid"].as_u64().expect("new pid")).unwrap();
        assert_ne!(second, first[0]);
        wait_until("the old router to exit", Duration::from_secs(30), || {
            h.router_pids() == vec![second]
        });

        // 2. A control plane of another build re-attaches and replaces the router.
        h.kill9_server();
        let other = h.dir.join("baton-next");
        std::fs::copy(BATON, &other).expect("copy baton");
        h.exe = other;
        h.start_server();
        wait_until(
            "the router of the new build",
            Duration::from_secs(60),
            || {
                let pids = h.router_pids();
                pids.len() == 1 && pids[0] != second
            },
        );
        let third = h.router_pids()[0];

        // The control plane pushes to the new router: a deploy goes through it.
        h.cli_ok(&["deploy", "web", "v2", "--wait"]);
        (second, third)
    });
    assert_no_failures(&report);
    let (second, third) = after;
    assert_ne!(second, third);
    let s = h.status("web");
    assert_eq!(s["stable_version"], "v2", "{s}");
    let (status, version) = common::get_version(h.listen);
    assert_eq!((status, version.as_str()), (200, "v2"));
    let log = std::fs::read_to_string(h.dir.join("serve.log")).unwrap_or_default();
    assert!(log.contains("router replaced by handover"), "{log}");
    eprintln!(
        "{} requests through three routers, 0 failed",
        report.requests
    );
}
