//! Deterministic simulation of the real control plane.
//!
//! [`run_seed`] runs the production [`AppController`] (engine, store, router
//! link, readiness checkers, analysis, all of it) on a single-threaded tokio
//! runtime with paused time, against a simulated world: a driver whose
//! instances start slowly, never become ready or crash; a router whose pushes
//! fail, hang or find it restarted; a readiness probe that loses
//! observations; a store whose writes fail (before or after they land); a
//! way back for observations that delivers some twice, some late and loses
//! some exits (the next status poll sees them); control-plane crashes at
//! random moments (every controller task dropped, then a restart from the
//! same SQLite store); and an operator
//! who aborts, pauses, resumes, promotes, approves and deploys at random. The
//! seed decides everything, so a failing run replays exactly with
//! `baton __sim --seed N` (`BATON_LOG=info` shows what the controller did).
//!
//! The world checks the invariants of DESIGN.md as they happen: no instance is
//! stopped while the router may still send it a request (invariant 6), the
//! router only routes to instances that passed readiness (2), capacity never
//! drops below `instances - max_unavailable` in runs without crashes (1),
//! an instance is started only when a stored transition has it and stopped
//! only once the stored state gives it up (5).
//! When the chaos ends the run must converge: every rollout ended with its
//! history record closed, exactly the desired instances running (no orphan,
//! no duplicate) and routed (5, 7).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_driver::{
    BoxFuture, DriverError, DynDriver, Exit, FoundInstance, InstanceHandle, InstanceStatus,
    LaunchSpec, Locator, ResourceSample, Scope, StopOutcome,
};
use baton_engine::{Input, RolloutKind};
use baton_router::RouterError;
use baton_routing::config::RoutingConfig;
use baton_routing::stats::{
    AppStats, BackendStats, PushResult, RouterHealth, RouterStats, WindowsReport,
};
use baton_spec::AppSpec;
use baton_store::{Store, WriteFault};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::controller::{AppController, AppHandle, Command, DeployRequest, Shared};
use crate::effects::{Clock, Deliver, Delivery, Probe, TokioClock};
use crate::routing::{RouterApi, RouterLink};

/// What one seeded run found.
#[derive(Debug, Clone, Default)]
pub struct SimReport {
    pub seed: u64,
    /// The scenario in one line (strategy, instances, faults).
    pub scenario: String,
    /// Invariant violations, in the order they happened.
    pub violations: Vec<String>,
    /// Rollouts started (deploys accepted), control-plane crashes, instance kills.
    pub deploys: u32,
    pub crashes: u32,
    pub kills: u32,
    /// Virtual time the run took, in milliseconds.
    pub virtual_ms: i64,
    /// A hash of every routing table the router took, with its time: equal
    /// for two runs of a seed when the run replays exactly.
    pub trace: u64,
}

impl SimReport {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

/// The command that replays one seed.
pub fn replay_command(seed: u64) -> String {
    format!("cargo run -p baton -- __sim --seed {seed}")
}

/// Run the simulation for one seed. Deterministic: the same seed gives the
/// same report.
pub fn run_seed(seed: u64) -> SimReport {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return SimReport {
                seed,
                violations: vec![format!("cannot build the runtime: {e}")],
                ..SimReport::default()
            };
        }
    };
    // Built inside the runtime, so that its clock starts at virtual zero.
    rt.block_on(async move { Sim::new(seed).run().await })
}

/// splitmix64: the world's decisions are hashes of (seed, what, which), so
/// they do not depend on the order tasks happen to ask in.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn hash_of(seed: u64, parts: &[&str], n: u64) -> u64 {
    let mut h = mix(seed ^ n.rotate_left(17));
    for p in parts {
        for b in p.bytes() {
            h = mix(h ^ u64::from(b));
        }
    }
    h
}

/// Faults this run injects (decided by the seed).
#[derive(Debug, Clone, Copy, Default)]
struct Faults {
    /// Percentage of router pushes that fail.
    push_fail_pct: u64,
    /// Percentage of router pushes that hang past the admin timeout.
    push_hang_pct: u64,
    /// Percentage of readiness probes that are lost (report not ready).
    probe_loss_pct: u64,
    /// Instances crash now and then.
    instance_crashes: bool,
    /// Control-plane crashes.
    cp_crashes: bool,
    /// Router outages and restarts.
    router_outages: bool,
    /// Percentage of instance starts that fail.
    start_fail_pct: u64,
    /// Percentage of the control plane's store writes that fail (half of
    /// them after the write landed, so the caller cannot tell).
    store_fail_pct: u64,
    /// Percentage of driver observations (started, ready, drained, stopped,
    /// exited...) delivered twice.
    duplicate_pct: u64,
    /// Percentage of driver observations delivered late (up to 3 s).
    late_pct: u64,
    /// Percentage of exits the status poll does not report (the next poll does).
    exit_loss_pct: u64,
}

impl Faults {
    /// Runs where capacity must hold exactly: nothing but the control plane
    /// itself (and its router link) misbehaves.
    fn capacity_is_checked(&self) -> bool {
        !self.instance_crashes && self.probe_loss_pct == 0 && self.late_pct == 0
    }
}

