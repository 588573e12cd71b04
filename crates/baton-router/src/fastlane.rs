//! The fast lane: the most common proxied request — HTTP/1.1, no body, an idempotent
//! method, routed by match rules, sticky cohorts and weights — served straight on the
//! sockets.
//!
//! One task per client connection parses the request head with `httparse`, writes the
//! rewritten head to a pooled upstream connection, parses the response head and copies
//! the response through, following its framing (length, chunked or until close). No
//! header map, no channel to a connection task, no timer per request: on this path the
//! kernel's socket work is most of the cost, and user space must stay well under it.
//!
//! Anything else — a request with a body, `Upgrade`, `Expect`, absolute-form targets,
//! HTTP/1.0, an app with mirroring or shielding, nothing routable (hold), a head the
//! lane cannot parse — is handed to hyper at that request's boundary, with the bytes
//! read so far, and hyper serves the rest of the connection.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;

use crate::client_socket::ClientSocket;
use crate::metrics::RequestSample;
use crate::proxy::{self, ConnCtx, InFlight};
use crate::table::AppTable;

/// Header lines the lane parses in a request or a response head.
const MAX_HEADERS: usize = 48;
/// Upstream read buffer: a response head and the start of its body.
const UP_BUF: usize = 16 * 1024;
/// Header lines of a response head with more than `MAX_HEADERS` (hyper's client
/// allows 100).
const MAX_RESPONSE_HEADERS: usize = 128;
/// Idle raw upstream connections kept per backend and worker.
const MAX_IDLE_PER_BACKEND: usize = 1024;

/// How the lane left a client connection.
pub(crate) enum Outcome {
    /// The connection is finished (closed by either side, timed out, or stopped).
    Closed,
    /// A request the lane does not serve starts at the beginning of these bytes (read
    /// from the client, not yet answered): hyper serves the connection from here.
    Handoff(Bytes),
}

struct IdleConn {
    stream: TcpStream,
    /// Already idle at the previous sweep: dropped at the next one.
    marked: bool,
}

thread_local! {
    /// Idle upstream sockets of this worker, by backend; most recently used last.
    static IDLE: RefCell<HashMap<SocketAddr, Vec<IdleConn>>> = RefCell::new(HashMap::new());
    /// Spare upstream buffers, so a request does not allocate one.
    static SPARE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

fn take_idle(addr: SocketAddr) -> Option<TcpStream> {
    IDLE.with_borrow_mut(|m| m.get_mut(&addr)?.pop().map(|c| c.stream))
}

fn drop_idle(addr: SocketAddr) {
    IDLE.with_borrow_mut(|m| m.remove(&addr));
}

fn put_idle(addr: SocketAddr, stream: TcpStream) {
    IDLE.with_borrow_mut(|m| {
        let v = m.entry(addr).or_default();
        if v.len() < MAX_IDLE_PER_BACKEND {
            v.push(IdleConn {
                stream,
                marked: false,
            });
        }
    });
}

/// Drops the upstream sockets idle for a whole sweep period (with [`crate::pool::sweep`]).
pub(crate) fn sweep() {
    IDLE.with_borrow_mut(|m| {
        m.retain(|_, v| {
            v.retain_mut(|c| {
                let keep = !c.marked;
                c.marked = true;
                keep
            });
            !v.is_empty()
        });
    });
}

fn spare_buf(capacity: usize) -> Vec<u8> {
    SPARE
        .with_borrow_mut(Vec::pop)
        .unwrap_or_else(|| Vec::with_capacity(capacity))
}

fn return_buf(mut b: Vec<u8>) {
    b.clear();
    SPARE.with_borrow_mut(|s| {
        if s.len() < 64 {
            s.push(b);
        }
    });
}

/// Per-connection deadlines, kept by one timer: while waiting for a request head (the
/// header timeout, counted from the end of the previous response) and while waiting
/// for a backend's response head (the response timeout). The timer is only moved
/// when it would fire too late; when it fires early, it is re-armed.
struct Deadline<'a> {
    sleep: Pin<&'a mut Sleep>,
    /// When the timer is armed to fire.
    armed: tokio::time::Instant,
}

impl Deadline<'_> {
    /// Makes sure the timer fires no later than `at`.
    fn bound(&mut self, at: tokio::time::Instant) {
        if at < self.armed {
            self.sleep.as_mut().reset(at);
            self.armed = at;
        }
    }

    /// The timer fired: true when `limit` has really passed, else re-armed for it.
    fn expired(&mut self, limit: tokio::time::Instant) -> bool {
        if tokio::time::Instant::now() >= limit {
            return true;
        }
        self.sleep.as_mut().reset(limit);
        self.armed = limit;
        false
    }
}

/// A request head the lane serves, as offsets into the client buffer.
struct ReqHead {
    /// Length of the head in the buffer.
    len: usize,
    head_method: bool,
    close: bool,
}

/// What the request head says about its version, read while it was parsed.
#[derive(Default)]
struct Route {
    /// The version a match rule sends it to, in the snapshot the head was parsed with.
    ruled: Option<usize>,
    /// The client's sticky cohort (new or from its cookie).
    cohort: Option<u16>,
    /// A new cohort's `Set-Cookie` value, sent with the response.
    set_cookie: Option<http::HeaderValue>,
}

