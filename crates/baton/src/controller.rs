//! The controller: runs the engine for one app.
//!
//! Every input goes through [`AppController::apply`]: the engine computes the
//! next state, the state and its events are committed to SQLite (with a
//! generation fence), the routing table is pushed to the router, and only then
//! are the engine's actions carried out. Actions run in background tasks that
//! report back as new inputs, so the loop never blocks on a slow instance.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use baton_driver::{DynDriver, InstanceHandle, InstanceStatus, LaunchSpec};
use baton_engine::{
    Action, AppState, EngineError, ExitCause, Input, Outcome, Params, Release, RolloutKind,
};
use baton_spec::{AppSpec, DriverSpec, StrategySpec, TemplateVars};
use baton_store::{NewEvent, NewHistory, Store};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::effects::{Clock, Probe};
use crate::health;
use crate::routing::RouterLink;

/// Shared pieces every app controller uses: the store and the effects on the
/// world (driver, router, readiness probe, clock), each behind a trait so the
/// deterministic simulation runs this same controller (see `crate::sim`).
pub struct Shared {
    pub store: Arc<std::sync::Mutex<Store>>,
    pub driver: Arc<dyn DynDriver>,
    pub router: RouterLink,
    pub probe: Arc<dyn Probe>,
    pub clock: Arc<dyn Clock>,
    pub data_dir: PathBuf,
    /// Path of the running baton executable, for the `{baton}` placeholder.
    pub baton_exe: String,
}

impl Shared {
    /// Milliseconds since the epoch; the engine gets time only through this.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    pub fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        // A panic while holding the lock leaves SQLite consistent (every write is
        // one transaction), so a poisoned lock is safe to reuse.
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Requests from the API to an app controller.
pub enum Command {
    /// A new spec was applied.
    Apply {
        spec: Box<AppSpec>,
        reply: oneshot::Sender<anyhow::Result<()>>,
    },
    Deploy {
        request: DeployRequest,
        reply: oneshot::Sender<Result<DeployAccepted, CommandError>>,
    },
    /// An operator's command on a live rollout: abort, promote, pause,
    /// resume or approve.
    Operate {
        input: Input,
        reply: oneshot::Sender<Result<(), CommandError>>,
    },
    /// Drain and stop every instance (used by `baton down` and the demo).
    StopAll { reply: oneshot::Sender<()> },
    /// `baton rollback`: during a rollout an abort (traffic back to the stable
    /// release at once); otherwise a rollout to `to_revision`, or to the
    /// release that was stable before the current one.
    Rollback {
        to_revision: Option<u32>,
        operator: String,
        reply: oneshot::Sender<Result<DeployAccepted, CommandError>>,
    },
    /// `baton retry`: the last failed or aborted release again.
    Retry {
        operator: String,
        reply: oneshot::Sender<Result<DeployAccepted, CommandError>>,
    },
    /// `baton delete`: take every instance out of routing, wait for its
    /// requests in flight, stop it, and close a rollout in flight.
    Delete { reply: oneshot::Sender<()> },
}

/// What `deploy` (and `rollback`, `retry`) asks for.
#[derive(Debug, Clone)]
pub struct DeployRequest {
    pub version: String,
    /// Environment variables of this release.
    pub env: BTreeMap<String, String>,
    pub operator: String,
    pub kind: RolloutKind,
    /// Roll back to this existing revision instead of creating one.
    pub revision: Option<u32>,
    /// Start now even outside the app's upgrade windows.
    pub now: bool,
    /// Use this strategy for this rollout instead of the spec's.
    pub strategy: Option<StrategySpec>,
    /// Expected sha256 of the release's program (pre-flight check).
    pub sha256: Option<String>,
}

impl DeployRequest {
    pub fn new(version: String, operator: String, kind: RolloutKind) -> Self {
        DeployRequest {
            version,
            env: BTreeMap::new(),
            operator,
            kind,
            revision: None,
            now: false,
            strategy: None,
            sha256: None,
        }
    }
}

/// Accepted deploy.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeployAccepted {
    pub revision: u32,
    pub history_id: i64,
    pub version: String,
    /// Already running this release: nothing to do.
    pub unchanged: bool,
    /// Outside every upgrade window: when it starts, on the window's clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waits_for_window: Option<String>,
}

/// Why a command was refused. Nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("{0}")]
    BadRequest(String),
    /// A pre-flight check failed.
    #[error("{0}")]
    Preflight(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// Handle held by the API for one app.
#[derive(Clone)]
pub struct AppHandle {
    pub commands: mpsc::Sender<Command>,
    pub status: tokio::sync::watch::Receiver<Arc<AppView>>,
    /// The newest analysis measurement (for `status`).
    pub last_check: tokio::sync::watch::Receiver<Option<LastCheck>>,
}

/// One analysis measurement of a rollout, as `status` shows it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LastCheck {
    pub history_id: i64,
    pub at_ms: i64,
    /// Within every limit (a failing one counts towards `failure_limit`).
    pub passed: bool,
    /// Each measured value against its limit, e.g. `error rate 0.4% ≤ 5%, p99 12 ms ≤ 500 ms`.
    pub text: String,
}

/// What `status` shows: the engine state plus the spec it runs under.
#[derive(Debug)]
pub struct AppView {
    pub state: AppState,
    pub generation: u64,
    /// The spec the app runs under, with a one-off `deploy --strategy` in place
    /// while its rollout runs.
    pub spec: AppSpec,
    /// Generation of the newest routing table published for this state.
    pub routing_generation: u64,
}

/// Reports from background tasks back to the controller loop.
type Observation = Input;

pub struct AppController {
    shared: Arc<Shared>,
    spec: AppSpec,
    state: AppState,
    generation: u64,
    observations_tx: mpsc::UnboundedSender<Observation>,
    observations: mpsc::UnboundedReceiver<Observation>,
    commands: mpsc::Receiver<Command>,
    status: tokio::sync::watch::Sender<Arc<AppView>>,
    /// Readiness checkers by instance id.
    checkers: BTreeMap<String, CancellationToken>,
    /// Drain/stop tasks already running, by instance id (so a restart does not double them).
    in_progress: HashMap<String, &'static str>,
    /// Analysis of the rollout in flight.
    analysis: AnalysisRun,
    /// Instances that got their warm-up requests.
    warmed: std::collections::HashSet<String>,
    /// `deploy --strategy`: the strategy of the rollout in flight when it is
    /// not the spec's own.
    strategy_override: Option<StrategySpec>,
    /// History id of the rollout whose smoke tests are running or done.
    checks_started_for: Option<(i64, usize)>,
    /// Generation of the newest routing table published for this app's state:
    /// a drain waits until the router acknowledges it (or a newer one).
    routing_generation: u64,
    /// Instances whose start is in flight (the driver has not answered yet).
    starting: std::collections::HashSet<String>,
    shutdown: CancellationToken,
    /// The newest analysis measurement, for `status`.
    last_check: tokio::sync::watch::Sender<Option<LastCheck>>,
}

/// Resolve the spec's strategy into engine parameters.
pub fn params_of(spec: &AppSpec) -> Params {
    Params {
        pause_on_deadline: spec.on_progress_deadline == baton_spec::OnProgressDeadline::Pause,
        ..strategy_params(spec)
    }
}

