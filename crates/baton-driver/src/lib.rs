//! baton-driver: start, stop and inspect the instances of an app.
//!
//! Every way of running instances (local processes, SSH hosts, containers, Kubernetes)
//! implements one [`Driver`] trait. The types here say *what* to run ([`LaunchSpec`]) and
//! *which* instance is meant ([`InstanceHandle`]); how is up to the driver.
//!
//! [`ProcessDriver`] is the default: it runs each instance as a local process in its own
//! process group, marked with the control plane's owner string so that a restarted
//! control plane can find (and adopt or stop) instances started by its predecessor.
//! [`ContainerDriver`] runs instances as containers through the Docker Engine API (Docker
//! or Podman), and [`Drivers`] dispatches each instance to the driver of its kind.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod container;
mod process;
mod procfs;
mod set;

pub use container::{
    ContainerDriver, ImageInfo, LABEL_APP, LABEL_DIGEST, LABEL_IMAGE, LABEL_INSTANCE, LABEL_LOG,
    LABEL_OWNER, LABEL_REVISION, LABEL_VERSION, container_name, normalize_endpoint,
    resolve_endpoint,
};
pub use process::ProcessDriver;
pub use set::Drivers;

/// Environment variable carrying the instance id to every instance.
pub const ENV_INSTANCE_ID: &str = "BATON_INSTANCE_ID";
/// Environment variable carrying the app's name to every instance.
pub const ENV_APP: &str = "BATON_APP";
/// Environment variable carrying the owner (the control plane's canonical data dir).
pub const ENV_OWNER: &str = "BATON_OWNER";
/// Environment variable carrying the port the instance must listen on.
pub const ENV_PORT: &str = "PORT";

pub use baton_engine::{InstanceHandle, Locator};

/// Everything a driver needs to start one instance. Templates are already rendered.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LaunchSpec {
    /// Unique id of this instance (stable across control-plane restarts).
    pub instance_id: String,
    pub app: String,
    pub version: String,
    /// The app revision the instance runs (labels containers; shown by discovery).
    pub revision: u32,
    /// Extra environment, on top of the driver's own.
    pub env: BTreeMap<String, String>,
    /// Address the router reaches the instance at (127.0.0.1 for local instances).
    pub host: IpAddr,
    /// Port on `host` the router reaches the instance at. A process must listen on it
    /// (it gets it as `PORT`); a container's port is published on it.
    pub port: u16,
    /// File that receives the instance's stdout and stderr (appended).
    pub log_path: PathBuf,
    /// What to run: a process or a container.
    pub target: Target,
    /// The host whose node runs it, for an app on several hosts; `None`: this machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// What kind of instance to start, with that kind's settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Process(ProcessTarget),
    Container(ContainerTarget),
}

/// A local process.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProcessTarget {
    /// Program and arguments; `argv[0]` is the executable (looked up in `PATH`).
    pub argv: Vec<String>,
    /// Working directory; the control plane's own if `None`.
    pub workdir: Option<PathBuf>,
}

/// A container, created through the Docker Engine API (Docker or Podman).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ContainerTarget {
    /// The API endpoint (`unix:///run/podman/podman.sock`, ...). Empty: the default
    /// engine of the machine that runs the instance, looked up there (see
    /// [`Drivers::endpoint`]); that is how a fleet host's node gets an app whose spec
    /// names no endpoint.
    pub endpoint: String,
    /// The image reference as the user wrote it (`registry/app:v2`).
    pub image: String,
    /// The image digest resolved at deploy time (`sha256:...`). When set, the container
    /// runs exactly this image, whatever the reference points to now.
    pub digest: Option<String>,
    pub pull: PullPolicy,
    /// The port the app listens on inside the container.
    pub container_port: u16,
    /// Share the host's network instead of publishing `container_port` on `port`; the app
    /// must then listen on `PORT`.
    pub host_network: bool,
    /// Replaces the image's entrypoint when set.
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the image's command when set.
    pub command: Option<Vec<String>>,
    pub user: Option<String>,
    pub workdir: Option<String>,
    /// Memory limit in bytes.
    pub memory_bytes: Option<u64>,
    /// CPU limit in CPUs (1.5 = one and a half cores).
    pub cpus: Option<f64>,
    pub read_only: bool,
    /// Extra labels, besides baton's own.
    pub labels: BTreeMap<String, String>,
}

