//! The container driver: each instance is a container on a Docker Engine API endpoint
//! (Docker itself, or Podman's compatible service), driven through `bollard`.
//!
//! Why labels: a container outlives the control plane that started it (the engine owns
//! it, not us), so every container carries `baton.owner`, `baton.app`, `baton.instance`
//! and friends, and a restarted control plane finds its predecessor's containers by
//! listing them ([`Driver::discover`]).
//!
//! Why no restart policy: baton restarts crashed instances itself. An engine that
//! restarted them behind its back would hide the crash and its exit code from the
//! controller, and would fight it over which instances should exist.
//!
//! Why the driver reads cgroups itself: see [`ContainerDriver::status`] on OOM kills.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as ApiError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerState, ContainerStateStatusEnum,
    HostConfig, ImageInspect, PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, InspectContainerOptions, ListContainersOptions,
    LogsOptions, RemoveContainerOptions, StatsOptions, StopContainerOptions,
};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::procfs::{self, MemoryCgroupDir};
use crate::{
    ContainerTarget, Driver, DriverError, ENV_APP, ENV_INSTANCE_ID, ENV_PORT, Exit, FoundInstance,
    InstanceHandle, InstanceStatus, LaunchSpec, Locator, PullPolicy, ResourceSample, Scope,
    StopOutcome, Target,
};

/// Label: the owner string of the control plane that started the container.
pub const LABEL_OWNER: &str = "baton.owner";
/// Label: the app's name.
pub const LABEL_APP: &str = "baton.app";
/// Label: the instance id.
pub const LABEL_INSTANCE: &str = "baton.instance";
/// Label: the app revision the instance runs.
pub const LABEL_REVISION: &str = "baton.revision";
/// Label: the version the instance runs.
pub const LABEL_VERSION: &str = "baton.version";
/// Label: the image reference as the user wrote it (the container is created from the
/// image id, which `docker ps` shows instead of a name).
pub const LABEL_IMAGE: &str = "baton.image";
/// Label: the pinned digest the container was created from, for discovery.
pub const LABEL_DIGEST: &str = "baton.digest";
/// Label: the instance's log file, so a restarted control plane follows the output of
/// the containers it adopts into the same file.
pub const LABEL_LOG: &str = "baton.log";

/// Where the engines put their API socket, most specific first.
const SYSTEM_SOCKETS: [&str; 2] = ["/run/podman/podman.sock", "/var/run/docker.sock"];

/// A memory-limited container SIGKILLed while its last observed usage was at least this
/// fraction of its limit counts as OOM-killed (see [`ContainerDriver::status`]).
const OOM_USAGE_FRACTION: f64 = 0.9;

/// Time a stop request may take beyond the grace period (the kill, the engine's own
/// bookkeeping) before the API call is abandoned.
const STOP_REQUEST_SLACK: Duration = Duration::from_secs(30);

/// What the engine says about an image, resolved for a deploy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// What to pin a deploy to (`sha256:...`): the registry manifest digest when the
    /// engine knows one for the reference's repository (it names the same image on every
    /// host and can be pulled), else the local image id.
    pub digest: String,
    /// The local image id (`sha256:...` of the image config): exactly what a container
    /// is created from.
    pub id: String,
    pub os: String,
    pub architecture: String,
    pub size_bytes: u64,
}

/// The API endpoint to use: `from_spec` when given, else `DOCKER_HOST`, else the first
/// API socket that exists among `/run/podman/podman.sock`, `/var/run/docker.sock` and
/// `$XDG_RUNTIME_DIR/podman/podman.sock` (rootless Podman). A bare path means a unix
/// socket.
pub fn resolve_endpoint(from_spec: Option<&str>) -> Result<String, DriverError> {
    let env = |name: &str| std::env::var(name).ok();
    resolve_endpoint_with(
        from_spec,
        env("DOCKER_HOST"),
        env("XDG_RUNTIME_DIR"),
        |p: &Path| p.exists(),
    )
}

fn resolve_endpoint_with(
    from_spec: Option<&str>,
    docker_host: Option<String>,
    xdg_runtime_dir: Option<String>,
    exists: impl Fn(&Path) -> bool,
) -> Result<String, DriverError> {
    let given = |v: &str| {
        Some(v.trim())
            .filter(|v| !v.is_empty())
            .map(normalize_endpoint)
    };
    if let Some(endpoint) = from_spec.and_then(given) {
        return Ok(endpoint);
    }
    if let Some(endpoint) = docker_host.as_deref().and_then(given) {
        return Ok(endpoint);
    }
    let mut candidates: Vec<String> = SYSTEM_SOCKETS.iter().map(|s| (*s).to_owned()).collect();
    if let Some(dir) = xdg_runtime_dir.filter(|d| !d.is_empty()) {
        candidates.push(format!("{dir}/podman/podman.sock"));
    }
    if let Some(socket) = candidates.iter().find(|c| exists(Path::new(c))) {
        return Ok(format!("unix://{socket}"));
    }
    Err(DriverError::Engine {
        endpoint: "(none found)".to_owned(),
        reason: format!(
            "no container engine endpoint: the spec sets none, DOCKER_HOST is not set, and \
             none of {} exists. Start the engine's API socket (`systemctl enable --now \
             podman.socket`, or `podman system service --time=0 &`, or start Docker), or \
             set `endpoint` in the spec or DOCKER_HOST (unix:///path/to/sock)",
            candidates.join(", ")
        ),
    })
}

/// `/run/x.sock` → `unix:///run/x.sock`; anything else unchanged.
pub fn normalize_endpoint(endpoint: &str) -> String {
    if endpoint.starts_with('/') {
        format!("unix://{endpoint}")
    } else {
        endpoint.to_owned()
    }
}

