//! The validated, typed app spec that the rest of baton works with.
//!
//! Every value here has passed validation (see `validate.rs`), and every default
//! has been filled in. The serde form of these types is the JSON stored in the
//! database: it must round-trip exactly through `serde_json`, so durations are
//! written as humantime strings (`"1s 500ms"`), which are lossless down to the
//! nanosecond, and [`IntOrPercent`] is written as `1` or `"25%"` like the YAML.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One application: what to run, how to tell it is ready, and how to upgrade it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSpec {
    /// Matches `^[a-z0-9][a-z0-9-]{0,62}$`.
    pub name: String,
    /// Free text shown in the upgrade history, such as `production`. Default `default`.
    pub environment: String,
    /// Desired version, if the spec names one. Matches `[A-Za-z0-9._-]{1,64}`.
    pub version: Option<String>,
    /// Where baton's router accepts user traffic for this app.
    pub listen: SocketAddr,
    /// Desired number of instances, 1..=1000.
    pub instances: u32,
    /// How instances are started and stopped.
    pub driver: DriverSpec,
    /// How baton decides that an instance may take traffic.
    pub readiness: ReadinessSpec,
    /// How one version replaces another.
    pub strategy: StrategySpec,
    /// Longest wait for the in-flight requests of a draining instance. Default 30s.
    #[serde(with = "duration_text")]
    pub drain_timeout: Duration,
    /// Limits the new version is judged against, if the spec has an `analysis:`
    /// section. Absent in JSON written before it existed, which reads as `None`.
    #[serde(default)]
    pub analysis: Option<AnalysisSpec>,
    /// User-defined pre-flight commands, run in order before a rollout changes
    /// anything; a non-zero exit blocks the upgrade. Empty when the spec has none
    /// (and in JSON written before they existed).
    #[serde(default)]
    pub preflight: Vec<PreflightCheck>,
    /// Smoke tests against the new release before it gets user traffic, and
    /// warm-up of each new instance. Default: neither.
    #[serde(default)]
    pub hooks: HooksSpec,
    /// When upgrades may run; `None` means at any time.
    #[serde(default)]
    pub upgrade_windows: Option<UpgradeWindows>,
    /// What a rollout past its progress deadline does.
    #[serde(default)]
    pub on_progress_deadline: OnProgressDeadline,
    /// How the router passes user traffic to the instances.
    #[serde(default)]
    pub traffic: TrafficSpec,
    /// The machines the instances run on, over SSH; `None`: this machine.
    #[serde(default)]
    pub hosts: Option<HostsSpec>,
    /// What mirror steps copy and compare (each step may override parts).
    #[serde(default)]
    pub mirror: MirrorSpec,
    /// An approval must come from someone other than who started the rollout.
    #[serde(default)]
    pub approval_by_another_person: bool,
    /// Webhooks told about the app's rollouts.
    #[serde(default)]
    pub webhooks: Vec<WebhookSpec>,
}

/// A webhook told about an app's rollouts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    pub name: String,
    pub url: String,
    pub format: WebhookFormat,
    /// The events it gets; empty: all.
    pub events: Vec<String>,
    /// The control plane's environment variable holding its HMAC key.
    pub secret_env: Option<String>,
    #[serde(with = "duration_text")]
    pub timeout: Duration,
}

/// How a webhook's notices are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    #[default]
    Json,
    Slack,
}

/// The events a webhook may ask for.
pub const WEBHOOK_EVENTS: &[&str] = &[
    "started",
    "step",
    "waiting_for_approval",
    "analysis_failed",
    "rolled_back",
    "promoted",
    "succeeded",
    "stuck",
];

impl AppSpec {
    /// The mirror settings of canary step `step`: its own when it overrides the
    /// app's, else the app's.
    pub fn mirror_settings<'a>(&'a self, step: &'a CanaryStep) -> &'a MirrorSpec {
        match step {
            CanaryStep::Mirror {
                settings: Some(s), ..
            } => s,
            _ => &self.mirror,
        }
    }
}

/// The machines an app runs on, and how its instances and traffic spread over them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostsSpec {
    /// At least one; names are unique.
    pub hosts: Vec<HostSpec>,
    pub spread: Spread,
    pub router: RouterPlacement,
    /// Hosts a rolling upgrade works on at once (resolved against the host
    /// count, rounded down, at least 1).
    pub max_unavailable: IntOrPercent,
    /// The known_hosts file; `None`: `~/.ssh/known_hosts`.
    pub known_hosts: Option<PathBuf>,
    #[serde(with = "duration_text")]
    pub connect_timeout: Duration,
}

