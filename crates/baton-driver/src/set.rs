//! The control plane's one driver: processes go to the [`ProcessDriver`], containers to
//! a [`ContainerDriver`] for their endpoint.
//!
//! Why lazily connected: most apps run no containers, and a control plane must start
//! (and run its processes) while a container engine is down. An endpoint is connected at
//! its first use and the connection kept; a failed connect is not cached, so the next
//! call tries again.
//!
//! An empty endpoint means "this machine's default engine" and is looked up here, where
//! the instance runs: that is how a fleet's control plane leaves the choice of engine to
//! each host's node.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::container::{ContainerDriver, ImageInfo, resolve_endpoint};
use crate::{
    Driver, DriverError, FoundInstance, InstanceHandle, InstanceStatus, LaunchSpec, Locator,
    ProcessDriver, PullPolicy, ResourceSample, Scope, StopOutcome, Target,
};

/// Dispatches each instance to the driver of its kind. Cheap to clone; clones share the
/// process table and the engine connections.
#[derive(Debug, Clone)]
pub struct Drivers {
    process: ProcessDriver,
    owner: String,
    /// The engine socket an empty endpoint means first, when it exists (a node's
    /// `DIR/podman.sock`).
    default_socket: Option<PathBuf>,
    /// Connected engines, keyed by normalized endpoint.
    containers: Arc<Mutex<HashMap<String, ContainerDriver>>>,
}

impl Drivers {
    /// Drivers whose instances are marked with `owner` (the canonical data-dir path of
    /// this control plane).
    pub fn new(owner: String) -> Self {
        Drivers {
            process: ProcessDriver::new(owner.clone()),
            owner,
            default_socket: None,
            containers: Arc::default(),
        }
    }

    /// An empty endpoint means `socket` when it exists, before the usual lookup.
    pub fn with_default_socket(mut self, socket: PathBuf) -> Self {
        self.default_socket = Some(socket);
        self
    }

    /// The endpoint `given` means here: itself (normalized) when set; when empty, the
    /// default socket when it exists, else `DOCKER_HOST`, else the usual sockets (see
    /// [`resolve_endpoint`]).
    pub fn endpoint(&self, given: &str) -> Result<String, DriverError> {
        if given.trim().is_empty()
            && let Some(socket) = &self.default_socket
            && socket.exists()
        {
            return Ok(format!("unix://{}", socket.display()));
        }
        resolve_endpoint(Some(given))
    }

    /// The driver of local processes.
    pub fn process(&self) -> &ProcessDriver {
        &self.process
    }

    /// The driver of `endpoint` (empty: the default, see [`Drivers::endpoint`]),
    /// connecting to it on first use.
    pub async fn container(&self, endpoint: &str) -> Result<ContainerDriver, DriverError> {
        let endpoint = self.endpoint(endpoint)?;
        if let Some(driver) = self.cached(&endpoint) {
            return Ok(driver);
        }
        let driver = ContainerDriver::connect(&endpoint, self.owner.clone()).await?;
        // Two first uses may race to connect; the first stored wins so that every caller
        // shares one record of what was seen of each container.
        let mut containers = self.containers.lock().unwrap_or_else(|e| e.into_inner());
        Ok(containers.entry(endpoint).or_insert(driver).clone())
    }

    fn cached(&self, endpoint: &str) -> Option<ContainerDriver> {
        let containers = self.containers.lock().unwrap_or_else(|e| e.into_inner());
        containers.get(endpoint).cloned()
    }

    /// Resolves `image` on `endpoint` under `pull` (see [`ContainerDriver::resolve_image`]):
    /// the deploy pins [`ImageInfo::digest`], pre-flight reports a missing image.
    pub async fn resolve_image(
        &self,
        endpoint: &str,
        image: &str,
        pull: PullPolicy,
    ) -> Result<ImageInfo, DriverError> {
        self.container(endpoint)
            .await?
            .resolve_image(image, pull)
            .await
    }
}

fn endpoint_of(handle: &InstanceHandle) -> Option<&str> {
    match handle.locator.local() {
        Locator::Container { endpoint, .. } => Some(endpoint),
        _ => None,
    }
}

