//! The control plane's link to the router process.
//!
//! The router runs as its own process (`baton __router`) so that it outlives
//! the control plane: a crashed or restarting control plane leaves user traffic
//! flowing on the last routing table. On start the control plane re-attaches
//! over the admin socket, or launches a router if none answers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use baton_driver::BoxFuture;
use baton_engine::AppState;
use baton_router::{AdminClient, RouterError};
use baton_routing::config::{AppRoutes, Backend, RoutingConfig, VersionRoute};
use baton_routing::config::{
    Balance, Match, MirrorConfig, NamedMatch, RouteRule, ShieldConfig, StickyConfig, ValueMatch,
};
use baton_routing::limits::AppLimits;
use baton_routing::record::{RecordSpec, RecordingReport};
use baton_routing::stats::{
    AppMirrorReport, CommitResult, MirrorReports, PushResult, RouterHealth, RouterStats,
    WindowsReport,
};
use baton_spec::{AppSpec, StrategySpec};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::effects::Clock;
use tracing::info;

/// How long a request waits for a ready instance before the router answers 503.
const HOLD_TIMEOUT_MS: u64 = 10_000;
/// Name suffix of the router entry serving a blue-green preview listener.
const PREVIEW_SUFFIX: &str = "--preview";

/// The router entries of one app for its current state: the main listener
/// (weights, tester and preview header rules, sticky cohorts, mirroring) and,
/// during a blue-green rollout with `preview_listen`, a listener reaching only
/// the new release.
pub fn app_routes(spec: &AppSpec, state: &AppState) -> Vec<AppRoutes> {
    let groups = state.routing();
    let versions: Vec<VersionRoute> = groups
        .iter()
        .map(|g| VersionRoute {
            version: g.version.clone(),
            weight: g.weight,
            backends: g
                .backends
                .iter()
                .filter_map(|(id, addr)| {
                    Some(Backend {
                        id: id.clone(),
                        address: addr.parse().ok()?,
                    })
                })
                .collect(),
        })
        .collect();
    let new_version = state
        .rollout
        .as_ref()
        .filter(|r| r.phase == baton_engine::RolloutPhase::Progressing && r.weight.is_some())
        .map(|r| r.to.version.clone());
    let (limits, balance) = traffic(&spec.traffic);
    let mut rules = Vec::new();
    let mut sticky = None;
    let mut shield = None;
    let mut preview = None;
    let header_rule = |h: &baton_spec::HeaderMatch, version: &str| RouteRule {
        matches: vec![Match::Header(NamedMatch {
            name: h.name.clone(),
            value: ValueMatch::Equals(h.equals.clone()),
        })],
        version: version.to_string(),
    };
    match &spec.strategy {
        StrategySpec::Canary(c) => {
            if let (Some(h), Some(v)) = (&c.header_route, &new_version) {
                rules.push(header_rule(h, v));
            }
            if c.sticky {
                // The canary takes the low cohorts, so raising its weight only
                // moves new users to it and never moves anyone back.
                sticky = Some(StickyConfig {
                    new_version: new_version.clone(),
                    ..StickyConfig::default()
                });
            }
            // Shielding: idempotent requests the canary fails are answered by stable.
            if c.shielding
                && new_version.is_some()
                && let Some(from) = state.rollout.as_ref().and_then(|r| r.from.as_ref())
            {
                shield = Some(ShieldConfig {
                    version: from.version.clone(),
                });
            }
        }
        StrategySpec::BlueGreen(b) => {
            if let Some(v) = &new_version {
                rules.push(header_rule(&b.preview_header, v));
                if let Some(listen) = b.preview_listen {
                    preview = Some(AppRoutes {
                        app: format!("{}{PREVIEW_SUFFIX}", spec.name),
                        listen,
                        hold_timeout_ms: HOLD_TIMEOUT_MS,
                        versions: versions
                            .iter()
                            .filter(|g| &g.version == v)
                            .map(|g| VersionRoute {
                                weight: 1,
                                ..g.clone()
                            })
                            .collect(),
                        rules: Vec::new(),
                        sticky: None,
                        mirror: None,
                        shield: None,
                        limits: limits.clone(),
                        balance,
                    });
                }
            }
        }
        StrategySpec::Rolling(_) => {}
    }
    // A mirror step copies traffic to the new release and compares answers.
    let mirror = mirror_step(spec, state)
        .map(|m| mirror_config(&m.version, f64::from(m.percent), m.settings, m.session));
    let mut out = vec![AppRoutes {
        app: spec.name.clone(),
        listen: spec.listen,
        hold_timeout_ms: HOLD_TIMEOUT_MS,
        versions,
        rules,
        sticky,
        mirror,
        shield,
        limits,
        balance,
    }];
    out.extend(preview);
    out
}

/// The mirror step a rollout is at: what the routers copy and compare, and what
/// judges it.
#[derive(Debug, Clone)]
pub struct MirrorStep<'a> {
    /// Index among the engine's steps.
    pub step: usize,
    /// The release receiving the copies, and the one answering users.
    pub version: String,
    pub from: Option<String>,
    pub percent: u32,
    pub max_mismatch_rate: f64,
    pub settings: &'a baton_spec::MirrorSpec,
    /// Names this step of this rollout; the routers' comparisons start afresh
    /// when it changes (see [`baton_routing::config::MirrorConfig::session`]).
    pub session: String,
    /// The rollout's history record.
    pub history_id: i64,
}