/// The strategy part of the engine parameters.
fn strategy_params(spec: &AppSpec) -> Params {
    use baton_engine::{Step, Strategy};
    use baton_spec::CanaryStep;
    let n = spec.instances;
    let ms = |d: Duration| d.as_millis() as u64;
    match &spec.strategy {
        StrategySpec::Rolling(r) => Params {
            instances: n,
            max_surge: r.max_surge.resolve_up(n),
            max_unavailable: r.max_unavailable.resolve_down(n),
            min_ready_ms: ms(r.min_ready),
            progress_deadline_ms: ms(r.progress_deadline),
            max_restarts: r.max_restarts,
            pause_on_deadline: false,
            strategy: Strategy::Rolling,
        },
        StrategySpec::Canary(c) => with_checks(
            spec,
            0,
            Params {
                instances: n,
                // A first release (nothing to compare with) comes up all at once.
                max_surge: n,
                max_unavailable: 0,
                min_ready_ms: ms(c.min_ready),
                progress_deadline_ms: ms(c.progress_deadline),
                max_restarts: c.max_restarts,
                pause_on_deadline: false,
                strategy: Strategy::Stepped {
                    steps: c
                        .steps
                        .iter()
                        .map(|s| match s {
                            CanaryStep::SetWeight(p) => Step::SetWeight { percent: *p },
                            CanaryStep::Pause(d) => Step::Pause {
                                duration_ms: d.map(ms),
                            },
                            CanaryStep::Approval => Step::Approval,
                            CanaryStep::SetCanaryScale(k) => Step::SetScale { instances: *k },
                            CanaryStep::Analysis(d) => Step::Analysis {
                                duration_ms: ms(*d),
                            },
                            CanaryStep::Mirror {
                                percent, duration, ..
                            } => Step::Mirror {
                                percent: *percent,
                                duration_ms: ms(*duration),
                            },
                        })
                        .collect(),
                },
            },
        ),
        StrategySpec::BlueGreen(b) => with_checks(
            spec,
            1,
            Params {
                instances: n,
                max_surge: n,
                max_unavailable: 0,
                min_ready_ms: ms(b.min_ready),
                progress_deadline_ms: ms(b.progress_deadline),
                max_restarts: b.max_restarts,
                pause_on_deadline: false,
                strategy: Strategy::Stepped {
                    steps: vec![
                        Step::SetScale { instances: n },
                        match b.auto_promote_after {
                            Some(d) => Step::Pause {
                                duration_ms: Some(ms(d)),
                            },
                            None => Step::Approval,
                        },
                        Step::SetWeight { percent: 100 },
                        Step::ScaleDownDelay {
                            duration_ms: ms(b.scale_down_delay),
                        },
                    ],
                },
            },
        ),
    }
}

/// Smoke tests run as a `Checks` step at `at` (before any user traffic).
fn with_checks(spec: &AppSpec, at: usize, mut params: Params) -> Params {
    if let baton_engine::Strategy::Stepped { steps } = &mut params.strategy
        && !spec.hooks.smoke.is_empty()
    {
        steps.insert(at.min(steps.len()), baton_engine::Step::Checks);
    }
    params
}

/// The strategy `deploy --strategy NAME` uses: the spec's own when it is of
/// that kind, otherwise that kind with baton's defaults.
pub fn strategy_by_name(spec: &AppSpec, name: &str) -> Result<StrategySpec, String> {
    use baton_spec::{
        BlueGreenSpec, CanarySpec, CanaryStep, HeaderMatch, IntOrPercent, RollingSpec,
    };
    let name = name.replace('_', "-");
    if strategy_name(spec) == name {
        return Ok(spec.strategy.clone());
    }
    const DEADLINE: Duration = Duration::from_secs(600);
    match name.as_str() {
        "rolling" => Ok(StrategySpec::Rolling(RollingSpec {
            max_surge: IntOrPercent::Percent(25),
            max_unavailable: IntOrPercent::Percent(25),
            min_ready: Duration::ZERO,
            progress_deadline: DEADLINE,
            max_restarts: 3,
        })),
        "canary" => Ok(StrategySpec::Canary(CanarySpec {
            steps: vec![
                CanaryStep::SetWeight(10),
                CanaryStep::Pause(Some(Duration::from_secs(30))),
                CanaryStep::SetWeight(50),
                CanaryStep::Pause(Some(Duration::from_secs(30))),
                CanaryStep::SetWeight(100),
            ],
            min_ready: Duration::ZERO,
            progress_deadline: DEADLINE,
            max_restarts: 3,
            header_route: None,
            sticky: false,
            shielding: false,
        })),
        "blue-green" => Ok(StrategySpec::BlueGreen(BlueGreenSpec {
            preview_listen: None,
            preview_header: HeaderMatch {
                name: "X-Baton-Preview".into(),
                equals: "1".into(),
            },
            auto_promote_after: None,
            scale_down_delay: Duration::from_secs(30),
            min_ready: Duration::ZERO,
            progress_deadline: DEADLINE,
            max_restarts: 3,
        })),
        other => Err(format!(
            "unknown strategy {other:?}: use rolling, blue-green or canary"
        )),
    }
}

pub fn strategy_name(spec: &AppSpec) -> &'static str {
    strategy_kind(&spec.strategy)
}

/// `rolling`, `canary` or `blue-green`.
pub fn strategy_kind(strategy: &StrategySpec) -> &'static str {
    match strategy {
        StrategySpec::Rolling(_) => "rolling",
        StrategySpec::Canary(_) => "canary",
        StrategySpec::BlueGreen(_) => "blue-green",
    }
}