/// One simulated instance.
#[derive(Debug, Clone)]
struct SimInstance {
    handle: InstanceHandle,
    /// Passes readiness from this time on (`i64::MAX`: never).
    ready_at_ms: i64,
    /// Crashes at this time, if it does.
    crash_at_ms: Option<i64>,
    /// Stopped by the driver.
    stopped: bool,
}

impl SimInstance {
    fn crashed(&self, now: i64) -> bool {
        self.crash_at_ms.is_some_and(|t| now >= t)
    }
    fn alive(&self, now: i64) -> bool {
        !self.stopped && !self.crashed(now)
    }
}

/// The simulated router's state.
#[derive(Debug, Default)]
struct SimRouter {
    live: RoutingConfig,
    started_ms: i64,
    /// Backends taken out of the live table, with requests in flight until then.
    in_flight_until: BTreeMap<SocketAddr, i64>,
    /// Unreachable until this time.
    down_until_ms: i64,
    pushes: u64,
    /// Running hash of the tables taken (see [`SimReport::trace`]).
    trace: u64,
}

/// Everything the simulated effects share.
struct World {
    seed: u64,
    clock: TokioClock,
    faults: Faults,
    /// Instances ever started, by id (ids are unique per app).
    instances: BTreeMap<String, SimInstance>,
    next_pid: u32,
    router: SimRouter,
    violations: Vec<String>,
    /// The minimum of routed backends capacity allows, once the app first
    /// reached its desired size.
    min_available: Option<u32>,
    /// Versions that never become ready.
    bad_versions: Vec<String>,
    /// Capacity is checked in runs where nothing but the control plane and
    /// its router link misbehave (decided from the run's faults at the start).
    check_capacity: bool,
    /// Observations delivered so far (each one's fate is a hash of this).
    deliveries: u64,
}

type SharedWorld = Arc<Mutex<World>>;

fn lock(w: &SharedWorld) -> std::sync::MutexGuard<'_, World> {
    w.lock().unwrap_or_else(|p| p.into_inner())
}

impl World {
    fn now(&self) -> i64 {
        self.clock.now_ms()
    }
    fn violation(&mut self, what: String) {
        let at = self.now();
        self.violations.push(format!("t={at}ms: {what}"));
    }
    fn by_address(&self, addr: SocketAddr) -> Option<&SimInstance> {
        self.instances
            .values()
            .rev()
            .find(|i| i.handle.address == addr)
    }
    fn routed(&self, addr: SocketAddr) -> bool {
        self.router.live.apps.iter().any(|a| {
            a.versions
                .iter()
                .any(|v| v.backends.iter().any(|b| b.address == addr))
        })
    }
}

/// The simulated driver of one control-plane incarnation: once that control
/// plane has crashed (`gone`), the calls it had under way do nothing more,
/// as the calls of a killed process would.
struct SimDriver(SharedWorld, CancellationToken, Arc<Mutex<Store>>);

impl SimDriver {
    /// The stored state, if it reads.
    fn stored_state(&self) -> Option<baton_engine::AppState> {
        let store = self.2.lock().unwrap_or_else(|p| p.into_inner());
        let rec = store.load_state(APP).ok().flatten()?;
        drop(store);
        serde_json::from_str(&rec.state_json).ok()
    }

    /// A process is stopped only once the stored state gives it up
    /// (stopping it, or not knowing it); never while it counts as running.
    /// (A process the state never recorded, started late for an instance
    /// given up meanwhile, is stopped as soon as it is reported.)
    fn check_stop_persisted(&self, handle: &InstanceHandle) -> Option<String> {
        use baton_engine::InstancePhase as P;
        let state = self.stored_state()?;
        let id = &handle.instance_id;
        let phase = &state
            .instance(id)
            .filter(|i| i.handle.as_ref() == Some(handle))?
            .phase;
        matches!(phase, P::Starting | P::Ready { .. } | P::Draining { .. })
            .then(|| format!("{id} stopped while the stored state has it {phase:?}"))
    }

    /// Invariant 5: a start is an action of a committed transition, so the
    /// stored state has allocated the instance's id (its sequence number is
    /// below the stored `next_instance_seq`).
    fn check_start_persisted(&self, id: &str) -> Option<String> {
        let seq: u64 = id.rsplit('-').next()?.parse().ok()?;
        let next = self.stored_state().map_or(0, |s| s.next_instance_seq);
        (seq >= next).then(|| {
            format!(
                "{id} was started though no stored state has it (stored next_instance_seq {next})"
            )
        })
    }
}