/// What the driver saw of one container while it ran: the memory cgroup facts that are
/// gone (or unreliable) once it exits.
#[derive(Debug, Default)]
struct Seen {
    /// The init pid the cgroup was found through.
    pid: u32,
    cgroup: Option<MemoryCgroupDir>,
    /// Highest `oom_kill` count read from its memory cgroup.
    oom_kills: u64,
    /// Memory charged to its cgroup at the last look.
    usage_bytes: Option<u64>,
    /// The status last reported, for when the engine cannot be asked.
    last_status: Option<InstanceStatus>,
    /// A task reads its cgroup every [`CGROUP_WATCH`] while it runs.
    watched: bool,
    /// A task appends its output to its log file.
    following: bool,
}

/// How often a running container's memory cgroup is read. The kernel's OOM kill
/// shows there (`oom_kill`) only until the engine removes the cgroup, moments after
/// the container died; an API status poll alone misses a container that leaks to
/// its limit within a second. A read is two small files, no API call.
const CGROUP_WATCH: Duration = Duration::from_millis(100);

/// Runs instances as containers on one API endpoint. Cheap to clone; clones share the
/// connection and what was seen of each container.
#[derive(Clone)]
pub struct ContainerDriver {
    docker: Docker,
    endpoint: String,
    owner: String,
    /// The engine runs on this machine (a unix socket), so the pids it reports are ours
    /// and its containers' cgroups can be read.
    local: bool,
    seen: Arc<Mutex<HashMap<String, Seen>>>,
}

impl fmt::Debug for ContainerDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContainerDriver")
            .field("endpoint", &self.endpoint)
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

