//! The control plane's link to the router process.
//!
//! The router runs as its own process (`baton __router`) so that it outlives
//! the control plane: a crashed or restarting control plane leaves user traffic
//! flowing on the last routing table. On start the control plane re-attaches
//! over the admin socket, or launches a router if none answers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use baton_engine::AppState;
use baton_router::config::{
    Balance, Match, MirrorConfig, NamedMatch, RouteRule, ShieldConfig, StickyConfig, ValueMatch,
};
use baton_router::limits::AppLimits;
use baton_router::{AdminClient, AppRoutes, Backend, RoutingConfig, VersionRoute};
use baton_spec::{AppSpec, StrategySpec};
use tokio::sync::Mutex;
use tracing::info;

/// How long a request waits for a ready instance before the router answers 503.
const HOLD_TIMEOUT_MS: u64 = 10_000;
/// Name suffix of the router entry serving a blue-green preview listener.
const PREVIEW_SUFFIX: &str = "--preview";

/// The router entries of one app for its current state: the main listener
/// (weights, tester and preview header rules, sticky cohorts, mirroring) and,
/// during a blue-green rollout with `preview_listen`, a listener reaching only
/// the new release.
pub fn app_routes(spec: &AppSpec, state: &AppState) -> Vec<AppRoutes> {
    let groups = state.routing();
    let versions: Vec<VersionRoute> = groups
        .iter()
        .map(|g| VersionRoute {
            version: g.version.clone(),
            weight: g.weight,
            backends: g
                .backends
                .iter()
                .filter_map(|(id, addr)| {
                    Some(Backend {
                        id: id.clone(),
                        address: addr.parse().ok()?,
                    })
                })
                .collect(),
        })
        .collect();
    let new_version = state
        .rollout
        .as_ref()
        .filter(|r| r.phase == baton_engine::RolloutPhase::Progressing && r.weight.is_some())
        .map(|r| r.to.version.clone());
    let (limits, balance) = traffic(&spec.traffic);
    let mut rules = Vec::new();
    let mut sticky = None;
    let mut shield = None;
    let mut preview = None;
    let header_rule = |h: &baton_spec::HeaderMatch, version: &str| RouteRule {
        matches: vec![Match::Header(NamedMatch {
            name: h.name.clone(),
            value: ValueMatch::Equals(h.equals.clone()),
        })],
        version: version.to_string(),
    };
    match &spec.strategy {
        StrategySpec::Canary(c) => {
            if let (Some(h), Some(v)) = (&c.header_route, &new_version) {
                rules.push(header_rule(h, v));
            }
            if c.sticky {
                // The canary takes the low cohorts, so raising its weight only
                // moves new users to it and never moves anyone back.
                sticky = Some(StickyConfig {
                    new_version: new_version.clone(),
                    ..StickyConfig::default()
                });
            }
            // Shielding: idempotent requests the canary fails are answered by stable.
            if c.shielding
                && new_version.is_some()
                && let Some(from) = state.rollout.as_ref().and_then(|r| r.from.as_ref())
            {
                shield = Some(ShieldConfig {
                    version: from.version.clone(),
                });
            }
        }
        StrategySpec::BlueGreen(b) => {
            if let Some(v) = &new_version {
                rules.push(header_rule(&b.preview_header, v));
                if let Some(listen) = b.preview_listen {
                    preview = Some(AppRoutes {
                        app: format!("{}{PREVIEW_SUFFIX}", spec.name),
                        listen,
                        hold_timeout_ms: HOLD_TIMEOUT_MS,
                        versions: versions
                            .iter()
                            .filter(|g| &g.version == v)
                            .map(|g| VersionRoute {
                                weight: 1,
                                ..g.clone()
                            })
                            .collect(),
                        rules: Vec::new(),
                        sticky: None,
                        mirror: None,
                        shield: None,
                        limits: limits.clone(),
                        balance,
                    });
                }
            }
        }
        StrategySpec::Rolling(_) => {}
    }
    // A mirror step copies traffic to the new release and compares answers.
    let mirror = state.rollout.as_ref().and_then(|r| {
        if r.phase != baton_engine::RolloutPhase::Progressing || r.step_started_ms.is_none() {
            return None;
        }
        match r.current_step(&state.params)? {
            baton_engine::Step::Mirror { percent, .. } => serde_json::from_value::<MirrorConfig>(
                serde_json::json!({"version": r.to.version, "percent": *percent as f64}),
            )
            .ok(),
            _ => None,
        }
    });
    let mut out = vec![AppRoutes {
        app: spec.name.clone(),
        listen: spec.listen,
        hold_timeout_ms: HOLD_TIMEOUT_MS,
        versions,
        rules,
        sticky,
        mirror,
        shield,
        limits,
        balance,
    }];
    out.extend(preview);
    out
}

