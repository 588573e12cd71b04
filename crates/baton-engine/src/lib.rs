//! baton's rollout state machine.
//!
//! Pure and deterministic: [`step`] takes the current [`AppState`], one [`Input`]
//! (a command or an observation of the world) and the current time, and returns
//! the next state plus the [`Action`]s the controller must carry out. There is no
//! I/O and no clock here, which is what lets the controller persist every
//! transition before acting on it and lets tests simulate whole rollouts.
//!
//! See `LIFECYCLE.md` beside this file for the states and transitions.

mod event;
mod handle;
mod plan;
mod reconcile;

pub use event::{EventKind, PauseReason};
pub use handle::{InstanceHandle, Locator, short_id};

pub use plan::{Plan, PlanStep, plan};
pub use reconcile::{StepProgress, StepWait, describe_step, progress};

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch, supplied by the caller.
pub type Millis = i64;

/// Rollout parameters resolved from the app spec (counts, not percentages).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Params {
    /// Desired number of instances.
    pub instances: u32,
    /// Extra instances allowed above `instances` while a rollout runs.
    pub max_surge: u32,
    /// Instances that may be unavailable while a rollout runs.
    pub max_unavailable: u32,
    /// How long a new instance must stay ready before it counts as available.
    pub min_ready_ms: u64,
    /// A rollout that makes no progress for this long fails.
    pub progress_deadline_ms: u64,
    /// Crashes of new-version instances tolerated before the rollout fails.
    pub max_restarts: u32,
    /// How traffic moves to the new release.
    #[serde(default)]
    pub strategy: Strategy,
    /// Past the progress deadline, pause for a person instead of rolling back.
    #[serde(default)]
    pub pause_on_deadline: bool,
    /// The hosts the instances run on, each with its share of `instances`
    /// (the shares add up to it). Empty: one machine, no host grouping.
    #[serde(default)]
    pub hosts: Vec<HostShare>,
    /// Hosts a rolling upgrade works on at once (node by node: 1).
    #[serde(default)]
    pub max_unavailable_hosts: u32,
    /// An approval gate is passed only by someone other than who started the
    /// rollout (four eyes).
    #[serde(default)]
    pub approval_by_another: bool,
}

/// One host's part of an app: how many instances run there, and the surge
/// and unavailability allowed inside it while a rolling upgrade replaces them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostShare {
    pub name: String,
    pub instances: u32,
    pub max_surge: u32,
    pub max_unavailable: u32,
}

/// How a rollout moves traffic.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Strategy {
    /// Replace instances a few at a time; traffic follows the instances.
    #[default]
    Rolling,
    /// The stable release keeps all its instances while the new one is brought
    /// up beside it and traffic is moved by explicit weights, step by step.
    /// Blue-green and canary are both expressed as steps.
    Stepped { steps: Vec<Step> },
}

/// One step of a stepped (canary or blue-green) rollout. Every step first
/// waits until the new release's desired scale is available.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "step")]
pub enum Step {
    /// Send this percentage of new requests to the new release.
    SetWeight { percent: u32 },
    /// Run this many instances of the new release, whatever its weight.
    SetScale { instances: u32 },
    /// Wait this long, or (without a duration) until `baton promote`.
    Pause { duration_ms: Option<u64> },
    /// Wait until an operator runs `baton approve`.
    Approval,
    /// Watch the analysis for this long; a failing verdict rolls back.
    Analysis { duration_ms: u64 },
    /// Copy this percentage of requests to the new release for this long and
    /// compare its answers with the stable ones; too many mismatches roll back
    /// (the controller judges them and reports an `Analysis` verdict).
    Mirror { percent: u32, duration_ms: u64 },
    /// Run the smoke tests against the new release before any user reaches
    /// it; waits for the controller's `ChecksPassed` (a failure rolls back).
    Checks,
    /// Blue-green, the last step: the new release takes all traffic and the
    /// rollout is finished (new deploys are allowed), while the old release
    /// stays ready, out of routing, this long ([`AppState::warm`]) so that a
    /// rollback to it is an instant switch back.
    ScaleDownDelay { duration_ms: u64 },
}

impl Step {
    /// Steps that hold the rollout until time passes or a human acts.
    pub(crate) fn is_gate(&self) -> bool {
        matches!(
            self,
            Step::Pause { .. }
                | Step::Approval
                | Step::Analysis { .. }
                | Step::Mirror { .. }
                | Step::Checks
                | Step::ScaleDownDelay { .. }
        )
    }
}

