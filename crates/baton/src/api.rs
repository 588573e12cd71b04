//! REST API of the control plane (JSON over HTTP). The CLI and, later, the
//! dashboard use only this.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use baton_engine::{Input, Release, RolloutKind, RolloutPhase};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::auth::{Action, Identity, Role};
use crate::controller::{AppHandle, AppView, Command, CommandError, DeployAccepted, DeployRequest};
use crate::server::ControlPlane;

type Cp = State<Arc<ControlPlane>>;

pub fn router(cp: Arc<ControlPlane>) -> Router {
    Router::new()
        .route("/v1/health", get(|| async { Json(json!({"ok": true})) }))
        .route("/v1/apps", get(list_apps).post(apply))
        .route("/v1/apps/{app}", get(app_status))
        .route("/v1/apps/{app}/deploy", post(deploy))
        .route("/v1/apps/{app}/abort", post(abort))
        .route("/v1/apps/{app}/promote", post(promote))
        .route("/v1/apps/{app}/pause", post(pause))
        .route("/v1/apps/{app}/resume", post(resume))
        .route("/v1/apps/{app}/approve", post(approve))
        .route("/v1/apps/{app}/retry", post(retry))
        .route("/v1/apps/{app}/rollback", post(rollback))
        .route("/v1/apps/{app}/plan", get(plan))
        .route("/v1/apps/{app}/history", get(history))
        .route("/v1/apps/{app}/events", get(events))
        .route("/v1/apps/{app}/delete", post(delete_app))
        .route("/v1/apps/{app}/mirror", get(mirror_diff))
        .route(
            "/v1/apps/{app}/mirror/record",
            post(record_start).get(record_read).delete(record_stop),
        )
        .route("/v1/apps/{app}/mirror/replay", post(replay))
        .route("/v1/hosts", get(hosts))
        .route("/v1/down", post(down))
        .route("/v1/tokens", get(list_tokens).post(create_token))
        .route("/v1/tokens/{name}", axum::routing::delete(revoke_token))
        .route("/v1/whoami", get(whoami))
        .route("/v1/stream", get(stream))
        .route("/v1/audit", get(audit_log))
        .route(
            "/",
            get(|| async { axum::response::Redirect::permanent("/ui/") }),
        )
        .route("/ui/", get(crate::dashboard::index))
        .route("/ui/{file}", get(crate::dashboard::asset))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn_with_state(cp.clone(), authorize))
        .layer(axum::middleware::from_fn(refuse_forgeable))
        .with_state(cp)
}

/// Why a request that changes something could have been sent by a web page
/// the operator happens to open (cross-site request forgery), if it could:
/// browsers send such requests to 127.0.0.1 without asking, as forms or
/// `text/plain` bodies, with their page's `Origin`. baton's own clients send
/// JSON and no `Origin`; a page served by the API itself has the API's origin.
pub fn forgeable(method: &http::Method, headers: &HeaderMap) -> Option<String> {
    if matches!(
        *method,
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
    ) {
        return None;
    }
    let text = |name: http::header::HeaderName| {
        headers
            .get(name)
            .map(|v| v.to_str().unwrap_or("(not text)").to_owned())
    };
    if let Some(site) = text(http::HeaderName::from_static("sec-fetch-site"))
        && (site == "cross-site" || site == "same-site")
    {
        return Some(format!(
            "refused: a browser sent this request from another site (Sec-Fetch-Site: {site})"
        ));
    }
    if let Some(origin) = text(http::header::ORIGIN) {
        let host = text(http::header::HOST).unwrap_or_default();
        let own = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        if own != Some(host.as_str()) {
            return Some(format!(
                "refused: a request from the web page at {origin} may not change anything here"
            ));
        }
    }
    let json = text(http::header::CONTENT_TYPE).is_some_and(|t| {
        t.split(';')
            .next()
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
    });
    (!json).then(|| {
        "refused: a request that changes something must send JSON \
         (Content-Type: application/json), as baton's CLI does"
            .to_owned()
    })
}

/// Every request but the health check needs a valid token whose role may do
/// what the request asks (see [`crate::auth::action_of`]): else 401 or 403, and
/// nothing changes. The handlers get the caller's [`Identity`]: whatever a
/// request says, the operator recorded is the token's name.
async fn authorize(
    State(cp): Cp,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some((action, app)) = crate::auth::action_of(req.method(), req.uri().path()) else {
        return next.run(req).await;
    };
    let source = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map_or_else(|| "unknown".to_string(), |c| c.0.to_string());
    let what = format!("{} {}", req.method(), req.uri());
    // Who asked, what, from where, and how it went: every change and every
    // refusal of one is in the audit log.
    let audit = |actor: &str, outcome: &str, detail: String| -> anyhow::Result<()> {
        let Some(log) = &cp.shared.audit else {
            return Ok(());
        };
        log.append(
            crate::audit::Entry {
                actor: actor.into(),
                source: source.clone(),
                action: action.as_str().into(),
                app: app.clone(),
                outcome: outcome.into(),
                detail,
            },
            cp.shared.now_ms(),
        )
        .map(|_| ())
    };
    let refuse = |actor: &str, code: StatusCode, message: String| {
        if action.mutates()
            && let Err(e) = audit(actor, "refused", format!("{what}: {message}"))
        {
            tracing::warn!(error = %format!("{e:#}"), "cannot write the audit record of a refusal");
        }
        ApiError(code, message).into_response()
    };
    let Some(token) = crate::auth::bearer(req.headers()) else {
        return refuse(
            "anonymous",
            StatusCode::UNAUTHORIZED,
            format!(
                "a token is needed: run `baton login` or set BATON_TOKEN (the first `baton serve` \
                 wrote an admin token to {})",
                crate::tokens::admin_token_path(&cp.shared.data_dir).display()
            ),
        );
    };
    let identity = match crate::tokens::identify(&cp.shared, token) {
        Ok(Some(who)) => who,
        Ok(None) => {
            return refuse(
                "anonymous",
                StatusCode::UNAUTHORIZED,
                "this token is not valid (unknown or revoked): ask an admin for one \
                 (`baton token create NAME --role operator`)"
                    .into(),
            );
        }
        Err(e) => {
            return ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")).into_response();
        }
    };
    if let Err(why) = identity.may(action, app.as_deref()) {
        return refuse(&identity.name, StatusCode::FORBIDDEN, why);
    }
    let actor = identity.name.clone();
    if action.mutates() {
        // Fail closed: nothing is done unless its record is on disk.
        if let Err(e) = audit(&actor, "requested", what.clone()) {
            return ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{e:#}; nothing was done: the audit log must be writable for any change"),
            )
            .into_response();
        }
    }
    req.extensions_mut().insert(identity);
    let response = next.run(req).await;
    if action.mutates() {
        let status = response.status();
        let outcome = if status.is_success() {
            "done"
        } else {
            "failed"
        };
        if let Err(e) = audit(&actor, outcome, format!("{what}: {status}")) {
            tracing::warn!(error = %format!("{e:#}"), "cannot write the audit record of an outcome");
        }
    }
    response
}