impl HostsSpec {
    /// How many of the app's `instances` run on each host, in list order.
    pub fn shares(&self, instances: u32) -> Vec<(String, u32)> {
        let n = self.hosts.len() as u32;
        self.hosts
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let share = match self.spread {
                    Spread::PerHost => instances,
                    Spread::Even => instances / n + u32::from((i as u32) < instances % n),
                };
                (h.name.clone(), share)
            })
            .collect()
    }

    /// Hosts a rolling upgrade may work on at once.
    pub fn max_unavailable_hosts(&self) -> u32 {
        self.max_unavailable
            .resolve_down(self.hosts.len() as u32)
            .max(1)
    }

    pub fn host(&self, name: &str) -> Option<&HostSpec> {
        self.hosts.iter().find(|h| h.name == name)
    }
}

/// One machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostSpec {
    pub name: String,
    /// Where SSH reaches it, and where its instances listen.
    pub address: String,
    pub port: u16,
    pub user: String,
    pub identity_file: Option<PathBuf>,
    /// baton's directory on the host (relative paths are from the user's home).
    pub dir: String,
    pub labels: BTreeMap<String, String>,
}

/// How an app's `instances` spread over its hosts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Spread {
    /// `instances` is the total, spread evenly.
    Even,
    /// `instances` run on every host.
    PerHost,
}

/// Where an app's user traffic enters when it runs on several hosts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouterPlacement {
    /// A router on every host, in front of that host's instances.
    PerHost,
    /// baton's own router, in front of the instances of every host.
    Central,
}

/// How the router passes user traffic to the instances.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficSpec {
    /// How a request picks one of its version's instances.
    pub balance: Balance,
    /// Longest time to open a connection to an instance. Default 2s.
    #[serde(with = "duration_text")]
    pub connect_timeout: Duration,
    /// Longest wait for an instance's response head; then 504. Default 60s.
    #[serde(with = "duration_text")]
    pub response_timeout: Duration,
    /// Longest time for a client's request head, and idle time between keep-alive
    /// requests. Default 15s.
    #[serde(with = "duration_text")]
    pub client_header_timeout: Duration,
}

impl Default for TrafficSpec {
    fn default() -> Self {
        TrafficSpec {
            balance: Balance::RoundRobin,
            connect_timeout: crate::validate::defaults::CONNECT_TIMEOUT,
            response_timeout: crate::validate::defaults::RESPONSE_TIMEOUT,
            client_header_timeout: crate::validate::defaults::CLIENT_HEADER_TIMEOUT,
        }
    }
}

/// Load balancing over one version's instances.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Each instance in turn.
    #[default]
    RoundRobin,
    /// The instance with the fewest requests in flight.
    LeastRequests,
}

/// What a rollout that makes no progress before its deadline does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnProgressDeadline {
    /// Roll back to the stable version.
    #[default]
    Abort,
    /// Hold the rollout where it is until a person resumes or aborts it.
    Pause,
}

/// How instances are run. More drivers (ssh, kubernetes) come later.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriverSpec {
    /// Local child processes of baton.
    Process(ProcessDriverSpec),
    /// Containers, through the Docker Engine API.
    Container(ContainerDriverSpec),
}

impl DriverSpec {
    /// Time between the polite stop signal and a kill.
    pub fn stop_grace(&self) -> Duration {
        match self {
            DriverSpec::Process(p) => p.stop_grace,
            DriverSpec::Container(c) => c.stop_grace,
        }
    }

    /// The driver's name as the spec writes it.
    pub fn kind(&self) -> &'static str {
        match self {
            DriverSpec::Process(_) => "process",
            DriverSpec::Container(_) => "container",
        }
    }
}

/// Runs each instance as a container.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerDriverSpec {
    /// Image reference template (`{version}`, `{app}`).
    pub image: String,
    /// The engine's API endpoint as written; `None` resolves at run time
    /// (`DOCKER_HOST`, then the usual socket paths).
    pub endpoint: Option<String>,
    pub pull: PullPolicy,
    /// The app's port inside the container.
    pub port: u16,
    pub network: ContainerNetwork,
    pub entrypoint: Option<Vec<String>>,
    /// Templates (`{version}`, `{port}`, `{app}`, `{instance}`).
    pub command: Option<Vec<String>>,
    /// Values are templates.
    pub env: BTreeMap<String, String>,
    pub user: Option<String>,
    pub workdir: Option<String>,
    /// Memory limit in bytes.
    pub memory_bytes: Option<u64>,
    pub cpus: Option<f64>,
    pub read_only: bool,
    pub labels: BTreeMap<String, String>,
    #[serde(with = "duration_text")]
    pub stop_grace: Duration,
}

