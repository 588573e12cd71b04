//! Upstream connections: one pool of idle HTTP/1.1 connections per worker, used by the
//! engine for every HTTP/1 request and, through [`call`], by HTTP/2 requests and
//! mirror copies, with [`crate::h1`] framing their messages too.
//!
//! Every worker runs its own single-threaded runtime, so its pool is a thread-local
//! `RefCell`: taking and returning a connection costs no lock and no atomic. A
//! connection goes back once the response it carried was read to its end (and the
//! backend did not say it would close); connections idle for a whole sweep period
//! are dropped.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::{Method, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::attempt::{self, Ended, Next};
use crate::context::{AppRef, ConnCtx, Shared, live_app};
use crate::h1;
use crate::limits::Limits;
use crate::outcome::{self, Outcome};
use crate::table::{AppTable, BackendEntry, BackendState, VersionCounters};

/// Idle connections kept per backend and worker.
const MAX_IDLE_PER_BACKEND: usize = 1024;
/// How often each worker drops connections idle for a whole period.
pub(crate) const SWEEP_EVERY: Duration = Duration::from_secs(15);
/// Read buffer of an upstream response: its head and the start of its body.
pub(crate) const UP_BUF: usize = 16 * 1024;
/// Largest response head read.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

struct IdleConn {
    stream: TcpStream,
    /// Already idle at the previous sweep: dropped at the next one.
    marked: bool,
}

thread_local! {
    /// Idle upstream sockets of this worker, by backend; most recently used last.
    static IDLE: RefCell<HashMap<SocketAddr, Vec<IdleConn>>> = RefCell::new(HashMap::new());
    /// Spare buffers, so a request does not allocate one.
    static SPARE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// An idle connection to `addr`, most recently used first.
pub(crate) fn take_idle(addr: SocketAddr) -> Option<TcpStream> {
    IDLE.with_borrow_mut(|m| m.get_mut(&addr)?.pop().map(|c| c.stream))
}

/// Forgets the idle connections to `addr` (its backend closed one: probably all).
pub(crate) fn drop_idle(addr: SocketAddr) {
    IDLE.with_borrow_mut(|m| m.remove(&addr));
}

/// Returns a connection whose last response was read to its end.
pub(crate) fn put_idle(addr: SocketAddr, stream: TcpStream) {
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

/// Drops the connections idle since the previous sweep.
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

/// A buffer of at least `capacity` bytes, from this worker's spares when it has one.
pub(crate) fn spare_buf(capacity: usize) -> Vec<u8> {
    // Spares come in all sizes: the most recently returned one that is large enough
    // (a short search: there are at most `MAX_SPARES`, and a fit is usually on top).
    SPARE
        .with_borrow_mut(|spares| {
            let i = spares.iter().rposition(|b| b.capacity() >= capacity)?;
            Some(spares.swap_remove(i))
        })
        .unwrap_or_else(|| Vec::with_capacity(capacity))
}

/// Most spare buffers a worker keeps.
const MAX_SPARES: usize = 64;

/// Gives a buffer back to this worker's spares.
pub(crate) fn return_buf(mut b: Vec<u8>) {
    if b.capacity() == 0 {
        return;
    }
    b.clear();
    SPARE.with_borrow_mut(|s| {
        if s.len() < MAX_SPARES {
            s.push(b);
        }
    });
}

/// A new connection to `addr`, or `None` when it cannot be made within `timeout`.
pub(crate) async fn connect(addr: SocketAddr, timeout: Duration) -> Option<TcpStream> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Some(s)
        }
        _ => None,
    }
}

/// Why a [`call`] produced no response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallError {
    /// Could not connect: nothing was sent.
    Connect,
    /// A reused connection failed before any response byte: the backend had closed
    /// it and never saw the request.
    Stale,
    /// The connection failed before a response head.
    Lost,
    /// Not a response the router can pass on.
    Bad,
    /// No response head within the response timeout.
    Timeout,
    /// The request body failed on the client's side (`over`: it grew over the app's
    /// limit).
    RequestBody { over: bool },
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CallError::Connect => "cannot connect",
            CallError::Stale => "the backend had closed the reused connection",
            CallError::Lost => "the connection failed before a response",
            CallError::Bad => "not a valid HTTP/1.1 response",
            CallError::Timeout => "no response in time",
            CallError::RequestBody { over: true } => "request body too large",
            CallError::RequestBody { over: false } => "the request body failed",
        })
    }
}

