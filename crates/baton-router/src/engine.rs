//! The HTTP/1 engine's I/O: every HTTP/1 request of an app served straight on the
//! sockets, with [`crate::h1`] deciding framing once.
//!
//! One task per client connection parses the request head, writes the rewritten head
//! to a pooled upstream connection, sends the body (held whole up to
//! [`REPLAY_BODY`] so it can be sent again, streamed beyond with back-pressure, its
//! framing checked byte by byte), parses the response head and copies the response
//! through, following its framing (length, chunked or until close). No header map,
//! no channel to a connection task, no timer per request: on this path the kernel's
//! socket work is most of the cost, and user space must stay well under it. Match
//! rules, sticky cohorts, weights, holding while nothing is routable, retries and
//! shielding happen here.
//!
//! A protocol upgrade (WebSocket) goes to a fresh upstream connection; on `101` both
//! sockets are spliced ([`crate::tunnel::splice`]).
//!
//! A share of requests is copied to a version under test and the answers compared
//! ([`crate::mirror`]); an armed recording keeps requests as clients sent them.
//!
//! HTTP/2 (h2c) connections are served by hyper (`listener`); every HTTP/1
//! connection is served here, start to end.

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

use crate::attempt::{self, Ended, Next};
use crate::client_socket::ClientSocket;
use crate::context::{ConnCtx, FIRST_READ, live_app_of, next_cohort};
use crate::h1;
use crate::mirroring::{self, MirrorPlan};
use crate::outcome::{self, Outcome};
use crate::table::AppTable;
use crate::upstream::{self, UP_BUF, connect, put_idle, return_buf, spare_buf, take_idle};

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
            let target = h1::origin_form(target);
            let path = target.split_once('?').map_or(&*target, |(p, _)| p);
            route.ruled = app.ruled_version(&method, path, &*req.headers);
        }
        if let Some(st) = &app.sticky {
            route.cohort = crate::sticky::cohort_from_headers(&*req.headers, &st.cookie);
            if route.cohort.is_none() {
                let c = next_cohort();
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

/// Serves the connection's HTTP/1 requests. `first` holds what
/// was read from the client so far.
pub(crate) async fn serve(
    ctx: &ConnCtx,
    stream: &mut ClientSocket,
    first: Vec<u8>,
    stop: &CancellationToken,
    sleep: Pin<&mut Sleep>,
    header_timeout: Duration,
) {
    // Made once: polling it again costs nothing, making it registers a waiter.
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    let armed = sleep.deadline();
    let mut deadline = Deadline { sleep, armed };
    let mut buf = first;
    // The head sent upstream, written while the client's is parsed. Both buffers go
    // back to the worker's spares while the connection waits for its next request
    // with nothing pending, so an idle keep-alive connection holds no buffer.
    let mut upstream = spare_buf(1024);
    // Start of the next request in `buf`.
    let mut at = 0usize;
    let mut idle_since = tokio::time::Instant::now();
    let mut served = 0u64;
    loop {
        // A complete head, or more bytes from the client; the app's table and limits
        // as they were when the head was read, and what the head says about its
        // version.
        let (head, live, limits, route) = loop {
            let live = live_app_of(ctx);
            // No server behind the router judges the head first: the engine applies the
            // app's head size limit itself.
            let limits = live
                .as_ref()
                .map_or_else(crate::limits::Limits::default, |a| a.limits.clone());
            let max_head = limits.max_header_bytes;
            let pending = &buf[at..];
            if upstream.capacity() == 0 {
                upstream = spare_buf(1024);
            }
            upstream.clear();
            let mut route = Route::default();
            let fwd = h1::Forwarding {
                peer_ip: ctx.peer_ip().as_bytes(),
                forwarded: ctx.forwarded().as_bytes(),
            };
            let parsed = h1::parse_request(pending, limits.max_body_bytes, |req, head, options| {
                h1::upstream_request(req, head, options, &fwd, &mut upstream);
                if let Some(a) = live.as_deref() {
                    route = Route::read(a, req);
                }
            });
            match parsed {
                h1::Parsed::Done(h) if h.len <= max_head => break (h, live, limits, route),
                h1::Parsed::Refused(r) => return refused(ctx, stream, r).await,
                h1::Parsed::Done(_) => {
                    return refused(ctx, stream, h1::Refusal::HeadTooLarge).await;
                }
                h1::Parsed::Partial => {
                    if pending.len() > max_head {
                        return refused(ctx, stream, h1::Refusal::HeadTooLarge).await;
                    }
                }
            }
            if at > 0 {
                buf.drain(..at);
                at = 0;
            }
            let idle = buf.is_empty();
            if idle {
                return_buf(std::mem::take(&mut buf));
                return_buf(std::mem::take(&mut upstream));
            } else if buf.capacity() - buf.len() < 1024 {
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
                () = &mut stopped => return,
                r = async {
                    if idle {
                        stream.readable().await?;
                        buf = spare_buf(FIRST_READ);
                    }
                    stream.read_buf(&mut buf).await
                } => r,
                () = deadline.sleep.as_mut() => {
                    if served == 0 || deadline.expired(limit) {
                        tracing::debug!(peer = %ctx.peer, "no request head within the header timeout");
                        return;
                    }
                    continue;
                }
            };
            match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        };
        let body_at = at + head.len;
        ctx.heads.fetch_add(1, Ordering::Relaxed);
        ctx.active.fetch_add(1, Ordering::Relaxed);
        let done = exchange(
            ctx,
            live,
            limits,
            stream,
            &upstream,
            &head,
            &route,
            &mut buf,
            body_at,
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
            Exchange::KeepAlive { next } if !head.close && !stop.is_cancelled() => at = next,
            _ => return,
        }
        if at == buf.len() {
            buf.clear();
            at = 0;
        }
    }
}

/// Answers a request the router refuses, and closes: what the client sends next
/// cannot be framed.
async fn refused(ctx: &ConnCtx, client: &mut ClientSocket, r: h1::Refusal) {
    if let h1::Refusal::Bad(msg) = r {
        tracing::debug!(app = %ctx.app.name, peer = %ctx.peer, "{}", msg.trim_end());
    }
    let (status, msg) = r.answer();
    local(client, status, msg, true).await;
}

enum Exchange {
    /// The response went out whole; the client connection may serve another request,
    /// which starts at `next` in the client buffer.
    KeepAlive { next: usize },
    /// The client connection must close (the response said so, or could not be
    /// completed).
    Close,
}

/// Largest request body held whole before it is sent, so that the request can be
/// sent again (a retry, shielding); longer bodies are streamed and sent once.
const REPLAY_BODY: usize = 64 * 1024;

/// A request body as the engine holds it.
struct ReqBody {
    framer: h1::BodyFramer,
    /// The body bytes (as framed) in the client buffer read so far.
    start: usize,
    end: usize,
    /// The whole body is in `start..end`.
    whole: bool,
    /// Body data bytes, for the metrics.
    bytes: u64,
}

/// Why a request body could not be read.
enum BodyError {
    Refused(h1::Refusal),
    /// The client went away or stalled.
    Gone,
}

/// Reads the request body into the client buffer while it fits [`REPLAY_BODY`]
/// (all of it for most requests), checking its framing as it comes. Answers
/// `100 Continue` first when the client waits for it.
async fn gather_body(
    client: &mut ClientSocket,
    buf: &mut Vec<u8>,
    start: usize,
    head: &h1::ReqHead,
    limits: &crate::limits::Limits,
) -> Result<ReqBody, BodyError> {
    let mut framer = h1::BodyFramer::request(head.body);
    let mut end = start + framer.accept(&buf[start..]);
    let mut continued = false;
    loop {
        if framer.bad() {
            return Err(BodyError::Refused(h1::Refusal::Bad(
                "bad request: invalid chunked framing\n",
            )));
        }
        if framer.data() > limits.max_body_bytes {
            return Err(BodyError::Refused(h1::Refusal::BodyTooLarge));
        }
        if framer.done() || end - start >= REPLAY_BODY {
            let whole = framer.done();
            return Ok(ReqBody {
                bytes: framer.data(),
                framer,
                start,
                end,
                whole,
            });
        }
        if head.expect_continue && !continued {
            continued = true;
            if client
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .is_err()
            {
                return Err(BodyError::Gone);
            }
        }
        // Room for the rest of a body of known length at once (the buffer may be a
        // small spare): growing it step by step would copy the body again each time.
        let (want, grow) = match head.body {
            h1::Framing::Length(n) => {
                let rest = usize::try_from(n)
                    .unwrap_or(usize::MAX)
                    .saturating_sub(end - start)
                    .min(REPLAY_BODY);
                (rest, rest.max(4096))
            }
            _ => (4096, 16 * 1024),
        };
        if buf.capacity() - buf.len() < want {
            buf.reserve(grow);
        }
        let before = buf.len();
        match tokio::time::timeout(limits.client_header_timeout, client.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return Err(BodyError::Gone),
        }
        // While the body is incomplete every byte read so far belongs to it.
        let take = framer.accept(&buf[before..]);
        end = before + take;
    }
}

/// One request: pick a backend, forward, pass the answer back. Retries on another
/// connection or backend when no response head came and the request may be sent
/// again; with shielding, an idempotent request a non-stable version fails is sent
/// to the stable version instead. `parsed` is the table the head was parsed with,
/// `limits` its app's.
#[expect(
    clippy::too_many_arguments,
    reason = "one request's inputs, all distinct"
)]
async fn exchange(
    ctx: &ConnCtx,
    parsed: Option<Arc<AppTable>>,
    limits: crate::limits::Limits,
    client: &mut ClientSocket,
    request: &[u8],
    head: &h1::ReqHead,
    route: &Route,
    buf: &mut Vec<u8>,
    body_at: usize,
    deadline: &mut Deadline<'_>,
    stop: &CancellationToken,
) -> Exchange {
    let start = Instant::now();
    let sh = &*ctx.shared;
    if let Some(a) = &parsed {
        a.counters.requests.fetch_add(1, Ordering::Relaxed);
    }
    let mut body = match gather_body(client, buf, body_at, head, &limits).await {
        Ok(b) => b,
        Err(BodyError::Refused(r)) => {
            refused(ctx, client, r).await;
            return Exchange::Close;
        }
        Err(BodyError::Gone) => return Exchange::Close,
    };
    let bytes_in = body.bytes;
    let outcome_of = outcome::Request {
        app: &ctx.app.name,
        start,
        bytes_in,
    };
    // Held (not routable) requests wait here for a table that can take them.
    let Some(live) = upstream::routable_app(sh, &ctx.app).await else {
        return no_backend(ctx, client, &outcome_of, head.close)
            .await
            .next_at(body.end, None, buf);
    };
    let parsed = parsed.unwrap_or_else(|| live.clone());
    // The first attempt uses the table just read; later ones read it again.
    let mut first_live = Some(live);
    let mut mirror = copies(
        &parsed,
        &buf[body_at - head.len..body_at],
        request,
        head,
        &body,
        buf,
    );
    let mut send = spare_buf(1024);
    let mut up_buf = spare_buf(UP_BUF);
    // Body bytes read past the replay buffer while streaming: the next request's.
    let mut leftover: Option<Vec<u8>> = None;
    let mut streamed = false;
    let mut at = upstream::Attempts::new();
    let mut last_version = None;
    // Shielding applies to what can be sent again safely: idempotent, held whole.
    let shieldable = head.idempotent && body.whole;
    let result = loop {
        if !at.going() {
            break None;
        }
        let app = match first_live.take() {
            Some(app) => app,
            None => match upstream::routable_app(sh, &ctx.app).await {
                Some(app) => app,
                None => break None,
            },
        };
        let Some(v) = at.version(&app, || route.version_in(&parsed, &app)) else {
            continue;
        };
        let Some((vi, bi, guard)) = at.start(ctx, &app, v) else {
            continue;
        };
        let version = &app.versions[vi];
        let backend = &version.backends[bi];
        last_version = Some(version.counters.clone());
        let addr = backend.addr;
        let shield_here = at.shields(&app, vi, shieldable);
        up_buf.clear();
        let stream_rest = (!body.whole).then_some(&mut body.framer);
        let r = attempt(
            addr,
            &limits,
            request,
            &buf[body.start..body.end],
            client,
            stream_rest.map(|f| (f, &mut leftover)),
            &mut send,
            &mut up_buf,
            head,
            deadline,
        )
        .await;
        let ended = match &r {
            Ok((_, rh)) => Ended::Answered(rh.status),
            Err(AttemptError::Connect) => Ended::ConnectFailed,
            Err(AttemptError::Lost { pooled: true }) => Ended::StalePooled,
            Err(AttemptError::Lost { pooled: false }) => Ended::Lost,
            Err(AttemptError::Bad) => Ended::BadResponse,
            Err(AttemptError::Timeout) => Ended::TimedOut,
            // The client's side failed: nothing to answer, or a refusal.
            Err(
                e @ (AttemptError::ClientGone | AttemptError::BadBody | AttemptError::BodyTooLarge),
            ) => {
                let refusal = match e {
                    AttemptError::BadBody => {
                        Some(h1::Refusal::Bad("bad request: invalid chunked framing\n"))
                    }
                    AttemptError::BodyTooLarge => Some(h1::Refusal::BodyTooLarge),
                    _ => None,
                };
                drop(guard);
                return_buf(send);
                return_buf(up_buf);
                if let Some(r) = refusal {
                    refused(ctx, client, r).await;
                }
                return Exchange::Close;
            }
        };
        // Nothing was sent when the connect failed: a streamed body is still unread.
        streamed = !body.whole && ended != Ended::ConnectFailed;
        let step = attempt::next(
            ended,
            attempt::Request {
                idempotent: head.idempotent,
                replayable: body.whole,
            },
            at.progress(streamed, shield_here),
        );
        let r = match (step, r) {
            (Next::Respond, Ok((up, rh))) => break Some((app.clone(), vi, bi, guard, up, rh)),
            (_, r) => r,
        };
        drop(guard);
        drop(r);
        at.after_failure(sh, &outcome_of, ended, step, &version.counters, backend);
        match step {
            Next::Shield | Next::Retry { .. } => {}
            Next::GatewayTimeout => {
                tracing::debug!(app = %ctx.app.name, backend = %addr, timeout = ?limits.response_timeout, "no response head in time");
                Outcome::TimedOut.record(&outcome_of, Some(&version.counters), None);
                return_buf(send);
                return_buf(up_buf);
                let close = head.close || streamed;
                return local(
                    client,
                    "504 Gateway Timeout",
                    "gateway timeout: the backend did not answer in time\n",
                    close,
                )
                .await
                .next_at(body.end, leftover.take(), buf);
            }
            // `Respond` with no response cannot happen (only an answer is passed on).
            Next::BadGateway | Next::Respond => break None,
        }
    };
    let Some((app, vi, bi, guard, mut up, rh)) = result else {
        return_buf(send);
        return_buf(up_buf);
        let close = head.close || streamed;
        if let Some(v) = &last_version {
            Outcome::BadGateway.record(&outcome_of, Some(v), None);
            return local(
                client,
                "502 Bad Gateway",
                "bad gateway: no backend answered\n",
                close,
            )
            .await
            .next_at(body.end, leftover.take(), buf);
        }
        return no_backend(ctx, client, &outcome_of, close).await.next_at(
            body.end,
            leftover.take(),
            buf,
        );
    };
    let version = &app.versions[vi];
    let backend = &version.backends[bi];
    if rh.status == 101 {
        Outcome::Answered {
            status: 101,
            bytes_out: 0,
            latency: None,
        }
        .record(&outcome_of, Some(&version.counters), None);
        // Switching protocols: both connections are spliced until either ends or the
        // backend is drained (the in-flight guard is held until then).
        send.extend_from_slice(b"\r\n");
        let ok = client.write_all(&send).await.is_ok();
        return_buf(send);
        let early_client = &buf[body.end..];
        if !ok || (!early_client.is_empty() && up.write_all(early_client).await.is_err()) {
            return_buf(up_buf);
            return Exchange::Close;
        }
        let Ok(client) = client.registered() else {
            return_buf(up_buf);
            return Exchange::Close;
        };
        let stopping = ctx.shared.stopping.clone();
        let drained = crate::tunnel::drain_signal(backend.state.clone(), limits.drain_grace);
        let drain = async move {
            tokio::select! {
                () = drained => {}
                () = stopping.cancelled() => {}
            }
        };
        // Boxed: a rare path whose state would otherwise make every connection's
        // task larger.
        Box::pin(crate::tunnel::splice(
            client,
            &mut up,
            &up_buf[rh.len..],
            head.websocket,
            drain,
            guard,
        ))
        .await;
        return_buf(up_buf);
        tracing::debug!(app = %ctx.app.name, "upgraded connection ended");
        return Exchange::Close;
    }
    // A chunked answer to an HTTP/1.0 client goes without its chunking, ended by the
    // close (the client head says so, see `h1::parse_response`).
    let dechunk = head.http10 && matches!(rh.framing, h1::Framing::Chunked);
    // A router that handed its listeners to a successor ends every connection after
    // its next response, so keep-alive clients reconnect (to the successor) without a
    // request lost to an idle close.
    let last = head.close
        || dechunk
        || matches!(rh.framing, h1::Framing::UntilClose)
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
    } else if head.http10 {
        send.extend_from_slice(b"connection: keep-alive\r\n");
    }
    send.extend_from_slice(b"\r\n");
    let head_latency = rh.event_stream.then(|| start.elapsed());
    // The user's answer, kept for the comparison with the mirror's.
    let mut tee = match mirror.take() {
        Some(plan) if !rh.event_stream => {
            let limit = plan
                .app
                .mirror
                .as_ref()
                .map_or(0, |m| m.cfg.max_body_bytes.saturating_mul(2) + 4096);
            h1::response_parts(&up_buf[..rh.len])
                .and_then(|(status, headers)| {
                    mirroring::start_mirror(*plan, vi, status, &headers, &limits)
                })
                .map(|t| (t, Capture::new(limit)))
        }
        _ => None,
    };
    let mut resp_body = h1::BodyFramer::response(rh.framing);
    let already = &up_buf[rh.len..];
    let sent_before = send.len();
    let take = if dechunk {
        resp_body.accept_data(already, &mut send)
    } else {
        let take = resp_body.accept(already);
        send.extend_from_slice(&already[..take]);
        take
    };
    if let Some((_, c)) = tee.as_mut() {
        c.add(&already[..take]);
    }
    let mut bytes_out = (send.len() - sent_before) as u64;
    let mut reusable = !rh.upstream_close && take == already.len();
    let mut complete = resp_body.done();
    // Recorded before the write that completes the answer: a client that has its
    // answer finds it counted.
    let mut answer = Answer {
        req: &outcome_of,
        version: guard.version(),
        status: rh.status,
        head_latency,
        recorded: false,
    };
    if complete {
        answer.record(bytes_out);
    }
    let mut client_ok = client.write_all(&send).await.is_ok();
    return_buf(send);
    if client_ok && !complete {
        let drain = rh
            .event_stream
            .then(|| crate::tunnel::drain_signal(backend.state.clone(), limits.drain_grace));
        let capture = tee.as_mut().map(|(_, c)| c);
        let (ok, n, whole, extra) = copy_body(
            &mut up,
            client,
            &mut up_buf,
            &mut resp_body,
            dechunk,
            drain,
            capture,
            &mut answer,
        )
        .await;
        client_ok = ok;
        bytes_out += n;
        complete = whole;
        reusable = reusable && whole && !extra;
    }
    return_buf(up_buf);
    if complete && reusable {
        put_idle(backend.addr, up);
    }
    if let Some((mut t, c)) = tee
        && complete
    {
        t.push(&Bytes::from(h1::body_data(rh.framing, &c.raw)));
        if c.full {
            t.mark_truncated();
        }
        t.send();
    }
    answer.record(bytes_out);
    drop(guard);
    if client_ok && complete && !last {
        Exchange::KeepAlive { next: body.end }.next_at(body.end, leftover.take(), buf)
    } else {
        Exchange::Close
    }
}

