//! The admin API on a unix socket (HTTP/1.1 + JSON), and the client the control plane
//! uses to talk to it.
//!
//! | method | path          | body            | answer                                   |
//! |--------|---------------|-----------------|------------------------------------------|
//! | GET    | `/v1/health`  |                 | [`RouterHealth`]                         |
//! | GET    | `/v1/config`  |                 | [`RoutingConfig`] (the live one)         |
//! | PUT    | `/v1/config`  | [`RoutingConfig`] | [`PushResult`]; 409 if the generation is lower than the live one; 400 if invalid |
//! | PUT    | `/v1/config/staged` | [`RoutingConfig`] | [`PushResult`] of the staged table; 409 if the generation is not higher than the live one; 400 if invalid |
//! | POST   | `/v1/config/commit` | `{"generation": N}` | [`CommitResult`]; 409 if N is neither staged nor live |
//! | GET    | `/v1/stats`   |                 | [`RouterStats`]                          |
//! | GET    | `/v1/windows?seconds=N` |       | [`WindowsReport`] (N in 1..=64, default 10) |
//! | GET    | `/v1/mirror`  |                 | [`MirrorReports`]                        |
//! | POST   | `/v1/record/{app}` | [`RecordSpec`] | [`RecordingReport`]; starts recording the app's requests; 404 if no such app |
//! | GET    | `/v1/record/{app}` |            | [`RecordingReport`] so far               |
//! | DELETE | `/v1/record/{app}` |            | [`RecordingReport`]; ends the recording  |
//! | GET    | `/metrics`    |                 | Prometheus text format 0.0.4             |
//!
//! Errors are `{"error": "...", "generation": <live generation>}`, plus
//! `"staged": <generation>` when a commit is refused while another one is staged.
//!
//! Two-phase switch: a stage does all the slow and fallible work of a push (compile,
//! bind) without changing what is served; the commit is one atomic swap, so a control
//! plane can stage on every router, then commit on all of them at once. A push
//! discards the staged table.

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Path as AxumPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router as Axum};
use bytes::Bytes;
use http::{Method, Request, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use crate::config::RoutingConfig;
use crate::error::RouterError;
use crate::record::{RecordSpec, RecordingReport};
use crate::router::Router;
use crate::stats::{
    CommitResult, MirrorReports, PushResult, RouterHealth, RouterStats, WindowsReport,
};

/// Deadline of each [`AdminClient`] call.
pub const ADMIN_CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest config accepted by `PUT /v1/config`.
const MAX_CONFIG_BYTES: usize = 16 * 1024 * 1024;

/// Error body of the admin API.
#[derive(Serialize, Deserialize, Debug)]
struct ErrorBody {
    error: String,
    generation: u64,
    /// The staged generation, on a refused commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    staged: Option<u64>,
}

/// Body of `POST /v1/config/commit`.
#[derive(Serialize, Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct CommitRequest {
    generation: u64,
}

fn admin_routes(router: Router) -> Axum {
    Axum::new()
        .route("/v1/health", get(health))
        .route("/v1/config", get(get_config).put(put_config))
        .route("/v1/config/staged", put(put_staged))
        .route("/v1/config/commit", post(commit))
        .route("/v1/stats", get(stats))
        .route("/v1/windows", get(windows))
        .route("/v1/mirror", get(mirror))
        .route(
            "/v1/record/{app}",
            post(arm_record).get(read_record).delete(stop_record),
        )
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(MAX_CONFIG_BYTES))
        .with_state(router)
}

async fn health(State(r): State<Router>) -> Json<RouterHealth> {
    Json(r.health())
}

async fn get_config(State(r): State<Router>) -> Json<RoutingConfig> {
    Json(r.config())
}

async fn stats(State(r): State<Router>) -> Json<RouterStats> {
    Json(r.stats())
}

/// Query of `GET /v1/windows`.
#[derive(Deserialize)]
struct WindowQuery {
    seconds: Option<u64>,
}

/// Window read when `seconds` is not given.
const DEFAULT_WINDOW_S: u64 = 10;

async fn windows(State(r): State<Router>, Query(q): Query<WindowQuery>) -> Json<WindowsReport> {
    let s = q.seconds.unwrap_or(DEFAULT_WINDOW_S);
    Json(r.windows(Duration::from_secs(s)))
}