impl ContainerDriver {
    /// Connects to the API at `endpoint` (`unix:///run/podman/podman.sock`,
    /// `tcp://host:2375`, or a bare socket path) and agrees on an API version. Containers
    /// it starts are marked with `owner`.
    pub async fn connect(endpoint: &str, owner: String) -> Result<Self, DriverError> {
        let endpoint = normalize_endpoint(endpoint);
        let unreachable = |e: ApiError| DriverError::Engine {
            endpoint: endpoint.clone(),
            reason: format!(
                "cannot reach the API ({}); is the engine running and its socket readable? \
                 (Podman: `systemctl enable --now podman.socket` or `podman system service \
                 --time=0 &`)",
                describe(&e)
            ),
        };
        let docker = Docker::connect_with_host(&endpoint).map_err(unreachable)?;
        // Podman's compatible API speaks an older version than bollard's default; asking
        // first keeps every request on a version the engine knows.
        let docker = docker.negotiate_version().await.map_err(unreachable)?;
        tracing::info!(endpoint, api_version = %docker.client_version(), "connected to container engine");
        Ok(ContainerDriver {
            local: endpoint.starts_with("unix://"),
            docker,
            endpoint,
            owner,
            seen: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// The endpoint this driver talks to, normalized.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The owner string every container is labelled with.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    fn seen(&self) -> MutexGuard<'_, HashMap<String, Seen>> {
        // Each update is a few field writes on one entry; a panicked holder cannot leave
        // it half-changed in a way that matters.
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn engine_error(&self, what: impl fmt::Display, e: &ApiError) -> DriverError {
        DriverError::Engine {
            endpoint: self.endpoint.clone(),
            reason: format!("{what}: {}", describe(e)),
        }
    }

    /// Resolves `image` under `pull`: under [`PullPolicy::Never`] it must be present,
    /// [`PullPolicy::IfMissing`] pulls it when absent, [`PullPolicy::Always`] pulls it.
    /// Used at deploy time to pin the digest, and in pre-flight checks. A pinned
    /// `repository@sha256:...` (what a rollback runs) is looked up as
    /// [`ContainerDriver::pinned_image`] does when starting it.
    pub async fn resolve_image(
        &self,
        image: &str,
        pull: PullPolicy,
    ) -> Result<ImageInfo, DriverError> {
        if let Some((repository, digest)) = image.split_once('@') {
            return self.pinned_image(repository, digest, pull).await;
        }
        if pull == PullPolicy::Always {
            self.pull(image, "`pull` is `always`, and pulling it")
                .await?;
        }
        match self.inspect_image(image).await? {
            Some(found) => return image_info(image, &found),
            None if pull == PullPolicy::Never => {
                return Err(DriverError::Image {
                    image: image.to_owned(),
                    reason: format!(
                        "does not exist on {} and `pull` is `never`: build it there, pull \
                         it (`podman pull {image}` / `docker pull {image}`), or set `pull` to \
                         `if_missing`",
                        self.endpoint
                    ),
                });
            }
            None => {}
        }
        // Absent and allowed to pull (or pulled by `Always` and still absent, which the
        // inspect below reports).
        if pull == PullPolicy::IfMissing {
            let what = format!("it does not exist on {}, and pulling it", self.endpoint);
            self.pull(image, &what).await?;
        }
        match self.inspect_image(image).await? {
            Some(found) => image_info(image, &found),
            None => Err(DriverError::Image {
                image: image.to_owned(),
                reason: format!("is still not on {} after pulling it", self.endpoint),
            }),
        }
    }

    /// The image a pinned digest names: the local image with that id, else
    /// `repository@digest` (present, or pulled when `pull` allows it).
    async fn pinned_image(
        &self,
        image: &str,
        digest: &str,
        pull: PullPolicy,
    ) -> Result<ImageInfo, DriverError> {
        let by_digest = format!("{}@{digest}", repository(image));
        let mut found = self.inspect_image(digest).await?;
        if found.is_none() {
            found = self.inspect_image(&by_digest).await?;
        }
        if found.is_none() && pull != PullPolicy::Never {
            let what = format!(
                "the pinned {by_digest} is not on {}, and pulling it",
                self.endpoint
            );
            self.pull(&by_digest, &what).await?;
            found = self.inspect_image(&by_digest).await?;
        }
        let Some(found) = found else {
            return Err(DriverError::Image {
                image: image.to_owned(),
                reason: format!(
                    "the pinned digest {digest} is not on {} (removed or pruned since the \
                     deploy?): deploy again to pin what {image} is now, or bring that image \
                     back",
                    self.endpoint
                ),
            });
        };
        let mut info = image_info(image, &found)?;
        info.digest = digest.to_owned();
        Ok(info)
    }

    /// The image, or `None` when the engine has none by that reference.
    async fn inspect_image(&self, reference: &str) -> Result<Option<ImageInspect>, DriverError> {
        match self.docker.inspect_image(reference).await {
            Ok(found) => Ok(Some(found)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(self.engine_error(format_args!("inspecting image {reference}"), &e)),
        }
    }

    /// Pulls `reference`; a failure is reported as "`what` failed: ...".
    async fn pull(&self, reference: &str, what: &str) -> Result<(), DriverError> {
        tracing::info!(endpoint = %self.endpoint, image = reference, "pulling image");
        // Without a tag the API pulls every tag of the repository.
        let (repo, tag) = split_reference(reference);
        let options = CreateImageOptions {
            from_image: Some(repo.to_owned()),
            tag: Some(tag.to_owned()),
            ..Default::default()
        };
        let failed = |reason: String| DriverError::Image {
            image: reference.to_owned(),
            reason: format!(
                "{what} failed: {reason}. Check the name and tag, the registry's \
                 reachability and credentials, or build the image on the engine and set \
                 `pull` to `never`"
            ),
        };
        let mut progress = self.docker.create_image(Some(options), None, None);
        while let Some(step) = progress.next().await {
            let step = step.map_err(|e| failed(describe(&e)))?;
            if let Some(message) = step.error_detail.and_then(|d| d.message) {
                return Err(failed(message));
            }
        }
        Ok(())
    }

    async fn inspect(&self, id: &str) -> Result<Option<ContainerInspectResponse>, DriverError> {
        match self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
        {
            Ok(found) => Ok(Some(found)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(self.engine_error(format_args!("inspecting container {id}"), &e)),
        }
    }

    /// Removes a container left behind under `name` by a start that crashed between
    /// create and record; refuses to touch one that is not this owner's `instance_id`.
    async fn remove_leftover(&self, name: &str, instance_id: &str) -> Result<(), DriverError> {
        let Some(old) = self.inspect(name).await? else {
            return Ok(());
        };
        let labels = old.config.as_ref().and_then(|c| c.labels.as_ref());
        let label = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
        if label(LABEL_OWNER) != Some(&self.owner) || label(LABEL_INSTANCE) != Some(instance_id) {
            return Err(DriverError::Engine {
                endpoint: self.endpoint.clone(),
                reason: format!(
                    "a container named {name} exists and is not instance {instance_id} of this \
                     control plane; remove or rename it"
                ),
            });
        }
        let id = old.id.unwrap_or_else(|| name.to_owned());
        tracing::warn!(endpoint = %self.endpoint, instance_id, container = %short(&id), "removing a leftover container of an earlier start");
        self.remove(&id).await
    }

    async fn remove(&self, id: &str) -> Result<(), DriverError> {
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        match self.docker.remove_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(self.engine_error(format_args!("removing container {id}"), &e)),
        }
    }

    async fn create_and_start(&self, spec: &LaunchSpec) -> Result<InstanceHandle, DriverError> {
        let Target::Container(target) = &spec.target else {
            return Err(DriverError::Unsupported(format!(
                "instance {} is not a container; the container driver cannot start it",
                spec.instance_id
            )));
        };
        if normalize_endpoint(&target.endpoint) != self.endpoint {
            return Err(DriverError::Unsupported(format!(
                "instance {} runs on {}, but this container driver talks to {}",
                spec.instance_id, target.endpoint, self.endpoint
            )));
        }
        // The log file first: a spec that cannot log fails before anything is created.
        let log = tokio::fs::File::from_std(crate::process::open_log(&spec.log_path).await?);
        let image = match &target.digest {
            Some(digest) => {
                self.pinned_image(&target.image, digest, target.pull)
                    .await?
            }
            None => self.resolve_image(&target.image, target.pull).await?,
        };
        let name = container_name(&spec.instance_id);
        self.remove_leftover(&name, &spec.instance_id).await?;

        let body = self.create_body(spec, target, &image);
        let options = CreateContainerOptions {
            name: Some(name.clone()),
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| self.engine_error(format_args!("creating container {name}"), &e))?;
        let id = created.id;
        if let Err(e) = self.docker.start_container(&id, None).await {
            // A created but never started container would only be in the way of the
            // next attempt (same name).
            let _ = self.remove(&id).await;
            return Err(self.engine_error(format_args!("starting container {name}"), &e));
        }
        self.follow_logs(&id, &spec.instance_id, log, None);
        if let Ok(Some(found)) = self.inspect(&id).await {
            let pid = found
                .state
                .and_then(|s| s.pid)
                .and_then(|p| u32::try_from(p).ok());
            self.watch_cgroup(&id, pid.unwrap_or(0));
        }

        let handle = InstanceHandle {
            instance_id: spec.instance_id.clone(),
            address: SocketAddr::new(spec.host, spec.port),
            locator: Locator::Container {
                id: id.clone(),
                endpoint: self.endpoint.clone(),
                digest: image.digest.clone(),
            },
        };
        tracing::info!(
            instance_id = %handle.instance_id,
            app = %spec.app,
            version = %spec.version,
            endpoint = %self.endpoint,
            container = %short(&id),
            image = %target.image,
            digest = %image.digest,
            address = %handle.address,
            "instance started"
        );
        Ok(handle)
    }

    fn create_body(
        &self,
        spec: &LaunchSpec,
        target: &ContainerTarget,
        image: &ImageInfo,
    ) -> ContainerCreateBody {
        // With host networking nothing is published: the app binds the router-facing
        // port itself.
        let listen_port = if target.host_network {
            spec.port
        } else {
            target.container_port
        };
        let mut env: Vec<String> = spec
            .env
            .iter()
            .filter(|(k, _)| ![ENV_INSTANCE_ID, ENV_APP, ENV_PORT].contains(&k.as_str()))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        env.push(format!("{ENV_PORT}={listen_port}"));
        env.push(format!("{ENV_INSTANCE_ID}={}", spec.instance_id));
        env.push(format!("{ENV_APP}={}", spec.app));

        // The user's labels first, so they cannot claim another owner or instance.
        let mut labels: HashMap<String, String> = target.labels.clone().into_iter().collect();
        for (key, value) in [
            (LABEL_OWNER, self.owner.clone()),
            (LABEL_APP, spec.app.clone()),
            (LABEL_INSTANCE, spec.instance_id.clone()),
            (LABEL_REVISION, spec.revision.to_string()),
            (LABEL_VERSION, spec.version.clone()),
            (LABEL_IMAGE, target.image.clone()),
            (LABEL_DIGEST, image.digest.clone()),
            (LABEL_LOG, spec.log_path.display().to_string()),
        ] {
            labels.insert(key.to_owned(), value);
        }

        let port_key = format!("{}/tcp", target.container_port);
        let memory = target.memory_bytes.and_then(|m| i64::try_from(m).ok());
        let host_config = HostConfig {
            // Swap limit = memory limit: no swap on top, so the limit is what the app
            // really gets (and what an OOM kill is measured against).
            memory,
            memory_swap: memory,
            nano_cpus: target.cpus.map(|c| (c * 1e9).round() as i64),
            readonly_rootfs: Some(target.read_only),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            }),
            network_mode: target.host_network.then(|| "host".to_owned()),
            port_bindings: (!target.host_network).then(|| {
                HashMap::from([(
                    port_key.clone(),
                    Some(vec![PortBinding {
                        host_ip: Some(spec.host.to_string()),
                        host_port: Some(spec.port.to_string()),
                    }]),
                )])
            }),
            ..Default::default()
        };
        ContainerCreateBody {
            image: Some(image.id.clone()),
            env: Some(env),
            entrypoint: target.entrypoint.clone(),
            cmd: target.command.clone(),
            user: target.user.clone(),
            working_dir: target.workdir.clone(),
            labels: Some(labels),
            exposed_ports: (!target.host_network).then(|| vec![port_key]),
            host_config: Some(host_config),
            ..Default::default()
        }
    }

    /// Appends the container's stdout and stderr to `log` until the container stops (the
    /// engine ends the stream) or the engine goes away.
    /// `since` (seconds since the epoch) skips what an earlier follower already wrote.
    fn follow_logs(
        &self,
        id: &str,
        instance_id: &str,
        mut log: tokio::fs::File,
        since: Option<i32>,
    ) {
        {
            let mut seen = self.seen();
            let entry = seen.entry(id.to_owned()).or_default();
            if entry.following {
                return;
            }
            entry.following = true;
        }
        let options = LogsOptions {
            follow: true,
            stdout: true,
            stderr: true,
            since: since.unwrap_or_default(),
            ..Default::default()
        };
        let mut stream = self.docker.logs(id, Some(options));
        let instance_id = instance_id.to_owned();
        let driver = self.clone();
        let id = id.to_owned();
        tokio::spawn(async move {
            while let Some(chunk) = stream.next().await {
                let written = match chunk {
                    Ok(output) => {
                        async {
                            log.write_all(&output.into_bytes()).await?;
                            log.flush().await
                        }
                        .await
                    }
                    Err(e) => {
                        tracing::warn!(instance_id, error = %describe(&e), "following container logs failed");
                        break;
                    }
                };
                if let Err(e) = written {
                    tracing::warn!(instance_id, error = %e, "writing container logs failed");
                    break;
                }
            }
            if let Some(entry) = driver.seen().get_mut(&id) {
                entry.following = false;
            }
        });
    }

    fn is_following(&self, id: &str) -> bool {
        self.seen().get(id).is_some_and(|e| e.following)
    }

    fn container_id<'h>(&self, handle: &'h InstanceHandle) -> Option<&'h str> {
        match &handle.locator {
            Locator::Container { id, endpoint, .. }
                if normalize_endpoint(endpoint) == self.endpoint =>
            {
                Some(id)
            }
            _ => None,
        }
    }

