//! Hostile and broken peers, with raw bytes over real sockets: ambiguous framing,
//! oversized heads and bodies, slow clients, silent backends, forwarding headers and
//! hop-by-hop headers.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use baton_router::{AppLimits, Router};
use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Long enough for any reply the router sends at once.
const REPLY: Duration = Duration::from_secs(10);
/// Slack on top of the router's timers.
const MARGIN: Duration = Duration::from_secs(5);

fn limits() -> AppLimits {
    AppLimits::default()
}

/// A router serving one app backed by a counting backend.
async fn counted() -> (Router, SocketAddr, TestBackend) {
    let be = backend("be").await;
    let router = Router::new();
    let listen = start_app(&router, config(1, 1000, &[("v1", 1, &[be.addr])]));
    (router, listen, be)
}

/// Sends `request` followed by a well-formed pipelined request, and checks that the
/// router answers `status` once, closes the connection, and that the backend saw
/// nothing (neither the refused request nor the one smuggled after it).
async fn refused(request: &str, status: &str) {
    let (_router, listen, be) = counted().await;
    let mut bytes = request.as_bytes().to_vec();
    bytes.extend_from_slice(b"GET /smuggled HTTP/1.1\r\nHost: app.example\r\n\r\n");
    let reply = raw_exchange(listen, &bytes, REPLY).await;
    assert!(
        reply
            .status_line()
            .starts_with(&format!("HTTP/1.1 {status}")),
        "expected {status} for {request:?}, got {reply:?}"
    );
    assert!(reply.closed, "connection left open after a refusal");
    assert_eq!(reply.responses(), 1, "{reply:?}");
    assert_eq!(
        be.hits.load(Ordering::SeqCst),
        0,
        "the backend saw a request"
    );
    // The router still serves well-formed requests.
    assert_eq!(get(listen).await.body, "be");
    assert_eq!(be.hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn content_length_and_transfer_encoding_is_400() {
    refused(
        "POST /x HTTP/1.1\r\nHost: app.example\r\nContent-Length: 5\r\n\
         Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "400",
    )
    .await;
}

#[tokio::test]
async fn transfer_encoding_then_content_length_is_400() {
    refused(
        "POST /x HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: chunked\r\n\
         Content-Length: 3\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "400",
    )
    .await;
}

#[tokio::test]
async fn two_different_content_lengths_is_400() {
    refused(
        "POST /x HTTP/1.1\r\nHost: app.example\r\nContent-Length: 5\r\n\
         Content-Length: 6\r\n\r\nhello!",
        "400",
    )
    .await;
}

#[tokio::test]
async fn two_equal_content_lengths_is_400() {
    refused(
        "POST /x HTTP/1.1\r\nHost: app.example\r\nContent-Length: 5\r\n\
         Content-Length: 5\r\n\r\nhello",
        "400",
    )
    .await;
}

#[tokio::test]
async fn content_length_list_is_400() {
    refused(
        "POST /x HTTP/1.1\r\nHost: app.example\r\nContent-Length: 5, 6\r\n\r\nhello!",
        "400",
    )
    .await;
}

#[tokio::test]
async fn content_length_equal_list_is_400() {
    refused(
        "POST /x HTTP/1.1\r\nHost: app.example\r\nContent-Length: 5, 5\r\n\r\nhello",
        "400",
    )
    .await;
}

#[tokio::test]
async fn non_numeric_content_length_is_400() {
    refused(
        "POST /x HTTP/1.1\r\nHost: app.example\r\nContent-Length: +5\r\n\r\nhello",
        "400",
    )
    .await;
}

#[tokio::test]
async fn invalid_chunk_size_is_400() {
    refused(
        "POST /x HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: chunked\r\n\r\n\
         zz\r\nhello\r\n0\r\n\r\n",
        "400",
    )
    .await;
}

#[tokio::test]
async fn transfer_encoding_not_ending_in_chunked_is_400() {
    refused(
        "POST /x HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: chunked, identity\r\n\r\n\
         5\r\nhello\r\n0\r\n\r\n",
        "400",
    )
    .await;
}

#[tokio::test]
async fn oversized_header_is_431() {
    let max = limits().max_header_bytes;
    let big = "a".repeat(max + 16 * 1024);
    refused(
        &format!("GET /x HTTP/1.1\r\nHost: app.example\r\nX-Big: {big}\r\n\r\n"),
        "431",
    )
    .await;
}

#[tokio::test]
async fn many_headers_over_the_limit_is_431() {
    let max = limits().max_header_bytes;
    let mut req = String::from("GET /x HTTP/1.1\r\nHost: app.example\r\n");
    let mut i = 0;
    while req.len() < max + 8 * 1024 {
        req.push_str(&format!("X-H{i}: {}\r\n", "v".repeat(1000)));
        i += 1;
    }
    req.push_str("\r\n");
    refused(&req, "431").await;
}

#[tokio::test]
async fn declared_body_over_the_limit_is_413() {
    let max = limits().max_body_bytes;
    refused(
        &format!(
            "POST /x HTTP/1.1\r\nHost: app.example\r\nContent-Length: {}\r\n\r\nhello",
            max + 1
        ),
        "413",
    )
    .await;
}

#[tokio::test]
async fn large_chunked_body_is_streamed_to_the_backend_whole() {
    // Control for the refusals: a well-formed chunked body larger than the router's
    // replay buffer (so streamed, not buffered) reaches the backend whole.
    let be = recording_backend(None).await;
    let router = Router::new();
    let listen = start_app(&router, config(1, 1000, &[("v1", 1, &[be.addr])]));
    let mut req = b"POST /up HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\
                    Transfer-Encoding: chunked\r\n\r\n"
        .to_vec();
    let chunk = vec![b'z'; 64 * 1024];
    for _ in 0..40 {
        req.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        req.extend_from_slice(&chunk);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let reply = raw_exchange(listen, &req, REPLY).await;
    assert!(reply.status_line().starts_with("HTTP/1.1 200"), "{reply:?}");
    let seen = be.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body_len, 40 * 64 * 1024);
}

/// Slow, silent and idle clients, each on its own router, concurrently (every case
/// waits for the same default timeout, so together they take it once).
#[tokio::test]
async fn slow_silent_and_idle_clients_are_disconnected_after_the_header_timeout() {
    tokio::join!(
        stalled_request_line(),
        trickled_headers(),
        silent_client(),
        partial_http2_preface(),
        idle_keep_alive(),
    );
}

async fn stalled_request_line() {
    let (_router, listen, be) = counted().await;
    let timeout = Duration::from_millis(limits().client_header_timeout_ms);
    let started = Instant::now();
    let reply = raw_exchange(listen, b"GET /hel", timeout + MARGIN).await;
    let elapsed = started.elapsed();
    assert!(
        reply.closed,
        "a stalled client was not disconnected: {reply:?}"
    );
    assert!(
        elapsed + Duration::from_millis(500) >= timeout,
        "disconnected after {elapsed:?}, before the timeout of {timeout:?}"
    );
    // Either nothing or a 408; never a request to the backend.
    assert!(
        reply.text.is_empty() || reply.status_line().starts_with("HTTP/1.1 408"),
        "{reply:?}"
    );
    assert_eq!(be.hits.load(Ordering::SeqCst), 0);
}

async fn trickled_headers() {
    // Trickling a header byte at a time does not extend the deadline.
    let (_router, listen, be) = counted().await;
    let timeout = Duration::from_millis(limits().client_header_timeout_ms);
    let started = Instant::now();
    let mut stream = TcpStream::connect(listen).await.unwrap();
    stream
        .write_all(b"GET /x HTTP/1.1\r\nHost: app.example\r\n")
        .await
        .unwrap();
    let mut closed = false;
    for _ in 0..(timeout + MARGIN).as_secs() * 2 {
        if stream.write_all(b"X-Slow: 1\r\n").await.is_err() {
            closed = true;
            break;
        }
        let r = read_until_closed(&mut stream, Duration::from_millis(500)).await;
        if r.closed {
            closed = true;
            break;
        }
    }
    let elapsed = started.elapsed();
    assert!(closed, "a trickling client was never disconnected");
    assert!(elapsed <= timeout + MARGIN, "{elapsed:?}");
    assert!(
        elapsed + Duration::from_millis(500) >= timeout,
        "{elapsed:?}"
    );
    assert_eq!(be.hits.load(Ordering::SeqCst), 0);
}

async fn silent_client() {
    // A client that connects and sends nothing at all.
    let (_router, listen, be) = counted().await;
    let timeout = Duration::from_millis(limits().client_header_timeout_ms);
    let started = Instant::now();
    let mut stream = TcpStream::connect(listen).await.unwrap();
    let reply = read_until_closed(&mut stream, timeout + MARGIN).await;
    let elapsed = started.elapsed();
    assert!(
        reply.closed,
        "a silent client was not disconnected: {reply:?}"
    );
    assert!(
        elapsed + Duration::from_millis(500) >= timeout,
        "{elapsed:?}"
    );
    assert_eq!(be.hits.load(Ordering::SeqCst), 0);
}

async fn partial_http2_preface() {
    // Looks like the start of an HTTP/2 preface, then stalls.
    let (_router, listen, be) = counted().await;
    let timeout = Duration::from_millis(limits().client_header_timeout_ms);
    let started = Instant::now();
    let reply = raw_exchange(listen, b"PRI * HTTP/2.0\r\n", timeout + MARGIN).await;
    let elapsed = started.elapsed();
    assert!(
        reply.closed,
        "a stalled client was not disconnected: {reply:?}"
    );
    assert!(
        elapsed + Duration::from_millis(500) >= timeout,
        "{elapsed:?}"
    );
    assert_eq!(be.hits.load(Ordering::SeqCst), 0);
}

async fn idle_keep_alive() {
    let (_router, listen, be) = counted().await;
    let timeout = Duration::from_millis(limits().client_header_timeout_ms);
    let mut stream = TcpStream::connect(listen).await.unwrap();
    stream
        .write_all(b"GET /x HTTP/1.1\r\nHost: app.example\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = read_one_response(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"be");
    let idle_from = Instant::now();
    let rest = read_until_closed(&mut stream, timeout + MARGIN).await;
    let idle = idle_from.elapsed();
    assert!(rest.closed, "idle connection never closed");
    assert!(idle + Duration::from_millis(500) >= timeout, "{idle:?}");
    assert_eq!(be.hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn silent_backend_gets_504_after_the_response_timeout() {
    let be = silent_backend().await;
    let router = Router::new();
    // A short timeout set in the pushed config (the default is a minute).
    let timeout = Duration::from_secs(2);
    let mut cfg = config(1, 1000, &[("v1", 1, &[be.addr])]);
    cfg.apps[0].limits.upstream_response_timeout_ms = timeout.as_millis() as u64;
    let listen = start_app(&router, cfg);
    let started = Instant::now();
    let reply = raw_exchange(
        listen,
        b"GET /x HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n",
        timeout + MARGIN,
    )
    .await;
    let elapsed = started.elapsed();
    assert!(reply.status_line().starts_with("HTTP/1.1 504"), "{reply:?}");
    assert!(
        elapsed + Duration::from_millis(500) >= timeout,
        "{elapsed:?}"
    );
    // Sent once: a request whose bytes reached the backend is not resent on timeout.
    assert_eq!(be.hits.load(Ordering::SeqCst), 1);
    let v1 = &router.stats().apps[0].versions[0];
    assert_eq!(v1.status_5xx, 1);
    assert_eq!(v1.router_errors, 1);
    assert_eq!(v1.in_flight, 0);
}

#[tokio::test]
async fn forwarding_headers_carry_the_client_address() {
    let be = recording_backend(None).await;
    let router = Router::new();
    let listen = start_app(&router, config(1, 1000, &[("v1", 1, &[be.addr])]));

    let mut stream = TcpStream::connect(listen).await.unwrap();
    let client_ip = stream.local_addr().unwrap().ip().to_string();
    stream
        .write_all(b"GET /first HTTP/1.1\r\nHost: app.example\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_one_response(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // A client behind another proxy: the router appends to what it was given.
    stream
        .write_all(
            b"GET /second HTTP/1.1\r\nHost: app.example\r\nX-Forwarded-For: 203.0.113.7\r\n\
              Forwarded: for=203.0.113.7;proto=https\r\n\r\n",
        )
        .await
        .unwrap();
    let (head, _) = read_one_response(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    let seen = be.seen();
    assert_eq!(seen.len(), 2);
    let h = |i: usize, n: &str| {
        let all: Vec<&str> = seen[i]
            .headers
            .get_all(n)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        all.join(", ")
    };
    assert_eq!(h(0, "x-forwarded-for"), client_ip);
    assert_eq!(h(0, "x-forwarded-proto"), "http");
    assert_eq!(h(0, "forwarded"), format!("for={client_ip};proto=http"));
    assert_eq!(h(0, "x-forwarded-host"), "app.example");
    assert_eq!(h(1, "x-forwarded-for"), format!("203.0.113.7, {client_ip}"));
    assert_eq!(
        h(1, "forwarded"),
        format!("for=203.0.113.7;proto=https, for={client_ip};proto=http")
    );
}

#[tokio::test]
async fn hop_by_hop_headers_are_not_forwarded() {
    let be = recording_backend(None).await;
    let router = Router::new();
    let listen = start_app(&router, config(1, 1000, &[("v1", 1, &[be.addr])]));
    let reply = raw_exchange(
        listen,
        b"GET /hop HTTP/1.1\r\nHost: app.example\r\n\
          Connection: close, X-Secret, x-other\r\nX-Secret: s\r\nX-Other: o\r\n\
          Keep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\n\
          Trailer: X-Checksum\r\nUpgrade: h2c\r\nX-Kept: yes\r\n\r\n",
        REPLY,
    )
    .await;
    assert!(reply.status_line().starts_with("HTTP/1.1 200"), "{reply:?}");
    let seen = be.seen();
    assert_eq!(seen.len(), 1);
    let hd = &seen[0].headers;
    for name in [
        "x-secret",
        "x-other",
        "keep-alive",
        "te",
        "proxy-connection",
        "trailer",
        "upgrade",
    ] {
        assert!(!hd.contains_key(name), "{name} reached the backend: {hd:?}");
    }
    for v in hd.get_all("connection") {
        let v = v.to_str().unwrap().to_ascii_lowercase();
        assert!(
            !v.contains("secret") && !v.contains("other"),
            "connection: {v}"
        );
    }
    assert_eq!(hd.get("x-kept").unwrap(), "yes");
    // And the backend's own hop-by-hop header does not reach the client.
    assert_eq!(reply.header("x-backend-hop"), None, "{reply:?}");
    assert_eq!(reply.header("x-body-len").as_deref(), Some("0"));
}

/// Request-smuggling and malformed-framing vectors, one table: each is refused
/// with 400, the connection closed, and the backend sees neither it nor the
/// request pipelined after it (see [`refused`]). Not here yet, because the
/// router still forwards it: a chunk line with an 8 KiB extension (hyper takes
/// it; the one HTTP/1 engine is to refuse it).
#[tokio::test]
async fn smuggling_vectors_are_refused() {
    const H: &str = "Host: app.example\r\n";
    let cases: Vec<(&str, String)> = vec![
        (
            "CL.TE",
            format!(
                "POST / HTTP/1.1\r\n{H}Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nX"
            ),
        ),
        (
            "TE.CL",
            format!(
                "POST / HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n"
            ),
        ),
        (
            "TE.TE: xchunked",
            format!("POST / HTTP/1.1\r\n{H}Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"),
        ),
        (
            "TE.TE: identity after chunked",
            format!("POST / HTTP/1.1\r\n{H}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"),
        ),
        (
            "TE.TE: tab before the value",
            format!(
                "POST / HTTP/1.1\r\n{H}Transfer-Encoding:\tchunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n"
            ),
        ),
        (
            "TE.TE: quoted",
            format!("POST / HTTP/1.1\r\n{H}Transfer-Encoding: \"chunked\"\r\n\r\n0\r\n\r\n"),
        ),
        (
            "duplicate Content-Length",
            format!("POST / HTTP/1.1\r\n{H}Content-Length: 1\r\nContent-Length: 2\r\n\r\nab"),
        ),
        (
            "Content-Length list",
            format!("POST / HTTP/1.1\r\n{H}Content-Length: 1, 1\r\n\r\na"),
        ),
        (
            "signed Content-Length",
            format!("POST / HTTP/1.1\r\n{H}Content-Length: +1\r\n\r\na"),
        ),
        (
            "negative Content-Length",
            format!("POST / HTTP/1.1\r\n{H}Content-Length: -1\r\n\r\na"),
        ),
        (
            "whitespace before the colon",
            format!("POST / HTTP/1.1\r\n{H}Content-Length : 1\r\n\r\na"),
        ),
        (
            "obs-fold",
            format!("GET / HTTP/1.1\r\n{H}X-Folded: a\r\n b\r\n\r\n"),
        ),
        (
            "bare CR in a header value",
            format!("GET / HTTP/1.1\r\n{H}X-A: a\rb\r\n\r\n"),
        ),
        (
            "NUL in a header value",
            format!("GET / HTTP/1.1\r\n{H}X-A: a\0b\r\n\r\n"),
        ),
        (
            "invalid chunk size",
            format!("POST / HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\n\r\nzz\r\n\r\n"),
        ),
        (
            "chunk size overflowing 64 bits",
            format!(
                "POST / HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\n\r\n1FFFFFFFFFFFFFFFF\r\na\r\n0\r\n\r\n"
            ),
        ),
        (
            "chunk size with a sign",
            format!("POST / HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\n\r\n+1\r\na\r\n0\r\n\r\n"),
        ),
        (
            "chunk data longer than its size",
            format!(
                "POST / HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\n\r\n1\r\nabc\r\n0\r\n\r\n"
            ),
        ),
        (
            "chunk line with a bare LF",
            format!("POST / HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\n\r\n1\na\r\n0\r\n\r\n"),
        ),
        (
            "space in a header name",
            format!("GET / HTTP/1.1\r\n{H}X A: 1\r\n\r\n"),
        ),
        (
            "request line with two spaces",
            format!("GET  / HTTP/1.1\r\n{H}\r\n"),
        ),
        ("unknown HTTP version", format!("GET / HTTP/1.2\r\n{H}\r\n")),
        (
            "TE.TE: chunked twice",
            format!(
                "POST / HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            ),
        ),
        (
            "TE.TE: chunked, chunked",
            format!("POST / HTTP/1.1\r\n{H}Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n"),
        ),
        (
            "bare LF line ends",
            "GET / HTTP/1.1\nHost: app.example\n\n".to_string(),
        ),
        (
            "bare LF ending one header",
            format!("GET / HTTP/1.1\r\nX-A: 1\n{H}\r\n"),
        ),
        (
            "bare LF ending a POST head",
            format!("POST / HTTP/1.1\r\n{H}Content-Length: 1\n\r\na"),
        ),
        (
            "chunk line with an 8 KiB extension",
            format!(
                "POST / HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\n\r\n1;{}\r\na\r\n0\r\n\r\n",
                "x".repeat(8192)
            ),
        ),
        (
            "bare LF inside a chunk extension",
            format!(
                "POST / HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\n\r\n1;a\nb\r\na\r\n0\r\n\r\n"
            ),
        ),
        (
            "chunk data ending in a bare LF",
            format!("POST / HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\n\r\n1\r\na\n0\r\n\r\n"),
        ),
        (
            "Transfer-Encoding in HTTP/1.0",
            format!("POST / HTTP/1.0\r\n{H}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ),
        (
            "Transfer-Encoding with an empty coding before chunked",
            format!("POST / HTTP/1.1\r\n{H}Transfer-Encoding: ,chunked,\r\n\r\n0\r\n\r\n"),
        ),
        ("two Host headers", format!("GET / HTTP/1.1\r\n{H}{H}\r\n")),
        (
            "no Host in HTTP/1.1",
            "GET / HTTP/1.1\r\nX-A: 1\r\n\r\n".to_string(),
        ),
    ];
    let mut failures = Vec::new();
    for (name, request) in &cases {
        let (_router, listen, be) = counted().await;
        let mut bytes = request.as_bytes().to_vec();
        bytes.extend_from_slice(b"GET /smuggled HTTP/1.1\r\nHost: app.example\r\n\r\n");
        let reply = raw_exchange(listen, &bytes, REPLY).await;
        let status = reply.status_line().to_string();
        let ok = status.starts_with("HTTP/1.1 400")
            && reply.closed
            && reply.responses() == 1
            && be.hits.load(Ordering::SeqCst) == 0;
        if !ok {
            failures.push(format!(
                "{name}: {status:?}, closed {}, {} responses, backend hits {}",
                reply.closed,
                reply.responses(),
                be.hits.load(Ordering::SeqCst)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} vectors not refused:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
