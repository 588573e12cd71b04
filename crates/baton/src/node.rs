//! `baton node`: what runs on every host of a fleet.
//!
//! A node is that host's local driver (processes and containers, the same
//! [`Drivers`] the control plane uses on its own machine) behind a small JSON
//! API on a unix socket in the node's directory, plus that host's router (a
//! `baton __router` process the node starts, or re-attaches to, with its admin
//! socket beside the node's). The control plane reaches both sockets only
//! through SSH forwarding: a node never opens a TCP port of its own.
//!
//! Nothing here depends on the control plane being there: instances run in
//! their own process groups and the router in its own process, so a lost SSH
//! link or a dead control plane leaves the host serving on its last routing
//! table, and a node restarted with a new baton binary finds its instances
//! again by their owner mark (the node directory).
//!
//! Container apps: the control plane sends the spec's engine endpoint as
//! written, empty when the spec names none, and the node's drivers resolve it
//! here: `DIR/podman.sock` when it exists (a socket, or a symlink to one, that
//! the operator puts there for baton), else `DOCKER_HOST`, else the usual
//! sockets. Images are resolved here too (`POST /v1/images/resolve`), for the
//! control plane to pin one digest across the app's hosts.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use baton_driver::{
    Driver, DriverError, Drivers, FoundInstance, ImageInfo, InstanceHandle, InstanceStatus,
    LaunchSpec, PullPolicy, ResourceSample, Scope, StopOutcome,
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

/// The node's socket in its directory.
pub fn node_socket(dir: &Path) -> PathBuf {
    dir.join("node.sock")
}

/// The node's router's admin socket in its directory.
pub fn router_socket(dir: &Path) -> PathBuf {
    dir.join("router.sock")
}

/// The container engine socket a node uses first for apps whose spec names
/// no endpoint, when it exists.
pub fn engine_socket(dir: &Path) -> PathBuf {
    dir.join("podman.sock")
}

/// What `GET /v1/node` answers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeInfo {
    /// baton's version and the checksum of the running binary.
    pub version: String,
    pub binary_sha256: String,
    pub pid: u32,
    pub started_ms: i64,
    /// The node's directory (its owner mark).
    pub dir: PathBuf,
    /// The host's CPU architecture, as Rust names it (`x86_64`, `aarch64`):
    /// what container images must be built for. Empty from older nodes.
    #[serde(default)]
    pub arch: String,
}

/// `POST /v1/instances/stop`.
#[derive(Debug, Serialize, Deserialize)]
pub struct StopRequest {
    pub handle: InstanceHandle,
    pub grace_ms: u64,
}

/// `POST /v1/images/resolve`: resolve `image` on the host's engine `endpoint`
/// (empty: its default) under `pull`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ImageRequest {
    pub endpoint: String,
    pub image: String,
    pub pull: PullPolicy,
}

/// The error body of a refused call.
#[derive(Debug, Serialize, Deserialize)]
struct ErrorBody {
    error: String,
}

struct NodeState {
    drivers: Drivers,
    info: NodeInfo,
    router_socket: PathBuf,
    shutdown: CancellationToken,
}

type Shared = Arc<NodeState>;

/// Runs the node in `dir` until `shutdown`: starts (or re-attaches to) the
/// host's router, then serves the node API on `dir/node.sock`.
pub async fn run(dir: &Path, baton_exe: &str, shutdown: CancellationToken) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))?;
    let _lock = crate::lock::DataDirLock::acquire_named(&dir, "node.lock")?;
    crate::routing::ensure_router(&dir, &router_socket(&dir), baton_exe).await?;
    let info = NodeInfo {
        version: env!("CARGO_PKG_VERSION").to_string(),
        binary_sha256: crate::fleet::install::file_sha256(Path::new(baton_exe)).unwrap_or_default(),
        pid: std::process::id(),
        started_ms: crate::effects::wall_clock_ms(),
        dir: dir.clone(),
        arch: std::env::consts::ARCH.to_string(),
    };
    let state = Arc::new(NodeState {
        drivers: Drivers::new(dir.display().to_string()).with_default_socket(engine_socket(&dir)),
        info,
        router_socket: router_socket(&dir),
        shutdown: shutdown.clone(),
    });
    let socket = node_socket(&dir);
    let listener = bind(&socket).await?;
    tracing::info!(socket = %socket.display(), "baton node serving");
    let app = Router::new()
        .route("/v1/node", get(node_info))
        .route("/v1/instances", post(start))
        .route("/v1/instances/status", post(status))
        .route("/v1/instances/stop", post(stop))
        .route("/v1/instances/discover", post(discover))
        .route("/v1/instances/sample", post(sample))
        .route("/v1/images/resolve", post(resolve_image))
        .route("/v1/free-port", post(free_port))
        .route("/v1/shutdown", post(shut_down))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
    Ok(())
}

