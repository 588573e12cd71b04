//! The control plane's driver when apps may run on other hosts: instances of
//! this machine go to the local [`Drivers`], instances of a host to that
//! host's node, their handles wrapped as [`Locator::Remote`].
//!
//! What a host that does not answer cannot tell is never guessed: its
//! instances' status stays "running" (readiness probes still say whether they
//! serve), a start or stop waits for the host to come back, and a discovery
//! that cannot ask every host of the app fails (a partial answer would make
//! that host's instances look gone, and the control plane start duplicates).
//!
//! A container app's engine and images are the host's: its endpoint goes to the
//! node as the spec writes it (empty for the host's default) and the node
//! resolves it; an image is resolved by the host's node, on the host's engine.

use std::sync::Arc;
use std::time::Duration;

use baton_driver::{
    BoxFuture, DriverError, Drivers, DynDriver, FoundInstance, ImageInfo, InstanceHandle,
    InstanceStatus, LaunchSpec, Locator, PullPolicy, ResourceSample, Scope, StopOutcome,
};

use super::{Fleet, HostLink};
use crate::node::NodeError;

/// How long a discovery, or an image resolution for a deploy, waits for an
/// unreachable host (a failed one is retried).
const HOST_WAIT: Duration = Duration::from_secs(30);
/// How long a start or a stop waits for its host to answer again: the rollout
/// is paused meanwhile, and a stop given up on would leave an orphan there.
const START_STOP_WAIT: Duration = Duration::from_secs(600);

pub struct FleetDriver {
    local: Drivers,
    fleet: Arc<Fleet>,
}

impl FleetDriver {
    pub fn new(local: Drivers, fleet: Arc<Fleet>) -> Self {
        FleetDriver { local, fleet }
    }

    fn link(&self, host: &str) -> Result<Arc<HostLink>, DriverError> {
        self.fleet.host(host).ok_or_else(|| DriverError::Remote {
            host: host.to_owned(),
            reason: "no such host in any app's spec".into(),
        })
    }
}

/// A remote handle split into its host and the handle its node knows.
fn split(handle: &InstanceHandle) -> Option<(&str, InstanceHandle)> {
    match &handle.locator {
        Locator::Remote { host, locator } => Some((
            host,
            InstanceHandle {
                instance_id: handle.instance_id.clone(),
                address: handle.address,
                locator: (**locator).clone(),
            },
        )),
        _ => None,
    }
}

fn wrap(host: &str, handle: InstanceHandle) -> InstanceHandle {
    InstanceHandle {
        locator: Locator::Remote {
            host: host.to_owned(),
            locator: Box::new(handle.locator),
        },
        ..handle
    }
}

fn remote_error(host: &str, e: impl std::fmt::Display) -> DriverError {
    DriverError::Remote {
        host: host.to_owned(),
        reason: e.to_string(),
    }
}

