//! The immutable routing snapshot and the counters it points at.
//!
//! A [`Table`] is built from a [`RoutingConfig`] on every push and published whole
//! through an `ArcSwap`; requests only read it. Counters live in the [`Registry`] and
//! are shared (by `Arc`) with each snapshot, so they survive swaps: a backend removed
//! from the config keeps its in-flight count visible until its last response ends.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::config::{Balance, MirrorConfig, RoutingConfig};
use crate::limits::Limits;
use crate::metrics::{Merged, RequestSample, Series, VersionMetrics, WindowStats};
use crate::mirror::{CompareRules, MirrorReport, MismatchSamples};
use crate::record::RecordState;
use crate::rules::{CompiledRules, RequestHeaders};
use crate::select;
use crate::stats::{
    AppMirrorReport, AppStats, AppWindows, BackendStats, MirrorReports, RouterStats, VersionStats,
    VersionWindow, WindowsReport,
};

/// Mirror copies under way per app and worker; more are dropped (and counted).
pub(crate) const MIRROR_MAX_IN_FLIGHT: usize = 64;

/// Counters of one app.
#[derive(Default)]
pub(crate) struct AppCounters {
    pub requests: AtomicU64,
    pub held: AtomicU64,
    pub no_backend: AtomicU64,
    /// Client connections open now.
    pub connections: AtomicI64,
}

/// Mirroring state of one app; survives config pushes.
#[derive(Default)]
pub(crate) struct MirrorState {
    /// Eligible requests seen (input of [`crate::mirror::should_mirror`]).
    pub counter: AtomicU64,
    /// Mirror copies under way.
    pub in_flight: AtomicUsize,
    /// Copies not sent because too many were under way.
    pub dropped: AtomicU64,
    /// Copies whose comparison could not be made (the user's response did not end).
    pub abandoned: AtomicU64,
    pub samples: Mutex<MismatchSamples>,
}

impl MirrorState {
    pub fn samples(&self) -> MutexGuard<'_, MismatchSamples> {
        self.samples.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One worker's metrics of one (app, version), on its own cache lines.
#[repr(align(128))]
pub(crate) struct Shard(VersionMetrics);

/// Counters of one (app, version).
pub(crate) struct VersionCounters {
    pub requests: AtomicU64,
    pub status: [AtomicU64; 5],
    pub router_errors: AtomicU64,
    pub retries: AtomicU64,
    pub in_flight: AtomicU64,
    /// Failures of this version that shielding retried on the stable version.
    pub shielded: AtomicU64,
    /// Windowed metrics, one shard per worker: each worker writes only its own, and
    /// the admin reader folds them without taking any lock a worker takes.
    metrics: Box<[Shard]>,
}

impl VersionCounters {
    fn new(epoch: Instant, shards: usize) -> Self {
        VersionCounters {
            requests: AtomicU64::new(0),
            status: Default::default(),
            router_errors: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            shielded: AtomicU64::new(0),
            metrics: (0..shards.max(1))
                .map(|_| Shard(VersionMetrics::new(epoch)))
                .collect(),
        }
    }

    pub fn record_status(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.status[class].fetch_add(1, Ordering::Relaxed);
    }

    /// This worker's metrics shard.
    #[inline]
    fn shard(&self) -> &Shard {
        &self.metrics[crate::worker::index() % self.metrics.len()]
    }

    /// Records one finished request in this worker's metrics shard.
    pub fn record(&self, now: Instant, sample: &RequestSample) {
        self.shard().0.record(now, sample);
    }

    /// Records one mirror comparison in this worker's metrics shard.
    pub fn record_mirror(&self, now: Instant, matched: bool) {
        self.shard().0.record_mirror(now, matched);
    }

    fn window(&self, last: Duration, now: Instant) -> WindowStats {
        let mut m = Merged::new();
        for s in self.metrics.iter() {
            m.add_window(&s.0, last, now);
        }
        m.set_active_connections(self.in_flight.load(Ordering::Relaxed) as i64);
        m.stats()
    }