/// Verdict of one analysis run, fed to the engine by the controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Fail,
    Inconclusive,
}

impl Params {
    /// Ready instances that must keep taking traffic at all times.
    pub fn min_available(&self) -> u32 {
        self.instances.saturating_sub(self.max_unavailable)
    }

    /// Surge actually used. A single instance always surges by one: baton never
    /// drains the last instance taking traffic, so without a surge a one-instance
    /// app could not be upgraded at all.
    pub fn effective_surge(&self) -> u32 {
        if self.instances == 1 {
            self.max_surge.max(1)
        } else {
            self.max_surge
        }
    }
}

/// One release of an app: a revision number and the version it runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub revision: u32,
    pub version: String,
}

/// Why a rollout started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutKind {
    Deploy,
    Rollback,
}

impl RolloutKind {
    /// `deploy` or `rollback`, as the history and the API name it.
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutKind::Deploy => "deploy",
            RolloutKind::Rollback => "rollback",
        }
    }
}

/// Where a rollout is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "phase")]
pub enum RolloutPhase {
    /// Moving towards the new release.
    Progressing,
    /// The new release failed or was aborted; converging back to the previous one.
    RollingBack { reason: String, aborted: bool },
}

/// A rollout in flight.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    /// Upgrade-history record this rollout reports to.
    pub history_id: i64,
    pub kind: RolloutKind,
    pub operator: String,
    pub from: Option<Release>,
    pub to: Release,
    pub phase: RolloutPhase,
    pub started_ms: Millis,
    pub last_progress_ms: Millis,
    /// Crashes of `to` instances so far.
    pub restarts: u32,
    /// Most new instances seen available at once; an increase is progress.
    pub best_available: u32,
    /// Stepped strategies: index of the current step (== steps.len() once every
    /// step is done and the rollout is being fully promoted).
    #[serde(default)]
    pub step: usize,
    /// When the current step started counting (its instances were available).
    #[serde(default)]
    pub step_started_ms: Option<Millis>,
    /// Stepped strategies: percentage of new requests sent to the new release.
    #[serde(default)]
    pub weight: Option<u32>,
    /// Stepped strategies: instances of the new release set by `SetScale`.
    #[serde(default)]
    pub scale: Option<u32>,
    /// Paused, and why (an earlier baton stored the reason as text; it
    /// still loads).
    #[serde(default, deserialize_with = "PauseReason::deserialize_stored")]
    pub paused: Option<PauseReason>,
    /// Operators who approved gates, in order.
    #[serde(default)]
    pub approvals: Vec<String>,
    /// Do nothing before this time (the next upgrade window opens).
    #[serde(default)]
    pub not_before_ms: Option<Millis>,
    /// A switch back to the release a blue-green rollout kept warm: its
    /// version (for the history record's notes).
    #[serde(default)]
    pub switched_back_to: Option<String>,
}

impl Rollout {
    /// A rollout that waited for its upgrade window starts now: its clocks
    /// (duration, progress deadline) run from here.
    pub(crate) fn start_waiting(&mut self, now: Millis) {
        self.not_before_ms = None;
        self.started_ms = now;
        self.last_progress_ms = now;
    }

    /// The step the rollout is at, if it uses a stepped strategy.
    pub fn current_step<'a>(&self, params: &'a Params) -> Option<&'a Step> {
        match &params.strategy {
            Strategy::Stepped { steps } if self.weight.is_some() => steps.get(self.step),
            _ => None,
        }
    }

    /// Waiting at an approval gate.
    pub fn awaiting_approval(&self, params: &Params) -> bool {
        self.phase == RolloutPhase::Progressing
            && self.step_started_ms.is_some()
            && matches!(self.current_step(params), Some(Step::Approval))
    }

    /// The release the instances are converging to right now.
    pub fn target(&self) -> Option<&Release> {
        match self.phase {
            RolloutPhase::Progressing => Some(&self.to),
            RolloutPhase::RollingBack { .. } => self.from.as_ref(),
        }
    }
}

/// Lifecycle of one instance. See LIFECYCLE.md.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum InstancePhase {
    /// Start requested and persisted; the driver has not reported it running yet.
    Pending,
    /// Running but not (or no longer) passing its readiness check. Takes no traffic.
    Starting,
    /// Passing readiness since `since_ms`; takes traffic.
    Ready { since_ms: Millis },
    /// Removed from routing; waiting for its in-flight requests to finish.
    Draining { since_ms: Millis },
    /// Stop requested from the driver.
    Stopping,
}