/// A connection for one request: pooled (`fresh` false, when one is idle) or new.
/// `None` when a new one cannot be made: nothing was sent.
pub(crate) async fn open(addr: SocketAddr, limits: &Limits, fresh: bool) -> Option<Conn> {
    if !fresh && let Some(stream) = take_idle(addr) {
        return Some(Conn {
            stream,
            addr,
            pooled: true,
        });
    }
    let stream = connect(addr, limits.connect_timeout).await?;
    Some(Conn {
        stream,
        addr,
        pooled: false,
    })
}

/// An upstream connection about to carry one request.
pub(crate) struct Conn {
    stream: TcpStream,
    addr: SocketAddr,
    /// Taken from the pool (the backend may have closed it meanwhile).
    pooled: bool,
}

/// Sends an `http`-typed request (an HTTP/2 request, or a mirror copy) to `addr` as
/// HTTP/1.1 on a pooled connection, and reads the response head. `headers` must be
/// the upstream headers (hop-by-hop ones removed); the body's framing is this
/// function's: `Content-Length` for a held body, chunked for a streamed one (which
/// always goes on a new connection).
pub(crate) async fn call(
    addr: SocketAddr,
    limits: &Limits,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: UpBody,
) -> Result<(StatusCode, HeaderMap, UpstreamBody), CallError> {
    let fresh = matches!(body, UpBody::Streaming { .. });
    let conn = open(addr, limits, fresh).await.ok_or(CallError::Connect)?;
    call_on(conn, limits, method, uri, headers, body).await
}

/// [`call`] on a connection already open.
pub(crate) async fn call_on(
    conn: Conn,
    limits: &Limits,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: UpBody,
) -> Result<(StatusCode, HeaderMap, UpstreamBody), CallError> {
    let Conn {
        stream: mut up,
        addr,
        pooled,
    } = conn;
    let mut out = spare_buf(1024);
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (n, v) in headers {
        if n == header::CONTENT_LENGTH || n == header::TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(n.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match &body {
        UpBody::Full(Some(b)) => {
            out.extend_from_slice(format!("content-length: {}\r\n", b.len()).as_bytes());
        }
        UpBody::Full(None) => {
            if matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
                out.extend_from_slice(b"content-length: 0\r\n");
            }
        }
        UpBody::Streaming { .. } => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
    let lost = if pooled {
        CallError::Stale
    } else {
        CallError::Lost
    };
    let sent = send_body(&mut up, out, body).await;
    match sent {
        Ok(()) => {}
        Err(None) => return Err(lost),
        Err(Some(e)) => return Err(e),
    }
    let mut buf = spare_buf(UP_BUF);
    let head_method = *method == Method::HEAD;
    let read = tokio::time::timeout(limits.response_timeout, async {
        let mut at = 0;
        loop {
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(UP_BUF);
            }
            match up.read_buf(&mut buf).await {
                Ok(0) | Err(_) => {
                    return Err(if buf.is_empty() {
                        lost
                    } else {
                        CallError::Lost
                    });
                }
                Ok(_) => {}
            }
            loop {
                match h1::parse_response_typed(&buf[at..], head_method) {
                    (h1::RespParsed::Done(rh), Some(typed)) => return Ok((at, rh, typed)),
                    (h1::RespParsed::Informational(len), _) => at += len,
                    (h1::RespParsed::Partial, _) if buf.len() - at <= MAX_RESPONSE_HEAD => break,
                    _ => return Err(CallError::Bad),
                }
            }
        }
    })
    .await;
    let (at, rh, (status, mut headers)) = match read {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            return_buf(buf);
            return Err(e);
        }
        Err(_) => {
            return_buf(buf);
            return Err(CallError::Timeout);
        }
    };
    h1::strip_hop_by_hop(&mut headers);
    if matches!(rh.framing, h1::Framing::Chunked | h1::Framing::UntilClose) {
        // The length (if any) is not how this body is framed (RFC 9112 6.3).
        headers.remove(header::CONTENT_LENGTH);
    }
    let end = buf.len();
    buf.resize(end.max(UP_BUF), 0);
    let body = UpstreamBody {
        at: at + rh.len,
        end,
        buf,
        framer: h1::BodyFramer::response(rh.framing),
        reusable: !rh.upstream_close,
        stream: Some(up),
        addr,
    };
    Ok((status, headers, body))
}

