//! `baton serve`: takes the data dir's lock, binds the API, brings the
//! control plane up, applies the `-c` specs and serves the API until a signal.

use std::net::SocketAddr;
use std::path::PathBuf;

use baton_spec::AppSpec;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::server::{
    ApplyError, ControlPlane, deploy_declared_version, lock_data_dir, start_locked,
};

/// Options of `baton serve`.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub data_dir: PathBuf,
    pub api: SocketAddr,
    /// Specs to apply at start (`-c FILE`).
    pub specs: Vec<(String, String)>,
    /// Serve the API over TLS (required off loopback).
    pub tls: Option<crate::tls::TlsFiles>,
}

/// `serve` refused its options before doing anything (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ServeRefused(pub String);

/// `baton serve`: run until SIGINT/SIGTERM. Instances and the router keep
/// running after the control plane stops, and are adopted again on restart.
pub async fn serve(opts: ServeOptions) -> anyhow::Result<()> {
    // Tokens must not cross a network in clear text: off loopback, TLS or nothing.
    if !opts.api.ip().is_loopback() && opts.tls.is_none() {
        return Err(ServeRefused(format!(
            "--api {} can be reached from other machines, and tokens must not cross a network \
             in clear text: give --tls-cert and --tls-key (PEM files), or listen on loopback \
             (--api 127.0.0.1:{}) and reach it through an SSH tunnel",
            opts.api,
            opts.api.port()
        ))
        .into());
    }
    let tls = match &opts.tls {
        Some(files) => Some(crate::tls::server_config(files).map_err(ServeRefused)?),
        None => None,
    };
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
    if let Some(path) = crate::tokens::bootstrap(&cp.shared)? {
        info!(file = %path.display(), "created the admin token (role admin); the CLI reads it from there, or give it to `baton login`");
    }
    for (file, yaml) in &opts.specs {
        let spec = baton_spec::parse_spec(file, yaml)?;
        apply_at_start(&cp, file, spec, yaml).await;
    }
    let api_addr = listener.local_addr()?;
    if let Ok(mut lock) = cp.lock.lock() {
        lock.record(Some(api_addr))?;
    }
    info!(api = %api_addr, tls = opts.tls.is_some(), data_dir = %cp.shared.data_dir.display(), "baton control plane ready");
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
    match tls {
        Some(config) => crate::tls::serve(listener, app, config, shutdown).await?,
        None => {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await?
        }
    }
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
                    match deploy_declared_version(&applied.handle, &spec, "serve").await {
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