/// The router's limits and balancing for the spec's `traffic:` section; the
/// limits the spec does not set keep the router's defaults.
fn traffic(t: &baton_spec::TrafficSpec) -> (AppLimits, Balance) {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let limits = AppLimits {
        upstream_connect_timeout_ms: ms(t.connect_timeout),
        upstream_response_timeout_ms: ms(t.response_timeout),
        client_header_timeout_ms: ms(t.client_header_timeout),
        ..AppLimits::default()
    };
    let balance = match t.balance {
        baton_spec::Balance::RoundRobin => Balance::RoundRobin,
        baton_spec::Balance::LeastRequests => Balance::LeastRequests,
    };
    (limits, balance)
}

#[derive(Clone)]
pub struct RouterLink {
    inner: Arc<Mutex<Published>>,
    client: Arc<AdminClient>,
}

struct Published {
    generation: u64,
    apps: BTreeMap<String, AppRoutes>,
}

impl RouterLink {
    /// Attach to the router answering on `socket`, or start one.
    pub async fn attach_or_start(data_dir: &Path, baton_exe: &str) -> anyhow::Result<Self> {
        let socket = socket_path(data_dir);
        let client = AdminClient::new(socket.clone());
        let current = match client.config().await {
            Ok(cfg) => {
                info!(socket = %socket.display(), generation = cfg.generation, "re-attached to the running router");
                cfg
            }
            Err(_) => {
                start_router(data_dir, &socket, baton_exe)?;
                wait_for_router(&client).await?;
                info!(socket = %socket.display(), "started the router");
                client
                    .config()
                    .await
                    .context("reading the new router's config")?
            }
        };
        Ok(RouterLink {
            inner: Arc::new(Mutex::new(Published {
                generation: current.generation,
                apps: current
                    .apps
                    .into_iter()
                    .map(|a| (a.app.clone(), a))
                    .collect(),
            })),
            client: Arc::new(client),
        })
    }

    /// Replace one app's routes (and its preview listener's, if any) and push
    /// the whole table: one atomic snapshot.
    pub async fn publish(&self, routes: Vec<AppRoutes>) -> anyhow::Result<()> {
        let mut inner = self.inner.lock().await;
        let Some(main) = routes.first() else {
            return Ok(());
        };
        // Entries of this app are the main one and `<app>--preview`.
        let preview_name = format!("{}{PREVIEW_SUFFIX}", main.app);
        let main_name = main.app.clone();
        inner.apps.remove(&preview_name);
        for r in routes {
            inner.apps.insert(r.app.clone(), r);
        }
        inner.generation += 1;
        let cfg = RoutingConfig {
            generation: inner.generation,
            apps: inner.apps.values().cloned().collect(),
        };
        let result = self.client.push(&cfg).await.context("router push")?;
        // Only this app's own listeners: another app's port held by some other
        // program must not fail every publish of this one.
        for l in result
            .listeners
            .into_iter()
            .filter(|l| l.app == main_name || l.app == preview_name)
        {
            if let Some(err) = l.error {
                anyhow::bail!("router cannot listen on {} for {}: {err}", l.listen, l.app);
            }
        }
        Ok(())
    }