impl Exchange {
    /// Where the next request starts: at `end` in the client buffer, or, after a
    /// streamed body, in `leftover` (what was read past the body's end), which then
    /// becomes the client buffer.
    fn next_at(self, end: usize, leftover: Option<Vec<u8>>, buf: &mut Vec<u8>) -> Exchange {
        match (self, leftover) {
            (Exchange::KeepAlive { .. }, Some(rest)) => {
                buf.clear();
                buf.extend_from_slice(&rest);
                return_buf(rest);
                Exchange::KeepAlive { next: 0 }
            }
            (Exchange::KeepAlive { .. }, None) => Exchange::KeepAlive { next: end },
            (Exchange::Close, rest) => {
                if let Some(r) = rest {
                    return_buf(r);
                }
                Exchange::Close
            }
        }
    }
}

/// The app had nothing ready within its hold timeout: 503.
async fn no_backend(
    ctx: &ConnCtx,
    client: &mut ClientSocket,
    req: &outcome::Request<'_>,
    close: bool,
) -> Exchange {
    let app = live_app_of(ctx);
    Outcome::NoBackend.record(req, None, app.as_deref().map(|a| &*a.counters));
    local(
        client,
        "503 Service Unavailable",
        "service unavailable: no backend is ready\n",
        close,
    )
    .await
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
        Exchange::KeepAlive { next: 0 }
    } else {
        Exchange::Close
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
    /// The client went away (or stalled) while its body was streamed.
    ClientGone,
    /// The streamed body's framing broke: the upstream connection is dropped mid-body.
    BadBody,
    /// The streamed body grew over the app's limit.
    BodyTooLarge,
}