/// Writes `head` and the body. `Err(None)`: the connection failed; `Err(Some(e))`: the
/// client's body did.
async fn send_body(
    up: &mut TcpStream,
    mut head: Vec<u8>,
    body: UpBody,
) -> Result<(), Option<CallError>> {
    let mut body = match body {
        UpBody::Full(b) => {
            if let Some(b) = &b
                && b.len() <= 16 * 1024
            {
                head.extend_from_slice(b);
                let r = up.write_all(&head).await;
                return_buf(head);
                return r.map_err(|_| None);
            }
            let r = up.write_all(&head).await;
            return_buf(head);
            r.map_err(|_| None)?;
            if let Some(b) = b {
                up.write_all(&b).await.map_err(|_| None)?;
            }
            return Ok(());
        }
        streaming => streaming,
    };
    let r = up.write_all(&head).await;
    return_buf(head);
    r.map_err(|_| None)?;
    let over = match &body {
        UpBody::Streaming { over, .. } => Some(over.clone()),
        UpBody::Full(_) => None,
    };
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| {
            Some(CallError::RequestBody {
                over: over
                    .as_ref()
                    .is_some_and(|o| o.load(std::sync::atomic::Ordering::Relaxed)),
            })
        })?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers of a request are not passed on
        };
        if data.is_empty() {
            continue;
        }
        let size = format!("{:x}\r\n", data.len());
        up.write_all(size.as_bytes()).await.map_err(|_| None)?;
        up.write_all(&data).await.map_err(|_| None)?;
        up.write_all(b"\r\n").await.map_err(|_| None)?;
    }
    up.write_all(b"0\r\n\r\n").await.map_err(|_| None)
}

/// A response body read from an upstream connection, its framing followed by
/// [`h1::BodyFramer`] and decoded into data frames. The connection goes back to the
/// pool once the body was read to its end (also when it is dropped then: hyper does
/// not poll a body that says it is empty).
pub(crate) struct UpstreamBody {
    stream: Option<TcpStream>,
    addr: SocketAddr,
    /// Read buffer, all of it initialized; `at..end` is unread.
    buf: Vec<u8>,
    at: usize,
    end: usize,
    framer: h1::BodyFramer,
    reusable: bool,
}

impl UpstreamBody {
    /// The body will not be read to its end (a drained stream): its connection is
    /// not reused.
    pub(crate) fn abandon(&mut self) {
        self.reusable = false;
        self.stream = None;
    }

    fn finish(&mut self) {
        if let Some(s) = self.stream.take()
            && self.reusable
            && self.framer.done()
            && self.at == self.end
        {
            put_idle(self.addr, s);
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        self.finish();
        return_buf(std::mem::take(&mut self.buf));
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        loop {
            if this.framer.done() {
                this.finish();
                return Poll::Ready(None);
            }
            if this.at < this.end {
                let mut data = Vec::new();
                let rest = &this.buf[this.at..this.end];
                let take = this.framer.accept_data(rest, &mut data);
                if this.framer.bad() {
                    this.abandon();
                    return Poll::Ready(Some(Err(std::io::Error::other(
                        "the backend's response body is not validly framed",
                    ))));
                }
                if take < rest.len() {
                    // More than the body: that connection is not trusted again.
                    this.reusable = false;
                    this.at = this.end;
                } else {
                    this.at += take;
                }
                if !data.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from(data)))));
                }
                continue;
            }
            let Some(stream) = this.stream.as_mut() else {
                return Poll::Ready(Some(Err(std::io::Error::other(
                    "the upstream connection is gone",
                ))));
            };
            this.at = 0;
            this.end = 0;
            let mut rb = ReadBuf::new(&mut this.buf[..]);
            match Pin::new(stream).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => {
                    this.abandon();
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    if n == 0 {
                        this.abandon();
                        if matches!(this.framer.framing(), h1::Framing::UntilClose) {
                            return Poll::Ready(None);
                        }
                        return Poll::Ready(Some(Err(std::io::Error::other(
                            "the backend closed the connection inside a response body",
                        ))));
                    }
                    this.end = n;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framer.done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framer.framing() {
            h1::Framing::Empty => SizeHint::with_exact(0),
            _ => SizeHint::new(),
        }
    }
}

