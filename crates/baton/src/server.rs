//! The control plane: opens the store, attaches to (or starts) the router,
//! resumes a controller for every known app, and takes `apply`, `delete` and
//! `down`. The HTTP API (`api`) and `baton serve` (`serve`) sit on top of it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use baton_driver::Drivers;
use baton_spec::AppSpec;
use baton_store::Store;
use tokio::sync::RwLock;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::controller::{
    AppController, AppHandle, Command, CommandError, DeployAccepted, DeployRequest, Shared,
};
use crate::lock::DataDirLock;
use crate::routing::RouterLink;
use baton_engine::RolloutKind;

/// The running control plane, shared by the API handlers.
pub struct ControlPlane {
    pub shared: Arc<Shared>,
    pub apps: RwLock<BTreeMap<String, AppHandle>>,
    pub shutdown: CancellationToken,
    /// This control plane's hold on the data dir (one writer per data dir).
    pub lock: std::sync::Mutex<DataDirLock>,
    /// Stops one app's controller (`baton delete`); children of `shutdown`.
    controllers: std::sync::Mutex<BTreeMap<String, CancellationToken>>,
    /// The dashboards' live stream, started by the first one.
    pub stream: std::sync::OnceLock<Arc<crate::stream::Broadcaster>>,
}

/// Why `apply` refused a spec. Nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The spec conflicts with another app, the host or what runs now; the
    /// message says what and how to fix it.
    #[error("{0}")]
    Refused(String),
    /// The spec declares a version older than what runs, without `--yes`.
    #[error("{0}")]
    Downgrade(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// An accepted `apply`.
pub struct Applied {
    pub handle: AppHandle,
    /// The app did not exist before this apply.
    pub created: bool,
    /// What changed in the app's spec (empty for a new app).
    pub changes: Vec<crate::admission::Change>,
}

impl ControlPlane {
    /// Register a new app or update an existing one, after checking that its
    /// listen addresses are its own and can be listened on, and that a
    /// version it declares is one the user means to go to (`yes` confirms a
    /// downgrade). A refusal changes nothing.
    pub async fn apply(
        &self,
        spec: AppSpec,
        file: &str,
        yaml: &str,
        yes: bool,
    ) -> Result<Applied, ApplyError> {
        // Held throughout, so two applies cannot both take the same address.
        let mut apps = self.apps.write().await;
        let views: Vec<Arc<crate::controller::AppView>> =
            apps.values().map(|h| h.status.borrow().clone()).collect();
        let others = views.iter().map(|v| &v.spec);
        if let Some(conflict) = crate::admission::listen_conflict(&spec, file, others) {
            return Err(ApplyError::Refused(conflict));
        }
        let current = views.iter().find(|v| v.spec.name == spec.name);
        if let Some(view) = current {
            let running = view
                .state
                .rollout
                .as_ref()
                .map(|r| &r.to)
                .or(view.state.stable.as_ref())
                .map(|r| r.version.as_str());
            if let (Some(r), Some(declared)) = (&view.state.rollout, &spec.version)
                && &r.to.version != declared
            {
                return Err(ApplyError::Refused(format!(
                    "{file} declares version {declared}, but a rollout of {} to {} is in progress; wait for it to finish (or `baton abort {}`), then apply again",
                    spec.name, r.to.version, spec.name
                )));
            }
            if !yes
                && let Some(why) = crate::admission::unexpected_version_change(
                    &spec.name,
                    running,
                    spec.version.as_deref(),
                )
            {
                return Err(ApplyError::Downgrade(why));
            }
        }
        if let Some(hosts) = &spec.hosts {
            // Every host's key is checked before anything changes.
            crate::fleet::check_host_keys(hosts)
                .await
                .map_err(|e| ApplyError::Refused(format!("{file}: {e}")))?;
        }
        let per_host = spec
            .hosts
            .as_ref()
            .is_some_and(|h| h.router == baton_spec::RouterPlacement::PerHost);
        for (address, field) in crate::admission::addresses(&spec)
            .into_iter()
            .filter(|_| !per_host)
        {
            // Busy is fine when it is baton's router serving this very app.
            if let Err(e) = std::net::TcpListener::bind(address)
                && !self.shared.router.listening(&spec.name, address).await
            {
                return Err(ApplyError::Refused(format!(
                    "{file}: {field} {address} cannot be listened on: {e}. Another program holds it (see `ss -ltnp 'sport = :{}'`): stop it, or change `{field}` in {file} to a free port",
                    address.port()
                )));
            }
        }
        let changes = current
            .map(|v| crate::admission::diff(&v.spec, &spec))
            .unwrap_or_default();
        let spec_json = serde_json::to_string(&spec).map_err(anyhow::Error::from)?;
        self.shared
            .store()
            .upsert_app(&spec.name, &spec_json, yaml, self.shared.now_ms())
            .map_err(anyhow::Error::from)?;
        self.shared.fleet.ensure(&spec);
        if let Some(handle) = apps.get(&spec.name) {
            let (tx, rx) = tokio::sync::oneshot::channel();
            handle
                .commands
                .send(Command::Apply {
                    spec: Box::new(spec),
                    reply: tx,
                })
                .await
                .map_err(|_| anyhow::anyhow!("app controller stopped"))?;
            rx.await
                .map_err(|_| anyhow::anyhow!("app controller stopped"))??;
            return Ok(Applied {
                handle: handle.clone(),
                created: false,
                changes,
            });
        }
        let name = spec.name.clone();
        let handle = self.spawn_controller(spec)?;
        apps.insert(name, handle.clone());
        Ok(Applied {
            handle,
            created: true,
            changes,
        })
    }

    /// Start the controller of an app, stoppable on its own by [`Self::forget`].
    fn spawn_controller(&self, spec: AppSpec) -> anyhow::Result<AppHandle> {
        let token = self.shutdown.child_token();
        let name = spec.name.clone();
        let handle = AppController::spawn(self.shared.clone(), spec, token.clone())?;
        self.controllers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name, token);
        Ok(handle)
    }

    /// Unregister an app: stop its controller, take it out of the router and
    /// the store (its revisions, history and events stay). Its instances must
    /// be stopped already.
    pub async fn forget(&self, name: &str) -> anyhow::Result<()> {
        self.apps.write().await.remove(name);
        if let Some(token) = self
            .controllers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name)
        {
            token.cancel();
        }
        self.shared.router.withdraw(name).await?;
        self.shared.store().delete_app(name, self.shared.now_ms())?;
        info!(app = %name, "app removed");
        Ok(())
    }

    /// `baton delete APP`: drain and stop every instance (out of routing
    /// first, in-flight requests finished), then [`Self::forget`] the app.
    pub async fn delete(&self, name: &str) -> anyhow::Result<bool> {
        let Some(handle) = self.app(name).await else {
            return Ok(false);
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        handle
            .commands
            .send(Command::Delete { reply: tx })
            .await
            .map_err(|_| anyhow::anyhow!("app controller stopped"))?;
        rx.await
            .map_err(|_| anyhow::anyhow!("app controller stopped"))?;
        self.forget(name).await?;
        Ok(true)
    }

    pub async fn app(&self, name: &str) -> Option<AppHandle> {
        self.apps.read().await.get(name).cloned()
    }

    /// Stop every instance of every app and the router (`baton down`).
    pub async fn down(&self) {
        let handles: Vec<AppHandle> = self.apps.read().await.values().cloned().collect();
        // Every app at once: each controller stops its instances and then ends,
        // so none can take a stopped instance for a crashed one and replace it.
        let mut stopping = tokio::task::JoinSet::new();
        for h in handles {
            stopping.spawn(async move {
                let (tx, rx) = tokio::sync::oneshot::channel();
                if h.commands
                    .send(Command::StopAll { reply: tx })
                    .await
                    .is_ok()
                {
                    let _ = rx.await;
                }
            });
        }
        stopping.join_all().await;
        self.shared.fleet.down().await;
        if let Some(pid) = self.shared.router.pid().await {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        self.shutdown.cancel();
    }
}

/// Create the data dir if needed and take its lock: the first thing a
/// control plane does (one per data dir), before the store, the router or the
/// API. Returns the canonical path and the held lock.
pub fn lock_data_dir(data_dir: &Path) -> anyhow::Result<(PathBuf, DataDirLock)> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating data dir {}", data_dir.display()))?;
    let data_dir = data_dir
        .canonicalize()
        .with_context(|| format!("resolving data dir {}", data_dir.display()))?;
    let lock = DataDirLock::acquire(&data_dir)?;
    Ok((data_dir, lock))
}

