//! Protocols through the router over real sockets: HTTP/2 with prior knowledge,
//! WebSocket and server-sent events across a backend drain, HTTP/1.1 keep-alive across
//! a graceful shutdown.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use baton_router::{AppLimits, Router};
use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// The grace long-lived streams get once their backend leaves the table. Not
/// configurable per app yet, so the tests use the default.
fn stream_grace() -> Duration {
    Duration::from_millis(AppLimits::default().stream_drain_grace_ms)
}

/// Slack for scheduling on a loaded machine, on top of the router's own timers.
const MARGIN: Duration = Duration::from_secs(10);

#[tokio::test]
async fn http2_prior_knowledge_concurrent_streams() {
    const STREAMS: usize = 8;
    // Each backend request waits until all STREAMS are in progress: the router must
    // carry the streams of one client connection concurrently, not one by one.
    let be = recording_backend(Some(STREAMS)).await;
    let router = Router::new();
    let listen = start_app(&router, config(1, 1000, &[("v1", 1, &[be.addr])]));

    let stream = TcpStream::connect(listen).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    let conn = tokio::spawn(conn);

    let mut tasks = Vec::new();
    for i in 0..STREAMS {
        let mut sender = sender.clone();
        tasks.push(tokio::spawn(async move {
            let req = Request::builder()
                .method("POST")
                .uri(format!("http://app.example/stream/{i}"))
                .body(Full::new(Bytes::from(vec![b'x'; 100 + i])))
                .unwrap();
            let resp = sender.send_request(req).await.expect("h2 response");
            let status = resp.status();
            let version = resp.version();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (i, status, version, body)
        }));
    }
    for t in tasks {
        let (i, status, version, body) = tokio::time::timeout(Duration::from_secs(20), t)
            .await
            .expect("every stream answered")
            .unwrap();
        assert_eq!(status, StatusCode::OK, "stream {i}");
        assert_eq!(version, Version::HTTP_2);
        assert_eq!(body, format!("/stream/{i}").as_bytes(), "stream {i}");
    }
    let seen = be.seen();
    assert_eq!(seen.len(), STREAMS);
    for s in &seen {
        // The backend speaks HTTP/1.1 and gets an origin-form request with a Host.
        assert_eq!(s.version, Version::HTTP_11);
        assert!(s.uri.starts_with("/stream/"), "{}", s.uri);
        assert_eq!(s.headers.get("host").unwrap(), "app.example");
        let i: usize = s.uri["/stream/".len()..].parse().unwrap();
        assert_eq!(s.body_len, 100 + i);
    }
    drop(sender);
    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
}

#[tokio::test]
async fn http2_large_body_is_streamed_to_the_http1_backend() {
    // Larger than the router holds whole: streamed on as a chunked HTTP/1.1 body.
    let be = recording_backend(None).await;
    let router = Router::new();
    let listen = start_app(&router, config(1, 1000, &[("v1", 1, &[be.addr])]));
    let stream = TcpStream::connect(listen).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    let conn = tokio::spawn(conn);
    let body = vec![b'y'; 3 * 1024 * 1024];
    let req = Request::builder()
        .method("PUT")
        .uri("http://app.example/big")
        .body(Full::new(Bytes::from(body.clone())))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(30), sender.send_request(req))
        .await
        .expect("answered in time")
        .expect("h2 response");
    assert_eq!(resp.status(), StatusCode::OK);
    let got = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(got, &b"/big"[..]);
    let seen = be.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body_len, body.len());
    assert_eq!(
        seen[0]
            .headers
            .get("transfer-encoding")
            .map(|v| v.as_bytes()),
        Some(&b"chunked"[..])
    );
    drop(sender);
    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
}

