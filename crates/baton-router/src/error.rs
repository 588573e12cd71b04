//! The error type at the crate boundary.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Errors returned by the router entry points and by [`crate::AdminClient`].
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// Another router already answers on the admin socket.
    #[error("a router is already running on {}", socket.display())]
    AlreadyRunning {
        /// The admin socket path.
        socket: PathBuf,
    },
    /// The admin socket could not be bound or prepared.
    #[error("admin socket {}: {source}", socket.display())]
    AdminSocket {
        /// The admin socket path.
        socket: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// A user-traffic listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address that was asked for.
        addr: SocketAddr,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// A pushed config has a lower generation than the live one, or a staged one a
    /// generation not higher (a stale control plane); nothing was changed.
    #[error("stale config: generation {pushed} is not newer than the live generation {current}")]
    StaleGeneration {
        /// The live generation.
        current: u64,
        /// The refused generation.
        pushed: u64,
    },
    /// A commit named a generation that is neither staged nor live; nothing was
    /// changed.
    #[error(
        "cannot commit generation {generation}: {} (live generation {live})",
        staged_text(*.staged)
    )]
    NotStaged {
        /// The generation asked for.
        generation: u64,
        /// The generation staged, if any.
        staged: Option<u64>,
        /// The live generation.
        live: u64,
    },
    /// The router is draining for shutdown and accepts no new config.
    #[error("the router is shutting down")]
    ShuttingDown,
    /// The router is handing its listeners over to a new router process and accepts
    /// no new config; retry, the new process answers on the same admin socket.
    #[error("the router is handing over to a new router process; retry")]
    HandingOver,
    /// Taking over from a running router failed before the new one served anything;
    /// the running router keeps serving.
    #[error("cannot take over from the router at {}: {reason}", socket.display())]
    Handover {
        /// The handover socket.
        socket: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A pushed config failed validation; nothing was changed.
    #[error("invalid routing config: {0}")]
    InvalidConfig(String),
    /// The admin socket could not be reached (no router running, or permission).
    #[error("cannot reach the router at {}: {source}", socket.display())]
    Unreachable {
        /// The admin socket path.
        socket: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// An admin call took longer than its deadline.
    #[error("the router did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// HTTP-level failure talking to the admin API.
    #[error("admin protocol error: {0}")]
    Http(#[from] hyper::Error),
    /// The admin API answered with an unexpected status.
    #[error("the router answered {status}: {body}")]
    Status {
        /// HTTP status code.
        status: u16,
        /// Response body, as text.
        body: String,
    },
    /// The admin API answered with a body that could not be decoded.
    #[error("cannot decode the router's answer: {0}")]
    Decode(#[from] serde_json::Error),
    /// Any other I/O failure.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

fn staged_text(staged: Option<u64>) -> String {
    match staged {
        Some(g) => format!("generation {g} is staged"),
        None => "nothing is staged".into(),
    }
}