/// When to pull an image before creating a container.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PullPolicy {
    /// Never pull; the image must be present.
    Never,
    /// Pull only when the image is not present.
    #[default]
    IfMissing,
    /// Pull at every deploy, to pick up a moved tag.
    Always,
}

/// What a driver knows about an instance right now.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum InstanceStatus {
    /// The instance is alive.
    Running,
    /// The instance ended and the driver saw how.
    Exited(Exit),
    /// The instance is not there (never was, exited unobserved, or its pid now belongs to
    /// another process).
    Gone,
}

/// How an instance ended.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Exit {
    /// Exit code, when it exited by itself.
    pub code: Option<i32>,
    /// Signal number, when a signal ended it.
    pub signal: Option<i32>,
    /// The kernel killed it for exceeding its memory limit.
    pub oom_killed: bool,
    /// Its memory limit in bytes, when it had one.
    pub memory_limit: Option<u64>,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.oom_killed {
            write!(f, "OOM-killed")?;
            if let Some(limit) = self.memory_limit {
                write!(f, " (memory limit {})", format_bytes(limit))?;
            }
            return Ok(());
        }
        match (self.code, self.signal) {
            (_, Some(9)) => write!(f, "killed by SIGKILL"),
            (_, Some(15)) => write!(f, "killed by SIGTERM"),
            (_, Some(s)) => write!(f, "killed by signal {s}"),
            (Some(c), None) => write!(f, "exit code {c}"),
            (None, None) => write!(f, "exited"),
        }
    }
}

/// `67108864` → `64 MiB`: whole units where they fit, as users write limits.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, size) in UNITS {
        if bytes >= size {
            return if bytes.is_multiple_of(size) {
                format!("{} {unit}", bytes / size)
            } else {
                format!("{:.1} {unit}", bytes as f64 / size as f64)
            };
        }
    }
    format!("{bytes} B")
}

/// Resource use of one instance at one moment.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ResourceSample {
    /// CPU time used since the instance started (user + system), in milliseconds.
    pub cpu_ms: u64,
    /// Memory in use now, in bytes.
    pub memory_bytes: u64,
    /// The most memory it used at once, when the driver knows it.
    pub memory_peak_bytes: Option<u64>,
    /// Its memory limit, when it has one.
    pub memory_limit_bytes: Option<u64>,
    /// Times the kernel's OOM killer fired in its memory cgroup.
    pub oom_kills: u64,
}

/// How a stop ended.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum StopOutcome {
    /// The instance exited on its own within the grace period after the polite signal.
    Graceful,
    /// The instance outlived the grace period and was killed.
    Killed,
    /// The instance was already gone; nothing was signalled.
    AlreadyGone,
}

/// Where [`Driver::discover`] looks: the instances of one app, on the container endpoints
/// its revisions use (processes are always looked for).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    pub app: String,
    /// Engines on this machine.
    pub container_endpoints: Vec<String>,
    /// The hosts (of a fleet) the app runs on, or ran on; empty: this machine only.
    pub hosts: Vec<HostScope>,
}

/// Where discovery looks on one host of a fleet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostScope {
    /// The host's name in the spec.
    pub name: String,
    /// Engines on that host, as its node resolves them (an empty one: its default).
    pub container_endpoints: Vec<String>,
}

/// A live instance owned by this control plane, found by [`Driver::discover`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FoundInstance {
    pub instance_id: String,
    pub locator: Locator,
    /// Where it listens, when the driver can tell.
    pub address: Option<SocketAddr>,
}

impl FoundInstance {
    /// A handle for this instance, when its address is known.
    pub fn handle(&self) -> Option<InstanceHandle> {
        Some(InstanceHandle {
            instance_id: self.instance_id.clone(),
            address: self.address?,
            locator: self.locator.clone(),
        })
    }
}