/// When to pull an image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PullPolicy {
    Never,
    #[default]
    IfMissing,
    Always,
}

/// How a container is reached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerNetwork {
    /// Its port is published on a free port of 127.0.0.1.
    #[default]
    Publish,
    /// It shares the host's network and listens on `PORT`.
    Host,
}

/// Runs each instance as a local process.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessDriverSpec {
    /// The argv template, never empty. Each element may hold placeholders
    /// (see [`crate::render_template`]).
    pub command: Vec<String>,
    /// Extra environment variables; the values are templates too.
    pub env: BTreeMap<String, String>,
    /// Working directory of the process, if not baton's own.
    pub workdir: Option<PathBuf>,
    /// Time between SIGTERM and SIGKILL when stopping an instance. Default 10s.
    #[serde(with = "duration_text")]
    pub stop_grace: Duration,
}

/// The HTTP readiness probe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadinessSpec {
    /// Path probed with `GET`; starts with `/`. Default `/healthz`.
    pub path: String,
    /// Time between probes. Default 1s, never zero.
    #[serde(with = "duration_text")]
    pub interval: Duration,
    /// Time allowed for one probe. Default 1s, never zero.
    #[serde(with = "duration_text")]
    pub timeout: Duration,
    /// Consecutive successes that make an instance ready. Default 1, at least 1.
    pub success_threshold: u32,
    /// Consecutive failures that make a ready instance unready. Default 3, at least 1.
    pub failure_threshold: u32,
    /// Wait after start before the first probe. Default 0.
    #[serde(with = "duration_text")]
    pub initial_delay: Duration,
}

/// How a new version replaces the old one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StrategySpec {
    /// Replace instances a few at a time.
    Rolling(RollingSpec),
    /// Shift user traffic to the new version step by step, then promote it.
    Canary(CanarySpec),
    /// Bring up the full new set beside the old, preview it, then switch at once.
    BlueGreen(BlueGreenSpec),
}

/// Rolling update parameters, with the Kubernetes meanings and defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollingSpec {
    /// Instances allowed above `instances` during the rollout. Default 25%, rounded up.
    pub max_surge: IntOrPercent,
    /// Instances allowed below `instances` during the rollout. Default 25%, rounded down.
    pub max_unavailable: IntOrPercent,
    /// How long a new instance must stay ready before it counts as available. Default 0.
    #[serde(with = "duration_text")]
    pub min_ready: Duration,
    /// A rollout that makes no progress for this long fails. Default 10m.
    #[serde(with = "duration_text")]
    pub progress_deadline: Duration,
    /// Crashes of new-version instances tolerated before the rollout fails. Default 3.
    pub max_restarts: u32,
}

/// Canary release parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanarySpec {
    /// The steps, in order; never empty. After the last one the new version is
    /// promoted (all traffic, old instances drained and stopped).
    pub steps: Vec<CanaryStep>,
    /// How long a new instance must stay ready before it counts as available. Default 0.
    #[serde(with = "duration_text")]
    pub min_ready: Duration,
    /// A step that makes no progress for this long fails. Default 10m.
    #[serde(with = "duration_text")]
    pub progress_deadline: Duration,
    /// Crashes of new-version instances tolerated before the rollout fails. Default 3.
    pub max_restarts: u32,
    /// Requests matching this header reach the canary at any weight.
    pub header_route: Option<HeaderMatch>,
    /// Version-sticky sessions through a cohort cookie. Default false.
    pub sticky: bool,
    /// Idempotent requests that fail on the canary are retried on stable. Default false.
    pub shielding: bool,
}