    fn not_mine(&self, handle: &InstanceHandle) -> DriverError {
        DriverError::Unsupported(format!(
            "instance {} runs as {}, not as a container on {}",
            handle.instance_id, handle.locator, self.endpoint
        ))
    }

    /// Reads the memory cgroup of a running container through its init pid and records
    /// what the driver will need after it exits. Only for a local engine, and only a
    /// cgroup whose path names the container (so a reused pid, or a pid of another pid
    /// namespace, is never mistaken for it).
    fn observe_cgroup(&self, id: &str, pid: u32) -> Option<procfs::MemoryCgroup> {
        if !self.local || pid == 0 {
            return None;
        }
        let mut seen = self.seen();
        let entry = seen.entry(id.to_owned()).or_default();
        if entry.pid != pid || entry.cgroup.is_none() {
            entry.pid = pid;
            entry.cgroup =
                procfs::memory_cgroup_dir(pid).filter(|d| d.path().to_string_lossy().contains(id));
        }
        let now = procfs::read_memory_cgroup(entry.cgroup.as_ref()?)?;
        entry.oom_kills = entry.oom_kills.max(now.oom_kills);
        entry.usage_bytes = now.usage_bytes.or(entry.usage_bytes);
        Some(now)
    }

    /// Reads the container's memory cgroup every [`CGROUP_WATCH`] until it is gone
    /// (the container exited and the engine removed it). One task per container.
    fn watch_cgroup(&self, id: &str, pid: u32) {
        if !self.local || pid == 0 {
            return;
        }
        {
            let mut seen = self.seen();
            let entry = seen.entry(id.to_owned()).or_default();
            if entry.watched {
                return;
            }
            entry.watched = true;
        }
        let driver = self.clone();
        let id = id.to_owned();
        tokio::spawn(async move {
            while driver.observe_cgroup(&id, pid).is_some() {
                tokio::time::sleep(CGROUP_WATCH).await;
            }
            if let Some(entry) = driver.seen().get_mut(&id) {
                entry.watched = false;
            }
        });
    }