/// Errors returned by drivers.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The launch spec cannot be run as given (for example an empty `argv`).
    #[error("invalid launch spec for instance {instance_id}: {reason}")]
    InvalidSpec {
        /// The instance being launched.
        instance_id: String,
        /// What is wrong.
        reason: String,
    },
    /// The instance's log file (or its directory) could not be created or opened.
    #[error("cannot open log file {}: {source}", path.display())]
    Log {
        /// The log file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The executable could not be started (missing, not executable, bad workdir...).
    #[error("cannot start {program:?}{}: {source}",
        workdir.as_ref().map(|w| format!(" in {}", w.display())).unwrap_or_default())]
    Spawn {
        /// `argv[0]` as given.
        program: String,
        /// The working directory it was started in, if set.
        workdir: Option<PathBuf>,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Reading process information from `/proc` failed.
    #[error("cannot read {}: {reason}", path.display())]
    Proc {
        /// The file or directory under `/proc`.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// Sending a signal failed for a reason other than the target being gone.
    #[error("cannot send {signal} to process group {pid}: {source}")]
    Signal {
        /// The process-group id.
        pid: u32,
        /// The signal's name.
        signal: &'static str,
        /// The OS error.
        #[source]
        source: nix::Error,
    },
    /// This driver cannot run this kind of instance (a container handle given to the
    /// process driver, ...).
    #[error("{0}")]
    Unsupported(String),
    /// The container engine refused a request or could not be reached.
    #[error("container engine at {endpoint}: {reason}")]
    Engine {
        /// The API endpoint.
        endpoint: String,
        /// What went wrong, in the engine's words.
        reason: String,
    },
    /// The image cannot be used under the pull policy (missing and never pulled, pull
    /// failed, ...).
    #[error("image {image}: {reason}")]
    Image {
        /// The image reference.
        image: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// A host of a fleet could not be asked, or its node refused.
    #[error("host {host}: {reason}")]
    Remote {
        /// The host's name.
        host: String,
        /// What went wrong.
        reason: String,
    },
    /// The instance was still alive after being killed (for example stuck in the kernel).
    #[error("instance {instance_id} (pid {pid}) is still running after SIGKILL")]
    StillRunning {
        /// The instance.
        instance_id: String,
        /// Its pid.
        pid: u32,
    },
}

/// The interface every driver implements.
///
/// Implementations must be cheap to share (`Send + Sync + 'static`) and their futures
/// `Send`, so the controller can drive them from any task.
pub trait Driver: Send + Sync + 'static {
    /// Starts one instance and returns its handle once it started (not once it is ready:
    /// readiness is checked separately).
    fn start(
        &self,
        spec: &LaunchSpec,
    ) -> impl Future<Output = Result<InstanceHandle, DriverError>> + Send;

    /// The instance's status right now. An exit carries how it ended (code, signal,
    /// OOM kill), which the controller turns into an event.
    fn status(&self, handle: &InstanceHandle) -> impl Future<Output = InstanceStatus> + Send;

    /// Asks the instance to stop, waits up to `grace`, then kills it.
    fn stop(
        &self,
        handle: &InstanceHandle,
        grace: Duration,
    ) -> impl Future<Output = Result<StopOutcome, DriverError>> + Send;

    /// Every live instance of `scope.app` this control plane owns, including ones started
    /// by an earlier control-plane process that crashed.
    fn discover(
        &self,
        scope: &Scope,
    ) -> impl Future<Output = Result<Vec<FoundInstance>, DriverError>> + Send;

    /// The instance's resource use now; `None` when it is gone or cannot be measured.
    fn sample(
        &self,
        handle: &InstanceHandle,
    ) -> impl Future<Output = Option<ResourceSample>> + Send;

    /// Resolves a container image on `endpoint` under `pull`, for the pre-flight
    /// check and to pin a release to its digest. Drivers without containers refuse.
    fn resolve_image(
        &self,
        endpoint: &str,
        image: &str,
        pull: PullPolicy,
    ) -> impl Future<Output = Result<ImageInfo, DriverError>> + Send {
        let _ = (endpoint, pull);
        let image = image.to_owned();
        async move {
            Err(DriverError::Unsupported(format!(
                "this driver cannot run container images such as {image}"
            )))
        }
    }
}

/// A port on `host` that was free a moment ago: binds port 0, reads the port the OS chose,
/// and releases it. Another process may take it before the caller binds it.
pub fn free_port(host: IpAddr) -> std::io::Result<u16> {
    let listener = TcpListener::bind(SocketAddr::new(host, 0))?;
    Ok(listener.local_addr()?.port())
}

/// A boxed future, for the object-safe [`DynDriver`].
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// [`Driver`] as a trait object, so the control plane can hold any driver
/// (the process driver, or a simulated one in the deterministic simulation)
/// behind one `Arc<dyn DynDriver>`. Every [`Driver`] is one.
pub trait DynDriver: Send + Sync + 'static {
    fn start<'a>(
        &'a self,
        spec: &'a LaunchSpec,
    ) -> BoxFuture<'a, Result<InstanceHandle, DriverError>>;
    fn status<'a>(&'a self, handle: &'a InstanceHandle) -> BoxFuture<'a, InstanceStatus>;
    fn stop<'a>(
        &'a self,
        handle: &'a InstanceHandle,
        grace: Duration,
    ) -> BoxFuture<'a, Result<StopOutcome, DriverError>>;
    fn discover<'a>(
        &'a self,
        scope: &'a Scope,
    ) -> BoxFuture<'a, Result<Vec<FoundInstance>, DriverError>>;
    fn sample<'a>(&'a self, handle: &'a InstanceHandle) -> BoxFuture<'a, Option<ResourceSample>>;
    /// [`Driver::resolve_image`] on `node`'s engine (a host of a fleet, as
    /// [`LaunchSpec::node`] names it), or on this machine's when `None`.
    fn resolve_image<'a>(
        &'a self,
        node: Option<&'a str>,
        endpoint: &'a str,
        image: &'a str,
        pull: PullPolicy,
    ) -> BoxFuture<'a, Result<ImageInfo, DriverError>>;
}

