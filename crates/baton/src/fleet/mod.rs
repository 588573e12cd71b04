//! Fleets: apps whose instances run on other hosts, reached over SSH.
//!
//! For every host an app names, the control plane keeps one [`HostLink`]: a
//! supervisor that connects over SSH (host key checked), installs this baton
//! binary there, starts `baton node` (or finds it running), and forwards the
//! node's socket and its router's admin socket to unix sockets in the data dir
//! (`hosts/NAME/`). Everything the control plane does on the host goes through
//! those two sockets: the [`FleetDriver`] through the node's, the host's
//! [`RouterLink`] (the same level-triggered publication as the local router's)
//! through the router's. While a host does not answer, its state says since
//! when; nothing about it is guessed.

pub mod install;
pub mod ssh;

mod driver;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_router::AdminClient;
use baton_routing::config::AppRoutes;
use baton_spec::{AppSpec, HostSpec, HostsSpec};
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use driver::FleetDriver;

use crate::effects::Clock;
use crate::node::{NodeClient, NodeInfo};
use crate::routing::{Drain, RouterLink, RouterSync};

/// How often a connected host is asked whether it still answers.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// Missed heartbeats before a host counts as unreachable.
const MISSED_HEARTBEATS: u32 = 2;
/// Pauses between connection attempts.
const RECONNECT_MIN: Duration = Duration::from_millis(500);
const RECONNECT_MAX: Duration = Duration::from_secs(5);
/// Longest wait for a node started over SSH to answer.
const NODE_START_WAIT: Duration = Duration::from_secs(30);

/// The hosts the control plane knows, by name.
pub struct Fleet {
    data_dir: PathBuf,
    baton_exe: PathBuf,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
    hosts: Mutex<BTreeMap<String, Arc<HostLink>>>,
    sha: std::sync::OnceLock<String>,
    /// The newest traffic switch of each app across its hosts.
    switches: Mutex<BTreeMap<String, SwitchRecord>>,
}

/// What is known of one host now (`baton hosts`).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct HostState {
    pub name: String,
    pub address: String,
    pub labels: BTreeMap<String, String>,
    /// Connected, node answering.
    pub reachable: bool,
    /// Since when (ms since the epoch) it is reachable, or not.
    pub since_ms: i64,
    /// The node that answers there.
    pub node: Option<NodeInfo>,
    /// baton's directory on the host.
    pub remote_dir: Option<String>,
    /// The baton binary installed there.
    pub binary: Option<String>,
    /// Why the last connection attempt or heartbeat failed.
    pub last_error: Option<String>,
    /// Its router's routing publication, once attached.
    pub router: Option<RouterSync>,
    /// The instances the control plane runs there, by app (filled in by the API).
    pub instances: BTreeMap<String, Vec<String>>,
}

impl Fleet {
    pub fn new(
        data_dir: PathBuf,
        baton_exe: PathBuf,
        clock: Arc<dyn Clock>,
        shutdown: CancellationToken,
    ) -> Self {
        Fleet {
            data_dir,
            baton_exe,
            clock,
            shutdown,
            hosts: Mutex::default(),
            sha: std::sync::OnceLock::new(),
            switches: Mutex::default(),
        }
    }