/// Open the data dir and bring the control plane up (without the API).
pub async fn start(
    data_dir: &Path,
    shutdown: CancellationToken,
) -> anyhow::Result<Arc<ControlPlane>> {
    let (data_dir, lock) = lock_data_dir(data_dir)?;
    start_locked(data_dir, lock, shutdown).await
}

/// [`start`] on a data dir whose lock is already held.
pub async fn start_locked(
    data_dir: PathBuf,
    lock: DataDirLock,
    shutdown: CancellationToken,
) -> anyhow::Result<Arc<ControlPlane>> {
    let store = Store::open(&data_dir.join("baton.db")).context("opening the store")?;
    let baton_exe = std::env::current_exe()
        .context("locating the baton executable")?
        .to_string_lossy()
        .into_owned();
    let clock: Arc<dyn crate::effects::Clock> = Arc::new(crate::effects::SystemClock);
    let router =
        RouterLink::attach_or_start(&data_dir, &baton_exe, clock.clone(), shutdown.clone()).await?;
    let fleet = Arc::new(crate::fleet::Fleet::new(
        data_dir.clone(),
        PathBuf::from(&baton_exe),
        clock.clone(),
        shutdown.clone(),
    ));
    let shared = Arc::new(Shared {
        store: Arc::new(std::sync::Mutex::new(store)),
        driver: Arc::new(crate::fleet::FleetDriver::new(
            Drivers::new(data_dir.to_string_lossy().into_owned()),
            fleet.clone(),
        )),
        router,
        fleet,
        probe: Arc::new(crate::effects::HttpProbe::default()),
        clock,
        delivery: None,
        data_dir: data_dir.clone(),
        baton_exe,
        audit: Some(Arc::new(
            crate::audit::AuditLog::open(&data_dir).context("opening the audit log")?,
        )),
    });
    let cp = Arc::new(ControlPlane {
        shared: shared.clone(),
        apps: RwLock::new(BTreeMap::new()),
        shutdown: shutdown.clone(),
        lock: std::sync::Mutex::new(lock),
        controllers: std::sync::Mutex::new(BTreeMap::new()),
        stream: std::sync::OnceLock::new(),
    });
    // Resume every app the store knows, in-flight rollouts included.
    let known = shared.store().list_apps()?;
    let mut resumed: Vec<AppSpec> = Vec::new();
    for rec in known {
        let spec: AppSpec = serde_json::from_str(&rec.spec_json)
            .with_context(|| format!("stored spec of {} is unreadable", rec.name))?;
        // Apps registered before `apply` refused shared addresses: the router
        // refuses a table with both, so say which and how to fix it.
        if let Some(conflict) =
            crate::admission::listen_conflict(&spec, "the stored spec", resumed.iter())
        {
            tracing::error!(app = %rec.name, %conflict, "two apps share an address; the router will refuse their routing table until one is deleted or moved");
        }
        shared.fleet.ensure(&spec);
        let handle = cp.spawn_controller(spec.clone())?;
        cp.apps.write().await.insert(rec.name.clone(), handle);
        info!(app = %rec.name, "resumed");
        resumed.push(spec);
    }
    Ok(cp)
}

/// A spec that names a version is deployed when it is not what runs already.
pub async fn deploy_declared_version(
    handle: &AppHandle,
    spec: &AppSpec,
    operator: &str,
) -> Result<Option<DeployAccepted>, CommandError> {
    let Some(version) = &spec.version else {
        return Ok(None);
    };
    let view = handle.status.borrow().clone();
    let current = view
        .state
        .rollout
        .as_ref()
        .map(|r| &r.to)
        .or(view.state.stable.as_ref());
    if current.is_some_and(|r| &r.version == version) {
        return Ok(None);
    }
    send_deploy(
        handle,
        DeployRequest::new(version.clone(), operator.into(), RolloutKind::Deploy),
    )
    .await
    .map(Some)
}

/// Hand a deploy (or rollback, retry) to the app's controller and wait for its answer.
pub async fn send_deploy(
    handle: &AppHandle,
    request: DeployRequest,
) -> Result<DeployAccepted, CommandError> {
    let stopped = || CommandError::Internal("the app's controller stopped".into());
    let (tx, rx) = tokio::sync::oneshot::channel();
    handle
        .commands
        .send(Command::Deploy { request, reply: tx })
        .await
        .map_err(|_| stopped())?;
    rx.await.map_err(|_| stopped())?
}
