//! The [`Router`]: owns the live snapshot, the listeners and the counters, and applies
//! pushed configs, in one step ([`Router::apply`]) or two ([`Router::stage`], then
//! [`Router::commit`]: the slow, fallible part ahead, so that routers on several hosts
//! can all switch at one signal).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::RoutingConfig;
use crate::error::RouterError;
use crate::listener;
use crate::stats::{
    CommitResult, ListenerStatus, MirrorReports, PushResult, RouterHealth, RouterStats,
    WindowsReport,
};
use crate::table::{Registry, Table};
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

/// What the request path reads: shared by every worker.
pub(crate) struct Shared {
    /// The live snapshot; read lock-free by every request.
    pub table: ArcSwap<Table>,
    /// Signalled (with the generation) after every swap; held requests wait on it.
    pub swapped: watch::Sender<u64>,
    /// Origin of the router clock used for "backend down until" marks.
    epoch: std::time::Instant,
    started_ms: i64,
    /// Every listener and connection task, for draining on shutdown.
    pub tasks: TaskTracker,
    /// Parent of every listener's stop token.
    pub stopping: CancellationToken,
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

/// Wall clock in microseconds since the Unix epoch.
fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

struct ListenerHandle {
    requested: SocketAddr,
    bound: SocketAddr,
    stop: CancellationToken,
}

impl Shared {
    /// Milliseconds on the router clock (monotonic).
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
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
        let workers = Workers::start(workers).unwrap_or_else(|e| {
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
                shared: Arc::new(Shared {
                    table: ArcSwap::from_pointee(Table::empty()),
                    swapped,
                    epoch,
                    started_ms,
                    tasks: TaskTracker::new(),
                    stopping: CancellationToken::new(),
                }),
                workers,
                state: Mutex::new(ApplyState {
                    registry: Registry::new(epoch, shards),
                    listeners: HashMap::new(),
                    bind_errors: HashMap::new(),
                    staged: None,
                    switched_at_us: 0,
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
            if let Some(old) = st.listeners.insert(
                l.app.clone(),
                ListenerHandle {
                    requested: l.requested,
                    bound: l.bound,
                    stop: stop.clone(),
                },
            ) {
                old.stop.cancel();
            }
            tracing::info!(app = %l.app, listen = %l.bound, "listening");
            let id = st.registry.app_id(&l.app);
            listener::spawn_accept(
                shared,
                self.inner.workers.handles(),
                listener::AppRef {
                    id,
                    name: l.app.into(),
                },
                l.listener,
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
            started_ms: self.inner.shared.started_ms,
            staged: st.staged.as_ref().map(Prepared::generation),
            switched_at_us: st.switched_at_us,
        }
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
