//! The [`Router`]: owns the live snapshot, the listeners and the counters, and applies
//! pushed configs.

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
    ListenerStatus, MirrorReports, PushResult, RouterHealth, RouterStats, WindowsReport,
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
    /// Plain HTTP/1.1 requests take [`crate::fastlane`]; `BATON_ROUTER_FAST_LANE=0`
    /// sends everything through hyper (to compare the two).
    pub fast_lane: bool,
}

struct ApplyState {
    registry: Registry,
    listeners: HashMap<String, ListenerHandle>,
    /// Apps of the live config whose listener could not be bound by the last
    /// push (and the address and reason), for [`Router::stats`].
    bind_errors: HashMap<String, (SocketAddr, String)>,
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
                    fast_lane: std::env::var_os("BATON_ROUTER_FAST_LANE").is_none_or(|v| v != "0"),
                }),
                workers,
                state: Mutex::new(ApplyState {
                    registry: Registry::new(epoch, shards),
                    listeners: HashMap::new(),
                    bind_errors: HashMap::new(),
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
    /// removed apps (their open connections finish their current request).
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
        let old = self.inner.shared.table.load_full();
        if cfg.generation < old.config.generation {
            return Err(RouterError::StaleGeneration {
                current: old.config.generation,
                pushed: cfg.generation,
            });
        }
        if self.inner.shared.stopping.is_cancelled() {
            // Shutting down: keep routing what is in flight, but do not open listeners.
            return Err(RouterError::Io(std::io::Error::other(
                "router is shutting down",
            )));
        }

        // Stop listeners of removed apps first, so a new app may take over their port
        // on a later push (the socket closes once the accept task notices).
        st.listeners.retain(|app, h| {
            let keep = cfg.apps.iter().any(|a| &a.app == app);
            if !keep {
                h.stop.cancel();
            }
            keep
        });

        st.bind_errors.clear();
        let mut statuses = Vec::with_capacity(cfg.apps.len());
        let mut errors = Vec::new();
        let mut to_start = Vec::new();
        for app in &cfg.apps {
            match st.listeners.get(&app.app) {
                Some(h) if h.requested == app.listen || h.bound == app.listen => {
                    statuses.push(ListenerStatus {
                        app: app.app.clone(),
                        listen: h.bound,
                        error: None,
                    });
                }
                _ => match listener::bind(app.listen) {
                    Ok(l) => {
                        let bound = l.local_addr().unwrap_or(app.listen);
                        statuses.push(ListenerStatus {
                            app: app.app.clone(),
                            listen: bound,
                            error: None,
                        });
                        to_start.push((app.app.clone(), app.listen, bound, l));
                    }
                    Err(e) => {
                        tracing::warn!(app = %app.app, listen = %app.listen, error = %e, "cannot bind listener");
                        statuses.push(ListenerStatus {
                            app: app.app.clone(),
                            listen: app.listen,
                            error: Some(e.to_string()),
                        });
                        st.bind_errors
                            .insert(app.app.clone(), (app.listen, e.to_string()));
                        errors.push((app.app.clone(), e));
                    }
                },
            }
        }

        let generation = cfg.generation;
        let table = st.registry.build(&cfg);
        table.carry_positions(&old);
        st.registry.adopt(&table);
        self.inner.shared.table.store(Arc::new(table));
        // Always notifies, even for an equal generation: held requests re-check.
        self.inner.shared.swapped.send_replace(generation);

        for (app, requested, bound, l) in to_start {
            let stop = self.inner.shared.stopping.child_token();
            if let Some(old) = st.listeners.insert(
                app.clone(),
                ListenerHandle {
                    requested,
                    bound,
                    stop: stop.clone(),
                },
            ) {
                old.stop.cancel();
            }
            tracing::info!(app = %app, listen = %bound, "listening");
            let id = st.registry.app_id(&app);
            listener::spawn_accept(
                &self.inner.shared,
                self.inner.workers.handles(),
                listener::AppRef {
                    id,
                    name: app.into(),
                },
                l,
                stop,
            );
        }
        st.registry.prune(&cfg);
        tracing::info!(generation, apps = cfg.apps.len(), "routing config applied");
        Ok((
            PushResult {
                generation,
                listeners: statuses,
            },
            errors,
        ))
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

    /// Process id, live generation and start time.
    pub fn health(&self) -> RouterHealth {
        RouterHealth {
            pid: std::process::id(),
            generation: self.generation(),
            started_ms: self.inner.shared.started_ms,
        }
    }

    /// Stops accepting on every listener, asks every connection to close after its
    /// current request, and waits up to `grace` for them. Returns whether everything
    /// finished in time. Later pushes are refused.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        {
            // Under the apply lock so no push can start a listener after this.
            let _st = self.state();
            self.inner.shared.stopping.cancel();
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
