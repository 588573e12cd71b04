//! The control plane's one driver: processes go to the [`ProcessDriver`], containers to
//! a [`ContainerDriver`] for their endpoint.
//!
//! Why lazily connected: most apps run no containers, and a control plane must start
//! (and run its processes) while a container engine is down. An endpoint is connected at
//! its first use and the connection kept; a failed connect is not cached, so the next
//! call tries again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::container::{ContainerDriver, ImageInfo, normalize_endpoint};
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
            containers: Arc::default(),
        }
    }

    /// The driver of local processes.
    pub fn process(&self) -> &ProcessDriver {
        &self.process
    }

    /// The driver of `endpoint`, connecting to it on first use.
    pub async fn container(&self, endpoint: &str) -> Result<ContainerDriver, DriverError> {
        let endpoint = normalize_endpoint(endpoint);
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
            Target::Container(target) => self.container(&target.endpoint).await?.start(spec).await,
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
    /// its containers look gone, and the control plane start duplicates.
    async fn discover(&self, scope: &Scope) -> Result<Vec<FoundInstance>, DriverError> {
        let mut found = self.process.discover(scope).await?;
        let mut endpoints: Vec<String> = scope
            .container_endpoints
            .iter()
            .map(|e| normalize_endpoint(e))
            .collect();
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