impl Route {
    /// Reads `req`'s match rules and sticky cookie for `app`.
    fn read(app: &AppTable, req: &httparse::Request<'_, '_>) -> Route {
        let mut route = Route::default();
        if !app.rules.is_empty()
            && let (Some(method), Some(target)) = (req.method, req.path)
            && let Ok(method) = http::Method::from_bytes(method.as_bytes())
        {
            let path = target.split_once('?').map_or(target, |(p, _)| p);
            route.ruled = app.ruled_version(&method, path, &*req.headers);
        }
        if let Some(st) = &app.sticky {
            route.cohort = crate::sticky::cohort_from_headers(&*req.headers, &st.cookie);
            if route.cohort.is_none() {
                let c = proxy::next_cohort();
                route.cohort = Some(c);
                route.set_cookie =
                    Some(crate::sticky::set_cookie_value(&st.cookie, c, st.max_age_s));
            }
        }
        route
    }

    /// The version for an attempt in `live`: the ruled version (found again by name
    /// when the snapshot changed since `parsed`), else the cohort's, else the split.
    fn version_in(&self, parsed: &Arc<AppTable>, live: &Arc<AppTable>) -> Option<usize> {
        let ruled = self.ruled.and_then(|r| {
            if Arc::ptr_eq(parsed, live) {
                return Some(r);
            }
            live.version_with_backends(&parsed.versions.get(r)?.name)
        });
        live.version_for(ruled, self.cohort)
    }
}

/// Serves the connection's requests while they are for the lane. `buf` holds what was
/// read from the client so far.
pub(crate) async fn serve(
    ctx: &ConnCtx,
    stream: &mut ClientSocket,
    first: Vec<u8>,
    stop: &CancellationToken,
    sleep: Pin<&mut Sleep>,
    header_timeout: Duration,
) -> Outcome {
    // Made once: polling it again costs nothing, making it registers a waiter.
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    let armed = sleep.deadline();
    let mut deadline = Deadline { sleep, armed };
    let mut buf = first;
    // The head sent upstream, written while the client's is parsed.
    let mut upstream = Vec::with_capacity(1024);
    // Start of the next request in `buf`.
    let mut at = 0usize;
    let mut idle_since = tokio::time::Instant::now();
    let mut served = 0u64;
    loop {
        // A complete head, or more bytes from the client; the app's table as it was
        // when the head was read, and what the head says about its version.
        let (head, live, route) = loop {
            let live = proxy::live_app_of(ctx);
            // The lane sees every head until it hands over, so it applies the app's
            // head size limit itself (hyper checks it only between reads).
            let max_head = live.as_ref().map_or_else(
                || crate::limits::Limits::default().max_header_bytes,
                |a| a.limits.max_header_bytes,
            );
            let pending = &buf[at..];
            upstream.clear();
            let mut route = Route::default();
            let parsed = parse_request(pending, |req| {
                upstream_request(req, ctx, &mut upstream);
                if let Some(a) = live.as_deref().filter(|a| lane_app(a)) {
                    route = Route::read(a, req);
                }
            });
            match parsed {
                Parsed::Done(h) if h.len <= max_head => break (h, live, route),
                Parsed::Other { len: Some(n) } if n <= max_head => return handoff(pending),
                Parsed::Malformed => return handoff(pending),
                Parsed::Done(_) | Parsed::Other { len: Some(_) } => {
                    return too_large(stream).await;
                }
                Parsed::Partial | Parsed::Other { len: None } => {
                    if pending.len() > max_head {
                        return too_large(stream).await;
                    }
                }
            }
            if at > 0 {
                buf.drain(..at);
                at = 0;
            }
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(4096);
            }
            // Only the first request's wait is bounded from the accept (by the timer
            // as the caller armed it); later ones from the end of the last response.
            let limit = idle_since + header_timeout;
            if served > 0 {
                deadline.bound(limit);
            }
            let read = tokio::select! {
                biased;
                () = &mut stopped => return Outcome::Closed,
                r = stream.read_buf(&mut buf) => r,
                () = deadline.sleep.as_mut() => {
                    if served == 0 || deadline.expired(limit) {
                        tracing::debug!(peer = %ctx.peer, "no request head within the header timeout");
                        return Outcome::Closed;
                    }
                    continue;
                }
            };
            match read {
                Ok(0) | Err(_) => return Outcome::Closed,
                Ok(_) => {}
            }
        };
        let Some(app) = live.filter(|a| lane_app(a)) else {
            return handoff(&buf[at..]);
        };
        let rest_start = at + head.len;
        ctx.heads.fetch_add(1, Ordering::Relaxed);
        ctx.active.fetch_add(1, Ordering::Relaxed);
        let done = exchange(
            ctx,
            &app,
            stream,
            &upstream,
            &head,
            &route,
            &mut deadline,
            stop,
        )
        .await;
        ctx.active.fetch_sub(1, Ordering::Relaxed);
        ctx.idle_since_ms
            .store(ctx.shared.now_ms(), Ordering::Relaxed);
        served += 1;
        idle_since = tokio::time::Instant::now();
        match done {
            Exchange::KeepAlive if !head.close && !stop.is_cancelled() => {}
            _ => return Outcome::Closed,
        }
        at = rest_start;
        if at == buf.len() {
            buf.clear();
            at = 0;
        }
    }
}

