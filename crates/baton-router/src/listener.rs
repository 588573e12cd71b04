//! User-traffic listeners: every worker accepts on its own copy of each app's
//! listening socket and serves the connections it accepted itself, so a connection,
//! its requests and its upstream connections all stay on one core.
//!
//! The workers share one socket (duplicated descriptors) rather than binding with
//! SO_REUSEPORT: with SO_REUSEPORT another process of the same user could bind the
//! same port and silently take a share of the traffic, and an app asking for a port
//! that is already in use must fail.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use nix::{getsockopt_impl, setsockopt_impl, sockopt_impl};
use socket2::SockRef;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use crate::client_socket::ClientSocket;
use crate::context::{AppRef, ConnCtx, FIRST_READ, Shared};
use crate::limits::Limits;
use crate::proxy::{self, RespBody};

/// Binds `addr` with SO_REUSEADDR, so a restarted router can take its ports back while
/// old connections sit in TIME_WAIT.
///
/// Accepted connections inherit two settings from the listener, which saves a system
/// call and a packet per connection:
/// - TCP_NODELAY: responses go out as soon as they are written;
/// - delayed ACKs (TCP_QUICKACK off): the kernel does not acknowledge the request on
///   its own the moment it arrives; the acknowledgement rides on the response. On
///   loopback that lone ACK is processed on the client's CPU, in the client's time.
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(4096)?;
    if let Err(e) = SockRef::from(&listener).set_tcp_quickack(false) {
        tracing::debug!(error = %e, "cannot delay acknowledgements on the listener");
    }
    // HTTP clients speak first, so a connection is handed over only once its first
    // bytes are in: one wake-up per connection instead of two, and a connection that
    // never sends anything costs the router nothing.
    if let Err(e) = nix::sys::socket::setsockopt(&listener, DeferAccept, &DEFER_ACCEPT_SECS) {
        tracing::debug!(error = %e, "cannot defer accepting until data arrives");
    }
    Ok(listener)
}

/// How long the kernel holds a connection that has not sent anything before handing
/// it over anyway (rounded up to its SYN-ACK retransmission schedule).
const DEFER_ACCEPT_SECS: u32 = 1;

// TCP_DEFER_ACCEPT through nix's own socket-option definition macro (it takes an int
// number of seconds).
sockopt_impl!(
    /// Linux's TCP_DEFER_ACCEPT.
    DeferAccept,
    Both,
    libc::IPPROTO_TCP,
    libc::TCP_DEFER_ACCEPT,
    u32
);

/// Accepts connections for `app` on every worker until `accept` is cancelled (a child
/// of `stop`: a handover stops accepting first, see [`crate::handover`]); when `stop`
/// is cancelled each connection is asked to close after its current request.
pub(crate) fn spawn_accept(
    shared: &Arc<Shared>,
    workers: &[Handle],
    app: AppRef,
    listener: TcpListener,
    accept: CancellationToken,
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
        let fut = accept_loop(shared.clone(), app.clone(), l, accept.clone(), stop.clone());
        rt.spawn(shared.tasks.track_future(fut));
    }
}

async fn accept_loop(
    shared: Arc<Shared>,
    app: AppRef,
    listener: std::net::TcpListener,
    accept: CancellationToken,
    stop: CancellationToken,
) {
    // Accepted sockets are not registered with the runtime until they have to wait
    // (see [`ClientSocket`]), so the listener is watched for readiness and accepts
    // plain sockets.
    let listener = match listener
        .set_nonblocking(true)
        .and_then(|()| watch(listener))
    {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(app = %app.name, error = %e, "cannot register the listener");
            return;
        }
    };
    let mut builder: Option<(Limits, Arc<ConnBuilders>)> = None;
    let stopped = accept.cancelled();
    let mut stopped = pin!(stopped);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut stopped => break,
            r = accept_plain(&listener) => match r {
                Ok(x) => x,
                Err(e) if connection_failed(&e) => {
                    // That connection's own failure (typically reset before it was
                    // accepted): the next one is not delayed.
                    tracing::debug!(app = %app.name, error = %e, "accept failed");
                    continue;
                }
                Err(e) => {
                    // Typically out of descriptors: back off instead of spinning.
                    tracing::warn!(app = %app.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Non-blocking and TCP_NODELAY already: see `accept_nonblocking` and `bind`.
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

/// Accept errors that belong to the one connection being accepted (accept(2) passes
/// on a pending network error of the new socket), not to the listener: the next
/// connection can be accepted at once.
fn connection_failed(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ECONNABORTED
                | libc::EPROTO
                | libc::ENETDOWN
                | libc::ENOPROTOOPT
                | libc::EHOSTDOWN
                | libc::ENONET
                | libc::EHOSTUNREACH
                | libc::EOPNOTSUPP
                | libc::ENETUNREACH
                | libc::EPERM
        )
    )
}

/// Registers `listener` for readiness. `AsyncFd::new` is deprecated because a value
/// that does not own its descriptor could close it while registered; the listener is
/// owned by the `AsyncFd` and closed only when it is dropped, after deregistration,
/// and the safe-code replacement (`AsyncFd::register`) is `unsafe`.
#[expect(
    deprecated,
    reason = "the AsyncFd owns the listener; see the doc comment"
)]
fn watch(listener: std::net::TcpListener) -> std::io::Result<AsyncFd<std::net::TcpListener>> {
    AsyncFd::new(listener)
}

