//! Checking a release against real traffic before any user reaches it: a
//! recorded slice of an app's requests (`baton mirror record`, kept redacted by
//! the routers) is sent again to a preview instance of the new version, which
//! takes no user traffic, and to a ready instance of the stable one; the two
//! answers are compared by the same rules as a mirror step's
//! ([`baton_routing::mirror::CompareRules`]), so a replay reports what live
//! mirroring would.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use baton_routing::mirror::{Captured, CompareRules, MirrorReport, MismatchSamples};
use baton_routing::record::{RecordSpec, RecordedRequest, RecordingReport};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};

use crate::controller::{AppView, Shared};

/// Requests sent at once during a replay (to each side).
const REPLAY_CONCURRENCY: usize = 8;
/// Longest wait for one answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Body of `POST /v1/apps/{app}/mirror/record`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordRequest {
    /// Stop after this many requests.
    pub requests: usize,
}

/// Body of `POST /v1/apps/{app}/mirror/replay`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplayRequest {
    /// The release to preview.
    pub version: String,
    /// Its environment, as `deploy --env` gives a release.
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    pub requests: Vec<RecordedRequest>,
}

/// Answer of a replay: the comparisons, as `baton diff` shows a mirror step's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplayReport {
    pub app: String,
    /// The previewed release, and the stable one it was compared with.
    pub version: String,
    pub against: String,
    /// Requests sent to both.
    pub sent: usize,
    /// Requests left out: not of a method the app's mirror settings copy.
    pub skipped: usize,
    pub report: MirrorReport,
}

/// What the routers of an app recorded, merged (oldest request first).
pub fn merge_recordings(reports: Vec<RecordingReport>) -> RecordingReport {
    let mut out = RecordingReport::default();
    for r in reports {
        out.armed |= r.armed;
        out.skipped += r.skipped;
        out.requests.extend(r.requests);
    }
    out.requests.sort_by_key(|q| q.at_ms);
    out
}

/// What the routers of `view`'s app are asked to record: `requests` of the
/// methods its mirror settings copy, with its credential headers left out.
pub fn record_spec(view: &AppView, requests: usize) -> RecordSpec {
    let m = &view.spec.mirror;
    RecordSpec {
        max_requests: requests,
        max_body_bytes: usize::try_from(m.requests.max_body_bytes).unwrap_or(usize::MAX),
        methods: m.requests.methods.clone(),
        redact_headers: m.redact_headers.clone(),
    }
}

/// Why a replay cannot run: the request is wrong (the message says how to fix
/// it), or something failed on the way.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// Starts a preview instance of `req.version`, sends every request to it and to
/// a ready stable instance, compares the answers, and stops the preview.
pub async fn replay(
    shared: &Shared,
    view: &AppView,
    req: ReplayRequest,
) -> Result<ReplayReport, ReplayError> {
    let spec = &view.spec;
    let app = spec.name.clone();
    if spec.hosts.is_some() {
        return Err(ReplayError::BadRequest(format!(
            "{app} runs on other hosts; a replay previews the new version on this machine \
             only, so it cannot check {app} yet: use a mirror step in its canary instead"
        )));
    }
    let stable = view.state.stable.as_ref().ok_or_else(|| {
        ReplayError::BadRequest(format!(
            "{app} has no stable version to compare with yet: deploy one first"
        ))
    })?;
    let against = stable.version.clone();
    let stable_addr = view
        .state
        .instances
        .iter()
        .filter(|i| i.revision == stable.revision && i.is_routable())
        .find_map(|i| i.address.as_deref()?.parse::<SocketAddr>().ok())
        .ok_or_else(|| {
            ReplayError::BadRequest(format!(
                "no instance of {app}'s stable version {against} is ready to answer; \
                 try again once `baton status {app}` shows one"
            ))
        })?;
    if !baton_spec::is_valid_version(&req.version) {
        return Err(ReplayError::BadRequest(format!(
            "version {:?} is not valid: use 1-64 letters, digits, '.', '_' or '-'",
            req.version
        )));
    }
    let cfg = crate::routing::mirror_config(&req.version, 100.0, &spec.mirror, String::new());
    let rules = CompareRules::compile(&cfg)
        .map_err(|e| ReplayError::BadRequest(format!("the app's mirror settings: {e}")))?;
    let (requests, skipped): (Vec<_>, Vec<_>) = req.requests.into_iter().partition(|q| {
        http::Method::from_bytes(q.method.as_bytes())
            .is_ok_and(|m| spec.mirror.requests.methods.iter().any(|x| x == m.as_str()))
    });
    if requests.is_empty() {
        return Err(ReplayError::BadRequest(format!(
            "none of the requests has a method {app}'s mirror settings copy ({}); \
             record some with `baton mirror record {app}`",
            spec.mirror.requests.methods.join(", ")
        )));
    }
    let preview = Preview::start(shared, view, &req.version, &req.env).await?;
    let outcome = compare_all(
        &rules,
        &requests,
        stable_addr,
        preview.address,
        spec.mirror.samples as usize,
    )
    .await;
    preview.stop(shared).await;
    let samples = outcome?;
    Ok(ReplayReport {
        app,
        version: req.version,
        against,
        sent: requests.len(),
        skipped: skipped.len(),
        report: samples.report(),
    })
}