    /// Wait until the router has no request in flight to `address` (after it
    /// left the routing table), bounded by `timeout`.
    pub async fn wait_idle(&self, address: SocketAddr, timeout: Duration) {
        // Requests that picked this backend just before the table swap may not
        // be counted yet; give them a moment to register.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            match self.client.stats().await {
                Ok(stats) => {
                    let busy = stats
                        .apps
                        .iter()
                        .flat_map(|a| a.backends.iter())
                        .any(|b| b.address == address && b.in_flight > 0);
                    if !busy {
                        return;
                    }
                }
                Err(_) => return,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether the router already listens on `listen` for `app` (so the port
    /// being busy is not a problem).
    pub async fn serves(&self, app: &str, listen: SocketAddr) -> bool {
        let inner = self.inner.lock().await;
        inner.apps.get(app).is_some_and(|a| a.listen == listen)
    }

    /// Whether the router listens on `listen` for `app` (its main or its
    /// preview listener) right now, by the router's own account: bound, not
    /// just asked for.
    pub async fn listening(&self, app: &str, listen: SocketAddr) -> bool {
        let preview = preview_entry(app);
        match self.client.stats().await {
            Ok(stats) => stats.listeners.iter().any(|l| {
                (l.app == app || l.app == preview) && l.listen == listen && l.error.is_none()
            }),
            Err(_) => false,
        }
    }

    /// The router's listeners, by routing entry (an app, or its
    /// `<app>--preview` listener), from its stats: the address, and why it is
    /// not listening there, if it is not. `None` when the router cannot be asked.
    pub async fn listeners(&self) -> Option<BTreeMap<String, (SocketAddr, Option<String>)>> {
        let stats = self.client.stats().await.ok()?;
        Some(
            stats
                .listeners
                .into_iter()
                .map(|l| (l.app, (l.listen, l.error)))
                .collect(),
        )
    }

    /// Take `app` (and its preview listener) out of the routing table: its
    /// listeners close. For `baton delete` and an app whose first apply failed.
    pub async fn withdraw(&self, app: &str) -> anyhow::Result<()> {
        let mut inner = self.inner.lock().await;
        let removed =
            inner.apps.remove(app).is_some() | inner.apps.remove(&preview_entry(app)).is_some();
        if !removed {
            return Ok(());
        }
        inner.generation += 1;
        let cfg = RoutingConfig {
            generation: inner.generation,
            apps: inner.apps.values().cloned().collect(),
        };
        self.client.push(&cfg).await.context("router push")?;
        Ok(())
    }

    /// The router's pid, for `baton down`.
    pub async fn pid(&self) -> Option<u32> {
        self.client.health().await.ok().map(|h| h.pid)
    }

    pub fn client(&self) -> &AdminClient {
        &self.client
    }
}

fn start_router(data_dir: &Path, socket: &Path, baton_exe: &str) -> anyhow::Result<()> {
    let logs = data_dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(logs.join("router.log"))?;
    let mut cmd = std::process::Command::new(baton_exe);
    cmd.arg("__router")
        .arg("--admin-socket")
        .arg(socket)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: a signal to the control plane's group (Ctrl-C)
        // or its death does not take the data plane with it.
        .env_remove("BATON_OWNER");
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting the router ({baton_exe} __router)"))?;
    // Reap it if it ever exits while this control plane runs (no zombie); a
    // restarted control plane re-attaches to a router it did not start.
    std::thread::Builder::new()
        .name("router-reaper".into())
        .spawn(move || {
            let status = child.wait();
            tracing::info!(?status, "the router process exited");
        })
        .context("starting the router reaper thread")?;
    Ok(())
}

async fn wait_for_router(client: &AdminClient) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if client.health().await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "the router did not come up within 15s; see logs/router.log in the data dir"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Name of the router entry of `app`'s blue-green preview listener.
pub fn preview_entry(app: &str) -> String {
    format!("{app}{PREVIEW_SUFFIX}")
}

/// Path of the router's admin socket in a data dir.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("router.sock")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traffic_section_becomes_the_router_limits_and_balancing() {
        let (limits, balance) = traffic(&baton_spec::TrafficSpec::default());
        assert_eq!(
            limits,
            AppLimits::default(),
            "the spec's defaults are the router's"
        );
        assert_eq!(balance, Balance::RoundRobin);
        let spec = baton_spec::TrafficSpec {
            balance: baton_spec::Balance::LeastRequests,
            connect_timeout: Duration::from_millis(500),
            response_timeout: Duration::from_secs(120),
            client_header_timeout: Duration::from_secs(5),
        };
        let (limits, balance) = traffic(&spec);
        assert_eq!(balance, Balance::LeastRequests);
        assert_eq!(limits.upstream_connect_timeout_ms, 500);
        assert_eq!(limits.upstream_response_timeout_ms, 120_000);
        assert_eq!(limits.client_header_timeout_ms, 5_000);
        assert_eq!(limits.max_body_bytes, AppLimits::default().max_body_bytes);
    }
}
