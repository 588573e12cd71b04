//! baton-driver: start, stop and inspect the instances of an app.
//!
//! Every way of running instances (local processes, SSH hosts, containers, Kubernetes)
//! implements one [`Driver`] trait. The types here say *what* to run ([`LaunchSpec`]) and
//! *which* instance is meant ([`InstanceHandle`]); how is up to the driver.
//!
//! [`ProcessDriver`] is the default: it runs each instance as a local process in its own
//! process group, marked with the control plane's owner string so that a restarted
//! control plane can find (and adopt or stop) instances started by its predecessor.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod process;
mod procfs;

pub use process::ProcessDriver;

/// Environment variable carrying the instance id to every instance.
pub const ENV_INSTANCE_ID: &str = "BATON_INSTANCE_ID";
/// Environment variable carrying the owner (the control plane's canonical data dir).
pub const ENV_OWNER: &str = "BATON_OWNER";
/// Environment variable carrying the port the instance must listen on.
pub const ENV_PORT: &str = "PORT";

/// Everything a driver needs to start one instance. Templates are already rendered.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LaunchSpec {
    /// Unique id of this instance (stable across control-plane restarts).
    pub instance_id: String,
    pub app: String,
    pub version: String,
    /// Program and arguments; `argv[0]` is the executable (looked up in `PATH`).
    pub argv: Vec<String>,
    /// Extra environment, on top of the control plane's own.
    pub env: BTreeMap<String, String>,
    /// Working directory; the control plane's own if `None`.
    pub workdir: Option<PathBuf>,
    /// Address the router reaches the instance at (127.0.0.1 for local processes).
    pub host: IpAddr,
    /// Port the instance must listen on; passed as `PORT`.
    pub port: u16,
    /// File that receives the instance's stdout and stderr (appended).
    pub log_path: PathBuf,
}

/// Identifies one running instance. Persisted by the control plane, so it survives a
/// restart; `start_time` guards against the pid having been reused since.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub struct InstanceHandle {
    pub instance_id: String,
    /// Process id (process driver); also the instance's process-group id.
    pub pid: u32,
    /// Start time of the process in clock ticks since boot (`/proc/<pid>/stat` field 22).
    pub start_time: u64,
    /// Where the router sends the instance's traffic.
    pub address: SocketAddr,
}

/// What a driver knows about an instance right now.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum InstanceStatus {
    /// The instance is alive.
    Running,
    /// The instance exited and the driver saw its exit; `code` is `None` when it was
    /// killed by a signal.
    Exited { code: Option<i32> },
    /// The instance is not there (never was, exited unobserved, or its pid now belongs to
    /// another process).
    Gone,
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

/// A live instance owned by this control plane, found by [`Driver::discover`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FoundInstance {
    pub instance_id: String,
    pub pid: u32,
    pub start_time: u64,
    /// The `PORT` it was started with, if readable.
    pub port: Option<u16>,
}

impl FoundInstance {
    /// A handle for this instance, reachable at `host`.
    pub fn handle(&self, host: IpAddr) -> Option<InstanceHandle> {
        Some(InstanceHandle {
            instance_id: self.instance_id.clone(),
            pid: self.pid,
            start_time: self.start_time,
            address: SocketAddr::new(host, self.port?),
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
    /// Starts one instance and returns its handle once the OS reports it started (not once
    /// it is ready: readiness is checked separately).
    fn start(
        &self,
        spec: &LaunchSpec,
    ) -> impl Future<Output = Result<InstanceHandle, DriverError>> + Send;

    /// The instance's status right now. Cheap and non-blocking.
    fn status(&self, handle: &InstanceHandle) -> InstanceStatus;

    /// Asks the instance to stop, waits up to `grace`, then kills it.
    fn stop(
        &self,
        handle: &InstanceHandle,
        grace: Duration,
    ) -> impl Future<Output = Result<StopOutcome, DriverError>> + Send;

    /// Every live instance this control plane owns, including ones started by an earlier
    /// control-plane process that crashed.
    fn discover(&self) -> Result<Vec<FoundInstance>, DriverError>;
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
    fn status(&self, handle: &InstanceHandle) -> InstanceStatus;
    fn stop<'a>(
        &'a self,
        handle: &'a InstanceHandle,
        grace: Duration,
    ) -> BoxFuture<'a, Result<StopOutcome, DriverError>>;
    fn discover(&self) -> Result<Vec<FoundInstance>, DriverError>;
}

impl<T: Driver> DynDriver for T {
    fn start<'a>(
        &'a self,
        spec: &'a LaunchSpec,
    ) -> BoxFuture<'a, Result<InstanceHandle, DriverError>> {
        Box::pin(Driver::start(self, spec))
    }
    fn status(&self, handle: &InstanceHandle) -> InstanceStatus {
        Driver::status(self, handle)
    }
    fn stop<'a>(
        &'a self,
        handle: &'a InstanceHandle,
        grace: Duration,
    ) -> BoxFuture<'a, Result<StopOutcome, DriverError>> {
        Box::pin(Driver::stop(self, handle, grace))
    }
    fn discover(&self) -> Result<Vec<FoundInstance>, DriverError> {
        Driver::discover(self)
    }
}