/// One instance of an app as the engine knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub id: String,
    pub revision: u32,
    pub version: String,
    pub phase: InstancePhase,
    /// Address the instance listens on, once started.
    pub address: Option<String>,
    /// The driver's handle, so a restarted control plane finds the instance again.
    #[serde(default, deserialize_with = "handle::deserialize_stored")]
    pub handle: Option<InstanceHandle>,
    pub created_ms: Millis,
    /// The host it runs on, for an app on several hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

impl Instance {
    /// Takes user traffic: passed readiness and is not draining.
    pub fn is_routable(&self) -> bool {
        matches!(self.phase, InstancePhase::Ready { .. })
    }

    /// Counts towards the app's instance count (not on its way out).
    pub fn is_live(&self) -> bool {
        matches!(
            self.phase,
            InstancePhase::Pending | InstancePhase::Starting | InstancePhase::Ready { .. }
        )
    }

    /// Ready for at least `min_ready_ms`.
    pub fn is_available(&self, now: Millis, min_ready_ms: u64) -> bool {
        match self.phase {
            InstancePhase::Ready { since_ms } => {
                now.saturating_sub(since_ms) >= min_ready_ms as i64
            }
            _ => false,
        }
    }
}

/// Result of a finished rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    RolledBack,
    Aborted,
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::RolledBack => "rolled_back",
            Outcome::Aborted => "aborted",
            Outcome::Failed => "failed",
        }
    }
}

/// The last finished rollout, kept for `status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finished {
    pub history_id: i64,
    pub outcome: Outcome,
    pub notes: String,
    pub version: String,
    pub finished_ms: Millis,
}

/// Everything the engine knows about one app. Persisted as JSON after every step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppState {
    pub app: String,
    pub params: Params,
    /// The release that serves when no rollout runs.
    pub stable: Option<Release>,
    pub rollout: Option<Rollout>,
    pub instances: Vec<Instance>,
    pub next_instance_seq: u64,
    pub last_finished: Option<Finished>,
    /// Blue-green after the switch: the previous release, still running out
    /// of routing until `until_ms`. Never set while a rollout runs.
    #[serde(default)]
    pub warm: Option<WarmStandby>,
}

/// The release a finished blue-green rollout switched away from, kept ready
/// (not routed) for `scale_down_delay` so that `rollback` switches back to it
/// at once instead of starting new instances.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarmStandby {
    pub release: Release,
    /// Its instances are drained at this time.
    pub until_ms: Millis,
}

impl AppState {
    pub fn new(app: impl Into<String>, params: Params) -> Self {
        AppState {
            app: app.into(),
            params,
            stable: None,
            rollout: None,
            instances: Vec::new(),
            next_instance_seq: 1,
            last_finished: None,
            warm: None,
        }
    }

    pub fn instance(&self, id: &str) -> Option<&Instance> {
        self.instances.iter().find(|i| i.id == id)
    }

    fn instance_mut(&mut self, id: &str) -> Option<&mut Instance> {
        self.instances.iter_mut().find(|i| i.id == id)
    }

    /// Phase name shown by `status`.
    pub fn phase_name(&self) -> &'static str {
        match &self.rollout {
            Some(r) => match r.phase {
                RolloutPhase::Progressing if r.not_before_ms.is_some() => "waiting_for_window",
                RolloutPhase::Progressing if r.paused.is_some() => "paused",
                RolloutPhase::Progressing if r.awaiting_approval(&self.params) => {
                    "awaiting_approval"
                }
                RolloutPhase::Progressing => "progressing",
                RolloutPhase::RollingBack { aborted: true, .. } => "aborting",
                RolloutPhase::RollingBack { .. } => "rolling_back",
            },
            None if self.stable.is_none() => "empty",
            None => "stable",
        }
    }

    /// The version new requests are routed to, with relative weights: one per
    /// routable instance, so a rolling upgrade shifts traffic instance by instance.
    pub fn routing(&self) -> Vec<RouteGroup> {
        let mut groups: Vec<RouteGroup> = Vec::new();
        for inst in self.instances.iter().filter(|i| i.is_routable()) {
            let Some(address) = inst.address.clone() else {
                continue;
            };
            match groups.iter_mut().find(|g| g.version == inst.version) {
                Some(g) => g.backends.push((inst.id.clone(), address)),
                None => groups.push(RouteGroup {
                    version: inst.version.clone(),
                    weight: 0,
                    backends: vec![(inst.id.clone(), address)],
                }),
            }
        }
        let explicit = self.rollout.as_ref().and_then(|r| {
            let w = r.weight?;
            Some((r.to.version.clone(), r.from.as_ref()?.version.clone(), w))
        });
        let warm = self.warm.as_ref().map(|w| w.release.version.as_str());
        for g in &mut groups {
            g.weight = match &explicit {
                // Kept ready for an instant switch back, but takes no traffic.
                _ if warm == Some(g.version.as_str()) => 0,
                // Stepped strategies: explicit percentages.
                Some((new, _, w)) if &g.version == new => *w,
                Some((_, old, w)) if &g.version == old => 100 - (*w).min(100),
                Some(_) => 0,
                // Rolling: traffic follows the instances.
                None => g.backends.len() as u32,
            };
        }
        groups.sort_by(|a, b| a.version.cmp(&b.version));
        groups
    }
}

