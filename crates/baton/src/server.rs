//! `baton serve`: the control plane. Opens the store, attaches to (or starts)
//! the router, resumes a controller for every known app, and serves the API.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use baton_driver::ProcessDriver;
use baton_spec::AppSpec;
use baton_store::Store;
use tokio::sync::RwLock;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::controller::{AppController, AppHandle, Command, Shared};
use crate::lock::DataDirLock;
use crate::routing::RouterLink;

/// Options of `baton serve`.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub data_dir: PathBuf,
    pub api: SocketAddr,
    /// Specs to apply at start (`-c FILE`).
    pub specs: Vec<(String, String)>,
}

/// The running control plane, shared by the API handlers.
pub struct ControlPlane {
    pub shared: Arc<Shared>,
    pub apps: RwLock<BTreeMap<String, AppHandle>>,
    pub shutdown: CancellationToken,
    /// This control plane's hold on the data dir (one writer per data dir).
    pub lock: std::sync::Mutex<DataDirLock>,
    /// Stops one app's controller (`baton delete`); children of `shutdown`.
    controllers: std::sync::Mutex<BTreeMap<String, CancellationToken>>,
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
        for (address, field) in crate::admission::addresses(&spec) {
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
    let shared = Arc::new(Shared {
        store: Arc::new(std::sync::Mutex::new(store)),
        driver: Arc::new(ProcessDriver::new(data_dir.to_string_lossy().into_owned())),
        router,
        probe: Arc::new(crate::effects::HttpProbe::default()),
        clock,
        data_dir: data_dir.clone(),
        baton_exe,
    });
    let cp = Arc::new(ControlPlane {
        shared: shared.clone(),
        apps: RwLock::new(BTreeMap::new()),
        shutdown: shutdown.clone(),
        lock: std::sync::Mutex::new(lock),
        controllers: std::sync::Mutex::new(BTreeMap::new()),
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
        let handle = cp.spawn_controller(spec.clone())?;
        cp.apps.write().await.insert(rec.name.clone(), handle);
        info!(app = %rec.name, "resumed");
        resumed.push(spec);
    }
    Ok(cp)
}

/// `baton serve`: run until SIGINT/SIGTERM. Instances and the router keep
/// running after the control plane stops, and are adopted again on restart.
pub async fn serve(opts: ServeOptions) -> anyhow::Result<()> {
    // The data dir's lock first: a second control plane stops here, naming
    // the first, whatever its API address.
    let (data_dir, lock) = lock_data_dir(&opts.data_dir)?;
    // Then the API's address: when it is taken, stop before a router or any
    // instance is started (nothing is left behind).
    let listener = tokio::net::TcpListener::bind(opts.api)
        .await
        .map_err(|source| ApiBindError {
            address: opts.api,
            source,
        })?;
    let shutdown = CancellationToken::new();
    let cp = start_locked(data_dir, lock, shutdown.clone()).await?;
    for (file, yaml) in &opts.specs {
        let spec = baton_spec::parse_spec(file, yaml)?;
        apply_at_start(&cp, file, spec, yaml).await;
    }
    let api_addr = listener.local_addr()?;
    if let Ok(mut lock) = cp.lock.lock() {
        lock.record(Some(api_addr))?;
    }
    info!(api = %api_addr, data_dir = %cp.shared.data_dir.display(), "baton control plane ready");
    let app = crate::api::router(cp.clone());
    let signal_token = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("signal received: stopping the control plane; instances and the router keep running");
        signal_token.cancel();
        // A second signal forces exit.
        wait_for_signal().await;
        std::process::exit(130);
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
    Ok(())
}

/// What `serve -c FILE` did with one spec at start.
#[derive(Debug, PartialEq)]
pub enum StartApply {
    /// The same spec was applied last time: what runs (and any rollout in
    /// flight, or a version deployed since with `baton deploy`) stands.
    Unchanged,
    /// The spec was applied; `deployed` names the version a rollout started for.
    Applied { deployed: Option<String> },
    /// The spec was applied, but its version could not be deployed now.
    AppliedNotDeployed { reason: String },
    /// The spec was refused; the app keeps running as it was.
    Refused { reason: String },
}

/// `serve -c FILE` is what a supervisor restarts after a crash, so it must
/// always come up: an unchanged spec is a no-op (whatever its `version:`
/// says), a changed one goes through the rules of `apply`, and what happened
/// is logged. It never stops the control plane.
pub async fn apply_at_start(
    cp: &ControlPlane,
    file: &str,
    spec: AppSpec,
    yaml: &str,
) -> StartApply {
    let app = spec.name.clone();
    let outcome = match unchanged_since_last_apply(cp, &spec) {
        Ok(true) => StartApply::Unchanged,
        Ok(false) => {
            // A version older than what runs (deployed since this file was
            // written) is not a reason to downgrade on a restart: keep what runs.
            let (applied, spec) = match cp.apply(spec.clone(), file, yaml, false).await {
                Err(ApplyError::Downgrade(why)) => {
                    tracing::warn!(%app, %file, reason = %why, "not deploying the version the file declares");
                    let mut keep = spec;
                    keep.version = None;
                    (cp.apply(keep.clone(), file, yaml, false).await, keep)
                }
                other => (other, spec),
            };
            match applied {
                Err(e) => StartApply::Refused {
                    reason: format!("{e:#}"),
                },
                Ok(applied) => {
                    match crate::api::deploy_declared_version(&applied.handle, &spec, "serve").await
                    {
                        Ok(d) => StartApply::Applied {
                            deployed: d.filter(|d| !d.unchanged).map(|d| d.version),
                        },
                        Err(e) => {
                            // A first apply whose release cannot start leaves
                            // no half-registered app behind.
                            if applied.created {
                                let _ = cp.forget(&spec.name).await;
                            }
                            StartApply::AppliedNotDeployed {
                                reason: e.to_string(),
                            }
                        }
                    }
                }
            }
        }
        Err(e) => StartApply::Refused {
            reason: format!("{e:#}"),
        },
    };
    match &outcome {
        StartApply::Unchanged => {
            info!(%app, %file, "spec unchanged since it was last applied: what runs stands")
        }
        StartApply::Applied { deployed: Some(v) } => {
            info!(%app, %file, version = %v, "spec applied; deploying its version")
        }
        StartApply::Applied { deployed: None } => info!(%app, %file, "spec applied"),
        StartApply::AppliedNotDeployed { reason } => {
            tracing::warn!(%app, %file, %reason, "spec applied; its version is not deployed now")
        }
        StartApply::Refused { reason } => {
            tracing::warn!(%app, %file, %reason, "spec refused; the app runs as before")
        }
    }
    outcome
}

/// Whether `spec` is what was last applied for its app (compared as parsed
/// specs, so comments and formatting do not count).
fn unchanged_since_last_apply(cp: &ControlPlane, spec: &AppSpec) -> anyhow::Result<bool> {
    let Some(rec) = cp.shared.store().get_app(&spec.name)? else {
        return Ok(false);
    };
    Ok(serde_json::to_string(spec)? == rec.spec_json)
}

/// `serve` could not listen on its API address (bad input: exit 2).
#[derive(Debug, thiserror::Error)]
#[error("cannot listen for the API on {address}: {source}\n  hint: {}", bind_hint(.source))]
pub struct ApiBindError {
    pub address: SocketAddr,
    pub source: std::io::Error,
}

fn bind_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            "another process (maybe another `baton serve`) uses it; stop it, or pick another address with --api HOST:PORT (and point the CLI at it with --server or BATON_SERVER)"
        }
        std::io::ErrorKind::PermissionDenied => {
            "ports below 1024 need privileges; pick another one with --api HOST:PORT"
        }
        std::io::ErrorKind::AddrNotAvailable => {
            "that IP is not an address of this machine; use 127.0.0.1 or one of its own with --api HOST:PORT"
        }
        _ => "pick another address with --api HOST:PORT",
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