impl DynDriver for SimDriver {
    fn start<'a>(
        &'a self,
        spec: &'a LaunchSpec,
    ) -> BoxFuture<'a, Result<InstanceHandle, DriverError>> {
        Box::pin(async move {
            if let Some(what) = self.check_start_persisted(&spec.instance_id) {
                lock(&self.0).violation(what);
            }
            // Starting a process takes a little while: a crash can fall in between.
            let delay = {
                let w = lock(&self.0);
                10 + hash_of(w.seed, &["start-delay", &spec.instance_id], 0) % 90
            };
            tokio::time::sleep(Duration::from_millis(delay)).await;
            let mut w = lock(&self.0);
            let h = hash_of(w.seed, &["start", &spec.instance_id], 0);
            // Killed while starting it: half the time the process was already
            // forked (a stray the next control plane must find), half not.
            let gone = self.1.is_cancelled();
            if gone && (h >> 40).is_multiple_of(2) {
                return Err(DriverError::Spawn {
                    program: spec.instance_id.clone(),
                    workdir: None,
                    source: std::io::Error::other("the control plane died first"),
                });
            }
            if !gone && h % 100 < w.faults.start_fail_pct {
                return Err(DriverError::Spawn {
                    program: spec.instance_id.clone(),
                    workdir: None,
                    source: std::io::Error::other("simulated start failure"),
                });
            }
            let now = w.now();
            let slow = (h >> 8) % 2_500;
            let ready_at_ms = if w.bad_versions.contains(&spec.version) {
                i64::MAX
            } else {
                now + 50 + slow as i64
            };
            let crash_at_ms = (w.faults.instance_crashes && (h >> 20) % 100 < 15)
                .then(|| now + 200 + ((h >> 28) % 20_000) as i64);
            if w.instances
                .get(&spec.instance_id)
                .is_some_and(|i| i.alive(now))
            {
                let what = format!(
                    "{} started a second time while the first is running",
                    spec.instance_id
                );
                w.violation(what);
            }
            w.next_pid += 1;
            // An address of the world's own (not the port the OS lent the
            // controller), so that runs replay exactly.
            let port = 10_000 + (w.next_pid % 50_000) as u16;
            let handle = InstanceHandle {
                instance_id: spec.instance_id.clone(),
                address: SocketAddr::new(spec.host, port),
                locator: Locator::Process {
                    pid: w.next_pid,
                    start_time: now as u64,
                },
            };
            w.instances.insert(
                spec.instance_id.clone(),
                SimInstance {
                    handle: handle.clone(),
                    ready_at_ms,
                    crash_at_ms,
                    stopped: false,
                },
            );
            Ok(handle)
        })
    }

    fn status<'a>(&'a self, handle: &'a InstanceHandle) -> BoxFuture<'a, InstanceStatus> {
        let w = lock(&self.0);
        let now = w.now();
        let status = match w.instances.get(&handle.instance_id) {
            Some(i) if i.handle.locator == handle.locator => {
                if i.stopped {
                    InstanceStatus::Gone
                } else if i.crashed(now) {
                    InstanceStatus::Exited(Exit {
                        code: Some(1),
                        ..Exit::default()
                    })
                } else {
                    InstanceStatus::Running
                }
            }
            _ => InstanceStatus::Gone,
        };
        Box::pin(std::future::ready(status))
    }

    fn sample<'a>(&'a self, _handle: &'a InstanceHandle) -> BoxFuture<'a, Option<ResourceSample>> {
        Box::pin(std::future::ready(None))
    }

    fn resolve_image<'a>(
        &'a self,
        _node: Option<&'a str>,
        _endpoint: &'a str,
        image: &'a str,
        _pull: baton_driver::PullPolicy,
    ) -> BoxFuture<'a, Result<baton_driver::ImageInfo, DriverError>> {
        Box::pin(std::future::ready(Err(DriverError::Unsupported(format!(
            "the simulation runs processes only, not {image}"
        )))))
    }

    fn stop<'a>(
        &'a self,
        handle: &'a InstanceHandle,
        _grace: Duration,
    ) -> BoxFuture<'a, Result<StopOutcome, DriverError>> {
        Box::pin(async move {
            if self.1.is_cancelled() {
                // A dead control plane sends no signal.
                return Ok(StopOutcome::AlreadyGone);
            }
            if let Some(what) = self.check_stop_persisted(handle) {
                lock(&self.0).violation(what);
            }
            {
                let mut w = lock(&self.0);
                let now = w.now();
                let addr = handle.address;
                let known = w
                    .instances
                    .get(&handle.instance_id)
                    .is_some_and(|i| i.handle.locator == handle.locator && i.alive(now));
                // Invariant 6: nothing is stopped while the router may send it requests.
                if known && w.router.down_until_ms <= now && w.routed(addr) {
                    w.violation(format!(
                        "{} ({addr}) stopped while the router still routes to it",
                        handle.instance_id
                    ));
                }
                if known
                    && w.router
                        .in_flight_until
                        .get(&addr)
                        .is_some_and(|t| *t > now)
                {
                    w.violation(format!(
                        "{} ({addr}) stopped with requests in flight",
                        handle.instance_id
                    ));
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            let mut w = lock(&self.0);
            let now = w.now();
            match w.instances.get_mut(&handle.instance_id) {
                Some(i) if i.handle.locator == handle.locator && i.alive(now) => {
                    i.stopped = true;
                    Ok(StopOutcome::Graceful)
                }
                Some(i) if i.handle.locator == handle.locator => {
                    i.stopped = true;
                    Ok(StopOutcome::AlreadyGone)
                }
                _ => Ok(StopOutcome::AlreadyGone),
            }
        })
    }

    fn discover<'a>(
        &'a self,
        scope: &'a Scope,
    ) -> BoxFuture<'a, Result<Vec<FoundInstance>, DriverError>> {
        let w = lock(&self.0);
        let now = w.now();
        let prefix = format!("{}-r", scope.app);
        let found = w
            .instances
            .values()
            .filter(|i| i.alive(now) && i.handle.instance_id.starts_with(&prefix))
            .map(|i| FoundInstance {
                instance_id: i.handle.instance_id.clone(),
                locator: i.handle.locator.clone(),
                address: Some(i.handle.address),
            })
            .collect();
        Box::pin(std::future::ready(Ok(found)))
    }
}