#[tokio::test]
async fn websocket_echo_then_going_away_close_after_drain_grace() {
    let ws = ws_echo_backend().await;
    let other = backend("other").await;
    let router = Router::new();
    let listen = start_app(&router, config(1, 1000, &[("v1", 1, &[ws.addr])]));

    let stream = TcpStream::connect(listen).await.unwrap();
    let (mut client, resp) = tokio_tungstenite::client_async(format!("ws://{listen}/chat"), stream)
        .await
        .expect("websocket handshake through the router");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(ws.hits.load(Ordering::SeqCst), 1);

    async fn echo(client: &mut tokio_tungstenite::WebSocketStream<TcpStream>, text: &str) {
        client.send(Message::text(text.to_string())).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), client.next())
            .await
            .expect("echo in time")
            .expect("stream open")
            .expect("no error");
        assert_eq!(got, Message::text(text.to_string()));
    }
    for i in 0..5 {
        echo(&mut client, &format!("hello {i}")).await;
    }
    // A big frame too (16-bit extended length), to cross the router's frame tracking.
    echo(&mut client, &"y".repeat(40_000)).await;
    assert!(backend_in_flight(&router, ws.addr) >= 1);

    // The backend leaves the table; the app keeps another one.
    let grace = stream_grace();
    let pushed = Instant::now();
    router
        .apply(config(2, 1000, &[("v1", 1, &[other.addr])]))
        .unwrap();
    // During the grace the tunnel keeps working and stays counted.
    echo(&mut client, "during the grace").await;
    assert!(
        pushed.elapsed() < grace,
        "the check itself took the whole grace"
    );
    assert!(backend_in_flight(&router, ws.addr) >= 1);
    // New requests go to the remaining backend meanwhile.
    assert_eq!(get(listen).await.body, "other");

    // Then a close frame 1001 "going away", not a reset.
    let msg = tokio::time::timeout(grace + MARGIN, client.next())
        .await
        .expect("a close frame within the grace and a margin");
    let elapsed = pushed.elapsed();
    match msg {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert_eq!(frame.code, CloseCode::Away, "{frame:?}");
        }
        other => panic!("expected a 1001 close frame, got {other:?}"),
    }
    assert!(
        elapsed + Duration::from_millis(50) >= grace,
        "closed after {elapsed:?}, before the grace of {grace:?}"
    );
    // tungstenite answers the close; the router then ends the connection cleanly.
    let end = tokio::time::timeout(Duration::from_secs(5), client.next())
        .await
        .expect("the connection ends after the closing handshake");
    assert!(
        matches!(
            end,
            None | Some(Err(tokio_tungstenite::tungstenite::Error::ConnectionClosed))
        ),
        "{end:?}"
    );
    eventually("the drained backend has nothing in flight", || {
        backend_in_flight(&router, ws.addr) == 0
    })
    .await;
}

#[tokio::test]
async fn websocket_client_close_ends_the_tunnel_and_in_flight() {
    let ws = ws_echo_backend().await;
    let router = Router::new();
    let listen = start_app(&router, config(1, 1000, &[("v1", 1, &[ws.addr])]));
    let stream = TcpStream::connect(listen).await.unwrap();
    let (mut client, _) = tokio_tungstenite::client_async(format!("ws://{listen}/"), stream)
        .await
        .unwrap();
    client.send(Message::text("ping")).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), client.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got, Message::text("ping"));
    assert_eq!(backend_in_flight(&router, ws.addr), 1);
    client.close(None).await.unwrap();
    eventually("the tunnel is released", || {
        backend_in_flight(&router, ws.addr) == 0
    })
    .await;
}