    fn totals(&self) -> Merged {
        let mut m = Merged::new();
        for s in self.metrics.iter() {
            m.add_totals(&s.0);
        }
        m.set_active_connections(self.in_flight.load(Ordering::Relaxed) as i64);
        m
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

    /// Carries the round-robin positions of `old` over (by app, and version index), so
    /// that a swap does not restart the split.
    pub fn carry_positions(&self, old: &Table) {
        for (name, app) in &self.apps {
            let Some(o) = old.apps.get(name) else {
                continue;
            };
            app.next
                .store(o.next.load(Ordering::Relaxed), Ordering::Relaxed);
            for (v, ov) in app.versions.iter().zip(&o.versions) {
                v.next
                    .store(ov.next.load(Ordering::Relaxed), Ordering::Relaxed);
            }
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
    /// A recording of this app's requests, when one is armed.
    pub record: Arc<RecordState>,
    pub versions: Vec<VersionTable>,
    /// Match rules, compiled once per push.
    pub rules: CompiledRules,
    /// Version-sticky cohorts, when configured.
    pub sticky: Option<StickyTable>,
    /// Mirroring, when configured and its version is present with a backend.
    pub mirror: Option<MirrorTable>,
    /// Index of the shield (stable) version, when shielding is on and it is present.
    pub shield: Option<usize>,
    /// How a backend is picked within a version.
    pub balance: Balance,
    /// One smooth-WRR cycle over `versions` (indices); empty when nothing is routable.
    cycle: Vec<usize>,
    next: AtomicUsize,
}

pub(crate) struct VersionTable {
    pub name: String,
    pub counters: Arc<VersionCounters>,
    pub backends: Vec<BackendEntry>,
    weight: u32,
    next: AtomicUsize,
}

pub(crate) struct BackendEntry {
    pub addr: SocketAddr,
    pub state: Arc<BackendState>,
}

/// Sticky cohorts of one app, resolved against its versions.
pub(crate) struct StickyTable {
    pub cookie: String,
    pub max_age_s: u64,
    /// Version indices in cohort order (the growing version first).
    order: Vec<usize>,
    /// Their weights in that order; 0 for a version without backends.
    weights: Vec<u32>,
}

/// Mirroring of one app, resolved against its versions.
pub(crate) struct MirrorTable {
    pub cfg: Arc<MirrorConfig>,
    /// Index of the version receiving the copies (it has at least one backend).
    pub version: usize,
    /// `cfg` compiled: which requests, what is captured, how it is compared.
    pub rules: Arc<CompareRules>,
    pub state: Arc<MirrorState>,
    /// Most copies under way at once (per worker, summed over workers).
    pub max_in_flight: usize,
}

impl AppTable {
    /// The version a new request goes to: the first match rule whose version has a
    /// backend, else the client's sticky cohort (`cohort`), else the weighted split.
    /// Does not allocate.
    pub fn choose_version<H: RequestHeaders + ?Sized>(
        &self,
        method: &http::Method,
        path: &str,
        headers: &H,
        cohort: Option<u16>,
    ) -> Option<usize> {
        self.version_for(self.ruled_version(method, path, headers), cohort)
    }

    /// The version the first holding match rule names, when it has a backend.
    pub fn ruled_version<H: RequestHeaders + ?Sized>(
        &self,
        method: &http::Method,
        path: &str,
        headers: &H,
    ) -> Option<usize> {
        if self.rules.is_empty() {
            return None;
        }
        self.version_with_backends(self.rules.route(method, path, headers)?)
    }

    /// The index of version `name`, when it has a backend.
    pub fn version_with_backends(&self, name: &str) -> Option<usize> {
        let i = self.versions.iter().position(|v| v.name == name)?;
        (!self.versions[i].backends.is_empty()).then_some(i)
    }

    /// [`AppTable::choose_version`] once the rules were read: `ruled`, else the
    /// client's sticky cohort, else the weighted split.
    pub fn version_for(&self, ruled: Option<usize>, cohort: Option<u16>) -> Option<usize> {
        if ruled.is_some() {
            return ruled;
        }
        if let (Some(st), Some(c)) = (&self.sticky, cohort)
            && let Some(i) = crate::sticky::index_for_cohort(c, &st.weights)
        {
            return Some(st.order[i]);
        }
        self.pick_version()
    }

    /// A backend of version `v` only (round robin), for a mirror copy.
    pub fn pick_in_version(&self, v: usize) -> Option<SocketAddr> {
        let version = self.versions.get(v)?;
        if version.backends.is_empty() {
            return None;
        }
        let n = version.next.fetch_add(1, Ordering::Relaxed);
        Some(version.backends[n % version.backends.len()].addr)
    }

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

    /// A backend for one attempt: within `primary` round robin (or the least loaded
    /// under least-requests balancing), then the other versions with weight > 0,
    /// preferring backends not yet `tried` and not marked down (see
    /// [`select::Preference`]). Returns (version index, backend index).
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
        let least_requests = self.balance == Balance::LeastRequests;
        let candidates = order.flat_map(move |v| {
            let version = &self.versions[v];
            // Lazily evaluated: other versions' counters only move when reached.
            let start = version.next.fetch_add(1, Ordering::Relaxed);
            select::rotated(version.backends.len(), start).map(move |b| {
                let be = &version.backends[b];
                let tried = tried.contains(&be.addr);
                let until = be.state.down_until_ms.load(Ordering::Relaxed);
                let down = until != 0 && until > now_ms();
                let fallback = v != primary;
                let load = if least_requests && !fallback {
                    be.state.in_flight.load(Ordering::Relaxed)
                } else {
                    0
                };
                let rank = select::rank(tried, down);
                (
                    (v, b),
                    select::Preference {
                        rank,
                        fallback,
                        load,
                    },
                )
            })
        });
        select::best(candidates)
    }
}

#[derive(Default, Clone)]
struct AppEntry {
    counters: Arc<AppCounters>,
    versions: BTreeMap<String, Arc<VersionCounters>>,
    backends: BTreeMap<SocketAddr, Arc<BackendState>>,
    mirror: Arc<MirrorState>,
    record: Arc<RecordState>,
    /// The mirror target of the live config, for reports.
    mirror_version: Option<String>,
}

/// Every counter the router keeps, by app. Touched only when applying a config and
/// when reading stats (both on the admin path, under the router's apply lock).
pub(crate) struct Registry {
    apps: BTreeMap<String, AppEntry>,
    /// Stable ids of app names; never reused, so a connection of a removed app can
    /// never be served as another app.
    ids: HashMap<String, usize>,
    /// Origin of every metrics shard's one-second buckets.
    epoch: Instant,
    /// Metrics shards per version: one per worker.
    shards: usize,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new(Instant::now(), 1)
    }
}

impl Registry {
    /// An empty registry whose metrics have `shards` shards per version.
    pub fn new(epoch: Instant, shards: usize) -> Self {
        Registry {
            apps: BTreeMap::new(),
            ids: HashMap::new(),
            epoch,
            shards: shards.max(1),
        }
    }