/// The observations' way back to the controller: some arrive twice, some
/// late, some exits not at all (the next status poll sees them).
struct SimDelivery(SharedWorld);

impl Delivery for SimDelivery {
    fn deliver(&self, input: &Input) -> Deliver {
        let (what, id) = match input {
            Input::Started { id, .. } => ("started", id),
            Input::StartFailed { id, .. } => ("start-failed", id),
            Input::Ready { id } => ("ready", id),
            Input::Unready { id } => ("unready", id),
            Input::Drained { id } => ("drained", id),
            Input::Stopped { id } => ("stopped", id),
            Input::Exited { id, .. } => ("exited", id),
            _ => return Deliver::Once,
        };
        let mut w = lock(&self.0);
        w.deliveries += 1;
        let h = hash_of(w.seed, &["deliver", what, id], w.deliveries);
        let f = w.faults;
        if what == "exited" && h % 100 < f.exit_loss_pct {
            Deliver::Lost
        } else if (h >> 8) % 100 < f.duplicate_pct {
            Deliver::Twice
        } else if (h >> 16) % 100 < f.late_pct {
            Deliver::Late(Duration::from_millis(10 + (h >> 24) % 3_000))
        } else {
            Deliver::Once
        }
    }
}

struct SimProbe(SharedWorld);

impl Probe for SimProbe {
    fn check<'a>(
        &'a self,
        addr: SocketAddr,
        _path: &'a str,
        _timeout: Duration,
    ) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            let w = lock(&self.0);
            let now = w.now();
            let Some(i) = w.by_address(addr) else {
                return false;
            };
            let lost = hash_of(
                w.seed,
                &["probe", &i.handle.instance_id],
                (now / 100) as u64,
            ) % 100
                < w.faults.probe_loss_pct;
            i.alive(now) && now >= i.ready_at_ms && !lost
        })
    }
}

/// The simulated router's admin API as one control-plane incarnation sees it.
struct SimRouterApi(SharedWorld, CancellationToken);

impl SimRouterApi {
    fn unreachable(&self, w: &World) -> Option<RouterError> {
        (self.1.is_cancelled() || w.router.down_until_ms > w.now()).then(|| {
            RouterError::Unreachable {
                socket: "sim-router.sock".into(),
                source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
            }
        })
    }
}

impl RouterApi for SimRouterApi {
    fn push<'a>(
        &'a self,
        cfg: &'a RoutingConfig,
    ) -> BoxFuture<'a, Result<PushResult, RouterError>> {
        Box::pin(async move {
            let hang = {
                let mut w = lock(&self.0);
                if let Some(e) = self.unreachable(&w) {
                    return Err(e);
                }
                w.router.pushes += 1;
                let h = hash_of(w.seed, &["push"], w.router.pushes);
                if h % 100 < w.faults.push_fail_pct {
                    return Err(RouterError::Status {
                        status: 503,
                        body: "simulated push failure".into(),
                    });
                }
                (h >> 8) % 100 < w.faults.push_hang_pct
            };
            if hang {
                // Past the admin call's deadline: the client gives up, the router
                // may or may not have taken it (here: not).
                tokio::time::sleep(baton_router::admin::ADMIN_CALL_TIMEOUT).await;
                return Err(RouterError::Timeout(
                    baton_router::admin::ADMIN_CALL_TIMEOUT,
                ));
            }
            let mut w = lock(&self.0);
            if cfg.generation < w.router.live.generation {
                return Err(RouterError::StaleGeneration {
                    current: w.router.live.generation,
                    pushed: cfg.generation,
                });
            }
            let now = w.now();
            // Invariant 2: only instances that passed readiness take requests.
            let mut routed = 0u32;
            for app in &cfg.apps {
                for v in &app.versions {
                    for b in &v.backends {
                        routed += 1;
                        let ok = w
                            .by_address(b.address)
                            .is_some_and(|i| !i.stopped && now >= i.ready_at_ms);
                        if !ok {
                            let what = format!(
                                "the router was given {} ({}, {}) which has not passed readiness or was stopped",
                                b.id, v.version, b.address
                            );
                            w.violation(what);
                        }
                    }
                }
            }
            // Requests in flight to backends that leave the table finish a little later.
            let before: Vec<SocketAddr> = w
                .router
                .live
                .apps
                .iter()
                .flat_map(|a| a.versions.iter())
                .flat_map(|v| v.backends.iter().map(|b| b.address))
                .collect();
            for addr in before {
                let still = cfg.apps.iter().any(|a| {
                    a.versions
                        .iter()
                        .any(|v| v.backends.iter().any(|b| b.address == addr))
                });
                if !still {
                    let tail = hash_of(w.seed, &["tail", &addr.to_string()], cfg.generation) % 400;
                    w.router.in_flight_until.insert(addr, now + tail as i64);
                }
            }
            // Invariant 1, in runs where only baton could break it.
            if w.check_capacity
                && let Some(min) = w.min_available
                && routed < min
            {
                w.violation(format!(
                    "capacity: {routed} instances routed, fewer than the {min} the strategy allows"
                ));
            }
            let taken = serde_json::to_string(cfg).unwrap_or_default();
            w.router.trace = hash_of(w.router.trace, &[&taken], now as u64);
            w.router.live = cfg.clone();
            Ok(PushResult {
                generation: cfg.generation,
                listeners: Vec::new(),
            })
        })
    }

    fn health(&self) -> BoxFuture<'_, Result<RouterHealth, RouterError>> {
        Box::pin(async move {
            let w = lock(&self.0);
            if let Some(e) = self.unreachable(&w) {
                return Err(e);
            }
            Ok(RouterHealth {
                pid: 1,
                generation: w.router.live.generation,
                started_ms: w.router.started_ms,
                ..RouterHealth::default()
            })
        })
    }

    fn stats(&self) -> BoxFuture<'_, Result<RouterStats, RouterError>> {
        Box::pin(async move {
            let w = lock(&self.0);
            if let Some(e) = self.unreachable(&w) {
                return Err(e);
            }
            let now = w.now();
            let backends = w
                .router
                .in_flight_until
                .iter()
                .map(|(addr, until)| BackendStats {
                    address: *addr,
                    in_flight: u64::from(*until > now),
                    requests: 0,
                    failures: 0,
                })
                .collect();
            let listeners = w
                .router
                .live
                .apps
                .iter()
                .map(|a| baton_routing::stats::ListenerStatus {
                    app: a.app.clone(),
                    listen: a.listen,
                    error: None,
                })
                .collect();
            Ok(RouterStats {
                generation: w.router.live.generation,
                apps: vec![AppStats {
                    app: "sim".into(),
                    backends,
                    ..AppStats::default()
                }],
                listeners,
            })
        })
    }

    fn windows(&self, seconds: u64) -> BoxFuture<'_, Result<WindowsReport, RouterError>> {
        Box::pin(async move {
            let w = lock(&self.0);
            if let Some(e) = self.unreachable(&w) {
                return Err(e);
            }
            Ok(WindowsReport {
                window_s: seconds,
                apps: Vec::new(),
            })
        })
    }
}