impl AppController {
    /// Load (or create) the app's state and start its controller task.
    pub fn spawn(
        shared: Arc<Shared>,
        spec: AppSpec,
        shutdown: CancellationToken,
    ) -> anyhow::Result<AppHandle> {
        let (state, generation) = {
            let store = shared.store();
            match store.load_state(&spec.name)? {
                Some(rec) => (
                    serde_json::from_str::<AppState>(&rec.state_json)
                        .context("stored rollout state is unreadable")?,
                    rec.generation,
                ),
                None => (AppState::new(spec.name.clone(), params_of(&spec)), 0),
            }
        };
        let (observations_tx, observations) = mpsc::unbounded_channel();
        let (commands_tx, commands) = mpsc::channel(64);
        let view = Arc::new(AppView {
            state: state.clone(),
            generation,
            spec: spec.clone(),
            routing_generation: 0,
        });
        let (status, status_rx) = tokio::sync::watch::channel(view);
        let (last_check, last_check_rx) = tokio::sync::watch::channel(None);
        let controller = AppController {
            shared,
            spec,
            state,
            generation,
            observations_tx,
            observations,
            commands,
            status,
            checkers: BTreeMap::new(),
            in_progress: HashMap::new(),
            analysis: AnalysisRun::default(),
            warmed: Default::default(),
            strategy_override: None,
            checks_started_for: None,
            routing_generation: 0,
            starting: Default::default(),
            shutdown,
            last_check,
        };
        // Shutdown ends the controller wherever it is, even mid-step: what is
        // committed is on disk, and a restart resumes from there, exactly as
        // after kill -9.
        let stop = controller.shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                biased;
                _ = stop.cancelled() => {}
                _ = controller.run() => {}
            }
        });
        Ok(AppHandle {
            commands: commands_tx,
            status: status_rx,
            last_check: last_check_rx,
        })
    }

    async fn run(mut self) {
        if let Err(e) = self.resume().await {
            warn!(app = %self.spec.name, error = %format!("{e:#}"), "resuming after restart failed");
        }
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Cancelled by a command of this very loop (`delete`): no more ticks.
            if self.shutdown.is_cancelled() {
                break;
            }
            // Biased: a fixed priority (shutdown, commands, observations, tick)
            // instead of a random pick, so runs replay exactly under simulation.
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                Some(cmd) = self.commands.recv() => {
                    if self.command(cmd).await == Flow::Stop {
                        break;
                    }
                }
                Some(obs) = self.observations.recv() => self.observe(obs).await,
                _ = tick.tick() => {
                    self.watch_exits().await;
                    self.apply_logged(Input::Tick).await;
                    self.analyze().await;
                    self.start_checks_if_due();
                    self.follow_window().await;
                }
            }
        }
        for token in self.checkers.values() {
            token.cancel();
        }
    }

    /// After a restart: find the processes the state refers to, adopt them,
    /// stop strays, and pick up drains and stops that were under way.
    async fn resume(&mut self) -> anyhow::Result<()> {
        if let Some(params) = self.restore_strategy()? {
            self.apply_logged(Input::UpdateParams { params }).await;
        }
        // The table for the stored state first: drains picked up below wait
        // for the router to acknowledge it.
        self.publish_routing();
        let found = self.shared.driver.discover(&self.discover_scope()).await?;
        let known: Vec<String> = self.state.instances.iter().map(|i| i.id.clone()).collect();
        // Instances of this app that the state does not know (started, then the
        // control plane died before recording them): stop them, no orphans.
        for f in found.iter().filter(|f| !known.contains(&f.instance_id)) {
            info!(instance = %f.instance_id, locator = %f.locator, "stopping a stray instance left by an earlier control plane");
            let _ = self
                .shared
                .driver
                .stop(&found_handle(f), self.stop_grace())
                .await;
        }
        for inst in self.state.instances.clone() {
            use baton_engine::InstancePhase as P;
            match &inst.phase {
                P::Pending => {
                    // The start was recorded but its outcome was not: an instance
                    // may exist without a known address. Stop it and let the engine
                    // start a fresh one.
                    if let Some(f) = found.iter().find(|f| f.instance_id == inst.id) {
                        let _ = self
                            .shared
                            .driver
                            .stop(&found_handle(f), self.stop_grace())
                            .await;
                    }
                    self.apply_logged(Input::Stopped {
                        id: inst.id.clone(),
                    })
                    .await;
                }
                P::Draining { .. } => self.spawn_drain(inst.id.clone()),
                P::Stopping => self.spawn_stop(inst.id.clone()),
                _ => {}
            }
        }
        // A rollout that finished just before a crash may not have closed its
        // history record.
        if let Some(f) = self.state.last_finished.clone() {
            let mut store = self.shared.store();
            let open = store
                .list_history(&self.spec.name)?
                .into_iter()
                .any(|h| h.id == f.history_id && h.finished_ms.is_none());
            if open {
                store.finish_history(
                    f.history_id,
                    f.outcome.as_str(),
                    &f.notes,
                    self.shared.now_ms(),
                )?;
            }
        }
        self.watch_exits().await;
        self.apply_logged(Input::Tick).await;
        self.sync_checkers();
        // Status shows the restored strategy even if nothing moved.
        self.publish_view();
        Ok(())
    }

    /// After a restart: the rollout in flight keeps the one-off strategy it was
    /// started with; without one in flight, the spec's strategy holds. History
    /// records opened by a deploy that never reached the engine are closed.
    /// Returns the parameters to put back when the stored ones are not the spec's.
    fn restore_strategy(&mut self) -> anyhow::Result<Option<Params>> {
        let current = self.state.rollout.as_ref().map(|r| r.history_id);
        let mut store = self.shared.store();
        if let Some(id) = current
            && let Some(json) = store.rollout_strategy(id)?
        {
            self.strategy_override =
                Some(serde_json::from_str(&json).context("stored one-off strategy is unreadable")?);
        }
        let finished = self.state.last_finished.as_ref().map(|f| f.history_id);
        for h in store.list_history(&self.spec.name)? {
            if h.finished_ms.is_none() && Some(h.id) != current && Some(h.id) != finished {
                info!(app = %self.spec.name, history = h.id, "closing the record of a deploy that never started");
                store.finish_history(
                    h.id,
                    "interrupted",
                    "the control plane stopped before this rollout started; nothing changed",
                    self.shared.now_ms(),
                )?;
            }
        }
        drop(store);
        // A one-off strategy's parameters committed, then the control plane
        // stopped before its rollout did: back to the spec's.
        Ok(
            (current.is_none() && self.state.params != params_of(&self.spec))
                .then(|| params_of(&self.spec)),
        )
    }

    /// The spec the rollout in flight runs under (`deploy --strategy` may
    /// replace the strategy for one rollout).
    fn effective_spec(&self) -> std::borrow::Cow<'_, AppSpec> {
        match &self.strategy_override {
            Some(st) if self.state.rollout.is_some() => {
                let mut spec = self.spec.clone();
                spec.strategy = st.clone();
                std::borrow::Cow::Owned(spec)
            }
            _ => std::borrow::Cow::Borrowed(&self.spec),
        }
    }

    fn stop_grace(&self) -> Duration {
        self.spec.driver.stop_grace()
    }

    async fn command(&mut self, cmd: Command) -> Flow {
        match cmd {
            Command::Apply { spec, reply } => {
                let routes_before = crate::routing::app_routes(&self.effective_spec(), &self.state);
                self.spec = *spec;
                // A one-off strategy in flight keeps running its own steps.
                let params = params_of(&self.effective_spec());
                let result = self
                    .apply(Input::UpdateParams { params })
                    .await
                    .map_err(|e| anyhow::anyhow!(e));
                // A spec change alone (a new `listen`, traffic settings) changes
                // the app's routes without any engine transition.
                if crate::routing::app_routes(&self.effective_spec(), &self.state) != routes_before
                {
                    self.publish_routing();
                }
                self.publish_view();
                let _ = reply.send(result.map(|_| ()));
            }
            Command::Delete { reply } => {
                self.delete().await;
                let _ = reply.send(());
                // The loop ends here: nothing restarts the stopped instances.
                return Flow::Stop;
            }
            Command::Deploy { request, reply } => {
                let result = self.deploy(request).await;
                self.reply_once_routed(reply, result);
            }
            Command::Operate { input, reply } => {
                let result = self.apply(input).await;
                self.reply_once_routed(reply, result);
            }
            Command::Rollback {
                to_revision,
                operator,
                reply,
            } => {
                let result = self.rollback(to_revision, operator).await;
                self.reply_once_routed(reply, result);
            }
            Command::Retry { operator, reply } => {
                let result = self.retry(operator).await;
                self.reply_once_routed(reply, result);
            }
            Command::StopAll { reply } => {
                self.stop_all(Drains::Skip).await;
                let _ = reply.send(());
                // Nothing may react to the instances just stopped (a crash
                // would start a replacement that outlives the control plane).
                return Flow::Stop;
            }
        }
        Flow::Continue
    }

    async fn deploy(&mut self, request: DeployRequest) -> Result<DeployAccepted, CommandError> {
        let DeployRequest {
            version,
            env,
            operator,
            kind,
            revision,
            now,
            strategy,
            sha256,
        } = request;
        if let Some(r) = self.state.rollout.clone()
            && now
            && r.not_before_ms.is_some()
            && r.to.version == version
            && revision.is_none_or(|n| n == r.to.revision)
        {
            // `deploy --now` of the release waiting for its window: start it.
            self.apply(Input::Deploy {
                to: r.to.clone(),
                kind: r.kind,
                operator,
                history_id: r.history_id,
                not_before_ms: None,
            })
            .await?;
            return Ok(DeployAccepted {
                revision: r.to.revision,
                history_id: r.history_id,
                version,
                unchanged: false,
                waits_for_window: None,
            });
        }
        if let Some(r) = &self.state.rollout {
            return Err(EngineError::RolloutInProgress {
                app: self.spec.name.clone(),
                version: r.to.version.clone(),
            }
            .into());
        }
        let app = self.spec.name.clone();
        let internal = |e: baton_store::StoreError| CommandError::Internal(e.to_string());
        self.preflight(&version, sha256.as_deref()).await?;
        let env_json =
            serde_json::to_string(&env).map_err(|e| CommandError::Internal(e.to_string()))?;
        let rev = {
            let mut store = self.shared.store();
            match revision {
                Some(n) => store
                    .get_revision(&app, n)
                    .map_err(internal)?
                    .ok_or_else(|| {
                        CommandError::BadRequest(format!(
                            "{app} has no revision {n}; `baton history {app}` lists them"
                        ))
                    })?,
                None => {
                    // Same version and env as the stable revision: nothing to do.
                    if let Some(stable) = &self.state.stable
                        && let Some(cur) = store
                            .get_revision(&app, stable.revision)
                            .map_err(internal)?
                        && cur.version == version
                        && cur.env_json == env_json
                    {
                        return Ok(DeployAccepted {
                            revision: cur.number,
                            history_id: 0,
                            version,
                            unchanged: true,
                            waits_for_window: None,
                        });
                    }
                    let spec_json = serde_json::to_string(&self.spec)
                        .map_err(|e| CommandError::Internal(e.to_string()))?;
                    store
                        .create_revision(
                            &app,
                            &version,
                            &env_json,
                            &spec_json,
                            &operator,
                            self.shared.now_ms(),
                        )
                        .map_err(internal)?
                }
            }
        };
        // A one-off strategy is recorded with the rollout, so that a restarted
        // control plane runs (and shows) the same one.
        let one_off = strategy.filter(|s| *s != self.spec.strategy);
        let strategy_json = one_off
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| CommandError::Internal(e.to_string()))?;
        let history_id = self
            .shared
            .store()
            .start_history(
                &NewHistory {
                    app: app.clone(),
                    revision: rev.number,
                    from_version: self.state.stable.as_ref().map(|s| s.version.clone()),
                    to_version: rev.version.clone(),
                    environment: self.spec.environment.clone(),
                    operator: operator.clone(),
                    strategy: strategy_kind(one_off.as_ref().unwrap_or(&self.spec.strategy))
                        .to_string(),
                    kind: match kind {
                        RolloutKind::Deploy => "deploy".into(),
                        RolloutKind::Rollback => "rollback".into(),
                    },
                    strategy_json,
                },
                self.shared.now_ms(),
            )
            .map_err(internal)?;
        if let Some(strategy) = one_off {
            let mut spec = self.spec.clone();
            spec.strategy = strategy.clone();
            self.strategy_override = Some(strategy);
            self.apply(Input::UpdateParams {
                params: params_of(&spec),
            })
            .await?;
        }
        let not_before_ms = if now {
            None
        } else {
            crate::windows::next_start_ms(&self.spec, self.shared.now_ms())
        };
        let waits_for_window = not_before_ms
            .zip(self.spec.upgrade_windows.as_ref())
            .map(|(start, w)| crate::windows::describe_wait(w, start, self.shared.now_ms()));
        let input = Input::Deploy {
            to: Release {
                revision: rev.number,
                version: rev.version.clone(),
            },
            kind,
            operator,
            history_id,
            not_before_ms: if now {
                None
            } else {
                crate::windows::next_start_ms(&self.spec, self.shared.now_ms())
            },
        };
        if let Err(e) = self.apply(input).await {
            let _ = self.shared.store().finish_history(
                history_id,
                "refused",
                &e.to_string(),
                self.shared.now_ms(),
            );
            return Err(e);
        }
        Ok(DeployAccepted {
            revision: rev.number,
            history_id,
            version: rev.version,
            unchanged: false,
            waits_for_window,
        })
    }

    /// `baton rollback` (see [`Command::Rollback`]).
    async fn rollback(
        &mut self,
        to_revision: Option<u32>,
        operator: String,
    ) -> Result<DeployAccepted, CommandError> {
        let app = self.spec.name.clone();
        if let Some(r) = &self.state.rollout {
            // During a rollout (a blue-green scale-down delay included) a
            // rollback is an abort: traffic returns to the stable release at once.
            let Some(from) = r.from.clone() else {
                return Err(CommandError::BadRequest(format!(
                    "{app}'s first release is still rolling out; there is nothing to roll back to"
                )));
            };
            let history_id = r.history_id;
            self.apply(Input::Abort {
                by: operator,
                reason: "rollback requested".into(),
            })
            .await?;
            return Ok(DeployAccepted {
                revision: from.revision,
                history_id,
                version: from.version,
                unchanged: false,
                waits_for_window: None,
            });
        }
        let internal = |e: baton_store::StoreError| CommandError::Internal(e.to_string());
        let current = self.state.stable.as_ref().map(|r| r.revision);
        let target = match to_revision {
            Some(n) => n,
            None => {
                // The release that was stable before the current one: walk the
                // successful releases newest first, past the current one.
                let history = self.shared.store().list_history(&app).map_err(internal)?;
                let mut seen_current = false;
                let mut previous = None;
                for h in history.iter().filter(|h| h.result == "succeeded") {
                    if !seen_current {
                        seen_current = Some(h.revision) == current;
                    } else if Some(h.revision) != current {
                        previous = Some(h.revision);
                        break;
                    }
                }
                previous.ok_or_else(|| {
                    CommandError::BadRequest(format!(
                        "{app} has no earlier successful release to roll back to; use --to-revision N (see `baton history {app}`)"
                    ))
                })?
            }
        };
        let rev = self
            .shared
            .store()
            .get_revision(&app, target)
            .map_err(internal)?
            .ok_or_else(|| {
                CommandError::BadRequest(format!(
                    "{app} has no revision {target}; `baton history {app}` lists them"
                ))
            })?;
        if current == Some(target) {
            return Err(CommandError::BadRequest(format!(
                "{app} already runs revision {target} ({})",
                rev.version
            )));
        }
        self.deploy(DeployRequest {
            revision: Some(target),
            now: true,
            ..DeployRequest::new(rev.version, operator, RolloutKind::Rollback)
        })
        .await
    }

    /// `baton retry` (see [`Command::Retry`]).
    async fn retry(&mut self, operator: String) -> Result<DeployAccepted, CommandError> {
        let app = self.spec.name.clone();
        let last = self
            .state
            .last_finished
            .clone()
            .filter(|f| f.outcome != Outcome::Succeeded)
            .ok_or_else(|| {
                CommandError::BadRequest(format!(
                    "{app}'s last rollout did not fail or abort; there is nothing to retry"
                ))
            })?;
        let record = self
            .shared
            .store()
            .list_history(&app)
            .map_err(|e| CommandError::Internal(e.to_string()))?
            .into_iter()
            .find(|h| h.id == last.history_id)
            .ok_or_else(|| {
                CommandError::Internal(format!("history record {} is missing", last.history_id))
            })?;
        self.deploy(DeployRequest {
            revision: Some(record.revision),
            ..DeployRequest::new(record.to_version, operator, RolloutKind::Deploy)
        })
        .await
    }

    /// A report from a background task. A process that came up after its
    /// instance was already given up (drained while still starting) is stopped
    /// here, so it cannot linger as an orphan.
    async fn observe(&mut self, obs: Observation) {
        // Warm-up: a new instance of the release being rolled out gets its
        // warm-up requests before the engine hears it is ready (and routes to it).
        if let Input::Ready { id } = &obs
            && let Some(warmup) = self.spec.hooks.warmup.clone()
            && !self.warmed.contains(id)
            && let Some(inst) = self.state.instance(id)
            && self
                .state
                .rollout
                .as_ref()
                .is_some_and(|r| r.to.revision == inst.revision)
            && let Some(addr) = inst
                .address
                .as_deref()
                .and_then(|a| a.parse::<SocketAddr>().ok())
        {
            self.warmed.insert(id.clone());
            let (id, tx) = (id.clone(), self.observations_tx.clone());
            tokio::spawn(async move {
                let done =
                    crate::hooks::warm_up(addr, &warmup.path, warmup.requests, warmup.concurrency)
                        .await;
                info!(instance = %id, requests = done, "warm-up done");
                let _ = tx.send(Input::Ready { id });
            });
            return;
        }
        if let Input::Started { id, .. } | Input::StartFailed { id, .. } = &obs {
            self.starting.remove(id);
        }
        if let Input::Started { id, handle, .. } = &obs {
            let pending = self
                .state
                .instance(id)
                .is_some_and(|i| i.phase == baton_engine::InstancePhase::Pending);
            if !pending {
                info!(instance = %id, "stopping an instance that started after it was given up");
                let _ = self.shared.driver.stop(handle, self.stop_grace()).await;
                return;
            }
        }
        self.apply_logged(obs).await;
    }

    /// Checks that must pass before a rollout starts; a failure changes nothing.
    async fn preflight(&self, version: &str, sha256: Option<&str>) -> Result<(), CommandError> {
        let mut instance_memory = Vec::new();
        for handle in self
            .state
            .instances
            .iter()
            .filter_map(|i| self.handle_of(&i.id))
        {
            if let Some(sample) = self.shared.driver.sample(&handle).await {
                instance_memory.push(sample.memory_limit_bytes.unwrap_or(sample.memory_bytes));
            }
        }
        let plan = baton_engine::plan(
            &self.state,
            Release {
                revision: u32::MAX,
                version: version.to_string(),
            },
        )?;
        let extra = plan
            .peak_instances
            .saturating_sub(self.state.instances.len() as u32);
        let serves = self
            .shared
            .router
            .listening(&self.spec.name, self.spec.listen)
            .await;
        let results = crate::preflight::run(&crate::preflight::Preflight {
            spec: &self.spec,
            version,
            baton_exe: &self.shared.baton_exe,
            data_dir: &self.shared.data_dir,
            extra_instances: extra,
            instance_memory: &instance_memory,
            sha256,
            router_serves_app: serves,
            image: None,
        });
        let mut failed: Vec<String> = results
            .iter()
            .filter(|r| !r.ok)
            .map(|r| format!("{}: {}", r.check, r.detail))
            .collect();
        // The user's own checks (a vulnerability scanner, a dependency check...).
        for check in &self.spec.preflight {
            let vars = TemplateVars {
                version,
                port: 0,
                app: &self.spec.name,
                instance: "preflight",
                baton: &self.shared.baton_exe,
            };
            let argv: Vec<String> = check
                .command
                .iter()
                .map(|a| baton_spec::render_template(a, &vars))
                .collect();
            if let Err(e) = crate::hooks::run_command(&check.name, &argv, check.timeout).await {
                failed.push(e);
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(CommandError::Preflight(format!(
                "pre-flight checks failed, nothing was changed:\n  {}",
                failed.join("\n  ")
            )))
        }
    }

    async fn apply_logged(&mut self, input: Input) {
        if let Err(e) = self.apply(input).await {
            warn!(app = %self.spec.name, error = %e, "input not applied");
        }
    }

    /// One engine step: compute, persist, publish routing, act.
    async fn apply(&mut self, input: Input) -> Result<(), CommandError> {
        let now = self.shared.now_ms();
        let (next, actions) = baton_engine::step(&self.state, input, now)?;
        if next == self.state && actions.is_empty() {
            return Ok(());
        }
        let events: Vec<NewEvent> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Event { kind, message } => Some(NewEvent {
                    kind: kind.clone(),
                    message: message.clone(),
                    fields_json: "{}".into(),
                }),
                _ => None,
            })
            .collect();
        let state_json =
            serde_json::to_string(&next).map_err(|e| CommandError::Internal(e.to_string()))?;
        // Durability first: nothing below happens unless this commit landed.
        let committed = self.shared.store().commit_transition(
            &self.spec.name,
            self.generation,
            &state_json,
            &events,
            now,
        );
        let generation = match committed {
            Ok(g) => g,
            Err(baton_store::StoreError::GenerationConflict { expected, found }) => {
                // Someone else wrote this app's state: what is on disk wins. Reload
                // it (and act on it) instead of failing every later commit.
                warn!(app = %self.spec.name, expected, found, "the stored state moved on; reloading it");
                self.reload_state()
                    .map_err(|e| CommandError::Internal(format!("{e:#}")))?;
                return Err(CommandError::Internal(format!(
                    "the state of {} changed underneath this command (generation {found}, not {expected}); it was reloaded: try again",
                    self.spec.name
                )));
            }
            Err(e) => return Err(CommandError::Internal(e.to_string())),
        };
        for e in &events {
            info!(app = %self.spec.name, kind = %e.kind, "{}", e.message);
        }
        let rollout_ended = self.state.rollout.is_some() && next.rollout.is_none();
        let routing_changed = crate::routing::app_routes(&self.effective_spec(), &next)
            != crate::routing::app_routes(&self.effective_spec(), &self.state);
        self.state = next;
        self.generation = generation;
        if routing_changed {
            self.publish_routing();
        }
        for action in actions {
            self.execute(action).await;
        }
        self.sync_checkers();
        if rollout_ended && self.strategy_override.take().is_some() {
            // The one-off strategy is done: back to the spec's own.
            let params = params_of(&self.spec);
            Box::pin(self.apply(Input::UpdateParams { params })).await?;
        }
        self.publish_view();
        Ok(())
    }

    /// Answer an operator's command once the router serves the routing it
    /// caused (an abort or a blue-green switch back is live when the CLI
    /// returns), without holding up this loop; a router that does not answer
    /// within [`REPLY_ACK_WAIT`] gets the reply sent anyway (status says why
    /// the routing is held).
    fn reply_once_routed<T: Send + 'static>(&self, reply: oneshot::Sender<T>, result: T) {
        let router = self.shared.router.clone();
        let generation = self.routing_generation;
        tokio::spawn(async move {
            let _ = tokio::time::timeout(REPLY_ACK_WAIT, router.acknowledged(generation)).await;
            let _ = reply.send(result);
        });
    }

    /// Show the current state to `status` readers.
    fn publish_view(&self) {
        self.status.send_replace(Arc::new(AppView {
            state: self.state.clone(),
            generation: self.generation,
            spec: self.effective_spec().into_owned(),
            routing_generation: self.routing_generation,
        }));
    }

    /// Load the app's state from the store again (after a generation conflict)
    /// and make routing and checkers follow it.
    fn reload_state(&mut self) -> anyhow::Result<()> {
        let rec = self
            .shared
            .store()
            .load_state(&self.spec.name)?
            .context("the app's state vanished from the store")?;
        self.state =
            serde_json::from_str(&rec.state_json).context("stored rollout state is unreadable")?;
        self.generation = rec.generation;
        self.publish_routing();
        self.sync_checkers();
        self.publish_view();
        Ok(())
    }

    /// Record this app's routes for its current state in the desired table
    /// (the router link delivers it and tracks the acknowledgement).
    fn publish_routing(&mut self) {
        let routes = crate::routing::app_routes(&self.effective_spec(), &self.state);
        self.routing_generation = self.shared.router.publish(routes);
    }

    async fn execute(&mut self, action: Action) {
        match action {
            Action::Start { id, revision, .. } => self.spawn_start(id, revision),
            Action::Drain { id } => self.spawn_drain(id),
            Action::Stop { id } => self.spawn_stop(id),
            Action::Event { .. } => {}
            Action::Finish {
                history_id,
                outcome,
                notes,
            } => {
                if let Err(e) = self.shared.store().finish_history(
                    history_id,
                    outcome.as_str(),
                    &notes,
                    self.shared.now_ms(),
                ) {
                    warn!(app = %self.spec.name, error = %e, "closing the history record failed");
                }
                if outcome != Outcome::Succeeded {
                    warn!(app = %self.spec.name, outcome = outcome.as_str(), %notes, "rollout did not succeed");
                }
            }
        }
    }

    fn spawn_start(&mut self, id: String, revision: u32) {
        self.starting.insert(id.clone());
        let shared = self.shared.clone();
        let obs = self.observations_tx.clone();
        let app = self.spec.name.clone();
        tokio::spawn(async move {
            let input = match launch(&shared, &app, &id, revision).await {
                Ok(handle) => Input::Started { id, handle },
                Err(e) => Input::StartFailed {
                    id,
                    error: format!("{e:#}"),
                },
            };
            let _ = obs.send(input);
        });
    }

    fn spawn_drain(&mut self, id: String) {
        if self.in_progress.insert(id.clone(), "drain") == Some("drain") {
            return;
        }
        let address = self
            .state
            .instance(&id)
            .and_then(|i| i.address.clone())
            .and_then(|a| a.parse::<SocketAddr>().ok());
        let router = self.shared.router.clone();
        let obs = self.observations_tx.clone();
        let timeout = self.spec.drain_timeout;
        // The newest table published for this state has the instance out of
        // routing; until the router acknowledges it, it may still send requests.
        let generation = self.routing_generation;
        let app = self.spec.name.clone();
        tokio::spawn(async move {
            router.acknowledged(generation).await;
            if let Some(address) = address
                && let crate::routing::Drain::TimedOut { in_flight } =
                    router.wait_idle(address, timeout).await
            {
                warn!(%app, instance = %id, in_flight, "drain timeout reached with requests in flight; stopping anyway");
            }
            let _ = obs.send(Input::Drained { id });
        });
    }

    fn spawn_stop(&mut self, id: String) {
        if self.in_progress.insert(id.clone(), "stop") == Some("stop") {
            return;
        }
        let handle = self.handle_of(&id);
        let shared = self.shared.clone();
        let obs = self.observations_tx.clone();
        let grace = self.stop_grace();
        tokio::spawn(async move {
            if let Some(handle) = handle
                && let Err(e) = shared.driver.stop(&handle, grace).await
            {
                warn!(instance = %id, error = %e, "stopping instance failed");
            }
            let _ = obs.send(Input::Stopped { id });
        });
    }

    fn handle_of(&self, id: &str) -> Option<InstanceHandle> {
        self.state.instance(id).and_then(|i| i.handle.clone())
    }

    /// Where this app's instances can be: local processes, and the container
    /// endpoints of its revisions.
    fn discover_scope(&self) -> baton_driver::Scope {
        baton_driver::Scope {
            app: self.spec.name.clone(),
            container_endpoints: Vec::new(),
        }
    }

    /// Report instances whose process ended on its own.
    async fn watch_exits(&mut self) {
        use baton_engine::InstancePhase as P;
        let mut exited = Vec::new();
        for inst in &self.state.instances {
            if !matches!(
                inst.phase,
                P::Starting | P::Ready { .. } | P::Draining { .. }
            ) {
                continue;
            }
            let Some(handle) = self.handle_of(&inst.id) else {
                continue;
            };
            match self.shared.driver.status(&handle).await {
                InstanceStatus::Running => {}
                InstanceStatus::Exited(exit) => {
                    let cause = if exit.oom_killed {
                        ExitCause::OutOfMemory
                    } else {
                        ExitCause::Crashed
                    };
                    exited.push((inst.id.clone(), exit.to_string(), cause))
                }
                InstanceStatus::Gone => exited.push((
                    inst.id.clone(),
                    format!("{} gone", handle.locator),
                    ExitCause::Crashed,
                )),
            }
        }
        for (id, detail, cause) in exited {
            self.in_progress.remove(&id);
            self.apply_logged(Input::Exited { id, detail, cause }).await;
        }
    }

    /// Measure the new release on the router's metrics while it takes traffic
    /// (or mirrored traffic); a failure past the limit becomes an automatic
    /// rollback.
    async fn analyze(&mut self) {
        let Some(r) = self.state.rollout.clone() else {
            self.analysis = AnalysisRun::default();
            return;
        };
        if r.phase != baton_engine::RolloutPhase::Progressing || r.not_before_ms.is_some() {
            return;
        }
        if self.analysis.history_id != r.history_id {
            let last = self
                .shared
                .store()
                .last_event_of_kind(&self.spec.name, ANALYSIS_CHECK)
                .ok()
                .flatten();
            self.analysis = AnalysisRun {
                history_id: r.history_id,
                failures: recorded_failures(last.as_ref(), r.history_id),
                ..AnalysisRun::default()
            };
        }
        let mirror_limit = self.mirror_limit(&r);
        let cfg = crate::analysis::config_of(&self.spec);
        let receives_traffic = self
            .state
            .routing()
            .iter()
            .any(|g| g.version == r.to.version && g.weight > 0);
        let interval = cfg.as_ref().map_or(Duration::from_secs(1), |c| c.interval);
        let now = self.shared.now_ms();
        if now - self.analysis.last_ms < interval.as_millis() as i64 {
            return;
        }
        let judge_traffic = cfg.is_some() && receives_traffic;
        if !judge_traffic && mirror_limit.is_none() {
            return;
        }
        self.analysis.last_ms = now;
        let window = cfg.as_ref().map_or(Duration::from_secs(10), |c| c.window);
        let Ok(report) = self
            .shared
            .router
            .windows(window.as_secs().clamp(1, 64))
            .await
        else {
            return;
        };
        let stats_of = |version: &str| {
            report
                .apps
                .iter()
                .filter(|a| a.app == self.spec.name)
                .flat_map(|a| a.versions.iter())
                .find(|v| v.version == version)
                .map(|v| v.stats.clone())
        };
        let new = stats_of(&r.to.version);
        // Mirror step: the new release's answers compared with the stable ones.
        if let (Some((percent_limit, step)), Some(new)) = (mirror_limit, &new) {
            let compared = new.mirror_matches + new.mirror_mismatches;
            if compared >= 20 {
                let rate = new.mirror_mismatches as f64 / compared as f64;
                if rate > percent_limit {
                    let reason = format!(
                        "mirrored responses of {} differ from {}'s: {} of {compared} ({:.1}%) > limit {:.1}% (step {})",
                        r.to.version,
                        r.from.as_ref().map_or("stable", |f| f.version.as_str()),
                        new.mirror_mismatches,
                        rate * 100.0,
                        percent_limit * 100.0,
                        step + 1
                    );
                    self.apply_logged(Input::Analysis {
                        verdict: baton_engine::Verdict::Fail,
                        reason,
                    })
                    .await;
                    return;
                }
            }
        }
        let Some(cfg) = cfg.filter(|_| judge_traffic) else {
            return;
        };
        let counts = |s: Option<baton_router::metrics::WindowStats>| {
            s.map(|s| crate::analysis::WindowCounts {
                requests: s.requests,
                errors: s.status[4],
                p99: (s.requests > 0).then(|| Duration::from_micros(s.p99_us)),
                ..Default::default()
            })
            .unwrap_or_default()
        };
        let stable = r.from.as_ref().and_then(|f| stats_of(&f.version));
        // What this measurement saw against each limit, for `status` and the
        // events of passing checks.
        let seen =
            crate::analysis::describe_window(&cfg, counts(new.clone()), counts(stable.clone()));
        let verdict = crate::analysis::judge(&cfg, &r.to.version, counts(new), counts(stable));
        if let Some((v, _)) = &verdict {
            self.last_check.send_replace(Some(LastCheck {
                history_id: r.history_id,
                at_ms: now,
                passed: *v != baton_engine::Verdict::Fail,
                text: seen.clone(),
            }));
        }
        let position = baton_engine::progress(&self.state, now)
            .map(|p| format!(" (step {} of {})", p.number, p.count))
            .unwrap_or_default();
        match verdict {
            Some((baton_engine::Verdict::Fail, reason)) => {
                self.analysis.failures += 1;
                let limit = cfg.failure_limit.max(1);
                info!(app = %self.spec.name, failures = self.analysis.failures, %reason, "analysis failed");
                self.record_analysis_check(format!(
                    "analysis check failed ({} of {limit} in a row): {reason}",
                    self.analysis.failures
                ));
                if self.analysis.failures >= limit {
                    self.apply_logged(Input::Analysis {
                        verdict: baton_engine::Verdict::Fail,
                        reason,
                    })
                    .await;
                }
            }
            Some((baton_engine::Verdict::Pass, _)) => {
                // A passing check is recorded when the verdict changes (after
                // failures) and once per step, not at every interval: the
                // event log stays readable and still shows every step passed.
                if self.analysis.failures > 0 {
                    self.analysis.failures = 0;
                    self.record_analysis_check(format!(
                        "analysis check passed{position}: {seen}; failures in a row reset"
                    ));
                } else if self.analysis.passed_at_step != Some(r.step) {
                    self.record_analysis_check(format!("analysis check passed{position}: {seen}"));
                }
                self.analysis.passed_at_step = Some(r.step);
            }
            Some(_) | None => {}
        }
    }

    /// Records the failures in a row of the rollout's analysis (see [`AnalysisRun`]).
    fn record_analysis_check(&self, message: String) {
        let fields = AnalysisCheck {
            history_id: self.analysis.history_id,
            failures: self.analysis.failures,
        };
        let event = NewEvent {
            kind: ANALYSIS_CHECK.into(),
            message,
            fields_json: serde_json::to_string(&fields).unwrap_or_else(|_| "{}".into()),
        };
        if let Err(e) =
            self.shared
                .store()
                .append_event(&self.spec.name, &event, self.shared.now_ms())
        {
            warn!(app = %self.spec.name, error = %e, "cannot record the analysis check");
        }
    }

    /// At a mirror step: the mismatch rate allowed, and the step index.
    fn mirror_limit(&self, r: &baton_engine::Rollout) -> Option<(f64, usize)> {
        r.step_started_ms?;
        let baton_engine::Step::Mirror { .. } = r.current_step(&self.state.params)? else {
            return None;
        };
        let spec = self.effective_spec();
        let StrategySpec::Canary(c) = &spec.strategy else {
            return None;
        };
        // Steps of the spec map one to one onto the engine's, after the
        // optional leading smoke-test step.
        let offset = usize::from(!self.spec.hooks.smoke.is_empty());
        match c.steps.get(r.step.checked_sub(offset)?)? {
            baton_spec::CanaryStep::Mirror {
                max_mismatch_rate, ..
            } => Some((*max_mismatch_rate, r.step)),
            _ => None,
        }
    }

    /// At a `Checks` step, run the smoke tests once against the new release
    /// (its preview listener, or one of its instances directly).
    fn start_checks_if_due(&mut self) {
        let Some(r) = &self.state.rollout else { return };
        let at_checks = r.phase == baton_engine::RolloutPhase::Progressing
            && r.step_started_ms.is_some()
            && matches!(
                r.current_step(&self.state.params),
                Some(baton_engine::Step::Checks)
            );
        let key = (r.history_id, r.step);
        if !at_checks || self.checks_started_for == Some(key) {
            return;
        }
        let preview = match &self.effective_spec().strategy {
            StrategySpec::BlueGreen(b) => b.preview_listen,
            _ => None,
        };
        let base = preview
            .or_else(|| {
                self.state
                    .instances
                    .iter()
                    .filter(|i| i.revision == r.to.revision && i.is_routable())
                    .find_map(|i| i.address.as_deref()?.parse().ok())
            })
            .map(|a: SocketAddr| format!("http://{a}"));
        let Some(base) = base else { return };
        self.checks_started_for = Some(key);
        let smoke = self.spec.hooks.smoke.clone();
        let (version, app, baton) = (
            r.to.version.clone(),
            self.spec.name.clone(),
            self.shared.baton_exe.clone(),
        );
        let tx = self.observations_tx.clone();
        tokio::spawn(async move {
            let mut passed = Vec::new();
            for test in &smoke {
                let result = match test {
                    baton_spec::SmokeTest::Http {
                        name,
                        method,
                        path,
                        expect_status,
                        expect_body,
                        count,
                        concurrency,
                        timeout,
                    } => {
                        let check = crate::hooks::HttpCheck {
                            name: name.clone(),
                            method: method.clone(),
                            path: path.clone(),
                            expect_status: *expect_status,
                            expect_body: expect_body.clone(),
                            count: *count,
                            concurrency: *concurrency,
                            timeout: *timeout,
                        };
                        crate::hooks::run_http(&base, &check).await
                    }
                    baton_spec::SmokeTest::Command {
                        name,
                        command,
                        timeout,
                    } => {
                        let argv: Vec<String> = command
                            .iter()
                            .map(|a| {
                                baton_spec::render_template_with(
                                    a,
                                    &TemplateVars {
                                        version: &version,
                                        port: 0,
                                        app: &app,
                                        instance: "smoke",
                                        baton: &baton,
                                    },
                                    &[("preview_url", base.as_str())],
                                )
                            })
                            .collect();
                        crate::hooks::run_command(name, &argv, *timeout).await
                    }
                };
                match result {
                    Ok(summary) => passed.push(summary),
                    Err(reason) => {
                        let _ = tx.send(Input::ChecksFailed { reason });
                        return;
                    }
                }
            }
            let _ = tx.send(Input::ChecksPassed {
                summary: passed.join("; "),
            });
        });
    }

    /// Upgrade windows: a rollout still running when its window closes is
    /// paused (if the spec says so) and resumed when the next one opens.
    async fn follow_window(&mut self) {
        let Some(w) = &self.spec.upgrade_windows else {
            return;
        };
        if w.on_end != baton_spec::OnWindowEnd::Pause {
            return;
        }
        let Some(r) = &self.state.rollout else { return };
        if r.phase != baton_engine::RolloutPhase::Progressing || r.not_before_ms.is_some() {
            return;
        }
        let open = crate::windows::is_open(w, self.shared.now_ms());
        const BY_WINDOW: &str = "the upgrade window";
        match (&r.paused, open) {
            (None, false) => {
                self.apply_logged(Input::Pause {
                    by: BY_WINDOW.into(),
                })
                .await
            }
            (Some(p), true) if p.contains(BY_WINDOW) => {
                self.apply_logged(Input::Resume {
                    by: BY_WINDOW.into(),
                })
                .await
            }
            _ => {}
        }
    }

    /// Keep one readiness checker per running instance, none for the others.
    fn sync_checkers(&mut self) {
        use baton_engine::InstancePhase as P;
        // Ordered maps: checkers start in the same order every time, which keeps
        // the simulation replayable from its seed.
        let wanted: BTreeMap<String, (SocketAddr, bool)> = self
            .state
            .instances
            .iter()
            .filter(|i| matches!(i.phase, P::Starting | P::Ready { .. }))
            .filter_map(|i| {
                let addr = i.address.as_deref()?.parse().ok()?;
                Some((i.id.clone(), (addr, i.is_routable())))
            })
            .collect();
        self.checkers.retain(|id, token| {
            let keep = wanted.contains_key(id);
            if !keep {
                token.cancel();
            }
            keep
        });
        for (id, (addr, ready)) in wanted {
            if self.checkers.contains_key(&id) {
                continue;
            }
            let token = self.shutdown.child_token();
            self.checkers.insert(id.clone(), token.clone());
            health::spawn_checker(
                self.shared.probe.clone(),
                id,
                addr,
                self.spec.readiness.clone(),
                ready,
                self.observations_tx.clone(),
                token,
            );
        }
        self.in_progress
            .retain(|id, _| self.state.instance(id).is_some());
    }

    /// Stop every instance of the app (for `baton down` and `baton delete`):
    /// out of routing first, then (for `delete`) the requests in flight
    /// finish, then all at once, including any whose start is still in flight.
    /// The controller stops after this (see [`Flow::Stop`]). Returns how many
    /// instances were stopped.
    async fn stop_all(&mut self, drains: Drains) -> usize {
        for token in self.checkers.values() {
            token.cancel();
        }
        self.checkers.clear();
        let mut empty = AppState::new(self.spec.name.clone(), params_of(&self.spec));
        empty.instances.clear();
        let generation = self
            .shared
            .router
            .publish(crate::routing::app_routes(&self.spec, &empty));
        // The router is stopped right after this, so a router that does not
        // answer only delays `down` a little.
        if tokio::time::timeout(
            STOP_ALL_ACK_WAIT,
            self.shared.router.acknowledged(generation),
        )
        .await
        .is_err()
        {
            warn!(app = %self.spec.name, "the router did not acknowledge the empty table; stopping anyway");
        }
        if drains == Drains::Wait {
            let mut idle = tokio::task::JoinSet::new();
            for address in self
                .state
                .instances
                .iter()
                .filter_map(|i| i.address.as_deref()?.parse::<SocketAddr>().ok())
            {
                let router = self.shared.router.clone();
                let timeout = self.spec.drain_timeout;
                // Bounded: a router that does not answer must not keep the app.
                idle.spawn(async move {
                    tokio::time::timeout(timeout, router.wait_idle(address, timeout)).await
                });
            }
            idle.join_all().await;
        }
        let mut handles: Vec<InstanceHandle> = self
            .state
            .instances
            .iter()
            .filter_map(|i| self.handle_of(&i.id))
            .collect();
        // Starts still in flight: wait for the driver's answer and stop what it started.
        let deadline = tokio::time::Instant::now() + STOP_ALL_START_WAIT;
        while !self.starting.is_empty() {
            match tokio::time::timeout_at(deadline, self.observations.recv()).await {
                Ok(Some(Input::Started { id, handle })) => {
                    self.starting.remove(&id);
                    handles.push(handle);
                }
                Ok(Some(Input::StartFailed { id, .. })) => {
                    self.starting.remove(&id);
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    warn!(app = %self.spec.name, starting = ?self.starting, "starts still in flight when stopping");
                    break;
                }
            }
        }
        let grace = self.stop_grace();
        let mut stops = tokio::task::JoinSet::new();
        for handle in handles {
            let shared = self.shared.clone();
            stops.spawn(async move {
                if let Err(e) = shared.driver.stop(&handle, grace).await {
                    warn!(instance = %handle.instance_id, error = %e, "stopping instance failed");
                }
            });
        }
        stops.join_all().await.len()
    }
}