/// `baton whoami`: the caller's token name, role and apps.
async fn whoami(Extension(who): Extension<Identity>) -> Json<Identity> {
    Json(who)
}

#[derive(Deserialize)]
struct CreateTokenBody {
    name: String,
    role: String,
    #[serde(default)]
    apps: Vec<String>,
}

/// `baton token create`: the token is in this answer only; the store keeps its hash.
async fn create_token(
    State(cp): Cp,
    Extension(who): Extension<Identity>,
    Json(body): Json<CreateTokenBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let role = Role::parse(&body.role).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))?;
    let token = crate::tokens::create(&cp.shared, &body.name, role, &body.apps, &who.name)
        .map_err(|e| match e {
            crate::tokens::TokenError::Invalid(m) => ApiError(StatusCode::BAD_REQUEST, m),
            crate::tokens::TokenError::Failed(e) => e.into(),
        })?;
    Ok(Json(json!({
        "name": body.name,
        "role": role,
        "apps": body.apps,
        "token": token,
    })))
}

async fn list_tokens(State(cp): Cp) -> Result<Json<serde_json::Value>, ApiError> {
    let tokens = cp
        .shared
        .store()
        .list_tokens()
        .map_err(anyhow::Error::from)?;
    Ok(Json(json!({ "tokens": tokens })))
}

async fn revoke_token(
    State(cp): Cp,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let now = cp.shared.now_ms();
    if !cp
        .shared
        .store()
        .revoke_token(&name, now)
        .map_err(anyhow::Error::from)?
    {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no live token named {name:?}; `baton token list` shows them"),
        ));
    }
    Ok(Json(json!({ "name": name, "revoked": true })))
}

/// [`forgeable`] requests are answered 403 and change nothing.
async fn refuse_forgeable(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    match forgeable(req.method(), req.headers()) {
        Some(why) => ApiError(StatusCode::FORBIDDEN, why).into_response(),
        None => next.run(req).await,
    }
}

/// An API error: HTTP status plus a message that says what to do.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.1)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"))
    }
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        let code = match e {
            CommandError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            CommandError::Engine(_) => StatusCode::CONFLICT,
            CommandError::BadRequest(_) => StatusCode::BAD_REQUEST,
            CommandError::Preflight(_) => StatusCode::UNPROCESSABLE_ENTITY,
        };
        ApiError(code, e.to_string())
    }
}

impl From<crate::server::ApplyError> for ApiError {
    fn from(e: crate::server::ApplyError) -> Self {
        use crate::server::ApplyError;
        match e {
            ApplyError::Refused(m) | ApplyError::Downgrade(m) => ApiError(StatusCode::CONFLICT, m),
            ApplyError::Internal(e) => e.into(),
        }
    }
}

fn not_found(app: &str) -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        format!(
            "no app named {app}; `baton apply -f FILE` registers one, `baton status` lists them"
        ),
    )
}

async fn handle(cp: &ControlPlane, app: &str) -> Result<AppHandle, ApiError> {
    cp.app(app).await.ok_or_else(|| not_found(app))
}

#[derive(Deserialize)]
struct ApplyBody {
    file: String,
    yaml: String,
    /// Confirms a version change `apply` would otherwise refuse (a downgrade).
    #[serde(default)]
    yes: bool,
}

async fn apply(
    State(cp): Cp,
    Extension(who): Extension<Identity>,
    Json(body): Json<ApplyBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let spec = baton_spec::parse_spec(&body.file, &body.yaml)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    who.may(Action::Apply, Some(&spec.name))
        .map_err(|e| ApiError(StatusCode::FORBIDDEN, e))?;
    let applied = cp
        .apply(spec.clone(), &body.file, &body.yaml, body.yes)
        .await?;
    let deployed = match crate::server::deploy_declared_version(&applied.handle, &spec, &who.name)
        .await
    {
        Ok(d) => d,
        Err(e) => {
            // A first apply whose release cannot start (failed pre-flight)
            // leaves no half-registered app behind.
            if applied.created
                && let Err(f) = cp.forget(&spec.name).await
            {
                tracing::warn!(app = %spec.name, error = %format!("{f:#}"), "unregistering the app after its refused first deploy failed");
            }
            return Err(e.into());
        }
    };
    Ok(Json(json!({
        "app": spec.name,
        "created": applied.created,
        "changes": applied.changes,
        "deployed": deployed,
    })))
}

/// `baton delete APP`: drain and stop its instances, remove its routes and
/// its registration; its revisions, history and events stay.
async fn delete_app(
    State(cp): Cp,
    Path(app): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if !cp.delete(&app).await? {
        return Err(not_found(&app));
    }
    Ok(Json(json!({"app": app, "deleted": true})))
}

#[derive(Deserialize)]
struct DeployBody {
    version: String,
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// Start even outside the app's upgrade windows.
    #[serde(default)]
    now: bool,
    /// `rolling`, `blue-green` or `canary` for this rollout only.
    #[serde(default)]
    strategy: Option<String>,
    /// Expected sha256 of the release's program (or image digest).
    #[serde(default)]
    sha256: Option<String>,
    /// A container app's image for this release.
    #[serde(default)]
    image: Option<String>,
}

/// `--strategy NAME` of `deploy` and `plan`: a bad name is bad input (400).
fn parse_strategy(name: Option<&str>) -> Result<Option<baton_spec::StrategyKind>, ApiError> {
    name.map(str::parse)
        .transpose()
        .map_err(|e: baton_spec::UnknownStrategy| ApiError(StatusCode::BAD_REQUEST, e.to_string()))
}

async fn deploy(
    State(cp): Cp,
    Path(app): Path<String>,
    Extension(who): Extension<Identity>,
    Json(body): Json<DeployBody>,
) -> Result<Json<DeployAccepted>, ApiError> {
    let h = handle(&cp, &app).await?;
    let strategy = parse_strategy(body.strategy.as_deref())?;
    if !baton_spec::is_valid_version(&body.version) {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!(
                "version {:?} is not valid: use 1-64 letters, digits, '.', '_' or '-' (e.g. v2 or 1.4.0)",
                body.version
            ),
        ));
    }
    Ok(Json(
        crate::server::send_deploy(
            &h,
            DeployRequest {
                env: body.env,
                now: body.now,
                strategy,
                sha256: body.sha256,
                image: body.image,
                ..DeployRequest::new(body.version, who.name.clone(), RolloutKind::Deploy)
            },
        )
        .await?,
    ))
}

#[derive(Deserialize, Default)]
struct AbortBody {
    #[serde(default)]
    reason: Option<String>,
}