    fn hosts(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<HostLink>>> {
        self.hosts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The checksum of this baton binary (what every node must run).
    fn sha(&self) -> String {
        self.sha
            .get_or_init(|| install::file_sha256(&self.baton_exe).unwrap_or_default())
            .clone()
    }

    /// Keep a link to every host of `spec` (new ones start connecting now; a
    /// host whose SSH settings changed is reconnected).
    pub fn ensure(self: &Arc<Self>, spec: &AppSpec) {
        let Some(hosts) = &spec.hosts else { return };
        let known_hosts = ssh::known_hosts_file(hosts);
        let mut map = self.hosts();
        for h in &hosts.hosts {
            if let Some(link) = map.get(&h.name) {
                if link.spec == *h && link.known_hosts == known_hosts {
                    continue;
                }
                link.cancel.cancel();
            }
            let link = Arc::new(HostLink::new(
                h.clone(),
                known_hosts.clone(),
                hosts.connect_timeout,
                self.data_dir.join("hosts").join(&h.name),
                self.shutdown.child_token(),
            ));
            map.insert(h.name.clone(), link.clone());
            let fleet = self.clone();
            tokio::spawn(async move { link.supervise(fleet).await });
        }
    }

    pub fn host(&self, name: &str) -> Option<Arc<HostLink>> {
        self.hosts().get(name).cloned()
    }

    /// Every known host's state, by name.
    pub fn states(&self) -> Vec<HostState> {
        self.hosts().values().map(|h| h.state()).collect()
    }

    /// `baton down`: stop every host's router and node (the apps have stopped
    /// their instances), then close the connections.
    pub async fn down(&self) {
        let links: Vec<Arc<HostLink>> = self.hosts().values().cloned().collect();
        futures_util::future::join_all(links.iter().map(|l| async move {
            if let Err(e) = l.node.shut_down().await {
                warn!(host = %l.spec.name, error = %e, "could not stop the host's node and router");
            }
        }))
        .await;
        self.close().await;
    }

    /// Close every SSH connection (shutdown). Nodes, routers and instances on
    /// the hosts are left as they are.
    pub async fn close(&self) {
        let links: Vec<Arc<HostLink>> = self.hosts().values().cloned().collect();
        for link in links {
            link.cancel.cancel();
            let mut done = link.closed.subscribe();
            let _ = tokio::time::timeout(Duration::from_secs(10), done.wait_for(|d| *d)).await;
        }
    }
}

/// One traffic switch of an app across its hosts' routers.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct SwitchRecord {
    /// When it was made (ms since the epoch).
    pub at_ms: i64,
    /// Each host's router: when it swapped (µs since the epoch, its clock).
    pub hosts: Vec<(String, u64)>,
    /// Between the first and the last host to switch, in µs; `None` when the
    /// switch fell back to one publication per host (a host did not stage).
    pub skew_us: Option<u64>,
    /// Why it fell back, if it did.
    pub fallback: Option<String>,
}

impl Fleet {
    /// Switch `app`'s traffic on every host at once: each host's router
    /// stages its new table (the slow, fallible part), then all commit
    /// together, so the hosts switch within a round trip of each other. A host
    /// that cannot stage makes it an ordinary publication (each host switches
    /// as its table arrives). Returns each host's table generation at once;
    /// the switch runs in the background and its record lands in
    /// [`Fleet::last_switch`].
    pub fn switch(
        self: &Arc<Self>,
        app: &str,
        per_host: Vec<(Arc<HostLink>, Vec<AppRoutes>)>,
    ) -> BTreeMap<String, Option<u64>> {
        let mut generations = BTreeMap::new();
        let mut prepared = Vec::new();
        let mut complete = true;
        for (host, routes) in per_host {
            match host.prepare(routes.clone()) {
                Some((link, cfg)) => {
                    generations.insert(host.spec.name.clone(), Some(cfg.generation));
                    prepared.push((host.spec.name.clone(), link, cfg));
                }
                None => {
                    complete = false;
                    generations.insert(host.spec.name.clone(), host.publish(routes));
                }
            }
        }
        let fleet = self.clone();
        let app = app.to_owned();
        tokio::spawn(async move {
            let record = two_phase(prepared, complete).await;
            info!(%app, skew_us = ?record.skew_us, fallback = ?record.fallback, "traffic switched across hosts");
            fleet
                .switches
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(app, record);
        });
        generations
    }