/// The rest of a request body, streamed from the client during the attempt: the
/// framer that follows it, and where to put bytes read past its end.
type StreamRest<'a> = (&'a mut h1::BodyFramer, &'a mut Option<Vec<u8>>);

/// Sends the request (head, held body, then the streamed rest from `client`) on a
/// pooled connection to `addr` (or a new one), reads the response head into `buf` and
/// writes the client's response head but its end (see [`h1::parse_response`]) into
/// `send`. Interim (1xx) heads passed on are written to `client` as they come.
#[expect(
    clippy::too_many_arguments,
    reason = "one attempt's inputs, all distinct"
)]
async fn attempt(
    addr: SocketAddr,
    limits: &crate::limits::Limits,
    request: &[u8],
    held: &[u8],
    client: &mut ClientSocket,
    rest: Option<StreamRest<'_>>,
    send: &mut Vec<u8>,
    buf: &mut Vec<u8>,
    head: &h1::ReqHead,
    deadline: &mut Deadline<'_>,
) -> Result<(TcpStream, h1::RespHead), AttemptError> {
    // A streamed body is sent once: on a fresh connection, which cannot turn out to
    // have been closed by the backend meanwhile. An upgrade takes its connection
    // for good.
    let idle = if rest.is_none() {
        take_idle(addr)
    } else {
        None
    };
    let (mut up, pooled) = match idle {
        Some(s) => (s, true),
        // Boxed, as the streamed body below: paths taken once per upstream connection
        // or per large body, whose state would otherwise enlarge every connection's task.
        None => match Box::pin(connect(addr, limits.connect_timeout)).await {
            Some(s) => (s, false),
            None => return Err(AttemptError::Connect),
        },
    };
    let lost = AttemptError::Lost { pooled };
    if held.is_empty() {
        if up.write_all(request).await.is_err() {
            return Err(lost);
        }
    } else if held.len() + request.len() <= 16 * 1024 {
        // One write for a small request.
        let mut whole = spare_buf(request.len() + held.len());
        whole.extend_from_slice(request);
        whole.extend_from_slice(held);
        let r = up.write_all(&whole).await;
        return_buf(whole);
        if r.is_err() {
            return Err(lost);
        }
    } else if up.write_all(request).await.is_err() || up.write_all(held).await.is_err() {
        return Err(lost);
    }
    if let Some((framer, leftover)) = rest {
        Box::pin(stream_body(&mut up, client, framer, leftover, limits)).await?;
    }
    let sent_at = tokio::time::Instant::now();
    let limit = sent_at + limits.response_timeout;
    deadline.bound(limit);
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
            match h1::parse_response(&buf[at..], head, send) {
                h1::RespParsed::Done(rh) => {
                    if at > 0 {
                        buf.drain(..at);
                    }
                    return Ok((up, rh));
                }
                h1::RespParsed::Informational(len) => {
                    at += len;
                    if !send.is_empty() && client.write_all(send).await.is_err() {
                        return Err(AttemptError::ClientGone);
                    }
                }
                h1::RespParsed::Partial => {
                    if buf.len() - at > 64 * 1024 {
                        return Err(AttemptError::Bad);
                    }
                    break;
                }
                h1::RespParsed::Bad => return Err(AttemptError::Bad),
            }
        }
    }
}