impl<T: Driver> DynDriver for T {
    fn start<'a>(
        &'a self,
        spec: &'a LaunchSpec,
    ) -> BoxFuture<'a, Result<InstanceHandle, DriverError>> {
        Box::pin(Driver::start(self, spec))
    }
    fn status<'a>(&'a self, handle: &'a InstanceHandle) -> BoxFuture<'a, InstanceStatus> {
        Box::pin(Driver::status(self, handle))
    }
    fn stop<'a>(
        &'a self,
        handle: &'a InstanceHandle,
        grace: Duration,
    ) -> BoxFuture<'a, Result<StopOutcome, DriverError>> {
        Box::pin(Driver::stop(self, handle, grace))
    }
    fn discover<'a>(
        &'a self,
        scope: &'a Scope,
    ) -> BoxFuture<'a, Result<Vec<FoundInstance>, DriverError>> {
        Box::pin(Driver::discover(self, scope))
    }
    fn sample<'a>(&'a self, handle: &'a InstanceHandle) -> BoxFuture<'a, Option<ResourceSample>> {
        Box::pin(Driver::sample(self, handle))
    }
    fn resolve_image<'a>(
        &'a self,
        node: Option<&'a str>,
        endpoint: &'a str,
        image: &'a str,
        pull: PullPolicy,
    ) -> BoxFuture<'a, Result<ImageInfo, DriverError>> {
        match node {
            None => Box::pin(Driver::resolve_image(self, endpoint, image, pull)),
            // A plain driver runs on this machine only.
            Some(host) => Box::pin(std::future::ready(Err(DriverError::Remote {
                host: host.to_owned(),
                reason: "this driver does not reach other hosts".to_owned(),
            }))),
        }
    }
}