/// A handle for an instance found by discovery, to stop it. Its address does not
/// matter for that.
fn found_handle(f: &baton_driver::FoundInstance) -> InstanceHandle {
    f.handle().unwrap_or_else(|| InstanceHandle {
        instance_id: f.instance_id.clone(),
        address: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
        locator: f.locator.clone(),
    })
}

/// Whether the controller loop goes on after a command.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    /// `baton down` or `baton delete`: the instances are stopped; the controller ends.
    Stop,
}

/// How long an operator's command waits for the router before it answers.
const REPLY_ACK_WAIT: Duration = Duration::from_secs(5);
/// How long `stop_all` waits for the router to take the app out of routing.
const STOP_ALL_ACK_WAIT: Duration = Duration::from_secs(5);
/// How long `stop_all` waits for starts in flight to answer.
const STOP_ALL_START_WAIT: Duration = Duration::from_secs(30);

impl AppController {
    /// `baton delete`: a rollout in flight is closed in the history as
    /// aborted, then every instance leaves routing, its requests in flight
    /// finish (bounded by `drain_timeout`) and it is stopped.
    async fn delete(&mut self) {
        if let Some(r) = &self.state.rollout
            && let Err(e) = self.shared.store().finish_history(
                r.history_id,
                Outcome::Aborted.as_str(),
                "the app was deleted",
                self.shared.now_ms(),
            )
        {
            warn!(app = %self.spec.name, error = %e, "closing the history record failed");
        }
        let stopped = self.stop_all(Drains::Wait).await;
        info!(app = %self.spec.name, instances = stopped, "app deleted: instances drained and stopped");
    }
}