/// Streams the rest of a request body from the client to `up` as it comes (the
/// client is read only as fast as the backend takes it). Bytes read past the body's
/// end (a pipelined request) go to `leftover`.
async fn stream_body(
    up: &mut TcpStream,
    client: &mut ClientSocket,
    framer: &mut h1::BodyFramer,
    leftover: &mut Option<Vec<u8>>,
    limits: &crate::limits::Limits,
) -> Result<(), AttemptError> {
    let mut chunk = spare_buf(UP_BUF);
    let result = loop {
        if framer.done() {
            break Ok(());
        }
        chunk.clear();
        match tokio::time::timeout(limits.client_header_timeout, client.read_buf(&mut chunk)).await
        {
            Ok(Ok(n)) if n > 0 => {}
            _ => break Err(AttemptError::ClientGone),
        }
        let take = framer.accept(&chunk);
        if framer.bad() {
            break Err(AttemptError::BadBody);
        }
        if framer.data() > limits.max_body_bytes {
            break Err(AttemptError::BodyTooLarge);
        }
        if up.write_all(&chunk[..take]).await.is_err() {
            break Err(AttemptError::Lost { pooled: false });
        }
        if take < chunk.len() {
            let mut rest = spare_buf(chunk.len() - take);
            rest.extend_from_slice(&chunk[take..]);
            *leftover = Some(rest);
        }
    };
    return_buf(chunk);
    result
}