    /// One last look at the cgroup of a container that just exited: the engine removes
    /// it moments after, but until then its `oom_kill` count tells the truth.
    fn last_look(&self, id: &str) -> (u64, Option<u64>) {
        let mut seen = self.seen();
        let Some(entry) = seen.get_mut(id) else {
            return (0, None);
        };
        if let Some(now) = entry.cgroup.as_ref().and_then(procfs::read_memory_cgroup) {
            entry.oom_kills = entry.oom_kills.max(now.oom_kills);
        }
        (entry.oom_kills, entry.usage_bytes)
    }

    fn last_status(&self, id: &str) -> Option<InstanceStatus> {
        self.seen().get(id).and_then(|s| s.last_status)
    }

    fn remember_status(&self, id: &str, status: InstanceStatus) {
        self.seen().entry(id.to_owned()).or_default().last_status = Some(status);
    }

    fn forget(&self, id: &str) {
        self.seen().remove(id);
    }

    /// The container's status now.
    ///
    /// OOM kills: the engine's `State.OOMKilled` is not reliable. Under cgroup v1 (as on
    /// this project's machines) Podman reports a container killed by its memory limit
    /// as exit 137 with `OOMKilled: false`. The kernel's own count is in the container's
    /// memory cgroup (`memory.oom_control`'s `oom_kill`), but the engine removes that
    /// cgroup as soon as the container exits. So every status and sample call reads the
    /// cgroup while the container runs (found through its init pid's
    /// `/proc/PID/cgroup`) and remembers the count and the memory in use; a container
    /// that then exits with 137 (SIGKILL) counts as OOM-killed when the engine says so,
    /// when the count went above zero, or when it had a memory limit and its last seen
    /// usage was at least 90% of it (a leak is usually caught between polls, but the kill
    /// itself rarely is). The last rule can misjudge a `kill -9` of a container whose
    /// page cache filled its limit; a true OOM kill reported as a plain SIGKILL would be
    /// worse, since the fix (raise the limit) is then hidden.
    ///
    /// An engine that cannot be asked (restarting, socket gone) is not an exit: the last
    /// status seen is reported (`Running` if none), and health checks see a dead
    /// instance anyway.
    pub async fn container_status(&self, handle: &InstanceHandle) -> InstanceStatus {
        let Some(id) = self.container_id(handle) else {
            return InstanceStatus::Gone;
        };
        let found = match self.inspect(id).await {
            Ok(found) => found,
            Err(e) => {
                let last = self.last_status(id).unwrap_or(InstanceStatus::Running);
                tracing::warn!(instance_id = %handle.instance_id, error = %e, ?last, "cannot ask the engine for the instance's status; reporting the last seen");
                return last;
            }
        };
        let Some(found) = found else {
            self.forget(id);
            return InstanceStatus::Gone;
        };
        let state = found.state.unwrap_or_default();
        let running = is_alive(&state);
        let status = if running {
            let pid = state.pid.and_then(|p| u32::try_from(p).ok()).unwrap_or(0);
            self.observe_cgroup(id, pid);
            self.watch_cgroup(id, pid);
            // Adopted after a control-plane restart: follow its output again.
            let log_path = found
                .config
                .as_ref()
                .and_then(|c| c.labels.as_ref())
                .and_then(|l| l.get(LABEL_LOG))
                .cloned();
            if let Some(path) = log_path
                && !self.is_following(id)
                && let Ok(log) = crate::process::open_log(std::path::Path::new(&path)).await
            {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| i32::try_from(d.as_secs()).unwrap_or(i32::MAX));
                self.follow_logs(
                    id,
                    &handle.instance_id,
                    tokio::fs::File::from_std(log),
                    Some(now),
                );
            }
            InstanceStatus::Running
        } else {
            let (oom_kills, usage_bytes) = self.last_look(id);
            let limit = found
                .host_config
                .and_then(|h| h.memory)
                .and_then(|m| u64::try_from(m).ok())
                .filter(|m| *m > 0);
            let exit = exit_of(
                state.exit_code.unwrap_or(0),
                state.oom_killed == Some(true),
                limit,
                oom_kills,
                usage_bytes,
            );
            if !matches!(self.last_status(id), Some(InstanceStatus::Exited(_))) {
                tracing::info!(
                    instance_id = %handle.instance_id,
                    container = %short(id),
                    code = ?exit.code,
                    signal = ?exit.signal,
                    oom_killed = exit.oom_killed,
                    engine_oom = ?state.oom_killed,
                    cgroup_oom_kills = oom_kills,
                    last_usage_bytes = ?usage_bytes,
                    "instance exited"
                );
            }
            InstanceStatus::Exited(exit)
        };
        self.remember_status(id, status);
        status
    }

    async fn stop_container(
        &self,
        handle: &InstanceHandle,
        grace: Duration,
    ) -> Result<StopOutcome, DriverError> {
        let Some(id) = self.container_id(handle) else {
            return Err(self.not_mine(handle));
        };
        let Some(found) = self.inspect(id).await? else {
            self.forget(id);
            return Ok(StopOutcome::AlreadyGone);
        };
        if !found.state.as_ref().is_some_and(is_alive) {
            self.remove(id).await?;
            self.forget(id);
            return Ok(StopOutcome::AlreadyGone);
        }
        tracing::info!(instance_id = %handle.instance_id, container = %short(id), ?grace, "stopping instance");
        // The engine sends the container's stop signal (the image's STOPSIGNAL, SIGTERM
        // by default), waits `t` seconds, then SIGKILLs: the same contract as the process
        // driver's, kept by the engine so it holds even if we die meanwhile.
        let seconds = i32::try_from(grace.as_secs() + u64::from(grace.subsec_nanos() > 0))
            .unwrap_or(i32::MAX);
        let options = StopContainerOptions {
            t: Some(seconds),
            signal: None,
        };
        let docker = self.docker.clone().with_timeout(grace + STOP_REQUEST_SLACK);
        match docker.stop_container(id, Some(options)).await {
            Ok(()) => {}
            // Vanished or exited by itself between the inspect and the stop.
            Err(e) if is_not_found(&e) => {
                self.forget(id);
                return Ok(StopOutcome::AlreadyGone);
            }
            Err(e) if status_code(&e) == Some(304) => {}
            Err(e) => {
                return Err(self.engine_error(format_args!("stopping container {id}"), &e));
            }
        }
        let code = self
            .inspect(id)
            .await?
            .and_then(|f| f.state)
            .and_then(|s| s.exit_code);
        let outcome = if code == Some(128 + 9) {
            tracing::warn!(instance_id = %handle.instance_id, container = %short(id), "grace period over, the engine killed the instance");
            StopOutcome::Killed
        } else {
            StopOutcome::Graceful
        };
        self.remove(id).await?;
        self.forget(id);
        tracing::info!(instance_id = %handle.instance_id, container = %short(id), ?outcome, exit_code = ?code, "instance stopped");
        Ok(outcome)
    }

    /// Every container (running or exited) of `app` labelled with this owner.
    pub async fn discover_app(&self, app: &str) -> Result<Vec<FoundInstance>, DriverError> {
        let filters = HashMap::from([(
            "label".to_owned(),
            vec![
                format!("{LABEL_OWNER}={}", self.owner),
                format!("{LABEL_APP}={app}"),
            ],
        )]);
        let options = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        let listed = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| self.engine_error("listing containers", &e))?;
        let mut found = Vec::new();
        for summary in listed {
            let Some(id) = summary.id else { continue };
            // Checked again here: engines differ in how they combine label filters.
            let labels = summary.labels.unwrap_or_default();
            if labels.get(LABEL_OWNER) != Some(&self.owner)
                || labels.get(LABEL_APP).map(String::as_str) != Some(app)
            {
                continue;
            }
            let Some(instance_id) = labels.get(LABEL_INSTANCE).cloned() else {
                continue;
            };
            // Removed between the list and the inspect: not found, which is right.
            let Some(details) = self.inspect(&id).await? else {
                continue;
            };
            let digest = labels
                .get(LABEL_DIGEST)
                .cloned()
                .or(details.image.clone())
                .unwrap_or_default();
            found.push(FoundInstance {
                instance_id,
                address: address_of(&details),
                locator: Locator::Container {
                    id,
                    endpoint: self.endpoint.clone(),
                    digest,
                },
            });
        }
        found.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
        Ok(found)
    }

    /// CPU time and memory from the engine's one-shot stats, with the memory cgroup's
    /// peak and OOM-kill count where the engine is local.
    pub async fn sample_container(&self, handle: &InstanceHandle) -> Option<ResourceSample> {
        let id = self.container_id(handle)?;
        // A local container whose cgroup is known is measured there: no API call (a
        // stats call per container every few seconds kept Podman a third busy with 50).
        if let Some(sample) = self.sample_from_cgroup(id) {
            return Some(sample);
        }
        let found = self.inspect(id).await.ok()??;
        let state = found.state.as_ref().filter(|s| is_alive(s))?;
        let pid = state.pid.and_then(|p| u32::try_from(p).ok()).unwrap_or(0);
        let cgroup = self.observe_cgroup(id, pid);
        let options = StatsOptions {
            stream: false,
            one_shot: true,
        };
        let stats = match self.docker.stats(id, Some(options)).next().await? {
            Ok(stats) => stats,
            Err(e) => {
                tracing::debug!(instance_id = %handle.instance_id, error = %describe(&e), "container stats failed");
                return None;
            }
        };
        let cpu_ns = stats
            .cpu_stats
            .and_then(|c| c.cpu_usage)
            .and_then(|u| u.total_usage)
            .unwrap_or(0);
        let memory = stats.memory_stats.unwrap_or_default();
        let limit = found
            .host_config
            .and_then(|h| h.memory)
            .and_then(|m| u64::try_from(m).ok())
            .filter(|m| *m > 0)
            .or(cgroup.and_then(|c| c.limit_bytes));
        let oom_kills = self.seen().get(id).map_or(0, |s| s.oom_kills);
        Some(ResourceSample {
            cpu_ms: cpu_ns / 1_000_000,
            memory_bytes: memory
                .usage
                .or(cgroup.and_then(|c| c.usage_bytes))
                .unwrap_or(0),
            memory_peak_bytes: memory.max_usage.or(cgroup.and_then(|c| c.peak_bytes)),
            memory_limit_bytes: limit,
            oom_kills,
        })
    }
}