    /// The newest traffic switch of `app` across its hosts.
    pub fn last_switch(&self, app: &str) -> Option<SwitchRecord> {
        self.switches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(app)
            .cloned()
    }
}

/// Longest wait for every host to stage a switch.
const STAGE_WAIT: Duration = Duration::from_secs(5);

async fn two_phase(
    prepared: Vec<(String, RouterLink, baton_routing::config::RoutingConfig)>,
    complete: bool,
) -> SwitchRecord {
    let at_ms = crate::effects::wall_clock_ms();
    let release = |why: String| {
        for (_, link, _) in &prepared {
            link.release();
        }
        SwitchRecord {
            at_ms,
            hosts: Vec::new(),
            skew_us: None,
            fallback: Some(why),
        }
    };
    if !complete {
        return release("a host's router was not reached yet".into());
    }
    let staged = tokio::time::timeout(
        STAGE_WAIT,
        futures_util::future::join_all(prepared.iter().map(|(_, l, cfg)| l.stage(cfg))),
    )
    .await;
    match staged {
        Err(_) => return release(format!("not every host staged within {STAGE_WAIT:?}")),
        Ok(results) => {
            if let Some((i, e)) = results
                .iter()
                .enumerate()
                .find_map(|(i, r)| r.as_ref().err().map(|e| (i, e)))
            {
                return release(format!("host {} did not stage: {e}", prepared[i].0));
            }
        }
    }
    // A connection to every router first (over SSH, opening one is a round
    // trip), then every commit at once on them.
    let lines =
        futures_util::future::join_all(prepared.iter().map(|(_, l, _)| l.open_commit())).await;
    let commits =
        futures_util::future::join_all(prepared.iter().zip(lines).map(|((_, _, cfg), line)| {
            let generation = cfg.generation;
            async move { line?.commit(generation).await }
        }))
        .await;
    let mut hosts = Vec::new();
    let mut failed = None;
    for ((name, link, _), result) in prepared.iter().zip(commits) {
        match result {
            Ok(done) => {
                link.committed(&done);
                hosts.push((name.clone(), done.switched_at_us));
            }
            Err(e) => failed = Some(format!("host {name} did not commit: {e}")),
        }
        link.release();
    }
    let times: Vec<u64> = hosts.iter().map(|(_, t)| *t).collect();
    let skew_us = match (failed.is_some(), times.iter().min(), times.iter().max()) {
        (false, Some(min), Some(max)) => Some(max - min),
        _ => None,
    };
    SwitchRecord {
        at_ms,
        hosts,
        skew_us,
        fallback: failed,
    }
}

/// Check every host key of `hosts` before anything is changed: the first
/// host refused, with its key's fingerprint.
pub async fn check_host_keys(hosts: &HostsSpec) -> Result<(), ssh::HostKeyProblem> {
    let known_hosts = ssh::known_hosts_file(hosts);
    let checks = hosts
        .hosts
        .iter()
        .map(|h| ssh::check_host_key(h, &known_hosts, hosts.connect_timeout));
    for result in futures_util::future::join_all(checks).await {
        match result {
            // A host that does not answer now is not refused: its key is
            // checked at every connection, and until then it is unreachable.
            Err(ssh::HostKeyProblem::Unreachable { host, reason, .. }) => {
                warn!(%host, %reason, "cannot check the host's key now; it is checked when it answers");
            }
            other => other?,
        }
    }
    Ok(())
}

/// The control plane's side of one host.
pub struct HostLink {
    pub spec: HostSpec,
    known_hosts: PathBuf,
    connect_timeout: Duration,
    /// `data_dir/hosts/NAME`: the forwarded sockets and the SSH control dir.
    local_dir: PathBuf,
    state: watch::Sender<HostState>,
    pub node: NodeClient,
    router: Mutex<HostRouter>,
    router_ready: watch::Sender<bool>,
    cancel: CancellationToken,
    /// Set once the supervisor has closed its connection and ended.
    closed: watch::Sender<bool>,
}

/// The host's router as the control plane drives it: the routes each app
/// wants there, and the link once the router has been reached (made then,
/// from the table the router serves, so that apps not yet republished keep
/// their listeners).
#[derive(Default)]
struct HostRouter {
    link: Option<RouterLink>,
    wanted: BTreeMap<String, Vec<AppRoutes>>,
}

impl HostLink {
    fn new(
        spec: HostSpec,
        known_hosts: PathBuf,
        connect_timeout: Duration,
        local_dir: PathBuf,
        cancel: CancellationToken,
    ) -> Self {
        let state = HostState {
            name: spec.name.clone(),
            address: spec.address.clone(),
            labels: spec.labels.clone(),
            since_ms: crate::effects::wall_clock_ms(),
            ..HostState::default()
        };
        HostLink {
            node: NodeClient::new(local_dir.join("node.sock")),
            spec,
            known_hosts,
            connect_timeout,
            local_dir,
            state: watch::channel(state).0,
            router: Mutex::default(),
            router_ready: watch::channel(false).0,
            cancel,
            closed: watch::channel(false).0,
        }
    }

    pub fn state(&self) -> HostState {
        let mut s = self.state.borrow().clone();
        s.router = self.router().link.as_ref().map(RouterLink::sync);
        s
    }

