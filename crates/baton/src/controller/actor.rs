//! The actor that owns one app's state and is its only writer.
//!
//! Every input goes through [`AppController::apply`]: the engine computes the
//! next state, the state and its events are committed to SQLite (with a
//! generation fence), the routing table is pushed to the router, and only then
//! are the engine's actions carried out. Actions run in background tasks that
//! report back as new inputs, so the loop never blocks on a slow instance.
//! The sensors (see [`super::sensors`]) run on the loop's tick and report
//! through the same door.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use baton_driver::InstanceHandle;
use baton_engine::{Action, AppState, Input, Outcome, Params};
use baton_spec::{AppSpec, RouterPlacement, StrategySpec};
use baton_store::NewEvent;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::handle::{AppHandle, AppView, Command, CommandError};
use super::launch::{found_handle, launch};
use super::params::params_of;
use super::sensors::analysis::Analysis;
use super::sensors::checks::SmokeChecks;
use super::sensors::mirror::MirrorWatch;
use super::sensors::readiness::Readiness;
use super::sensors::resources::Resources;
use super::sensors::{exits, window};
use super::shared::Shared;
use crate::effects::{Deliver, Reporter, delivery_of};

mod releases;
mod teardown;

use teardown::Drains;

/// Reports from background tasks back to the controller loop.
type Observation = Input;