/// One step of a canary release.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CanaryStep {
    /// Send this percentage (0..=100) of user traffic to the new version.
    SetWeight(u32),
    /// Wait this long (never zero), or, with `None`, until `baton promote`.
    Pause(#[serde(with = "option_duration_text")] Option<Duration>),
    /// Wait until `baton approve`.
    Approval,
    /// Run this many instances (1..=`instances`) of the new version, whatever its weight.
    SetCanaryScale(u32),
    /// Judge the new version with [`AppSpec::analysis`] for this long (never zero).
    /// Validation makes sure the app has an analysis section.
    Analysis(#[serde(with = "duration_text")] Duration),
    /// Copy `percent` (1..=100) of user requests to the new version for `duration`
    /// (never zero); a share of differing answers above `max_mismatch_rate`
    /// (0..=1, default 0.01) fails the step.
    Mirror {
        percent: u32,
        #[serde(with = "duration_text")]
        duration: Duration,
        max_mismatch_rate: f64,
        /// This step's settings when it overrides any of the app's `mirror`
        /// (merged with them); `None`: the app's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        settings: Option<Box<MirrorSpec>>,
    },
}

/// Headers that always carry credentials (lower case): never compared, stored,
/// recorded or shown, whatever a spec says.
pub const CREDENTIAL_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];

/// What a mirror step copies and compares (and `baton mirror replay` compares).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorSpec {
    pub requests: MirrorRequests,
    pub compare: MirrorCompare,
    /// Credential headers besides the built-in ones (lower case).
    pub redact_headers: Vec<String>,
    /// Differing pairs each router keeps, 0..=1000.
    pub samples: u32,
}

impl Default for MirrorSpec {
    fn default() -> Self {
        MirrorSpec {
            requests: MirrorRequests::default(),
            compare: MirrorCompare::default(),
            redact_headers: Vec::new(),
            samples: crate::validate::defaults::MIRROR_SAMPLES,
        }
    }
}

/// Which requests are mirrored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorRequests {
    /// Upper-case method names.
    pub methods: Vec<String>,
    /// Path prefixes copied; empty: every path.
    pub paths: Vec<String>,
    /// Path prefixes never copied.
    pub exclude_paths: Vec<String>,
    /// Largest request body copied, and largest answer body compared.
    pub max_body_bytes: u64,
}

impl Default for MirrorRequests {
    fn default() -> Self {
        MirrorRequests {
            methods: vec!["GET".into(), "HEAD".into()],
            paths: Vec::new(),
            exclude_paths: Vec::new(),
            max_body_bytes: crate::validate::defaults::MIRROR_MAX_BODY,
        }
    }
}

/// Which parts of two answers must agree.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorCompare {
    pub status: bool,
    pub headers: HeadersCompare,
    pub body: BodyCompare,
}

impl Default for MirrorCompare {
    fn default() -> Self {
        MirrorCompare {
            status: true,
            headers: HeadersCompare::AllExcept(Vec::new()),
            body: BodyCompare::default(),
        }
    }
}

/// Which headers are compared.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeadersCompare {
    /// Every header but these (lower case), the built-in noisy ones and credentials.
    AllExcept(Vec<String>),
    /// Only these (lower case).
    Only(Vec<String>),
}

/// How two bodies are compared.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BodyCompare {
    pub mode: BodyMode,
    /// JSON paths left out (valid [`crate::JsonPath`]s).
    pub ignore: Vec<String>,
    /// Regular expressions masked before a text comparison.
    pub mask: Vec<String>,
}

/// How a body is read for comparison.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyMode {
    /// As JSON values when both parse, else as text.
    #[default]
    Json,
    /// As text, after masking.
    Text,
    /// Byte for byte.
    Bytes,
    /// Not compared.
    None,
}

/// A request header rule: header `name` (an HTTP token, matched without regard
/// to case) with exactly the value `equals` (not empty, visible ASCII and spaces).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    pub name: String,
    pub equals: String,
}

/// Blue-green release parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlueGreenSpec {
    /// A second router listener that reaches only the new (green) release.
    /// Never the same address as [`AppSpec::listen`].
    pub preview_listen: Option<SocketAddr>,
    /// On the main listener, requests matching this header reach green.
    /// Default `X-Baton-Preview: 1`.
    pub preview_header: HeaderMatch,
    /// Switch by itself this long after green is up and its checks passed;
    /// `None` waits for `baton approve`.
    #[serde(with = "option_duration_text")]
    pub auto_promote_after: Option<Duration>,
    /// Blue keeps running this long after the switch so that a rollback is
    /// instant. Default 30s.
    #[serde(with = "duration_text")]
    pub scale_down_delay: Duration,
    /// How long a new instance must stay ready before it counts as available. Default 0.
    #[serde(with = "duration_text")]
    pub min_ready: Duration,
    /// A phase that makes no progress for this long fails. Default 10m.
    #[serde(with = "duration_text")]
    pub progress_deadline: Duration,
    /// Crashes of new-version instances tolerated before the rollout fails. Default 3.
    pub max_restarts: u32,
}

