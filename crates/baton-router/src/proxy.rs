//! The request path: hold while nothing is routable, pick a backend, forward, retry
//! what is safe to retry, stream the answer back.
//!
//! Reads the routing snapshot without locks; touches only atomics otherwise, plus the
//! worker's own (uncontended) metrics shard once per response. Match rules, sticky
//! cohorts, shielding and mirroring are compiled into the snapshot per push and cost
//! nothing to an app that does not use them.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::attempt::{self, Ended, Next};
use crate::limits::Limits;
use crate::listener::AppRef;
use crate::metrics::RequestSample;
use crate::mirror::{Captured, Comparison, Difference};
use crate::outcome::{self, Outcome};
use crate::router::Shared;
use crate::table::{
    AppCounters, AppTable, BackendState, MirrorState, MirrorTable, VersionCounters,
};
use crate::upstream::{self, CallError, UpstreamBody};

thread_local! {
    /// This worker's cohort generator for sticky apps.
    static COHORTS: std::cell::RefCell<crate::sticky::CohortRng> =
        std::cell::RefCell::new(crate::sticky::CohortRng::from_clock(crate::worker::index() as u64));
}

/// Request bodies up to this size are buffered so the request can be replayed.
pub(crate) const MAX_REPLAY_BODY: usize = 1024 * 1024;
/// Attempts per request, the first one included.
pub(crate) const MAX_ATTEMPTS: usize = 3;
/// How long the picker avoids a backend after a connect failure.
const DOWN_FOR_MS: u64 = 1000;
/// Hold time for a request on a connection whose app was removed from the config.
const REMOVED_APP_HOLD: Duration = Duration::from_secs(1);
/// Bound on loop turns of one request that made no attempt.
pub(crate) const MAX_SPINS: usize = 16;
/// Mirror copies under way per app and worker; more are dropped (and counted).
pub(crate) const MIRROR_MAX_IN_FLIGHT: usize = 64;
/// Marks the copies sent to a mirror target.
const X_BATON_MIRROR: HeaderName = HeaderName::from_static("x-baton-mirror");

/// What a client connection knows about itself.
pub(crate) struct ConnCtx {
    pub shared: Arc<Shared>,
    pub app: AppRef,
    pub peer: SocketAddr,
    /// The client's address as a header value (`X-Forwarded-For`), made once.
    peer_ip: HeaderValue,
    /// This hop's `Forwarded` element (`for=...;proto=http`), made once.
    forwarded: HeaderValue,
    /// The app's counters, where this connection is counted as open.
    app_counters: Option<Arc<AppCounters>>,
    /// Requests under way on this connection (HTTP/1: at most one).
    pub active: AtomicU32,
    /// Requests received on this connection so far.
    pub heads: AtomicU64,
    /// When the last response ended ([`Shared::now_ms`]), or the connection was made.
    pub idle_since_ms: AtomicU64,
}

impl Drop for ConnCtx {
    fn drop(&mut self) {
        if let Some(c) = &self.app_counters {
            c.connections.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl ConnCtx {
    /// The client's address as an `X-Forwarded-For` element.
    pub(crate) fn peer_ip(&self) -> &HeaderValue {
        &self.peer_ip
    }

    /// This hop's `Forwarded` element.
    pub(crate) fn forwarded(&self) -> &HeaderValue {
        &self.forwarded
    }

    pub fn new(shared: Arc<Shared>, app: AppRef, peer: SocketAddr) -> Self {
        let (peer_ip, forwarded) = forwarding_values(peer.ip());
        let app_counters = live_app(&shared, &app).map(|a| a.counters.clone());
        if let Some(c) = &app_counters {
            c.connections.fetch_add(1, Ordering::Relaxed);
        }
        ConnCtx {
            app_counters,
            active: AtomicU32::new(0),
            heads: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(shared.now_ms()),
            shared,
            app,
            peer,
            peer_ip,
            forwarded,
        }
    }
}

thread_local! {
    /// The forwarding header values of the last client address seen by this worker:
    /// clients usually open many connections in a row.
    static LAST_PEER: std::cell::RefCell<Option<(std::net::IpAddr, HeaderValue, HeaderValue)>> =
        const { std::cell::RefCell::new(None) };
}

/// `X-Forwarded-For` and `Forwarded` values of a client at `ip`; formatted only when
/// the address differs from the previous connection's on this worker.
fn forwarding_values(ip: std::net::IpAddr) -> (HeaderValue, HeaderValue) {
    LAST_PEER.with_borrow_mut(|last| {
        if let Some((a, x, f)) = last.as_ref()
            && *a == ip
        {
            return (x.clone(), f.clone());
        }
        let forwarded = match ip {
            std::net::IpAddr::V4(ip) => format!("for={ip};proto=http"),
            std::net::IpAddr::V6(ip) => format!("for=\"[{ip}]\";proto=http"),
        };
        let x = crate::listener::ip_header(ip);
        let f = HeaderValue::try_from(forwarded).unwrap_or(HeaderValue::from_static("for=unknown"));
        *last = Some((ip, x.clone(), f.clone()));
        (x, f)
    })
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Body sent to a backend.
pub(crate) enum UpBody {
    /// Fully buffered (replayable).
    Full(Option<Bytes>),
    /// Too large to buffer: the part read so far, then the rest from the client, cut
    /// off with an error (and `over` set) past `left` more bytes.
    Streaming {
        prefix: Option<Bytes>,
        rest: Incoming,
        left: u64,
        over: Arc<AtomicBool>,
    },
}

/// The request body went over the app's `max_body_bytes` while being streamed.
#[derive(Debug)]
struct BodyTooLarge;

impl std::fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request body too large")
    }
}

impl std::error::Error for BodyTooLarge {}

impl Body for UpBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpBody::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
            UpBody::Streaming {
                prefix,
                rest,
                left,
                over,
            } => {
                if let Some(p) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(p))));
                }
                match Pin::new(rest).poll_frame(cx) {
                    Poll::Ready(Some(Ok(f))) => {
                        let n = f.data_ref().map_or(0, |d| d.len() as u64);
                        if n > *left {
                            over.store(true, Ordering::Relaxed);
                            return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                        }
                        *left -= n;
                        Poll::Ready(Some(Ok(f)))
                    }
                    Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
                    Poll::Ready(None) => Poll::Ready(None),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpBody::Full(b) => b.is_none(),
            UpBody::Streaming { prefix, rest, .. } => prefix.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            UpBody::Streaming { prefix, rest, .. } => {
                let p = prefix.as_ref().map_or(0, |b| b.len() as u64);
                let r = rest.size_hint();
                let mut h = SizeHint::new();
                h.set_lower(r.lower() + p);
                if let Some(u) = r.upper() {
                    h.set_upper(u + p);
                }
                h
            }
        }
    }
}

