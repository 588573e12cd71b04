//! User-traffic listeners: one accept task per app, one task per connection.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;

use crate::proxy::{self, ConnCtx};
use crate::router::Inner;

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
    socket.listen(1024)
}

/// Accepts connections for `app` until `stop` is cancelled; then each connection is
/// asked to close after its current request.
pub(crate) fn spawn_accept(
    inner: Arc<Inner>,
    app: Arc<str>,
    listener: TcpListener,
    stop: CancellationToken,
) {
    let tasks = inner.tasks.clone();
    tasks.spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                _ = stop.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // Typically EMFILE; back off instead of spinning.
                        tracing::warn!(app = %app, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let ctx = Arc::new(ConnCtx {
                app: app.clone(),
                peer,
            });
            inner
                .tasks
                .spawn(serve_conn(inner.clone(), ctx, stream, stop.clone()));
        }
        tracing::info!(app = %app, "listener stopped");
    });
}

async fn serve_conn(
    inner: Arc<Inner>,
    ctx: Arc<ConnCtx>,
    stream: tokio::net::TcpStream,
    stop: CancellationToken,
) {
    let svc = service_fn(move |req| {
        let inner = inner.clone();
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(proxy::handle(&inner, &ctx, req).await) }
    });
    let mut conn = pin!(
        http1::Builder::new()
            .timer(TokioTimer::new())
            .keep_alive(true)
            .serve_connection(TokioIo::new(stream), svc)
    );
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "client connection ended with an error");
    }
}