    pub fn is_reachable(&self) -> bool {
        self.state.borrow().reachable
    }

    /// Wait until the host answers, at most `limit`; whether it does.
    pub async fn reachable_within(&self, limit: Duration) -> bool {
        let mut rx = self.state.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|s| s.reachable))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    fn router(&self) -> std::sync::MutexGuard<'_, HostRouter> {
        self.router.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Connect, install, start the node, then watch it; reconnect with backoff.
    async fn supervise(self: Arc<Self>, fleet: Arc<Fleet>) {
        let mut backoff = RECONNECT_MIN;
        while !self.cancel.is_cancelled() {
            match self.connect(&fleet).await {
                Ok(session) => {
                    backoff = RECONNECT_MIN;
                    self.watch(&session).await;
                    let _ = tokio::time::timeout(Duration::from_secs(5), session.close()).await;
                    if self.cancel.is_cancelled() {
                        break;
                    }
                }
                Err(e) => {
                    let error = format!("{e:#}");
                    warn!(host = %self.spec.name, %error, "cannot reach host");
                    self.mark(false, Some(error));
                }
            }
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(RECONNECT_MAX);
        }
        self.closed.send_replace(true);
    }

    fn mark(&self, reachable: bool, error: Option<String>) {
        let now = crate::effects::wall_clock_ms();
        self.state.send_modify(|s| {
            if s.reachable != reachable {
                s.since_ms = now;
            }
            s.reachable = reachable;
            if error.is_some() || reachable {
                s.last_error = error;
            }
        });
    }

    async fn connect(&self, fleet: &Fleet) -> anyhow::Result<openssh::Session> {
        if let Err(problem) =
            ssh::check_host_key(&self.spec, &self.known_hosts, self.connect_timeout).await
        {
            anyhow::bail!("{problem}");
        }
        let session = ssh::connect(
            &self.spec,
            &self.known_hosts,
            self.connect_timeout,
            &self.local_dir.join("ssh"),
        )
        .await?;
        let remote_dir = install::prepare_dir(&session, &self.spec.dir).await?;
        let sha = fleet.sha();
        let binary = install::install(&session, &remote_dir, &fleet.baton_exe, &sha).await?;
        for name in ["node.sock", "router.sock"] {
            let local = self.local_dir.join(name);
            let _ = std::fs::remove_file(&local);
            session
                .request_port_forward(
                    openssh::ForwardType::Local,
                    openssh::Socket::UnixSocket {
                        path: local.as_path().into(),
                    },
                    openssh::Socket::UnixSocket {
                        path: Path::new(&format!("{remote_dir}/{name}")).into(),
                    },
                )
                .await
                .map_err(|e| anyhow::anyhow!("forwarding {name}: {e}"))?;
        }
        let info = self
            .ensure_node(&session, &remote_dir, &binary, &sha)
            .await?;
        info!(host = %self.spec.name, node_pid = info.pid, dir = %remote_dir, "host connected");
        self.state.send_modify(|s| {
            s.node = Some(info);
            s.remote_dir = Some(remote_dir.clone());
            s.binary = Some(binary.clone());
        });
        self.attach_router(fleet).await?;
        self.mark(true, None);
        Ok(session)
    }