/// A preview instance: the new version, started like any instance of the app
/// but known to nobody else (no router sends it traffic; a control plane that
/// restarts while one runs stops it, as an instance it never recorded).
struct Preview {
    handle: baton_engine::InstanceHandle,
    address: SocketAddr,
}

impl Preview {
    async fn start(
        shared: &Shared,
        view: &AppView,
        version: &str,
        env: &std::collections::BTreeMap<String, String>,
    ) -> anyhow::Result<Preview> {
        let spec = &view.spec;
        let id = format!(
            "{}-preview-{}-{:08x}",
            spec.name,
            version.replace('.', "-"),
            fastrand::u32(..)
        );
        let rev = baton_store::RevisionRecord {
            app: spec.name.clone(),
            number: 0,
            version: version.to_string(),
            env_json: serde_json::to_string(env)?,
            spec_json: serde_json::to_string(spec)?,
            created_by: "baton mirror replay".into(),
            created_ms: shared.now_ms(),
            image: None,
        };
        let handle = crate::controller::launch::launch_revision(shared, &rev, &id, None)
            .await
            .with_context(|| format!("starting a preview of {} {version}", spec.name))?;
        let preview = Preview {
            address: handle.address,
            handle,
        };
        // Ready as the spec's readiness says, within its progress budget.
        let r = &spec.readiness;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if shared
                .probe
                .check(preview.address, &r.path, r.timeout)
                .await
            {
                return Ok(preview);
            }
            let exited = !matches!(
                shared.driver.status(&preview.handle).await,
                baton_driver::InstanceStatus::Running
            );
            if exited || Instant::now() > deadline {
                preview.stop(shared).await;
                anyhow::bail!(
                    "the preview of {} {version} {} (its log: {})",
                    spec.name,
                    if exited {
                        "exited before it was ready"
                    } else {
                        "did not become ready within 120 s"
                    },
                    shared
                        .data_dir
                        .join("logs")
                        .join(&spec.name)
                        .join(format!("{id}.log"))
                        .display()
                );
            }
            tokio::time::sleep(r.interval.min(Duration::from_millis(200))).await;
        }
    }

    async fn stop(self, shared: &Shared) {
        if let Err(e) = shared
            .driver
            .stop(&self.handle, Duration::from_secs(10))
            .await
        {
            tracing::warn!(instance = %self.handle.instance_id, error = %e, "cannot stop the replay preview");
        }
    }
}

/// Sends every request to both addresses and compares the answers.
async fn compare_all(
    rules: &CompareRules,
    requests: &[RecordedRequest],
    stable: SocketAddr,
    preview: SocketAddr,
    max_samples: usize,
) -> anyhow::Result<MismatchSamples> {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut samples = MismatchSamples::new(max_samples);
    let rules_for_calls = std::sync::Arc::new(rules.clone());
    let mut answers = futures_util::stream::iter(requests.iter().cloned())
        .map(move |q| {
            let (client, rules) = (client.clone(), rules_for_calls.clone());
            async move {
                let (a, b) = tokio::join!(
                    send(&client, &rules, stable, &q),
                    send(&client, &rules, preview, &q)
                );
                (q, a, b)
            }
        })
        .buffered(REPLAY_CONCURRENCY);
    while let Some((q, a, b)) = answers.next().await {
        let primary =
            a.with_context(|| format!("the stable version did not answer {} {}", q.method, q.uri))?;
        let outcome = match b {
            Ok(mirror) => {
                let outcome = rules.compare(&primary, &mirror);
                (outcome, mirror)
            }
            Err(e) => (
                baton_routing::mirror::Comparison::Mismatch {
                    differences: vec![baton_routing::mirror::Difference::MirrorFailed {
                        error: format!("{e:#}"),
                    }],
                },
                Captured::default(),
            ),
        };
        let path = q.uri.split('?').next().unwrap_or("/");
        samples.record(&q.method, path, &primary, &outcome.1, &outcome.0, q.at_ms);
    }
    Ok(samples)
}

/// One recorded request to `addr`, its answer captured as the router would.
async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    rules: &CompareRules,
    addr: SocketAddr,
    q: &RecordedRequest,
) -> anyhow::Result<Captured> {
    let mut req = http::Request::builder()
        .method(q.method.as_str())
        .uri(format!("http://{addr}{}", q.uri));
    for (name, value) in &q.headers {
        if name.eq_ignore_ascii_case("host") {
            continue;
        }
        req = req.header(name, value);
    }
    let req = req
        .body(Full::new(Bytes::from(q.body.clone())))
        .with_context(|| format!("recorded request {} {} is not valid", q.method, q.uri))?;
    let call = async {
        let resp = client.request(req).await?;
        let (parts, mut body) = resp.into_parts();
        let max = rules.max_body_bytes();
        let mut buf = BytesMut::new();
        let mut truncated = false;
        while let Some(frame) = body.frame().await {
            if let Ok(d) = frame?.into_data() {
                let room = max - buf.len();
                if d.len() > room {
                    buf.extend_from_slice(&d[..room]);
                    truncated = true;
                    break;
                }
                buf.extend_from_slice(&d);
            }
        }
        anyhow::Ok(Captured {
            status: parts.status.as_u16(),
            headers: rules.capture_headers(&parts.headers),
            body: buf.freeze(),
            truncated,
        })
    };
    tokio::time::timeout(ANSWER_TIMEOUT, call)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {} s", ANSWER_TIMEOUT.as_secs()))?
}
