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

use crate::controller::{AppController, AppHandle, Command, Shared, now_ms};
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
}

impl ControlPlane {
    /// Register a new app or update an existing one. Returns the app's handle.
    pub async fn apply(&self, spec: AppSpec, yaml: &str) -> anyhow::Result<AppHandle> {
        let spec_json = serde_json::to_string(&spec)?;
        self.shared
            .store()
            .upsert_app(&spec.name, &spec_json, yaml, now_ms())?;
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
        for h in handles {
            let (tx, rx) = tokio::sync::oneshot::channel();
            if h.commands
                .send(Command::StopAll { reply: tx })
                .await
                .is_ok()
            {
                let _ = rx.await;
            }
        }
        if let Some(pid) = self.shared.router.pid().await {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        self.shutdown.cancel();
    }
}

/// Open the data dir and bring the control plane up (without the API).
pub async fn start(
    data_dir: &Path,
    shutdown: CancellationToken,
) -> anyhow::Result<Arc<ControlPlane>> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating data dir {}", data_dir.display()))?;
    let data_dir = data_dir
        .canonicalize()
        .with_context(|| format!("resolving data dir {}", data_dir.display()))?;
    let store = Store::open(&data_dir.join("baton.db")).context("opening the store")?;
    let baton_exe = std::env::current_exe()
        .context("locating the baton executable")?
        .to_string_lossy()
        .into_owned();
    let router = RouterLink::attach_or_start(&data_dir, &baton_exe).await?;
    let shared = Arc::new(Shared {
        store: std::sync::Mutex::new(store),
        driver: ProcessDriver::new(data_dir.to_string_lossy().into_owned()),
        router,
        data_dir: data_dir.clone(),
        baton_exe,
    });
    let cp = Arc::new(ControlPlane {
        shared: shared.clone(),
        apps: RwLock::new(BTreeMap::new()),
        shutdown: shutdown.clone(),
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
    // The API's address first: when it is taken, stop before a router or any
    // instance is started (nothing is left behind).
    let listener = tokio::net::TcpListener::bind(opts.api)
        .await
        .map_err(|source| ApiBindError {
            address: opts.api,
            source,
        })?;
    let shutdown = CancellationToken::new();
    let cp = start(&opts.data_dir, shutdown.clone()).await?;
    for (file, yaml) in &opts.specs {
        let spec = baton_spec::parse_spec(file, yaml)?;
        let handle = cp.apply(spec.clone(), yaml).await?;
        crate::api::deploy_declared_version(&handle, &spec, "serve").await?;
    }
    info!(api = %listener.local_addr()?, data_dir = %cp.shared.data_dir.display(), "baton control plane ready");
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