/// Copies the rest of a body from `up` to `client` (its data only, when `dechunk`).
/// Returns (client still fine, bytes sent, body complete, the backend sent more than
/// the body).
#[expect(
    clippy::too_many_arguments,
    reason = "one response body's ends and what watches it, all distinct"
)]
async fn copy_body(
    up: &mut TcpStream,
    client: &mut ClientSocket,
    buf: &mut Vec<u8>,
    body: &mut h1::BodyFramer,
    dechunk: bool,
    mut drain: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    mut capture: Option<&mut Capture>,
    answer: &mut Answer<'_>,
) -> (bool, u64, bool, bool) {
    let mut sent = 0u64;
    let mut draining = false;
    // The data of a dechunked body, as each read yields it.
    let mut data = if dechunk {
        spare_buf(UP_BUF)
    } else {
        Vec::new()
    };
    let result = loop {
        if draining && body.at_boundary() {
            // The backend left the table and its grace is over: end the stream cleanly
            // (a dechunked one by the close that follows). Complete for the client; the
            // upstream connection is mid-stream, so it counts as having more to send
            // and is not reused.
            answer.record(sent);
            let ok = dechunk || client.write_all(b"0\r\n\r\n").await.is_ok();
            break (ok, sent, true, true);
        }
        buf.clear();
        let read = match drain.as_mut() {
            Some(d) => tokio::select! {
                r = up.read_buf(buf) => r,
                () = d.as_mut() => {
                    drain = None;
                    draining = true;
                    if !matches!(body.framing(), h1::Framing::Chunked) {
                        break (false, sent, false, false);
                    }
                    continue;
                }
            },
            None => up.read_buf(buf).await,
        };
        match read {
            Ok(0) | Err(_) => {
                let whole = matches!(body.framing(), h1::Framing::UntilClose);
                break (whole, sent, whole, false);
            }
            Ok(n) => {
                data.clear();
                let take = if dechunk {
                    body.accept_data(&buf[..n], &mut data)
                } else {
                    body.accept(&buf[..n])
                };
                if body.bad() {
                    break (false, sent, false, true);
                }
                if let Some(c) = capture.as_deref_mut() {
                    c.add(&buf[..take]);
                }
                let out = if dechunk { &data[..] } else { &buf[..take] };
                if body.done() {
                    answer.record(sent + out.len() as u64);
                }
                if client.write_all(out).await.is_err() {
                    break (false, sent, false, false);
                }
                sent += out.len() as u64;
                if body.done() {
                    break (true, sent, true, take < n);
                }
            }
        }
    };
    return_buf(data);
    result
}