/// Traffic for one version: its weight and the instances that serve it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteGroup {
    pub version: String,
    pub weight: u32,
    /// (instance id, address)
    pub backends: Vec<(String, String)>,
}

/// What happened: a command from an operator or an observation of the world.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "input")]
pub enum Input {
    /// Time passed; re-evaluate deadlines and availability.
    Tick,
    /// The spec changed (instance count, surge...).
    UpdateParams { params: Params },
    /// Start a rollout to `to`.
    Deploy {
        to: Release,
        kind: RolloutKind,
        operator: String,
        history_id: i64,
        /// Start no earlier than this (outside an upgrade window).
        #[serde(default)]
        not_before_ms: Option<Millis>,
    },
    /// Stop the rollout in flight and go back to the stable release.
    Abort { by: String, reason: String },
    /// Move past the current gate, or (`full`) skip every remaining step.
    Promote { by: String, full: bool },
    /// Pass an approval gate.
    Approve { by: String },
    /// Hold the rollout where it is (traffic stays as it is).
    Pause { by: String },
    /// Continue a paused rollout.
    Resume { by: String },
    /// The app's upgrade window closed while the rollout runs (and the spec
    /// says to pause then): pause it, unless it is paused already.
    UpgradeWindowClosed,
    /// An upgrade window opened: a rollout the window paused goes on.
    UpgradeWindowOpened,
    /// The app's hosts that do not answer now (level-triggered: sent whenever
    /// the set changes, empty once all answer). A rollout pauses while any is
    /// unreachable and goes on by itself when all are back.
    HostsUnreachable {
        hosts: Vec<String>,
        since_ms: Millis,
    },
    /// Result of an analysis run of the new release.
    Analysis { verdict: Verdict, reason: String },
    /// The smoke tests of the current `Checks` step passed.
    ChecksPassed { summary: String },
    /// A smoke test failed: roll back before any user reaches the new release.
    ChecksFailed { reason: String },
    /// The driver started the instance.
    Started { id: String, handle: InstanceHandle },
    /// The driver could not start the instance.
    StartFailed { id: String, error: String },
    /// The instance passed its readiness check `success_threshold` times in a row.
    Ready { id: String },
    /// The instance failed its readiness check `failure_threshold` times in a row.
    Unready { id: String },
    /// The instance ended without being asked to; `detail` says how.
    Exited {
        id: String,
        detail: String,
        cause: ExitCause,
    },
    /// A draining instance has no request in flight any more (or its drain timed out).
    Drained { id: String },
    /// The driver stopped the instance.
    Stopped { id: String },
}

/// Why an instance ended by itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitCause {
    /// It exited or was killed: a crash, counted against `max_restarts`.
    #[default]
    Crashed,
    /// The kernel killed it for exceeding its memory limit: a new version that does
    /// this fails its rollout at once.
    OutOfMemory,
}

/// What the controller must do, in order, after persisting the new state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum Action {
    /// Launch a new instance with this id for this release.
    Start {
        id: String,
        revision: u32,
        version: String,
    },
    /// The instance is out of routing: wait for its in-flight requests, then report `Drained`.
    Drain { id: String },
    /// Stop the instance through the driver, then report `Stopped`.
    Stop { id: String },
    /// Append to the event log.
    Event { kind: EventKind, message: String },
    /// The rollout ended: close its upgrade-history record.
    Finish {
        history_id: i64,
        outcome: Outcome,
        notes: String,
    },
}

