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
//! wire types), [`handover`] (replacing the router process with a new binary on the
//! same sockets).

// The routing policy and wire types live in `baton-routing` (no I/O); re-exported so
// that `baton_router::config` and friends keep their paths.
pub use baton_routing::{config, limits, metrics, mirror, record, rules, select, stats, sticky};

pub mod admin;
mod attempt;
mod build_info;
mod client_socket;
mod context;
mod engine;
mod error;
mod h1;
pub mod handover;
mod listener;
mod mirroring;
mod outcome;
mod proxy;
mod router;
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
#[derive(Clone, Debug, Default)]
pub struct RouterOptions {
    /// Where the admin API listens.
    pub admin_socket: PathBuf,
    /// Take over from the router running on `admin_socket` (through its handover
    /// socket, [`handover::socket_path`]) instead of starting empty.
    pub take_over: bool,
    /// When taking over: how long the old router keeps open WebSockets and other
    /// upgraded streams before closing them (`None`: its apps' `stream_drain_grace_ms`).
    pub drain_grace: Option<Duration>,
}

/// Runs the router until `shutdown` is cancelled: binds the admin socket (removing a
/// stale socket file first; [`RouterError::AlreadyRunning`] if a router answers on it),
/// serves user traffic as configured by pushes, then stops accepting and lets in-flight
/// requests finish (bounded by [`DRAIN_DEADLINE`]).
///
/// With [`RouterOptions::take_over`] it first takes the running router's config and
/// listening sockets ([`handover`]), then binds the admin socket path afresh. Either
/// way it serves take-overs on [`handover::socket_path`]; after handing over it drains
/// (see [`handover`]) and returns.
pub async fn run(opts: RouterOptions, shutdown: CancellationToken) -> Result<(), RouterError> {
    // Read now: a new binary may be installed over this one while it runs.
    let build = handover::build_id();
    let handover_path = handover::socket_path(&opts.admin_socket);
    let router = Router::new();
    let (listener, handover_listener) = if opts.take_over {
        let pred = handover::Predecessor::connect(&handover_path).await?;
        let (pid, pred_build) = (pred.pid, pred.build.clone());
        take_over(&router, pred, opts.drain_grace, |router, cfg, apps, pid| {
            let (_, errors) = router.adopt(cfg, apps, pid)?;
            for (app, e) in errors {
                tracing::warn!(%app, error = %e, "cannot listen for this app");
            }
            Ok(())
        })
        .await?;
        let admin = admin::bind_socket_file(&opts.admin_socket);
        let handover = handover::bind(&handover_path);
        tracing::info!(socket = %opts.admin_socket.display(), pid = std::process::id(), build, predecessor = pid, predecessor_build = %pred_build, "router took over");
        (admin, handover)
    } else {
        let admin = admin::bind_admin_socket(&opts.admin_socket).await?;
        tracing::info!(socket = %opts.admin_socket.display(), pid = std::process::id(), build, "router started");
        (Ok(admin), handover::bind(&handover_path))
    };
    let listener = match listener {
        Ok(l) => l,
        Err(e) => {
            router.shutdown(DRAIN_DEADLINE).await;
            return Err(e);
        }
    };
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
    let mut handovers = handover::Service::start(Some(handover_listener), &router, Vec::new());
    let mut early = None;
    let successor = tokio::select! {
        _ = shutdown.cancelled() => None,
        r = &mut admin => {
            early = Some(flatten(r));
            None
        }
        s = handovers.successor() => Some(s),
    };
    handovers.stop();
    // Keep the admin API answering while user traffic drains, so a control plane can
    // still watch the in-flight counts go down.
    handover::finish(&router, successor.as_ref()).await;
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
    if let Some(s) = successor {
        // The socket files are the successor's now.
        tracing::info!(successor_pid = s.pid, successor_build = %s.build, "router stopped after handing over");
    } else {
        let _ = std::fs::remove_file(&opts.admin_socket);
        let _ = std::fs::remove_file(&handover_path);
        tracing::info!("router stopped");
    }
    result
}