/// The next connection, as a plain non-blocking socket (accepted so, without another
/// system call to switch it over).
async fn accept_plain(
    listener: &AsyncFd<std::net::TcpListener>,
) -> std::io::Result<(std::net::TcpStream, SocketAddr)> {
    loop {
        let mut ready = listener.readable().await?;
        if let Ok(r) = ready.try_io(|l| accept_nonblocking(l.get_ref())) {
            return r;
        }
    }
}

fn accept_nonblocking(
    listener: &std::net::TcpListener,
) -> std::io::Result<(std::net::TcpStream, SocketAddr)> {
    let (socket, peer) =
        SockRef::from(listener).accept4(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)?;
    let peer = peer
        .as_socket()
        .ok_or_else(|| std::io::Error::other("accepted a connection that is not TCP/IP"))?;
    Ok((socket.into(), peer))
}

/// The h2c server settings for one app's client connections (HTTP/1 is served by
/// the engine, `engine`).
pub(crate) struct ConnBuilders {
    http2: http2::Builder<TokioExecutor>,
}

fn conn_builder(limits: &Limits) -> ConnBuilders {
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(limits.client_header_timeout))
        .keep_alive_timeout(Duration::from_secs(20));
    ConnBuilders { http2: h2 }
}

/// The client connection preface of HTTP/2 (RFC 9113 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An HTTP/2 client connection whose first bytes were already read (to tell it from
/// HTTP/1): they are read again first.
struct Prefixed {
    prefix: Bytes,
    io: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Whether `first` (the first bytes of a connection) is an HTTP/2 preface, once it is
/// long enough to tell.
fn is_h2(first: &[u8]) -> Option<bool> {
    let common = first.len().min(H2_PREFACE.len());
    if first[..common] != H2_PREFACE[..common] {
        return Some(false);
    }
    (first.len() >= H2_PREFACE.len()).then_some(true)
}

/// Reads the first bytes of a connection until they tell an HTTP/2 preface from an
/// HTTP/1 request (usually the whole request head, in one read, often without
/// waiting). `None` when the client closed or failed first.
async fn first_bytes(sock: &mut ClientSocket, buf: &mut Vec<u8>) -> Option<bool> {
    loop {
        if let Some(h2) = is_h2(buf).filter(|_| !buf.is_empty()) {
            return Some(h2);
        }
        match sock.read_buf(buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// A client connection being served, by either protocol.
trait Serving: Future<Output = hyper::Result<()>> {
    fn shut_down(self: Pin<&mut Self>);
}

impl<S> Serving for http2::Connection<TokioIo<Prefixed>, S, TokioExecutor>
where
    S: hyper::service::HttpService<Incoming, ResBody = Tracked>,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn shut_down(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Counts a request as under way on its connection until its response has been sent
/// (or abandoned); then the connection waits for a next request head again.
struct Active(Arc<ConnCtx>);

impl Drop for Active {
    fn drop(&mut self) {
        let c = &self.0;
        c.idle_since_ms.store(c.shared.now_ms(), Ordering::Relaxed);
        c.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that ends its request's [`Active`] count when dropped.
pub(crate) struct Tracked {
    body: RespBody,
    _active: Active,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = std::io::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

async fn serve_conn(
    builders: Arc<ConnBuilders>,
    ctx: Arc<ConnCtx>,
    stream: std::net::TcpStream,
    stop: CancellationToken,
    header_timeout: Duration,
) {
    let mut sock = ClientSocket::new(stream);
    // One timer per connection. Until the protocol is known and until the first
    // request head has arrived, it bounds the wait from the accept. After that, for
    // HTTP/1 it bounds every wait for a request head (a slow client sending its
    // headers, and an idle keep-alive connection), counted from the end of the
    // previous response; HTTP/2 connections are then kept by their pings.
    let deadline = pin!(tokio::time::sleep(header_timeout));
    let mut deadline = deadline;
    let peer = ctx.peer;
    let mut first = Vec::with_capacity(FIRST_READ);
    // Usually the request is there already: no timer, no waiting.
    let ready = match sock.try_read_buf(&mut first) {
        Ok(Some(0)) | Err(_) => return,
        Ok(_) => is_h2(&first).filter(|_| !first.is_empty()),
    };
    let h2 = match ready {
        Some(h2) => h2,
        None => {
            let known = tokio::select! {
                r = first_bytes(&mut sock, &mut first) => r,
                () = deadline.as_mut() => {
                    tracing::debug!(%peer, "no request within the header timeout");
                    return;
                }
                _ = stop.cancelled() => return,
            };
            match known {
                Some(h2) => h2,
                None => return,
            }
        }
    };
    if !h2 {
        crate::engine::serve(
            &ctx,
            &mut sock,
            first,
            &stop,
            deadline.as_mut(),
            header_timeout,
        )
        .await;
        return;
    }
    // Boxed: hyper's connection state is large, and an HTTP/1 connection's task
    // should not carry room for it.
    Box::pin(serve_h2(builders, ctx, sock, first, stop, deadline)).await;
}

/// Serves an HTTP/2 connection whose first bytes, `first`, were read already.
async fn serve_h2(
    builders: Arc<ConnBuilders>,
    ctx: Arc<ConnCtx>,
    sock: ClientSocket,
    first: Vec<u8>,
    stop: CancellationToken,
    deadline: Pin<&mut tokio::time::Sleep>,
) {
    let Ok(stream) = sock.into_tokio() else {
        return;
    };
    let io = TokioIo::new(Prefixed {
        prefix: Bytes::from(first),
        io: stream,
    });
    let c = ctx.clone();
    let svc = service_fn(move |req| {
        let ctx = c.clone();
        ctx.active.fetch_add(1, Ordering::Relaxed);
        ctx.heads.fetch_add(1, Ordering::Relaxed);
        let active = Active(ctx);
        async move {
            let body = proxy::handle(&active.0, req).await;
            Ok::<_, Infallible>(body.map(|body| Tracked {
                body,
                _active: active,
            }))
        }
    });
    let conn = builders.http2.serve_connection(io, svc);
    drive(conn, &ctx, stop, deadline).await;
}

/// Serves an HTTP/2 connection until it ends, `stop` asks it to finish, or its
/// first request does not come within the header timeout (then HTTP/2's own pings
/// keep watch over idle connections).
async fn drive<C: Serving>(
    conn: C,
    ctx: &ConnCtx,
    stop: CancellationToken,
    mut deadline: Pin<&mut tokio::time::Sleep>,
) {
    let mut conn = pin!(conn);
    let mut watching = true;
    let result = loop {
        tokio::select! {
            // Stop first: when a stop and a backend's response wake the task together,
            // the response must already go out as the connection's last one.
            biased;
            _ = stop.cancelled() => {
                conn.as_mut().shut_down();
                break conn.await;
            }
            r = conn.as_mut() => break r,
            () = deadline.as_mut(), if watching => {
                if ctx.heads.load(Ordering::Relaxed) == 0 {
                    tracing::debug!(peer = %ctx.peer, "no request within the header timeout");
                    return;
                }
                watching = false;
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "client connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-connection system calls `accept_loop` leaves out rely on the kernel
    /// copying these settings from the listener.
    #[tokio::test]
    async fn accepted_sockets_are_nonblocking_nodelay_with_delayed_acks() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let listener = listener.into_std().unwrap();
        let mut client = std::net::TcpStream::connect(addr).unwrap();
        // With deferred accept the connection is handed over once it has sent data.
        std::io::Write::write_all(&mut client, b"GET").unwrap();
        listener.set_nonblocking(false).unwrap();
        let (accepted, peer) = accept_nonblocking(&listener).unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        assert!(accepted.nodelay().unwrap(), "TCP_NODELAY is inherited");
        let sock = SockRef::from(&accepted);
        assert!(sock.nonblocking().unwrap(), "accepted non-blocking");
        assert!(!sock.tcp_quickack().unwrap(), "delayed ACKs are inherited");
        let defer = nix::sys::socket::getsockopt(&listener, DeferAccept).unwrap();
        assert!(defer >= DEFER_ACCEPT_SECS, "deferred accept is on: {defer}");
    }

    #[test]
    fn only_listener_wide_accept_errors_back_off() {
        let err = std::io::Error::from_raw_os_error;
        assert!(connection_failed(&err(libc::ECONNABORTED)));
        assert!(connection_failed(&err(libc::EPROTO)));
        assert!(!connection_failed(&err(libc::EMFILE)));
        assert!(!connection_failed(&err(libc::ENFILE)));
        assert!(!connection_failed(&std::io::Error::other("runtime gone")));
    }
}
