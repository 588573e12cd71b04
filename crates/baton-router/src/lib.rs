//! baton-router: baton's data plane.
//!
//! An HTTP/1.1 reverse proxy that runs as its own long-lived process (`baton __router`),
//! so that the control plane can die and restart without dropping a request. The
//! control plane pushes a [`RoutingConfig`] over an admin unix socket (see [`admin`]),
//! or stages it on every router and then commits it on all of them at once (two-phase
//! switch); the router publishes it as one immutable snapshot that requests read
//! without locks, splits traffic between versions by smooth weighted round robin
//! ([`select`]), holds requests while nothing is routable, retries what is safe to
//! retry, and counts everything in atomics ([`RouterStats`]).
//!
//! Per request, in order: match [`rules`], then the client's sticky cohort
//! ([`sticky`]), then the weighted split; an idempotent request that a non-stable
//! version fails is retried once on the stable one when the app is shielded; a share of
//! requests is copied to a version under test and the answers compared ([`mirror`]);
//! every response is recorded in per-(app, version) windowed [`metrics`], read with
//! `GET /v1/windows` and `GET /metrics`. All of this is compiled into the snapshot once
//! per push.
//!
//! Module map: [`config`] (wire types of the table), [`select`] (pure picking logic),
//! `table` (the snapshot and its counters), `h1` (the HTTP/1 codec: framing decided
//! once, pure), `engine` (every HTTP/1 request, on the sockets), `proxy` (HTTP/2
//! requests, served by hyper, and what both share), `tunnel` (upgraded connections),
//! `listener` (accept loops), [`admin`] (admin API and its client), [`stats`] (admin
//! wire types).

pub mod admin;
mod attempt;
mod client_socket;
pub mod config;
mod engine;
mod error;
mod h1;
pub mod limits;
mod listener;
pub mod metrics;
pub mod mirror;
mod outcome;
mod proxy;
pub mod record;
mod router;
pub mod rules;
pub mod select;
pub mod stats;
pub mod sticky;
mod table;
mod tunnel;
mod upstream;
mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use admin::{AdminClient, CommitLine};
pub use config::{AppRoutes, Backend, RoutingConfig, VersionRoute};
pub use error::RouterError;
pub use limits::AppLimits;
pub use router::Router;
pub use stats::{
    AppMirrorReport, AppStats, AppWindows, BackendStats, CommitResult, ListenerStatus,
    MirrorReports, PushResult, RouterHealth, RouterStats, VersionStats, VersionWindow,
    WindowsReport,
};

/// How long in-flight requests get to finish once the router is asked to stop.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// How long admin connections get to close once the router stops.
const ADMIN_STOP_DEADLINE: Duration = Duration::from_secs(2);

/// Options of [`run`].
#[derive(Clone, Debug)]
pub struct RouterOptions {
    /// Where the admin API listens.
    pub admin_socket: PathBuf,
}

/// Runs the router until `shutdown` is cancelled: binds the admin socket (removing a
/// stale socket file first; [`RouterError::AlreadyRunning`] if a router answers on it),
/// serves user traffic as configured by pushes, then stops accepting and lets in-flight
/// requests finish (bounded by [`DRAIN_DEADLINE`]).
pub async fn run(opts: RouterOptions, shutdown: CancellationToken) -> Result<(), RouterError> {
    let listener = admin::bind_admin_socket(&opts.admin_socket).await?;
    tracing::info!(socket = %opts.admin_socket.display(), pid = std::process::id(), "router started");
    let router = Router::new();
    let admin_stop = CancellationToken::new();
    let mut admin = {
        let router = router.clone();
        let stop = admin_stop.clone();
        tokio::spawn(async move { router.serve_admin(listener, stop).await })
    };
    let flatten = |r: Result<Result<(), RouterError>, tokio::task::JoinError>| match r {
        Ok(r) => r,
        Err(e) => Err(RouterError::Io(std::io::Error::other(e))),
    };
    let early = tokio::select! {
        _ = shutdown.cancelled() => None,
        r = &mut admin => Some(flatten(r)),
    };
    // Keep the admin API answering while user traffic drains, so a control plane can
    // still watch the in-flight counts go down.
    router.shutdown(DRAIN_DEADLINE).await;
    admin_stop.cancel();
    let result = match early {
        Some(r) => r,
        None => match tokio::time::timeout(ADMIN_STOP_DEADLINE, admin).await {
            Ok(r) => flatten(r),
            Err(_) => {
                tracing::warn!("admin connections still open at exit");
                Ok(())
            }
        },
    };
    let _ = std::fs::remove_file(&opts.admin_socket);
    tracing::info!("router stopped");
    result
}