/// The spec's mirror step the rollout of `state` is at, once it started.
pub fn mirror_step<'a>(spec: &'a AppSpec, state: &AppState) -> Option<MirrorStep<'a>> {
    let r = state.rollout.as_ref()?;
    if r.phase != baton_engine::RolloutPhase::Progressing || r.step_started_ms.is_none() {
        return None;
    }
    let baton_engine::Step::Mirror { percent, .. } = r.current_step(&state.params)? else {
        return None;
    };
    let StrategySpec::Canary(c) = &spec.strategy else {
        return None;
    };
    // Steps of the spec map one to one onto the engine's, after the optional
    // leading smoke-test step.
    let offset = usize::from(!spec.hooks.smoke.is_empty());
    let step = c.steps.get(r.step.checked_sub(offset)?)?;
    let baton_spec::CanaryStep::Mirror {
        max_mismatch_rate, ..
    } = step
    else {
        return None;
    };
    Some(MirrorStep {
        step: r.step,
        version: r.to.version.clone(),
        from: r.from.as_ref().map(|f| f.version.clone()),
        percent: *percent,
        max_mismatch_rate: *max_mismatch_rate,
        settings: spec.mirror_settings(step),
        session: format!("rollout {} step {}", r.history_id, r.step + 1),
        history_id: r.history_id,
    })
}

/// The router's mirror config for `settings`: copies of `percent` of the
/// requests they select go to `version`.
pub fn mirror_config(
    version: &str,
    percent: f64,
    settings: &baton_spec::MirrorSpec,
    session: String,
) -> MirrorConfig {
    use baton_routing::config::BodyCompare;
    let mut m = MirrorConfig::new(version, percent);
    m.methods = settings.requests.methods.clone();
    m.paths = settings.requests.paths.clone();
    m.exclude_paths = settings.requests.exclude_paths.clone();
    m.max_body_bytes = usize::try_from(settings.requests.max_body_bytes).unwrap_or(usize::MAX);
    m.compare_status = settings.compare.status;
    match &settings.compare.headers {
        baton_spec::HeadersCompare::AllExcept(more) => {
            m.ignore_headers.extend(more.iter().cloned())
        }
        baton_spec::HeadersCompare::Only(list) => m.compare_headers = list.clone(),
    }
    m.body = match settings.compare.body.mode {
        baton_spec::BodyMode::Json => BodyCompare::Json,
        baton_spec::BodyMode::Text => BodyCompare::Text,
        baton_spec::BodyMode::Bytes => BodyCompare::Bytes,
        baton_spec::BodyMode::None => BodyCompare::Ignore,
    };
    m.ignore_json_paths = settings.compare.body.ignore.clone();
    m.mask_patterns = settings.compare.body.mask.clone();
    m.redact_headers = settings.redact_headers.clone();
    m.max_samples = settings.samples as usize;
    m.session = session;
    m
}

/// The routes of one host's router, for an app behind a router on every host:
/// `routes` with only the instances running on `host`. Where traffic follows
/// the instances (no explicit weights), each version weighs as many as it has
/// there; explicit weights stay, and a version with no instance on this host
/// gets none of its traffic here.
pub fn host_routes(routes: &[AppRoutes], state: &AppState, host: &str) -> Vec<AppRoutes> {
    let follows_instances = state.rollout.as_ref().is_none_or(|r| r.weight.is_none());
    let on_host = |id: &str| state.instance(id).and_then(|i| i.host.as_deref()) == Some(host);
    routes
        .iter()
        .map(|r| {
            let mut r = r.clone();
            for v in &mut r.versions {
                v.backends.retain(|b| on_host(&b.id));
                if v.backends.is_empty() {
                    v.weight = 0;
                } else if follows_instances && v.weight > 0 {
                    v.weight = v.backends.len() as u32;
                }
            }
            r
        })
        .collect()
}

/// One app's mirror comparisons on several routers (one per host) as one; `None`
/// when there are none. The version is the one any router still mirrors to.
pub fn merge_mirror(reports: Vec<AppMirrorReport>, max_samples: usize) -> Option<AppMirrorReport> {
    let first = reports.first()?;
    let app = first.app.clone();
    let version = reports.iter().find_map(|r| r.version.clone());
    let dropped = reports.iter().map(|r| r.dropped).sum();
    let abandoned = reports.iter().map(|r| r.abandoned).sum();
    // Only the newest session counts: a router that has not seen the current
    // step yet still holds the previous one's.
    let session = reports
        .iter()
        .map(|r| r.report.session.clone())
        .max_by(|a, b| session_order(a).cmp(&session_order(b)))
        .unwrap_or_default();
    let report = baton_routing::mirror::MirrorReport::merge(
        reports
            .into_iter()
            .map(|r| r.report)
            .filter(|r| r.session == session),
        max_samples,
    );
    Some(AppMirrorReport {
        app,
        version,
        dropped,
        abandoned,
        report,
    })
}

/// Sessions are `rollout H step S`: ordered by those numbers.
fn session_order(session: &str) -> (u64, u64) {
    let mut n = session.split(' ').filter_map(|w| w.parse::<u64>().ok());
    (n.next().unwrap_or(0), n.next().unwrap_or(0))
}

