//! Container apps: from the spec's `driver.container` to what the container driver
//! needs (image reference, API endpoint, pull policy).

use baton_spec::{ContainerDriverSpec, TemplateVars};

/// The image reference of `version`, from the spec's template.
pub fn image_of(spec: &ContainerDriverSpec, app: &str, version: &str) -> String {
    let vars = TemplateVars {
        version,
        port: 0,
        app,
        instance: "",
        baton: "",
    };
    baton_spec::render_template(&spec.image, &vars)
}

/// The engine's API endpoint: the spec's, else `DOCKER_HOST`, else the usual sockets.
pub fn endpoint_of(spec: &ContainerDriverSpec) -> anyhow::Result<String> {
    match &spec.endpoint {
        Some(e) => Ok(e.clone()),
        None => anyhow::bail!("no container engine endpoint: set driver.container.endpoint"),
    }
}

pub fn pull_policy(policy: baton_spec::PullPolicy) -> baton_driver::PullPolicy {
    match policy {
        baton_spec::PullPolicy::Never => baton_driver::PullPolicy::Never,
        baton_spec::PullPolicy::IfMissing => baton_driver::PullPolicy::IfMissing,
        baton_spec::PullPolicy::Always => baton_driver::PullPolicy::Always,
    }
}
