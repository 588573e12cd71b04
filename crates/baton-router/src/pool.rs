//! Idle upstream connections, one pool per worker thread.
//!
//! Every worker runs its own single-threaded runtime, so its pool is a thread-local
//! `RefCell`: taking and returning a connection costs no lock and no atomic beyond
//! hyper's own. A connection is returned when the response body it carried has been
//! read to its end; a connection whose backend closed it is dropped when next seen.
//! Built on hyper's low-level `client::conn::http1` API: hyper-util's shared pool costs
//! measurably more per request.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::proxy::UpBody;

/// Most idle connections kept per backend and worker.
const MAX_IDLE_PER_BACKEND: usize = 1024;
/// How often each worker drops connections idle for a whole period.
pub(crate) const SWEEP_EVERY: Duration = Duration::from_secs(15);

struct Idle {
    tx: SendRequest<UpBody>,
    /// Already idle at the previous sweep: dropped at the next one.
    marked: bool,
}

thread_local! {
    static IDLE: RefCell<HashMap<SocketAddr, Vec<Idle>>> = RefCell::new(HashMap::new());
}

/// An idle connection to `addr`, most recently used first, if one is still open.
pub(crate) fn take(addr: SocketAddr) -> Option<SendRequest<UpBody>> {
    IDLE.with_borrow_mut(|m| {
        let v = m.get_mut(&addr)?;
        while let Some(i) = v.pop() {
            if !i.tx.is_closed() {
                return Some(i.tx);
            }
        }
        None
    })
}

/// Returns a connection whose last response was read to its end.
pub(crate) fn put(addr: SocketAddr, tx: SendRequest<UpBody>) {
    if tx.is_closed() {
        return;
    }
    IDLE.with_borrow_mut(|m| {
        let v = m.entry(addr).or_default();
        if v.len() < MAX_IDLE_PER_BACKEND {
            v.push(Idle { tx, marked: false });
        }
    });
}

/// Drops closed connections and those idle since the previous sweep.
pub(crate) fn sweep() {
    IDLE.with_borrow_mut(|m| {
        m.retain(|_, v| {
            v.retain_mut(|i| {
                let keep = !i.marked && !i.tx.is_closed();
                i.marked = true;
                keep
            });
            !v.is_empty()
        });
    });
}

/// Why a new upstream connection could not be made. Nothing was sent, so the request
/// may always go elsewhere.
#[derive(Debug)]
pub(crate) enum ConnectError {
    Io(std::io::Error),
    Timeout,
    Handshake(hyper::Error),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Io(e) => write!(f, "connect: {e}"),
            ConnectError::Timeout => write!(f, "connect: timed out"),
            ConnectError::Handshake(e) => write!(f, "handshake: {e}"),
        }
    }
}

/// Opens a new HTTP/1.1 connection to `addr` and spawns its driver on the current
/// (worker) runtime. `upgrades` keeps the driver able to hand the socket over after a
/// `101 Switching Protocols`.
pub(crate) async fn connect(
    addr: SocketAddr,
    timeout: Duration,
    upgrades: bool,
) -> Result<SendRequest<UpBody>, ConnectError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(ConnectError::Io(e)),
        Err(_) => return Err(ConnectError::Timeout),
    };
    let _ = stream.set_nodelay(true);
    let (tx, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(ConnectError::Handshake)?;
    if upgrades {
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(backend = %addr, error = %e, "upstream connection ended");
            }
        });
    } else {
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(backend = %addr, error = %e, "upstream connection ended");
            }
        });
    }
    Ok(tx)
}