    /// The node answering there, started (or replaced by one of this binary) if needed.
    async fn ensure_node(
        &self,
        session: &openssh::Session,
        remote_dir: &str,
        binary: &str,
        sha: &str,
    ) -> anyhow::Result<NodeInfo> {
        match self.node.info().await {
            Ok(info) if info.binary_sha256 == sha => return Ok(info),
            Ok(old) => {
                // Another baton: its instances and its router are processes of
                // their own and keep running; only the node is replaced.
                info!(host = %self.spec.name, old = %old.version, "replacing the node with this baton");
                let _ = ssh::run(session, &format!("kill {}", old.pid)).await;
                let deadline = tokio::time::Instant::now() + NODE_START_WAIT;
                while self.node.info().await.is_ok() {
                    if tokio::time::Instant::now() > deadline {
                        anyhow::bail!("the old node (pid {}) did not stop", old.pid);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            Err(_) => {}
        }
        let (qb, qd) = (install::quote(binary), install::quote(remote_dir));
        ssh::run(
            session,
            &format!(
                "cd {qd} && (setsid {qb} node --dir {qd} >> logs/node.log 2>&1 < /dev/null &)"
            ),
        )
        .await?;
        let deadline = tokio::time::Instant::now() + NODE_START_WAIT;
        loop {
            match self.node.info().await {
                Ok(info) => return Ok(info),
                Err(e) if tokio::time::Instant::now() > deadline => {
                    anyhow::bail!(
                        "the node did not answer within {NODE_START_WAIT:?} ({e}); see {remote_dir}/logs/node.log there"
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Make the host's router link once, from the table the router serves.
    async fn attach_router(&self, fleet: &Fleet) -> anyhow::Result<()> {
        if self.router().link.is_some() {
            return Ok(());
        }
        let client = AdminClient::new(self.local_dir.join("router.sock"));
        let current = client
            .config()
            .await
            .map_err(|e| anyhow::anyhow!("reading the host's routing table: {e}"))?;
        let link = RouterLink::new(
            format!("{} ({})", self.spec.name, self.spec.address),
            Arc::new(client),
            current,
            fleet.clock.clone(),
            self.cancel.clone(),
        );
        let mut router = self.router();
        for routes in router.wanted.values() {
            link.publish(routes.clone());
        }
        router.link = Some(link);
        drop(router);
        self.router_ready.send_replace(true);
        Ok(())
    }

    /// Heartbeats until the host misses too many, or the link is cancelled.
    async fn watch(&self, session: &openssh::Session) {
        let mut missed = 0;
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep(HEARTBEAT) => {}
            }
            let alive = tokio::time::timeout(Duration::from_secs(3), session.check())
                .await
                .is_ok_and(|r| r.is_ok());
            let answered = alive && self.node.info().await.is_ok();
            if answered {
                missed = 0;
                continue;
            }
            missed += 1;
            if missed >= MISSED_HEARTBEATS {
                warn!(host = %self.spec.name, "host stopped answering");
                self.mark(false, Some("stopped answering heartbeats".into()));
                return;
            }
        }
    }

    /// Two-phase switch, step 1: `app`'s routes in this host's desired table,
    /// held back from the pusher; the whole table to stage. `None` before
    /// the router is attached (the switch is then an ordinary publication).
    fn prepare(
        &self,
        routes: Vec<AppRoutes>,
    ) -> Option<(RouterLink, baton_routing::config::RoutingConfig)> {
        let mut router = self.router();
        let app = routes.first()?.app.clone();
        router.wanted.insert(app, routes.clone());
        let link = router.link.clone()?;
        let cfg = link.prepare(routes);
        Some((link, cfg))
    }

    /// Put `app`'s routes in this host's desired table. `Some(generation)`
    /// once the router is attached; `None` before (the routes are delivered
    /// when it is).
    pub fn publish(&self, routes: Vec<AppRoutes>) -> Option<u64> {
        let mut router = self.router();
        let app = routes.first()?.app.clone();
        router.wanted.insert(app, routes.clone());
        router.link.as_ref().map(|l| l.publish(routes))
    }

    /// Wait until this host's router serves `generation` (or, for `None`, the
    /// table it was attached with and every route published before).
    pub async fn acknowledged(&self, generation: Option<u64>) {
        let mut ready = self.router_ready.subscribe();
        let _ = ready.wait_for(|r| *r).await;
        let Some(link) = self.router().link.clone() else {
            return;
        };
        let generation = generation.unwrap_or_else(|| link.sync().desired);
        link.acknowledged(generation).await;
    }

    /// See [`RouterLink::wait_idle`]; a router never attached has sent nothing.
    pub async fn wait_idle(&self, address: std::net::SocketAddr, timeout: Duration) -> Drain {
        let link = self.router().link.clone();
        match link {
            Some(l) => l.wait_idle(address, timeout).await,
            None => Drain::Idle,
        }
    }

    /// The host router's per-version windows, for analysis.
    pub async fn windows(
        &self,
        seconds: u64,
    ) -> Option<Result<baton_routing::stats::WindowsReport, baton_router::RouterError>> {
        let link = self.router().link.clone()?;
        Some(link.windows(seconds).await)
    }

    /// The host router's link, once the host was reached.
    pub fn router_link(&self) -> Option<crate::routing::RouterLink> {
        self.router().link.clone()
    }
}