impl ContainerDriver {
    /// The resource sample of a running local container, read from its cgroup.
    fn sample_from_cgroup(&self, id: &str) -> Option<ResourceSample> {
        let (dir, seen_oom_kills) = {
            let seen = self.seen();
            let entry = seen.get(id)?;
            (entry.cgroup.clone()?, entry.oom_kills)
        };
        let memory = procfs::read_memory_cgroup(&dir)?;
        let cpu_ns = procfs::cgroup_cpu_ns(&dir)?;
        Some(ResourceSample {
            cpu_ms: cpu_ns / 1_000_000,
            memory_bytes: memory.usage_bytes?,
            memory_peak_bytes: memory.peak_bytes,
            memory_limit_bytes: memory.limit_bytes,
            oom_kills: seen_oom_kills.max(memory.oom_kills),
        })
    }
}

impl Driver for ContainerDriver {
    async fn start(&self, spec: &LaunchSpec) -> Result<InstanceHandle, DriverError> {
        self.create_and_start(spec).await
    }

    async fn status(&self, handle: &InstanceHandle) -> InstanceStatus {
        self.container_status(handle).await
    }

    async fn stop(
        &self,
        handle: &InstanceHandle,
        grace: Duration,
    ) -> Result<StopOutcome, DriverError> {
        self.stop_container(handle, grace).await
    }