/// Several routers' windows as one (an app behind a router on every host):
/// counts add up; latency percentiles and the maximum are the worst router's
/// (a limit broken on any host is broken), the mean is weighted by requests.
pub fn merge_windows(reports: Vec<WindowsReport>) -> WindowsReport {
    let mut apps: BTreeMap<String, baton_routing::stats::AppWindows> = BTreeMap::new();
    let mut window_s = 0;
    for report in reports {
        window_s = window_s.max(report.window_s);
        for app in report.apps {
            let merged =
                apps.entry(app.app.clone())
                    .or_insert_with(|| baton_routing::stats::AppWindows {
                        app: app.app.clone(),
                        ..Default::default()
                    });
            merged.connections += app.connections;
            for v in app.versions {
                match merged.versions.iter_mut().find(|m| m.version == v.version) {
                    None => merged.versions.push(v),
                    Some(m) => {
                        let (a, b) = (&mut m.stats, &v.stats);
                        let total = a.requests + b.requests;
                        if total > 0 {
                            a.mean_us = (a.mean_us * a.requests as f64
                                + b.mean_us * b.requests as f64)
                                / total as f64;
                        }
                        a.requests = total;
                        for (x, y) in a.status.iter_mut().zip(b.status) {
                            *x += y;
                        }
                        a.router_errors += b.router_errors;
                        a.bytes_in += b.bytes_in;
                        a.bytes_out += b.bytes_out;
                        a.p50_us = a.p50_us.max(b.p50_us);
                        a.p90_us = a.p90_us.max(b.p90_us);
                        a.p99_us = a.p99_us.max(b.p99_us);
                        a.max_us = a.max_us.max(b.max_us);
                        a.mirror_matches += b.mirror_matches;
                        a.mirror_mismatches += b.mirror_mismatches;
                        a.active_connections += b.active_connections;
                    }
                }
            }
            merged.versions.sort_by(|a, b| a.version.cmp(&b.version));
        }
    }
    WindowsReport {
        window_s,
        apps: apps.into_values().collect(),
    }
}

/// The router's limits and balancing for the spec's `traffic:` section; the
/// limits the spec does not set keep the router's defaults.
fn traffic(t: &baton_spec::TrafficSpec) -> (AppLimits, Balance) {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let limits = AppLimits {
        upstream_connect_timeout_ms: ms(t.connect_timeout),
        upstream_response_timeout_ms: ms(t.response_timeout),
        client_header_timeout_ms: ms(t.client_header_timeout),
        ..AppLimits::default()
    };
    let balance = match t.balance {
        baton_spec::Balance::RoundRobin => Balance::RoundRobin,
        baton_spec::Balance::LeastRequests => Balance::LeastRequests,
    };
    (limits, balance)
}

/// The control plane's link to the router: what the app controllers want it
/// to serve, and what it has acknowledged.
///
/// Publication is level-triggered. [`RouterLink::publish`] only records the
/// desired table (all apps, one generation number for the whole snapshot) and
/// wakes a background pusher, which pushes the newest desired table until the
/// router acknowledges it, retrying with backoff while the router is
/// unreachable or refuses it. Every second it also checks that the router
/// still serves what it acknowledged (a restarted router comes up empty) and
/// pushes again if not. A drain waits for [`RouterLink::acknowledged`]: no
/// instance is drained or stopped while the router may still send it requests.
#[derive(Clone)]
pub struct RouterLink {
    link: Arc<LinkState>,
    client: Arc<dyn RouterApi>,
}

struct LinkState {
    desired: std::sync::Mutex<Desired>,
    /// A two-phase switch holds the pusher back until this time (ms since
    /// the epoch, by `clock`): the table goes live at the commit, not before.
    hold_until_ms: std::sync::atomic::AtomicI64,
    wake: Notify,
    ack: watch::Sender<RouterSync>,
    clock: Arc<dyn Clock>,
}

/// The router's admin API as the control plane uses it: [`AdminClient`] over
/// the unix socket in production, a simulated router in the simulation.
pub trait RouterApi: Send + Sync + 'static {
    fn push<'a>(&'a self, cfg: &'a RoutingConfig)
    -> BoxFuture<'a, Result<PushResult, RouterError>>;
    fn health(&self) -> BoxFuture<'_, Result<RouterHealth, RouterError>>;
    fn stats(&self) -> BoxFuture<'_, Result<RouterStats, RouterError>>;
    fn windows(&self, seconds: u64) -> BoxFuture<'_, Result<WindowsReport, RouterError>>;
    /// The mirror comparisons of every app (none by default).
    fn mirror(&self) -> BoxFuture<'_, Result<MirrorReports, RouterError>> {
        Box::pin(async { Ok(MirrorReports::default()) })
    }
    /// Recording an app's requests: starts one (`Some(spec)`), or reads what it
    /// caught so far (`stop` also ends it).
    fn record<'a>(
        &'a self,
        app: &'a str,
        start: Option<&'a RecordSpec>,
        stop: bool,
    ) -> BoxFuture<'a, Result<RecordingReport, RouterError>> {
        let _ = (app, start, stop);
        Box::pin(async {
            Err(RouterError::Io(std::io::Error::other(
                "this router cannot record requests",
            )))
        })
    }
    /// Two-phase switch, first phase: the router prepares `cfg` without serving it.
    fn stage<'a>(
        &'a self,
        cfg: &'a RoutingConfig,
    ) -> BoxFuture<'a, Result<PushResult, RouterError>> {
        let _ = cfg;
        Box::pin(async {
            Err(RouterError::Io(std::io::Error::other(
                "no two-phase switch",
            )))
        })
    }
    /// Second phase, ahead of it: a connection ready to carry the commit.
    fn open_commit(&self) -> BoxFuture<'_, Result<Box<dyn CommitOnce>, RouterError>> {
        Box::pin(async {
            Err(RouterError::Io(std::io::Error::other(
                "no two-phase switch",
            )))
        })
    }
}

/// A commit ready to go on an open connection ([`RouterApi::open_commit`]).
pub trait CommitOnce: Send {
    /// The staged `generation` goes live.
    fn commit(
        self: Box<Self>,
        generation: u64,
    ) -> BoxFuture<'static, Result<CommitResult, RouterError>>;
}

impl CommitOnce for baton_router::CommitLine {
    fn commit(
        self: Box<Self>,
        generation: u64,
    ) -> BoxFuture<'static, Result<CommitResult, RouterError>> {
        Box::pin(baton_router::CommitLine::commit(*self, generation))
    }
}

