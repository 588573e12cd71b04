//! Per-app timeouts and size limits: the wire form ([`AppLimits`], every field
//! optional with a default) and the resolved form the request path reads ([`Limits`]).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Timeouts and limits of one app's traffic. Every field has a default, so a control
/// plane that does not know about a field never has to send it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(default)]
pub struct AppLimits {
    /// Longest time a client may take to send a request head, and longest idle time
    /// between two requests on a keep-alive connection (slow or idle clients are
    /// disconnected).
    pub client_header_timeout_ms: u64,
    /// Longest time to open a connection to a backend (then another one is tried).
    pub upstream_connect_timeout_ms: u64,
    /// Longest wait for a backend's response head once the request is sent; over it the
    /// user gets 504.
    pub upstream_response_timeout_ms: u64,
    /// Largest request head (request line and headers); over it the user gets 431.
    pub max_header_bytes: usize,
    /// Largest request body; over it the user gets 413.
    pub max_body_bytes: u64,
    /// When a backend leaves the routing table, how long its open WebSocket and
    /// server-sent-event streams may continue before the router ends them cleanly
    /// (close frame 1001 "going away", or the end of the event stream).
    pub stream_drain_grace_ms: u64,
}

impl Default for AppLimits {
    fn default() -> Self {
        AppLimits {
            client_header_timeout_ms: 15_000,
            upstream_connect_timeout_ms: 2_000,
            upstream_response_timeout_ms: 60_000,
            max_header_bytes: 64 * 1024,
            max_body_bytes: 100 * 1024 * 1024,
            stream_drain_grace_ms: 10_000,
        }
    }
}

/// [`AppLimits`] resolved for the request path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    pub client_header_timeout: Duration,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_body_bytes: u64,
    pub drain_grace: Duration,
}

impl From<&AppLimits> for Limits {
    fn from(l: &AppLimits) -> Self {
        // A zero timeout would fail every request; treat it as "use the default".
        let d = AppLimits::default();
        let ms = |v: u64, dv: u64| Duration::from_millis(if v == 0 { dv } else { v });
        Limits {
            client_header_timeout: ms(l.client_header_timeout_ms, d.client_header_timeout_ms),
            connect_timeout: ms(l.upstream_connect_timeout_ms, d.upstream_connect_timeout_ms),
            response_timeout: ms(
                l.upstream_response_timeout_ms,
                d.upstream_response_timeout_ms,
            ),
            max_header_bytes: if l.max_header_bytes == 0 {
                d.max_header_bytes
            } else {
                l.max_header_bytes
            },
            max_body_bytes: l.max_body_bytes,
            drain_grace: Duration::from_millis(l.stream_drain_grace_ms),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::from(&AppLimits::default())
    }
}