/// Analysis of the new version on the router's metrics. At least one limit is set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnalysisSpec {
    /// Time between two measurements. Default 5s, never zero.
    #[serde(with = "duration_text")]
    pub interval: Duration,
    /// How far back each measurement looks. Default 30s, never zero.
    #[serde(with = "duration_text")]
    pub window: Duration,
    /// Fewer requests than this to the new version in the window: no judgement. Default 50.
    pub min_requests: u64,
    /// Failing measurements in a row before rollback. Default 2, at least 1.
    pub failure_limit: u32,
    /// Highest error rate of the new version, 0..=1.
    pub max_error_rate: Option<f64>,
    /// Highest error rate of the new version above the stable one's, 0..=1.
    pub max_error_rate_increase: Option<f64>,
    /// Highest p99 latency of the new version, never zero.
    #[serde(with = "option_duration_text")]
    pub max_p99: Option<Duration>,
    /// Highest p99 latency of the new version as a multiple of the stable one's, > 1.
    pub max_p99_ratio: Option<f64>,
    /// Highest memory of any new-version instance, in bytes.
    #[serde(default)]
    pub max_memory_bytes: Option<u64>,
    /// Highest mean memory of the new version's instances as a multiple of the
    /// stable version's, > 1.
    #[serde(default)]
    pub max_memory_ratio: Option<f64>,
    /// Highest CPU time per request of the new version as a multiple of the stable
    /// version's, > 1.
    #[serde(default)]
    pub max_cpu_per_request_ratio: Option<f64>,
}

/// A user-defined pre-flight check: a command that must exit 0 before a
/// rollout may start.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreflightCheck {
    /// Shown in the refusal message and the event log; unique among the checks.
    pub name: String,
    /// The argv template, never empty. Placeholders: [`crate::PREFLIGHT_PLACEHOLDERS`]
    /// (`{version}` is the version about to be deployed).
    pub command: Vec<String>,
    /// The check fails if the command runs longer than this. Default 5m, never zero.
    #[serde(with = "duration_text")]
    pub timeout: Duration,
}

/// Checks run while a rollout is under way.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HooksSpec {
    /// Run in order against the new release (through its preview) before it
    /// gets any user traffic; the first failure aborts the rollout.
    pub smoke: Vec<SmokeTest>,
    /// Requests sent to each new instance before it takes user traffic.
    pub warmup: Option<WarmupSpec>,
}

/// One smoke test. Test names are unique among the smoke tests.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SmokeTest {
    /// A command that must exit 0.
    Command {
        name: String,
        /// The argv template, never empty. Placeholders: [`crate::SMOKE_PLACEHOLDERS`]
        /// (`{preview_url}` is the base URL reaching only the new release, without
        /// a trailing '/'; render with [`crate::render_template_with`]).
        command: Vec<String>,
        /// The test fails if the command runs longer than this. Default 5m, never zero.
        #[serde(with = "duration_text")]
        timeout: Duration,
    },
    /// `count` requests, `concurrency` at a time, each of which must answer
    /// `expect_status` (and contain `expect_body`, if given).
    Http {
        name: String,
        /// An HTTP method token; the standard methods are upper case. Default `GET`.
        method: String,
        /// Request path (and query), starting with '/'.
        path: String,
        /// 100..=599. Default 200.
        expect_status: u16,
        /// A substring the answer body must contain; never empty.
        expect_body: Option<String>,
        /// 1..=100000. Default 1.
        count: u32,
        /// 1..=`count`. Default 1.
        concurrency: u32,
        /// Longest wait for one answer. Default 10s, never zero.
        #[serde(with = "duration_text")]
        timeout: Duration,
    },
}

impl SmokeTest {
    /// The test's name.
    pub fn name(&self) -> &str {
        match self {
            SmokeTest::Command { name, .. } | SmokeTest::Http { name, .. } => name,
        }
    }
}

/// Warm-up: `GET path` sent `requests` times, `concurrency` at a time, to each
/// new instance after it is ready and before it takes user traffic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmupSpec {
    /// Starts with '/'. Default `/`.
    pub path: String,
    /// 1..=100000.
    pub requests: u32,
    /// 1..=`requests`. Default 4 (or `requests`, if fewer).
    pub concurrency: u32,
}