impl RouterApi for AdminClient {
    fn push<'a>(
        &'a self,
        cfg: &'a RoutingConfig,
    ) -> BoxFuture<'a, Result<PushResult, RouterError>> {
        Box::pin(AdminClient::push(self, cfg))
    }
    fn health(&self) -> BoxFuture<'_, Result<RouterHealth, RouterError>> {
        Box::pin(AdminClient::health(self))
    }
    fn stats(&self) -> BoxFuture<'_, Result<RouterStats, RouterError>> {
        Box::pin(AdminClient::stats(self))
    }
    fn windows(&self, seconds: u64) -> BoxFuture<'_, Result<WindowsReport, RouterError>> {
        Box::pin(AdminClient::windows(self, seconds))
    }
    fn mirror(&self) -> BoxFuture<'_, Result<MirrorReports, RouterError>> {
        Box::pin(AdminClient::mirror(self))
    }
    fn record<'a>(
        &'a self,
        app: &'a str,
        start: Option<&'a RecordSpec>,
        stop: bool,
    ) -> BoxFuture<'a, Result<RecordingReport, RouterError>> {
        Box::pin(async move {
            match start {
                Some(spec) => AdminClient::arm_record(self, app, spec).await,
                None => AdminClient::recording(self, app, stop).await,
            }
        })
    }
    fn stage<'a>(
        &'a self,
        cfg: &'a RoutingConfig,
    ) -> BoxFuture<'a, Result<PushResult, RouterError>> {
        Box::pin(AdminClient::stage(self, cfg))
    }
    fn open_commit(&self) -> BoxFuture<'_, Result<Box<dyn CommitOnce>, RouterError>> {
        Box::pin(async move {
            let line = AdminClient::open_for_commit(self).await?;
            Ok(Box::new(line) as Box<dyn CommitOnce>)
        })
    }
}

struct Desired {
    generation: u64,
    apps: BTreeMap<String, AppRoutes>,
}

/// Where the router stands against what the control plane wants it to serve.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct RouterSync {
    /// The router's admin socket (names the router in status).
    pub router: String,
    /// Generation of the newest table the control plane wants served.
    pub desired: u64,
    /// Newest generation the router confirmed it serves.
    pub acknowledged: u64,
    /// Since when (ms since the epoch) the router has not acknowledged the
    /// desired table; `None` while in sync.
    pub behind_since_ms: Option<i64>,
    /// Why the last push or check failed.
    pub last_error: Option<String>,
}

impl RouterSync {
    /// The router serves the newest desired table.
    pub fn in_sync(&self) -> bool {
        self.acknowledged >= self.desired
    }
}

/// Pauses between pushes the router did not acknowledge.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// How long `listening` waits for a table being delivered.
const LISTENING_WAIT: Duration = Duration::from_secs(2);
/// How long `withdraw` waits for the router to close an app's listeners.
const WITHDRAW_WAIT: Duration = Duration::from_secs(5);
/// Longest a two-phase switch holds a router's pusher back.
const HOLD_MAX: Duration = Duration::from_secs(5);
/// How often an in-sync link checks that the router still serves its table.
const RECHECK: Duration = Duration::from_secs(1);

impl RouterLink {
    /// Attach to the router answering on `socket`, or start one. The pusher
    /// runs until `shutdown`.
    pub async fn attach_or_start(
        data_dir: &Path,
        baton_exe: &str,
        clock: Arc<dyn Clock>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let socket = socket_path(data_dir);
        let client = AdminClient::new(socket.clone());
        let current = ensure_router(data_dir, &socket, baton_exe).await?;
        Ok(Self::new(
            socket.display().to_string(),
            Arc::new(client),
            current,
            clock,
            shutdown,
        ))
    }