const APP: &str = "sim";
/// How much virtual time the chaos lasts before the run must converge.
const CHAOS_MS: i64 = 60_000;
/// How long the run may take to converge once the chaos stops.
const CONVERGE_MS: i64 = 600_000;

/// The running control plane of a run.
struct Control {
    shutdown: CancellationToken,
    handle: AppHandle,
    shared: Arc<Shared>,
}

/// One run: the world, the store and the running control plane.
struct Sim {
    rng: fastrand::Rng,
    world: SharedWorld,
    store: Arc<Mutex<Store>>,
    /// The percentage of store writes that fail (0 once the chaos ends).
    store_faults: Arc<std::sync::atomic::AtomicU64>,
    spec: AppSpec,
    control: Option<Control>,
    report: SimReport,
    versions_deployed: u32,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = fastrand::Rng::with_seed(seed);
        let strategy = match rng.u8(0..3) {
            0 => {
                "  rolling:\n    max_surge: 1\n    max_unavailable: 0\n    min_ready: 300ms\n    progress_deadline: 20s\n    max_restarts: 2"
            }
            1 => {
                "  canary:\n    min_ready: 300ms\n    progress_deadline: 20s\n    max_restarts: 2\n    steps:\n      - set_canary_scale: { instances: 1 }\n      - set_weight: 20\n      - pause: { duration: 2s }\n      - set_weight: 60\n      - pause: { until: approved }\n      - set_weight: 100"
            }
            _ => {
                "  blue_green:\n    min_ready: 300ms\n    progress_deadline: 20s\n    max_restarts: 2\n    auto_promote_after: 3s\n    scale_down_delay: 2s"
            }
        };
        let instances = rng.u32(1..=4);
        let heavy = rng.bool();
        // The store and delivery faults come from a stream of their own, so
        // the rest of a seed's scenario is what it was before they existed.
        let mut more = fastrand::Rng::with_seed(mix(seed ^ 0x0053_544f_5245));
        let faults = Faults {
            push_fail_pct: if heavy { rng.u64(0..30) } else { 0 },
            push_hang_pct: if heavy { rng.u64(0..10) } else { 0 },
            probe_loss_pct: if rng.u8(0..4) == 0 { rng.u64(1..15) } else { 0 },
            instance_crashes: rng.u8(0..3) == 0,
            cp_crashes: rng.u8(0..4) != 0,
            router_outages: rng.u8(0..3) == 0,
            start_fail_pct: if rng.u8(0..5) == 0 { rng.u64(1..20) } else { 0 },
            store_fail_pct: if more.u8(0..3) == 0 {
                more.u64(1..15)
            } else {
                0
            },
            duplicate_pct: if more.u8(0..3) == 0 {
                more.u64(1..20)
            } else {
                0
            },
            late_pct: if more.u8(0..3) == 0 {
                more.u64(1..20)
            } else {
                0
            },
            exit_loss_pct: if more.u8(0..3) == 0 {
                more.u64(10..60)
            } else {
                0
            },
        };
        let yaml = format!(
            "name: {APP}\nenvironment: sim\nlisten: 127.0.0.1:18080\ninstances: {instances}\ndrain_timeout: 5s\ndriver:\n  process:\n    command: [\"{{baton}}\", \"sample\", \"--port\", \"{{port}}\"]\n    stop_grace: 1s\nreadiness:\n  path: /healthz\n  interval: 100ms\n  timeout: 50ms\n  success_threshold: 1\n  failure_threshold: 2\nstrategy:\n{strategy}\n"
        );
        // The scenario's spec is written here: failing to parse it is a bug of
        // this module, not an input error.
        let spec = baton_spec::parse_spec("sim.yaml", &yaml)
            .unwrap_or_else(|e| panic!("the simulation's own spec does not parse: {e}"));
        let kind = spec.strategy.kind();
        let scenario = format!("{kind}, {instances} instance(s), {faults:?}");
        let clock = TokioClock::new(1_800_000_000_000);
        let world = Arc::new(Mutex::new(World {
            seed,
            clock,
            faults,
            instances: BTreeMap::new(),
            next_pid: 10_000_000,
            router: SimRouter {
                started_ms: clock.now_ms(),
                ..SimRouter::default()
            },
            violations: Vec::new(),
            min_available: None,
            bad_versions: Vec::new(),
            check_capacity: faults.capacity_is_checked(),
            deliveries: 0,
        }));
        let mut store = Store::open_in_memory()
            .unwrap_or_else(|e| panic!("an in-memory SQLite store must open: {e}"));
        // Store faults: a hash of the seed and the write's number decides.
        // (The hook runs under the store's lock: it must not take the world's.)
        let store_faults = Arc::new(std::sync::atomic::AtomicU64::new(faults.store_fail_pct));
        let mut writes = 0u64;
        let pct = store_faults.clone();
        store.set_write_faults(Some(Box::new(move |op| {
            writes += 1;
            let h = hash_of(seed, &["store", &format!("{op:?}")], writes);
            (h % 100 < pct.load(std::sync::atomic::Ordering::Relaxed)).then_some(
                if (h >> 8).is_multiple_of(2) {
                    WriteFault::Fail
                } else {
                    WriteFault::FailAfterCommit
                },
            )
        })));
        Sim {
            rng,
            world,
            store: Arc::new(Mutex::new(store)),
            spec,
            control: None,
            store_faults,
            report: SimReport {
                seed,
                scenario,
                ..SimReport::default()
            },
            versions_deployed: 0,
        }
    }

    fn now(&self) -> i64 {
        lock(&self.world).now()
    }

    /// Start (or restart) the control plane on the stored state, as `serve` does.
    fn start_control_plane(&mut self) {
        tracing::info!(at_ms = self.now(), "sim: the control plane starts");
        let shutdown = CancellationToken::new();
        let clock: Arc<dyn Clock> = Arc::new(lock(&self.world).clock);
        let live = lock(&self.world).router.live.clone();
        let router = RouterLink::new(
            "sim-router".into(),
            Arc::new(SimRouterApi(self.world.clone(), shutdown.clone())),
            live,
            clock.clone(),
            shutdown.clone(),
        );
        let shared = Arc::new(Shared {
            store: self.store.clone(),
            driver: Arc::new(SimDriver(
                self.world.clone(),
                shutdown.clone(),
                self.store.clone(),
            )),
            router,
            // The simulated apps run on one machine: no hosts.
            fleet: Arc::new(crate::fleet::Fleet::new(
                std::env::temp_dir(),
                std::env::temp_dir(),
                clock.clone(),
                shutdown.clone(),
            )),
            probe: Arc::new(SimProbe(self.world.clone())),
            clock,
            delivery: Some(Arc::new(SimDelivery(self.world.clone()))),
            audit: None,
            data_dir: std::env::temp_dir(),
            baton_exe: std::env::current_exe()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "/bin/true".into()),
        });
        match AppController::spawn(shared.clone(), self.spec.clone(), shutdown.clone()) {
            Ok(handle) => {
                self.control = Some(Control {
                    shutdown,
                    handle,
                    shared,
                })
            }
            Err(e) => {
                let what = format!("the control plane did not start: {e:#}");
                lock(&self.world).violation(what);
            }
        }
    }

    /// kill -9: every controller task ends where it is.
    fn crash_control_plane(&mut self) {
        if let Some(c) = self.control.take() {
            tracing::info!(at_ms = self.now(), "sim: the control plane crashes");
            c.shutdown.cancel();
            self.report.crashes += 1;
        }
    }

    fn handle(&self) -> Option<&AppHandle> {
        self.control.as_ref().map(|c| &c.handle)
    }

    async fn operate(&self, input: Input) -> bool {
        let Some(h) = self.handle() else { return false };
        let (tx, rx) = oneshot::channel();
        if h.commands
            .send(Command::Operate { input, reply: tx })
            .await
            .is_err()
        {
            return false;
        }
        matches!(rx.await, Ok(Ok(())))
    }

    async fn deploy(&mut self, version: String) {
        let Some(h) = self.handle().cloned() else {
            return;
        };
        let (tx, rx) = oneshot::channel();
        let request = DeployRequest::new(version, "sim".into(), RolloutKind::Deploy);
        if h.commands
            .send(Command::Deploy { request, reply: tx })
            .await
            .is_err()
        {
            return;
        }
        if let Ok(Ok(accepted)) = rx.await
            && !accepted.unchanged
        {
            self.report.deploys += 1;
        }
    }

    fn view(&self) -> Option<Arc<crate::controller::AppView>> {
        self.handle().map(|h| h.status.borrow().clone())
    }

    async fn run(mut self) -> SimReport {
        {
            let mut store = self.store.lock().unwrap_or_else(|p| p.into_inner());
            let json = serde_json::to_string(&self.spec).unwrap_or_default();
            let now = lock(&self.world).now();
            if let Err(e) = store.upsert_app(APP, &json, "", now) {
                self.report
                    .violations
                    .push(format!("cannot register the app: {e}"));
                return self.report;
            }
        }
        self.start_control_plane();
        // The first release, then the chaos.
        self.deploy("v1".into()).await;
        let start = self.now();
        let chaos_end = self.now() + CHAOS_MS;
        let faults = lock(&self.world).faults;
        while self.now() < chaos_end {
            tokio::time::sleep(Duration::from_millis(self.rng.u64(50..2_000))).await;
            self.arm_capacity_check();
            self.act(faults).await;
        }
        self.converge().await;
        self.report.virtual_ms = self.now() - start;
        let mut report = self.report;
        let mut w = lock(&self.world);
        report.violations.append(&mut w.violations);
        report.trace = w.router.trace;
        drop(w);
        report
    }

    /// Capacity is owed from the first time the app stands at full size on
    /// a stable release (a first release that never made it owes nothing).
    fn arm_capacity_check(&self) {
        let Some(v) = self.view() else { return };
        let full = v.state.rollout.is_none()
            && v.state.stable.is_some()
            && v.state.instances.len() == self.spec.instances as usize
            && v.state.instances.iter().all(|i| i.is_routable());
        if full {
            let min = crate::controller::params_of(&self.spec).min_available();
            lock(&self.world).min_available.get_or_insert(min);
        }
    }

    /// One random event of the chaos.
    async fn act(&mut self, faults: Faults) {
        match self.rng.u8(0..12) {
            0 | 1 if faults.cp_crashes => {
                self.crash_control_plane();
                // Down for a moment, then the same command line again.
                tokio::time::sleep(Duration::from_millis(self.rng.u64(0..3_000))).await;
                self.start_control_plane();
            }
            2 | 3 => {
                let rolling_out = self.view().is_some_and(|v| v.state.rollout.is_some());
                if !rolling_out {
                    self.versions_deployed += 1;
                    let version = format!("v{}", self.versions_deployed + 1);
                    if self.rng.u8(0..4) == 0 {
                        lock(&self.world).bad_versions.push(version.clone());
                    }
                    self.deploy(version).await;
                }
            }
            4 => {
                let _ = self
                    .operate(Input::Abort {
                        by: "sim".into(),
                        reason: "simulated abort".into(),
                    })
                    .await;
            }
            5 => {
                let _ = self.operate(Input::Pause { by: "sim".into() }).await;
            }
            6 => {
                let _ = self.operate(Input::Resume { by: "sim".into() }).await;
            }
            7 => {
                let full = self.rng.bool();
                let _ = self
                    .operate(Input::Promote {
                        by: "sim".into(),
                        full,
                    })
                    .await;
            }
            8 => {
                let _ = self.operate(Input::Approve { by: "sim".into() }).await;
            }
            9 if faults.router_outages => {
                let mut w = lock(&self.world);
                let now = w.now();
                if self.rng.bool() {
                    w.router.down_until_ms = now + self.rng.i64(100..5_000);
                } else {
                    // The router restarts: it comes up empty at generation 0.
                    w.router.live = RoutingConfig::default();
                    w.router.started_ms = now;
                    w.router.in_flight_until.clear();
                }
            }
            10 if faults.instance_crashes => {
                let mut w = lock(&self.world);
                let now = w.now();
                let alive: Vec<String> = w
                    .instances
                    .values()
                    .filter(|i| i.alive(now))
                    .map(|i| i.handle.instance_id.clone())
                    .collect();
                if !alive.is_empty() {
                    let id = &alive[self.rng.usize(0..alive.len())];
                    if let Some(i) = w.instances.get_mut(id) {
                        i.crash_at_ms = Some(now);
                        self.report.kills += 1;
                    }
                }
            }
            _ => {}
        }
    }

    /// The chaos is over: heal the world, let a person pass any gate, and
    /// wait for the app to settle; then check what must hold at rest.
    async fn converge(&mut self) {
        {
            self.store_faults
                .store(0, std::sync::atomic::Ordering::Relaxed);
            let mut w = lock(&self.world);
            w.faults = Faults::default();
            w.router.down_until_ms = 0;
            // Nothing crashes any more from here on (what crashed stays crashed).
            let now = w.now();
            for i in w.instances.values_mut() {
                if i.crash_at_ms.is_some_and(|t| t > now) {
                    i.crash_at_ms = None;
                }
            }
        }
        if self.control.is_none() {
            self.start_control_plane();
        }
        let deadline = self.now() + CONVERGE_MS;
        // At rest means settled twice in a row, a second apart: a crash just
        // before the chaos ended is noticed by then.
        let mut settled_since: Option<i64> = None;
        while let Some(v) = self.view() {
            let settled = v.state.rollout.is_none()
                && v.state.instances.len() == self.spec.instances as usize
                && v.state.instances.iter().all(|i| i.is_routable());
            let synced = self.control.as_ref().is_some_and(|c| {
                let sync = c.shared.router.sync();
                sync.in_sync() && sync.acknowledged >= v.routing_generation
            });
            if settled && synced {
                let since = *settled_since.get_or_insert(self.now());
                if self.now() - since >= 1_000 {
                    break;
                }
            } else {
                settled_since = None;
            }
            if self.now() > deadline {
                let what = format!(
                    "did not converge: phase {}, rollout {:?}, {} instance(s)",
                    v.state.phase_name(),
                    v.state
                        .rollout
                        .as_ref()
                        .map(|r| (&r.to.version, &r.phase, &r.paused)),
                    v.state.instances.len()
                );
                lock(&self.world).violation(what);
                return;
            }
            if v.state.rollout.is_none() && v.state.stable.is_none() {
                // Every release so far failed or was aborted: ship a good one.
                self.versions_deployed += 1;
                let version = format!("v{}", self.versions_deployed + 1);
                self.deploy(version).await;
            }
            if let Some(r) = &v.state.rollout {
                if r.paused.is_some() {
                    let _ = self.operate(Input::Resume { by: "sim".into() }).await;
                } else if r.awaiting_approval(&v.state.params) {
                    let _ = self.operate(Input::Approve { by: "sim".into() }).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        self.check_at_rest();
    }

    /// What must hold once the app has settled.
    fn check_at_rest(&mut self) {
        let Some(v) = self.view() else { return };
        let mut w = lock(&self.world);
        let now = w.now();
        // No orphan and no duplicate: the processes are exactly the known instances.
        let mut running: Vec<String> = w
            .instances
            .values()
            .filter(|i| i.alive(now))
            .map(|i| i.handle.instance_id.clone())
            .collect();
        running.sort();
        let mut known: Vec<String> = v.state.instances.iter().map(|i| i.id.clone()).collect();
        known.sort();
        if running != known {
            w.violation(format!(
                "at rest the running instances {running:?} are not the known ones {known:?}"
            ));
        }
        // Routing: exactly the known instances, all of the stable version.
        let stable = v.state.stable.as_ref().map(|s| s.version.clone());
        let mut routed: Vec<(String, String)> = w
            .router
            .live
            .apps
            .iter()
            .filter(|a| a.app == APP)
            .flat_map(|a| a.versions.iter())
            .flat_map(|ver| {
                ver.backends
                    .iter()
                    .map(|b| (b.id.clone(), ver.version.clone()))
            })
            .collect();
        routed.sort();
        let expected: Vec<(String, String)> = v
            .state
            .instances
            .iter()
            .map(|i| (i.id.clone(), i.version.clone()))
            .collect();
        let mut expected = expected;
        expected.sort();
        if routed != expected {
            w.violation(format!(
                "at rest the router routes {routed:?}, not the instances {expected:?}"
            ));
        }
        if let Some(stable) = &stable
            && let Some(other) = v.state.instances.iter().find(|i| &i.version != stable)
        {
            w.violation(format!(
                "at rest {} runs {} while the stable version is {stable}",
                other.id, other.version
            ));
        }
        drop(w);
        // Every rollout ended with its record closed, none lost, none doubled.
        let store = self.store.lock().unwrap_or_else(|p| p.into_inner());
        match store.list_history(APP) {
            Ok(history) => {
                let open: Vec<i64> = history
                    .iter()
                    .filter(|h| h.finished_ms.is_none())
                    .map(|h| h.id)
                    .collect();
                // A deploy refused after its record opened (its state could
                // not be written) was answered with an error: not accepted.
                let deploys = history
                    .iter()
                    .filter(|h| h.result != "interrupted" && h.result != "refused")
                    .count();
                drop(store);
                let mut w = lock(&self.world);
                if !open.is_empty() {
                    w.violation(format!("history records never closed: {open:?}"));
                }
                if deploys != self.report.deploys as usize {
                    w.violation(format!(
                        "{deploys} history records for {} accepted deploys",
                        self.report.deploys
                    ));
                }
            }
            Err(e) => {
                drop(store);
                lock(&self.world).violation(format!("cannot read the history: {e}"));
            }
        }
    }
}

/// Run seeds `from..from + count` on `threads` threads; returns the failing
/// reports (and the total).
pub fn run_many(from: u64, count: u64, threads: usize) -> (u64, Vec<SimReport>) {
    let next = Arc::new(std::sync::atomic::AtomicU64::new(from));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let end = from.saturating_add(count);
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            let (next, failures) = (next.clone(), failures.clone());
            s.spawn(move || {
                loop {
                    let seed = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if seed >= end {
                        break;
                    }
                    let report = run_seed(seed);
                    if !report.passed() {
                        failures
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(report);
                    }
                }
            });
        }
    });
    let mut failures = std::mem::take(&mut *failures.lock().unwrap_or_else(|p| p.into_inner()));
    failures.sort_by_key(|r| r.seed);
    (count, failures)
}