/// When upgrades may run: the union of the `allowed` windows, read on the wall
/// clock of `timezone`. A deploy outside every window waits for the next one.
///
/// A window is open while the local clock shows a time in `[start, end)` on one
/// of its days (for a window crossing midnight, `days` are the days it starts
/// on). Local times that a DST change skips never occur, and those it repeats
/// occur twice; see [`UpgradeWindows::is_open`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpgradeWindows {
    /// An IANA time zone name known to this machine's (or baton's bundled)
    /// time zone database, as the database spells it. Default `UTC`.
    pub timezone: String,
    /// Never empty.
    pub allowed: Vec<UpgradeWindow>,
    /// What a rollout still running when its window closes does. Default finish.
    pub on_end: OnWindowEnd,
}

/// One allowed window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpgradeWindow {
    /// The days the window starts on, Monday first, without repeats; never
    /// empty. Default every day.
    pub days: Vec<Weekday>,
    /// Opening time, 00:00..=23:59.
    pub start: TimeOfDay,
    /// Closing time (exclusive), 00:00..=24:00 and never equal to `start`. Before
    /// `start`, the window crosses midnight and closes on the next day.
    pub end: TimeOfDay,
}

impl UpgradeWindow {
    /// Whether the window closes on the day after it opens (`end` before `start`;
    /// an `end` of 24:00 closes at the end of the opening day).
    pub fn crosses_midnight(&self) -> bool {
        self.end < self.start
    }
}

/// A wall-clock time of day with minute precision: `hour` 0..=23 and `minute`
/// 0..=59, or 24:00 (the end of the day, only as a window's `end`).
///
/// Written as `"HH:MM"` in YAML and JSON.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimeOfDay {
    pub hour: u8,
    pub minute: u8,
}

impl TimeOfDay {
    /// 24:00, the midnight that ends a day.
    pub const END_OF_DAY: TimeOfDay = TimeOfDay {
        hour: 24,
        minute: 0,
    };

    /// Minutes since midnight, 0..=1440.
    pub fn minutes(self) -> u16 {
        u16::from(self.hour) * 60 + u16::from(self.minute)
    }

    /// Parses `H:MM` or `HH:MM`, 00:00..=24:00.
    pub fn parse(text: &str) -> Option<TimeOfDay> {
        let (h, m) = text.split_once(':')?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(h) || h.len() > 2 || !digits(m) || m.len() != 2 {
            return None;
        }
        let t = TimeOfDay {
            hour: h.parse().ok()?,
            minute: m.parse().ok()?,
        };
        (t.minute < 60 && (t.hour < 24 || t == TimeOfDay::END_OF_DAY)).then_some(t)
    }
}

impl fmt::Display for TimeOfDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.hour, self.minute)
    }
}

impl Serialize for TimeOfDay {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TimeOfDay {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        TimeOfDay::parse(&text).ok_or_else(|| {
            serde::de::Error::invalid_value(serde::de::Unexpected::Str(&text), &"a time as HH:MM")
        })
    }
}

/// A day of the week. Written `mon`, `tue`, ... `sun`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

impl Weekday {
    /// Every day, Monday first.
    pub const ALL: [Weekday; 7] = [
        Weekday::Mon,
        Weekday::Tue,
        Weekday::Wed,
        Weekday::Thu,
        Weekday::Fri,
        Weekday::Sat,
        Weekday::Sun,
    ];

    /// The short name: `mon`...
    pub fn as_str(self) -> &'static str {
        match self {
            Weekday::Mon => "mon",
            Weekday::Tue => "tue",
            Weekday::Wed => "wed",
            Weekday::Thu => "thu",
            Weekday::Fri => "fri",
            Weekday::Sat => "sat",
            Weekday::Sun => "sun",
        }
    }

    /// Parses `mon` or `monday` (any case).
    pub fn parse(text: &str) -> Option<Weekday> {
        let lower = text.trim().to_ascii_lowercase();
        Weekday::ALL
            .into_iter()
            .find(|d| lower == d.as_str() || lower == d.full_name_lower())
    }
}