/// Errors from commands that do not fit the current state. The state is unchanged.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EngineError {
    /// A rollout is already running; only one at a time per app.
    #[error(
        "a rollout to {version} is already in progress; wait for it or run `baton abort {app}`"
    )]
    RolloutInProgress { app: String, version: String },
    /// Abort with nothing to abort.
    #[error("no rollout is in progress for {app}")]
    NoRollout { app: String },
    /// Approve while no approval gate is reached.
    #[error("{app} is not waiting for an approval (phase: {phase})")]
    NothingToApprove { app: String, phase: String },
    /// The app asks for approvals by someone other than who started the rollout.
    #[error(
        "{by} started this rollout of {app}, and its approvals must come from someone else \
         (approval.by_another_person in its spec): ask another operator to run `baton approve {app}`"
    )]
    SelfApproval { app: String, by: String },
    /// Promote, pause or resume that does not fit where the rollout is.
    #[error("{0}")]
    NotApplicable(String),
}

/// Advance the state machine by one input. Pure: same inputs, same outputs.
pub fn step(
    state: &AppState,
    input: Input,
    now: Millis,
) -> Result<(AppState, Vec<Action>), EngineError> {
    let mut next = state.clone();
    let mut actions = Vec::new();
    apply_input(&mut next, input, now, &mut actions)?;
    reconcile::reconcile(&mut next, now, &mut actions);
    Ok((next, actions))
}

fn event(actions: &mut Vec<Action>, kind: EventKind, message: String) {
    actions.push(Action::Event { kind, message });
}