/// Binds `socket`, replacing a stale socket file; refuses while a node answers there.
async fn bind(socket: &Path) -> anyhow::Result<UnixListener> {
    if UnixStream::connect(socket).await.is_ok() {
        anyhow::bail!(
            "a baton node already answers on {}; stop it first",
            socket.display()
        );
    }
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", socket.display())),
    }
    let listener =
        UnixListener::bind(socket).with_context(|| format!("binding {}", socket.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

fn refused(status: StatusCode, e: impl std::fmt::Display) -> Response {
    (
        status,
        Json(ErrorBody {
            error: e.to_string(),
        }),
    )
        .into_response()
}

/// `baton down`: the host's router stops, then the node (instances are the
/// control plane's to stop first).
async fn shut_down(State(s): State<Shared>) -> Json<bool> {
    let router = baton_router::AdminClient::new(s.router_socket.clone());
    if let Ok(health) = router.health().await {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(health.pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    s.shutdown.cancel();
    Json(true)
}

async fn node_info(State(s): State<Shared>) -> Json<NodeInfo> {
    Json(s.info.clone())
}

/// Start an instance, unless one with this id already runs (the control plane
/// retries a start whose answer it lost): then its handle. A port of 0 is
/// chosen here, where it is free.
async fn start(State(s): State<Shared>, Json(mut spec): Json<LaunchSpec>) -> Response {
    let scope = Scope {
        app: spec.app.clone(),
        container_endpoints: match &spec.target {
            baton_driver::Target::Container(c) => vec![c.endpoint.clone()],
            baton_driver::Target::Process(_) => Vec::new(),
        },
        hosts: Vec::new(),
    };
    if let Ok(found) = s.drivers.discover(&scope).await
        && let Some(handle) = found
            .iter()
            .find(|f| f.instance_id == spec.instance_id)
            .and_then(FoundInstance::handle)
    {
        return Json(handle).into_response();
    }
    if spec.port == 0 {
        match baton_driver::free_port(spec.host) {
            Ok(port) => spec.port = port,
            Err(e) => return refused(StatusCode::INTERNAL_SERVER_ERROR, e),
        }
    }
    match s.drivers.start(&spec).await {
        Ok(handle) => Json(handle).into_response(),
        Err(e @ DriverError::InvalidSpec { .. }) => refused(StatusCode::BAD_REQUEST, e),
        Err(e) => refused(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// A port free on this host a moment ago, on `host` (the control plane renders
/// the instance's `{port}` with it before the start).
async fn free_port(Json(host): Json<IpAddr>) -> Response {
    match baton_driver::free_port(host) {
        Ok(port) => Json(port).into_response(),
        Err(e) => refused(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn status(State(s): State<Shared>, Json(handle): Json<InstanceHandle>) -> Response {
    Json(s.drivers.status(&handle).await).into_response()
}

async fn stop(State(s): State<Shared>, Json(req): Json<StopRequest>) -> Response {
    match s
        .drivers
        .stop(&req.handle, Duration::from_millis(req.grace_ms))
        .await
    {
        Ok(outcome) => Json(outcome).into_response(),
        Err(e) => refused(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn discover(State(s): State<Shared>, Json(scope): Json<ScopeBody>) -> Response {
    let scope = Scope {
        app: scope.app,
        container_endpoints: scope.container_endpoints,
        hosts: Vec::new(),
    };
    match s.drivers.discover(&scope).await {
        Ok(found) => Json(found).into_response(),
        Err(e) => refused(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn sample(State(s): State<Shared>, Json(handle): Json<InstanceHandle>) -> Response {
    Json(s.drivers.sample(&handle).await).into_response()
}

async fn resolve_image(State(s): State<Shared>, Json(req): Json<ImageRequest>) -> Response {
    match s
        .drivers
        .resolve_image(&req.endpoint, &req.image, req.pull)
        .await
    {
        Ok(info) => Json(info).into_response(),
        Err(e @ DriverError::Image { .. }) => refused(StatusCode::UNPROCESSABLE_ENTITY, e),
        Err(e) => refused(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// [`Scope`] on the wire.
#[derive(Debug, Serialize, Deserialize)]
pub struct ScopeBody {
    pub app: String,
    pub container_endpoints: Vec<String>,
}

/// Why a call to a node failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Nothing answers on the (forwarded) socket: the host or its link is down.
    #[error("cannot reach the node: {0}")]
    Unreachable(String),
    /// The node answered with an error.
    #[error("{0}")]
    Refused(String),
}

/// A client of one node's API, through its (forwarded) socket. One connection
/// per call, each bounded in time.
#[derive(Debug, Clone)]
pub struct NodeClient {
    socket: PathBuf,
}

/// Longest wait for one node call (a stop waits for its grace period on top).
const CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest wait for an image to resolve on a host, which may pull it.
const IMAGE_TIMEOUT: Duration = Duration::from_secs(600);

impl NodeClient {
    pub fn new(socket: PathBuf) -> Self {
        NodeClient { socket }
    }

    pub async fn info(&self) -> Result<NodeInfo, NodeError> {
        self.call("GET", "/v1/node", None::<&()>, Duration::from_secs(3))
            .await
    }

    pub async fn start(&self, spec: &LaunchSpec) -> Result<InstanceHandle, NodeError> {
        self.call("POST", "/v1/instances", Some(spec), CALL_TIMEOUT)
            .await
    }

    /// Stop the host's router and the node.
    pub async fn shut_down(&self) -> Result<bool, NodeError> {
        self.call("POST", "/v1/shutdown", None::<&()>, Duration::from_secs(5))
            .await
    }

    pub async fn free_port(&self, host: IpAddr) -> Result<u16, NodeError> {
        self.call("POST", "/v1/free-port", Some(&host), CALL_TIMEOUT)
            .await
    }

    pub async fn status(&self, handle: &InstanceHandle) -> Result<InstanceStatus, NodeError> {
        self.call("POST", "/v1/instances/status", Some(handle), CALL_TIMEOUT)
            .await
    }

    pub async fn stop(
        &self,
        handle: &InstanceHandle,
        grace: Duration,
    ) -> Result<StopOutcome, NodeError> {
        let req = StopRequest {
            handle: handle.clone(),
            grace_ms: grace.as_millis() as u64,
        };
        self.call(
            "POST",
            "/v1/instances/stop",
            Some(&req),
            CALL_TIMEOUT + grace,
        )
        .await
    }

    /// The app's instances on the host, on its engines `container_endpoints`.
    pub async fn discover(
        &self,
        app: &str,
        container_endpoints: &[String],
    ) -> Result<Vec<FoundInstance>, NodeError> {
        let body = ScopeBody {
            app: app.to_owned(),
            container_endpoints: container_endpoints.to_vec(),
        };
        self.call("POST", "/v1/instances/discover", Some(&body), CALL_TIMEOUT)
            .await
    }

    /// `image` as the host's engine `endpoint` (empty: its default) has it,
    /// pulled there under `pull`.
    pub async fn resolve_image(
        &self,
        endpoint: &str,
        image: &str,
        pull: PullPolicy,
    ) -> Result<ImageInfo, NodeError> {
        let req = ImageRequest {
            endpoint: endpoint.to_owned(),
            image: image.to_owned(),
            pull,
        };
        self.call("POST", "/v1/images/resolve", Some(&req), IMAGE_TIMEOUT)
            .await
    }

    pub async fn sample(
        &self,
        handle: &InstanceHandle,
    ) -> Result<Option<ResourceSample>, NodeError> {
        self.call("POST", "/v1/instances/sample", Some(handle), CALL_TIMEOUT)
            .await
    }

    async fn call<B: Serialize, T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<T, NodeError> {
        let body = match body {
            Some(b) => serde_json::to_vec(b).map_err(|e| NodeError::Refused(e.to_string()))?,
            None => Vec::new(),
        };
        let exchange = async {
            let stream = UnixStream::connect(&self.socket)
                .await
                .map_err(|e| NodeError::Unreachable(e.to_string()))?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| NodeError::Unreachable(e.to_string()))?;
            let conn = tokio::spawn(conn);
            let req = http::Request::builder()
                .method(method)
                .uri(path)
                .header(http::header::HOST, "baton-node")
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(body)))
                .map_err(|e| NodeError::Refused(e.to_string()))?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| NodeError::Unreachable(e.to_string()))?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| NodeError::Unreachable(e.to_string()))?
                .to_bytes();
            conn.abort();
            if !status.is_success() {
                let error = serde_json::from_slice::<ErrorBody>(&bytes)
                    .map(|b| b.error)
                    .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
                return Err(NodeError::Refused(error));
            }
            serde_json::from_slice(&bytes).map_err(|e| NodeError::Refused(e.to_string()))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| NodeError::Unreachable(format!("no answer within {timeout:?}")))?
    }
}

/// The address instances on a host listen on and are reached at: the host's
/// address when it is an IP, else what it resolves to.
pub async fn host_ip(address: &str) -> anyhow::Result<IpAddr> {
    if let Ok(ip) = address.parse() {
        return Ok(ip);
    }
    let mut addrs = tokio::net::lookup_host((address, 22))
        .await
        .with_context(|| format!("resolving host {address}"))?;
    addrs
        .next()
        .map(|a: SocketAddr| a.ip())
        .with_context(|| format!("host {address} resolves to no address"))
}