impl Driver for Drivers {
    async fn start(&self, spec: &LaunchSpec) -> Result<InstanceHandle, DriverError> {
        match &spec.target {
            Target::Process(_) => self.process.start(spec).await,
            Target::Container(target) => {
                // The endpoint as resolved here goes with the spec (and so into the
                // instance's handle): an empty one names no engine by itself.
                let endpoint = self.endpoint(&target.endpoint)?;
                let driver = self.container(&endpoint).await?;
                if target.endpoint == endpoint {
                    return driver.start(spec).await;
                }
                let mut spec = spec.clone();
                if let Target::Container(target) = &mut spec.target {
                    target.endpoint = endpoint;
                }
                driver.start(&spec).await
            }
        }
    }

    async fn status(&self, handle: &InstanceHandle) -> InstanceStatus {
        let Some(endpoint) = endpoint_of(handle) else {
            return self.process.status(handle).await;
        };
        match self.container(endpoint).await {
            Ok(driver) => driver.status(handle).await,
            // An engine that cannot be reached says nothing about its containers, which
            // usually keep running; health checks tell whether they serve.
            Err(e) => {
                tracing::warn!(instance_id = %handle.instance_id, error = %e, "cannot reach the instance's engine; assuming it still runs");
                InstanceStatus::Running
            }
        }
    }

    async fn stop(
        &self,
        handle: &InstanceHandle,
        grace: Duration,
    ) -> Result<StopOutcome, DriverError> {
        match endpoint_of(handle) {
            None => self.process.stop(handle, grace).await,
            Some(endpoint) => self.container(endpoint).await?.stop(handle, grace).await,
        }
    }

    /// The app's processes, then its containers on each endpoint in the scope. An
    /// endpoint that cannot be listed fails the whole call: a partial answer would make
    /// its containers look gone, and the control plane start duplicates. An empty
    /// endpoint on a machine with no engine at all is passed over, as the control plane
    /// passes over a spec's engine it cannot find: nothing can run there.
    async fn discover(&self, scope: &Scope) -> Result<Vec<FoundInstance>, DriverError> {
        let mut found = self.process.discover(scope).await?;
        let mut endpoints = Vec::new();
        for given in &scope.container_endpoints {
            match self.endpoint(given) {
                Ok(endpoint) => endpoints.push(endpoint),
                Err(e) if given.trim().is_empty() => {
                    tracing::debug!(error = %e, "no default container engine here; not looking for containers");
                }
                Err(e) => return Err(e),
            }
        }
        endpoints.sort();
        endpoints.dedup();
        for endpoint in endpoints {
            found.extend(self.container(&endpoint).await?.discover(scope).await?);
        }
        Ok(found)
    }

    async fn sample(&self, handle: &InstanceHandle) -> Option<ResourceSample> {
        match endpoint_of(handle) {
            None => self.process.sample(handle).await,
            Some(endpoint) => self.container(endpoint).await.ok()?.sample(handle).await,
        }
    }

    async fn resolve_image(
        &self,
        endpoint: &str,
        image: &str,
        pull: PullPolicy,
    ) -> Result<ImageInfo, DriverError> {
        Drivers::resolve_image(self, endpoint, image, pull).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_endpoint_is_the_default_socket_when_it_exists() {
        let dir = std::env::temp_dir().join(format!("baton-set-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("podman.sock");
        let drivers = Drivers::new("/owner".into()).with_default_socket(socket.clone());
        // Given: itself, whatever the default.
        assert_eq!(
            drivers.endpoint("/run/x.sock").unwrap(),
            "unix:///run/x.sock"
        );
        assert_eq!(drivers.endpoint("tcp://h:2375").unwrap(), "tcp://h:2375");
        // Not there yet: the machine's usual lookup, whatever it finds.
        let usual = resolve_endpoint(None).ok();
        assert_eq!(drivers.endpoint("").ok(), usual);
        std::fs::write(&socket, "").unwrap();
        let want = format!("unix://{}", socket.display());
        assert_eq!(drivers.endpoint("").unwrap(), want);
        assert_eq!(drivers.endpoint("  ").unwrap(), want);
        // A control plane's drivers have no default socket.
        assert_eq!(Drivers::new("/owner".into()).endpoint("").ok(), usual);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