/// A response body as framed, kept up to a limit for a mirror comparison.
struct Capture {
    raw: Vec<u8>,
    limit: usize,
    /// The limit was reached: the capture is cut short.
    full: bool,
}

impl Capture {
    fn new(limit: usize) -> Self {
        Capture {
            raw: Vec::new(),
            limit,
            full: false,
        }
    }

    fn add(&mut self, b: &[u8]) {
        let room = self.limit - self.raw.len();
        if b.len() > room {
            self.full = true;
        }
        self.raw.extend_from_slice(&b[..b.len().min(room)]);
    }
}

/// Offers the request to an armed recording (as the client sent it, before the
/// forwarding headers), and decides whether it is copied to the app's mirror version
/// (as sent upstream): only requests held whole, of the methods and paths the
/// mirror rules take, at the configured share. Parses the head again into `http`
/// types, which only these requests pay for.
fn copies(
    app: &Arc<AppTable>,
    client_head: &[u8],
    upstream_head: &[u8],
    head: &h1::ReqHead,
    body: &ReqBody,
    buf: &[u8],
) -> Option<Box<MirrorPlan>> {
    if app.mirror.is_none() && !app.record.armed() {
        return None;
    }
    let whole = body
        .whole
        .then(|| Bytes::from(h1::body_data(head.body, &buf[body.start..body.end])));
    if app.record.armed()
        && let Some((method, uri, headers)) = h1::request_parts(client_head)
    {
        app.record.offer(&method, &uri, &headers, whole.as_ref());
    }
    let m = app.mirror.as_ref()?;
    let data = whole?;
    let (method, uri, headers) = h1::request_parts(upstream_head)?;
    let wanted = m.rules.wants(&method, uri.path())
        && data.len() <= m.rules.max_body_bytes()
        && crate::mirror::should_mirror(
            m.state.counter.fetch_add(1, Ordering::Relaxed),
            m.cfg.percent,
        );
    // Boxed: held across the exchange's awaits, and absent for most requests.
    wanted.then(|| {
        Box::new(MirrorPlan {
            app: app.clone(),
            head: mirroring::Head {
                method,
                uri,
                headers,
            },
            body: (!data.is_empty()).then_some(data),
        })
    })
}

/// The outcome of a request the backend answered, recorded once (see [`Outcome`]).
struct Answer<'a> {
    req: &'a outcome::Request<'a>,
    version: &'a crate::table::VersionCounters,
    status: u16,
    /// For a stream: the latency is until its head.
    head_latency: Option<Duration>,
    recorded: bool,
}

impl Answer<'_> {
    fn record(&mut self, bytes_out: u64) {
        if std::mem::replace(&mut self.recorded, true) {
            return;
        }
        Outcome::Answered {
            status: self.status,
            bytes_out,
            latency: self.head_latency,
        }
        .record(self.req, Some(self.version), None);
    }
}
