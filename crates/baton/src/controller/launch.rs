//! The launch effect: a revision of an app turned into the driver's
//! [`LaunchSpec`] and started; where discovery looks for an app's instances,
//! and the handle of an instance it found.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::Context;
use baton_driver::{InstanceHandle, LaunchSpec};
use baton_spec::{AppSpec, DriverSpec, TemplateVars};

use super::shared::Shared;

/// Where one new instance goes.
struct Placement<'a> {
    id: &'a str,
    host: IpAddr,
    /// The port on `host` the router reaches it at.
    port: u16,
    log_path: std::path::PathBuf,
    baton: &'a str,
    /// The host whose node starts it; `None`: this machine.
    node: Option<&'a str>,
}

/// What to start for one instance of revision `rev` (pure: templates rendered, the
/// container image pinned to the revision's digest).
fn launch_spec(
    spec: &AppSpec,
    rev: &baton_store::RevisionRecord,
    release_env: BTreeMap<String, String>,
    at: Placement<'_>,
) -> anyhow::Result<LaunchSpec> {
    let (app, version) = (spec.name.as_str(), rev.version.as_str());
    // `{port}` is the port the app listens on: the instance's own for a process
    // or a host-network container, the image's port inside a published container.
    let app_port = match &spec.driver {
        DriverSpec::Container(c) if c.network == baton_spec::ContainerNetwork::Publish => c.port,
        _ => at.port,
    };
    let vars = TemplateVars {
        version,
        port: app_port,
        app,
        instance: at.id,
        baton: at.baton,
    };
    let host = at.host.to_string();
    let extra = [("host", host.as_str())];
    let render = |list: &[String]| -> Vec<String> {
        list.iter()
            .map(|a| baton_spec::render_template_with(a, &vars, &extra))
            .collect()
    };
    let render_env = |env: &BTreeMap<String, String>| -> BTreeMap<String, String> {
        env.iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    baton_spec::render_template_with(v, &vars, &extra),
                )
            })
            .collect()
    };
    let (mut env, target) = match &spec.driver {
        DriverSpec::Process(p) => (
            render_env(&p.env),
            baton_driver::Target::Process(baton_driver::ProcessTarget {
                argv: render(&p.command),
                workdir: p.workdir.clone(),
            }),
        ),
        DriverSpec::Container(c) => {
            let (image, digest) = match &rev.image {
                Some(pin) => (pin.reference.clone(), Some(pin.digest.clone())),
                None => (crate::containers::image_of(c, app, version), None),
            };
            (
                render_env(&c.env),
                baton_driver::Target::Container(baton_driver::ContainerTarget {
                    // On a host, its node resolves the engine there.
                    endpoint: match at.node {
                        Some(_) => crate::containers::endpoint_on_host(c),
                        None => crate::containers::endpoint_of(c)?,
                    },
                    image,
                    digest,
                    pull: crate::containers::pull_policy(c.pull),
                    container_port: app_port,
                    host_network: c.network == baton_spec::ContainerNetwork::Host,
                    entrypoint: c.entrypoint.as_deref().map(render),
                    command: c.command.as_deref().map(render),
                    user: c.user.clone(),
                    workdir: c.workdir.clone(),
                    memory_bytes: c.memory_bytes,
                    cpus: c.cpus,
                    read_only: c.read_only,
                    labels: c.labels.clone(),
                }),
            )
        }
    };
    env.extend(release_env);
    env.insert("BATON_APP".into(), app.into());
    env.insert("BATON_VERSION".into(), version.into());
    Ok(LaunchSpec {
        instance_id: at.id.to_string(),
        app: app.to_string(),
        version: version.to_string(),
        revision: rev.number,
        env,
        host: at.host,
        port: at.port,
        log_path: at.log_path,
        target,
        node: at.node.map(str::to_owned),
    })
}

/// Start one instance of `revision` (on `host`, for an app on several hosts)
/// through the driver.
pub(super) async fn launch(
    shared: &Shared,
    app: &str,
    id: &str,
    revision: u32,
    host: Option<&str>,
) -> anyhow::Result<InstanceHandle> {
    let rev = shared
        .store()
        .get_revision(app, revision)?
        .with_context(|| format!("revision {revision} of {app} is missing from the store"))?;
    launch_revision(shared, &rev, id, host).await
}

/// Start one instance of `rev` (a stored revision, or one made up for a
/// preview) through the driver.
pub(crate) async fn launch_revision(
    shared: &Shared,
    rev: &baton_store::RevisionRecord,
    id: &str,
    host: Option<&str>,
) -> anyhow::Result<InstanceHandle> {
    let app = rev.app.as_str();
    let spec: AppSpec =
        serde_json::from_str(&rev.spec_json).context("stored revision spec is unreadable")?;
    let release_env: BTreeMap<String, String> =
        serde_json::from_str(&rev.env_json).context("stored revision env is unreadable")?;
    // On a host, it listens on the host's address, on a port its node picks
    // there, and `{baton}` is the copy installed on that host.
    let (ip, port, log_path, baton) = match host {
        Some(name) => {
            let link = shared
                .fleet
                .host(name)
                .with_context(|| format!("host {name} of {app} is not connected"))?;
            let ip = crate::node::host_ip(&link.spec.address).await?;
            let state = link.state();
            let (Some(dir), Some(binary)) = (state.remote_dir, state.binary) else {
                anyhow::bail!("host {name} has not been reached yet");
            };
            let port = link
                .node
                .free_port(ip)
                .await
                .with_context(|| format!("asking host {name} for a free port"))?;
            let log = std::path::PathBuf::from(format!("{dir}/logs/{app}/{id}.log"));
            (ip, port, log, binary)
        }
        None => {
            let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
            let log = shared
                .data_dir
                .join("logs")
                .join(app)
                .join(format!("{id}.log"));
            (
                ip,
                baton_driver::free_port(ip)?,
                log,
                shared.baton_exe.clone(),
            )
        }
    };
    let spec = launch_spec(
        &spec,
        rev,
        release_env,
        Placement {
            id,
            host: ip,
            port,
            log_path,
            baton: &baton,
            node: host,
        },
    )?;
    Ok(shared.driver.start(&spec).await?)
}