fn handoff(rest: &[u8]) -> Outcome {
    Outcome::Handoff(Bytes::copy_from_slice(rest))
}

/// Answers a request head over the app's limit, and closes: the rest of what the
/// client sends cannot be framed.
async fn too_large(client: &mut ClientSocket) -> Outcome {
    local(
        client,
        "431 Request Header Fields Too Large",
        "request header fields too large\n",
        true,
    )
    .await;
    Outcome::Closed
}

/// An app whose requests the lane can route: no mirroring or recording (they need the
/// request kept) or shielding (it needs the response judged before it is sent), and
/// routable now (else the general path holds the request).
fn lane_app(a: &AppTable) -> bool {
    a.mirror.is_none() && a.shield.is_none() && !a.record.armed() && a.routable()
}

enum Parsed {
    Done(ReqHead),
    Partial,
    /// A head for hyper: `len` is its length once the whole head has arrived.
    Other {
        len: Option<usize>,
    },
    /// Not HTTP/1: hyper answers it.
    Malformed,
}

/// Judges a request head for the lane; for one it takes, `upstream` is given the
/// parsed head (to write what is sent on, without parsing it again).
fn parse_request(b: &[u8], upstream: impl FnOnce(&httparse::Request<'_, '_>)) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(b) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => {
            // More headers than the lane parses: hyper's, once whole.
            let len = memchr::memmem::find(b, b"\r\n\r\n").map(|i| i + 4);
            return Parsed::Other { len };
        }
        Err(_) => return Parsed::Malformed,
    };
    let other = Parsed::Other { len: Some(len) };
    if req.version != Some(1) {
        return other;
    }
    let (Some(method), Some(path)) = (req.method, req.path) else {
        return other;
    };
    if !path.starts_with('/') {
        return other;
    }
    // Idempotent methods only: a request whose response did not come is sent again.
    if !matches!(method, "GET" | "HEAD" | "OPTIONS" | "DELETE") {
        return other;
    }
    // A bare LF in the head, or not exactly one Host: the general path answers
    // (it refuses them, see `framing` and `proxy`).
    if memchr::memchr_iter(b'\n', &b[..len]).any(|i| i == 0 || b[i - 1] != b'\r') {
        return other;
    }
    let mut close = false;
    let mut hosts = 0u32;
    for h in req.headers.iter() {
        let n = h.name.as_bytes();
        if n.eq_ignore_ascii_case(b"host") {
            hosts += 1;
        }
        if n.eq_ignore_ascii_case(b"content-length") {
            if h.value != b"0" {
                return other;
            }
        } else if n.eq_ignore_ascii_case(b"transfer-encoding")
            || n.eq_ignore_ascii_case(b"upgrade")
            || n.eq_ignore_ascii_case(b"expect")
            || n.eq_ignore_ascii_case(b"http2-settings")
            || n.eq_ignore_ascii_case(b"te")
            || n.eq_ignore_ascii_case(b"trailer")
        {
            return other;
        } else if n.eq_ignore_ascii_case(b"connection") {
            for t in h.value.split(|&c| c == b',') {
                let t = t.trim_ascii();
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !t.eq_ignore_ascii_case(b"keep-alive") && !t.is_empty() {
                    // Names more hop-by-hop headers: rare, left to the general path.
                    return other;
                }
            }
        }
    }
    if hosts != 1 {
        return other;
    }
    upstream(&req);
    Parsed::Done(ReqHead {
        len,
        head_method: method == "HEAD",
        close,
    })
}

/// Hop-by-hop request headers the lane drops (the others send the request to hyper).
fn hop_by_hop(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"connection")
        || name.eq_ignore_ascii_case(b"keep-alive")
        || name.eq_ignore_ascii_case(b"proxy-connection")
}