fn apply_input(
    s: &mut AppState,
    input: Input,
    now: Millis,
    actions: &mut Vec<Action>,
) -> Result<(), EngineError> {
    match input {
        Input::Tick => {}
        Input::UpdateParams { params } => {
            if params != s.params {
                event(
                    actions,
                    EventKind::SpecUpdated,
                    format!(
                        "instances={} max_surge={} max_unavailable={}",
                        params.instances, params.max_surge, params.max_unavailable
                    ),
                );
                s.params = params;
            }
        }
        Input::Deploy {
            to,
            kind,
            operator,
            history_id,
            not_before_ms,
        } => {
            if let Some(r) = &mut s.rollout {
                // `deploy --now` of the very release that waits for its window
                // starts it at once (same rollout, same history record).
                if r.not_before_ms.is_some()
                    && r.phase == RolloutPhase::Progressing
                    && r.to == to
                    && r.history_id == history_id
                    && not_before_ms.is_none_or(|t| t <= now)
                {
                    r.start_waiting(now);
                    event(
                        actions,
                        EventKind::WindowSkipped,
                        format!("started now by {operator}, outside the upgrade window"),
                    );
                    return Ok(());
                }
                return Err(EngineError::RolloutInProgress {
                    app: s.app.clone(),
                    version: r.to.version.clone(),
                });
            }
            event(
                actions,
                EventKind::RolloutStarted,
                format!(
                    "{} {} → {} (revision {}) by {}",
                    kind.as_str(),
                    s.stable.as_ref().map_or("nothing", |r| r.version.as_str()),
                    to.version,
                    to.revision,
                    operator
                ),
            );
            s.rollout = Some(Rollout {
                history_id,
                kind,
                operator,
                from: s.stable.clone(),
                to,
                phase: RolloutPhase::Progressing,
                started_ms: now,
                last_progress_ms: now,
                restarts: 0,
                best_available: 0,
                step: 0,
                step_started_ms: None,
                weight: match (&s.params.strategy, &s.stable) {
                    (Strategy::Stepped { .. }, Some(_)) => Some(0),
                    _ => None,
                },
                scale: None,
                paused: None,
                approvals: Vec::new(),
                not_before_ms: not_before_ms.filter(|t| *t > now),
                switched_back_to: None,
            });
            switch_back_to_warm(s, actions);
            if let Some(t) = not_before_ms.filter(|t| *t > now) {
                event(
                    actions,
                    EventKind::WaitingForWindow,
                    format!(
                        "outside the upgrade window: starts in {}s",
                        (t - now) / 1000
                    ),
                );
            }
        }
        Input::Abort { by, reason } => {
            let Some(r) = &s.rollout else {
                return Err(EngineError::NoRollout { app: s.app.clone() });
            };
            if matches!(r.phase, RolloutPhase::Progressing) {
                fail_rollout(s, format!("aborted by {by}: {reason}"), true, now, actions);
            }
        }
        Input::Promote { by, full } => {
            if s.rollout.is_none()
                && let Some(w) = &mut s.warm
            {
                // After a blue-green switch: stop keeping the old release ready.
                w.until_ms = now;
                let version = w.release.version.clone();
                event(
                    actions,
                    EventKind::Promoted,
                    format!("promoted by {by}: {version} is no longer kept ready"),
                );
                return Ok(());
            }
            let phase = s.phase_name().to_string();
            let Some(r) = &mut s.rollout else {
                return Err(EngineError::NoRollout { app: s.app.clone() });
            };
            if r.phase != RolloutPhase::Progressing {
                return Err(EngineError::NotApplicable(format!(
                    "{} is {phase}; there is nothing to promote",
                    s.app
                )));
            }
            let Strategy::Stepped { steps } = &s.params.strategy else {
                return Err(EngineError::NotApplicable(format!(
                    "{} uses the rolling strategy, which has no steps to promote",
                    s.app
                )));
            };
            if r.weight.is_none() {
                return Err(EngineError::NotApplicable(format!(
                    "{}: a first release has no steps to promote",
                    s.app
                )));
            }
            r.paused = None;
            if full {
                r.step = steps.len();
                r.step_started_ms = None;
                event(
                    actions,
                    EventKind::Promoted,
                    format!("full promotion by {by}: skipping the remaining steps"),
                );
            } else if steps.get(r.step).is_some_and(Step::is_gate) {
                r.step += 1;
                r.step_started_ms = None;
                r.last_progress_ms = now;
                event(
                    actions,
                    EventKind::Promoted,
                    format!("promoted by {by} to step {}", r.step + 1),
                );
            } else {
                return Err(EngineError::NotApplicable(format!(
                    "{} is not at a pause or gate (it moves on by itself); use --full to skip every remaining step",
                    s.app
                )));
            }
        }
        Input::Approve { by } => {
            let waiting = s
                .rollout
                .as_ref()
                .is_some_and(|r| r.awaiting_approval(&s.params));
            if !waiting {
                return Err(EngineError::NothingToApprove {
                    app: s.app.clone(),
                    phase: s.phase_name().to_string(),
                });
            }
            if s.params.approval_by_another && s.rollout.as_ref().is_some_and(|r| r.operator == *by)
            {
                return Err(EngineError::SelfApproval {
                    app: s.app.clone(),
                    by: by.clone(),
                });
            }
            if let Some(r) = &mut s.rollout {
                r.approvals.push(by.clone());
                r.step += 1;
                r.step_started_ms = None;
                r.last_progress_ms = now;
                event(
                    actions,
                    EventKind::Approved,
                    format!("approved by {by} (gate {} of {})", r.step, r.to.version),
                );
            }
        }
        Input::Pause { by } => {
            let Some(r) = &mut s.rollout else {
                return Err(EngineError::NoRollout { app: s.app.clone() });
            };
            if r.phase != RolloutPhase::Progressing {
                return Err(EngineError::NotApplicable(format!(
                    "{} is rolling back; it cannot be paused",
                    s.app
                )));
            }
            if r.paused.is_none() {
                let reason = PauseReason::Operator { by };
                event(actions, EventKind::Paused, reason.to_string());
                r.paused = Some(reason);
            }
        }
        Input::UpgradeWindowClosed => {
            if let Some(r) = &mut s.rollout
                && r.phase == RolloutPhase::Progressing
                && r.paused.is_none()
            {
                let reason = PauseReason::UpgradeWindow;
                event(actions, EventKind::Paused, reason.to_string());
                r.paused = Some(reason);
            }
        }
        Input::HostsUnreachable { hosts, since_ms } => {
            if let Some(r) = &mut s.rollout
                && r.phase == RolloutPhase::Progressing
            {
                let by_hosts = matches!(r.paused, Some(PauseReason::HostsUnreachable { .. }));
                if hosts.is_empty() {
                    if by_hosts {
                        r.paused = None;
                        r.last_progress_ms = now;
                        event(
                            actions,
                            EventKind::Resumed,
                            "every host answers again: resuming".into(),
                        );
                    }
                } else if r.paused.is_none() || by_hosts {
                    let reason = PauseReason::HostsUnreachable { hosts, since_ms };
                    if r.paused.as_ref() != Some(&reason) {
                        event(actions, EventKind::Paused, reason.to_string());
                        r.paused = Some(reason);
                    }
                }
            }
        }
        Input::UpgradeWindowOpened => {
            if let Some(r) = &mut s.rollout
                && r.paused == Some(PauseReason::UpgradeWindow)
            {
                r.paused = None;
                r.last_progress_ms = now;
                event(
                    actions,
                    EventKind::Resumed,
                    "resumed by the upgrade window".into(),
                );
            }
        }
        Input::Resume { by } => {
            let Some(r) = &mut s.rollout else {
                return Err(EngineError::NoRollout { app: s.app.clone() });
            };
            if r.paused.take().is_none() {
                let phase = s.phase_name();
                return Err(EngineError::NotApplicable(format!(
                    "{} is not paused (phase: {phase}); there is nothing to resume",
                    s.app
                )));
            }
            r.last_progress_ms = now;
            event(actions, EventKind::Resumed, format!("resumed by {by}"));
        }
        Input::ChecksPassed { summary } => {
            let at_checks = s.rollout.as_ref().is_some_and(|r| {
                r.phase == RolloutPhase::Progressing
                    && r.step_started_ms.is_some()
                    && matches!(r.current_step(&s.params), Some(Step::Checks))
            });
            if at_checks && let Some(r) = &mut s.rollout {
                r.step += 1;
                r.step_started_ms = None;
                r.last_progress_ms = now;
                event(actions, EventKind::ChecksPassed, summary);
            }
        }
        Input::ChecksFailed { reason } => {
            // Only at the `Checks` step: a late report of an earlier run
            // fails nothing once the rollout has moved on.
            let at_checks = s.rollout.as_ref().is_some_and(|r| {
                r.phase == RolloutPhase::Progressing
                    && r.step_started_ms.is_some()
                    && matches!(r.current_step(&s.params), Some(Step::Checks))
            });
            if at_checks {
                event(actions, EventKind::ChecksFailed, reason.clone());
                fail_rollout(
                    s,
                    format!("smoke test failed: {reason}"),
                    false,
                    now,
                    actions,
                );
            }
        }
        Input::Analysis { verdict, reason } => {
            let progressing = s
                .rollout
                .as_ref()
                .is_some_and(|r| r.phase == RolloutPhase::Progressing);
            if progressing {
                match verdict {
                    Verdict::Pass => {}
                    Verdict::Fail => {
                        event(actions, EventKind::AnalysisFailed, reason.clone());
                        fail_rollout(s, format!("analysis failed: {reason}"), false, now, actions);
                    }
                    Verdict::Inconclusive => {
                        if let Some(r) = &mut s.rollout
                            && r.paused.is_none()
                        {
                            r.paused = Some(PauseReason::AnalysisInconclusive {
                                reason: reason.clone(),
                            });
                            event(
                                actions,
                                EventKind::AnalysisInconclusive,
                                format!(
                                    "{reason}; paused for a human (`baton resume` or `baton abort`)"
                                ),
                            );
                        }
                    }
                }
            }
        }
        Input::Started { id, handle } => {
            if let Some(inst) = s.instance_mut(&id)
                && inst.phase == InstancePhase::Pending
            {
                let address = handle.address.to_string();
                inst.phase = InstancePhase::Starting;
                inst.address = Some(address.clone());
                inst.handle = Some(handle);
                event(
                    actions,
                    EventKind::InstanceStarted,
                    format!("{id} listening on {address}"),
                );
            }
        }
        Input::StartFailed { id, error } => {
            if let Some(inst) = s.instance(&id).cloned() {
                s.instances.retain(|i| i.id != id);
                event(
                    actions,
                    EventKind::InstanceStartFailed,
                    format!("{id}: {error}"),
                );
                count_crash(
                    s,
                    &inst,
                    format!("{id} could not start: {error}"),
                    now,
                    actions,
                );
            }
        }
        Input::Ready { id } => {
            if let Some(inst) = s.instance_mut(&id)
                && matches!(inst.phase, InstancePhase::Starting)
            {
                inst.phase = InstancePhase::Ready { since_ms: now };
                let version = inst.version.clone();
                event(
                    actions,
                    EventKind::InstanceReady,
                    format!("{id} ({version}) is ready"),
                );
                mark_progress(s, &version, now);
            }
        }
        Input::Unready { id } => {
            if let Some(inst) = s.instance_mut(&id)
                && matches!(inst.phase, InstancePhase::Ready { .. })
            {
                inst.phase = InstancePhase::Starting;
                event(
                    actions,
                    EventKind::InstanceUnready,
                    format!("{id} failed its readiness check"),
                );
            }
        }
        Input::Exited { id, detail, cause } => {
            if let Some(inst) = s.instance(&id).cloned() {
                s.instances.retain(|i| i.id != id);
                if matches!(
                    inst.phase,
                    InstancePhase::Draining { .. } | InstancePhase::Stopping
                ) {
                    event(
                        actions,
                        EventKind::InstanceStopped,
                        format!("{id} exited ({detail})"),
                    );
                } else {
                    event(
                        actions,
                        EventKind::InstanceExited,
                        format!("{id} ({}) exited unexpectedly: {detail}", inst.version),
                    );
                    match cause {
                        ExitCause::Crashed => count_crash(
                            s,
                            &inst,
                            format!("instance {id} of {} exited: {detail}", inst.version),
                            now,
                            actions,
                        ),
                        // Restarting cannot help: the release needs more memory than
                        // it may use. Roll back at once, before users see a crash loop.
                        ExitCause::OutOfMemory => {
                            let new_version = s.rollout.as_ref().is_some_and(|r| {
                                r.phase == RolloutPhase::Progressing
                                    && inst.revision == r.to.revision
                            });
                            if new_version {
                                fail_rollout(
                                    s,
                                    format!("{} {detail} (instance {id})", inst.version),
                                    false,
                                    now,
                                    actions,
                                );
                            }
                        }
                    }
                }
            }
        }
        Input::Drained { id } => {
            if let Some(inst) = s.instance_mut(&id)
                && matches!(inst.phase, InstancePhase::Draining { .. })
            {
                inst.phase = InstancePhase::Stopping;
                actions.push(Action::Stop { id });
            }
        }
        Input::Stopped { id } => {
            if s.instance(&id).is_some() {
                s.instances.retain(|i| i.id != id);
                event(actions, EventKind::InstanceStopped, format!("{id} stopped"));
            }
        }
    }
    Ok(())
}