    async fn discover(&self, scope: &Scope) -> Result<Vec<FoundInstance>, DriverError> {
        self.discover_app(&scope.app).await
    }

    async fn sample(&self, handle: &InstanceHandle) -> Option<ResourceSample> {
        self.sample_container(handle).await
    }
}

/// How a container ended, from its exit code and what was seen while it ran (see
/// [`ContainerDriver::container_status`] for the OOM rules).
fn exit_of(
    code: i64,
    engine_says_oom: bool,
    memory_limit: Option<u64>,
    oom_kills: u64,
    last_usage: Option<u64>,
) -> Exit {
    let code = i32::try_from(code).unwrap_or(i32::MAX);
    // Runtimes report death by signal N as 128 + N.
    let signal = (129..=128 + 64).contains(&code).then(|| code - 128);
    let near_limit = match (memory_limit, last_usage) {
        (Some(limit), Some(usage)) => usage as f64 >= limit as f64 * OOM_USAGE_FRACTION,
        _ => false,
    };
    let oom_killed = engine_says_oom || (signal == Some(9) && (oom_kills > 0 || near_limit));
    Exit {
        code: Some(code),
        signal,
        oom_killed,
        memory_limit,
    }
}

/// The container's processes still run (stopping, paused and restarting included).
fn is_alive(state: &ContainerState) -> bool {
    // "stopping": Podman's state while the stop signal's grace runs.
    state.running == Some(true)
        || matches!(
            state.status,
            Some(
                ContainerStateStatusEnum::RUNNING
                    | ContainerStateStatusEnum::PAUSED
                    | ContainerStateStatusEnum::RESTARTING
                    | ContainerStateStatusEnum::STOPPING
            )
        )
}