/// Whether `stop_all` lets requests in flight finish before stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drains {
    /// `delete`: each instance's requests finish (bounded by `drain_timeout`).
    Wait,
    /// `down`: everything stops now, the router included.
    Skip,
}
/// Analysis state of the rollout in flight. The count of failing measurements in a
/// row is also kept in the event log ([`ANALYSIS_CHECK`] events), so a restarted
/// control plane goes on counting where the previous one stopped.
#[derive(Default)]
struct AnalysisRun {
    history_id: i64,
    last_ms: i64,
    failures: u32,
    /// The step whose passing check is recorded already.
    passed_at_step: Option<usize>,
}

/// Event kind recording the failing measurements in a row of a rollout's analysis.
const ANALYSIS_CHECK: &str = "analysis_check";

/// What an [`ANALYSIS_CHECK`] event carries.
#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
struct AnalysisCheck {
    history_id: i64,
    /// Failing measurements in a row, this one included (0: a passing one).
    failures: u32,
}

/// The failures in a row recorded for rollout `history_id` by the newest
/// [`ANALYSIS_CHECK`] event (0 when it belongs to another rollout).
fn recorded_failures(last: Option<&baton_store::EventRecord>, history_id: i64) -> u32 {
    last.and_then(|e| serde_json::from_str::<AnalysisCheck>(&e.fields_json).ok())
        .filter(|c| c.history_id == history_id)
        .map_or(0, |c| c.failures)
}