impl Weekday {
    /// `Monday`...
    pub fn full_name(self) -> &'static str {
        match self {
            Weekday::Mon => "Monday",
            Weekday::Tue => "Tuesday",
            Weekday::Wed => "Wednesday",
            Weekday::Thu => "Thursday",
            Weekday::Fri => "Friday",
            Weekday::Sat => "Saturday",
            Weekday::Sun => "Sunday",
        }
    }

    /// `monday`...
    pub(crate) fn full_name_lower(self) -> &'static str {
        match self {
            Weekday::Mon => "monday",
            Weekday::Tue => "tuesday",
            Weekday::Wed => "wednesday",
            Weekday::Thu => "thursday",
            Weekday::Fri => "friday",
            Weekday::Sat => "saturday",
            Weekday::Sun => "sunday",
        }
    }

    /// The day before.
    pub fn previous(self) -> Weekday {
        Weekday::ALL[(self as usize + 6) % 7]
    }
}

impl fmt::Display for Weekday {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<jiff::civil::Weekday> for Weekday {
    fn from(d: jiff::civil::Weekday) -> Weekday {
        use jiff::civil::Weekday as W;
        match d {
            W::Monday => Weekday::Mon,
            W::Tuesday => Weekday::Tue,
            W::Wednesday => Weekday::Wed,
            W::Thursday => Weekday::Thu,
            W::Friday => Weekday::Fri,
            W::Saturday => Weekday::Sat,
            W::Sunday => Weekday::Sun,
        }
    }
}

/// What a rollout still running when its upgrade window closes does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnWindowEnd {
    /// Carry on to the end.
    #[default]
    Finish,
    /// Pause where it is, and resume when the next window opens.
    Pause,
}

/// An absolute count of instances or a percentage of the desired count.
///
/// Serialized like the YAML: `1` or `"25%"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IntOrPercent {
    /// An absolute number of instances.
    Count(u32),
    /// A percentage, 0..=100, of the desired instance count.
    Percent(u32),
}

impl IntOrPercent {
    /// Resolves against `total` instances, rounding a percentage up
    /// (the Kubernetes rule for `max_surge`).
    pub fn resolve_up(&self, total: u32) -> u32 {
        match *self {
            IntOrPercent::Count(n) => n,
            IntOrPercent::Percent(p) => {
                let scaled = u64::from(p) * u64::from(total);
                u32::try_from(scaled.div_ceil(100)).unwrap_or(u32::MAX)
            }
        }
    }

    /// Resolves against `total` instances, rounding a percentage down
    /// (the Kubernetes rule for `max_unavailable`).
    pub fn resolve_down(&self, total: u32) -> u32 {
        match *self {
            IntOrPercent::Count(n) => n,
            IntOrPercent::Percent(p) => {
                let scaled = u64::from(p) * u64::from(total);
                u32::try_from(scaled / 100).unwrap_or(u32::MAX)
            }
        }
    }

    /// Parses `"3"` or `"25%"`. The percentage is not range-checked here.
    pub(crate) fn parse(text: &str) -> Option<IntOrPercent> {
        let text = text.trim();
        match text.strip_suffix('%') {
            Some(number) => number.trim().parse().ok().map(IntOrPercent::Percent),
            None => text.parse().ok().map(IntOrPercent::Count),
        }
    }
}

impl fmt::Display for IntOrPercent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IntOrPercent::Count(n) => write!(f, "{n}"),
            IntOrPercent::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Serialize for IntOrPercent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            IntOrPercent::Count(n) => serializer.serialize_u32(*n),
            IntOrPercent::Percent(_) => serializer.collect_str(self),
        }
    }
}

impl<'de> Deserialize<'de> for IntOrPercent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = IntOrPercent;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole number or a percentage such as \"25%\"")
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                u32::try_from(v)
                    .map(IntOrPercent::Count)
                    .map_err(|_| E::custom("count out of range"))
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u32::try_from(v)
                    .map(IntOrPercent::Count)
                    .map_err(|_| E::custom("count out of range"))
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                IntOrPercent::parse(v)
                    .ok_or_else(|| E::invalid_value(serde::de::Unexpected::Str(v), &self))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Serde adapter writing a `Duration` as a humantime string (`"1m 30s"`).
///
/// humantime prints every unit down to nanoseconds and parses the same units
/// back, so the round trip is exact.
pub(crate) mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// [`duration_text`] for an optional duration (`null` when absent).
pub(crate) mod option_duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.collect_str(&humantime::format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| humantime::parse_duration(&text).map_err(serde::de::Error::custom))
            .transpose()
    }
}