pub struct AppController {
    shared: Arc<Shared>,
    spec: AppSpec,
    state: AppState,
    generation: u64,
    /// Where background tasks report (through the delivery faults, if any).
    report: Reporter,
    observations: mpsc::UnboundedReceiver<Observation>,
    commands: mpsc::Receiver<Command>,
    status: tokio::sync::watch::Sender<Arc<AppView>>,
    /// Readiness checkers of the running instances.
    readiness: Readiness,
    /// Drain/stop tasks already running, by instance id (so a restart does not double them).
    in_progress: HashMap<String, Task>,
    /// Analysis of the rollout in flight, and its newest measurement for `status`.
    analysis: Analysis,
    mirror: MirrorWatch,
    /// The app's webhooks (shared with `status`), and what they report failing.
    notifier: NotifierSlot,
    notify_failures: Option<mpsc::UnboundedReceiver<(String, String)>>,
    notifier_stop: CancellationToken,
    /// Instances that got their warm-up requests.
    warmed: std::collections::HashSet<String>,
    /// Of those, the ones whose warm-up is done (written by the warm-up tasks).
    warm_done: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// `deploy --strategy`: the strategy of the rollout in flight when it is
    /// not the spec's own.
    strategy_override: Option<StrategySpec>,
    /// The smoke tests of the rollout's `Checks` step.
    smoke: SmokeChecks,
    /// Generation of the newest routing table published for this app's state:
    /// a drain waits until the router acknowledges it (or a newer one).
    routing_generation: u64,
    /// For an app behind per-host routers: the generation of each host
    /// router's table published for this state (`None`: that router is not
    /// reached yet; the routes wait for it).
    host_generations: std::collections::BTreeMap<String, Option<u64>>,
    /// The share of traffic (per mille) of each version last published to
    /// the host routers: a change under a canary or blue-green strategy is
    /// switched on every host at once.
    published_split: Option<Vec<(String, u32)>>,
    /// Instances whose start is in flight (the driver has not answered yet).
    starting: std::collections::HashSet<String>,
    /// Instances that ended by themselves, as the driver reports them.
    exits: exits::Exits,
    /// The driver's CPU and memory samples of the instances.
    resources: Resources,
    /// A store write failed or raced another writer: what is on disk is not
    /// known to match this controller's view. The next tick reloads it and
    /// recovers as after a restart (see [`AppController::recover`]).
    resync: bool,
    shutdown: CancellationToken,
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
        let report = Reporter::new(observations_tx, shared.delivery.clone());
        let (commands_tx, commands) = mpsc::channel(64);
        let view = Arc::new(AppView {
            state: state.clone(),
            generation,
            spec: spec.clone(),
            routing_generation: 0,
        });
        let (status, status_rx) = tokio::sync::watch::channel(view);
        let (analysis, last_check_rx) = Analysis::new();
        let (mirror, mirror_rx) = MirrorWatch::new();
        let notifier: NotifierSlot = Default::default();
        let (resources, resources_rx) = Resources::new();
        let controller = AppController {
            shared,
            spec,
            state,
            generation,
            report,
            observations,
            commands,
            status,
            readiness: Readiness::default(),
            in_progress: HashMap::new(),
            analysis,
            mirror,
            notifier: notifier.clone(),
            notify_failures: None,
            notifier_stop: shutdown.child_token(),
            warmed: Default::default(),
            warm_done: Default::default(),
            strategy_override: None,
            smoke: SmokeChecks::default(),
            routing_generation: 0,
            host_generations: Default::default(),
            published_split: None,
            starting: Default::default(),
            exits: exits::Exits::default(),
            resources,
            resync: false,
            shutdown,
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
            mirror: mirror_rx,
            notifier,
            resources: resources_rx,
        })
    }

    async fn run(mut self) {
        self.start_notifier();
        if let Err(e) = self.resume().await {
            warn!(app = %self.spec.name, error = %format!("{e:#}"), "resuming after restart failed; retrying");
            self.resync = true;
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
                    if std::mem::take(&mut self.resync)
                        && let Err(e) = self.recover().await
                    {
                        warn!(app = %self.spec.name, error = %format!("{e:#}"), "recovering from the store failed; retrying");
                        self.resync = true;
                    }
                    self.watch_exits().await;
                    self.apply_logged(Input::Tick).await;
                    self.resources.tick(&self.shared.driver, &self.state, self.shared.now_ms());
                    self.analyze().await;
                    self.record_notify_failures();
                    self.start_checks_if_due();
                    self.follow_window().await;
                    self.follow_hosts().await;
                }
            }
        }
        self.readiness.stop_all();
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
        // Instances of this app with no recorded handle to reach them by: not in
        // the state at all (started, then the control plane died before
        // recording them), or recorded as starting without the outcome (the
        // instance may have been given up since). Stop them, no orphans; the
        // engine starts fresh ones where it still needs them. A start still in
        // flight (a recovery, not a restart) is left to the driver's answer.
        let unrecorded =
            |f: &&baton_driver::FoundInstance| match self.state.instance(&f.instance_id) {
                None => true,
                Some(inst) => inst.handle.is_none() && !self.starting.contains(&inst.id),
            };
        for f in found.iter().filter(unrecorded) {
            info!(instance = %f.instance_id, locator = %f.locator, "stopping an instance whose start was never recorded");
            let _ = self
                .shared
                .driver
                .stop(&found_handle(f), self.stop_grace())
                .await;
        }
        for inst in self.state.instances.clone() {
            use baton_engine::InstancePhase as P;
            let in_flight = self.starting.contains(&inst.id);
            match &inst.phase {
                P::Pending if in_flight => {}
                P::Pending => {
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
                let webhooks_changed = spec.webhooks != self.spec.webhooks;
                self.spec = *spec;
                if webhooks_changed {
                    self.start_notifier();
                }
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
                self.resync_after(&result);
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
                self.resync_after(&result);
                self.reply_once_routed(reply, result);
            }
            Command::Retry { operator, reply } => {
                let result = self.retry(operator).await;
                self.resync_after(&result);
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

    /// A report from a background task. A process that came up after its
    /// instance was already given up (drained while still starting) is stopped
    /// here, so it cannot linger as an orphan.
    async fn observe(&mut self, obs: Observation) {
        // The readiness checkers repeat what they believe now and then
        // (`health::REASSERT_EVERY`); a repetition the state already shows
        // needs no engine step.
        if let Input::Ready { id } | Input::Unready { id } = &obs
            && let Some(inst) = self.state.instance(id)
            && matches!(inst.phase, baton_engine::InstancePhase::Ready { .. })
                == matches!(obs, Input::Ready { .. })
        {
            return;
        }
        // Warm-up: a new instance of the release being rolled out gets its
        // warm-up requests before the engine hears it is ready (and routes to it).
        if let Input::Ready { id } = &obs
            && let Some(warmup) = self.spec.hooks.warmup.clone()
            && !self.warmed.contains(id)
            && let Some(inst) = self.state.instance(id)
            && inst.phase == baton_engine::InstancePhase::Starting
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
            let (id, tx, warm_done) = (id.clone(), self.report.clone(), self.warm_done.clone());
            tokio::spawn(async move {
                let done =
                    crate::hooks::warm_up(addr, &warmup.path, warmup.requests, warmup.concurrency)
                        .await;
                info!(instance = %id, requests = done, "warm-up done");
                warm_done
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id.clone());
                let _ = tx.send(Input::Ready { id });
            });
            return;
        }
        // The checker saying `Ready` again while the warm-up runs: the
        // warm-up reports it when it is done.
        if let Input::Ready { id } = &obs
            && self.warmed.contains(id)
            && !self
                .warm_done
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(id)
        {
            return;
        }
        if let Input::Started { id, .. } | Input::StartFailed { id, .. } = &obs {
            self.starting.remove(id);
        }
        if let Input::Started { id, handle, .. } = &obs {
            let known = self.state.instance(id).is_some_and(|i| {
                i.phase == baton_engine::InstancePhase::Pending || i.handle.as_ref() == Some(handle)
            });
            // Not pending, and not this very process reported a second time
            // (that one is running as the state says: leave it alone).
            if !known {
                info!(instance = %id, "stopping an instance that started after it was given up");
                let _ = self.shared.driver.stop(handle, self.stop_grace()).await;
                return;
            }
        }
        self.apply_logged(obs).await;
    }

    /// (Re)starts the delivery of the spec's webhooks.
    fn start_notifier(&mut self) {
        self.notifier_stop.cancel();
        self.notifier_stop = self.shutdown.child_token();
        if self.spec.webhooks.is_empty() {
            *self.notifier.write().unwrap_or_else(|p| p.into_inner()) = None;
            self.notify_failures = None;
            return;
        }
        let (n, failures) =
            crate::notify::Notifier::start(&self.spec.webhooks, self.notifier_stop.clone());
        *self.notifier.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(n));
        self.notify_failures = Some(failures);
    }

    /// Queues the notices of one engine step for the app's webhooks.
    fn notify(&self, next: &AppState, actions: &[Action]) {
        let Some(n) = self
            .notifier
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        else {
            return;
        };
        let events: Vec<(baton_engine::EventKind, String)> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Event { kind, message } => Some((*kind, message.clone())),
                _ => None,
            })
            .collect();
        let r = next.rollout.as_ref().or(self.state.rollout.as_ref());
        for (notice, message) in crate::notify::notices(&self.state, next, &events) {
            n.send(
                notice,
                crate::notify::Payload {
                    app: self.spec.name.clone(),
                    environment: self.spec.environment.clone(),
                    event: notice,
                    message,
                    version: r.map(|r| r.to.version.clone()),
                    from_version: r.and_then(|r| r.from.as_ref().map(|f| f.version.clone())),
                    history_id: r.map(|r| r.history_id),
                    at_ms: self.shared.now_ms(),
                    sequence: 0,
                },
            );
        }
    }

    /// Webhook deliveries that failed go to the event log.
    fn record_notify_failures(&mut self) {
        let Some(rx) = &mut self.notify_failures else {
            return;
        };
        while let Ok((hook, why)) = rx.try_recv() {
            warn!(app = %self.spec.name, webhook = %hook, %why, "webhook delivery failed");
            let event = NewEvent::new(
                baton_engine::EventKind::NotificationFailed.as_str(),
                format!("webhook {hook}: {why}"),
            );
            if let Err(e) =
                self.shared
                    .store()
                    .append_event(&self.spec.name, &event, self.shared.now_ms())
            {
                warn!(app = %self.spec.name, error = %e, "cannot record a webhook failure");
            }
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
        // An approval is written into its rollout's history record before the
        // record can be closed (a blue-green switch ends the rollout at once).
        let approval = match (&input, &self.state.rollout) {
            (Input::Approve { by }, Some(r)) => Some((r.history_id, by.clone())),
            _ => None,
        };
        let (next, actions) = baton_engine::step(&self.state, input, now)?;
        if next == self.state && actions.is_empty() {
            return Ok(());
        }
        let events: Vec<NewEvent> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Event { kind, message } => Some(NewEvent {
                    kind: kind.as_str().into(),
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
                self.resync = true;
                self.reload_state()
                    .map_err(|e| CommandError::Internal(format!("{e:#}")))?;
                return Err(CommandError::Internal(format!(
                    "the state of {} changed underneath this command (generation {found}, not {expected}); it was reloaded: try again",
                    self.spec.name
                )));
            }
            // An error does not mean the write did not land (an I/O error
            // after the commit reached the disk): what is stored decides.
            Err(e) => match self.stored_transition(&state_json) {
                Some(g) => {
                    warn!(app = %self.spec.name, error = %e, "the store reported an error, but the transition is stored; going on");
                    g
                }
                None => {
                    // Not stored: nothing of it is acted on. The input is
                    // lost; the recovery restarts what reports observations.
                    self.resync = true;
                    return Err(CommandError::Internal(e.to_string()));
                }
            },
        };
        for e in &events {
            info!(app = %self.spec.name, kind = %e.kind, "{}", e.message);
            if is_decision(&e.kind) {
                self.shared
                    .audit_decision(&self.spec.name, &e.kind, &e.message);
            }
        }
        if let Some((history_id, by)) = approval
            && let Err(e) = self.shared.store().add_history_approver(history_id, &by)
        {
            warn!(app = %self.spec.name, error = %e, "recording the approver in the history failed");
        }
        self.notify(&next, &actions);
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
        let routed = self.routed(None);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(REPLY_ACK_WAIT, routed).await;
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

    /// A command that failed on the store (a record opened, a state not
    /// written) may have left what is stored unlike this controller's view.
    fn resync_after<T>(&mut self, result: &Result<T, CommandError>) {
        if matches!(result, Err(CommandError::Internal(_))) {
            self.resync = true;
        }
    }

    /// The generation of this transition if the store holds it (the commit
    /// reported an error but landed): the stored generation is the next one
    /// and the stored state is exactly `state_json`.
    fn stored_transition(&self, state_json: &str) -> Option<u64> {
        let rec = self.shared.store().load_state(&self.spec.name).ok()??;
        (rec.generation == self.generation + 1 && rec.state_json == state_json)
            .then_some(rec.generation)
    }

    /// After a store write that failed or raced another writer: what is on
    /// disk is the truth. Reload it and pick up what it says is under way,
    /// exactly as after a restart: the actions of a transition that landed
    /// but was not acted on, a history record left open. The sensors start
    /// over, so an observation lost with a failed write is reported again.
    async fn recover(&mut self) -> anyhow::Result<()> {
        info!(app = %self.spec.name, "reloading the state from the store and recovering");
        self.load_stored_state()?;
        self.readiness.stop_all();
        self.smoke = SmokeChecks::default();
        self.in_progress.clear();
        self.resume().await
    }

    /// The app's state and generation as the store has them.
    fn load_stored_state(&mut self) -> anyhow::Result<()> {
        let rec = self
            .shared
            .store()
            .load_state(&self.spec.name)?
            .context("the app's state vanished from the store")?;
        self.state =
            serde_json::from_str(&rec.state_json).context("stored rollout state is unreadable")?;
        self.generation = rec.generation;
        Ok(())
    }

    /// Load the app's state from the store again (after a generation conflict)
    /// and make routing and checkers follow it.
    fn reload_state(&mut self) -> anyhow::Result<()> {
        self.load_stored_state()?;
        self.publish_routing();
        self.sync_checkers();
        self.publish_view();
        Ok(())
    }

    /// Record this app's routes for its current state in the desired table
    /// (the router link delivers it and tracks the acknowledgement).
    fn publish_routing(&mut self) {
        let spec = self.effective_spec().into_owned();
        let routes = crate::routing::app_routes(&spec, &self.state);
        match spec
            .hosts
            .as_ref()
            .filter(|h| h.router == RouterPlacement::PerHost)
        {
            None => self.routing_generation = self.shared.router.publish(routes),
            Some(hosts) => {
                // Each host's router serves that host's instances only. When
                // the split between versions changes (a canary weight, a
                // blue-green switch), every host switches at once (two-phase);
                // instances coming and going are each host's own business.
                let groups = self.state.routing();
                let total: u32 = groups.iter().map(|g| g.weight).sum();
                let split: Vec<(String, u32)> = groups
                    .into_iter()
                    .filter(|g| g.weight > 0)
                    .map(|g| (g.version, g.weight * 1000 / total.max(1)))
                    .collect();
                let stepped = matches!(
                    self.state.params.strategy,
                    baton_engine::Strategy::Stepped { .. }
                );
                let switching = hosts.hosts.len() > 1
                    && stepped
                    && self.published_split.as_ref().is_some_and(|p| *p != split);
                let per_host: Vec<_> = hosts
                    .hosts
                    .iter()
                    .filter_map(|h| {
                        let link = self.shared.fleet.host(&h.name)?;
                        Some((
                            link,
                            crate::routing::host_routes(&routes, &self.state, &h.name),
                        ))
                    })
                    .collect();
                // Hosts taken out of the spec are no longer waited for.
                self.host_generations
                    .retain(|name, _| hosts.host(name).is_some());
                if switching {
                    let generations = self.shared.fleet.switch(&spec.name, per_host);
                    self.host_generations.extend(generations);
                } else {
                    for (link, mine) in per_host {
                        let generation = link.publish(mine);
                        self.host_generations
                            .insert(link.spec.name.clone(), generation);
                    }
                }
                self.published_split = Some(split);
            }
        }
    }

    /// A future that ends once every router that may send traffic to an
    /// instance on `host` (every router of the app for `None`) serves the
    /// table published last.
    fn routed(&self, host: Option<&str>) -> impl std::future::Future<Output = ()> + Send + 'static {
        let local = (self.shared.router.clone(), self.routing_generation);
        let hosts: Vec<(Arc<crate::fleet::HostLink>, Option<u64>)> = self
            .host_generations
            .iter()
            .filter(|(name, _)| host.is_none_or(|h| h == name.as_str()))
            .filter_map(|(name, g)| Some((self.shared.fleet.host(name)?, *g)))
            .collect();
        async move {
            local.0.acknowledged(local.1).await;
            futures_util::future::join_all(hosts.iter().map(|(link, g)| link.acknowledged(*g)))
                .await;
        }
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
                    // The recovery closes it from the stored state.
                    warn!(app = %self.spec.name, error = %e, "closing the history record failed");
                    self.resync = true;
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
        let obs = self.report.clone();
        let app = self.spec.name.clone();
        let host = self.state.instance(&id).and_then(|i| i.host.clone());
        tokio::spawn(async move {
            let input = match launch(&shared, &app, &id, revision, host.as_deref()).await {
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
        if self.in_progress.insert(id.clone(), Task::Drain) == Some(Task::Drain) {
            return;
        }
        let address = self
            .state
            .instance(&id)
            .and_then(|i| i.address.clone())
            .and_then(|a| a.parse::<SocketAddr>().ok());
        let router = self.shared.router.clone();
        let obs = self.report.clone();
        let timeout = self.spec.drain_timeout;
        // The newest table published for this state has the instance out of
        // routing; until the routers that may reach it acknowledge it, they
        // may still send requests.
        let host = self.state.instance(&id).and_then(|i| i.host.clone());
        let per_host = self
            .spec
            .hosts
            .as_ref()
            .is_some_and(|h| h.router == RouterPlacement::PerHost);
        // A host taken out of the spec (excluded while it does not answer)
        // can tell nothing: its instances are not waited for.
        let in_spec = |h: &str| {
            self.spec
                .hosts
                .as_ref()
                .is_some_and(|hosts| hosts.host(h).is_some())
        };
        let host_link = host
            .as_deref()
            .filter(|h| per_host && in_spec(h))
            .and_then(|h| self.shared.fleet.host(h));
        let routed = self.routed(host.as_deref());
        let app = self.spec.name.clone();
        tokio::spawn(async move {
            routed.await;
            let drained = match (&host_link, address) {
                (Some(link), Some(address)) => Some(link.wait_idle(address, timeout).await),
                (None, Some(address)) => Some(router.wait_idle(address, timeout).await),
                _ => None,
            };
            if let Some(crate::routing::Drain::TimedOut { in_flight }) = drained {
                warn!(%app, instance = %id, in_flight, "drain timeout reached with requests in flight; stopping anyway");
            }
            let _ = obs.send(Input::Drained { id });
        });
    }

    fn spawn_stop(&mut self, id: String) {
        if self.in_progress.insert(id.clone(), Task::Stop) == Some(Task::Stop) {
            return;
        }
        let handle = self.handle_of(&id);
        let shared = self.shared.clone();
        let obs = self.report.clone();
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

    /// Where this app's instances can be (see [`super::launch::discover_scope`]).
    fn discover_scope(&self) -> baton_driver::Scope {
        // The spec's engine on this machine, resolved here, when it runs here.
        let local = match &self.spec.driver {
            baton_spec::DriverSpec::Container(c) if self.spec.hosts.is_none() => {
                crate::containers::endpoint_of(c).ok()
            }
            _ => None,
        };
        super::launch::discover_scope(&self.spec, &self.state.instances, local)
    }

    /// Driver events: report instances whose process ended on its own.
    async fn watch_exits(&mut self) {
        let now = self.shared.now_ms();
        let exited = self
            .exits
            .exited(&*self.shared.driver, &self.state, now)
            .await;
        for input in exited {
            if let Input::Exited { id, .. } = &input {
                self.in_progress.remove(id);
            }
            match delivery_of(self.shared.delivery.as_ref(), &input) {
                Deliver::Once => self.apply_logged(input).await,
                Deliver::Twice => {
                    self.apply_logged(input.clone()).await;
                    self.apply_logged(input).await;
                }
                // A lost one is seen again by the next poll.
                late_or_lost => {
                    self.report.send_as(input, late_or_lost);
                }
            }
        }
    }

    /// Analysis: measure the new release; a failure past the limit is applied.
    async fn analyze(&mut self) {
        let spec = self.effective_spec().into_owned();
        if let Some(input) = self
            .analysis
            .measure(&self.shared, &spec, &self.state, &self.resources)
            .await
        {
            self.apply_logged(input).await;
        }
        if let Some(input) = self.mirror.observe(&self.shared, &spec, &self.state).await {
            self.apply_logged(input).await;
        }
    }

    /// Smoke tests: start them at a `Checks` step.
    fn start_checks_if_due(&mut self) {
        let spec = self.effective_spec().into_owned();
        self.smoke
            .start_if_due(&spec, &self.state, &self.shared.baton_exe, &self.report);
    }

    /// Upgrade windows: pause or resume the rollout as its window closes or opens.
    async fn follow_window(&mut self) {
        if let Some(input) = window::follow(&self.spec, &self.state, self.shared.now_ms()) {
            self.apply_logged(input).await;
        }
    }

    /// Lost hosts: pause the rollout while any of the app's hosts does not
    /// answer, go on once all do.
    async fn follow_hosts(&mut self) {
        let Some(hosts) = &self.spec.hosts else {
            return;
        };
        let unreachable: Vec<(String, i64)> = hosts
            .hosts
            .iter()
            .filter_map(|h| {
                let state = self.shared.fleet.host(&h.name)?.state();
                (!state.reachable).then_some((h.name.clone(), state.since_ms))
            })
            .collect();
        if let Some(input) = super::sensors::hosts::follow(&self.state, &unreachable) {
            self.apply_logged(input).await;
        }
    }

    /// Keep one readiness checker per running instance, none for the others.
    fn sync_checkers(&mut self) {
        self.readiness.sync(
            &self.state,
            &self.spec.readiness,
            &self.shared.probe,
            &self.report,
            &self.shutdown,
        );
        self.in_progress
            .retain(|id, _| self.state.instance(id).is_some());
        self.warmed.retain(|id| self.state.instance(id).is_some());
        self.warm_done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id| self.state.instance(id).is_some());
    }
}

/// A background task the controller runs for one instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Task {
    /// Waiting for the router's acknowledgement and the requests in flight.
    Drain,
    /// Stopping it through the driver.
    Stop,
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

/// Events that record what baton decided (or what a decision led to), for the
/// audit log: verdicts, rollbacks, promotions, pauses and resumptions.
fn is_decision(kind: &str) -> bool {
    use baton_engine::EventKind as K;
    [
        K::AnalysisFailed,
        K::AnalysisInconclusive,
        K::ChecksFailed,
        K::Promoted,
        K::Paused,
        K::Resumed,
        K::WaitingForWindow,
        K::RolloutFinished,
        K::RolloutFailed,
        K::RolloutAborted,
        K::SwitchingBack,
    ]
    .iter()
    .any(|k| k.as_str() == kind)
}

/// The app's webhooks, shared by its controller and `status`.
pub type NotifierSlot = Arc<std::sync::RwLock<Option<Arc<crate::notify::Notifier>>>>;
