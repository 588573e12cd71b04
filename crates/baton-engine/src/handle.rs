//! How a driver identifies one running instance.
//!
//! The engine stores handles (inside [`crate::Instance`]) so that a restarted control
//! plane finds its instances again; it never looks inside them. Each driver has its own
//! variant of [`Locator`], stored typed.

use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Identifies one started instance: which it is, where the router reaches it, and how
/// its driver finds it again.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct InstanceHandle {
    pub instance_id: String,
    /// Where the router sends the instance's traffic.
    pub address: SocketAddr,
    pub locator: Locator,
}

/// The driver-specific part of a handle.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "driver", rename_all = "snake_case")]
pub enum Locator {
    /// A local process, leader of its own process group. `start_time` (clock ticks since
    /// boot, `/proc/<pid>/stat` field 22) tells it apart from a later process that got
    /// the same pid.
    Process { pid: u32, start_time: u64 },
    /// A container on a Docker Engine API endpoint (Docker or Podman).
    Container {
        /// The full container id.
        id: String,
        /// The API endpoint it runs on (`unix:///run/podman/podman.sock`, ...).
        endpoint: String,
        /// The image digest it was created from (`sha256:...`).
        digest: String,
    },
    /// An instance on another host, run by that host's node: `locator` is what
    /// the node's own driver knows it by.
    Remote { host: String, locator: Box<Locator> },
}

impl Locator {
    /// What the driver that runs the instance knows it by (the node's locator
    /// of a remote instance).
    pub fn local(&self) -> &Locator {
        match self {
            Locator::Remote { locator, .. } => locator.local(),
            other => other,
        }
    }

    /// The host it runs on, when not this machine.
    pub fn host(&self) -> Option<&str> {
        match self {
            Locator::Remote { host, .. } => Some(host),
            _ => None,
        }
    }
}

impl fmt::Display for Locator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Locator::Process { pid, .. } => write!(f, "pid {pid}"),
            Locator::Container { id, .. } => write!(f, "container {}", short_id(id)),
            Locator::Remote { host, locator } => write!(f, "{locator} on {host}"),
        }
    }
}

/// The first 12 characters of a container id, as `docker ps` shows it.
pub fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// Reads a handle as stored by any version of baton: typed (current), or a JSON string
/// holding `{instance_id, pid, start_time, address}` (before handles were typed).
pub(crate) fn deserialize_stored<'de, D>(d: D) -> Result<Option<InstanceHandle>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Stored {
        Typed(InstanceHandle),
        Legacy(String),
    }
    #[derive(Deserialize)]
    struct LegacyProcess {
        instance_id: String,
        pid: u32,
        start_time: u64,
        address: SocketAddr,
    }
    match Option::<Stored>::deserialize(d)? {
        None => Ok(None),
        Some(Stored::Typed(h)) => Ok(Some(h)),
        Some(Stored::Legacy(text)) => {
            let old: LegacyProcess =
                serde_json::from_str(&text).map_err(serde::de::Error::custom)?;
            Ok(Some(InstanceHandle {
                instance_id: old.instance_id,
                address: old.address,
                locator: Locator::Process {
                    pid: old.pid,
                    start_time: old.start_time,
                },
            }))
        }
    }
}