async fn abort(
    State(cp): Cp,
    Path(app): Path<String>,
    Extension(who): Extension<Identity>,
    body: Option<Json<AbortBody>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let reason = body
        .and_then(|b| b.0.reason)
        .unwrap_or_else(|| "no reason given".into());
    let by = who.name.clone();
    let view = handle(&cp, &app).await?.status.borrow().clone();
    if view.state.rollout.is_none()
        && let (Some(w), Some(stable)) = (&view.state.warm, &view.state.stable)
    {
        // Aborting used to be how a blue-green switch was undone; the switch
        // now ends the rollout, so point at what does it.
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!(
                "{app} has no rollout in progress: {} finished at its switch. {} is still kept ready; `baton rollback {app}` switches back to it at once",
                stable.version, w.release.version
            ),
        ));
    }
    operate(&cp, &app, Input::Abort { by, reason }).await?;
    Ok(Json(json!({"app": app, "aborted": true})))
}

/// Send an operator's input to the app's controller and wait for its answer.
async fn operate(cp: &ControlPlane, app: &str, input: Input) -> Result<(), ApiError> {
    let h = handle(cp, app).await?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    h.commands
        .send(Command::Operate { input, reply: tx })
        .await
        .map_err(|_| anyhow::anyhow!("app controller stopped"))?;
    rx.await
        .map_err(|_| anyhow::anyhow!("app controller stopped"))??;
    Ok(())
}

#[derive(Deserialize, Default)]
struct PromoteBody {
    #[serde(default)]
    full: bool,
}

async fn promote(
    State(cp): Cp,
    Path(app): Path<String>,
    Extension(who): Extension<Identity>,
    body: Option<Json<PromoteBody>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let full = body.is_some_and(|b| b.0.full);
    let view = handle(&cp, &app).await?.status.borrow().clone();
    operate(
        &cp,
        &app,
        Input::Promote {
            by: who.name.clone(),
            full,
        },
    )
    .await?;
    // After a blue-green switch, promote lets the old release go.
    let message = match (&view.state.rollout, &view.state.warm) {
        (None, Some(w)) => Some(format!(
            "{} is no longer kept ready: its instances drain",
            w.release.version
        )),
        _ => None,
    };
    Ok(Json(
        json!({"app": app, "promoted": true, "full": full, "message": message}),
    ))
}

async fn pause(
    State(cp): Cp,
    Path(app): Path<String>,
    Extension(who): Extension<Identity>,
) -> Result<Json<serde_json::Value>, ApiError> {
    operate(
        &cp,
        &app,
        Input::Pause {
            by: who.name.clone(),
        },
    )
    .await?;
    Ok(Json(json!({"app": app, "paused": true})))
}

async fn resume(
    State(cp): Cp,
    Path(app): Path<String>,
    Extension(who): Extension<Identity>,
) -> Result<Json<serde_json::Value>, ApiError> {
    operate(
        &cp,
        &app,
        Input::Resume {
            by: who.name.clone(),
        },
    )
    .await?;
    Ok(Json(json!({"app": app, "resumed": true})))
}

async fn approve(
    State(cp): Cp,
    Path(app): Path<String>,
    Extension(who): Extension<Identity>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let by = who.name.clone();
    operate(&cp, &app, Input::Approve { by: by.clone() }).await?;
    Ok(Json(json!({"app": app, "approved_by": by})))
}

/// Run the release of the last aborted or rolled-back rollout again.
async fn retry(
    State(cp): Cp,
    Path(app): Path<String>,
    Extension(who): Extension<Identity>,
) -> Result<Json<DeployAccepted>, ApiError> {
    let h = handle(&cp, &app).await?;
    let operator = who.name.clone();
    let accepted = ask(&h, |reply| Command::Retry { operator, reply }).await?;
    Ok(Json(accepted))
}

/// Send a command that answers with an accepted rollout, and wait for it.
async fn ask(
    h: &AppHandle,
    command: impl FnOnce(tokio::sync::oneshot::Sender<Result<DeployAccepted, CommandError>>) -> Command,
) -> Result<DeployAccepted, ApiError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    h.commands
        .send(command(tx))
        .await
        .map_err(|_| anyhow::anyhow!("app controller stopped"))?;
    Ok(rx
        .await
        .map_err(|_| anyhow::anyhow!("app controller stopped"))??)
}

#[derive(Deserialize, Default)]
struct RollbackBody {
    #[serde(default)]
    to_revision: Option<u32>,
}

/// The answer to `rollback`: what was accepted and, in words, what it does.
#[derive(Serialize)]
struct RollbackAccepted {
    #[serde(flatten)]
    accepted: DeployAccepted,
    /// e.g. "switching all traffic back to v1 at once (...)".
    message: String,
}

async fn rollback(
    State(cp): Cp,
    Path(app): Path<String>,
    Extension(who): Extension<Identity>,
    body: Option<Json<RollbackBody>>,
) -> Result<Json<RollbackAccepted>, ApiError> {
    let view = handle(&cp, &app).await?.status.borrow().clone();
    let current = view
        .state
        .rollout
        .as_ref()
        .map(|r| r.to.version.clone())
        .or_else(|| view.state.stable.as_ref().map(|r| r.version.clone()))
        .unwrap_or_default();
    let accepted = rollback_accepted(cp, app, who, body).await?.0;
    let message = if let Some(r) = &view.state.rollout {
        let from = r.from.as_ref().map_or("", |f| f.version.as_str());
        if is_blue_green(&view.state.params) && r.weight.is_some_and(|w| w < 100) {
            format!(
                "aborting the blue-green rollout to {current}: users stay on {from}, which kept every instance; {current}'s instances drain"
            )
        } else {
            format!(
                "aborting the rollout to {current}: all traffic goes back to {from} at once; {current}'s instances drain"
            )
        }
    } else if view
        .state
        .warm
        .as_ref()
        .is_some_and(|w| w.release.revision == accepted.revision)
    {
        format!(
            "switching all traffic back to {} at once (its instances were kept ready since the switch); {current}'s instances drain",
            accepted.version
        )
    } else {
        let how = match &view.spec.strategy {
            baton_spec::StrategySpec::Rolling(_) => format!(
                "new {} instances replace {current}'s a few at a time",
                accepted.version
            ),
            baton_spec::StrategySpec::Canary(_) => format!(
                "{} goes through the canary steps like any release",
                accepted.version
            ),
            baton_spec::StrategySpec::BlueGreen(b) => format!(
                "{} starts on a full set of instances beside {current}'s, then all traffic switches{}",
                accepted.version,
                if b.auto_promote_after.is_some() {
                    String::new()
                } else {
                    format!(" once approved (`baton approve {}`)", view.state.app)
                }
            ),
        };
        format!(
            "rolling back to {} (revision {}) with the {} strategy: {how}",
            accepted.version,
            accepted.revision,
            view.spec.strategy.kind()
        )
    };
    Ok(Json(RollbackAccepted { accepted, message }))
}