async fn mirror(State(r): State<Router>) -> Json<MirrorReports> {
    Json(r.mirror_reports())
}

async fn arm_record(
    State(r): State<Router>,
    AxumPath(app): AxumPath<String>,
    Json(spec): Json<RecordSpec>,
) -> Response {
    if spec.max_requests == 0 || spec.max_requests > crate::record::MAX_RECORDED {
        return (
            StatusCode::BAD_REQUEST,
            format!(
                "max_requests: {} is out of range 1..={}\n",
                spec.max_requests,
                crate::record::MAX_RECORDED
            ),
        )
            .into_response();
    }
    match r.record_state(&app) {
        Some(st) => {
            st.arm(spec);
            Json(st.report(false)).into_response()
        }
        None => no_such_app(&app),
    }
}

async fn read_record(State(r): State<Router>, AxumPath(app): AxumPath<String>) -> Response {
    match r.record_state(&app) {
        Some(st) => Json(st.report(false)).into_response(),
        None => no_such_app(&app),
    }
}

async fn stop_record(State(r): State<Router>, AxumPath(app): AxumPath<String>) -> Response {
    match r.record_state(&app) {
        Some(st) => Json(st.report(true)).into_response(),
        None => no_such_app(&app),
    }
}

fn no_such_app(app: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        format!("no app {app:?} in this router's table\n"),
    )
        .into_response()
}

async fn metrics(State(r): State<Router>) -> Response {
    prometheus_response(r.prometheus())
}

/// The `/metrics` answer: Prometheus text format 0.0.4.
pub(crate) fn prometheus_response(text: String) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// Serves `GET /metrics` (and `GET /v1/windows`) over TCP until `shutdown` is
/// cancelled: the standalone router's metrics endpoint.
pub(crate) async fn serve_metrics_tcp(
    router: Router,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Axum::new()
        .route("/metrics", get(metrics))
        .route("/v1/windows", get(windows))
        .with_state(router);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

fn error_response(status: StatusCode, error: String, generation: u64) -> Response {
    let body = ErrorBody {
        error,
        generation,
        staged: None,
    };
    (status, Json(body)).into_response()
}

async fn put_config(State(r): State<Router>, body: Bytes) -> Response {
    config_response(&r, body, |cfg| r.apply(cfg))
}

async fn put_staged(State(r): State<Router>, body: Bytes) -> Response {
    config_response(&r, body, |cfg| r.stage(cfg))
}

/// The answer of a push or a stage: `op` applied to the config in `body`.
fn config_response(
    r: &Router,
    body: Bytes,
    op: impl FnOnce(RoutingConfig) -> Result<PushResult, RouterError>,
) -> Response {
    let cfg: RoutingConfig = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                format!("invalid routing config: {e}"),
                r.generation(),
            );
        }
    };
    match op(cfg) {
        Ok(res) => Json(res).into_response(),
        Err(e @ RouterError::StaleGeneration { current, .. }) => {
            tracing::warn!(error = %e, "refused a stale routing config");
            error_response(StatusCode::CONFLICT, e.to_string(), current)
        }
        Err(e @ RouterError::InvalidConfig(_)) => {
            error_response(StatusCode::BAD_REQUEST, e.to_string(), r.generation())
        }
        Err(e) => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            e.to_string(),
            r.generation(),
        ),
    }
}

async fn commit(State(r): State<Router>, body: Bytes) -> Response {
    let req: CommitRequest = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                format!("invalid commit request: {e}"),
                r.generation(),
            );
        }
    };
    match r.commit(req.generation) {
        Ok(res) => Json(res).into_response(),
        Err(e @ RouterError::NotStaged { staged, live, .. }) => {
            tracing::warn!(error = %e, "refused a commit");
            let body = ErrorBody {
                error: e.to_string(),
                generation: live,
                staged,
            };
            (StatusCode::CONFLICT, Json(body)).into_response()
        }
        Err(e) => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            e.to_string(),
            r.generation(),
        ),
    }
}

impl Router {
    /// Serves the admin API on `listener` until `shutdown` is cancelled.
    pub async fn serve_admin(
        &self,
        listener: UnixListener,
        shutdown: CancellationToken,
    ) -> Result<(), RouterError> {
        axum::serve(listener, admin_routes(self.clone()))
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await?;
        Ok(())
    }
}