    /// The stable id of `app`, assigned on first sight.
    pub fn app_id(&mut self, app: &str) -> usize {
        let next = self.ids.len();
        *self.ids.entry(app.to_string()).or_insert(next)
    }

    /// Compiles the snapshot for `cfg`, reusing the counters of names and addresses
    /// already known. Changes nothing a reader of the registry sees: a staged table may
    /// never go live, so the counters it creates are registered, and backends flagged
    /// in or out, only by [`Registry::adopt`] at its swap.
    pub fn build(&mut self, cfg: &RoutingConfig) -> Table {
        let mut apps = HashMap::new();
        let mut by_id: Vec<Option<Arc<AppTable>>> = Vec::new();
        let (epoch, shards) = (self.epoch, self.shards);
        for app in &cfg.apps {
            let id = self.app_id(&app.app);
            // A scratch copy, so that counters new in this config are shared within
            // it (one address in two versions) without touching the registry.
            let mut entry = self.apps.get(&app.app).cloned().unwrap_or_default();
            let versions: Vec<VersionTable> = app
                .versions
                .iter()
                .map(|v| {
                    let counters = entry
                        .versions
                        .entry(v.version.clone())
                        .or_insert_with(|| Arc::new(VersionCounters::new(epoch, shards)))
                        .clone();
                    let backends = v
                        .backends
                        .iter()
                        .map(|b| BackendEntry {
                            addr: b.address,
                            state: entry.backends.entry(b.address).or_default().clone(),
                        })
                        .collect();
                    VersionTable {
                        name: v.version.clone(),
                        counters,
                        backends,
                        weight: v.weight,
                        next: AtomicUsize::new(0),
                    }
                })
                .collect();
            let weights: Vec<u32> = versions
                .iter()
                .map(|v| if v.backends.is_empty() { 0 } else { v.weight })
                .collect();
            let cycle = select::smooth_wrr_cycle(&weights);
            let index_of = |name: &str| versions.iter().position(|v| v.name == name);
            // Validated before the build: compiling cannot fail here.
            let rules = CompiledRules::compile(&app.rules).unwrap_or_default();
            let sticky = app.sticky.as_ref().map(|st| {
                let first = st.new_version.as_deref().and_then(index_of);
                let order: Vec<usize> = first
                    .into_iter()
                    .chain((0..versions.len()).filter(|&i| Some(i) != first))
                    .collect();
                let weights = order.iter().map(|&i| weights[i]).collect();
                StickyTable {
                    cookie: st.cookie.clone(),
                    max_age_s: st.max_age_s,
                    order,
                    weights,
                }
            });
            let mirror = app.mirror.as_ref().and_then(|m| {
                let version = index_of(&m.version)?;
                if versions[version].backends.is_empty() {
                    return None;
                }
                // Validated before the build: compiling cannot fail here.
                let rules = CompareRules::compile(m).ok()?;
                Some(MirrorTable {
                    cfg: Arc::new(m.clone()),
                    version,
                    rules: Arc::new(rules),
                    state: entry.mirror.clone(),
                    max_in_flight: MIRROR_MAX_IN_FLIGHT * shards,
                })
            });
            let shield = app.shield.as_ref().and_then(|s| index_of(&s.version));
            let table = Arc::new(AppTable {
                hold_timeout: Duration::from_millis(app.hold_timeout_ms),
                limits: Limits::from(&app.limits),
                counters: entry.counters.clone(),
                record: entry.record.clone(),
                rules,
                sticky,
                mirror,
                shield,
                balance: app.balance,
                versions,
                cycle,
                next: AtomicUsize::new(0),
            });
            if by_id.len() <= id {
                by_id.resize(id + 1, None);
            }
            by_id[id] = Some(table.clone());
            apps.insert(app.app.clone(), table);
        }
        Table {
            config: Arc::new(cfg.clone()),
            apps,
            by_id,
        }
    }

