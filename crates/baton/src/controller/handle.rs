//! What the API holds of an app controller: the commands it sends, their
//! answers, and the views of the app's state it reads.

use std::collections::BTreeMap;
use std::sync::Arc;

use baton_engine::{AppState, EngineError, Input, RolloutKind};
use baton_spec::{AppSpec, StrategyKind};
use tokio::sync::{mpsc, oneshot};

use super::sensors::analysis::LastCheck;

/// Requests from the API to an app controller.
pub enum Command {
    /// A new spec was applied.
    Apply {
        spec: Box<AppSpec>,
        reply: oneshot::Sender<anyhow::Result<()>>,
    },
    Deploy {
        request: DeployRequest,
        reply: oneshot::Sender<Result<DeployAccepted, CommandError>>,
    },
    /// An operator's command on a live rollout: abort, promote, pause,
    /// resume or approve.
    Operate {
        input: Input,
        reply: oneshot::Sender<Result<(), CommandError>>,
    },
    /// Drain and stop every instance (used by `baton down` and the demo).
    StopAll { reply: oneshot::Sender<()> },
    /// `baton rollback`: during a rollout an abort (traffic back to the stable
    /// release at once); otherwise a rollout to `to_revision`, or to the
    /// release that was stable before the current one.
    Rollback {
        to_revision: Option<u32>,
        operator: String,
        reply: oneshot::Sender<Result<DeployAccepted, CommandError>>,
    },
    /// `baton retry`: the last failed or aborted release again.
    Retry {
        operator: String,
        reply: oneshot::Sender<Result<DeployAccepted, CommandError>>,
    },
    /// `baton delete`: take every instance out of routing, wait for its
    /// requests in flight, stop it, and close a rollout in flight.
    Delete { reply: oneshot::Sender<()> },
}

/// What `deploy` (and `rollback`, `retry`) asks for.
#[derive(Debug, Clone)]
pub struct DeployRequest {
    pub version: String,
    /// Environment variables of this release.
    pub env: BTreeMap<String, String>,
    pub operator: String,
    pub kind: RolloutKind,
    /// Roll back to this existing revision instead of creating one.
    pub revision: Option<u32>,
    /// Start now even outside the app's upgrade windows.
    pub now: bool,
    /// Use a strategy of this kind for this rollout instead of the spec's
    /// (the controller resolves it: see [`AppSpec::strategy_of_kind`]).
    pub strategy: Option<StrategyKind>,
    /// Expected sha256 of the release's program, or of a container release's
    /// image digest (pre-flight check).
    pub sha256: Option<String>,
    /// A container app's image for this release, instead of the spec's template.
    pub image: Option<String>,
}

impl DeployRequest {
    pub fn new(version: String, operator: String, kind: RolloutKind) -> Self {
        DeployRequest {
            version,
            env: BTreeMap::new(),
            operator,
            kind,
            revision: None,
            now: false,
            strategy: None,
            sha256: None,
            image: None,
        }
    }
}

/// Accepted deploy.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeployAccepted {
    pub revision: u32,
    pub history_id: i64,
    pub version: String,
    /// Already running this release: nothing to do.
    pub unchanged: bool,
    /// Outside every upgrade window: when it starts, on the window's clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waits_for_window: Option<String>,
}

/// Why a command was refused. Nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("{0}")]
    BadRequest(String),
    /// A pre-flight check failed.
    #[error("{0}")]
    Preflight(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// Handle held by the API for one app.
#[derive(Clone)]
pub struct AppHandle {
    pub commands: mpsc::Sender<Command>,
    pub status: tokio::sync::watch::Receiver<Arc<AppView>>,
    /// The newest analysis measurement (for `status`).
    pub last_check: tokio::sync::watch::Receiver<Option<LastCheck>>,
    /// The app's webhooks and how their deliveries go (for `status`).
    pub notifier: super::actor::NotifierSlot,
    /// The newest mirror step's comparisons (for `status`).
    pub mirror: tokio::sync::watch::Receiver<Option<super::sensors::mirror::MirrorSummary>>,
    /// The newest CPU and memory sample of each instance (for `status` and `/metrics`).
    pub resources: super::sensors::resources::ResourcesView,
}

/// What `status` shows: the engine state plus the spec it runs under.
#[derive(Debug)]
pub struct AppView {
    pub state: AppState,
    pub generation: u64,
    /// The spec the app runs under, with a one-off `deploy --strategy` in place
    /// while its rollout runs.
    pub spec: AppSpec,
    /// Generation of the newest routing table published for this state.
    pub routing_generation: u64,
}
