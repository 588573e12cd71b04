//! The [`Router`]: owns the live snapshot, the listeners and the counters, and applies
//! pushed configs, in one step ([`Router::apply`]) or two ([`Router::stage`], then
//! [`Router::commit`]: the slow, fallible part ahead, so that routers on several hosts
//! can all switch at one signal).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::RoutingConfig;
use crate::context::Shared;
use crate::error::RouterError;
use crate::listener;
use crate::stats::{
    CommitResult, ListenerStatus, MirrorReports, PushResult, RouterHealth, RouterStats,
    WindowsReport,
};
use crate::table::{Registry, Table};
use crate::upstream;
use crate::worker::{self, Workers};

/// The data plane: serves user traffic according to the last pushed [`RoutingConfig`].
///
/// Cheap to clone (all clones share the same state). Methods that bind or spawn
/// ([`Router::apply`]) must be called from within a tokio runtime.
#[derive(Clone)]
pub struct Router {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub shared: Arc<Shared>,
    /// Worker runtimes serving user traffic; stopped when the last clone of the router
    /// is dropped.
    workers: Workers,
    /// Serialises pushes; guards state only the admin path touches.
    state: Mutex<ApplyState>,
}

struct ApplyState {
    registry: Registry,
    listeners: HashMap<String, ListenerHandle>,
    /// Apps of the live config whose listener could not be bound by the last
    /// push (and the address and reason), for [`Router::stats`].
    bind_errors: HashMap<String, (SocketAddr, String)>,
    /// The table of the last stage, waiting for its commit.
    staged: Option<Prepared>,
    /// When the live table was swapped in (µs since the Unix epoch); 0 before the
    /// first swap.
    switched_at_us: u64,
    /// Listening sockets received from the router this one took over from, by app,
    /// used by the next push instead of binding (see [`Router::adopt`]).
    inherited: HashMap<String, Offered>,
    /// A handover to a successor is under way or done: pushes are refused.
    handing_over: bool,
    /// Pid of the router this one took over from.
    predecessor: Option<u32>,
}

/// An app's listening socket as handed from one router process to the next.
pub(crate) struct Offered {
    pub app: String,
    /// The address the config asked for (may have port 0).
    pub requested: SocketAddr,
    /// The address it is bound to.
    pub bound: SocketAddr,
    pub socket: std::net::TcpListener,
}

/// A config made ready to go live: compiled, its new listeners bound (not accepting
/// yet: connections wait in the backlog), so that going live cannot fail.
struct Prepared {
    table: Table,
    /// Listener of each app, as the push or stage answers it.
    statuses: Vec<ListenerStatus>,
    /// Apps whose listener could not be bound.
    bind_errors: HashMap<String, (SocketAddr, String)>,
    /// Listeners for apps not served at their address yet.
    bound: Vec<NewListener>,
}

impl Prepared {
    fn generation(&self) -> u64 {
        self.table.config.generation
    }

    fn result(&self) -> PushResult {
        PushResult {
            generation: self.generation(),
            listeners: self.statuses.clone(),
        }
    }
}

struct NewListener {
    app: String,
    requested: SocketAddr,
    bound: SocketAddr,
    listener: tokio::net::TcpListener,
}

fn refuse_when_handing_over(st: &ApplyState) -> Result<(), RouterError> {
    if st.handing_over {
        return Err(RouterError::HandingOver);
    }
    Ok(())
}

/// The inherited socket of `app`, if it is bound to (or was asked for as) `listen`,
/// ready for the runtime.
fn take_inherited(st: &mut ApplyState, app: &str, listen: SocketAddr) -> Option<NewListener> {
    let o = st
        .inherited
        .remove(app)
        .filter(|o| o.requested == listen || o.bound == listen)?;
    let listener = o
        .socket
        .set_nonblocking(true)
        .and_then(|()| tokio::net::TcpListener::from_std(o.socket));
    match listener {
        Ok(listener) => {
            tracing::info!(app, listen = %o.bound, "listening on the socket handed over");
            Some(NewListener {
                app: o.app,
                requested: o.requested,
                bound: o.bound,
                listener,
            })
        }
        Err(e) => {
            tracing::warn!(app, error = %e, "cannot use the socket handed over; binding anew");
            None
        }
    }
}

/// Wall clock in microseconds since the Unix epoch.
fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

