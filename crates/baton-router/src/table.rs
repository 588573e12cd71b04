//! The immutable routing snapshot and the counters it points at.
//!
//! A [`Table`] is built from a [`RoutingConfig`] on every push and published whole
//! through an `ArcSwap`; requests only read it. Counters live in the [`Registry`] and
//! are shared (by `Arc`) with each snapshot, so they survive swaps: a backend removed
//! from the config keeps its in-flight count visible until its last response ends.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use std::time::Duration;
use tokio::sync::Notify;

use crate::config::RoutingConfig;
use crate::limits::Limits;
use crate::select;
use crate::stats::{AppStats, BackendStats, RouterStats, VersionStats};

/// Counters of one app.
#[derive(Default)]
pub(crate) struct AppCounters {
    pub requests: AtomicU64,
    pub held: AtomicU64,
    pub no_backend: AtomicU64,
}

/// Counters of one (app, version).
#[derive(Default)]
pub(crate) struct VersionCounters {
    pub requests: AtomicU64,
    pub status: [AtomicU64; 5],
    pub router_errors: AtomicU64,
    pub retries: AtomicU64,
    pub in_flight: AtomicU64,
}

impl VersionCounters {
    pub fn record_status(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.status[class].fetch_add(1, Ordering::Relaxed);
    }
}

/// Counters and health hint of one backend address.
#[derive(Default)]
pub(crate) struct BackendState {
    pub in_flight: AtomicU64,
    pub requests: AtomicU64,
    pub failures: AtomicU64,
    /// Router-clock millisecond until which the picker avoids this backend after a
    /// connect failure.
    pub down_until_ms: AtomicU64,
    /// Not in the live routing table: long-lived streams to it start their grace.
    pub removed: AtomicBool,
    /// Woken when `removed` becomes true.
    pub removed_notify: Notify,
}

/// One routing snapshot.
pub(crate) struct Table {
    pub config: Arc<RoutingConfig>,
    pub apps: HashMap<String, Arc<AppTable>>,
    /// The same apps indexed by their stable id ([`Registry::app_id`]), so a request
    /// finds its app without hashing its name.
    by_id: Vec<Option<Arc<AppTable>>>,
}

impl Table {
    pub fn empty() -> Self {
        Table {
            config: Arc::new(RoutingConfig::default()),
            apps: HashMap::new(),
            by_id: Vec::new(),
        }
    }

    /// The app with stable id `id`, if it is in this snapshot.
    #[inline]
    pub fn app(&self, id: usize) -> Option<&Arc<AppTable>> {
        self.by_id.get(id).and_then(Option::as_ref)
    }
}

pub(crate) struct AppTable {
    pub hold_timeout: Duration,
    pub limits: Limits,
    pub counters: Arc<AppCounters>,
    pub versions: Vec<VersionTable>,
    /// One smooth-WRR cycle over `versions` (indices); empty when nothing is routable.
    cycle: Vec<usize>,
    next: AtomicUsize,
}

pub(crate) struct VersionTable {
    pub counters: Arc<VersionCounters>,
    pub backends: Vec<BackendEntry>,
    weight: u32,
    next: AtomicUsize,
}

pub(crate) struct BackendEntry {
    pub addr: SocketAddr,
    pub state: Arc<BackendState>,
}

impl AppTable {
    /// True when at least one version with weight > 0 has a backend.
    pub fn routable(&self) -> bool {
        !self.cycle.is_empty()
    }

    /// The version for a new request, by smooth weighted round robin.
    pub fn pick_version(&self) -> Option<usize> {
        if self.cycle.is_empty() {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.cycle.get(n % self.cycle.len()).copied()
    }

    /// A backend for one attempt: round robin within `primary`, then the other
    /// versions with weight > 0, preferring backends not yet `tried` and not marked
    /// down (see [`select::rank`]). Returns (version index, backend index).
    ///
    /// `now_ms` is only called when some backend carries a "down" mark.
    pub fn pick_backend(
        &self,
        primary: usize,
        tried: &[SocketAddr],
        now_ms: impl Fn() -> u64,
    ) -> Option<(usize, usize)> {
        let order = std::iter::once(primary).chain(
            (0..self.versions.len()).filter(move |&v| v != primary && self.versions[v].weight > 0),
        );
        let now_ms = &now_ms;
        let candidates = order.flat_map(move |v| {
            let version = &self.versions[v];
            // Lazily evaluated: other versions' counters only move when reached.
            let start = version.next.fetch_add(1, Ordering::Relaxed);
            select::rotated(version.backends.len(), start).map(move |b| {
                let be = &version.backends[b];
                let tried = tried.contains(&be.addr);
                let until = be.state.down_until_ms.load(Ordering::Relaxed);
                let down = until != 0 && until > now_ms();
                ((v, b), select::rank(tried, down))
            })
        });
        select::best(candidates)
    }
}

#[derive(Default)]
struct AppEntry {
    counters: Arc<AppCounters>,
    versions: BTreeMap<String, Arc<VersionCounters>>,
    backends: BTreeMap<SocketAddr, Arc<BackendState>>,
}

/// Every counter the router keeps, by app. Touched only when applying a config and
/// when reading stats (both on the admin path, under the router's apply lock).
#[derive(Default)]
pub(crate) struct Registry {
    apps: BTreeMap<String, AppEntry>,
    /// Stable ids of app names; never reused, so a connection of a removed app can
    /// never be served as another app.
    ids: HashMap<String, usize>,
}

impl Registry {
    /// The stable id of `app`, assigned on first sight.
    pub fn app_id(&mut self, app: &str) -> usize {
        let next = self.ids.len();
        *self.ids.entry(app.to_string()).or_insert(next)
    }

