//! The sample service over real sockets on port 0. Tests wait for conditions
//! with a deadline; they never sleep to synchronise.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::server::{ServerState, serve_listener_with_state};
use crate::{FaultKnobs, SampleOptions, Shape};

const DEADLINE: Duration = Duration::from_secs(10);

struct TestServer {
    addr: SocketAddr,
    state: Arc<ServerState>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl TestServer {
    fn start(knobs: FaultKnobs) -> TestServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let opts = SampleOptions {
            listen: addr,
            version: "v-test".to_owned(),
            knobs,
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let state = Arc::new(ServerState::default());
        let task = tokio::spawn(serve_listener_with_state(
            listener,
            opts,
            async {
                let _ = stopped.await;
            },
            Arc::clone(&state),
        ));
        TestServer {
            addr,
            state,
            stop: Some(stop),
            task,
        }
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// One HTTP/1.1 keep-alive connection.
struct Client {
    sender: SendRequest<Full<Bytes>>,
    addr: SocketAddr,
}

struct Reply {
    status: StatusCode,
    version: Option<String>,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        Client { sender, addr }
    }

    /// Sends a request; the returned future does not borrow the client.
    fn send(
        &mut self,
        method: &str,
        path: &str,
        body: &'static str,
    ) -> impl Future<Output = Reply> + use<> {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string())
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap();
        let sent = self.sender.send_request(req);
        async move {
            let resp = sent.await.unwrap();
            let status = resp.status();
            let version = resp
                .headers()
                .get("x-version")
                .map(|v| v.to_str().unwrap().to_owned());
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            Reply {
                status,
                version,
                body,
            }
        }
    }

    async fn get(&mut self, path: &str) -> Reply {
        self.sender.ready().await.unwrap();
        self.send("GET", path, "").await
    }
}

/// Waits until `cond` holds, failing the test after [`DEADLINE`].
async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn every_response_has_the_version_header() {
    let server = TestServer::start(FaultKnobs::default());
    let mut c = Client::connect(server.addr).await;

    let root = c.get("/").await;
    assert_eq!(root.status, StatusCode::OK);
    assert_eq!(root.version.as_deref(), Some("v-test"));
    let body = root.json();
    assert_eq!(body["version"], "v-test");
    assert_eq!(body["port"], server.addr.port());
    assert_eq!(body["pid"], std::process::id());

    for (path, status) in [
        ("/healthz", StatusCode::OK),
        ("/nope", StatusCode::NOT_FOUND),
        ("/slow?ms=1", StatusCode::OK),
        ("/slow?ms=x", StatusCode::BAD_REQUEST),
        ("/echo", StatusCode::METHOD_NOT_ALLOWED),
    ] {
        let r = c.get(path).await;
        assert_eq!(r.status, status, "{path}");
        assert_eq!(r.version.as_deref(), Some("v-test"), "{path}");
    }
    assert_eq!(&c.get("/healthz").await.body[..], b"ok\n");

    c.sender.ready().await.unwrap();
    let echo = c.send("POST", "/echo", "hello baton").await;
    assert_eq!(echo.status, StatusCode::OK);
    assert_eq!(echo.version.as_deref(), Some("v-test"));
    assert_eq!(&echo.body[..], b"hello baton");
}

#[tokio::test]
async fn error_rate_is_roughly_the_fraction() {
    let server = TestServer::start(FaultKnobs {
        error_rate: 0.3,
        ..FaultKnobs::default()
    });
    let mut c = Client::connect(server.addr).await;
    let mut errors = 0;
    for _ in 0..1000 {
        let r = c.get("/").await;
        match r.status {
            StatusCode::OK => {}
            StatusCode::INTERNAL_SERVER_ERROR => errors += 1,
            other => panic!("unexpected {other}"),
        }
        assert_eq!(r.version.as_deref(), Some("v-test"));
    }
    // Binomial(1000, 0.3): mean 300, sd ~14.5; these bounds are > 6 sd away.
    assert!((200..=400).contains(&errors), "{errors} errors of 1000");

    // The health endpoint is not subject to the error rate.
    for _ in 0..100 {
        assert_eq!(c.get("/healthz").await.status, StatusCode::OK);
    }
}

#[tokio::test]
async fn all_errors_when_rate_is_one() {
    let server = TestServer::start(FaultKnobs {
        error_rate: 1.0,
        ..FaultKnobs::default()
    });
    let mut c = Client::connect(server.addr).await;
    for _ in 0..20 {
        assert_eq!(c.get("/").await.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
}

#[tokio::test]
async fn never_ready_answers_503_on_healthz_only() {
    let server = TestServer::start(FaultKnobs {
        never_ready: true,
        ..FaultKnobs::default()
    });
    let mut c = Client::connect(server.addr).await;
    let health = c.get("/healthz").await;
    assert_eq!(health.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(health.version.as_deref(), Some("v-test"));
    assert_eq!(c.get("/").await.status, StatusCode::OK);
}

#[tokio::test]
async fn latency_delays_application_requests() {
    let server = TestServer::start(FaultKnobs {
        latency: Duration::from_millis(50),
        ..FaultKnobs::default()
    });
    let mut c = Client::connect(server.addr).await;
    let start = Instant::now();
    assert_eq!(c.get("/").await.status, StatusCode::OK);
    assert!(start.elapsed() >= Duration::from_millis(50));
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let mut server = TestServer::start(FaultKnobs::default());

    // An idle keep-alive connection: it must be closed, not waited for.
    let mut idle = Client::connect(server.addr).await;
    assert_eq!(idle.get("/healthz").await.status, StatusCode::OK);

    // A request in flight when the shutdown starts.
    let mut busy = Client::connect(server.addr).await;
    busy.sender.ready().await.unwrap();
    let slow = tokio::spawn(busy.send("GET", "/slow?ms=300", ""));
    let state = Arc::clone(&server.state);
    wait_for("the slow request to arrive", || {
        state.in_flight.load(Ordering::SeqCst) == 1
    })
    .await;

    server.shutdown();

    // The in-flight request still gets its full answer.
    let reply = tokio::time::timeout(DEADLINE, slow)
        .await
        .expect("slow request answered")
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.version.as_deref(), Some("v-test"));
    assert_eq!(reply.json()["slept_ms"], 300);

    // serve returns once every connection is done, the idle one included.
    tokio::time::timeout(DEADLINE, &mut server.task)
        .await
        .expect("server stopped")
        .unwrap()
        .unwrap();
    wait_for("the idle connection to close", || idle.sender.is_closed()).await;

    // And no longer accepts connections.
    assert!(TcpStream::connect(server.addr).await.is_err());
}

#[tokio::test]
async fn shutdown_with_no_connections_returns_at_once() {
    let mut server = TestServer::start(FaultKnobs::default());
    let mut c = Client::connect(server.addr).await;
    assert_eq!(c.get("/").await.status, StatusCode::OK);
    drop(c);
    server.shutdown();
    tokio::time::timeout(DEADLINE, &mut server.task)
        .await
        .expect("server stopped")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn public_serve_binds_and_stops() {
    // Find a free port, release it, and let `serve` bind it.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let opts = SampleOptions {
        listen: addr,
        version: "v-serve".to_owned(),
        knobs: FaultKnobs::default(),
    };
    let task = tokio::spawn(crate::serve(opts, async {
        let _ = stopped.await;
    }));
    let start = Instant::now();
    let stream = loop {
        match TcpStream::connect(addr).await {
            Ok(s) => break s,
            Err(e) => {
                assert!(start.elapsed() < DEADLINE, "server never listened: {e}");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    };
    drop(stream);
    let mut c = Client::connect(addr).await;
    assert_eq!(c.get("/").await.version.as_deref(), Some("v-serve"));
    drop(c);
    let _ = stop.send(());
    tokio::time::timeout(DEADLINE, task)
        .await
        .expect("server stopped")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn items_follow_the_shape_knob() {
    let standard = TestServer::start(FaultKnobs::default());
    let mut c = Client::connect(standard.addr).await;
    let list = c.get("/items").await;
    assert_eq!(list.status, StatusCode::OK);
    let v = list.json();
    assert_eq!(
        v["items"][0],
        serde_json::json!({"id": 1, "name": "tea", "price": 4.5})
    );
    assert_eq!(v["currency"], "EUR");
    assert_eq!(v["version"], "v-test");
    assert!(v["served_at"].as_u64().unwrap() > 0);
    assert_eq!(c.get("/items/2").await.json()["price"], 3.0);
    assert_eq!(c.get("/items/9").await.status, StatusCode::NOT_FOUND);
    assert_eq!(c.get("/items/x").await.status, StatusCode::NOT_FOUND);

    let renamed = TestServer::start(FaultKnobs {
        shape: Shape::Renamed,
        ..FaultKnobs::default()
    });
    let mut c = Client::connect(renamed.addr).await;
    let v = c.get("/items").await.json();
    assert_eq!(
        v["items"][0],
        serde_json::json!({"id": 1, "name": "tea", "cost": 4.5})
    );

    let changed = TestServer::start(FaultKnobs {
        shape: Shape::Changed,
        ..FaultKnobs::default()
    });
    let mut c = Client::connect(changed.addr).await;
    assert_eq!(c.get("/items/2").await.json()["price"], 3.5);
    assert_eq!(c.get("/items/1").await.json()["price"], 4.5);
    assert_eq!(c.get("/items").await.json()["items"][1]["price"], 3.0);
}

#[test]
fn shape_knob_is_read_from_the_environment() {
    let get = |v: &'static str| move |name: &str| (name == "SAMPLE_SHAPE").then(|| v.to_owned());
    assert_eq!(
        FaultKnobs::from_lookup(&get("renamed")).unwrap().shape,
        Shape::Renamed
    );
    assert_eq!(
        FaultKnobs::from_lookup(&get("changed")).unwrap().shape,
        Shape::Changed
    );
    assert_eq!(
        FaultKnobs::from_lookup(&get("")).unwrap().shape,
        Shape::Standard
    );
    let e = FaultKnobs::from_lookup(&get("round")).unwrap_err();
    assert!(e.contains("SAMPLE_SHAPE=\"round\""), "{e}");
}