/// A new-version instance became ready or available: the rollout is moving.
fn mark_progress(s: &mut AppState, version: &str, now: Millis) {
    if let Some(r) = &mut s.rollout
        && r.to.version == version
    {
        r.last_progress_ms = now;
    }
}

/// An instance died on its own. Crashes of the version being rolled out count
/// against `max_restarts`; past it the rollout fails.
fn count_crash(
    s: &mut AppState,
    inst: &Instance,
    why: String,
    now: Millis,
    actions: &mut Vec<Action>,
) {
    let Some(r) = &mut s.rollout else { return };
    if r.phase != RolloutPhase::Progressing || inst.revision != r.to.revision {
        return;
    }
    r.restarts += 1;
    if r.restarts > s.params.max_restarts {
        let reason = format!(
            "{why}; {} crashes of {} exceed max_restarts {}",
            r.restarts, r.to.version, s.params.max_restarts
        );
        fail_rollout(s, reason, false, now, actions);
    }
}

/// Turn a progressing rollout around: converge back to the previous release.
pub(crate) fn fail_rollout(
    s: &mut AppState,
    reason: String,
    aborted: bool,
    now: Millis,
    actions: &mut Vec<Action>,
) {
    // Stepped strategies: say where the rollout was when it turned around.
    let reason = match reconcile::progress(s, now) {
        Some(p) => format!(
            "{reason} (at step {} of {}: {})",
            p.number, p.count, p.description
        ),
        None => reason,
    };
    let Some(r) = &mut s.rollout else { return };
    r.phase = RolloutPhase::RollingBack {
        reason: reason.clone(),
        aborted,
    };
    // Stepped strategies: every new request goes to the stable release at once.
    if r.weight.is_some() {
        r.weight = Some(0);
    }
    r.paused = None;
    r.last_progress_ms = now;
    let kind = if aborted {
        EventKind::RolloutAborted
    } else {
        EventKind::RolloutFailed
    };
    event(actions, kind, reason);
}

/// A rollback to the release a blue-green rollout kept warm: traffic switches
/// back to its running instances at once (the rolling path finds them all
/// available and drains the other release in the same step).
fn switch_back_to_warm(s: &mut AppState, actions: &mut Vec<Action>) {
    let Some(r) = &mut s.rollout else { return };
    let Some(w) = s.warm.take_if(|w| w.release.revision == r.to.revision) else {
        return;
    };
    r.weight = None;
    r.not_before_ms = None;
    r.switched_back_to = Some(w.release.version.clone());
    event(
        actions,
        EventKind::SwitchingBack,
        format!(
            "{} is still running (kept ready after the switch): all traffic goes back to it at once; {} drains",
            w.release.version,
            r.from
                .as_ref()
                .map_or("the current release", |f| f.version.as_str())
        ),
    );
}

#[cfg(test)]
mod tests;