    /// A link to the router `name` reached through `api`, which serves
    /// `current` now; starts the pusher, which runs until `shutdown`.
    pub fn new(
        name: String,
        api: Arc<dyn RouterApi>,
        current: RoutingConfig,
        clock: Arc<dyn Clock>,
        shutdown: CancellationToken,
    ) -> Self {
        let link = Arc::new(LinkState {
            desired: std::sync::Mutex::new(Desired {
                generation: current.generation,
                apps: current
                    .apps
                    .into_iter()
                    .map(|a| (a.app.clone(), a))
                    .collect(),
            }),
            hold_until_ms: std::sync::atomic::AtomicI64::new(0),
            wake: Notify::new(),
            ack: watch::channel(RouterSync {
                router: name,
                desired: current.generation,
                acknowledged: current.generation,
                ..RouterSync::default()
            })
            .0,
            clock,
        });
        let pusher = push_loop(link.clone(), api.clone());
        tokio::spawn(async move {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {}
                _ = pusher => {}
            }
        });
        RouterLink { link, client: api }
    }

    fn desired(&self) -> std::sync::MutexGuard<'_, Desired> {
        // Every update of the map is a single insert/remove: a poisoned lock
        // still holds a whole table.
        self.link.desired.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replace one app's routes (and its preview listener's, if any) in the
    /// desired table and return the generation of the table that holds them.
    /// Returns at once; the pusher delivers it (see [`RouterLink::acknowledged`]).
    pub fn publish(&self, routes: Vec<AppRoutes>) -> u64 {
        let generation = self.publish_quietly(routes);
        self.link.wake.notify_one();
        generation
    }

    /// [`RouterLink::publish`] without waking the pusher.
    fn publish_quietly(&self, routes: Vec<AppRoutes>) -> u64 {
        let generation = {
            let mut desired = self.desired();
            let Some(main) = routes.first() else {
                return desired.generation;
            };
            // Entries of this app are the main one and `<app>--preview`.
            let preview_name = format!("{}{PREVIEW_SUFFIX}", main.app);
            desired.apps.remove(&preview_name);
            let mut changed = false;
            for r in routes {
                if desired.apps.get(&r.app) != Some(&r) {
                    desired.apps.insert(r.app.clone(), r);
                    changed = true;
                }
            }
            if changed {
                desired.generation += 1;
            }
            desired.generation
        };
        let now = self.link.clock.now_ms();
        self.link.ack.send_if_modified(|s| {
            let behind = s.desired < generation;
            if behind {
                s.desired = generation;
                s.behind_since_ms.get_or_insert(now);
            }
            behind
        });
        generation
    }

    /// Two-phase switch, step 1: put `routes` in the desired table like
    /// [`RouterLink::publish`], but hold the pusher back (for at most
    /// [`HOLD_MAX`]) and return the whole table to stage.
    pub fn prepare(&self, routes: Vec<AppRoutes>) -> RoutingConfig {
        let now = self.link.clock.now_ms();
        self.link.hold_until_ms.store(
            now + HOLD_MAX.as_millis() as i64,
            std::sync::atomic::Ordering::SeqCst,
        );
        let generation = self.publish_quietly(routes);
        let desired = self.desired();
        RoutingConfig {
            generation: generation.max(desired.generation),
            apps: desired.apps.values().cloned().collect(),
        }
    }

    /// Step 2: the router prepares `cfg` (binds, compiles) without serving it.
    pub async fn stage(&self, cfg: &RoutingConfig) -> Result<(), RouterError> {
        self.client.stage(cfg).await.map(|_| ())
    }

    /// Step 3, ahead of it: a connection ready to carry the commit (so that
    /// the commits of many routers leave together).
    pub async fn open_commit(&self) -> Result<Box<dyn CommitOnce>, RouterError> {
        self.client.open_commit().await
    }

    /// Step 3 done: the router serves the committed table.
    pub fn committed(&self, done: &CommitResult) {
        self.link.ack.send_modify(|s| {
            s.acknowledged = s.acknowledged.max(done.generation);
            if s.in_sync() {
                s.behind_since_ms = None;
            }
            s.last_error = None;
        });
    }

    /// End the hold (after a commit, or when the switch is given up: the
    /// pusher then delivers the table the ordinary way).
    pub fn release(&self) {
        self.link
            .hold_until_ms
            .store(0, std::sync::atomic::Ordering::SeqCst);
        self.link.wake.notify_one();
    }

    /// Wait until the router has acknowledged a table of `generation` or newer.
    /// Waits as long as it takes: a router that does not answer holds whatever
    /// waits here (a drain), and [`RouterLink::sync`] says why.
    pub async fn acknowledged(&self, generation: u64) {
        let mut rx = self.link.ack.subscribe();
        // The sender lives in `self.link`, so this cannot fail while we hold it.
        let _ = rx.wait_for(|s| s.acknowledged >= generation).await;
    }

    /// Where the router stands against the desired table.
    pub fn sync(&self) -> RouterSync {
        self.link.ack.borrow().clone()
    }

    /// Wait until the router has no request in flight to `address`, bounded by
    /// `timeout` once the router answers. Call it after [`RouterLink::acknowledged`]
    /// of a table without `address`: the router counts a request in flight
    /// before it checks that its snapshot is still live, so from then on the
    /// count is exact. While the router does not answer, nothing is known and
    /// this keeps asking (an unreachable router is never taken as drained).
    pub async fn wait_idle(&self, address: SocketAddr, timeout: Duration) -> Drain {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.client.stats().await {
                Ok(stats) => {
                    let in_flight: u64 = stats
                        .apps
                        .iter()
                        .flat_map(|a| a.backends.iter())
                        .filter(|b| b.address == address)
                        .map(|b| b.in_flight)
                        .sum();
                    if in_flight == 0 {
                        return Drain::Idle;
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Drain::TimedOut { in_flight };
                    }
                }
                Err(e) => {
                    tracing::debug!(%address, error = %e, "router unreachable while draining; asking again");
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether the router listens on `listen` for `app` (its main or its
    /// preview listener) right now, by the router's own account: bound, not
    /// just asked for.
    ///
    /// A table that asks for it and is still being delivered is waited for
    /// (briefly); when the router cannot be asked, the desired table answers.
    pub async fn listening(&self, app: &str, listen: SocketAddr) -> bool {
        let preview = preview_entry(app);
        let (wanted, generation) = {
            let desired = self.desired();
            let wanted = [app, preview.as_str()]
                .iter()
                .any(|e| desired.apps.get(*e).is_some_and(|a| a.listen == listen));
            (wanted, desired.generation)
        };
        if wanted {
            let _ = tokio::time::timeout(LISTENING_WAIT, self.acknowledged(generation)).await;
        }
        match self.client.stats().await {
            Ok(stats) => stats.listeners.iter().any(|l| {
                (l.app == app || l.app == preview) && l.listen == listen && l.error.is_none()
            }),
            Err(_) => wanted,
        }
    }

    /// The router's listeners, by routing entry (an app, or its
    /// `<app>--preview` listener), from its stats: the address, and why it is
    /// not listening there, if it is not. `None` when the router cannot be asked.
    pub async fn listeners(&self) -> Option<BTreeMap<String, (SocketAddr, Option<String>)>> {
        let stats = self.client.stats().await.ok()?;
        Some(
            stats
                .listeners
                .into_iter()
                .map(|l| (l.app, (l.listen, l.error)))
                .collect(),
        )
    }

    /// Take `app` (and its preview listener) out of the routing table: its
    /// listeners close. For `baton delete` and an app whose first apply failed.
    /// Returns once the router has acknowledged it, or after [`WITHDRAW_WAIT`]
    /// (the pusher goes on delivering it; `status` would say it is held).
    pub async fn withdraw(&self, app: &str) -> anyhow::Result<()> {
        let generation = {
            let mut desired = self.desired();
            let removed = desired.apps.remove(app).is_some()
                | desired.apps.remove(&preview_entry(app)).is_some();
            if !removed {
                return Ok(());
            }
            desired.generation += 1;
            desired.generation
        };
        let now = self.link.clock.now_ms();
        self.link.ack.send_modify(|s| {
            s.desired = s.desired.max(generation);
            s.behind_since_ms.get_or_insert(now);
        });
        self.link.wake.notify_one();
        if tokio::time::timeout(WITHDRAW_WAIT, self.acknowledged(generation))
            .await
            .is_err()
        {
            tracing::warn!(%app, "the router has not acknowledged the table without this app yet; it keeps being pushed");
        }
        Ok(())
    }

    /// The router's pid, for `baton down`.
    pub async fn pid(&self) -> Option<u32> {
        self.client.health().await.ok().map(|h| h.pid)
    }

    /// The router's per-version metrics over the last `seconds` (for analysis).
    pub async fn windows(&self, seconds: u64) -> Result<WindowsReport, RouterError> {
        self.client.windows(seconds).await
    }

    /// The router's mirror comparisons of `app`, if it has any.
    pub async fn mirror(&self, app: &str) -> Result<Option<AppMirrorReport>, RouterError> {
        let all = self.client.mirror().await?;
        Ok(all.apps.into_iter().find(|a| a.app == app))
    }

    /// Starts recording `app`'s requests, or reads (`stop`: and ends) the recording.
    pub async fn record(
        &self,
        app: &str,
        start: Option<&RecordSpec>,
        stop: bool,
    ) -> Result<RecordingReport, RouterError> {
        self.client.record(app, start, stop).await
    }
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    /// No request in flight to the instance.
    Idle,
    /// The drain timeout passed with requests still in flight.
    TimedOut { in_flight: u64 },
}

/// Push the desired table until the router acknowledges it; then watch that
/// it keeps serving it.
async fn push_loop(link: Arc<LinkState>, client: Arc<dyn RouterApi>) {
    let mut retry = RETRY_MIN;
    let mut router_started_ms: Option<i64> = None;
    loop {
        let held_for =
            link.hold_until_ms.load(std::sync::atomic::Ordering::SeqCst) - link.clock.now_ms();
        if held_for > 0 {
            // A two-phase switch is under way: its commit delivers the table.
            tokio::select! {
                biased;
                _ = link.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(held_for as u64)) => {}
            }
            continue;
        }
        let cfg = {
            let d = link.desired.lock().unwrap_or_else(|p| p.into_inner());
            (link.ack.borrow().acknowledged < d.generation).then(|| RoutingConfig {
                generation: d.generation,
                apps: d.apps.values().cloned().collect(),
            })
        };
        let Some(cfg) = cfg else {
            // In sync: wait for a new table, or check the router still serves ours.
            tokio::select! {
                biased;
                _ = link.wake.notified() => {}
                _ = tokio::time::sleep(RECHECK) => {
                    recheck(&link, client.as_ref(), &mut router_started_ms).await;
                }
            }
            continue;
        };
        match client.push(&cfg).await {
            Ok(result) => {
                retry = RETRY_MIN;
                // The table is live; an app whose listener could not be bound
                // is not served (status asks the router, see `listeners`).
                for l in result.listeners {
                    if let Some(err) = l.error {
                        tracing::warn!(app = %l.app, listen = %l.listen, error = %err, "the router cannot listen for this app");
                    }
                }
                link.ack.send_modify(|s| {
                    s.acknowledged = s.acknowledged.max(cfg.generation);
                    if s.in_sync() {
                        s.behind_since_ms = None;
                    }
                    s.last_error = None;
                });
            }
            Err(baton_router::RouterError::StaleGeneration { current, .. }) => {
                // The router serves a newer generation than ours (our numbering
                // started from an older table): renumber past it and push again.
                let mut d = link.desired.lock().unwrap_or_else(|p| p.into_inner());
                d.generation = d.generation.max(current + 1);
                let g = d.generation;
                link.ack.send_modify(|s| s.desired = s.desired.max(g));
            }
            Err(e) => {
                let error = format!("{e}");
                tracing::warn!(generation = cfg.generation, %error, "the router did not take the routing table; retrying");
                let now = link.clock.now_ms();
                link.ack.send_modify(|s| {
                    s.behind_since_ms.get_or_insert(now);
                    s.last_error = Some(error);
                });
                tokio::select! {
                biased;
                    _ = link.wake.notified() => {}
                    _ = tokio::time::sleep(retry) => {}
                }
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
}

/// In sync: ask the router which generation it serves. A router that restarted
/// (a different start time, or a generation older than acknowledged) is sent
/// the table again.
async fn recheck(link: &LinkState, client: &dyn RouterApi, started: &mut Option<i64>) {
    match client.health().await {
        Ok(h) => {
            let mut restarted = started.is_some_and(|s| s != h.started_ms);
            *started = Some(h.started_ms);
            let acknowledged = link.ack.borrow().acknowledged;
            if restarted && h.predecessor.is_some() && h.generation >= acknowledged {
                // Replaced by handover: the new process took over the old one's table.
                info!(
                    pid = h.pid,
                    build = %h.build,
                    predecessor = h.predecessor,
                    generation = h.generation,
                    "the router was replaced by handover and serves the acknowledged table"
                );
                restarted = false;
            }
            if restarted || h.generation < acknowledged {
                tracing::warn!(
                    generation = h.generation,
                    acknowledged,
                    "the router no longer serves the acknowledged table; pushing it again"
                );
                let now = link.clock.now_ms();
                link.ack.send_modify(|s| {
                    s.acknowledged = h.generation.min(s.acknowledged);
                    s.behind_since_ms.get_or_insert(now);
                });
                // A restarted router numbers from 0: renumber our table past it.
                let mut d = link.desired.lock().unwrap_or_else(|p| p.into_inner());
                d.generation = d.generation.max(h.generation) + 1;
                let g = d.generation;
                link.ack.send_modify(|s| s.desired = s.desired.max(g));
            } else if link.ack.borrow().last_error.is_some() {
                link.ack.send_modify(|s| s.last_error = None);
            }
        }
        Err(e) => {
            let error = format!("{e}");
            link.ack.send_if_modified(|s| {
                let changed = s.last_error.as_deref() != Some(error.as_str());
                s.last_error = Some(error);
                changed
            });
        }
    }
}

/// Re-attach to the router answering on `socket`, or start one (logging to
/// `dir/logs/router.log`); returns the table it serves.
pub async fn ensure_router(
    dir: &Path,
    socket: &Path,
    baton_exe: &str,
) -> anyhow::Result<RoutingConfig> {
    let client = AdminClient::new(socket.to_path_buf());
    match client.config().await {
        Ok(cfg) => {
            info!(socket = %socket.display(), generation = cfg.generation, "re-attached to the running router");
            let Ok(health) = client.health().await else {
                return Ok(cfg);
            };
            let wanted = baton_router::handover::build_of(Path::new(baton_exe));
            if health.build == wanted {
                return Ok(cfg);
            }
            // The router runs another build of baton than the one installed: replace it
            // by handover (it passes its sockets on; no request is lost).
            info!(
                pid = health.pid,
                build = %health.build,
                wanted = %wanted,
                "the running router is another build; replacing it by handover"
            );
            match hand_over_router(dir, socket, baton_exe, None).await {
                Ok(done) => {
                    info!(
                        old_pid = done.old_pid,
                        old_build = %done.old_build,
                        new_pid = done.new_pid,
                        new_build = %done.new_build,
                        generation = done.generation,
                        "router replaced by handover"
                    );
                    client
                        .config()
                        .await
                        .context("reading the new router's config")
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "cannot replace the router; keeping the running one");
                    Ok(cfg)
                }
            }
        }
        Err(_) => {
            start_router(dir, socket, baton_exe)?;
            wait_for_router(&client).await?;
            info!(socket = %socket.display(), "started the router");
            client
                .config()
                .await
                .context("reading the new router's config")
        }
    }
}

/// What [`hand_over_router`] did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RouterHandover {
    pub old_pid: u32,
    pub old_build: String,
    pub new_pid: u32,
    pub new_build: String,
    /// The generation the new router serves (the old one's table).
    pub generation: u64,
}

/// How long a new router may take to take over before it is given up (and killed).
const HANDOVER_WAIT: Duration = Duration::from_secs(30);

/// Replaces the router answering on `socket` with a new `baton_exe __router` process
/// that takes over its listening sockets and table (see `baton_router::handover`),
/// and waits until the new one answers on `socket`. On failure the running router
/// serves on, untouched. `drain_grace`: how long the old router keeps WebSockets open.
pub async fn hand_over_router(
    data_dir: &Path,
    socket: &Path,
    baton_exe: &str,
    drain_grace: Option<Duration>,
) -> anyhow::Result<RouterHandover> {
    let client = AdminClient::new(socket.to_path_buf());
    let old = client
        .health()
        .await
        .with_context(|| format!("no router answers on {}", socket.display()))?;
    let mut args = vec![
        "__router".to_string(),
        "--admin-socket".into(),
        socket.display().to_string(),
        "--take-over".into(),
    ];
    if let Some(g) = drain_grace {
        args.push("--drain-grace".into());
        args.push(format!("{}ms", g.as_millis()));
    }
    let mut child = spawn_router(data_dir, baton_exe, &args)?;
    let new_pid = child.id();
    let deadline = Instant::now() + HANDOVER_WAIT;
    let new = loop {
        if let Some(status) = child.try_wait().context("waiting for the new router")? {
            anyhow::bail!(
                "the new router exited ({status}) before taking over; the running router \
                 (pid {}) serves on; see logs/router.log in the data dir",
                old.pid
            );
        }
        if let Ok(h) = client.health().await
            && h.pid == new_pid
        {
            break h;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!(
                "the new router did not take over within {HANDOVER_WAIT:?}; the running router \
                 (pid {}) serves on; see logs/router.log in the data dir",
                old.pid
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    reap(child)?;
    Ok(RouterHandover {
        old_pid: old.pid,
        old_build: old.build,
        new_pid,
        new_build: new.build,
        generation: new.generation,
    })
}

fn start_router(data_dir: &Path, socket: &Path, baton_exe: &str) -> anyhow::Result<()> {
    let args = [
        "__router".to_string(),
        "--admin-socket".into(),
        socket.display().to_string(),
    ];
    let child = spawn_router(data_dir, baton_exe, &args)?;
    reap(child)
}

/// Starts `baton_exe ARGS` as a router process logging to `data_dir/logs/router.log`.
fn spawn_router(
    data_dir: &Path,
    baton_exe: &str,
    args: &[String],
) -> anyhow::Result<std::process::Child> {
    let logs = data_dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(logs.join("router.log"))?;
    let mut cmd = std::process::Command::new(baton_exe);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: a signal to the control plane's group (Ctrl-C)
        // or its death does not take the data plane with it.
        .env_remove("BATON_OWNER");
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd.spawn()
        .with_context(|| format!("starting the router ({baton_exe} __router)"))
}

/// Reaps `child` when it exits, from a thread of its own.
fn reap(mut child: std::process::Child) -> anyhow::Result<()> {
    // Reap it if it ever exits while this control plane runs (no zombie); a
    // restarted control plane re-attaches to a router it did not start.
    std::thread::Builder::new()
        .name("router-reaper".into())
        .spawn(move || {
            let status = child.wait();
            tracing::info!(?status, "the router process exited");
        })
        .context("starting the router reaper thread")?;
    Ok(())
}

async fn wait_for_router(client: &AdminClient) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if client.health().await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "the router did not come up within 15s; see logs/router.log in the data dir"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Name of the router entry of `app`'s blue-green preview listener.
pub fn preview_entry(app: &str) -> String {
    format!("{app}{PREVIEW_SUFFIX}")
}

/// Path of the router's admin socket in a data dir.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("router.sock")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mirror_report(session: &str, matches: u64, mismatches: u64) -> AppMirrorReport {
        use baton_routing::mirror::{MirrorReport, PathCounts, PathReport};
        let counts = PathCounts {
            matches,
            mismatches,
        };
        AppMirrorReport {
            app: "web".into(),
            version: Some("v2".into()),
            dropped: 1,
            abandoned: 0,
            report: MirrorReport {
                session: session.into(),
                total: counts,
                paths: vec![PathReport {
                    path: "/items".into(),
                    counts,
                    fields: Vec::new(),
                }],
                ..MirrorReport::default()
            },
        }
    }

    #[test]
    fn mirror_settings_become_the_routers_config() {
        let mut settings = baton_spec::MirrorSpec::default();
        settings.compare.headers = baton_spec::HeadersCompare::AllExcept(vec!["x-version".into()]);
        settings.compare.body.mode = baton_spec::BodyMode::Text;
        settings.compare.body.mask = vec![r"\d+".into()];
        settings.redact_headers = vec!["x-api-key".into()];
        settings.samples = 7;
        let m = mirror_config("v2", 10.0, &settings, "rollout 1 step 1".into());
        assert_eq!((m.version.as_str(), m.percent), ("v2", 10.0));
        assert!(m.compare_headers.is_empty());
        assert!(
            m.ignore_headers.iter().any(|h| h == "date"),
            "the defaults stay"
        );
        assert!(m.ignore_headers.iter().any(|h| h == "x-version"));
        assert_eq!(m.body, baton_routing::config::BodyCompare::Text);
        assert_eq!(m.mask_patterns, vec![r"\d+".to_string()]);
        assert_eq!(m.redact_headers, vec!["x-api-key".to_string()]);
        assert_eq!((m.max_samples, m.session.as_str()), (7, "rollout 1 step 1"));
        assert_eq!(m.methods, vec!["GET", "HEAD"]);
        settings.compare.headers = baton_spec::HeadersCompare::Only(vec!["etag".into()]);
        let m = mirror_config("v2", 10.0, &settings, String::new());
        assert_eq!(m.compare_headers, vec!["etag".to_string()]);
        // What the router accepts.
        assert!(baton_routing::mirror::CompareRules::compile(&m).is_ok());
    }

    #[test]
    fn mirror_reports_of_host_routers_merge_within_the_newest_session() {
        assert!(merge_mirror(Vec::new(), 5).is_none());
        let merged = merge_mirror(
            vec![
                mirror_report("rollout 7 step 2", 10, 1),
                // A router that has not seen step 2 yet: left out.
                mirror_report("rollout 7 step 1", 100, 50),
                mirror_report("rollout 7 step 2", 5, 4),
            ],
            5,
        )
        .unwrap();
        assert_eq!(merged.report.session, "rollout 7 step 2");
        assert_eq!(
            (merged.report.total.matches, merged.report.total.mismatches),
            (15, 5)
        );
        assert_eq!(merged.report.paths[0].counts.mismatches, 5);
        assert_eq!(merged.dropped, 3);
        // Rollout 10 comes after rollout 9, whatever the text order.
        let merged = merge_mirror(
            vec![
                mirror_report("rollout 9 step 3", 1, 0),
                mirror_report("rollout 10 step 1", 2, 0),
            ],
            5,
        )
        .unwrap();
        assert_eq!(merged.report.session, "rollout 10 step 1");
    }

    #[test]
    fn windows_of_several_routers_add_up_and_keep_the_worst_latency() {
        let window = |requests: u64, p99_us: u64, mean_us: f64, errors: u64| {
            baton_routing::stats::VersionWindow {
                version: "v2".into(),
                stats: baton_routing::metrics::WindowStats {
                    requests,
                    status: [0, requests - errors, 0, 0, errors],
                    p99_us,
                    max_us: p99_us,
                    mean_us,
                    ..Default::default()
                },
            }
        };
        let report = |v: baton_routing::stats::VersionWindow| WindowsReport {
            window_s: 10,
            apps: vec![baton_routing::stats::AppWindows {
                app: "web".into(),
                connections: 1,
                versions: vec![v],
            }],
        };
        let merged = merge_windows(vec![
            report(window(100, 2_000, 1_000.0, 1)),
            report(window(300, 9_000, 2_000.0, 6)),
        ]);
        let v = &merged.apps[0].versions[0].stats;
        assert_eq!(v.requests, 400);
        assert_eq!(v.status[4], 7);
        assert_eq!(v.p99_us, 9_000, "the worst host's");
        assert!((v.mean_us - 1_750.0).abs() < 1e-9, "{}", v.mean_us);
        assert_eq!(merged.apps[0].connections, 2);
    }

    #[test]
    fn traffic_section_becomes_the_router_limits_and_balancing() {
        let (limits, balance) = traffic(&baton_spec::TrafficSpec::default());
        assert_eq!(
            limits,
            AppLimits::default(),
            "the spec's defaults are the router's"
        );
        assert_eq!(balance, Balance::RoundRobin);
        let spec = baton_spec::TrafficSpec {
            balance: baton_spec::Balance::LeastRequests,
            connect_timeout: Duration::from_millis(500),
            response_timeout: Duration::from_secs(120),
            client_header_timeout: Duration::from_secs(5),
        };
        let (limits, balance) = traffic(&spec);
        assert_eq!(balance, Balance::LeastRequests);
        assert_eq!(limits.upstream_connect_timeout_ms, 500);
        assert_eq!(limits.upstream_response_timeout_ms, 120_000);
        assert_eq!(limits.client_header_timeout_ms, 5_000);
        assert_eq!(limits.max_body_bytes, AppLimits::default().max_body_bytes);
    }
}