/// Binds the admin socket at `path`: refuses if a router answers there, removes a stale
/// socket file otherwise, and makes the socket private to the owner.
pub(crate) async fn bind_admin_socket(path: &Path) -> Result<UnixListener, RouterError> {
    if UnixStream::connect(path).await.is_ok() {
        return Err(RouterError::AlreadyRunning {
            socket: path.to_path_buf(),
        });
    }
    bind_socket_file(path)
}

/// Binds a unix socket at `path` private to the owner (mode 0600), removing whatever
/// file was there: a stale socket, or, when taking over, the live one of the router
/// being replaced (which keeps serving the connections it has on the unlinked socket).
pub(crate) fn bind_socket_file(path: &Path) -> Result<UnixListener, RouterError> {
    let err = |source| RouterError::AdminSocket {
        socket: path.to_path_buf(),
        source,
    };
    match std::fs::remove_file(path) {
        Ok(()) => tracing::info!(socket = %path.display(), "replaced the socket file"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    }
    Ok(listener)
}

/// Client of the admin API, for the control plane. One connection per call.
#[derive(Clone, Debug)]
pub struct AdminClient {
    socket: PathBuf,
}

impl AdminClient {
    /// A client for the router whose admin socket is `socket`.
    pub fn new(socket: PathBuf) -> Self {
        AdminClient { socket }
    }

    /// The admin socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET /v1/health`.
    pub async fn health(&self) -> Result<RouterHealth, RouterError> {
        self.json(Method::GET, "/v1/health", None).await
    }

    /// `PUT /v1/config`. A lower generation than the live one fails with
    /// [`RouterError::StaleGeneration`].
    pub async fn push(&self, cfg: &RoutingConfig) -> Result<PushResult, RouterError> {
        self.put_table("/v1/config", cfg).await
    }

    /// `PUT /v1/config/staged`: prepares `cfg` (compiled, listeners bound) without
    /// serving it, replacing any staged table. A generation not higher than the live
    /// one fails with [`RouterError::StaleGeneration`].
    pub async fn stage(&self, cfg: &RoutingConfig) -> Result<PushResult, RouterError> {
        self.put_table("/v1/config/staged", cfg).await
    }

    /// `PUT` of a whole table (a push or a stage); the router's 409 says which
    /// newer generation it serves.
    async fn put_table(&self, path: &str, cfg: &RoutingConfig) -> Result<PushResult, RouterError> {
        let body = serde_json::to_vec(cfg)?;
        match self.json(Method::PUT, path, Some(body)).await {
            Err(RouterError::Status { status: 409, body }) => {
                let current = serde_json::from_str::<ErrorBody>(&body).map_or(0, |e| e.generation);
                Err(RouterError::StaleGeneration {
                    current,
                    pushed: cfg.generation,
                })
            }
            other => other,
        }
    }

    /// `POST /v1/config/commit`: makes the staged table of `generation` live. Succeeds
    /// again, with the time of the first switch, when `generation` is already live;
    /// fails with [`RouterError::NotStaged`] when it is neither staged nor live.
    pub async fn commit(&self, generation: u64) -> Result<CommitResult, RouterError> {
        self.open_for_commit().await?.commit(generation).await
    }

    /// `GET /v1/config`: what the router is serving now.
    pub async fn config(&self) -> Result<RoutingConfig, RouterError> {
        self.json(Method::GET, "/v1/config", None).await
    }

    /// `GET /v1/stats`.
    pub async fn stats(&self) -> Result<RouterStats, RouterError> {
        self.json(Method::GET, "/v1/stats", None).await
    }

    /// `GET /v1/windows?seconds=N`: per (app, version) metrics over the last `seconds`
    /// (1..=64).
    pub async fn windows(&self, seconds: u64) -> Result<WindowsReport, RouterError> {
        self.json(Method::GET, &format!("/v1/windows?seconds={seconds}"), None)
            .await
    }

    /// `GET /v1/mirror`: mirror comparisons per app.
    pub async fn mirror(&self) -> Result<MirrorReports, RouterError> {
        self.json(Method::GET, "/v1/mirror", None).await
    }

    /// `POST /v1/record/{app}`: starts recording `app`'s requests.
    pub async fn arm_record(
        &self,
        app: &str,
        spec: &RecordSpec,
    ) -> Result<RecordingReport, RouterError> {
        let body = serde_json::to_vec(spec)?;
        self.json(Method::POST, &format!("/v1/record/{app}"), Some(body))
            .await
    }

    /// `GET /v1/record/{app}` (`stop`: `DELETE`, which also ends the recording).
    pub async fn recording(&self, app: &str, stop: bool) -> Result<RecordingReport, RouterError> {
        let method = if stop { Method::DELETE } else { Method::GET };
        self.json(method, &format!("/v1/record/{app}"), None).await
    }

    /// `GET /metrics`: the Prometheus text.
    pub async fn metrics(&self) -> Result<String, RouterError> {
        let call = self.call(Method::GET, "/metrics", None);
        let (status, bytes) = tokio::time::timeout(ADMIN_CALL_TIMEOUT, call)
            .await
            .map_err(|_| RouterError::Timeout(ADMIN_CALL_TIMEOUT))??;
        let body = String::from_utf8_lossy(&bytes).into_owned();
        if status != http::StatusCode::OK {
            return Err(RouterError::Status {
                status: status.as_u16(),
                body,
            });
        }
        Ok(body)
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, RouterError> {
        let call = self.call(method, path, body);
        let (status, bytes) = tokio::time::timeout(ADMIN_CALL_TIMEOUT, call)
            .await
            .map_err(|_| RouterError::Timeout(ADMIN_CALL_TIMEOUT))??;
        if status != http::StatusCode::OK {
            return Err(RouterError::Status {
                status: status.as_u16(),
                body: String::from_utf8_lossy(&bytes).into_owned(),
            });
        }
        Ok(serde_json::from_slice(&bytes)?)
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(http::StatusCode, Bytes), RouterError> {
        let mut line = self.open().await?;
        line.send(method, path, body).await
    }

    /// One connection to the router, opened now.
    async fn open(&self) -> Result<AdminLine, RouterError> {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| RouterError::Unreachable {
                    socket: self.socket.clone(),
                    source,
                })?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        Ok(AdminLine {
            sender,
            conn: tokio::spawn(conn),
        })
    }

    /// A connection opened ahead of a commit: a control plane switching many
    /// routers at once opens one to each first (over SSH, opening one costs a
    /// round trip), so that the commits themselves go out together.
    pub async fn open_for_commit(&self) -> Result<CommitLine, RouterError> {
        Ok(CommitLine(self.open().await?))
    }
}

/// One open connection to the admin socket; it ends when dropped.
struct AdminLine {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    conn: tokio::task::JoinHandle<Result<(), hyper::Error>>,
}

impl AdminLine {
    async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(http::StatusCode, Bytes), RouterError> {
        let has_body = body.is_some();
        let mut req = Request::new(Full::new(Bytes::from(body.unwrap_or_default())));
        *req.method_mut() = method;
        *req.uri_mut() = http::Uri::try_from(path).map_err(|e| {
            RouterError::Io(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
        })?;
        req.headers_mut()
            .insert(header::HOST, http::HeaderValue::from_static("baton-router"));
        if has_body {
            req.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
        }
        let resp = self.sender.send_request(req).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok((status, bytes))
    }
}

impl Drop for AdminLine {
    fn drop(&mut self) {
        // The connection ends with the sender; a late error there is irrelevant.
        self.conn.abort();
    }
}

/// A connection to a router kept open for one commit ([`AdminClient::open_for_commit`]).
pub struct CommitLine(AdminLine);

impl CommitLine {
    /// [`AdminClient::commit`] on this connection.
    pub async fn commit(mut self, generation: u64) -> Result<CommitResult, RouterError> {
        let body = serde_json::to_vec(&CommitRequest { generation })?;
        let (status, bytes) = tokio::time::timeout(
            ADMIN_CALL_TIMEOUT,
            self.0.send(Method::POST, "/v1/config/commit", Some(body)),
        )
        .await
        .map_err(|_| RouterError::Timeout(ADMIN_CALL_TIMEOUT))??;
        match status.as_u16() {
            200 => Ok(serde_json::from_slice(&bytes)?),
            409 => {
                let e = serde_json::from_slice::<ErrorBody>(&bytes);
                let (live, staged) = e.map_or((0, None), |e| (e.generation, e.staged));
                Err(RouterError::NotStaged {
                    generation,
                    staged,
                    live,
                })
            }
            status => Err(RouterError::Status {
                status,
                body: String::from_utf8_lossy(&bytes).into_owned(),
            }),
        }
    }
}