    /// Makes the counters of `table` the registered ones and flags every backend as in
    /// or out of it; called as `table` goes live.
    pub fn adopt(&mut self, table: &Table) {
        for app in &table.config.apps {
            let Some(t) = table.apps.get(&app.app) else {
                continue;
            };
            let entry = self
                .apps
                .entry(app.app.clone())
                .or_insert_with(|| AppEntry {
                    counters: t.counters.clone(),
                    mirror: t
                        .mirror
                        .as_ref()
                        .map(|m| m.state.clone())
                        .unwrap_or_default(),
                    record: t.record.clone(),
                    ..AppEntry::default()
                });
            for v in &t.versions {
                entry
                    .versions
                    .entry(v.name.clone())
                    .or_insert_with(|| v.counters.clone());
                for b in &v.backends {
                    entry
                        .backends
                        .entry(b.addr)
                        .or_insert_with(|| b.state.clone());
                }
            }
            entry.mirror_version = app.mirror.as_ref().map(|m| m.version.clone());
            if let Some(m) = &t.mirror {
                m.state
                    .samples()
                    .configure(&m.cfg.session, m.cfg.max_samples);
            }
        }
        self.mark_removed(&table.config);
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
                connections: e.counters.connections.load(Ordering::Relaxed).max(0) as u64,
                mirror_dropped: get(&e.mirror.dropped),
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
                        shielded: get(&c.shielded),
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
        RouterStats {
            generation,
            apps,
            listeners: Vec::new(),
        }
    }

