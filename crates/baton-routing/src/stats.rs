//! Wire types of the admin API (`/v1/health`, `/v1/config` push and stage result,
//! `/v1/config/commit`, `/v1/stats`, `/v1/windows`, `/v1/mirror`).
//!
//! Shared by the router (which serialises them) and [`crate::AdminClient`] (which
//! deserialises them), so both sides agree by construction.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::metrics::WindowStats;
use crate::mirror::MirrorReport;

/// Answer of `GET /v1/health`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct RouterHealth {
    /// OS process id of the router.
    pub pid: u32,
    /// Generation of the live routing config (0 before the first push).
    pub generation: u64,
    /// When the router started, in milliseconds since the Unix epoch.
    pub started_ms: i64,
    /// Generation of the staged table waiting for its commit, if any.
    #[serde(default)]
    pub staged: Option<u64>,
    /// When the live table was swapped in (by a push or a commit), in microseconds
    /// since the Unix epoch; 0 before the first one.
    #[serde(default)]
    pub switched_at_us: u64,
    /// The router's build: its version and the size and modification time of its
    /// executable, so that a control plane can tell a router of another build (empty
    /// from a router that predates handovers).
    #[serde(default)]
    pub build: String,
    /// Pid of the router this one took over from (listeners handed over), if any.
    #[serde(default)]
    pub predecessor: Option<u32>,
}

/// Answer of `PUT /v1/config` and of `PUT /v1/config/staged`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PushResult {
    /// The generation now live (for a stage: the generation staged).
    pub generation: u64,
    /// One entry per app of the pushed config (for a stage: as it will be served
    /// once committed).
    pub listeners: Vec<ListenerStatus>,
}

/// Answer of `POST /v1/config/commit`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CommitResult {
    /// The generation now live.
    pub generation: u64,
    /// When it was swapped in, in microseconds since the Unix epoch (read at the
    /// swap; for a repeated commit, the time of the first).
    pub switched_at_us: u64,
}

/// Listener state of one app after a push.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ListenerStatus {
    /// App name.
    pub app: String,
    /// The address actually bound (differs from the pushed one when port 0 was asked
    /// for); when binding failed, the pushed address.
    pub listen: SocketAddr,
    /// Why binding failed; `None` when the app is being served on `listen`. When a
    /// rebind fails, the previous listener (if any) keeps serving.
    pub error: Option<String>,
}

/// Answer of `GET /v1/stats`. Counters are cumulative since the router started.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct RouterStats {
    /// Generation of the live routing config.
    pub generation: u64,
    /// Per app, sorted by name.
    pub apps: Vec<AppStats>,
    /// Listener of each app of the live config, sorted by app: the address it is
    /// served on, or why the router could not listen there (retried on every push).
    #[serde(default)]
    pub listeners: Vec<ListenerStatus>,
}

/// Counters of one app.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct AppStats {
    /// App name.
    pub app: String,
    /// Requests received from users.
    pub requests: u64,
    /// Requests that had to wait because no backend was routable.
    pub held: u64,
    /// 503s for requests that found no backend within `hold_timeout_ms` (not attributed
    /// to any version).
    pub no_backend: u64,
    /// Client connections open now.
    #[serde(default)]
    pub connections: u64,
    /// Mirror copies not sent because too many were already under way.
    #[serde(default)]
    pub mirror_dropped: u64,
    /// Per version: the live ones, plus removed ones until their counters are pruned
    /// (a removed version stays while it has requests in flight).
    pub versions: Vec<VersionStats>,
    /// Per backend address: the live ones, plus removed ones while they have requests
    /// in flight, and until the next push after that. An address absent here has 0 in
    /// flight.
    pub backends: Vec<BackendStats>,
}

/// Counters of one version of an app. Each attempt to a backend counts once in
/// `requests`; an attempt that failed and was retried counts in `retries`; the 502 the
/// router sends when every attempt failed is attributed to the version of the last
/// attempt and counts in both `status_5xx` and `router_errors`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct VersionStats {
    /// Version name.
    pub version: String,
    /// Attempts dispatched to backends of this version.
    pub requests: u64,
    /// Responses sent to users, by status class.
    pub status_1xx: u64,
    /// See `status_1xx`.
    pub status_2xx: u64,
    /// See `status_1xx`.
    pub status_3xx: u64,
    /// See `status_1xx`.
    pub status_4xx: u64,
    /// See `status_1xx`.
    pub status_5xx: u64,
    /// Responses generated by the router itself (502/503/504).
    pub router_errors: u64,
    /// Failed attempts that were retried.
    pub retries: u64,
    /// Attempts whose response is not finished yet.
    pub in_flight: u64,
    /// Failures of this version (5xx answers, failed attempts) that shielding retried
    /// on the stable version; also counted in the status classes above.
    #[serde(default)]
    pub shielded: u64,
}

/// Counters of one backend address.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct BackendStats {
    /// The backend's address.
    pub address: SocketAddr,
    /// Attempts whose response is not finished yet.
    pub in_flight: u64,
    /// Attempts dispatched to it.
    pub requests: u64,
    /// Attempts that failed before a response (connect error, reset, ...).
    pub failures: u64,
}

/// Answer of `GET /v1/windows?seconds=N`: per (app, version) metrics over the last N
/// seconds (1..=64; the current second included).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct WindowsReport {
    /// The window asked for, in seconds.
    pub window_s: u64,
    /// Per app, sorted by name.
    pub apps: Vec<AppWindows>,
}

/// The windows of one app.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct AppWindows {
    /// App name.
    pub app: String,
    /// Client connections open now.
    pub connections: u64,
    /// Per version, sorted by name (removed versions while their counters remain).
    pub versions: Vec<VersionWindow>,
}

/// The window of one (app, version). Requests count responses sent to users, plus the
/// failures of this version that shielding answered from the stable version.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct VersionWindow {
    /// Version name.
    pub version: String,
    /// Counters and latency percentiles.
    #[serde(flatten)]
    pub stats: WindowStats,
}

/// Answer of `GET /v1/mirror`: the mirror comparisons of each app that mirrors or
/// has mirrored since the router started.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct MirrorReports {
    /// Per app, sorted by name.
    pub apps: Vec<AppMirrorReport>,
}

/// The mirror comparisons of one app.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct AppMirrorReport {
    /// App name.
    pub app: String,
    /// The version receiving copies in the live config; `None` when mirroring is off
    /// now (the counts are kept).
    pub version: Option<String>,
    /// Copies not sent because too many were already under way.
    pub dropped: u64,
    /// Copies not compared because the user's response did not complete.
    pub abandoned: u64,
    /// Counts per path and the last differing pairs.
    #[serde(flatten)]
    pub report: MirrorReport,
}