async fn rollback_accepted(
    cp: Arc<ControlPlane>,
    app: String,
    who: Identity,
    body: Option<Json<RollbackBody>>,
) -> Result<Json<DeployAccepted>, ApiError> {
    let h = handle(&cp, &app).await?;
    let to_revision = body.and_then(|b| b.0.to_revision);
    let operator = who.name.clone();
    let accepted = ask(&h, |reply| Command::Rollback {
        to_revision,
        operator,
        reply,
    })
    .await?;
    Ok(Json(accepted))
}

#[derive(Deserialize)]
struct PlanQuery {
    version: String,
    #[serde(default)]
    strategy: Option<String>,
}

async fn plan(
    State(cp): Cp,
    Path(app): Path<String>,
    Query(q): Query<PlanQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let h = handle(&cp, &app).await?;
    let view = h.status.borrow().clone();
    let kind = parse_strategy(q.strategy.as_deref())?;
    let next_revision = cp
        .shared
        .store()
        .list_revisions(&app)
        .map_err(anyhow::Error::from)?
        .iter()
        .map(|r| r.number)
        .max()
        .unwrap_or(0)
        + 1;
    let (strategy, params, plan) = crate::controller::params::plan(
        &view.spec,
        &view.state,
        kind,
        Release {
            revision: next_revision,
            version: q.version.clone(),
        },
    )
    .map_err(|e| ApiError(StatusCode::CONFLICT, e.to_string()))?;
    Ok(Json(json!({
        "app": app,
        "from_version": view.state.stable.as_ref().map(|r| r.version.clone()),
        "to_version": q.version,
        "strategy": strategy,
        "instances": view.spec.instances,
        "max_surge": params.effective_surge(),
        "max_unavailable": params.max_unavailable,
        "min_ready_ms": params.min_ready_ms,
        "peak_instances": plan.peak_instances,
        "min_duration_ms": plan.min_duration_ms,
        "steps": plan.steps,
    })))
}

async fn history(
    State(cp): Cp,
    Path(app): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let registered = handle(&cp, &app).await;
    let records = cp
        .shared
        .store()
        .list_history(&app)
        .map_err(anyhow::Error::from)?;
    // A deleted app keeps its history.
    if records.is_empty() {
        registered?;
    }
    Ok(Json(json!({"app": app, "history": records})))
}

#[derive(Deserialize)]
struct EventsQuery {
    #[serde(default)]
    after: i64,
    #[serde(default)]
    limit: Option<u32>,
}

async fn events(
    State(cp): Cp,
    Path(app): Path<String>,
    Query(q): Query<EventsQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    handle(&cp, &app).await?;
    let events: Vec<serde_json::Value> = cp
        .shared
        .store()
        .list_events(&app, q.after, q.limit.unwrap_or(1000).min(10_000))
        .map_err(anyhow::Error::from)?
        .into_iter()
        .map(|e| {
            // Structured fields as a JSON object, not JSON text inside a string.
            let fields = serde_json::from_str::<serde_json::Value>(&e.fields_json)
                .ok()
                .filter(serde_json::Value::is_object)
                .unwrap_or_else(|| json!({}));
            json!({
                "id": e.id,
                "app": e.app,
                "at_ms": e.at_ms,
                "kind": e.kind,
                "message": e.message,
                "fields": fields,
            })
        })
        .collect();
    Ok(Json(json!({"app": app, "events": events})))
}

async fn down(State(cp): Cp) -> Json<serde_json::Value> {
    let cp2 = cp.clone();
    // Answer first, then tear down (the server stops with it).
    tokio::spawn(async move { cp2.down().await });
    Json(json!({"stopping": true}))
}

/// The hosts of every app that runs on other machines.
/// The hosts of every app that runs on other machines, with the instances
/// each app runs on each.
async fn hosts(
    State(cp): Cp,
    Extension(who): Extension<Identity>,
) -> Json<Vec<crate::fleet::HostState>> {
    let mut states = cp.shared.fleet.states();
    let views: Vec<Arc<AppView>> = cp
        .apps
        .read()
        .await
        .values()
        .map(|h| h.status.borrow().clone())
        .filter(|v| who.may(Action::Read, Some(&v.spec.name)).is_ok())
        .collect();
    // A token limited to some apps sees the hosts of those apps only.
    if !who.apps.is_empty() {
        states.retain(|s| {
            views.iter().any(|v| {
                v.spec
                    .hosts
                    .as_ref()
                    .is_some_and(|h| h.hosts.iter().any(|x| x.name == s.name))
            })
        });
    }
    for view in &views {
        for inst in view.state.instances.iter().filter(|i| i.is_live()) {
            if let Some(state) = states
                .iter_mut()
                .find(|s| inst.host.as_deref() == Some(s.name.as_str()))
            {
                state
                    .instances
                    .entry(view.spec.name.clone())
                    .or_default()
                    .push(format!("{} ({})", inst.id, inst.version));
            }
        }
    }
    Json(states)
}

async fn list_apps(State(cp): Cp, Extension(who): Extension<Identity>) -> Json<serde_json::Value> {
    let (mut apps, _) = statuses(&cp, TRAFFIC_WINDOW_S).await;
    // A token limited to some apps sees only those.
    apps.retain(|a| who.may(Action::Read, Some(&a.app)).is_ok());
    Json(json!({"apps": apps}))
}

/// Every app's status, with the traffic each version answered over the last
/// `seconds` (and that windows report, when the routers answered).
pub async fn statuses(
    cp: &ControlPlane,
    seconds: u64,
) -> (Vec<AppStatus>, Option<baton_routing::stats::WindowsReport>) {
    let handles: Vec<AppHandle> = cp.apps.read().await.values().cloned().collect();
    let sync = cp.shared.router.sync();
    let mut apps: Vec<AppStatus> = handles
        .iter()
        .map(|h| {
            let v = h.status.borrow();
            AppStatus::from_view(&v).with_router(&v, &sync)
        })
        .collect();
    let windows = traffic_windows(cp, &apps, seconds).await;
    for (status, h) in apps.iter_mut().zip(&handles) {
        status.add_live(h, windows.as_ref());
    }
    let listeners = cp.shared.router.listeners().await;
    for (s, h) in apps.iter_mut().zip(&handles) {
        let spec = h.status.borrow().spec.clone();
        if behind_host_routers(&spec) {
            s.hosts_switch = cp.shared.fleet.last_switch(&s.app);
        } else {
            s.not_listening = not_listening(&s.app, listeners.as_ref());
        }
    }
    (apps, windows)
}

/// `GET /v1/stream`: a snapshot of every app the token may read, once a
/// second, as server-sent events (`event: snapshot`).
async fn stream(
    State(cp): Cp,
    Extension(who): Extension<Identity>,
) -> axum::response::sse::Sse<
    impl futures_util::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>,