impl FleetDriver {
    async fn start_remote(
        &self,
        host: &str,
        spec: &LaunchSpec,
    ) -> Result<InstanceHandle, DriverError> {
        let link = self.link(host)?;
        let mut spec = spec.clone();
        spec.node = None;
        // A start whose answer was lost is retried: the node answers with the
        // instance it already started under this id.
        loop {
            if !link.reachable_within(START_STOP_WAIT).await {
                return Err(remote_error(host, "does not answer"));
            }
            match link.node.start(&spec).await {
                Ok(handle) => return Ok(wrap(host, handle)),
                Err(NodeError::Unreachable(e)) => {
                    tracing::warn!(%host, instance = %spec.instance_id, error = %e, "host stopped answering during a start; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(NodeError::Refused(e)) => return Err(remote_error(host, e)),
            }
        }
    }

    async fn stop_remote(
        &self,
        host: &str,
        handle: &InstanceHandle,
        grace: Duration,
    ) -> Result<StopOutcome, DriverError> {
        let link = self.link(host)?;
        loop {
            if !link.reachable_within(HOST_WAIT).await {
                return Err(remote_error(
                    host,
                    "does not answer; the instance may still run",
                ));
            }
            match link.node.stop(handle, grace).await {
                Ok(outcome) => return Ok(outcome),
                Err(NodeError::Unreachable(_)) => {
                    tokio::time::sleep(Duration::from_millis(500)).await
                }
                Err(NodeError::Refused(e)) => return Err(remote_error(host, e)),
            }
        }
    }

    async fn discover_all(&self, scope: &Scope) -> Result<Vec<FoundInstance>, DriverError> {
        let mut found = self.local.discover(scope).await?;
        for host in &scope.hosts {
            let name = &host.name;
            let link = self.link(name)?;
            if !link.reachable_within(HOST_WAIT).await {
                return Err(remote_error(
                    name,
                    "does not answer, so which instances run there is unknown",
                ));
            }
            let on_host = link
                .node
                .discover(&scope.app, &host.container_endpoints)
                .await
                .map_err(|e| remote_error(name, e))?;
            found.extend(on_host.into_iter().map(|f| FoundInstance {
                locator: Locator::Remote {
                    host: name.clone(),
                    locator: Box::new(f.locator),
                },
                ..f
            }));
        }
        Ok(found)
    }

    async fn resolve_image_remote(
        &self,
        host: &str,
        endpoint: &str,
        image: &str,
        pull: PullPolicy,
    ) -> Result<ImageInfo, DriverError> {
        let link = self.link(host)?;
        // A deploy waits for this (its controller does nothing else meanwhile):
        // a lost answer is asked again, but not past HOST_WAIT.
        let deadline = tokio::time::Instant::now() + HOST_WAIT;
        loop {
            if !link.reachable_within(HOST_WAIT).await {
                return Err(remote_error(
                    host,
                    format!(
                        "does not answer (waited {HOST_WAIT:?}), so what {image} is there is unknown"
                    ),
                ));
            }
            match link.node.resolve_image(endpoint, image, pull).await {
                Ok(info) => return Ok(info),
                Err(NodeError::Unreachable(e)) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!(%host, %image, error = %e, "host stopped answering while resolving an image; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(NodeError::Unreachable(e)) => {
                    return Err(remote_error(
                        host,
                        format!("stopped answering while resolving {image}: {e}"),
                    ));
                }
                Err(NodeError::Refused(e)) => return Err(remote_error(host, e)),
            }
        }
    }
}

impl DynDriver for FleetDriver {
    fn start<'a>(
        &'a self,
        spec: &'a LaunchSpec,
    ) -> BoxFuture<'a, Result<InstanceHandle, DriverError>> {
        Box::pin(async move {
            match &spec.node {
                Some(host) => self.start_remote(host, spec).await,
                None => DynDriver::start(&self.local, spec).await,
            }
        })
    }

    fn status<'a>(&'a self, handle: &'a InstanceHandle) -> BoxFuture<'a, InstanceStatus> {
        Box::pin(async move {
            let Some((host, inner)) = split(handle) else {
                return DynDriver::status(&self.local, handle).await;
            };
            let Ok(link) = self.link(host) else {
                return InstanceStatus::Running;
            };
            // Unknown while the host does not answer: not taken for an exit.
            link.node
                .status(&inner)
                .await
                .unwrap_or(InstanceStatus::Running)
        })
    }

    fn stop<'a>(
        &'a self,
        handle: &'a InstanceHandle,
        grace: Duration,
    ) -> BoxFuture<'a, Result<StopOutcome, DriverError>> {
        Box::pin(async move {
            match split(handle) {
                Some((host, inner)) => self.stop_remote(host, &inner, grace).await,
                None => DynDriver::stop(&self.local, handle, grace).await,
            }
        })
    }

    fn discover<'a>(
        &'a self,
        scope: &'a Scope,
    ) -> BoxFuture<'a, Result<Vec<FoundInstance>, DriverError>> {
        Box::pin(self.discover_all(scope))
    }

    fn sample<'a>(&'a self, handle: &'a InstanceHandle) -> BoxFuture<'a, Option<ResourceSample>> {
        Box::pin(async move {
            let Some((host, inner)) = split(handle) else {
                return DynDriver::sample(&self.local, handle).await;
            };
            self.link(host).ok()?.node.sample(&inner).await.ok()?
        })
    }

    fn resolve_image<'a>(
        &'a self,
        node: Option<&'a str>,
        endpoint: &'a str,
        image: &'a str,
        pull: PullPolicy,
    ) -> BoxFuture<'a, Result<ImageInfo, DriverError>> {
        match node {
            Some(host) => Box::pin(self.resolve_image_remote(host, endpoint, image, pull)),
            None => DynDriver::resolve_image(&self.local, None, endpoint, image, pull),
        }
    }
}
