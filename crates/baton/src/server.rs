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
}

impl ControlPlane {
    /// Register a new app or update an existing one. Returns the app's handle.
    pub async fn apply(&self, spec: AppSpec, yaml: &str) -> anyhow::Result<AppHandle> {
        let spec_json = serde_json::to_string(&spec)?;
        self.shared
            .store()
            .upsert_app(&spec.name, &spec_json, yaml, self.shared.now_ms())?;
        let mut apps = self.apps.write().await;
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
            return Ok(handle.clone());
        }
        let name = spec.name.clone();
        let handle = AppController::spawn(self.shared.clone(), spec, self.shutdown.clone())?;
        apps.insert(name, handle.clone());
        Ok(handle)
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
    });
    // Resume every app the store knows, in-flight rollouts included.
    let known = shared.store().list_apps()?;
    for rec in known {
        let spec: AppSpec = serde_json::from_str(&rec.spec_json)
            .with_context(|| format!("stored spec of {} is unreadable", rec.name))?;
        let handle = AppController::spawn(shared.clone(), spec, shutdown.clone())?;
        cp.apps.write().await.insert(rec.name.clone(), handle);
        info!(app = %rec.name, "resumed");
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
        Ok(false) => match cp.apply(spec.clone(), yaml).await {
            Err(e) => StartApply::Refused {
                reason: format!("{e:#}"),
            },
            Ok(handle) => {
                match crate::api::deploy_declared_version(&handle, &spec, "serve").await {
                    Ok(d) => StartApply::Applied {
                        deployed: d.filter(|d| !d.unchanged).map(|d| d.version),
                    },
                    Err(e) => StartApply::AppliedNotDeployed {
                        reason: e.to_string(),
                    },
                }
            }
        },
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