/// Attempts per request, the first one included.
pub(crate) const MAX_ATTEMPTS: usize = 3;
/// How long the picker avoids a backend after a connect failure.
const DOWN_FOR_MS: u64 = 1000;
/// Hold time for a request on a connection whose app was removed from the config.
const REMOVED_APP_HOLD: Duration = Duration::from_secs(1);
/// Bound on loop turns of one request that made no attempt.
pub(crate) const MAX_SPINS: usize = 16;

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

/// A request's attempts so far: the bookkeeping the engine and the HTTP/2 path share
/// around [`attempt::next`].
pub(crate) struct Attempts {
    /// Backends that failed this request (avoided by the next picks). Allocates only
    /// when an attempt fails.
    pub tried: Vec<SocketAddr>,
    pub made: usize,
    pub max: usize,
    /// Loop turns that made no attempt (snapshot swapped underneath); bounded so a
    /// storm of pushes cannot spin a request forever.
    pub spins: usize,
    /// Shielding was used (at most once per request).
    pub shield_used: bool,
    /// Shielded: the request goes to the stable version from now on.
    pub to_stable: bool,
    /// The version this request was given, in the snapshot it was given in: a retry
    /// stays on it, found again by name when a push reordered the versions.
    given: Option<(Arc<AppTable>, usize)>,
}

impl Attempts {
    pub(crate) fn new() -> Self {
        Attempts {
            tried: Vec::new(),
            made: 0,
            max: MAX_ATTEMPTS,
            spins: 0,
            shield_used: false,
            to_stable: false,
            given: None,
        }
    }

    /// Another attempt may be made.
    pub(crate) fn going(&self) -> bool {
        self.made < self.max && self.spins < MAX_SPINS
    }

    /// The version of the next attempt in `app`: the stable one once shielded; else
    /// the version an earlier attempt was given (by name when `app` is another
    /// snapshot, and while it still has a backend); else `chosen`, the request's first
    /// choice. `None` (nothing to pick in this snapshot) counts a spin.
    pub(crate) fn version(
        &mut self,
        app: &Arc<AppTable>,
        chosen: impl FnOnce() -> Option<usize>,
    ) -> Option<usize> {
        if let Some(stable) = app.shield.filter(|_| self.to_stable) {
            return Some(stable);
        }
        let again = self.given.as_ref().and_then(|(table, v)| {
            if Arc::ptr_eq(table, app) {
                return Some(*v);
            }
            app.version_with_backends(&table.versions.get(*v)?.name)
        });
        let v = again.or_else(chosen);
        match v {
            Some(v) => self.given = Some((app.clone(), v)),
            None => self.spins += 1,
        }
        v
    }

    /// Starts an attempt on version `v` of `app`: picks a backend, avoiding those that
    /// failed this request, counted in flight (see [`pick_for_attempt`]). `None` (the
    /// snapshot was swapped, or nothing can be picked) counts a spin.
    pub(crate) fn start(
        &mut self,
        ctx: &ConnCtx,
        app: &Arc<AppTable>,
        v: usize,
    ) -> Option<(usize, usize, InFlight)> {
        let picked = pick_for_attempt(ctx, app, v, &self.tried);
        match picked {
            Some(_) => self.made += 1,
            None => self.spins += 1,
        }
        picked
    }

    /// Whether a failure of this attempt, on version `vi` of `app`, goes to the stable
    /// version instead of the user: the request can be sent again (`shieldable`), the
    /// app is shielded, `vi` is not its stable version, and shielding was not used yet.
    pub(crate) fn shields(&self, app: &AppTable, vi: usize, shieldable: bool) -> bool {
        shieldable && !self.shield_used && app.shield.is_some_and(|s| s != vi)
    }

    /// Where the attempt just made stands, for [`attempt::next`].
    pub(crate) fn progress(&self, streamed: bool, shield_here: bool) -> attempt::Progress {
        attempt::Progress {
            made: self.made,
            max: self.max,
            streamed,
            shield_here,
        }
    }