/// Where `spec`'s instances can be: processes and the engines of its
/// revisions, on this machine and on each of its hosts. The engines are those
/// the recorded `instances` run on (an earlier revision may have used another),
/// each on its own host, plus the spec's: `local` (resolved on this machine) for
/// an app that runs here, and on each of the spec's hosts the endpoint its node
/// resolves there. The spec's hosts and those of the recorded instances are
/// all looked at.
pub(super) fn discover_scope(
    spec: &AppSpec,
    instances: &[baton_engine::Instance],
    local: Option<String>,
) -> baton_driver::Scope {
    // By host; `None`: this machine.
    let mut engines: BTreeMap<Option<String>, Vec<String>> = BTreeMap::new();
    for i in instances {
        let on = engines.entry(i.host.clone()).or_default();
        if let Some(handle) = &i.handle
            && let baton_engine::Locator::Container { endpoint, .. } = handle.locator.local()
        {
            on.push(endpoint.clone());
        }
    }
    for host in spec.hosts.iter().flat_map(|h| &h.hosts) {
        let on = engines.entry(Some(host.name.clone())).or_default();
        if let DriverSpec::Container(c) = &spec.driver {
            on.push(crate::containers::endpoint_on_host(c));
        }
    }
    engines.entry(None).or_default().extend(local);
    let mut scope = baton_driver::Scope {
        app: spec.name.clone(),
        ..Default::default()
    };
    for (host, mut endpoints) in engines {
        endpoints.sort();
        endpoints.dedup();
        match host {
            None => scope.container_endpoints = endpoints,
            Some(name) => scope.hosts.push(baton_driver::HostScope {
                name,
                container_endpoints: endpoints,
            }),
        }
    }
    scope
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

#[cfg(test)]
mod tests {
    use super::*;
    use baton_driver::{HostScope, Locator};

    const FLEET: &str = "name: web
environment: test
listen: 127.0.0.1:8080
instances: 2
driver:
  container:
    image: app:{version}
    port: 8080
readiness:
  path: /healthz
strategy:
  rolling: {}
hosts:
  ssh: { user: root }
  list:
    - { name: h0, address: 10.0.0.10, dir: /srv/baton }
    - { name: h1, address: 10.0.0.11, dir: /srv/baton }
";

    fn instance(id: &str, host: Option<&str>, endpoint: &str) -> baton_engine::Instance {
        let container = Locator::Container {
            id: id.into(),
            endpoint: endpoint.into(),
            digest: "sha256:aa".into(),
        };
        let locator = match host {
            Some(host) => Locator::Remote {
                host: host.into(),
                locator: Box::new(container),
            },
            None => container,
        };
        baton_engine::Instance {
            id: id.into(),
            revision: 1,
            version: "v1".into(),
            phase: baton_engine::InstancePhase::Starting,
            address: None,
            handle: Some(InstanceHandle {
                instance_id: id.into(),
                address: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 1),
                locator,
            }),
            created_ms: 0,
            host: host.map(str::to_owned),
        }
    }

    #[test]
    fn each_host_is_searched_on_its_own_engines() {
        let spec = baton_spec::parse_spec("web.yaml", FLEET).expect("valid spec");
        let sock = |h: &str| format!("unix:///srv/baton/{h}/podman.sock");
        let instances = [
            instance("a", Some("h0"), &sock("h0")),
            instance("b", Some("h1"), &sock("h1")),
            // A host since taken out of the spec, and an instance from when the
            // app ran on this machine.
            instance("c", Some("h2"), &sock("h2")),
            instance("d", None, "unix:///run/podman/podman.sock"),
        ];
        let scope = discover_scope(&spec, &instances, None);
        assert_eq!(
            scope.container_endpoints,
            ["unix:///run/podman/podman.sock"]
        );
        // The spec's endpoint as each node resolves it (none: its default), and
        // what the host's own instances run on; never another host's.
        let host = |name: &str, endpoints: &[&str]| HostScope {
            name: name.into(),
            container_endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
        };
        assert_eq!(
            scope.hosts,
            [
                host("h0", &["", &sock("h0")]),
                host("h1", &["", &sock("h1")]),
                host("h2", &[&sock("h2")]),
            ]
        );
    }

    #[test]
    fn an_app_on_this_machine_is_searched_here_only() {
        let spec = baton_spec::parse_spec("web.yaml", FLEET.split("hosts:").next().unwrap())
            .expect("valid spec");
        let scope = discover_scope(&spec, &[], Some("unix:///run/x.sock".into()));
        assert_eq!(scope.container_endpoints, ["unix:///run/x.sock"]);
        assert!(scope.hosts.is_empty());
    }
}