/// Standalone load balancer with no control plane: one app (`"standalone"`) listening
/// on `listen`, with one version (`"upstream"`, weight 1) made of `upstreams`, served by
/// one worker per CPU. Runs until `shutdown` is cancelled, then drains like [`run`].
pub async fn run_standalone(
    listen: SocketAddr,
    upstreams: Vec<SocketAddr>,
    shutdown: CancellationToken,
) -> Result<(), RouterError> {
    run_standalone_with(
        StandaloneOptions {
            listen,
            upstreams,
            workers: None,
            metrics_listen: None,
            balance: config::Balance::RoundRobin,
        },
        shutdown,
    )
    .await
}

/// Options of [`run_standalone_with`].
#[derive(Clone, Debug)]
pub struct StandaloneOptions {
    /// Where users connect.
    pub listen: SocketAddr,
    /// The backends.
    pub upstreams: Vec<SocketAddr>,
    /// How a request picks one of `upstreams`.
    pub balance: config::Balance,
    /// Worker threads (each a single-threaded runtime with its own accept loop and
    /// upstream pool); `None` for one per CPU.
    pub workers: Option<usize>,
    /// Where to serve `GET /metrics` (Prometheus text) and `GET /v1/windows` over
    /// plain HTTP; `None` for no metrics endpoint.
    pub metrics_listen: Option<SocketAddr>,
}

/// [`run_standalone`] with every option.
pub async fn run_standalone_with(
    opts: StandaloneOptions,
    shutdown: CancellationToken,
) -> Result<(), RouterError> {
    let StandaloneOptions {
        listen,
        upstreams,
        workers,
        metrics_listen,
        balance,
    } = opts;
    let router = Router::with_workers(workers.unwrap_or_else(worker::default_count));
    let cfg = RoutingConfig {
        generation: 1,
        apps: vec![AppRoutes {
            app: "standalone".into(),
            listen,
            hold_timeout_ms: 5_000,
            versions: vec![VersionRoute {
                version: "upstream".into(),
                weight: 1,
                backends: upstreams
                    .iter()
                    .enumerate()
                    .map(|(i, a)| Backend {
                        id: format!("upstream-{i}"),
                        address: *a,
                    })
                    .collect(),
            }],
            rules: Vec::new(),
            sticky: None,
            mirror: None,
            shield: None,
            limits: AppLimits::default(),
            balance,
        }],
    };
    let (_, errors) = router.apply_detailed(cfg)?;
    if let Some((_, source)) = errors.into_iter().next() {
        return Err(RouterError::Bind {
            addr: listen,
            source,
        });
    }
    let metrics_stop = CancellationToken::new();
    if let Some(addr) = metrics_listen {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| RouterError::Bind { addr, source })?;
        tracing::info!(listen = %l.local_addr().unwrap_or(addr), "serving /metrics");
        let (router, stop) = (router.clone(), metrics_stop.clone());
        tokio::spawn(async move {
            if let Err(e) = admin::serve_metrics_tcp(router, l, stop).await {
                tracing::warn!(error = %e, "metrics endpoint stopped");
            }
        });
    }
    tracing::info!(%listen, upstreams = upstreams.len(), "standalone router started");
    shutdown.cancelled().await;
    metrics_stop.cancel();
    router.shutdown(DRAIN_DEADLINE).await;
    Ok(())
}