#[tokio::test]
async fn sse_streams_unbuffered_and_ends_cleanly_after_drain_grace() {
    const EVENTS: u64 = 2000; // 100 s of events: the backend never finishes by itself.
    let sse = sse_backend(Duration::from_millis(50), EVENTS).await;
    let other = backend("other").await;
    let router = Router::new();
    let listen = start_app(&router, config(1, 1000, &[("v1", 1, &[sse.addr])]));

    let stream = TcpStream::connect(listen).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .uri("/events")
        .header("host", "app.example")
        .header("accept", "text/event-stream")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .expect("response head in time")
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers().get("content-type").unwrap(),
        "text/event-stream"
    );
    let mut body = resp.into_body();
    let mut text = String::new();

    // Events arrive one by one while the backend is still streaming: no buffering.
    while text.matches("\n\n").count() < 3 {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("an event in time")
            .expect("stream open")
            .expect("no error");
        if let Ok(d) = frame.into_data() {
            text.push_str(std::str::from_utf8(&d).unwrap());
        }
    }
    assert!(text.starts_with("data: 0\n\n"), "{text:?}");
    assert!(sse.sent.load(Ordering::SeqCst) < EVENTS);
    assert!(backend_in_flight(&router, sse.addr) >= 1);

    let grace = stream_grace();
    let pushed = Instant::now();
    router
        .apply(config(2, 1000, &[("v1", 1, &[other.addr])]))
        .unwrap();
    let before = text.matches("\n\n").count();
    let deadline = pushed + grace + MARGIN;
    loop {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => panic!("the stream did not end within the grace and a margin"),
            Ok(None) => break,
            Ok(Some(Err(e))) => panic!("the stream ended with an error: {e}"),
            Ok(Some(Ok(frame))) => {
                if let Ok(d) = frame.into_data() {
                    text.push_str(std::str::from_utf8(&d).unwrap());
                }
            }
        }
    }
    let elapsed = pushed.elapsed();
    assert!(
        elapsed + Duration::from_millis(50) >= grace,
        "ended after {elapsed:?}, before the grace of {grace:?}"
    );
    let during = text.matches("\n\n").count() - before;
    // At one event per 50 ms, the grace carries many events.
    let expected = (grace.as_millis() / 50 / 2) as usize;
    assert!(
        during >= expected,
        "{during} events during the grace, expected at least {expected}"
    );
    // Whole events only, in order: the stream was cut between events.
    assert!(text.ends_with("\n\n"), "{:?}", &text[text.len() - 20..]);
    for (i, ev) in text.split_terminator("\n\n").enumerate() {
        assert_eq!(ev, format!("data: {i}"));
    }
    assert_eq!(sse.finished.load(Ordering::SeqCst), 0);
    eventually("the drained backend has nothing in flight", || {
        backend_in_flight(&router, sse.addr) == 0
    })
    .await;
    // The client connection itself is still usable after the clean end.
    let r = tokio::time::timeout(Duration::from_secs(10), async {
        sender.ready().await.unwrap();
        let req = Request::builder()
            .uri("/after")
            .header("host", "app.example")
            .body(Empty::<Bytes>::new())
            .unwrap();
        sender.send_request(req).await.unwrap()
    })
    .await
    .expect("second request in time");
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn graceful_shutdown_closes_idle_keep_alive_and_finishes_in_flight_with_close() {
    let gate = std::sync::Arc::new(Semaphore::new(0));
    let be = backend_gated("slow", Some(gate.clone())).await;
    let router = Router::new();
    let listen = start_app(&router, config(1, 1000, &[("v1", 1, &[be.addr])]));

    // Connection A: one answered request, then idle (keep-alive).
    gate.add_permits(1);
    let mut idle = TcpStream::connect(listen).await.unwrap();
    idle.write_all(b"GET /a HTTP/1.1\r\nHost: app.example\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = read_one_response(&mut idle).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(!head.to_ascii_lowercase().contains("connection: close"));
    assert_eq!(body, b"slow");

    // Connection B: a request in flight (the backend holds it).
    let mut busy = TcpStream::connect(listen).await.unwrap();
    busy.write_all(b"GET /b HTTP/1.1\r\nHost: app.example\r\n\r\n")
        .await
        .unwrap();
    eventually("the backend holds request B", || {
        be.hits.load(Ordering::SeqCst) == 2
    })
    .await;

    let stopping = {
        let router = router.clone();
        tokio::spawn(async move { router.shutdown(Duration::from_secs(20)).await })
    };
    // The idle connection is closed, cleanly, with nothing sent.
    let idle_end = read_until_closed(&mut idle, Duration::from_secs(5)).await;
    assert!(idle_end.closed, "idle keep-alive connection left open");
    assert!(!idle_end.reset, "idle connection reset");
    assert_eq!(idle_end.text, "");
    assert!(
        !stopping.is_finished(),
        "shutdown did not wait for request B"
    );

    // The request in flight completes, marked as the last one on its connection.
    gate.add_permits(1);
    let (head, body) = read_one_response(&mut busy).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    assert_eq!(body, b"slow");
    let rest = read_until_closed(&mut busy, Duration::from_secs(5)).await;
    assert!(rest.closed && rest.text.is_empty(), "{rest:?}");

    let done = tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("shutdown returns")
        .unwrap();
    assert!(done, "shutdown reported connections left over");
    assert!(
        TcpStream::connect(listen).await.is_err(),
        "the listener still accepts after shutdown"
    );
}