/// The new router's side of a handover: applies (with `apply`) the config on the
/// sockets `pred` handed over, then tells it this router is ready and waits for it to
/// step down. On failure the router stops what it started (letting whatever it
/// accepted finish) and the old one serves on.
async fn take_over(
    router: &Router,
    mut pred: handover::Predecessor,
    drain_grace: Option<Duration>,
    apply: impl FnOnce(&Router, RoutingConfig, Vec<router::Offered>, u32) -> Result<(), RouterError>,
) -> Result<(), RouterError> {
    let apps = std::mem::take(&mut pred.apps);
    let cfg = pred.config.clone();
    if let Err(e) = apply(router, cfg, apps, pred.pid) {
        router.shutdown(DRAIN_DEADLINE).await;
        return Err(e);
    }
    if let Err(e) = pred.ready(drain_grace).await {
        tracing::warn!(error = %e, "the running router did not step down; stopping");
        router.shutdown(DRAIN_DEADLINE).await;
        return Err(e);
    }
    Ok(())
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
            handover_socket: None,
            take_over: false,
            drain_grace: None,
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
    /// Where to serve take-overs by a new router process ([`handover`]); `None`: this
    /// router can only be restarted.
    pub handover_socket: Option<PathBuf>,
    /// Take over from the router serving `handover_socket`: its listening sockets
    /// (for `listen` and `metrics_listen`, when it has them) are used instead of
    /// binding, then it drains and exits.
    pub take_over: bool,
    /// When taking over: how long the old router keeps open WebSockets before closing
    /// them (`None`: its default, 10 s).
    pub drain_grace: Option<Duration>,
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
        handover_socket,
        take_over: taking_over,
        drain_grace,
    } = opts;
    let build = handover::build_id();
    let pred = match (&handover_socket, taking_over) {
        (Some(path), true) => Some(handover::Predecessor::connect(path).await?),
        (None, true) => {
            return Err(RouterError::InvalidConfig(
                "taking over needs the handover socket of the running router".into(),
            ));
        }
        (Some(path), false) => {
            if tokio::net::UnixStream::connect(path).await.is_ok() {
                return Err(RouterError::AlreadyRunning {
                    socket: path.clone(),
                });
            }
            None
        }
        (None, false) => None,
    };
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
    let apply = |router: &Router, cfg: RoutingConfig, apps, pid| {
        let (_, errors) = match pid {
            Some(pid) => router.adopt(cfg, apps, pid)?,
            None => router.apply_detailed(cfg)?,
        };
        match errors.into_iter().next() {
            Some((_, source)) => Err(RouterError::Bind {
                addr: listen,
                source,
            }),
            None => Ok(()),
        }
    };
    let predecessor = pred.as_ref().map(|p| p.pid);
    let metrics = match pred {
        Some(mut p) => {
            // The metrics socket: the old router's when it serves the same address.
            let inherited = std::mem::take(&mut p.extras).into_iter().find(|e| {
                metrics_listen.is_some_and(|a| a == e.info.requested || a == e.info.bound)
            });
            let metrics = metrics_listen
                .map(|addr| bind_metrics(addr, inherited))
                .transpose()?;
            take_over(&router, p, drain_grace, |r, _, apps, pid| {
                apply(r, cfg, apps, Some(pid))
            })
            .await?;
            metrics
        }
        None => {
            apply(&router, cfg, Vec::new(), None)?;
            metrics_listen
                .map(|addr| bind_metrics(addr, None))
                .transpose()?
        }
    };
    let metrics_stop = CancellationToken::new();
    let mut extras = Vec::new();
    if let Some(m) = metrics {
        let offer = m.socket.try_clone().map(|socket| handover::Extra {
            info: m.info.clone(),
            socket,
        });
        match offer {
            Ok(o) => extras.push(o),
            Err(e) => tracing::warn!(error = %e, "cannot keep the metrics socket for a handover"),
        }
        let l = m
            .socket
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(m.socket))
            .map_err(|source| RouterError::Bind {
                addr: m.info.bound,
                source,
            })?;
        tracing::info!(listen = %m.info.bound, "serving /metrics");
        let (router, stop) = (router.clone(), metrics_stop.clone());
        tokio::spawn(async move {
            if let Err(e) = admin::serve_metrics_tcp(router, l, stop).await {
                tracing::warn!(error = %e, "metrics endpoint stopped");
            }
        });
    }
    let mut handovers = handover::Service::start(
        handover_socket.as_deref().map(handover::bind),
        &router,
        extras,
    );
    tracing::info!(%listen, upstreams = upstreams.len(), pid = std::process::id(), build, predecessor, "standalone router started");
    let successor = tokio::select! {
        _ = shutdown.cancelled() => None,
        s = handovers.successor() => Some(s),
    };
    handovers.stop();
    metrics_stop.cancel();
    handover::finish(&router, successor.as_ref()).await;
    match successor {
        Some(s) => {
            tracing::info!(successor_pid = s.pid, successor_build = %s.build, "standalone router stopped after handing over");
        }
        None => {
            if let Some(path) = &handover_socket {
                let _ = std::fs::remove_file(path);
            }
        }
    }
    Ok(())
}

/// The metrics listener at `addr`: `inherited` when given, else bound now.
fn bind_metrics(
    addr: SocketAddr,
    inherited: Option<handover::Extra>,
) -> Result<handover::Extra, RouterError> {
    if let Some(e) = inherited {
        return Ok(e);
    }
    let socket =
        std::net::TcpListener::bind(addr).map_err(|source| RouterError::Bind { addr, source })?;
    let bound = socket.local_addr().unwrap_or(addr);
    let info = handover::SocketInfo {
        kind: handover::SocketKind::Metrics,
        name: "metrics".into(),
        requested: addr,
        bound,
    };
    Ok(handover::Extra { info, socket })
}