> {
    let b = cp
        .stream
        .get_or_init(|| crate::stream::Broadcaster::start(cp.clone()))
        .clone();
    let rx = b.subscribe();
    let events = futures_util::stream::unfold((rx, who), |(mut rx, who)| async move {
        loop {
            match rx.recv().await {
                Ok(snapshot) => {
                    let mine = snapshot.filtered(|app| who.may(Action::Read, Some(app)).is_ok());
                    let event = axum::response::sse::Event::default()
                        .event("snapshot")
                        .json_data(&mine)
                        .unwrap_or_default();
                    return Some((Ok(event), (rx, who)));
                }
                // A slow reader skips snapshots; the next one is whole.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    axum::response::sse::Sse::new(events).keep_alive(axum::response::sse::KeepAlive::default())
}

#[derive(Deserialize)]
struct AuditQuery {
    #[serde(default)]
    limit: Option<usize>,
}

/// `GET /v1/audit?limit=N`: the newest N audit records (default 200), newest first.
async fn audit_log(
    State(cp): Cp,
    Query(q): Query<AuditQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Some(log) = &cp.shared.audit else {
        return Ok(Json(json!({"records": []})));
    };
    let text = std::fs::read_to_string(log.path()).unwrap_or_default();
    let limit = q.limit.unwrap_or(200).min(10_000);
    let records: Vec<serde_json::Value> = text
        .lines()
        .rev()
        .take(limit)
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    Ok(Json(json!({ "records": records })))
}

/// Prometheus metrics of the control plane: each instance's CPU and memory as
/// the driver last sampled them, by app, version and instance. (Traffic metrics
/// are the router's own `/metrics`.)
async fn metrics(
    State(cp): Cp,
    Extension(who): Extension<Identity>,
) -> ([(axum::http::header::HeaderName, &'static str); 1], String) {
    let handles: Vec<AppHandle> = cp.apps.read().await.values().cloned().collect();
    let mut rows = Vec::new();
    for h in &handles {
        let app = h.status.borrow().spec.name.clone();
        // A token limited to some apps sees the metrics of those only.
        if who.may(Action::Read, Some(&app)).is_err() {
            continue;
        }
        for (id, r) in h.resources.borrow().iter() {
            rows.push((app.clone(), id.clone(), r.clone()));
        }
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        resource_metrics(&rows),
    )
}

/// Name, type, help and value of one metric family of an instance's resources.
type MetricFamily = (
    &'static str,
    &'static str,
    &'static str,
    fn(&crate::controller::sensors::resources::InstanceResources) -> Option<f64>,
);

/// The Prometheus text of the instances' resource samples.
fn resource_metrics(
    rows: &[(
        String,
        String,
        crate::controller::sensors::resources::InstanceResources,
    )],
) -> String {
    use std::fmt::Write as _;
    let families: [MetricFamily; 4] = [
        (
            "baton_instance_cpu_seconds_total",
            "counter",
            "CPU time the instance used since it started.",
            |r| Some(r.cpu_ms as f64 / 1000.0),
        ),
        (
            "baton_instance_memory_bytes",
            "gauge",
            "Memory the instance uses now.",
            |r| Some(r.memory_bytes as f64),
        ),
        (
            "baton_instance_memory_limit_bytes",
            "gauge",
            "The instance's memory limit.",
            |r| r.memory_limit_bytes.map(|b| b as f64),
        ),
        (
            "baton_instance_oom_kills_total",
            "counter",
            "OOM kills in the instance's memory cgroup.",
            |r| Some(r.oom_kills as f64),
        ),
    ];
    let mut out = String::new();
    for (name, kind, help, value) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (app, id, r) in rows {
            if let Some(v) = value(r) {
                let _ = writeln!(
                    out,
                    "{name}{{app=\"{app}\",version=\"{}\",instance=\"{id}\"}} {v}",
                    r.version
                );
            }
        }
    }
    out
}

/// `baton diff`: the mirror comparisons of the app's routers, merged.
async fn mirror_diff(
    State(cp): Cp,
    Path(app): Path<String>,
) -> Result<Json<baton_routing::stats::AppMirrorReport>, ApiError> {
    let h = handle(&cp, &app).await?;
    let spec = h.status.borrow().spec.clone();
    let report = cp.shared.mirror_of(&spec).await.map_err(|e| {
        ApiError(
            StatusCode::BAD_GATEWAY,
            format!("cannot ask the router: {e}"),
        )
    })?;
    Ok(Json(report.unwrap_or(
        baton_routing::stats::AppMirrorReport {
            app,
            version: None,
            dropped: 0,
            abandoned: 0,
            report: Default::default(),
        },
    )))
}

/// The routers serving `app`'s users, asked the same recording question each.
async fn recording(
    cp: &ControlPlane,
    app: &str,
    start: Option<crate::replay::RecordRequest>,
    stop: bool,
) -> Result<Json<baton_routing::record::RecordingReport>, ApiError> {
    let h = handle(cp, app).await?;
    let view = h.status.borrow().clone();
    let spec = match &start {
        Some(r) if r.requests == 0 || r.requests > baton_routing::record::MAX_RECORDED => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!(
                    "requests: {} is out of range 1..={}",
                    r.requests,
                    baton_routing::record::MAX_RECORDED
                ),
            ));
        }
        Some(r) => Some(crate::replay::record_spec(&view, r.requests)),
        None => None,
    };
    let links = cp.shared.routers_of(&view.spec);
    if links.is_empty() {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("no router of {app} is reachable now; see `baton hosts`"),
        ));
    }
    let answers =
        futures_util::future::join_all(links.iter().map(|l| l.record(app, spec.as_ref(), stop)))
            .await;
    let mut reports = Vec::new();
    for a in answers {
        reports.push(a.map_err(|e| {
            ApiError(
                StatusCode::BAD_GATEWAY,
                format!("cannot ask the router: {e}"),
            )
        })?);
    }
    Ok(Json(crate::replay::merge_recordings(reports)))
}

async fn record_start(
    State(cp): Cp,
    Path(app): Path<String>,
    Json(body): Json<crate::replay::RecordRequest>,
) -> Result<Json<baton_routing::record::RecordingReport>, ApiError> {
    recording(&cp, &app, Some(body), false).await
}

async fn record_read(
    State(cp): Cp,
    Path(app): Path<String>,
) -> Result<Json<baton_routing::record::RecordingReport>, ApiError> {
    recording(&cp, &app, None, false).await
}

async fn record_stop(
    State(cp): Cp,
    Path(app): Path<String>,
) -> Result<Json<baton_routing::record::RecordingReport>, ApiError> {
    recording(&cp, &app, None, true).await
}

/// `baton mirror replay`: recorded requests against a preview of a version.
async fn replay(
    State(cp): Cp,
    Path(app): Path<String>,
    Json(body): Json<crate::replay::ReplayRequest>,
) -> Result<Json<crate::replay::ReplayReport>, ApiError> {
    let h = handle(&cp, &app).await?;
    let view = h.status.borrow().clone();
    match crate::replay::replay(&cp.shared, &view, body).await {
        Ok(r) => Ok(Json(r)),
        Err(crate::replay::ReplayError::BadRequest(m)) => Err(ApiError(StatusCode::BAD_REQUEST, m)),
        Err(crate::replay::ReplayError::Failed(e)) => Err(e.into()),
    }
}