    /// Books an attempt that ended as `ended` on `backend` of `version` and was not
    /// passed on: the backend's failure (and a connect failure's mark), and for a
    /// `Shield` or `Retry` step, the counts. 502 and 504 are the caller's to answer.
    pub(crate) fn after_failure(
        &mut self,
        sh: &Shared,
        req: &outcome::Request<'_>,
        ended: Ended,
        step: Next,
        version: &VersionCounters,
        backend: &BackendEntry,
    ) {
        match ended {
            Ended::Answered(_) | Ended::TimedOut => {}
            // The backend probably closed its other idle connections too (a restart,
            // an idle timeout after a burst): drop them, so the next attempt connects
            // afresh.
            Ended::StalePooled => drop_idle(backend.addr),
            Ended::ConnectFailed | Ended::Lost | Ended::BadResponse => {
                backend.state.failures.fetch_add(1, Ordering::Relaxed);
                self.tried.push(backend.addr);
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
                Outcome::Shielded { status, ours }.record(req, Some(version), None);
                (self.shield_used, self.to_stable) = (true, true);
                self.max = self.max.max(self.made + 1);
            }
            Next::Retry { counted } => {
                if counted {
                    version.retries.fetch_add(1, Ordering::Relaxed);
                } else {
                    // A stale keep-alive connection: not an attempt.
                    self.made -= 1;
                    self.spins += 1;
                }
                tracing::debug!(app = %req.app, backend = %backend.addr, ?ended, "upstream attempt failed; trying again");
            }
            Next::GatewayTimeout | Next::BadGateway | Next::Respond => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RoutingConfig;
    use crate::table::{Registry, web_config};

    /// App "web" with `versions` in this order, each with a backend of its own,
    /// shielded by "stable" when it is among them.
    fn web(generation: u64, versions: &[&str]) -> RoutingConfig {
        let named: Vec<(&str, SocketAddr)> = versions
            .iter()
            .zip(9000u16..)
            .map(|(name, port)| (*name, SocketAddr::from(([127, 0, 0, 1], port))))
            .collect();
        let shield = versions.contains(&"stable").then_some("stable");
        web_config(generation, &named, shield)
    }

    /// Builds that config in `reg`: its app "web".
    fn app(reg: &mut Registry, generation: u64, versions: &[&str]) -> Arc<AppTable> {
        reg.build(&web(generation, versions)).apps["web"].clone()
    }

    fn index(app: &AppTable, name: &str) -> usize {
        app.versions.iter().position(|v| v.name == name).unwrap()
    }

    #[test]
    fn a_retry_stays_on_its_version_when_a_push_reorders_the_versions() {
        let mut reg = Registry::default();
        let first = app(&mut reg, 1, &["stable", "canary"]);
        let mut at = Attempts::new();
        let canary = index(&first, "canary");
        assert_eq!(at.version(&first, || Some(canary)), Some(canary));
        // The same snapshot: the same index, without choosing again.
        assert_eq!(at.version(&first, || panic!("chosen again")), Some(canary));

        let reordered = app(&mut reg, 2, &["canary", "stable"]);
        assert_ne!(index(&reordered, "canary"), canary, "the push moved it");
        let v = at.version(&reordered, || panic!("chosen again"));
        assert_eq!(v, Some(index(&reordered, "canary")));
    }

    #[test]
    fn a_version_gone_from_the_snapshot_is_chosen_afresh() {
        let mut reg = Registry::default();
        let first = app(&mut reg, 1, &["a", "b"]);
        let mut at = Attempts::new();
        at.version(&first, || Some(index(&first, "b")));
        let without_b = app(&mut reg, 2, &["a"]);
        assert_eq!(at.version(&without_b, || Some(0)), Some(0));
        let empty = app(&mut reg, 3, &[]);
        assert_eq!(at.version(&empty, || None), None);
        assert_eq!(at.spins, 1, "nothing to pick counts a spin");
    }

    #[test]
    fn a_shielded_request_goes_to_the_stable_version_of_each_snapshot() {
        let mut reg = Registry::default();
        let first = app(&mut reg, 1, &["stable", "canary"]);
        let mut at = Attempts::new();
        at.version(&first, || Some(index(&first, "canary")));
        at.to_stable = true;
        assert_eq!(at.version(&first, || None), Some(index(&first, "stable")));
        let reordered = app(&mut reg, 2, &["canary", "stable"]);
        assert_eq!(
            at.version(&reordered, || None),
            Some(index(&reordered, "stable"))
        );
    }
}