    /// Every (app, version)'s metrics over the last `last` (whole seconds).
    pub fn windows(&self, last: Duration) -> WindowsReport {
        let now = Instant::now();
        WindowsReport {
            window_s: last.as_secs(),
            apps: self
                .apps
                .iter()
                .map(|(name, e)| AppWindows {
                    app: name.clone(),
                    connections: e.counters.connections.load(Ordering::Relaxed).max(0) as u64,
                    versions: e
                        .versions
                        .iter()
                        .map(|(v, c)| VersionWindow {
                            version: v.clone(),
                            stats: c.window(last, now),
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    /// The Prometheus text exposition of every (app, version)'s totals, plus each
    /// app's open client connections.
    pub fn prometheus(&self) -> String {
        let merged: Vec<(&str, &str, Merged)> = self
            .apps
            .iter()
            .flat_map(|(app, e)| {
                e.versions
                    .iter()
                    .map(move |(v, c)| (app.as_str(), v.as_str(), c.totals()))
            })
            .collect();
        let series: Vec<Series<'_>> = merged
            .iter()
            .map(|(app, version, totals)| Series {
                app,
                version,
                totals,
            })
            .collect();
        let mut out = String::new();
        crate::metrics::render_prometheus(&mut out, &series);
        let apps: Vec<(&str, i64)> = self
            .apps
            .iter()
            .map(|(a, e)| (a.as_str(), e.counters.connections.load(Ordering::Relaxed)))
            .collect();
        crate::metrics::render_app_connections(&mut out, &apps);
        out
    }

    /// Mirror comparisons of every app that has mirrored (or mirrors now).
    /// The recording state of a configured app.
    pub fn record(&self, app: &str) -> Option<Arc<RecordState>> {
        self.apps.get(app).map(|e| e.record.clone())
    }

    pub fn mirror_reports(&self) -> MirrorReports {
        MirrorReports {
            apps: self
                .apps
                .iter()
                .filter_map(|(name, e)| {
                    let report: MirrorReport = e.mirror.samples().report();
                    let seen = report.total.matches + report.total.mismatches > 0;
                    (seen || e.mirror_version.is_some()).then(|| AppMirrorReport {
                        app: name.clone(),
                        version: e.mirror_version.clone(),
                        dropped: e.mirror.dropped.load(Ordering::Relaxed),
                        abandoned: e.mirror.abandoned.load(Ordering::Relaxed),
                        report,
                    })
                })
                .collect(),
        }
    }
}

/// For tests: app "web" with `versions` (name, the address of its one backend) in
/// this order, weighted alike, shielded by `shield` when given.
#[cfg(test)]
pub(crate) fn web_config(
    generation: u64,
    versions: &[(&str, SocketAddr)],
    shield: Option<&str>,
) -> RoutingConfig {
    use crate::config::{AppRoutes, Backend, ShieldConfig, VersionRoute};
    RoutingConfig {
        generation,
        apps: vec![AppRoutes {
            app: "web".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            hold_timeout_ms: 100,
            versions: versions
                .iter()
                .map(|(name, address)| VersionRoute {
                    version: (*name).into(),
                    weight: 1,
                    backends: vec![Backend {
                        id: format!("{name}-0"),
                        address: *address,
                    }],
                })
                .collect(),
            rules: vec![],
            sticky: None,
            mirror: None,
            shield: shield.map(|v| ShieldConfig { version: v.into() }),
            limits: Default::default(),
            balance: Default::default(),
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// App "web" with versions v1 and v2, both on `addr`.
    fn shared_backend(generation: u64, addr: SocketAddr) -> RoutingConfig {
        web_config(generation, &[("v1", addr), ("v2", addr)], None)
    }

    #[test]
    fn a_built_table_is_registered_only_when_adopted() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 9));
        let mut reg = Registry::default();
        let table = reg.build(&shared_backend(1, addr));
        assert!(
            reg.stats(0).apps.is_empty(),
            "a staged table is not counted"
        );

        reg.adopt(&table);
        let stats = reg.stats(1);
        assert_eq!(stats.apps.len(), 1);
        assert_eq!(stats.apps[0].versions.len(), 2);
        let web = &table.apps["web"];
        let (v1, v2) = (&web.versions[0].backends[0], &web.versions[1].backends[0]);
        assert!(
            Arc::ptr_eq(&v1.state, &v2.state),
            "one address in two versions has one state"
        );
        // A later build reuses what the first registered.
        let next = reg.build(&shared_backend(2, addr));
        assert!(Arc::ptr_eq(
            &next.apps["web"].versions[0].backends[0].state,
            &v1.state
        ));
        assert!(Arc::ptr_eq(
            &next.apps["web"].versions[1].counters,
            &web.versions[1].counters
        ));
    }

    #[test]
    fn positions_carry_over_at_the_swap() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 9));
        let mut reg = Registry::default();
        let old = reg.build(&shared_backend(1, addr));
        old.apps["web"].next.store(5, Ordering::Relaxed);
        old.apps["web"].versions[1].next.store(3, Ordering::Relaxed);
        let new = reg.build(&shared_backend(2, addr));
        new.carry_positions(&old);
        assert_eq!(new.apps["web"].next.load(Ordering::Relaxed), 5);
        assert_eq!(new.apps["web"].versions[1].next.load(Ordering::Relaxed), 3);
    }
}