/// Counts one attempt as in flight on its backend and version until dropped.
pub(crate) struct InFlight {
    backend: Arc<BackendState>,
    version: Arc<VersionCounters>,
}

impl InFlight {
    pub(crate) fn start(backend: Arc<BackendState>, version: Arc<VersionCounters>) -> Self {
        // SeqCst pairs with the snapshot re-check in `handle`: see the fence there.
        backend.in_flight.fetch_add(1, Ordering::SeqCst);
        version.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight { backend, version }
    }

    pub(crate) fn version(&self) -> &VersionCounters {
        &self.version
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.backend.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.version.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Body sent to the user.
pub(crate) enum RespBody {
    /// Generated by the router.
    Full(Option<Bytes>),
    /// Streamed from a backend; the in-flight guard is released when the body ends,
    /// fails, or is dropped (client gone).
    Upstream {
        body: UpstreamBody,
        guard: Option<InFlight>,
        /// For endless streams (server-sent events): resolves once the backend has
        /// left the routing table and its grace has passed; the body then ends cleanly.
        drain: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    },
    /// Streamed from a backend like `Upstream`, and recorded in the version's metrics
    /// when it ends (or the client goes away).
    Proxied(Proxied),
}

/// A backend's response on its way to the user; see [`RespBody::Proxied`].
pub(crate) struct Proxied {
    body: UpstreamBody,
    guard: Option<InFlight>,
    drain: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    start: Instant,
    status: u16,
    bytes_in: u64,
    bytes_out: u64,
    /// For endless streams (server-sent events) the latency is taken at the response
    /// head, not at the stream's end.
    head_latency: Option<Duration>,
    /// The copy of the body kept for a mirror comparison.
    tee: Option<Box<Tee>>,
}

impl Proxied {
    /// Ends the response once: records the request, hands the captured body to the
    /// mirror task. (The body returns its connection to the pool itself.)
    fn finish(&mut self, complete: bool) {
        let Some(guard) = self.guard.take() else {
            return;
        };
        let now = Instant::now();
        let latency = self
            .head_latency
            .unwrap_or_else(|| now.saturating_duration_since(self.start));
        guard.version.record(
            now,
            &RequestSample {
                status: self.status,
                latency,
                bytes_in: self.bytes_in,
                bytes_out: self.bytes_out,
                router_error: false,
            },
        );
        if let Some(t) = self.tee.take()
            && complete
        {
            t.send();
        }
    }
}

/// The user's response as captured for a mirror comparison: chunks are shared with
/// what is sent (no copy on the user's path).
pub(crate) struct Tee {
    max: usize,
    len: usize,
    chunks: Vec<Bytes>,
    truncated: bool,
    status: u16,
    headers: Vec<(String, String)>,
    tx: tokio::sync::oneshot::Sender<PrimaryCapture>,
}

struct PrimaryCapture {
    status: u16,
    headers: Vec<(String, String)>,
    chunks: Vec<Bytes>,
    truncated: bool,
}

impl Tee {
    pub(crate) fn push(&mut self, d: &Bytes) {
        let room = self.max - self.len;
        if d.len() > room {
            self.truncated = true;
        }
        let n = d.len().min(room);
        if n > 0 {
            self.chunks.push(d.slice(..n));
            self.len += n;
        }
    }

    /// The captured body is known to be cut short.
    pub(crate) fn mark_truncated(&mut self) {
        self.truncated = true;
    }

    pub(crate) fn send(self) {
        let _ = self.tx.send(PrimaryCapture {
            status: self.status,
            headers: self.headers,
            chunks: self.chunks,
            truncated: self.truncated,
        });
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.get_mut() {
            RespBody::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
            RespBody::Upstream { body, guard, drain } => {
                let r = Pin::new(&mut *body).poll_frame(cx);
                match &r {
                    Poll::Ready(None | Some(Err(_))) => {
                        guard.take();
                    }
                    Poll::Pending => {
                        if let Some(d) = drain
                            && d.as_mut().poll(cx).is_ready()
                        {
                            // The backend was removed and the grace is over: end the
                            // stream (a clean end of a chunked body), drop its connection.
                            body.abandon();
                            guard.take();
                            *drain = None;
                            return Poll::Ready(None);
                        }
                    }
                    Poll::Ready(Some(Ok(_))) => {}
                }
                r
            }
            RespBody::Proxied(p) => {
                let r = Pin::new(&mut p.body).poll_frame(cx);
                match &r {
                    Poll::Ready(None) => p.finish(true),
                    Poll::Ready(Some(Err(_))) => p.finish(false),
                    Poll::Ready(Some(Ok(f))) => {
                        if let Some(d) = f.data_ref() {
                            p.bytes_out += d.len() as u64;
                            if let Some(t) = &mut p.tee {
                                t.push(d);
                            }
                        }
                    }
                    Poll::Pending => {
                        if let Some(d) = &mut p.drain
                            && d.as_mut().poll(cx).is_ready()
                        {
                            p.body.abandon();
                            p.finish(false);
                            p.drain = None;
                            return Poll::Ready(None);
                        }
                    }
                }
                r
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RespBody::Full(b) => b.is_none(),
            RespBody::Upstream { body, guard, .. } => guard.is_none() || body.is_end_stream(),
            RespBody::Proxied(p) => p.guard.is_none() || p.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RespBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            RespBody::Upstream { body, .. } => body.size_hint(),
            RespBody::Proxied(p) => p.body.size_hint(),
        }
    }
}

impl Drop for RespBody {
    fn drop(&mut self) {
        // hyper does not poll a body that says it is empty (HEAD, 204, 304,
        // `Content-Length: 0`): such a request is still complete.
        if let RespBody::Proxied(p) = self {
            let done = p.body.is_end_stream();
            p.finish(done);
        }
    }
}

/// A response generated by the router itself.
pub(crate) fn local_response(status: StatusCode, msg: &'static str) -> Response<RespBody> {
    let mut resp = Response::new(RespBody::Full(Some(Bytes::from_static(msg.as_bytes()))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

/// A refusal after which the client connection is closed: the rest of what the client
/// sent cannot be trusted to be framed the way the router read it.
pub(crate) fn refuse(status: StatusCode, msg: &'static str) -> Response<RespBody> {
    let mut resp = local_response(status, msg);
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Why a request is refused before any backend sees it.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// Framing that two parsers could read differently (request smuggling).
    Ambiguous(&'static str),
    /// `Content-Length` over the app's limit.
    TooLarge,
}

/// Checks the request framing as the header map shows it. hyper already refuses (with
/// 400) a `Transfer-Encoding` whose last coding is not `chunked`, `Transfer-Encoding` on
/// HTTP/1.0, differing `Content-Length` values and malformed chunks. It also hides
/// `Content-Length` next to `Transfer-Encoding` and repeats of an equal
/// `Content-Length`: those are caught on the raw bytes ([`crate::framing`]); this is
/// the check for what reaches the map (and a value that is not plain digits).
fn check_framing(headers: &HeaderMap, max_body: u64) -> Result<(), Refusal> {
    // RFC 9112 §6.1: the chunked coding is applied once, last.
    let chunked = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .filter(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"))
        .count();
    if chunked > 1 {
        return Err(Refusal::Ambiguous(
            "bad request: Transfer-Encoding names chunked more than once\n",
        ));
    }
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    let Some(first) = lengths.next() else {
        return Ok(());
    };
    if lengths.next().is_some() {
        return Err(Refusal::Ambiguous("bad request: repeated Content-Length\n"));
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return Err(Refusal::Ambiguous(
            "bad request: both Content-Length and Transfer-Encoding\n",
        ));
    }
    let n = std::str::from_utf8(first.as_bytes())
        .ok()
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or(Refusal::Ambiguous("bad request: invalid Content-Length\n"))?;
    if n > max_body {
        return Err(Refusal::TooLarge);
    }
    Ok(())
}

/// Reads the request body: fully when it fits in [`MAX_REPLAY_BODY`] (so it can be
/// replayed), otherwise what was read so far plus the rest as a stream. `Ok(None)`
/// when the body is over `max_body`.
async fn prepare_body(
    headers: &HeaderMap,
    mut body: Incoming,
    max_body: u64,
) -> Result<Option<UpBody>, hyper::Error> {
    if body.is_end_stream() {
        return Ok(Some(UpBody::Full(None)));
    }
    let streaming = |prefix: Option<Bytes>, rest, read: u64| {
        Some(UpBody::Streaming {
            prefix,
            rest,
            left: max_body.saturating_sub(read),
            over: Arc::new(AtomicBool::new(false)),
        })
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_REPLAY_BODY as u64) {
        return Ok(streaming(None, body, 0));
    }
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        // Trailers of a buffered request are dropped; they are rare in requests.
        if let Ok(data) = frame?.into_data() {
            buf.extend_from_slice(&data);
            if buf.len() as u64 > max_body {
                return Ok(None);
            }
            if buf.len() > MAX_REPLAY_BODY {
                let read = buf.len() as u64;
                return Ok(streaming(Some(buf.freeze()), body, read));
            }
        }
    }
    let b = if buf.is_empty() {
        None
    } else {
        Some(buf.freeze())
    };
    Ok(Some(UpBody::Full(b)))
}

/// Hop-by-hop headers, never forwarded in either direction.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the (few) names instead of a hashed look-up per hop-by-hop name
    // (standard names compare as small integers); most heads carry none of them.
    let mut present = 0u8;
    for k in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == k) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    // `HOP_BY_HOP[0]` is `Connection`.
    if present & 1 != 0 {
        // Headers the sender named in `Connection` are hop-by-hop too. Rare beyond
        // `keep-alive`/`close`, so the allocation is only paid when present.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|s| s.split(','))
            .map(str::trim)
            .filter(|n| !n.eq_ignore_ascii_case("close") && !n.eq_ignore_ascii_case("keep-alive"))
            .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
            .collect();
        for n in named {
            headers.remove(n);
        }
    }
    for (i, n) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(n);
        }
    }
}

/// Appends `value` to the comma-separated list header `name`, or sets it.
fn append_list(headers: &mut HeaderMap, name: HeaderName, value: &HeaderValue) {
    match headers.get(&name) {
        None => {
            headers.insert(name, value.clone());
        }
        Some(prev) => {
            let mut v = Vec::with_capacity(prev.len() + 2 + value.len());
            v.extend_from_slice(prev.as_bytes());
            v.extend_from_slice(b", ");
            v.extend_from_slice(value.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&v) {
                headers.insert(name, v);
            }
        }
    }
}

/// Turns the user's request head into the one sent upstream (HTTP/1.1, origin-form,
/// hop-by-hop headers removed, forwarding headers added). Allocates only for what the
/// client sent unusually (absolute-form URI, existing forwarding headers).
pub(crate) fn upstream_head(parts: &mut http::request::Parts, ctx: &ConnCtx) {
    let headers = &mut parts.headers;
    strip_hop_by_hop(headers);
    // Room for the forwarding headers at once (one growth, not one per insert).
    headers.reserve(4);
    append_list(headers, X_FORWARDED_FOR, &ctx.peer_ip);
    append_list(headers, header::FORWARDED, &ctx.forwarded);
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    // An absolute-form request URI (or HTTP/2's :authority) carries the host the
    // client wanted.
    let authority = parts
        .uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
    if !headers.contains_key(header::HOST)
        && let Some(a) = &authority
    {
        headers.insert(header::HOST, a.clone());
    }
    if !headers.contains_key(&X_FORWARDED_HOST)
        && let Some(h) = headers.get(header::HOST).cloned()
    {
        headers.insert(X_FORWARDED_HOST, h);
    }
    if parts.uri.scheme().is_some() || authority.is_some() {
        let pq = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        parts.uri = Uri::from(pq);
    }
    parts.version = Version::HTTP_11;
    parts.extensions = http::Extensions::new();
}

/// The request head kept for a retry.
#[derive(Clone)]
pub(crate) struct Head {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
}

impl Head {
    fn from_parts(p: http::request::Parts) -> Self {
        Head {
            method: p.method,
            uri: p.uri,
            headers: p.headers,
        }
    }
}

/// A backend of `app` for one attempt (see [`AppTable::pick_backend`]), counted in
/// flight and as a request of its backend and version: (version index, backend
/// index, in-flight guard). `None` when no backend can be picked, or when the snapshot
/// was swapped underneath (pick again from the new one).
pub(crate) fn pick_for_attempt(
    ctx: &ConnCtx,
    app: &Arc<AppTable>,
    primary: usize,
    tried: &[SocketAddr],
) -> Option<(usize, usize, InFlight)> {
    let sh = &*ctx.shared;
    let (vi, bi) = app.pick_backend(primary, tried, || sh.now_ms())?;
    let version = &app.versions[vi];
    let backend = &version.backends[bi];
    let guard = InFlight::start(backend.state.clone(), version.counters.clone());
    // Drain fence: the control plane removes a backend, then waits for its in-flight
    // count to reach 0. If a swap happened after we read the snapshot, this backend
    // may already be drained and gone.
    let still_live = sh
        .table
        .load()
        .app(ctx.app.id)
        .is_some_and(|a| Arc::ptr_eq(a, app));
    if !still_live {
        return None;
    }
    backend.state.requests.fetch_add(1, Ordering::Relaxed);
    version.counters.requests.fetch_add(1, Ordering::Relaxed);
    Some((vi, bi, guard))
}

/// After a failed connect: the picker avoids `backend` for [`DOWN_FOR_MS`].
pub(crate) fn mark_down(sh: &Shared, backend: &BackendState) {
    let until = sh.now_ms() + DOWN_FOR_MS;
    backend.down_until_ms.fetch_max(until, Ordering::Relaxed);
}

/// The live table of the connection's app, if it is in the snapshot.
#[inline]
pub(crate) fn live_app_of(ctx: &ConnCtx) -> Option<Arc<AppTable>> {
    live_app(&ctx.shared, &ctx.app)
}

/// The live table of `app`, if it is in the snapshot.
#[inline]
fn live_app(sh: &Shared, app: &AppRef) -> Option<Arc<AppTable>> {
    sh.table.load().app(app.id).cloned()
}

/// Waits until `app` is routable in the live snapshot, or gives up after the app's
/// hold timeout. Never awaits the control plane: it only watches for swaps.
pub(crate) async fn routable_app(sh: &Shared, app: &AppRef) -> Option<Arc<AppTable>> {
    if let Some(a) = live_app(sh, app)
        && a.routable()
    {
        return Some(a);
    }
    // Subscribe before looking again, so a swap between the look and the wait is not
    // missed.
    let mut swapped = sh.swapped.subscribe();
    let mut deadline = None;
    loop {
        let hold = match live_app(sh, app) {
            Some(a) if a.routable() => return Some(a),
            Some(a) => {
                if deadline.is_none() {
                    a.counters.held.fetch_add(1, Ordering::Relaxed);
                }
                a.hold_timeout
            }
            None => REMOVED_APP_HOLD,
        };
        let d = *deadline.get_or_insert_with(|| tokio::time::Instant::now() + hold);
        match tokio::time::timeout_at(d, swapped.changed()).await {
            Ok(Ok(())) => continue,
            // Sender gone (router dropped) or deadline reached.
            Ok(Err(_)) | Err(_) => return None,
        }
    }
}

/// The mirror copy of one request, decided before the first attempt.
pub(crate) struct MirrorPlan {
    pub app: Arc<AppTable>,
    pub head: Head,
    pub body: Option<Bytes>,
}

/// Frees a mirror slot when the copy's task ends.
struct MirrorSlot(Arc<MirrorState>);

impl Drop for MirrorSlot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A new cohort from this worker's generator.
pub(crate) fn next_cohort() -> u16 {
    COHORTS.with_borrow_mut(crate::sticky::CohortRng::next_cohort)
}

/// Reads and drops the rest of a response nobody will see, so that its upstream
/// connection can be reused.
async fn discard(mut body: RespBody) {
    let read = async {
        while let Some(f) = body.frame().await {
            if f.is_err() {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), read).await;
}

/// Serves one user request. Never fails: errors become 4xx/5xx responses.
pub(crate) async fn handle(ctx: &ConnCtx, req: Request<Incoming>) -> Response<RespBody> {
    let start = Instant::now();
    let sh = &*ctx.shared;
    let app0 = live_app(sh, &ctx.app);
    let limits = match &app0 {
        Some(a) => {
            a.counters.requests.fetch_add(1, Ordering::Relaxed);
            a.limits.clone()
        }
        None => Limits::default(),
    };
    // RFC 9112 §3.2: exactly one Host in HTTP/1.1 (at most one in HTTP/1.0);
    // anything else is 400.
    let hosts = req.headers().get_all(header::HOST).iter().count();
    let one_host = match req.version() {
        http::Version::HTTP_11 => hosts == 1,
        http::Version::HTTP_10 | http::Version::HTTP_09 => hosts <= 1,
        _ => true,
    };
    if !one_host {
        return refuse(
            StatusCode::BAD_REQUEST,
            "bad request: an HTTP/1.1 request has exactly one Host header\n",
        );
    }
    match check_framing(req.headers(), limits.max_body_bytes) {
        Ok(()) => {}
        Err(Refusal::Ambiguous(msg)) => {
            tracing::debug!(app = %ctx.app.name, peer = %ctx.peer, "{}", msg.trim_end());
            return refuse(StatusCode::BAD_REQUEST, msg);
        }
        Err(Refusal::TooLarge) => {
            return refuse(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");
        }
    }
    let (mut parts, body) = req.into_parts();
    let body = match prepare_body(&parts.headers, body, limits.max_body_bytes).await {
        Ok(Some(b)) => b,
        Ok(None) => return refuse(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n"),
        Err(e) => {
            tracing::debug!(app = %ctx.app.name, error = %e, "cannot read the request body");
            return refuse(StatusCode::BAD_REQUEST, "cannot read the request body\n");
        }
    };
    let idempotent = is_idempotent(&parts.method);
    // Sticky apps: the client's cohort, or a new one stored by the response.
    let (cohort, set_cookie) = match app0.as_deref().and_then(|a| a.sticky.as_ref()) {
        None => (None, None),
        Some(st) => match crate::sticky::cohort_from_headers(&parts.headers, &st.cookie) {
            Some(c) => (Some(c), None),
            None => {
                let c = next_cohort();
                let v = crate::sticky::set_cookie_value(&st.cookie, c, st.max_age_s);
                (Some(c), Some(v))
            }
        },
    };
    // A recording keeps the request as the client sent it (before the forwarding
    // headers are added).
    if let Some(a) = &app0
        && a.record.armed()
    {
        let whole = match &body {
            UpBody::Full(b) => Some(b.clone().unwrap_or_default()),
            _ => None,
        };
        a.record
            .offer(&parts.method, &parts.uri, &parts.headers, whole.as_ref());
    }
    upstream_head(&mut parts, ctx);
    let (replay, mut once) = match body {
        UpBody::Full(b) => (Some(b), None),
        streaming => (None, Some(streaming)),
    };
    let bytes_in = match &replay {
        Some(b) => b.as_ref().map_or(0, |b| b.len() as u64),
        None => parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    };
    let outcome_of = outcome::Request {
        app: &ctx.app.name,
        start,
        bytes_in,
    };
    let mut mirror = match (&app0, &replay) {
        (Some(a), Some(b)) => a
            .mirror
            .as_ref()
            .filter(|m| {
                m.rules.wants(&parts.method, parts.uri.path())
                    && b.as_ref().map_or(0, Bytes::len) <= m.rules.max_body_bytes()
                    && crate::mirror::should_mirror(
                        m.state.counter.fetch_add(1, Ordering::Relaxed),
                        m.cfg.percent,
                    )
            })
            .map(|_| MirrorPlan {
                app: a.clone(),
                head: Head {
                    method: parts.method.clone(),
                    uri: parts.uri.clone(),
                    headers: parts.headers.clone(),
                },
                body: b.clone(),
            }),
        _ => None,
    };
    drop(app0);
    // Shielding applies to what can be replayed safely: idempotent, buffered.
    let shieldable = idempotent && replay.is_some();
    let head = Head::from_parts(parts);

    // Allocates only when an attempt fails.
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut last_version: Option<Arc<VersionCounters>> = None;
    // The version picked for this request, tied to the snapshot it was picked in.
    let mut picked: Option<(Arc<AppTable>, usize)> = None;
    let mut attempts = 0;
    let mut max_attempts = MAX_ATTEMPTS;
    // Shielding used (at most once per request), and the next pick must be the stable
    // version.
    let mut shield_used = false;
    let mut to_stable = false;
    // Loop turns that made no attempt (snapshot swapped underneath); bounded so a
    // storm of pushes cannot spin a request forever.
    let mut spins = 0;
    while attempts < max_attempts && spins < MAX_SPINS {
        let Some(app) = routable_app(sh, &ctx.app).await else {
            return no_backend(sh, ctx, last_version.as_deref(), &outcome_of);
        };
        let primary = match &picked {
            Some((a, v)) if Arc::ptr_eq(a, &app) => *v,
            _ => {
                let stable = if to_stable { app.shield } else { None };
                let chosen = stable.or_else(|| {
                    app.choose_version(&head.method, head.uri.path(), &head.headers, cohort)
                });
                match chosen {
                    Some(v) => v,
                    None => {
                        spins += 1;
                        continue; // swapped to unroutable meanwhile; hold again
                    }
                }
            }
        };
        picked = Some((app.clone(), primary));
        let Some((vi, bi, guard)) = pick_for_attempt(ctx, &app, primary, &tried) else {
            spins += 1;
            continue;
        };
        let version = &app.versions[vi];
        let backend = &version.backends[bi];
        attempts += 1;
        last_version = Some(version.counters.clone());
        let addr = backend.addr;
        // A failure of this attempt goes to the stable version instead of the user.
        let shield_here = shieldable && !shield_used && app.shield.is_some_and(|s| s != vi);
        // A streamed body is sent once, on a new connection; connecting sends nothing.
        let r = match upstream::open(addr, &limits, replay.is_none()).await {
            None => Err(CallError::Connect),
            Some(conn) => {
                let body = match &replay {
                    Some(b) => UpBody::Full(b.clone()),
                    None => match once.take() {
                        Some(b) => b,
                        None => break, // a streamed body cannot be sent twice
                    },
                };
                upstream::call_on(conn, &limits, &head.method, &head.uri, &head.headers, body).await
            }
        };
        let ended = match &r {
            Ok((status, _, _)) => Ended::Answered(status.as_u16()),
            Err(CallError::Connect) => Ended::ConnectFailed,
            Err(CallError::Stale) => Ended::StalePooled,
            Err(CallError::Lost) => Ended::Lost,
            Err(CallError::Bad) => Ended::BadResponse,
            Err(CallError::Timeout) => Ended::TimedOut,
            Err(CallError::RequestBody { over }) => {
                drop(guard);
                return if *over {
                    refuse(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n")
                } else {
                    refuse(StatusCode::BAD_REQUEST, "cannot read the request body\n")
                };
            }
        };
        let step = attempt::next(
            ended,
            attempt::Request {
                idempotent,
                replayable: replay.is_some(),
            },
            attempt::Progress {
                made: attempts,
                max: max_attempts,
                streamed: replay.is_none() && ended != Ended::ConnectFailed,
                shield_here,
            },
        );
        let r = match (step, r) {
            (Next::Respond, Ok((status, headers, body))) => {
                // The answer's metrics sample is recorded when its body ends.
                version.counters.record_status(status.as_u16());
                let stream = is_event_stream(&headers);
                let drain = stream.then(|| {
                    crate::tunnel::drain_signal(backend.state.clone(), limits.drain_grace)
                });
                let tee = match mirror.take() {
                    Some(plan) if !stream => start_mirror(plan, vi, status, &headers, &limits),
                    _ => None,
                };
                let mut resp = Response::new(RespBody::Proxied(Proxied {
                    body,
                    guard: Some(guard),
                    drain,
                    start,
                    status: status.as_u16(),
                    bytes_in,
                    bytes_out: 0,
                    head_latency: stream.then(|| start.elapsed()),
                    tee,
                }));
                *resp.status_mut() = status;
                *resp.headers_mut() = headers;
                if let Some(c) = set_cookie {
                    resp.headers_mut().append(header::SET_COOKIE, c);
                }
                return resp;
            }
            (_, r) => r,
        };
        match r {
            // A shielded answer nobody will see: read to its end in the background, so
            // its connection can be reused.
            Ok((_, _, body)) => {
                tokio::spawn(discard(RespBody::Upstream {
                    body,
                    guard: Some(guard),
                    drain: None,
                }));
            }
            Err(_) => drop(guard),
        }
        match ended {
            Ended::Answered(_) | Ended::TimedOut => {}
            Ended::StalePooled => upstream::drop_idle(addr),
            Ended::ConnectFailed | Ended::Lost | Ended::BadResponse => {
                backend.state.failures.fetch_add(1, Ordering::Relaxed);
                tried.push(addr);
                if ended == Ended::ConnectFailed {
                    mark_down(sh, &backend.state);
                }
            }
        }
        match step {
            Next::Shield => {
                let (status, ours) = match ended {
                    Ended::Answered(status) => (status, false),
                    _ => (502, true),
                };
                Outcome::Shielded { status, ours }.record(
                    &outcome_of,
                    Some(&version.counters),
                    None,
                );
                (shield_used, to_stable, picked) = (true, true, None);
                max_attempts = max_attempts.max(attempts + 1);
            }
            Next::Retry { counted } => {
                if counted {
                    version.counters.retries.fetch_add(1, Ordering::Relaxed);
                } else {
                    attempts -= 1;
                    spins += 1;
                }
                tracing::debug!(app = %ctx.app.name, backend = %addr, ?ended, "upstream attempt failed; trying again");
            }
            Next::GatewayTimeout => {
                Outcome::TimedOut.record(&outcome_of, Some(&version.counters), None);
                return local_response(
                    StatusCode::GATEWAY_TIMEOUT,
                    "gateway timeout: the backend did not answer in time\n",
                );
            }
            Next::BadGateway | Next::Respond => break,
        }
    }
    if let Some(v) = &last_version {
        Outcome::BadGateway.record(&outcome_of, Some(v), None);
    }
    local_response(
        StatusCode::BAD_GATEWAY,
        "bad gateway: no backend answered\n",
    )
}

/// Starts the mirror copy of a request whose primary answered with `parts` from
/// version `primary`: spawns the copy (never awaited by the user's request) and
/// returns the tee that captures the user's response for the comparison. `None` when
/// the primary is the mirror version itself or too many copies are under way.
pub(crate) fn start_mirror(
    plan: MirrorPlan,
    primary: usize,
    status: StatusCode,
    response_headers: &HeaderMap,
    limits: &Limits,
) -> Option<Box<Tee>> {
    let m = plan.app.mirror.as_ref()?;
    if primary == m.version {
        return None;
    }
    let state = &m.state;
    if state.in_flight.fetch_add(1, Ordering::Relaxed) >= m.max_in_flight {
        state.in_flight.fetch_sub(1, Ordering::Relaxed);
        state.dropped.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    let slot = MirrorSlot(state.clone());
    let headers = m.rules.capture_headers(response_headers);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tee = Box::new(Tee {
        max: m.cfg.max_body_bytes,
        len: 0,
        chunks: Vec::new(),
        truncated: false,
        status: status.as_u16(),
        headers,
        tx,
    });
    tokio::spawn(run_mirror(plan, slot, rx, limits.clone()));
    Some(tee)
}

/// Sends the copy, waits for both responses, compares them and records the outcome.
async fn run_mirror(
    plan: MirrorPlan,
    slot: MirrorSlot,
    primary: tokio::sync::oneshot::Receiver<PrimaryCapture>,
    limits: Limits,
) {
    let Some(m) = plan.app.mirror.as_ref() else {
        return;
    };
    let mirrored =
        match tokio::time::timeout(limits.response_timeout, mirror_call(&plan, m, &limits)).await {
            Ok(r) => r,
            Err(_) => Err("the mirror did not answer in time".to_string()),
        };
    let primary = match tokio::time::timeout(limits.response_timeout, primary).await {
        Ok(Ok(p)) => p,
        // The user's response did not complete: nothing to compare with.
        _ => {
            slot.0.abandoned.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let body = match primary.chunks.len() {
        0 => Bytes::new(),
        1 => primary.chunks[0].clone(),
        _ => {
            let mut b = BytesMut::new();
            for c in &primary.chunks {
                b.extend_from_slice(c);
            }
            b.freeze()
        }
    };
    let primary = Captured {
        status: primary.status,
        headers: primary.headers,
        body,
        truncated: primary.truncated,
    };
    let (outcome, mirror) = match mirrored {
        Ok(c) => (m.rules.compare(&primary, &c), c),
        Err(error) => (
            Comparison::Mismatch {
                differences: vec![Difference::MirrorFailed { error }],
            },
            Captured::default(),
        ),
    };
    plan.app.versions[m.version]
        .counters
        .record_mirror(Instant::now(), outcome.is_match());
    let at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    m.state.samples().record(
        plan.head.method.as_str(),
        plan.head.uri.path(),
        &primary,
        &mirror,
        &outcome,
        at_ms,
    );
    drop(slot);
}

/// One request to a backend of the mirror version, its response captured up to
/// `max_body_bytes`.
async fn mirror_call(
    plan: &MirrorPlan,
    m: &MirrorTable,
    limits: &Limits,
) -> Result<Captured, String> {
    let addr = plan
        .app
        .pick_in_version(m.version)
        .ok_or_else(|| "no backend".to_string())?;
    let mut headers = plan.head.headers.clone();
    headers.insert(X_BATON_MIRROR, HeaderValue::from_static("1"));
    let (status, resp_headers, mut body) = upstream::call(
        addr,
        limits,
        &plan.head.method,
        &plan.head.uri,
        &headers,
        UpBody::Full(plan.body.clone()),
    )
    .await
    .map_err(|e| e.to_string())?;
    let headers = m.rules.capture_headers(&resp_headers);
    let max = m.cfg.max_body_bytes;
    let mut buf = BytesMut::new();
    let mut truncated = false;
    while let Some(frame) = body.frame().await {
        let Ok(d) = frame.map_err(|e| e.to_string())?.into_data() else {
            continue;
        };
        let room = max - buf.len();
        if d.len() > room {
            buf.extend_from_slice(&d[..room]);
            truncated = true;
            // The rest is not read: that connection is not reused.
            body.abandon();
            break;
        }
        buf.extend_from_slice(&d);
    }
    Ok(Captured {
        status: status.as_u16(),
        headers,
        body: buf.freeze(),
        truncated,
    })
}

/// True for `Content-Type: text/event-stream` (server-sent events).
fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
}

fn no_backend(
    sh: &Shared,
    ctx: &ConnCtx,
    last: Option<&VersionCounters>,
    req: &outcome::Request<'_>,
) -> Response<RespBody> {
    let app = live_app(sh, &ctx.app);
    Outcome::NoBackend.record(req, last, app.as_deref().map(|a| &*a.counters));
    local_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "service unavailable: no backend is ready\n",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn idempotency() {
        assert!(is_idempotent(&Method::GET));
        assert!(is_idempotent(&Method::PUT));
        assert!(!is_idempotent(&Method::POST));
        assert!(!is_idempotent(&Method::PATCH));
    }
}