/// Where one new instance goes.
struct Placement<'a> {
    id: &'a str,
    host: IpAddr,
    /// The port on `host` the router reaches it at.
    port: u16,
    log_path: std::path::PathBuf,
    baton: &'a str,
}

/// What to start for one instance of revision `rev` (pure: templates rendered, the
/// container image pinned to the revision's digest).
fn launch_spec(
    spec: &AppSpec,
    rev: &baton_store::RevisionRecord,
    release_env: BTreeMap<String, String>,
    at: Placement<'_>,
) -> anyhow::Result<LaunchSpec> {
    let (app, version) = (spec.name.as_str(), rev.version.as_str());
    // `{port}` is the port the app listens on: the instance's own for a process
    // or a host-network container, the image's port inside a published container.
    let app_port = match &spec.driver {
        DriverSpec::Container(c) if c.network == baton_spec::ContainerNetwork::Publish => c.port,
        _ => at.port,
    };
    let vars = TemplateVars {
        version,
        port: app_port,
        app,
        instance: at.id,
        baton: at.baton,
    };
    let render = |list: &[String]| -> Vec<String> {
        list.iter()
            .map(|a| baton_spec::render_template(a, &vars))
            .collect()
    };
    let render_env = |env: &BTreeMap<String, String>| -> BTreeMap<String, String> {
        env.iter()
            .map(|(k, v)| (k.clone(), baton_spec::render_template(v, &vars)))
            .collect()
    };
    let (mut env, target) = match &spec.driver {
        DriverSpec::Process(p) => (
            render_env(&p.env),
            baton_driver::Target::Process(baton_driver::ProcessTarget {
                argv: render(&p.command),
                workdir: p.workdir.clone(),
            }),
        ),
        DriverSpec::Container(c) => {
            let (image, digest) = match &rev.image {
                Some(pin) => (pin.reference.clone(), Some(pin.digest.clone())),
                None => (crate::containers::image_of(c, app, version), None),
            };
            (
                render_env(&c.env),
                baton_driver::Target::Container(baton_driver::ContainerTarget {
                    endpoint: crate::containers::endpoint_of(c)?,
                    image,
                    digest,
                    pull: crate::containers::pull_policy(c.pull),
                    container_port: app_port,
                    host_network: c.network == baton_spec::ContainerNetwork::Host,
                    entrypoint: c.entrypoint.as_deref().map(render),
                    command: c.command.as_deref().map(render),
                    user: c.user.clone(),
                    workdir: c.workdir.clone(),
                    memory_bytes: c.memory_bytes,
                    cpus: c.cpus,
                    read_only: c.read_only,
                    labels: c.labels.clone(),
                }),
            )
        }
    };
    env.extend(release_env);
    env.insert("BATON_APP".into(), app.into());
    env.insert("BATON_VERSION".into(), version.into());
    Ok(LaunchSpec {
        instance_id: at.id.to_string(),
        app: app.to_string(),
        version: version.to_string(),
        revision: rev.number,
        env,
        host: at.host,
        port: at.port,
        log_path: at.log_path,
        target,
    })
}