async fn app_status(State(cp): Cp, Path(app): Path<String>) -> Result<Json<AppStatus>, ApiError> {
    let h = handle(&cp, &app).await?;
    let v = h.status.borrow().clone();
    let mut status = AppStatus::from_view(&v).with_router(&v, &cp.shared.router.sync());
    let windows = traffic_windows(&cp, std::slice::from_ref(&status), TRAFFIC_WINDOW_S).await;
    status.add_live(&h, windows.as_ref());
    if behind_host_routers(&v.spec) {
        // Its users reach the routers on its hosts (`baton hosts`).
        status.hosts_switch = cp.shared.fleet.last_switch(&app);
    } else {
        let listeners = cp.shared.router.listeners().await;
        status.not_listening = not_listening(&app, listeners.as_ref());
    }
    Ok(Json(status))
}

/// Seconds of traffic `status` compares the set weights with.
const TRAFFIC_WINDOW_S: u64 = 10;

/// The router's per-version counts over the last [`TRAFFIC_WINDOW_S`]; `None`
/// when no app takes traffic or the router does not answer quickly (status
/// then shows the set weights only).
async fn traffic_windows(
    cp: &ControlPlane,
    apps: &[AppStatus],
    seconds: u64,
) -> Option<baton_routing::stats::WindowsReport> {
    if apps.iter().all(|a| a.traffic.is_empty()) {
        return None;
    }
    // The local router's, and every host router's (fleet apps).
    let links: Vec<_> = cp
        .shared
        .fleet
        .states()
        .iter()
        .filter_map(|s| cp.shared.fleet.host(&s.name))
        .collect();
    let mut calls = vec![Box::pin(cp.shared.router.windows(seconds))
        as std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send + '_>>];
    for link in &links {
        calls.push(Box::pin(async move {
            link.windows(seconds)
                .await
                .unwrap_or(Err(baton_router::RouterError::Timeout(
                    std::time::Duration::ZERO,
                )))
        }));
    }
    let answers = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        futures_util::future::join_all(calls),
    )
    .await
    .ok()?;
    let reports: Vec<_> = answers.into_iter().filter_map(Result::ok).collect();
    (!reports.is_empty()).then(|| crate::routing::merge_windows(reports))
}

/// Why the router does not listen for `app` (its main or preview address),
/// from the router's listeners; `None` when it does, or when the router cannot
/// be asked. An app missing from the router's table altogether is not served
/// either: its last routing table was refused (or the router restarted).
/// The app's users reach a router on each of its hosts, not the local one.
fn behind_host_routers(spec: &baton_spec::AppSpec) -> bool {
    spec.hosts
        .as_ref()
        .is_some_and(|h| h.router == baton_spec::RouterPlacement::PerHost)
}

fn not_listening(
    app: &str,
    listeners: Option<&BTreeMap<String, (std::net::SocketAddr, Option<String>)>>,
) -> Option<String> {
    let listeners = listeners?;
    if !listeners.contains_key(app) {
        return Some(format!(
            "the router has no route for {app}: its routing table was not accepted (see the serve log)"
        ));
    }
    let reasons: Vec<String> = [app.to_string(), crate::routing::preview_entry(app)]
        .iter()
        .filter_map(|entry| listeners.get(entry))
        .filter_map(|(listen, error)| {
            Some(format!(
                "the router cannot listen on {listen}: {}",
                error.as_ref()?
            ))
        })
        .collect();
    (!reasons.is_empty()).then(|| reasons.join("; "))
}

/// `baton status --json`.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct AppStatus {
    pub app: String,
    pub environment: String,
    pub phase: String,
    pub stable_version: Option<String>,
    pub target_version: Option<String>,
    pub strategy: String,
    pub listen: String,
    pub generation: u64,
    pub instances: Vec<InstanceStatus>,
    pub traffic: Vec<TrafficShare>,
    pub rollout: Option<RolloutStatus>,
    pub last_result: Option<LastResult>,
    /// Set while the router has not acknowledged this app's newest routing
    /// table: drains (and so the rollout) hold until it does.
    #[serde(default)]
    pub routing_held: Option<RoutingHeld>,
    /// Set when the router has not been able to listen for the app (its
    /// `listen` or preview address): users cannot reach it. Says why.
    #[serde(default)]
    pub not_listening: Option<String>,
    /// Canary and blue-green: the step the rollout is at and what it waits for.
    #[serde(default)]
    pub step: Option<StepStatus>,
    /// Blue-green before the switch: where the new release can be tried.
    #[serde(default)]
    pub preview: Option<PreviewStatus>,
    /// Blue-green after the switch: the old release, kept ready for an instant rollback.
    #[serde(default)]
    pub warm: Option<WarmStatus>,
    /// The newest analysis measurement of the rollout in flight.
    #[serde(default)]
    pub last_check: Option<crate::controller::LastCheck>,
    /// The comparisons of the rollout's newest mirror step (`baton diff` has the
    /// differing pairs).
    #[serde(default)]
    pub mirror: Option<crate::controller::MirrorSummary>,
    /// The app's webhooks: delivered, failed, waiting, the last error.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<crate::notify::WebhookStatus>,
    /// Seconds of traffic `traffic[].actual` covers (when the router answered).
    #[serde(default)]
    pub traffic_window_s: Option<u64>,
    /// An app behind a router on each of its hosts: its newest traffic switch
    /// across them, and how far apart the hosts switched.
    #[serde(default)]
    pub hosts_switch: Option<crate::fleet::SwitchRecord>,
}

/// The router has not acknowledged an app's routing table.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct RoutingHeld {
    /// Which router (its admin socket).
    pub router: String,
    /// Since when (ms since the epoch).
    pub since_ms: Option<i64>,
    /// The last push or check error.
    pub error: Option<String>,
}

/// `status.step`: e.g. `step 3 of 7: analysis (40 s left, last check: ...)`.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct StepStatus {
    /// 1-based; `count + 1` while the new release is promoted to 100%.
    pub number: usize,
    pub count: usize,
    pub description: String,
    pub waiting: baton_engine::StepWait,
    /// The whole line `status` prints.
    pub text: String,
    /// Every step of the rollout, described, in order (the dashboard's timeline).
    #[serde(default)]
    pub steps: Vec<String>,
}

/// `status.preview`.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct PreviewStatus {
    pub version: String,
    /// The preview listener (`preview_listen`), if the spec has one.
    pub listen: Option<String>,
    /// The request header that reaches the new release on the app's own address.
    pub header: String,
}