    /// Builds the snapshot for `cfg`, reusing counters by name/address and carrying
    /// round-robin positions over from `old` so a swap does not restart the split.
    pub fn build(&mut self, cfg: &RoutingConfig, old: &Table) -> Table {
        let mut apps = HashMap::new();
        let mut by_id: Vec<Option<Arc<AppTable>>> = Vec::new();
        for app in &cfg.apps {
            let id = self.app_id(&app.app);
            let entry = self.apps.entry(app.app.clone()).or_default();
            let old_app = old.apps.get(&app.app);
            let versions: Vec<VersionTable> = app
                .versions
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let counters = entry.versions.entry(v.version.clone()).or_default().clone();
                    let backends = v
                        .backends
                        .iter()
                        .map(|b| BackendEntry {
                            addr: b.address,
                            state: entry.backends.entry(b.address).or_default().clone(),
                        })
                        .collect();
                    let next = old_app
                        .and_then(|a| a.versions.get(i))
                        .map_or(0, |ov| ov.next.load(Ordering::Relaxed));
                    VersionTable {
                        counters,
                        backends,
                        weight: v.weight,
                        next: AtomicUsize::new(next),
                    }
                })
                .collect();
            let weights: Vec<u32> = versions
                .iter()
                .map(|v| if v.backends.is_empty() { 0 } else { v.weight })
                .collect();
            let cycle = select::smooth_wrr_cycle(&weights);
            let next = old_app.map_or(0, |a| a.next.load(Ordering::Relaxed));
            let table = Arc::new(AppTable {
                hold_timeout: Duration::from_millis(app.hold_timeout_ms),
                limits: Limits::default(),
                counters: entry.counters.clone(),
                versions,
                cycle,
                next: AtomicUsize::new(next),
            });
            if by_id.len() <= id {
                by_id.resize(id + 1, None);
            }
            by_id[id] = Some(table.clone());
            apps.insert(app.app.clone(), table);
        }
        self.mark_removed(cfg);
        Table {
            config: Arc::new(cfg.clone()),
            apps,
            by_id,
        }
    }

    /// Flags every known backend as in or out of `cfg`, waking the streams of those
    /// that left it.
    fn mark_removed(&self, cfg: &RoutingConfig) {
        for (name, entry) in &self.apps {
            let live = cfg.apps.iter().find(|a| &a.app == name);
            for (addr, s) in &entry.backends {
                let present = live.is_some_and(|a| {
                    a.versions
                        .iter()
                        .any(|v| v.backends.iter().any(|b| b.address == *addr))
                });
                let was = s.removed.swap(!present, Ordering::SeqCst);
                if !present && !was {
                    s.removed_notify.notify_waiters();
                }
            }
        }
    }

    /// Drops counters of versions, backends and apps that are no longer configured and
    /// have nothing in flight.
    pub fn prune(&mut self, cfg: &RoutingConfig) {
        let idle = |n: &AtomicU64| n.load(Ordering::SeqCst) == 0;
        self.apps.retain(|name, entry| {
            let live = cfg.apps.iter().find(|a| &a.app == name);
            entry.versions.retain(|v, c| {
                live.is_some_and(|a| a.versions.iter().any(|x| &x.version == v))
                    || !idle(&c.in_flight)
            });
            entry.backends.retain(|addr, s| {
                live.is_some_and(|a| {
                    a.versions
                        .iter()
                        .any(|v| v.backends.iter().any(|b| b.address == *addr))
                }) || !idle(&s.in_flight)
            });
            live.is_some() || !entry.versions.is_empty() || !entry.backends.is_empty()
        });
    }

    pub fn stats(&self, generation: u64) -> RouterStats {
        let get = |n: &AtomicU64| n.load(Ordering::Relaxed);
        let apps = self
            .apps
            .iter()
            .map(|(name, e)| AppStats {
                app: name.clone(),
                requests: get(&e.counters.requests),
                held: get(&e.counters.held),
                no_backend: get(&e.counters.no_backend),
                versions: e
                    .versions
                    .iter()
                    .map(|(v, c)| VersionStats {
                        version: v.clone(),
                        requests: get(&c.requests),
                        status_1xx: get(&c.status[0]),
                        status_2xx: get(&c.status[1]),
                        status_3xx: get(&c.status[2]),
                        status_4xx: get(&c.status[3]),
                        status_5xx: get(&c.status[4]),
                        router_errors: get(&c.router_errors),
                        retries: get(&c.retries),
                        in_flight: get(&c.in_flight),
                    })
                    .collect(),
                backends: e
                    .backends
                    .iter()
                    .map(|(addr, s)| BackendStats {
                        address: *addr,
                        in_flight: get(&s.in_flight),
                        requests: get(&s.requests),
                        failures: get(&s.failures),
                    })
                    .collect(),
            })
            .collect();
        RouterStats { generation, apps }
    }
}
