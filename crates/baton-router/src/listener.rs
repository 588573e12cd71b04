//! User-traffic listeners: every worker accepts on its own copy of each app's
//! listening socket and serves the connections it accepted itself, so a connection,
//! its requests and its upstream connections all stay on one core.
//!
//! The workers share one socket (duplicated descriptors) rather than binding with
//! SO_REUSEPORT: with SO_REUSEPORT another process of the same user could bind the
//! same port and silently take a share of the traffic, and an app asking for a port
//! that is already in use must fail.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::HeaderValue;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use crate::limits::Limits;
use crate::proxy::{self, ConnCtx};
use crate::router::Shared;

/// Binds `addr` with SO_REUSEADDR, so a restarted router can take its ports back while
/// old connections sit in TIME_WAIT.
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Which app a listener serves.
#[derive(Clone)]
pub(crate) struct AppRef {
    /// Stable index of the app in every snapshot ([`crate::table::Table::app`]).
    pub id: usize,
    pub name: Arc<str>,
}

/// Accepts connections for `app` on every worker until `stop` is cancelled; then each
/// connection is asked to close after its current request.
pub(crate) fn spawn_accept(
    shared: &Arc<Shared>,
    workers: &[Handle],
    app: AppRef,
    listener: TcpListener,
    stop: CancellationToken,
) {
    let current;
    let workers = if workers.is_empty() {
        current = [Handle::current()];
        &current[..]
    } else {
        workers
    };
    let std_listener = match listener.into_std() {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(app = %app.name, error = %e, "cannot hand the listener to workers");
            return;
        }
    };
    let mut copies: Vec<std::io::Result<std::net::TcpListener>> = (1..workers.len())
        .map(|_| std_listener.try_clone())
        .collect();
    copies.push(Ok(std_listener));
    for (rt, l) in workers.iter().zip(copies) {
        let l = match l {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(app = %app.name, error = %e, "cannot share the listener with a worker");
                continue;
            }
        };
        let fut = accept_loop(shared.clone(), app.clone(), l, stop.clone());
        rt.spawn(shared.tasks.track_future(fut));
    }
}

async fn accept_loop(
    shared: Arc<Shared>,
    app: AppRef,
    listener: std::net::TcpListener,
    stop: CancellationToken,
) {
    let listener = match listener
        .set_nonblocking(true)
        .and_then(|()| TcpListener::from_std(listener))
    {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(app = %app.name, error = %e, "cannot register the listener");
            return;
        }
    };
    let mut builder: Option<(Limits, Arc<auto::Builder<TokioExecutor>>)> = None;
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Typically EMFILE; back off instead of spinning.
                    tracing::warn!(app = %app.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        // Connection settings follow the app's live limits; rebuilt only when they change.
        let limits = shared
            .table
            .load()
            .app(app.id)
            .map_or_else(Limits::default, |a| a.limits.clone());
        let header_timeout = limits.client_header_timeout;
        let b = match &builder {
            Some((l, b)) if *l == limits => b.clone(),
            _ => {
                let b = Arc::new(conn_builder(&limits));
                builder = Some((limits, b.clone()));
                b
            }
        };
        let ctx = Arc::new(ConnCtx::new(shared.clone(), app.clone(), peer));
        let fut = serve_conn(b, ctx, stream, stop.clone(), header_timeout);
        tokio::spawn(shared.tasks.track_future(fut));
    }
    tracing::debug!(app = %app.name, "listener stopped");
}

/// The HTTP/1.1 + h2c server settings for one app's client connections.
fn conn_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        // hyper starts this timer whenever it waits for a request head, so it bounds
        // both a slow client sending its headers and an idle keep-alive connection.
        .header_read_timeout(limits.client_header_timeout)
        // Over this, hyper answers 431 itself; its minimum buffer is 8 KiB.
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(limits.client_header_timeout))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}

async fn serve_conn(
    builder: Arc<auto::Builder<TokioExecutor>>,
    ctx: Arc<ConnCtx>,
    stream: tokio::net::TcpStream,
    stop: CancellationToken,
    header_timeout: Duration,
) {
    // hyper's header timer only starts once the protocol is known, and telling HTTP/1
    // from HTTP/2 has no deadline of its own: a client that connects and sends nothing
    // (or the first bytes of an HTTP/2 preface) would hold the connection forever. So
    // the first request must arrive within the header timeout (an HTTP/2 client that
    // opens a connection and sends no request in that time is dropped too); after it,
    // hyper's own timers govern (header read and keep-alive idle for HTTP/1.1, pings for
    // HTTP/2).
    let peer = ctx.peer;
    let first_seen = Arc::new(AtomicBool::new(false));
    let seen = first_seen.clone();
    let svc = service_fn(move |req| {
        let ctx = ctx.clone();
        if !seen.load(Ordering::Relaxed) {
            seen.store(true, Ordering::Relaxed);
        }
        async move { Ok::<_, Infallible>(proxy::handle(&ctx, req).await) }
    });
    let mut conn = pin!(builder.serve_connection_with_upgrades(TokioIo::new(stream), svc));
    let first_deadline = tokio::time::sleep(header_timeout);
    let mut first_deadline = pin!(first_deadline);
    let mut watching = true;
    let result = loop {
        tokio::select! {
            r = conn.as_mut() => break r,
            _ = stop.cancelled() => {
                conn.as_mut().graceful_shutdown();
                break conn.await;
            }
            () = first_deadline.as_mut(), if watching => {
                if first_seen.load(Ordering::Relaxed) {
                    watching = false;
                } else {
                    tracing::debug!(%peer, "no request within the header timeout");
                    return;
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "client connection ended with an error");
    }
}

/// The `X-Forwarded-For` value of a client at `ip` (computed once per connection).
pub(crate) fn ip_header(peer: SocketAddr) -> HeaderValue {
    HeaderValue::try_from(peer.ip().to_string()).unwrap_or(HeaderValue::from_static("unknown"))
}
