//! The launch effect: a revision of an app turned into the driver's
//! [`LaunchSpec`] and started, and the handle of an instance found by
//! discovery.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::Context;
use baton_driver::{InstanceHandle, LaunchSpec};
use baton_spec::{AppSpec, DriverSpec, TemplateVars};

use super::shared::Shared;

/// Start one instance of `revision` through the driver.
pub(super) async fn launch(
    shared: &Shared,
    app: &str,
    id: &str,
    revision: u32,
    version: &str,
) -> anyhow::Result<InstanceHandle> {
    let rev = shared
        .store()
        .get_revision(app, revision)?
        .with_context(|| format!("revision {revision} of {app} is missing from the store"))?;
    let spec: AppSpec =
        serde_json::from_str(&rev.spec_json).context("stored revision spec is unreadable")?;
    let release_env: BTreeMap<String, String> =
        serde_json::from_str(&rev.env_json).context("stored revision env is unreadable")?;
    let DriverSpec::Process(proc_spec) = &spec.driver;
    let host = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let port = baton_driver::free_port(host)?;
    let vars = TemplateVars {
        version,
        port,
        app,
        instance: id,
        baton: &shared.baton_exe,
    };
    let argv = proc_spec
        .command
        .iter()
        .map(|a| baton_spec::render_template(a, &vars))
        .collect();
    let mut env: BTreeMap<String, String> = proc_spec
        .env
        .iter()
        .map(|(k, v)| (k.clone(), baton_spec::render_template(v, &vars)))
        .collect();
    env.extend(release_env);
    env.insert("BATON_APP".into(), app.into());
    env.insert("BATON_VERSION".into(), version.into());
    let spec = LaunchSpec {
        instance_id: id.to_string(),
        app: app.to_string(),
        version: version.to_string(),
        revision,
        env,
        target: baton_driver::Target::Process(baton_driver::ProcessTarget {
            argv,
            workdir: proc_spec.workdir.clone(),
        }),
        host,
        port,
        log_path: shared
            .data_dir
            .join("logs")
            .join(app)
            .join(format!("{id}.log")),
    };
    Ok(shared.driver.start(&spec).await?)
}

/// A handle for an instance found by discovery, to stop it. Its address does not
/// matter for that.
pub(super) fn found_handle(f: &baton_driver::FoundInstance) -> InstanceHandle {
    f.handle().unwrap_or_else(|| InstanceHandle {
        instance_id: f.instance_id.clone(),
        address: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
        locator: f.locator.clone(),
    })
}