/// The address the router reaches a container at: its published port, or `PORT` in its
/// environment under host networking.
fn address_of(details: &ContainerInspectResponse) -> Option<SocketAddr> {
    let host = details.host_config.as_ref()?;
    if host.network_mode.as_deref() == Some("host") {
        let env = details.config.as_ref()?.env.as_ref()?;
        let port = env
            .iter()
            .find_map(|e| e.strip_prefix("PORT="))?
            .parse()
            .ok()?;
        return Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    let binding = host
        .port_bindings
        .as_ref()?
        .iter()
        .filter(|(key, _)| key.ends_with("/tcp"))
        .find_map(|(_, b)| b.as_ref()?.first().cloned())?;
    let port: u16 = binding.host_port?.parse().ok()?;
    let ip = binding
        .host_ip
        .and_then(|ip| ip.parse::<IpAddr>().ok())
        .filter(|ip| !ip.is_unspecified())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    Some(SocketAddr::new(ip, port))
}

fn image_info(reference: &str, found: &ImageInspect) -> Result<ImageInfo, DriverError> {
    let Some(id) = found.id.clone() else {
        return Err(DriverError::Image {
            image: reference.to_owned(),
            reason: "the engine reports it without an id".to_owned(),
        });
    };
    let digest = repo_digest(found.repo_digests.as_deref().unwrap_or_default(), reference)
        .unwrap_or_else(|| id.clone());
    Ok(ImageInfo {
        digest,
        id,
        os: found.os.clone().unwrap_or_default(),
        architecture: found.architecture.clone().unwrap_or_default(),
        size_bytes: found.size.and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
    })
}

/// The `sha256:...` of the repo digest (`repo@sha256:...`) that belongs to the
/// reference's repository (`app` matches `docker.io/library/app`), else of the first.
fn repo_digest(repo_digests: &[String], reference: &str) -> Option<String> {
    let wanted = repository(reference);
    let split = |d: &String| d.split_once('@').map(|(r, h)| (r.to_owned(), h.to_owned()));
    let all: Vec<(String, String)> = repo_digests.iter().filter_map(split).collect();
    all.iter()
        .find(|(repo, _)| repo == wanted || repo.ends_with(&format!("/{wanted}")))
        .or(all.first())
        .map(|(_, digest)| digest.clone())
}

/// `host:5000/team/app:v2@sha256:...` → `host:5000/team/app`.
fn repository(reference: &str) -> &str {
    let (name, _) = split_reference(reference);
    name
}

/// A reference's repository and its tag or digest (`latest` when it has neither).
fn split_reference(reference: &str) -> (&str, &str) {
    if let Some((name, digest)) = reference.split_once('@') {
        return (name, digest);
    }
    // A ':' after the last '/' starts the tag; one before it is a registry's port.
    let last_slash = reference.rfind('/').map_or(0, |i| i + 1);
    match reference[last_slash..].rfind(':') {
        Some(i) => (
            &reference[..last_slash + i],
            &reference[last_slash + i + 1..],
        ),
        None => (reference, "latest"),
    }
}

/// `baton-{instance_id}`, with characters engines refuse in names replaced by `-`.
pub fn container_name(instance_id: &str) -> String {
    let safe: String = instance_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("baton-{safe}")
}

fn short(id: &str) -> &str {
    baton_engine::short_id(id)
}

fn status_code(e: &ApiError) -> Option<u16> {
    match e {
        ApiError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

fn is_not_found(e: &ApiError) -> bool {
    status_code(e) == Some(404)
}

/// The engine's own words for a refusal, else the client error.
fn describe(e: &ApiError) -> String {
    match e {
        ApiError::DockerResponseServerError {
            status_code,
            message,
        } => format!("{} (HTTP {status_code})", message.trim()),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_order_spec_then_docker_host_then_sockets() {
        let none = |_: &Path| false;
        assert_eq!(
            resolve_endpoint_with(Some("/tmp/x.sock"), Some("tcp://h:1".into()), None, none)
                .unwrap(),
            "unix:///tmp/x.sock"
        );
        assert_eq!(
            resolve_endpoint_with(Some(" "), Some("tcp://h:1".into()), None, none).unwrap(),
            "tcp://h:1"
        );
        let only_rootless = |p: &Path| p == Path::new("/run/user/7/podman/podman.sock");
        assert_eq!(
            resolve_endpoint_with(None, None, Some("/run/user/7".into()), only_rootless).unwrap(),
            "unix:///run/user/7/podman/podman.sock"
        );
        let both = |p: &Path| p.starts_with("/var/run") || p.starts_with("/run/user");
        assert_eq!(
            resolve_endpoint_with(None, None, Some("/run/user/7".into()), both).unwrap(),
            "unix:///var/run/docker.sock"
        );
    }

    #[test]
    fn missing_endpoint_says_what_was_tried_and_how_to_fix() {
        let err = resolve_endpoint_with(None, None, Some("/run/user/7".into()), |_: &Path| false)
            .unwrap_err()
            .to_string();
        for needle in [
            "DOCKER_HOST",
            "/run/podman/podman.sock",
            "/var/run/docker.sock",
            "/run/user/7/podman/podman.sock",
            "podman system service",
        ] {
            assert!(err.contains(needle), "{needle:?} missing from: {err}");
        }
    }

    #[test]
    fn references_split_into_repository_and_tag() {
        assert_eq!(split_reference("app"), ("app", "latest"));
        assert_eq!(split_reference("app:v2"), ("app", "v2"));
        assert_eq!(
            split_reference("host:5000/team/app"),
            ("host:5000/team/app", "latest")
        );
        assert_eq!(
            split_reference("host:5000/team/app:v2"),
            ("host:5000/team/app", "v2")
        );
        assert_eq!(
            split_reference("app:v2@sha256:abc"),
            ("app:v2", "sha256:abc")
        );
        assert_eq!(repository("localhost/sample:a"), "localhost/sample");
    }

    #[test]
    fn repo_digest_prefers_the_references_repository() {
        let digests = vec![
            "other/x@sha256:111".to_owned(),
            "docker.io/library/app@sha256:222".to_owned(),
        ];
        assert_eq!(
            repo_digest(&digests, "app:v1").as_deref(),
            Some("sha256:222")
        );
        assert_eq!(repo_digest(&digests, "zzz").as_deref(), Some("sha256:111"));
        assert_eq!(repo_digest(&[], "app"), None);
    }

    #[test]
    fn names_are_safe_for_engines() {
        assert_eq!(container_name("web-3"), "baton-web-3");
        assert_eq!(container_name("web/3 x"), "baton-web-3-x");
    }

    #[test]
    fn exits_137_count_as_oom_only_with_evidence() {
        let mib = 1 << 20;
        // Plain kill: no limit, no evidence.
        let e = exit_of(137, false, None, 0, None);
        assert_eq!((e.signal, e.oom_killed), (Some(9), false));
        // The kernel's count went up.
        assert!(exit_of(137, false, Some(64 * mib), 1, Some(mib)).oom_killed);
        // The last usage seen was close to the limit.
        assert!(exit_of(137, false, Some(64 * mib), 0, Some(60 * mib)).oom_killed);
        assert!(!exit_of(137, false, Some(64 * mib), 0, Some(30 * mib)).oom_killed);
        // A clean exit is never an OOM kill, unless the engine says so.
        assert!(!exit_of(0, false, Some(64 * mib), 1, Some(64 * mib)).oom_killed);
        assert!(exit_of(1, true, None, 0, None).oom_killed);
        let e = exit_of(3, false, None, 0, None);
        assert_eq!((e.code, e.signal), (Some(3), None));
        assert_eq!(exit_of(143, false, None, 0, None).signal, Some(15));
    }
}