struct ListenerHandle {
    requested: SocketAddr,
    bound: SocketAddr,
    /// Stops its connections (and, being its parent, `accept`).
    stop: CancellationToken,
    /// Stops accepting only.
    accept: CancellationToken,
    /// A duplicate of the listening socket, to hand to a successor process.
    socket: Option<std::net::TcpListener>,
}

impl Default for Router {
    fn default() -> Self {
        Self::new()
    }
}

impl Router {
    /// A router with an empty table (generation 0) and no listeners, serving user
    /// traffic on one worker thread per CPU.
    pub fn new() -> Self {
        Self::with_workers(worker::default_count())
    }

    /// Like [`Router::new`] with `workers` worker threads (at least one). Each worker
    /// runs a single-threaded runtime with its own accept loop per listener and its own
    /// upstream connection pool.
    pub fn with_workers(workers: usize) -> Self {
        let workers = Workers::start(workers, upstream::SWEEP_EVERY, upstream::sweep)
            .unwrap_or_else(|e| {
                // Without worker threads, listeners run on the runtime that applies the
                // config; slower on many cores but correct.
                tracing::warn!(error = %e, "cannot start router worker threads");
                Workers::none()
            });
        let started_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let (swapped, _) = watch::channel(0);
        let epoch = std::time::Instant::now();
        let shards = workers.handles().len().max(1);
        Router {
            inner: Arc::new(Inner {
                shared: Arc::new(Shared::new(swapped, epoch, started_ms)),
                workers,
                state: Mutex::new(ApplyState {
                    registry: Registry::new(epoch, shards),
                    listeners: HashMap::new(),
                    bind_errors: HashMap::new(),
                    staged: None,
                    switched_at_us: 0,
                    inherited: HashMap::new(),
                    handing_over: false,
                    predecessor: None,
                }),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, ApplyState> {
        // A panic while holding the lock cannot leave ApplyState half-updated in a way
        // that matters more than refusing all future pushes would, so recover.
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies a pushed config: validates it, refuses a generation lower than the live
    /// one ([`RouterError::StaleGeneration`]), binds listeners of new apps and of apps
    /// whose address changed, publishes the new snapshot, then stops listeners of
    /// removed apps (their open connections finish their current request). Discards
    /// the staged table, if any.
    ///
    /// A listener that fails to bind is reported in the result and does not stop the
    /// rest of the config from being applied; re-pushing retries the bind.
    pub fn apply(&self, cfg: RoutingConfig) -> Result<PushResult, RouterError> {
        Ok(self.apply_detailed(cfg)?.0)
    }

    /// Like [`Router::apply`], also returning the bind errors as `io::Error`s by app.
    pub(crate) fn apply_detailed(
        &self,
        cfg: RoutingConfig,
    ) -> Result<(PushResult, Vec<(String, std::io::Error)>), RouterError> {
        cfg.validate().map_err(RouterError::InvalidConfig)?;
        let mut st = self.state();
        let live = self.generation();
        if cfg.generation < live {
            return Err(RouterError::StaleGeneration {
                current: live,
                pushed: cfg.generation,
            });
        }
        self.refuse_when_stopping()?;
        refuse_when_handing_over(&st)?;

        // Stop listeners of removed apps first, so a new app may take over their port
        // on a later push (the socket closes once the accept task notices).
        st.listeners.retain(|app, h| {
            let keep = cfg.apps.iter().any(|a| &a.app == app);
            if !keep {
                h.stop.cancel();
            }
            keep
        });

        // Discards the staged table (taking the sockets it can use): it was prepared
        // against the live state this push replaces.
        let (prepared, errors) = self.prepare(&mut st, cfg);
        let result = prepared.result();
        self.go_live(&mut st, prepared);
        Ok((result, errors))
    }

    /// First phase of a two-phase switch: does everything a push does up to the swap
    /// (validate, compile, bind the listeners it needs) and keeps the result as the
    /// staged table, replacing any earlier one, until [`Router::commit`] makes it live.
    /// Refuses a generation not newer than the live one
    /// ([`RouterError::StaleGeneration`]). Binding errors are reported as for a push.
    pub fn stage(&self, cfg: RoutingConfig) -> Result<PushResult, RouterError> {
        cfg.validate().map_err(RouterError::InvalidConfig)?;
        let mut st = self.state();
        let live = self.generation();
        // Strictly newer: a commit of the live generation answers "already live".
        if cfg.generation <= live {
            return Err(RouterError::StaleGeneration {
                current: live,
                pushed: cfg.generation,
            });
        }
        self.refuse_when_stopping()?;
        refuse_when_handing_over(&st)?;
        let (prepared, _) = self.prepare(&mut st, cfg);
        let result = prepared.result();
        tracing::info!(generation = result.generation, "routing config staged");
        st.staged = Some(prepared);
        Ok(result)
    }

    /// Second phase: makes the staged table live, if it has `generation`, in the same
    /// swap a push ends with, and answers when that happened. Answers the earlier
    /// switch again if `generation` is already live (a retried commit). Otherwise
    /// [`RouterError::NotStaged`], changing nothing.
    pub fn commit(&self, generation: u64) -> Result<CommitResult, RouterError> {
        let mut st = self.state();
        let live = self.generation();
        if generation == live {
            return Ok(CommitResult {
                generation,
                switched_at_us: st.switched_at_us,
            });
        }
        refuse_when_handing_over(&st)?;
        // No stage survives a shutdown (it drops the staged table under this lock).
        let Some(prepared) = st.staged.take_if(|p| p.generation() == generation) else {
            return Err(RouterError::NotStaged {
                generation,
                staged: st.staged.as_ref().map(Prepared::generation),
                live,
            });
        };
        let switched_at_us = self.go_live(&mut st, prepared);
        Ok(CommitResult {
            generation,
            switched_at_us,
        })
    }

    fn refuse_when_stopping(&self) -> Result<(), RouterError> {
        if self.inner.shared.stopping.is_cancelled() {
            // Shutting down: keep routing what is in flight, but do not open listeners.
            return Err(RouterError::ShuttingDown);
        }
        Ok(())
    }

    /// The fallible part of a push: binds what `cfg` needs and compiles its table,
    /// without changing what is served. Takes the staged table's sockets where their
    /// app still asks for the same address (they may hold waiting connections, and a
    /// fixed port cannot be bound twice) and drops the rest of it.
    fn prepare(
        &self,
        st: &mut ApplyState,
        cfg: RoutingConfig,
    ) -> (Prepared, Vec<(String, std::io::Error)>) {
        let wants = |app: &str, requested: SocketAddr, bound: SocketAddr| {
            cfg.apps
                .iter()
                .any(|a| a.app == app && (a.listen == requested || a.listen == bound))
        };
        let mut spare: HashMap<String, NewListener> = st
            .staged
            .take()
            .map(|p| p.bound)
            .unwrap_or_default()
            .into_iter()
            .filter(|l| wants(&l.app, l.requested, l.bound))
            .map(|l| (l.app.clone(), l))
            .collect();

        let mut statuses = Vec::with_capacity(cfg.apps.len());
        let mut bind_errors = HashMap::new();
        let mut errors = Vec::new();
        let mut bound = Vec::new();
        for app in &cfg.apps {
            let ok = |listen| ListenerStatus {
                app: app.app.clone(),
                listen,
                error: None,
            };
            match st.listeners.get(&app.app) {
                Some(h) if h.requested == app.listen || h.bound == app.listen => {
                    statuses.push(ok(h.bound));
                    continue;
                }
                _ => {}
            }
            if let Some(l) = spare.remove(&app.app) {
                statuses.push(ok(l.bound));
                bound.push(l);
                continue;
            }
            if let Some(l) = take_inherited(st, &app.app, app.listen) {
                statuses.push(ok(l.bound));
                bound.push(l);
                continue;
            }
            match listener::bind(app.listen) {
                Ok(l) => {
                    let addr = l.local_addr().unwrap_or(app.listen);
                    statuses.push(ok(addr));
                    bound.push(NewListener {
                        app: app.app.clone(),
                        requested: app.listen,
                        bound: addr,
                        listener: l,
                    });
                }
                Err(e) => {
                    tracing::warn!(app = %app.app, listen = %app.listen, error = %e, "cannot bind listener");
                    statuses.push(ListenerStatus {
                        app: app.app.clone(),
                        listen: app.listen,
                        error: Some(e.to_string()),
                    });
                    bind_errors.insert(app.app.clone(), (app.listen, e.to_string()));
                    errors.push((app.app.clone(), e));
                }
            }
        }
        let table = st.registry.build(&cfg);
        let prepared = Prepared {
            table,
            statuses,
            bind_errors,
            bound,
        };
        (prepared, errors)
    }

    /// Makes `p` the live table, then starts its new listeners and stops those of apps
    /// it no longer has. Cannot fail. Returns when the swap happened (µs since the Unix
    /// epoch).
    fn go_live(&self, st: &mut ApplyState, p: Prepared) -> u64 {
        let Prepared {
            table,
            statuses: _,
            bind_errors,
            bound,
        } = p;
        let shared = &self.inner.shared;
        let cfg = table.config.clone();
        table.carry_positions(&shared.table.load());
        st.registry.adopt(&table);
        let old = shared.table.swap(Arc::new(table));
        let switched_at_us = unix_micros();
        // Always notifies, even for an equal generation: held requests re-check.
        shared.swapped.send_replace(cfg.generation);

        st.listeners.retain(|app, h| {
            let keep = cfg.apps.iter().any(|a| &a.app == app);
            if !keep {
                h.stop.cancel();
            }
            keep
        });
        for l in bound {
            let stop = shared.stopping.child_token();
            let accept = stop.child_token();
            // One more descriptor per app, so a successor can be handed the socket.
            let socket = match socket2::SockRef::from(&l.listener).try_clone() {
                Ok(s) => Some(std::net::TcpListener::from(s)),
                Err(e) => {
                    tracing::warn!(app = %l.app, error = %e, "cannot keep the listener for a handover");
                    None
                }
            };
            if let Some(old) = st.listeners.insert(
                l.app.clone(),
                ListenerHandle {
                    requested: l.requested,
                    bound: l.bound,
                    stop: stop.clone(),
                    accept: accept.clone(),
                    socket,
                },
            ) {
                old.stop.cancel();
            }
            tracing::info!(app = %l.app, listen = %l.bound, "listening");
            let id = st.registry.app_id(&l.app);
            listener::spawn_accept(
                shared,
                self.inner.workers.handles(),
                crate::context::AppRef {
                    id,
                    name: l.app.into(),
                },
                l.listener,
                accept,
                stop,
            );
        }
        st.bind_errors = bind_errors;
        st.registry.prune(&cfg);
        st.switched_at_us = switched_at_us;
        // The old table may be freed here; not before the clock was read.
        drop(old);
        tracing::info!(
            generation = cfg.generation,
            apps = cfg.apps.len(),
            switched_at_us,
            "routing config applied"
        );
        switched_at_us
    }

    /// The live config (what the last accepted push said).
    pub fn config(&self) -> RoutingConfig {
        self.inner.shared.table.load().config.as_ref().clone()
    }

    /// Generation of the live config.
    pub fn generation(&self) -> u64 {
        self.inner.shared.table.load().config.generation
    }

    /// The address `app` is being served on, if its listener is up.
    pub fn listen_addr(&self, app: &str) -> Option<SocketAddr> {
        self.state().listeners.get(app).map(|h| h.bound)
    }

    /// Current counters, and the listener of each app.
    pub fn stats(&self) -> RouterStats {
        let generation = self.generation();
        let config = self.inner.shared.table.load().config.clone();
        let st = self.state();
        let mut stats = st.registry.stats(generation);
        stats.listeners = config
            .apps
            .iter()
            .map(
                |a| match (st.bind_errors.get(&a.app), st.listeners.get(&a.app)) {
                    (Some((listen, error)), _) => ListenerStatus {
                        app: a.app.clone(),
                        listen: *listen,
                        error: Some(error.clone()),
                    },
                    (None, Some(h)) => ListenerStatus {
                        app: a.app.clone(),
                        listen: h.bound,
                        error: None,
                    },
                    (None, None) => ListenerStatus {
                        app: a.app.clone(),
                        listen: a.listen,
                        error: Some("not listening".into()),
                    },
                },
            )
            .collect();
        stats.listeners.sort_by(|a, b| a.app.cmp(&b.app));
        stats
    }

    /// Per (app, version) metrics over the last `last` (rounded up to whole seconds,
    /// 1..=64).
    pub fn windows(&self, last: Duration) -> WindowsReport {
        self.state().registry.windows(last)
    }

    /// Every metric in the Prometheus text format (version 0.0.4).
    pub fn prometheus(&self) -> String {
        self.state().registry.prometheus()
    }

    /// Mirror comparisons per app.
    pub fn mirror_reports(&self) -> MirrorReports {
        self.state().registry.mirror_reports()
    }

    /// The recording state of a configured app.
    pub(crate) fn record_state(
        &self,
        app: &str,
    ) -> Option<std::sync::Arc<crate::record::RecordState>> {
        self.state().registry.record(app)
    }

    /// Process id, live generation, start time, and the two-phase switch state.
    pub fn health(&self) -> RouterHealth {
        let st = self.state();
        RouterHealth {
            pid: std::process::id(),
            generation: self.generation(),
            started_ms: self.inner.shared.started_ms(),
            staged: st.staged.as_ref().map(Prepared::generation),
            switched_at_us: st.switched_at_us,
            build: crate::build_info::build_id().to_string(),
            predecessor: st.predecessor,
        }
    }

    /// Starts handing this router over to a successor process: refuses pushes from
    /// now on (until [`Router::abandon_handover`]) and answers the live config with a
    /// duplicate of each app's listening socket, taken together under the apply lock.
    pub(crate) fn begin_handover(&self) -> Result<(RoutingConfig, Vec<Offered>), RouterError> {
        let mut st = self.state();
        self.refuse_when_stopping()?;
        refuse_when_handing_over(&st)?;
        st.handing_over = true;
        // A staged table would be lost with this process; its control plane stages again.
        st.staged = None;
        let config = self.config();
        let mut offered = Vec::with_capacity(st.listeners.len());
        for (app, h) in &st.listeners {
            let Some(socket) = h.socket.as_ref() else {
                continue;
            };
            match socket.try_clone() {
                Ok(socket) => offered.push(Offered {
                    app: app.clone(),
                    requested: h.requested,
                    bound: h.bound,
                    socket,
                }),
                Err(e) => {
                    tracing::warn!(app = %app, error = %e, "cannot duplicate the listener for a handover");
                }
            }
        }
        offered.sort_by(|a, b| a.app.cmp(&b.app));
        Ok((config, offered))
    }

    /// The successor failed before taking over: serve as before, accepting pushes.
    pub(crate) fn abandon_handover(&self) {
        self.state().handing_over = false;
    }

    /// The successor accepts on the same sockets now: stop accepting on every listener
    /// (the sockets stay open in the successor, so nothing waiting in their backlog is
    /// lost) and end every HTTP/1 connection after its next response. Pushes stay
    /// refused.
    pub(crate) fn step_down(&self) {
        let mut st = self.state();
        self.inner.shared.step_down();
        for h in st.listeners.values_mut() {
            h.accept.cancel();
            // The successor holds the sockets now.
            h.socket = None;
        }
    }

    /// Closes the client connections that wait for a request (those under way finish
    /// their response first); upgraded connections (WebSockets) are left running.
    pub(crate) fn close_idle(&self) {
        for h in self.state().listeners.values() {
            h.stop.cancel();
        }
    }

    /// Connections (and upgraded streams) still open, plus running accept loops.
    pub(crate) fn open_tasks(&self) -> usize {
        self.inner.shared.tasks.len()
    }

    /// Lets [`Router::wait_tracked`] finish once no task is left (tasks may still be
    /// added: it only ends the waiting).
    pub(crate) fn close_tracker(&self) {
        self.inner.shared.tasks.close();
    }

    /// Waits until every tracked task ended, once [`Router::close_tracker`] was called.
    pub(crate) async fn wait_tracked(&self) {
        self.inner.shared.tasks.wait().await;
    }

    /// Applies `cfg` (the config of the router this one takes over from, or its own)
    /// using the listening sockets `inherited` where an app asks for the address one is
    /// bound to, binding the others. Records `predecessor` for [`Router::health`].
    pub(crate) fn adopt(
        &self,
        cfg: RoutingConfig,
        inherited: Vec<Offered>,
        predecessor: u32,
    ) -> Result<(PushResult, Vec<(String, std::io::Error)>), RouterError> {
        {
            let mut st = self.state();
            st.predecessor = Some(predecessor);
            st.inherited = inherited.into_iter().map(|o| (o.app.clone(), o)).collect();
        }
        let result = self.apply_detailed(cfg);
        // Sockets no app asked for close here.
        self.state().inherited.clear();
        result
    }

    /// Stops accepting on every listener, asks every connection to close after its
    /// current request, and waits up to `grace` for them. Returns whether everything
    /// finished in time. Later pushes are refused.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        {
            // Under the apply lock so no push can start a listener after this.
            let mut st = self.state();
            self.inner.shared.stopping.cancel();
            // Its listeners would never be started: close them now.
            st.staged = None;
            // The duplicates kept for a handover: with the accept loops gone, the
            // sockets close (the kernel stops completing connections on them).
            for h in st.listeners.values_mut() {
                h.socket = None;
            }
        }
        self.inner.shared.tasks.close();
        let done = tokio::time::timeout(grace, self.inner.shared.tasks.wait())
            .await
            .is_ok();
        if !done {
            tracing::warn!(grace = ?grace, "connections still open after the drain deadline");
        }
        done
    }
}