/// The head sent upstream: the client's, with hop-by-hop headers removed and the
/// forwarding headers added (as [`proxy::upstream_head`] does on the general path).
fn upstream_request(req: &httparse::Request<'_, '_>, ctx: &ConnCtx, out: &mut Vec<u8>) {
    out.extend_from_slice(req.method.unwrap_or("GET").as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.path.unwrap_or("/").as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut xff: Option<&[u8]> = None;
    let mut fwd: Option<&[u8]> = None;
    let mut proto = false;
    let mut host: Option<&[u8]> = None;
    let mut xfh = false;
    for h in req.headers.iter() {
        let n = h.name.as_bytes();
        if hop_by_hop(n) {
            continue;
        }
        if n.eq_ignore_ascii_case(b"x-forwarded-for") {
            xff.get_or_insert(h.value);
            continue;
        }
        if n.eq_ignore_ascii_case(b"forwarded") {
            fwd.get_or_insert(h.value);
            continue;
        }
        if n.eq_ignore_ascii_case(b"x-forwarded-proto") {
            proto = true;
        } else if n.eq_ignore_ascii_case(b"host") {
            host.get_or_insert(h.value);
        } else if n.eq_ignore_ascii_case(b"x-forwarded-host") {
            xfh = true;
        }
        out.extend_from_slice(n);
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    list_header(out, b"x-forwarded-for", xff, ctx.peer_ip().as_bytes());
    list_header(out, b"forwarded", fwd, ctx.forwarded().as_bytes());
    if !proto {
        out.extend_from_slice(b"x-forwarded-proto: http\r\n");
    }
    if !xfh && let Some(h) = host {
        out.extend_from_slice(b"x-forwarded-host: ");
        out.extend_from_slice(h);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

fn list_header(out: &mut Vec<u8>, name: &[u8], prev: Option<&[u8]>, ours: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    if let Some(p) = prev {
        out.extend_from_slice(p);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(ours);
    out.extend_from_slice(b"\r\n");
}

enum Exchange {
    /// The response went out whole; the client connection may serve another request.
    KeepAlive,
    /// The client connection must close (the response said so, or could not be
    /// completed).
    Close,
}

/// How a response body is delimited.
#[derive(Clone, Copy)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

struct RespHead {
    len: usize,
    status: u16,
    framing: Framing,
    /// The backend will close (or is HTTP/1.0 without keep-alive).
    upstream_close: bool,
    event_stream: bool,
}

enum RespParsed {
    Done(RespHead),
    /// An informational (1xx) head of this length: skipped, as the general path does.
    Informational(usize),
    Partial,
    Bad,
}

/// Parses a response head with room for `MAX_HEADERS` header lines on the stack, or
/// [`MAX_RESPONSE_HEADERS`] on the heap when that is not enough (many cookies).
fn with_response<T>(
    b: &[u8],
    f: impl FnOnce(&httparse::Response<'_, '_>, httparse::Result<usize>) -> T,
) -> T {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let r = resp.parse(b);
    if !matches!(r, Err(httparse::Error::TooManyHeaders)) {
        return f(&resp, r);
    }
    let mut headers = vec![httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let r = resp.parse(b);
    f(&resp, r)
}

/// Judges a response head; for a final one, writes the client's head but its end
/// into `send` from the same parse.
fn parse_response(b: &[u8], head_method: bool, send: &mut Vec<u8>) -> RespParsed {
    with_response(b, |resp, r| {
        let judged = judge_response(resp, r, head_method);
        if let RespParsed::Done(h) = &judged {
            write_client_head(resp, matches!(h.framing, Framing::Chunked), send);
        }
        judged
    })
}

fn judge_response(
    resp: &httparse::Response<'_, '_>,
    r: httparse::Result<usize>,
    head_method: bool,
) -> RespParsed {
    let len = match r {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return RespParsed::Partial,
        Err(_) => return RespParsed::Bad,
    };
    let status = resp.code.unwrap_or(502);
    if (100..200).contains(&status) {
        if status == 101 {
            return RespParsed::Bad;
        }
        return RespParsed::Informational(len);
    }
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut te = false;
    let mut close = resp.version == Some(0);
    let mut event_stream = false;
    for h in resp.headers.iter() {
        let n = h.name.as_bytes();
        if n.eq_ignore_ascii_case(b"content-length") {
            let v = h.value.trim_ascii();
            let Some(l) = std::str::from_utf8(v)
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
            else {
                return RespParsed::Bad;
            };
            if length.is_some_and(|p| p != l) {
                return RespParsed::Bad;
            }
            length = Some(l);
        } else if n.eq_ignore_ascii_case(b"transfer-encoding") {
            te = true;
            chunked = h
                .value
                .rsplit(|&c| c == b',')
                .next()
                .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if n.eq_ignore_ascii_case(b"connection") {
            for t in h.value.split(|&c| c == b',') {
                let t = t.trim_ascii();
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") && resp.version == Some(0) {
                    close = false;
                }
            }
        } else if n.eq_ignore_ascii_case(b"content-type") {
            event_stream = h.value.starts_with(b"text/event-stream");
        }
    }
    let framing = if head_method || status == 204 || status == 304 {
        Framing::Empty
    } else if te {
        if chunked {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else {
        match length {
            Some(0) => Framing::Empty,
            Some(l) => Framing::Length(l),
            None => Framing::UntilClose,
        }
    };
    if te && length.is_some() {
        // Both: ambiguous; never reuse that connection.
        close = true;
    }
    RespParsed::Done(RespHead {
        len,
        status,
        framing,
        upstream_close: close || matches!(framing, Framing::UntilClose),
        event_stream,
    })
}

/// The client's response head but its end: the backend's, without hop-by-hop headers
/// (the chunked `Transfer-Encoding` stays: the body is passed through as it is
/// framed). The caller adds `Connection: close` when this is the connection's last
/// response, then the blank line.
///
/// A `Content-Length` next to a chunked `Transfer-Encoding` is dropped (RFC 9112 6.3:
/// an intermediary must not forward both).
fn write_client_head(resp: &httparse::Response<'_, '_>, chunked: bool, out: &mut Vec<u8>) {
    out.extend_from_slice(b"HTTP/1.1 ");
    let code = resp.code.unwrap_or(502);
    out.extend_from_slice(&[
        b'0' + (code / 100 % 10) as u8,
        b'0' + (code / 10 % 10) as u8,
        b'0' + (code % 10) as u8,
        b' ',
    ]);
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in resp.headers.iter() {
        let n = h.name.as_bytes();
        if hop_by_hop(n)
            || (chunked && n.eq_ignore_ascii_case(b"content-length"))
            || n.eq_ignore_ascii_case(b"te")
            || n.eq_ignore_ascii_case(b"trailer")
            || n.eq_ignore_ascii_case(b"upgrade")
        {
            continue;
        }
        out.extend_from_slice(n);
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
}

/// Why an attempt on one upstream connection produced no response.
enum AttemptError {
    /// Could not connect: nothing was sent.
    Connect,
    /// The connection failed before a response head (a pooled connection the backend
    /// had closed, or the backend went away with the request).
    Lost { pooled: bool },
    /// No response head within the response timeout.
    Timeout,
    /// Not a response we can pass on.
    Bad,
}

/// One request: pick a backend, forward, pass the answer back. Retries (the lane only
/// takes idempotent methods without a body) on another connection or backend when no
/// response head came. `app` is the table the head was parsed with.
#[expect(
    clippy::too_many_arguments,
    reason = "one request's inputs, all distinct"
)]
async fn exchange(
    ctx: &ConnCtx,
    app: &Arc<AppTable>,
    client: &mut ClientSocket,
    request: &[u8],
    head: &ReqHead,
    route: &Route,
    deadline: &mut Deadline<'_>,
    stop: &CancellationToken,
) -> Exchange {
    let start = Instant::now();
    let sh = &*ctx.shared;
    app.counters.requests.fetch_add(1, Ordering::Relaxed);
    let limits = &app.limits;
    let mut send = spare_buf(1024);
    let mut up_buf = spare_buf(UP_BUF);
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut attempts = 0;
    let mut spins = 0;
    let mut primary = None;
    let mut last_version = None;
    let result = loop {
        if attempts >= proxy::MAX_ATTEMPTS || spins >= 16 {
            break None;
        }
        let live = proxy::live_app_of(ctx);
        let Some(live) = live.filter(|a| a.routable()) else {
            break None;
        };
        let v = match primary {
            Some(v) if v < live.versions.len() => v,
            _ => match route.version_in(app, &live) {
                Some(v) => v,
                None => break None,
            },
        };
        primary = Some(v);
        let app = live;
        let Some((vi, bi, guard)) = proxy::pick_for_attempt(ctx, &app, v, &tried) else {
            spins += 1;
            continue;
        };
        let version = &app.versions[vi];
        let backend = &version.backends[bi];
        attempts += 1;
        last_version = Some(version.counters.clone());
        let addr = backend.addr;
        let sent_at = tokio::time::Instant::now();
        deadline.bound(sent_at + limits.response_timeout);
        up_buf.clear();
        let r = attempt(
            addr,
            limits,
            request,
            &mut send,
            &mut up_buf,
            head.head_method,
            deadline,
            sent_at,
        )
        .await;
        match r {
            Ok((up, rh)) => break Some((app.clone(), vi, bi, guard, up, rh)),
            Err(AttemptError::Timeout) => {
                drop(guard);
                tracing::warn!(app = %ctx.app.name, backend = %addr, timeout = ?limits.response_timeout, "backend did not answer in time");
                version
                    .counters
                    .router_errors
                    .fetch_add(1, Ordering::Relaxed);
                version.counters.record_status(504);
                proxy::record_local(&version.counters, start, 504, 0);
                return_buf(send);
                return_buf(up_buf);
                return local(
                    client,
                    "504 Gateway Timeout",
                    "gateway timeout: the backend did not answer in time\n",
                    head.close,
                )
                .await;
            }
            Err(e) => {
                drop(guard);
                let pooled_loss = matches!(e, AttemptError::Lost { pooled: true });
                if !pooled_loss {
                    backend.state.failures.fetch_add(1, Ordering::Relaxed);
                    tried.push(addr);
                }
                if matches!(e, AttemptError::Connect) {
                    proxy::mark_down(sh, &backend.state);
                }
                if pooled_loss {
                    // A stale keep-alive connection: does not count as an attempt. The
                    // backend probably closed its other idle ones too (a restart, an
                    // idle timeout after a burst): drop them, so the next attempt
                    // connects afresh.
                    attempts -= 1;
                    spins += 1;
                    drop_idle(addr);
                } else {
                    version.counters.retries.fetch_add(1, Ordering::Relaxed);
                }
                tracing::debug!(app = %ctx.app.name, backend = %addr, "upstream attempt failed");
            }
        }
    };
    let Some((app, vi, bi, guard, mut up, rh)) = result else {
        return_buf(send);
        return_buf(up_buf);
        if let Some(v) = &last_version {
            tracing::warn!(app = %ctx.app.name, attempts, "every upstream attempt failed");
            v.router_errors.fetch_add(1, Ordering::Relaxed);
            v.record_status(502);
            proxy::record_local(v, start, 502, 0);
            return local(
                client,
                "502 Bad Gateway",
                "bad gateway: no backend answered\n",
                head.close,
            )
            .await;
        }
        if let Some(a) = proxy::live_app_of(ctx) {
            a.counters.no_backend.fetch_add(1, Ordering::Relaxed);
        }
        return local(
            client,
            "503 Service Unavailable",
            "service unavailable: no backend is ready\n",
            head.close,
        )
        .await;
    };
    let version = &app.versions[vi];
    let backend = &version.backends[bi];
    version.counters.record_status(rh.status);
    let last = head.close
        || matches!(rh.framing, Framing::UntilClose)
        || stop.is_cancelled()
        || ctx.shared.keep_alive_off();
    // `send` holds the client's response head but its end.
    if let Some(cookie) = &route.set_cookie {
        send.extend_from_slice(b"set-cookie: ");
        send.extend_from_slice(cookie.as_bytes());
        send.extend_from_slice(b"\r\n");
    }
    if last {
        send.extend_from_slice(b"connection: close\r\n");
    }
    send.extend_from_slice(b"\r\n");
    let head_latency = rh.event_stream.then(|| start.elapsed());
    let mut body = BodyCopy::new(rh.framing);
    let already = &up_buf[rh.len..];
    let take = body.accept(already);
    send.extend_from_slice(&already[..take]);
    let mut bytes_out = take as u64;
    let mut reusable = !rh.upstream_close && take == already.len();
    let mut complete = body.done();
    let mut client_ok = client.write_all(&send).await.is_ok();
    return_buf(send);
    if client_ok && !complete {
        let drain = rh
            .event_stream
            .then(|| crate::tunnel::drain_signal(backend.state.clone(), limits.drain_grace));
        let (ok, n, whole, extra) = copy_body(&mut up, client, &mut up_buf, &mut body, drain).await;
        client_ok = ok;
        bytes_out += n;
        complete = whole;
        reusable = reusable && whole && !extra;
    }
    return_buf(up_buf);
    if complete && reusable {
        put_idle(backend.addr, up);
    }
    let now = Instant::now();
    guard_record(
        &guard,
        now,
        head_latency.unwrap_or_else(|| now.saturating_duration_since(start)),
        rh.status,
        bytes_out,
    );
    drop(guard);
    if client_ok && complete && !last {
        Exchange::KeepAlive
    } else {
        Exchange::Close
    }
}

fn guard_record(guard: &InFlight, now: Instant, latency: Duration, status: u16, bytes_out: u64) {
    guard.version().record(
        now,
        &RequestSample {
            status,
            latency,
            bytes_in: 0,
            bytes_out,
            router_error: false,
        },
    );
}

/// A response the router makes itself.
async fn local(client: &mut ClientSocket, status: &str, msg: &str, close: bool) -> Exchange {
    let mut out = spare_buf(256);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_bytes());
    out.extend_from_slice(b"\r\ncontent-type: text/plain; charset=utf-8\r\n");
    if status.starts_with("503") {
        out.extend_from_slice(b"retry-after: 1\r\n");
    }
    out.extend_from_slice(format!("content-length: {}\r\n", msg.len()).as_bytes());
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(msg.as_bytes());
    let ok = client.write_all(&out).await.is_ok();
    return_buf(out);
    if ok && !close {
        Exchange::KeepAlive
    } else {
        Exchange::Close
    }
}

/// Sends the request on a pooled connection to `addr` (or a new one), reads the
/// response head into `buf` and writes the client's response head but its end (see
/// [`write_client_head`]) into `send`.
#[expect(
    clippy::too_many_arguments,
    reason = "one attempt's inputs, all distinct"
)]
async fn attempt(
    addr: SocketAddr,
    limits: &crate::limits::Limits,
    request: &[u8],
    send: &mut Vec<u8>,
    buf: &mut Vec<u8>,
    head_method: bool,
    deadline: &mut Deadline<'_>,
    sent_at: tokio::time::Instant,
) -> Result<(TcpStream, RespHead), AttemptError> {
    let (mut up, pooled) = match take_idle(addr) {
        Some(s) => (s, true),
        None => {
            let s = match tokio::time::timeout(limits.connect_timeout, TcpStream::connect(addr))
                .await
            {
                Ok(Ok(s)) => s,
                _ => return Err(AttemptError::Connect),
            };
            let _ = s.set_nodelay(true);
            (s, false)
        }
    };
    if up.write_all(request).await.is_err() {
        return Err(AttemptError::Lost { pooled });
    }
    let limit = sent_at + limits.response_timeout;
    let mut at = 0;
    loop {
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(UP_BUF);
        }
        let n = tokio::select! {
            biased;
            r = up.read_buf(buf) => r,
            () = deadline.sleep.as_mut() => {
                if deadline.expired(limit) {
                    return Err(AttemptError::Timeout);
                }
                continue;
            }
        };
        match n {
            Ok(0) | Err(_) => {
                return Err(AttemptError::Lost {
                    pooled: pooled && buf.is_empty(),
                });
            }
            Ok(_) => {}
        }
        loop {
            send.clear();
            match parse_response(&buf[at..], head_method, send) {
                RespParsed::Done(rh) => {
                    if at > 0 {
                        buf.drain(..at);
                    }
                    return Ok((up, rh));
                }
                RespParsed::Informational(len) => at += len,
                RespParsed::Partial => {
                    if buf.len() - at > 64 * 1024 {
                        return Err(AttemptError::Bad);
                    }
                    break;
                }
                RespParsed::Bad => return Err(AttemptError::Bad),
            }
        }
    }
}

/// Follows a response body's framing while it is copied through unchanged.
struct BodyCopy {
    framing: Framing,
    /// Bytes left in the body (`Length`) or in the current chunk's data (`Chunked`).
    left: u64,
    chunk: ChunkState,
    /// A chunk-size line being read: the size so far.
    size: u64,
    digits: u8,
    /// The current trailer line has bytes (so its end is not the final empty line).
    line: bool,
    bad: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size,
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    Trailer,
    TrailerLf,
    Done,
}

impl BodyCopy {
    fn new(framing: Framing) -> Self {
        BodyCopy {
            framing,
            left: match framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            chunk: ChunkState::Size,
            size: 0,
            digits: 0,
            line: false,
            bad: false,
        }
    }

    fn done(&self) -> bool {
        match self.framing {
            Framing::Empty => true,
            Framing::Length(_) => self.left == 0,
            Framing::Chunked => self.chunk == ChunkState::Done,
            Framing::UntilClose => false,
        }
    }

    /// At a point where the body could end cleanly (a chunk boundary).
    fn at_boundary(&self) -> bool {
        matches!(self.framing, Framing::Chunked)
            && self.chunk == ChunkState::Size
            && self.digits == 0
    }

    /// How many of `b` belong to the body (all of them unless the body ends inside).
    fn accept(&mut self, b: &[u8]) -> usize {
        match self.framing {
            Framing::Empty => 0,
            Framing::UntilClose => b.len(),
            Framing::Length(_) => {
                let n = (b.len() as u64).min(self.left);
                self.left -= n;
                n as usize
            }
            Framing::Chunked => self.accept_chunked(b),
        }
    }

    fn accept_chunked(&mut self, b: &[u8]) -> usize {
        let mut i = 0;
        while i < b.len() {
            let c = b[i];
            match self.chunk {
                ChunkState::Done => return i,
                ChunkState::Data => {
                    let n = ((b.len() - i) as u64).min(self.left);
                    self.left -= n;
                    i += n as usize;
                    if self.left == 0 {
                        self.chunk = ChunkState::DataCr;
                    }
                    continue;
                }
                ChunkState::Size => match c {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let d = (c as char).to_digit(16).unwrap_or(0);
                        self.digits = self.digits.saturating_add(1);
                        if self.digits > 15 {
                            self.bad = true;
                            self.chunk = ChunkState::Done;
                            return i;
                        }
                        self.size = self.size * 16 + u64::from(d);
                    }
                    b';' | b' ' | b'\t' if self.digits > 0 => self.chunk = ChunkState::Ext,
                    b'\r' if self.digits > 0 => self.chunk = ChunkState::SizeLf,
                    b'\n' if self.digits > 0 => self.size_line_end(),
                    _ => {
                        self.bad = true;
                        self.chunk = ChunkState::Done;
                        return i;
                    }
                },
                ChunkState::Ext => match c {
                    b'\r' => self.chunk = ChunkState::SizeLf,
                    b'\n' => self.size_line_end(),
                    _ => {}
                },
                ChunkState::SizeLf => {
                    if c != b'\n' {
                        self.bad = true;
                        self.chunk = ChunkState::Done;
                        return i;
                    }
                    self.size_line_end();
                }
                ChunkState::DataCr => match c {
                    b'\r' => self.chunk = ChunkState::DataLf,
                    b'\n' => self.chunk = ChunkState::Size,
                    _ => {
                        self.bad = true;
                        self.chunk = ChunkState::Done;
                        return i;
                    }
                },
                ChunkState::DataLf => {
                    if c != b'\n' {
                        self.bad = true;
                        self.chunk = ChunkState::Done;
                        return i;
                    }
                    self.chunk = ChunkState::Size;
                }
                ChunkState::Trailer => match c {
                    b'\r' => self.chunk = ChunkState::TrailerLf,
                    b'\n' => self.trailer_line_end(),
                    _ => self.line = true,
                },
                ChunkState::TrailerLf => {
                    if c != b'\n' {
                        self.bad = true;
                        self.chunk = ChunkState::Done;
                        return i;
                    }
                    self.trailer_line_end();
                }
            }
            i += 1;
        }
        i
    }

    fn size_line_end(&mut self) {
        if self.size == 0 {
            self.chunk = ChunkState::Trailer;
            self.line = false;
        } else {
            self.left = self.size;
            self.chunk = ChunkState::Data;
        }
        self.size = 0;
        self.digits = 0;
    }

    fn trailer_line_end(&mut self) {
        if self.line {
            self.line = false;
            self.chunk = ChunkState::Trailer;
        } else {
            self.chunk = ChunkState::Done;
        }
    }
}

/// Copies the rest of a body from `up` to `client`. Returns (client still fine, body
/// bytes sent, body complete, the backend sent more than the body).
async fn copy_body(
    up: &mut TcpStream,
    client: &mut ClientSocket,
    buf: &mut Vec<u8>,
    body: &mut BodyCopy,
    mut drain: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
) -> (bool, u64, bool, bool) {
    let mut sent = 0u64;
    let mut draining = false;
    loop {
        if draining && body.at_boundary() {
            // The backend left the table and its grace is over: end the stream cleanly.
            // Complete for the client; the upstream connection is mid-stream, so it
            // counts as having more to send and is not reused.
            let ok = client.write_all(b"0\r\n\r\n").await.is_ok();
            return (ok, sent, true, true);
        }
        buf.clear();
        let read = match drain.as_mut() {
            Some(d) => tokio::select! {
                r = up.read_buf(buf) => r,
                () = d.as_mut() => {
                    drain = None;
                    draining = true;
                    if !matches!(body.framing, Framing::Chunked) {
                        return (false, sent, false, false);
                    }
                    continue;
                }
            },
            None => up.read_buf(buf).await,
        };
        match read {
            Ok(0) | Err(_) => {
                let whole = matches!(body.framing, Framing::UntilClose);
                return (whole, sent, whole, false);
            }
            Ok(n) => {
                let take = body.accept(&buf[..n]);
                if body.bad {
                    return (false, sent, false, true);
                }
                if client.write_all(&buf[..take]).await.is_err() {
                    return (false, sent, false, false);
                }
                sent += take as u64;
                if body.done() {
                    return (true, sent, true, take < n);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunked_end(input: &[u8]) -> (usize, bool) {
        let mut b = BodyCopy::new(Framing::Chunked);
        let n = b.accept(input);
        (n, b.done())
    }

    #[test]
    fn chunked_bodies_end_where_their_framing_says() {
        let body = b"5;ext=1\r\nhello\r\n0\r\nx-trailer: 1\r\n\r\nEXTRA";
        assert_eq!(chunked_end(body), (body.len() - 5, true));
        assert_eq!(chunked_end(b"0\r\n\r\n"), (5, true));
        assert_eq!(chunked_end(b"a\r\n0123456789\r\n"), (15, false));
        // Byte by byte gives the same end.
        let mut b = BodyCopy::new(Framing::Chunked);
        let mut taken = 0;
        for c in body.iter() {
            taken += b.accept(std::slice::from_ref(c));
        }
        assert!(b.done());
        assert_eq!(taken, body.len() - 5);
    }

    #[test]
    fn bad_chunk_sizes_are_noticed() {
        let mut b = BodyCopy::new(Framing::Chunked);
        b.accept(b"zz\r\n");
        assert!(b.bad);
    }

    #[test]
    fn requests_with_a_body_or_an_upgrade_are_left_to_the_general_path() {
        let other = |s: &str| {
            matches!(
                parse_request(s.as_bytes(), |_| {}),
                Parsed::Other { len: Some(_) }
            )
        };
        assert!(other(
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
        ));
        assert!(other(
            "GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
        assert!(other(
            "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"
        ));
        assert!(other("GET / HTTP/1.0\r\nHost: a\r\n\r\n"));
        assert!(other("GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(matches!(
            parse_request(b"GET / HTTP/1.1\r\nHost: a\r\n", |_| {}),
            Parsed::Partial
        ));
        match parse_request(
            b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET",
            |_| {},
        ) {
            Parsed::Done(h) => {
                assert!(h.close);
                assert_eq!(h.len, 47);
            }
            _ => panic!("a plain GET is for the lane"),
        }
    }

    #[test]
    fn response_framing() {
        let f = |s: &str, head: bool| match parse_response(s.as_bytes(), head, &mut Vec::new()) {
            RespParsed::Done(h) => (h.framing, h.upstream_close),
            _ => panic!("not a complete response: {s}"),
        };
        assert!(matches!(
            f("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", false),
            (Framing::Length(5), false)
        ));
        assert!(matches!(
            f("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", true),
            (Framing::Empty, false)
        ));
        assert!(matches!(
            f(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                false
            ),
            (Framing::Chunked, false)
        ));
        assert!(matches!(
            f("HTTP/1.1 200 OK\r\n\r\n", false),
            (Framing::UntilClose, true)
        ));
        assert!(matches!(
            f("HTTP/1.1 304 Not Modified\r\n\r\n", false),
            (Framing::Empty, false)
        ));
        assert!(matches!(
            f(
                "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\n",
                false
            ),
            (Framing::Length(1), true)
        ));
        assert!(matches!(
            parse_response(b"HTTP/1.1 100 Continue\r\n\r\n", false, &mut Vec::new()),
            RespParsed::Informational(25)
        ));
        assert!(matches!(
            parse_response(
                b"HTTP/1.1 200 OK\r\ncontent-length: 1, 2\r\n\r\n",
                false,
                &mut Vec::new()
            ),
            RespParsed::Bad
        ));
    }

    #[test]
    fn client_head_drops_hop_by_hop_headers_and_a_length_next_to_chunked() {
        let mut out = Vec::new();
        parse_response(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nx-version: v1\r\ncontent-length: 2\r\n\r\n",
            false,
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nx-version: v1\r\ncontent-length: 2\r\n"
        );
        let mut out = Vec::new();
        parse_response(
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n",
            false,
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n"
        );
        // An informational head writes nothing.
        let mut out = Vec::new();
        parse_response(
            b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n",
            false,
            &mut out,
        );
        assert!(out.is_empty());
    }
}