/// Start one instance of `revision` through the driver.
async fn launch(
    shared: &Shared,
    app: &str,
    id: &str,
    revision: u32,
) -> anyhow::Result<InstanceHandle> {
    let rev = shared
        .store()
        .get_revision(app, revision)?
        .with_context(|| format!("revision {revision} of {app} is missing from the store"))?;
    let spec: AppSpec =
        serde_json::from_str(&rev.spec_json).context("stored revision spec is unreadable")?;
    let release_env: BTreeMap<String, String> =
        serde_json::from_str(&rev.env_json).context("stored revision env is unreadable")?;
    let host = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let port = baton_driver::free_port(host)?;
    let log_path = shared
        .data_dir
        .join("logs")
        .join(app)
        .join(format!("{id}.log"));
    let spec = launch_spec(
        &spec,
        &rev,
        release_env,
        Placement {
            id,
            host,
            port,
            log_path,
            baton: &shared.baton_exe,
        },
    )?;
    Ok(shared.driver.start(&spec).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(history_id: i64, failures: u32) -> baton_store::EventRecord {
        baton_store::EventRecord {
            id: 1,
            app: "demo".into(),
            at_ms: 0,
            kind: ANALYSIS_CHECK.into(),
            message: String::new(),
            fields_json: serde_json::to_string(&AnalysisCheck {
                history_id,
                failures,
            })
            .unwrap(),
        }
    }

    #[test]
    fn a_restarted_analysis_counts_on_from_the_record_of_its_own_rollout() {
        assert_eq!(recorded_failures(Some(&check(7, 2)), 7), 2);
        // Another rollout's record, a reset, none, or an unreadable one: from zero.
        assert_eq!(recorded_failures(Some(&check(6, 2)), 7), 0);
        assert_eq!(recorded_failures(Some(&check(7, 0)), 7), 0);
        assert_eq!(recorded_failures(None, 7), 0);
        let mut bad = check(7, 2);
        bad.fields_json = "{}".into();
        assert_eq!(recorded_failures(Some(&bad), 7), 0);
    }
}