/// `status.warm`.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct WarmStatus {
    pub version: String,
    pub revision: u32,
    /// Its instances are drained at this time (ms since the epoch).
    pub until_ms: i64,
    /// Its instances still ready.
    pub ready: u32,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct InstanceStatus {
    pub id: String,
    pub version: String,
    pub revision: u32,
    pub ready: bool,
    pub state: String,
    pub address: Option<String>,
    /// What runs it: `pid 1234`, `container 3f2a9c1b7d4e`.
    #[serde(default)]
    pub runs: Option<String>,
    /// The image digest a container runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    /// CPU in use at the last sample, in cores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_cores: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_bytes: Option<u64>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct TrafficShare {
    pub version: String,
    /// Percentage of new requests.
    pub weight: u32,
    /// Percentage of the requests of the last `traffic_window_s` seconds this
    /// version actually answered (when the router answered and saw any).
    #[serde(default)]
    pub actual: Option<f64>,
    /// Requests this version answered in that window.
    #[serde(default)]
    pub requests: Option<u64>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct RolloutStatus {
    pub kind: RolloutKind,
    pub from_version: Option<String>,
    pub to_version: String,
    pub revision: u32,
    pub operator: String,
    pub started_ms: i64,
    pub history_id: i64,
    pub restarts: u32,
    pub reason: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct LastResult {
    pub history_id: i64,
    pub result: String,
    pub version: String,
    pub notes: String,
    pub finished_ms: i64,
}

impl AppStatus {
    pub fn from_view(v: &AppView) -> Self {
        let s = &v.state;
        let routing = s.routing();
        let total: u32 = routing.iter().map(|g| g.weight).sum();
        let mut traffic: Vec<TrafficShare> = Vec::new();
        let mut assigned = 0;
        for (i, g) in routing.iter().enumerate() {
            // Largest remainder would be fairer; the last group takes the rest so
            // shares always add up to 100.
            let w = if i + 1 == routing.len() {
                100 - assigned
            } else {
                g.weight * 100 / total.max(1)
            };
            assigned += w;
            traffic.push(TrafficShare {
                version: g.version.clone(),
                weight: w,
                actual: None,
                requests: None,
            });
        }
        AppStatus {
            app: s.app.clone(),
            environment: v.spec.environment.clone(),
            phase: s.phase_name().to_string(),
            stable_version: s.stable.as_ref().map(|r| r.version.clone()),
            target_version: s
                .rollout
                .as_ref()
                .map(|r| r.to.version.clone())
                .or_else(|| s.stable.as_ref().map(|r| r.version.clone())),
            strategy: v.spec.strategy.kind().to_string(),
            listen: v.spec.listen.to_string(),
            generation: v.generation,
            instances: s
                .instances
                .iter()
                .map(|i| InstanceStatus {
                    id: i.id.clone(),
                    version: i.version.clone(),
                    revision: i.revision,
                    ready: i.is_routable(),
                    state: match i.phase {
                        baton_engine::InstancePhase::Pending => "pending",
                        baton_engine::InstancePhase::Starting => "starting",
                        baton_engine::InstancePhase::Ready { .. } => "ready",
                        baton_engine::InstancePhase::Draining { .. } => "draining",
                        baton_engine::InstancePhase::Stopping => "stopping",
                    }
                    .to_string(),
                    address: i.address.clone(),
                    runs: i.handle.as_ref().map(|h| h.locator.to_string()),
                    image_digest: i.handle.as_ref().and_then(|h| match h.locator.local() {
                        baton_engine::Locator::Container { digest, .. } => Some(digest.clone()),
                        _ => None,
                    }),
                    cpu_cores: None,
                    memory_bytes: None,
                    memory_limit_bytes: None,
                })
                .collect(),
            traffic,
            rollout: s.rollout.as_ref().map(|r| RolloutStatus {
                kind: r.kind,
                from_version: r.from.as_ref().map(|f| f.version.clone()),
                to_version: r.to.version.clone(),
                revision: r.to.revision,
                operator: r.operator.clone(),
                started_ms: r.started_ms,
                history_id: r.history_id,
                restarts: r.restarts,
                // Why it is rolling back, or why it is paused.
                reason: match &r.phase {
                    RolloutPhase::Progressing => r.paused.as_ref().map(ToString::to_string),
                    RolloutPhase::RollingBack { reason, .. } => Some(reason.clone()),
                },
            }),
            last_result: s.last_finished.as_ref().map(|f| LastResult {
                history_id: f.history_id,
                result: f.outcome.as_str().to_string(),
                version: f.version.clone(),
                notes: f.notes.clone(),
                finished_ms: f.finished_ms,
            }),
            routing_held: None,
            not_listening: None,
            step: baton_engine::progress(s, crate::effects::wall_clock_ms()).map(|p| StepStatus {
                text: step_text(&s.app, &p, None),
                number: p.number,
                count: p.count,
                description: p.description,
                waiting: p.waiting,
                steps: match &s.params.strategy {
                    baton_engine::Strategy::Stepped { steps } => {
                        steps.iter().map(baton_engine::describe_step).collect()
                    }
                    _ => Vec::new(),
                },
            }),
            preview: preview_of(v),
            warm: s.warm.as_ref().map(|w| WarmStatus {
                version: w.release.version.clone(),
                revision: w.release.revision,
                until_ms: w.until_ms,
                ready: s
                    .instances
                    .iter()
                    .filter(|i| i.revision == w.release.revision && i.is_routable())
                    .count() as u32,
            }),
            last_check: None,
            mirror: None,
            webhooks: Vec::new(),
            traffic_window_s: None,
            hosts_switch: None,
        }
    }

    /// What the controller and the router know now: the newest analysis
    /// check of the rollout in flight, and the traffic each version actually
    /// answered over the last window.
    fn add_live(
        &mut self,
        handle: &AppHandle,
        windows: Option<&baton_routing::stats::WindowsReport>,
    ) {
        let resources = handle.resources.borrow().clone();
        for i in &mut self.instances {
            if let Some(r) = resources.get(&i.id) {
                i.cpu_cores = r.cpu_cores;
                i.memory_bytes = Some(r.memory_bytes);
                i.memory_limit_bytes = r.memory_limit_bytes;
            }
        }
        self.webhooks = handle
            .notifier
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|n| n.status())
            .unwrap_or_default();
        let mirror = handle.mirror.borrow().clone();
        self.mirror = mirror.filter(|m| {
            self.rollout
                .as_ref()
                .is_some_and(|r| r.history_id == m.history_id)
        });
        let check = handle.last_check.borrow().clone();
        self.last_check = check.filter(|c| {
            self.rollout
                .as_ref()
                .is_some_and(|r| r.history_id == c.history_id)
        });
        if let (Some(step), Some(check)) = (&mut self.step, &self.last_check) {
            let p = baton_engine::StepProgress {
                number: step.number,
                count: step.count,
                step: None,
                description: step.description.clone(),
                waiting: step.waiting.clone(),
            };
            step.text = step_text(&self.app, &p, Some(check));
        }
        let Some(report) = windows else { return };
        let Some(app) = report.apps.iter().find(|a| a.app == self.app) else {
            return;
        };
        let total: u64 = app.versions.iter().map(|v| v.stats.requests).sum();
        self.traffic_window_s = Some(report.window_s);
        for t in &mut self.traffic {
            let requests = app
                .versions
                .iter()
                .find(|v| v.version == t.version)
                .map_or(0, |v| v.stats.requests);
            t.requests = Some(requests);
            t.actual = (total > 0).then(|| requests as f64 * 100.0 / total as f64);
        }
    }

    /// Add what the router link knows about this app's routing.
    pub fn with_router(mut self, v: &AppView, sync: &crate::routing::RouterSync) -> Self {
        if sync.acknowledged < v.routing_generation {
            self.routing_held = Some(RoutingHeld {
                router: sync.router.clone(),
                since_ms: sync.behind_since_ms,
                error: sync.last_error.clone(),
            });
        }
        self
    }
}

/// Blue-green before the switch: how to reach the new release.
fn preview_of(v: &AppView) -> Option<PreviewStatus> {
    let r = v.state.rollout.as_ref()?;
    if r.phase != RolloutPhase::Progressing || r.weight.is_none_or(|w| w >= 100) {
        return None;
    }
    if !is_blue_green(&v.state.params) {
        return None;
    }
    // The spec's own blue-green settings, or the defaults of a one-off
    // `deploy --strategy blue-green`.
    let baton_spec::StrategySpec::BlueGreen(b) =
        v.spec.strategy_of_kind(baton_spec::StrategyKind::BlueGreen)
    else {
        return None;
    };
    Some(PreviewStatus {
        version: r.to.version.clone(),
        listen: b.preview_listen.map(|a| a.to_string()),
        header: format!("{}: {}", b.preview_header.name, b.preview_header.equals),
    })
}

/// The engine runs a blue-green rollout (its steps end with the scale-down delay).
fn is_blue_green(params: &baton_engine::Params) -> bool {
    matches!(&params.strategy, baton_engine::Strategy::Stepped { steps }
        if steps.iter().any(|s| matches!(s, baton_engine::Step::ScaleDownDelay { .. })))
}

/// The line `status` prints for a stepped rollout, e.g.
/// `step 3 of 7: analysis (40 s left, last check: error rate 0.4% ≤ 5%)` or
/// `step 4 of 7: waiting for approval — run `baton approve shop``.
pub fn step_text(
    app: &str,
    p: &baton_engine::StepProgress,
    check: Option<&crate::controller::LastCheck>,
) -> String {
    use baton_engine::StepWait;
    let head = if p.number > p.count {
        format!("all {} steps done: {}", p.count, p.description)
    } else {
        format!("step {} of {}", p.number, p.count)
    };
    let what = &p.description;
    let check = check.map(|c| {
        format!(
            ", last check: {}{}",
            if c.passed { "" } else { "FAILED " },
            c.text
        )
    });
    let check = check.unwrap_or_default();
    match &p.waiting {
        StepWait::Window { opens_ms } => format!(
            "{head}: {what} — waits for the upgrade window ({} from now; `baton deploy {app} VERSION --now` starts at once)",
            fmt_secs((opens_ms - crate::effects::wall_clock_ms()).max(0) as u64 / 1000)
        ),
        StepWait::Paused { why } => {
            format!("{head}: {what} — {why}; run `baton resume {app}` to continue")
        }
        StepWait::Instances { available, needed } => format!(
            "{head}: {what} (waiting for the new release's instances: {available} of {needed} available{check})"
        ),
        StepWait::Time { remaining_ms } => {
            format!(
                "{head}: {what} ({} left{check})",
                fmt_secs(remaining_ms.div_ceil(1000))
            )
        }
        StepWait::Approval => {
            format!("{head}: waiting for approval — run `baton approve {app}`")
        }
        StepWait::Promotion => {
            format!("{head}: paused until promoted — run `baton promote {app}`")
        }
        StepWait::Checks => format!("{head}: {what} (running)"),
        StepWait::Drain { remaining } => format!(
            "{head} (the old release's last {remaining} instance{} draining)",
            if *remaining == 1 { "" } else { "s" }
        ),
    }
}

/// `40 s`, `3 min 20 s`, `2 h 5 min`.
fn fmt_secs(s: u64) -> String {
    match s {
        0..60 => format!("{s} s"),
        60..3600 if s.is_multiple_of(60) => format!("{} min", s / 60),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::sensors::resources::InstanceResources;

    #[test]
    fn resource_metrics_name_app_version_and_instance() {
        let r = InstanceResources {
            version: "v2".into(),
            cpu_ms: 1500,
            memory_bytes: 4096,
            memory_limit_bytes: Some(64 << 20),
            ..InstanceResources::default()
        };
        let text = resource_metrics(&[("boxes".into(), "boxes-r2-1".into(), r)]);
        assert!(text.contains(
            "baton_instance_cpu_seconds_total{app=\"boxes\",version=\"v2\",instance=\"boxes-r2-1\"} 1.5\n"
        ), "{text}");
        assert!(text.contains("baton_instance_memory_bytes{app=\"boxes\",version=\"v2\",instance=\"boxes-r2-1\"} 4096\n"), "{text}");
        assert!(text.contains("baton_instance_memory_limit_bytes{app=\"boxes\",version=\"v2\",instance=\"boxes-r2-1\"} 67108864\n"), "{text}");
        assert!(
            text.contains("# TYPE baton_instance_oom_kills_total counter"),
            "{text}"
        );
    }
}

#[cfg(test)]
mod forgery_tests {
    use super::forgeable;
    use axum::http::{HeaderMap, HeaderValue, Method};

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn only_json_without_a_foreign_origin_may_change_anything() {
        let cli = headers(&[
            ("host", "127.0.0.1:7077"),
            ("content-type", "application/json"),
        ]);
        assert_eq!(forgeable(&Method::POST, &cli), None);
        let charset = headers(&[("content-type", "application/json; charset=utf-8")]);
        assert_eq!(forgeable(&Method::POST, &charset), None);
        let same_origin = headers(&[
            ("host", "127.0.0.1:7077"),
            ("origin", "http://127.0.0.1:7077"),
            ("content-type", "application/json"),
        ]);
        assert_eq!(forgeable(&Method::POST, &same_origin), None);
        for bad in [
            headers(&[("content-type", "text/plain")]),
            headers(&[("content-type", "application/x-www-form-urlencoded")]),
            headers(&[("content-type", "multipart/form-data; boundary=x")]),
            headers(&[]),
            headers(&[
                ("host", "127.0.0.1:7077"),
                ("origin", "http://evil.example"),
                ("content-type", "application/json"),
            ]),
            headers(&[("origin", "null"), ("content-type", "application/json")]),
            headers(&[
                ("sec-fetch-site", "cross-site"),
                ("content-type", "application/json"),
            ]),
        ] {
            assert!(forgeable(&Method::POST, &bad).is_some(), "{bad:?}");
        }
        // Reads change nothing, whoever asks.
        let page = headers(&[("origin", "http://evil.example")]);
        assert_eq!(forgeable(&Method::GET, &page), None);
    }
}
