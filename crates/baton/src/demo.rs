//! `baton demo`: a real upgrade a newcomer can watch. Starts the control plane
//! on embedded defaults in a temporary data dir, runs three instances of the
//! sample service v1 behind baton's router, sends steady traffic, upgrades to
//! v2 with the rolling strategy while printing each step, then prints what the
//! traffic saw and cleans everything up.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::controller::AppHandle;
use crate::loadgen::{self, LoadConfig};
use crate::term::{Color, paint};

const QUICKSTART: &str = include_str!("../../../examples/quickstart.yaml");

pub async fn run(instances: u32) -> anyhow::Result<bool> {
    let data_dir = std::env::temp_dir().join(format!("baton-demo-{}", std::process::id()));
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let listen = SocketAddr::new(localhost, baton_driver::free_port(localhost)?);
    let mut spec = baton_spec::parse_spec("examples/quickstart.yaml", QUICKSTART)
        .context("the embedded quickstart spec is invalid")?;
    spec.listen = listen;
    spec.instances = instances.max(1);
    spec.version = Some("v1".into());

    println!("{}", paint("baton demo", Color::Bold));
    println!("  data dir: {}", data_dir.display());
    println!("  router:   http://{listen}/  (try `curl -i http://{listen}/` in another terminal)");
    let shutdown = CancellationToken::new();
    let cp = crate::server::start(&data_dir, shutdown.clone()).await?;
    let result = drive(&cp, spec, listen).await;
    println!("\nstopping the sample instances and the router…");
    cp.down().await;
    let _ = std::fs::remove_dir_all(&data_dir);
    result
}

async fn drive(
    cp: &crate::server::ControlPlane,
    spec: baton_spec::AppSpec,
    listen: SocketAddr,
) -> anyhow::Result<bool> {
    let yaml = QUICKSTART.to_string();
    let handle = cp
        .apply(spec.clone(), "examples/quickstart.yaml", &yaml, true)
        .await?
        .handle;
    println!(
        "\n1. starting {} instances of the sample service v1",
        spec.instances
    );
    crate::server::deploy_declared_version(&handle, &spec, "demo")
        .await
        .map_err(|_| anyhow::anyhow!("could not start v1"))?;
    let mut printed = 0;
    if !follow(cp, &handle, &mut printed, Duration::from_secs(60)).await? {
        return Ok(false);
    }

    println!("\n2. sending steady traffic through the router (keep-alive and new connections)");
    let mut load_cfg = LoadConfig::new(listen);
    load_cfg.keepalive_workers = 4;
    load_cfg.fresh_workers = 2;
    load_cfg.pace = Duration::from_millis(2);
    load_cfg.max_duration = Duration::from_secs(300);
    let load = loadgen::start(load_cfg);
    load.wait_for_requests(500, Duration::from_secs(30)).await;

    println!("\n3. rolling upgrade v1 → v2 (max_surge 1, max_unavailable 0)");
    let started = Instant::now();
    let (tx, rx) = tokio::sync::oneshot::channel();
    handle
        .commands
        .send(crate::controller::Command::Deploy {
            request: crate::controller::DeployRequest {
                now: true,
                ..crate::controller::DeployRequest::new(
                    "v2".into(),
                    std::env::var("USER").unwrap_or_else(|_| "demo".into()),
                    baton_engine::RolloutKind::Deploy,
                )
            },
            reply: tx,
        })
        .await
        .map_err(|_| anyhow::anyhow!("controller stopped"))?;
    rx.await??;
    let ok = follow_with_load(cp, &handle, &mut printed, &load).await?;
    let took = started.elapsed();
    // A little more traffic after the switch shows every answer now comes from v2.
    let (before, _) = load.progress();
    load.wait_for_requests(before + 500, Duration::from_secs(30))
        .await;
    let report = load.finish().await;

    println!("\n4. summary");
    println!("  upgrade took:   {:.1}s", took.as_secs_f64());
    println!("  requests sent:  {}", report.requests);
    let failures = format!("{}", report.failures);
    println!(
        "  failed:         {}",
        if report.failures == 0 {
            paint(&failures, Color::Green)
        } else {
            paint(&failures, Color::Red)
        }
    );
    for (version, n) in &report.by_version {
        println!("  answered by {version}: {n}");
    }
    for f in &report.failure_samples {
        println!("  failure: {f}");
    }
    let history = cp.shared.store().list_history(&spec.name)?;
    if let Some(h) = history.first() {
        println!(
            "  history:        {} → {} {} by {}",
            h.from_version.as_deref().unwrap_or("-"),
            h.to_version,
            h.result,
            h.operator
        );
    }
    Ok(ok && report.failures == 0)
}

/// Print new events until the app has no rollout in flight. Returns whether
/// the last rollout succeeded.
async fn follow(
    cp: &crate::server::ControlPlane,
    handle: &AppHandle,
    printed: &mut i64,
    timeout: Duration,
) -> anyhow::Result<bool> {
    let deadline = Instant::now() + timeout;
    let mut status = handle.status.clone();
    loop {
        print_events(cp, &handle.status.borrow().state.app, printed, None)?;
        let view = status.borrow_and_update().clone();
        if view.state.rollout.is_none() && view.state.last_finished.is_some() {
            return Ok(view
                .state
                .last_finished
                .as_ref()
                .is_some_and(|f| f.outcome == baton_engine::Outcome::Succeeded));
        }
        if Instant::now() > deadline {
            anyhow::bail!("the rollout did not finish within {}s", timeout.as_secs());
        }
        let _ = tokio::time::timeout(Duration::from_millis(500), status.changed()).await;
    }
}

async fn follow_with_load(
    cp: &crate::server::ControlPlane,
    handle: &AppHandle,
    printed: &mut i64,
    load: &loadgen::LoadHandle,
) -> anyhow::Result<bool> {
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut status = handle.status.clone();
    loop {
        print_events(cp, &handle.status.borrow().state.app, printed, Some(load))?;
        let view = status.borrow_and_update().clone();
        if view.state.rollout.is_none() {
            return Ok(view
                .state
                .last_finished
                .as_ref()
                .is_some_and(|f| f.outcome == baton_engine::Outcome::Succeeded));
        }
        if Instant::now() > deadline {
            anyhow::bail!("the rollout did not finish within 300s");
        }
        let _ = tokio::time::timeout(Duration::from_millis(500), status.changed()).await;
    }
}

fn print_events(
    cp: &crate::server::ControlPlane,
    app: &str,
    printed: &mut i64,
    load: Option<&loadgen::LoadHandle>,
) -> anyhow::Result<()> {
    let events = cp.shared.store().list_events(app, *printed, 1000)?;
    for e in events {
        *printed = e.id;
        let traffic = load
            .map(|l| {
                let (req, fail) = l.progress();
                format!("  [{req} requests, {fail} failed]")
            })
            .unwrap_or_default();
        println!("   {:<20} {}{}", e.kind, e.message, traffic);
    }
    Ok(())
}
