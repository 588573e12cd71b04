//! The YAML format exactly as written by users: plain serde structs with
//! `deny_unknown_fields`, before any validation or defaulting.
//!
//! The JSON Schema published in `schema/baton-spec.schema.json` is generated from
//! these types, so their doc comments are what editors show as field help.
//! Values that need a friendly error (durations, addresses, percentages) are kept
//! as text here and checked in `validate.rs`, where the error can carry a hint.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{Error as _, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// A baton app spec: one application, how to run it and how to upgrade it.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "baton app spec")]
pub(crate) struct AppSpec {
    /// Application name: lowercase letters, digits and '-', at most 63 characters,
    /// starting with a letter or digit.
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9-]{0,62}$"))]
    pub name: String,
    /// Environment shown in the upgrade history, such as `production` or `staging`.
    /// Default `default`.
    #[serde(default)]
    pub environment: Option<String>,
    /// Desired version (letters, digits, '.', '_' and '-', at most 64 characters).
    /// Optional: a version can also be given to `baton deploy`.
    #[serde(default)]
    #[schemars(regex(pattern = r"^[A-Za-z0-9._-]{1,64}$"))]
    pub version: Option<String>,
    /// Address where baton's router accepts user traffic for this app, as IP:PORT,
    /// such as `127.0.0.1:8080` or `[::]:8080`.
    pub listen: String,
    /// Desired number of instances, 1 to 1000. Default 1.
    #[serde(default)]
    #[schemars(range(min = 1, max = 1000))]
    pub instances: Option<u32>,
    /// Longest wait for the in-flight requests of a draining instance. Default `30s`.
    #[serde(default)]
    pub drain_timeout: Option<HumanDuration>,
    /// How instances are started and stopped.
    pub driver: DriverSpec,
    /// How baton decides that an instance may take traffic. All fields have defaults.
    #[serde(default)]
    pub readiness: Option<ReadinessSpec>,
    /// How a new version replaces the old one. Default: rolling with default settings.
    #[serde(default)]
    pub strategy: Option<StrategySpec>,
    /// Automatic analysis of the new version on the router's own metrics: a
    /// measurement that breaks a limit `failure_limit` times in a row rolls the
    /// release back. Runs during canary `analysis` steps and in the background of
    /// every rollout. Give at least one limit.
    #[serde(default)]
    pub analysis: Option<AnalysisSpec>,
    /// Your own pre-flight checks: commands run in order before an upgrade changes
    /// anything (after baton's built-in checks), such as a vulnerability scanner.
    /// A non-zero exit or a timeout blocks the upgrade and nothing is changed.
    #[serde(default)]
    pub preflight: Option<Vec<PreflightCheck>>,
    /// Smoke tests run against the new release before any user reaches it, and
    /// warm-up requests sent to each new instance before it takes user traffic.
    /// A failure aborts the rollout; the output is kept in the event log.
    #[serde(default)]
    pub hooks: Option<HooksSpec>,
    /// When upgrades may run. A deploy outside every window waits for the next
    /// one (unless an operator passes `--now`). Default: at any time.
    #[serde(default)]
    pub upgrade_windows: Option<UpgradeWindows>,
    /// What a rollout that makes no progress before its `progress_deadline` does:
    /// `abort` (roll back, the default) or `pause` (wait for a person).
    #[serde(default)]
    pub on_progress_deadline: Option<OnDeadlineText>,
    /// How baton's router passes user traffic to the instances. All fields have
    /// defaults.
    #[serde(default)]
    pub traffic: Option<TrafficSpec>,
    /// Run the instances on other machines, reached over SSH. baton installs
    /// itself on each host and runs `baton node` there: that host's router and
    /// its instances (processes or containers). Without it, everything runs on
    /// the machine baton runs on.
    #[serde(default)]
    pub hosts: Option<HostsSpec>,
    /// What a canary `mirror` step copies to the new version and which parts of
    /// the two answers must agree. Every field has a default; a `mirror` step can
    /// override `requests` and `compare` for itself. The same settings judge
    /// `baton mirror replay`.
    #[serde(default)]
    pub mirror: Option<MirrorSpec>,
    /// Who may pass an approval gate (`pause: { until: approved }`, `approval`,
    /// a blue-green switch waiting for `baton approve`).
    #[serde(default)]
    pub approval: Option<ApprovalSpec>,
    /// Who is told about this app's rollouts.
    #[serde(default)]
    pub notifications: Option<NotificationsSpec>,
}

/// Who is told about rollouts.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NotificationsSpec {
    /// HTTP endpoints that get a POST for each event, in order, retried with
    /// backoff; a receiver that is down or slow never holds a rollout back.
    #[serde(default)]
    pub webhooks: Option<Vec<WebhookEntry>>,
}

/// One webhook.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct WebhookEntry {
    /// Names it in `status` and the event log; unique among the app's webhooks.
    #[schemars(required, length(min = 1))]
    pub name: Option<String>,
    /// `http://` or `https://` URL the notices are POSTed to.
    #[schemars(required)]
    pub url: Option<String>,
    /// `json` (the default: app, environment, event, message, versions, time,
    /// sequence) or `slack` (a `text` message for a Slack incoming webhook).
    #[serde(default)]
    pub format: Option<String>,
    /// The events sent: started, step, waiting_for_approval, analysis_failed,
    /// rolled_back, promoted, succeeded, stuck. Default: all.
    #[serde(default)]
    pub events: Option<Vec<String>>,
    /// An environment variable of the control plane holding the HMAC key: each
    /// notice is signed (`X-Baton-Signature: sha256=HMAC(key, timestamp "." body)`,
    /// `X-Baton-Timestamp`). The key never goes in the spec.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// Longest wait for one answer. Default `5s`.
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
}

/// Approval gates.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApprovalSpec {
    /// Only someone other than who started the rollout may approve it (four
    /// eyes): the name of the approver's token must differ. Default `false`.
    #[serde(default)]
    pub by_another_person: Option<bool>,
}

/// Mirroring settings of an app.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct MirrorSpec {
    /// Which requests are copied. Default: every `GET` and `HEAD` with a body of
    /// at most 64KiB.
    #[serde(default)]
    pub requests: Option<MirrorRequestsSpec>,
    /// Which parts of the answers are compared. Default: the status, every header
    /// but those that differ between any two answers (`Date`, `Server`, hop-by-hop
    /// and tracing headers), and the body as JSON.
    #[serde(default)]
    pub compare: Option<MirrorCompareSpec>,
    /// Headers that carry credentials, besides `Authorization`,
    /// `Proxy-Authorization`, `Cookie` and `Set-Cookie` (always): never compared,
    /// stored, recorded or shown.
    #[serde(default)]
    pub redact_headers: Option<Vec<String>>,
    /// Differing pairs each router keeps for `baton diff`, 0 to 1000. Default 20.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000))]
    pub samples: Option<u32>,
}

/// Which requests are mirrored.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct MirrorRequestsSpec {
    /// Methods copied. Default `[GET, HEAD]`: a copy of a request that changes
    /// something would change it twice.
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    /// Path prefixes copied, each starting with '/'. Default: every path.
    #[serde(default)]
    pub paths: Option<Vec<String>>,
    /// Path prefixes never copied, such as `/healthz`.
    #[serde(default)]
    pub exclude_paths: Option<Vec<String>>,
    /// Requests with a larger body are not copied, and answers are compared up to
    /// this size. Default `64KiB`.
    #[serde(default)]
    pub max_body: Option<String>,
}

/// Which parts of the two answers must agree.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct MirrorCompareSpec {
    /// Whether the status codes must agree. Default `true`.
    #[serde(default)]
    pub status: Option<bool>,
    /// Which headers must agree.
    #[serde(default)]
    pub headers: Option<MirrorHeadersSpec>,
    /// How the bodies are compared.
    #[serde(default)]
    pub body: Option<MirrorBodySpec>,
}

/// Which headers are compared: `only` these, or every one but `ignore` (and the
/// built-in noisy ones).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct MirrorHeadersSpec {
    /// Compare just these headers.
    #[serde(default)]
    pub only: Option<Vec<String>>,
    /// Leave these out too, such as a header naming the version that answered.
    #[serde(default)]
    pub ignore: Option<Vec<String>>,
}

/// How the bodies are compared.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct MirrorBodySpec {
    /// `json` (the default: as JSON values when both parse, else as text), `text`
    /// (line by line, after masking), `bytes` or `none`.
    #[serde(default, rename = "as")]
    pub as_: Option<String>,
    /// JSON paths left out, such as `$.timestamp` or `$.items[*].id`.
    #[serde(default)]
    pub ignore: Option<Vec<String>>,
    /// Regular expressions whose matches are masked before bodies are compared as
    /// text, such as `'\d{4}-\d\d-\d\dT[0-9:.]+Z'` for timestamps.
    #[serde(default)]
    pub mask: Option<Vec<String>>,
}

/// The machines an app runs on, and how its instances and traffic spread over them.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct HostsSpec {
    /// The hosts, at least one.
    pub list: Vec<HostEntry>,
    /// How `instances` spread over the hosts: `even` (the default: `instances` is
    /// the total, spread as evenly as it divides, earlier hosts first) or
    /// `per_host` (`instances` run on every host).
    #[serde(default)]
    pub spread: Option<String>,
    /// Where user traffic enters: `per_host` (the default: a router on every
    /// host, listening on `listen`, in front of that host's instances; a load
    /// balancer or DNS spreads users over the hosts) or `central` (baton's own
    /// router forwards to the instances of every host).
    #[serde(default)]
    pub router: Option<String>,
    /// Hosts a rolling upgrade works on at once: a count or a percentage of the
    /// hosts (rounded down, at least 1). Default 1: node by node.
    #[serde(default)]
    pub max_unavailable: Option<IntOrPercentText>,
    /// SSH settings shared by every host (each host may override user, port and
    /// identity file).
    #[serde(default)]
    pub ssh: Option<SshSpec>,
    /// Directory on each host where baton keeps its binary, its node's state and
    /// the instances' logs; relative to the SSH user's home. Default `.baton`.
    #[serde(default)]
    pub dir: Option<String>,
}

/// One machine.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct HostEntry {
    /// Short name, unique in the list (letters, digits and '-').
    pub name: String,
    /// IP address (or DNS name) baton reaches the host at over SSH, and the
    /// address its instances listen on.
    pub address: String,
    /// SSH port. Default: `ssh.port`, else 22.
    #[serde(default)]
    pub port: Option<u16>,
    /// SSH user. Default: `ssh.user`, else `root`.
    #[serde(default)]
    pub user: Option<String>,
    /// Private key file. Default: `ssh.identity_file`, else the SSH agent and
    /// ssh's own defaults. Passwords are never used.
    #[serde(default)]
    pub identity_file: Option<String>,
    /// This host's baton directory (overrides `hosts.dir`).
    #[serde(default)]
    pub dir: Option<String>,
    /// Free labels (`zone: a`), shown by `baton hosts`.
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
}

/// SSH settings shared by every host.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SshSpec {
    /// Default user. Default `root`.
    #[serde(default)]
    pub user: Option<String>,
    /// Default port. Default 22.
    #[serde(default)]
    pub port: Option<u16>,
    /// Default private key file.
    #[serde(default)]
    pub identity_file: Option<String>,
    /// The known_hosts file host keys are checked against. Default
    /// `~/.ssh/known_hosts`. A host whose key is missing or different is refused
    /// (`baton hosts trust APP HOST` adds a key after showing its fingerprint).
    #[serde(default)]
    pub known_hosts: Option<String>,
    /// Longest time to open an SSH connection. Default `10s`.
    #[serde(default)]
    pub connect_timeout: Option<HumanDuration>,
}

/// How baton's router passes user traffic to the instances.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TrafficSpec {
    /// How a request picks one of its version's instances: `round_robin` (each in
    /// turn, the default) or `least_requests` (the one with the fewest requests in
    /// flight; suits requests of uneven cost and instances of uneven speed).
    #[serde(default)]
    pub balance: Option<BalanceText>,
    /// Longest time to open a connection to an instance before another is tried.
    /// Default `2s`.
    #[serde(default)]
    pub connect_timeout: Option<HumanDuration>,
    /// Longest wait for an instance's response head once the request is sent; over
    /// it the user gets 504. Default `60s`.
    #[serde(default)]
    pub response_timeout: Option<HumanDuration>,
    /// Longest time a client may take to send a request head, and longest idle time
    /// between two requests on a keep-alive connection. Default `15s`.
    #[serde(default)]
    pub client_header_timeout: Option<HumanDuration>,
}

/// A load-balancing method, kept as text until validation.
#[derive(Debug, Deserialize)]
#[serde(transparent)]
pub(crate) struct BalanceText(pub String);

impl JsonSchema for BalanceText {
    fn schema_name() -> Cow<'static, str> {
        "Balance".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "`round_robin`: each instance in turn; `least_requests`: the \
                            instance with the fewest requests in flight.",
            "enum": ["round_robin", "least_requests"],
        })
    }
}

/// The driver that runs instances. Exactly one key.
#[derive(Debug, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum DriverSpec {
    /// Run each instance as a local process started by baton.
    Process(ProcessDriverSpec),
    /// Run each instance as a container, through the Docker Engine API (Docker, or
    /// Podman's compatible service).
    Container(Box<ContainerDriverSpec>),
}

/// Runs each instance as a container.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ContainerDriverSpec {
    /// The image, e.g. `registry.example.com/shop:{version}`. Placeholders `{version}`
    /// and `{app}`. `baton deploy APP VERSION --image REF` names another for one release.
    pub image: Option<String>,
    /// The container engine's API socket, e.g. `unix:///run/podman/podman.sock`.
    /// Default: `DOCKER_HOST`, else the first of /run/podman/podman.sock,
    /// /var/run/docker.sock and $XDG_RUNTIME_DIR/podman/podman.sock that exists.
    /// With `hosts:`, each host's node looks it up there, first at DIR/podman.sock.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// When to pull the image: `never`, `if_missing` (the default) or `always`.
    #[serde(default)]
    pub pull: Option<String>,
    /// The port the app listens on inside the container. baton publishes it on a
    /// free port of 127.0.0.1 for its router.
    pub port: Option<u16>,
    /// `publish` (the default): the container's port is published on a free host
    /// port. `host`: the container shares the host's network and listens on `PORT`.
    #[serde(default)]
    pub network: Option<String>,
    /// Replaces the image's entrypoint: a list of arguments or one string.
    #[serde(default)]
    pub entrypoint: Option<CommandLine>,
    /// Replaces the image's command (the entrypoint's arguments). Placeholders
    /// `{version}`, `{port}`, `{app}`, `{instance}`.
    #[serde(default)]
    pub command: Option<CommandLine>,
    /// Environment variables. Values may use the same placeholders as `command`.
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
    /// The user the app runs as, e.g. `1000` or `1000:1000`.
    #[serde(default)]
    pub user: Option<String>,
    /// Working directory inside the container.
    #[serde(default)]
    pub workdir: Option<String>,
    /// Memory limit, e.g. `256MiB` or `1GiB`. The kernel kills the app past it.
    #[serde(default)]
    pub memory: Option<String>,
    /// CPU limit in cores, e.g. `0.5` or `2`.
    #[serde(default)]
    #[schemars(range(min = 0.01))]
    pub cpus: Option<f64>,
    /// Mount the image's root filesystem read-only.
    #[serde(default)]
    pub read_only: Option<bool>,
    /// Extra labels on every container (baton adds its own `baton.*` labels).
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    /// Time between the image's stop signal and a kill when stopping an instance.
    /// Default `10s`.
    #[serde(default)]
    pub stop_grace: Option<HumanDuration>,
}

/// Runs each instance as a local process.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProcessDriverSpec {
    /// The command to run: a list of arguments, or one string split like a shell
    /// does (single and double quotes group words). Placeholders `{version}`,
    /// `{port}`, `{app}`, `{instance}` and `{baton}` (the path of the baton binary)
    /// are replaced for each instance.
    pub command: CommandLine,
    /// Extra environment variables. Values may use the same placeholders as `command`.
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
    /// Working directory of the process. Default: baton's own.
    #[serde(default)]
    pub workdir: Option<String>,
    /// Time between SIGTERM and SIGKILL when stopping an instance. Default `10s`.
    #[serde(default)]
    pub stop_grace: Option<HumanDuration>,
}

/// The HTTP readiness probe: `GET path` must answer 2xx.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReadinessSpec {
    /// Path probed with GET; starts with '/'. Default `/healthz`.
    #[serde(default)]
    pub path: Option<String>,
    /// Time between probes. Default `1s`.
    #[serde(default)]
    pub interval: Option<HumanDuration>,
    /// Time allowed for one probe. Default `1s`.
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
    /// Consecutive successes that make an instance ready. Default 1.
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub success_threshold: Option<u32>,
    /// Consecutive failures that make a ready instance unready. Default 3.
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub failure_threshold: Option<u32>,
    /// Wait after an instance starts before the first probe. Default `0s`.
    #[serde(default)]
    pub initial_delay: Option<HumanDuration>,
}

/// The upgrade strategy. Exactly one key: `rolling`, `canary` or `blue_green`.
#[derive(Debug, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum StrategySpec {
    /// Replace instances a few at a time (`rolling: {}` or `rolling:` takes all defaults).
    Rolling(RollingSpec),
    /// Start the new version beside the old one and shift user traffic to it step
    /// by step (weights, pauses, approvals, analysis, mirroring), then promote it.
    Canary(CanarySpec),
    /// Bring up the full new set ("green") beside the old one ("blue") with no user
    /// traffic, let it be tested through the preview routes, then switch all traffic
    /// at once (`blue_green: {}` or `blue_green:` takes all defaults).
    BlueGreen(BlueGreenSpec),
}

/// Rolling update settings, with the Kubernetes meanings and defaults.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RollingSpec {
    /// Instances allowed above `instances` during the rollout: a count such as `1`
    /// or a percentage such as `25%` (rounded up). Default `25%`.
    #[serde(default)]
    pub max_surge: Option<IntOrPercentText>,
    /// Instances allowed below `instances` during the rollout: a count such as `0`
    /// or a percentage such as `25%` (rounded down). Default `25%`.
    #[serde(default)]
    pub max_unavailable: Option<IntOrPercentText>,
    /// How long a new instance must stay ready before it counts as available. Default `0s`.
    #[serde(default)]
    pub min_ready: Option<HumanDuration>,
    /// A rollout that makes no progress for this long fails. Default `10m`.
    #[serde(default)]
    pub progress_deadline: Option<HumanDuration>,
    /// Crashes of new-version instances tolerated before the rollout fails. Default 3.
    #[serde(default)]
    pub max_restarts: Option<u32>,
}

/// Canary release settings.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CanarySpec {
    /// What happens, in order, between starting the canary and promoting it. At
    /// least one step. After the last step the new version gets all traffic.
    #[schemars(required, length(min = 1))]
    pub steps: Option<Vec<CanaryStep>>,
    /// How long a new instance must stay ready before it counts as available. Default `0s`.
    #[serde(default)]
    pub min_ready: Option<HumanDuration>,
    /// A step that makes no progress for this long fails the rollout (pauses and
    /// approvals wait without limit). Default `10m`.
    #[serde(default)]
    pub progress_deadline: Option<HumanDuration>,
    /// Crashes of new-version instances tolerated before the rollout fails. Default 3.
    #[serde(default)]
    pub max_restarts: Option<u32>,
    /// Requests carrying this header go to the canary whatever its weight, so
    /// testers can reach it at 0%, e.g. `{ name: X-Canary, equals: always }`.
    #[serde(default)]
    pub header_route: Option<HeaderMatch>,
    /// Version-sticky sessions: a client that reached one version keeps reaching
    /// it (a cohort cookie) while the weights change. Default `false`.
    #[serde(default)]
    pub sticky: Option<bool>,
    /// Shielding: an idempotent request that fails on the canary (5xx or no
    /// connection) is retried once on the stable version, and the user gets the
    /// stable answer; the failure still counts against the canary. Default `false`.
    #[serde(default)]
    pub shielding: Option<bool>,
}

/// One canary step: a map with exactly one key.
#[derive(Debug, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum CanaryStep {
    /// Send this percentage (0 to 100) of user traffic to the new version: `set_weight: 10`.
    SetWeight(#[schemars(range(max = 100))] u32),
    /// Wait: `pause: { duration: 30s }`, or `pause: {}` until `baton promote`,
    /// or `pause: { until: approved }` until `baton approve`.
    Pause(PauseStep),
    /// Wait until `baton approve` (the same as `pause: { until: approved }`): `approval: {}`.
    Approval(ApprovalStep),
    /// Run this many instances of the new version, whatever its weight:
    /// `set_canary_scale: { instances: 2 }`.
    SetCanaryScale(CanaryScaleStep),
    /// Judge the new version with the top-level `analysis` settings for this long;
    /// a failure rolls back: `analysis: { duration: 1m }`.
    Analysis(AnalysisStep),
    /// Copy a share of user requests to the new version (its answers are compared,
    /// never returned) for this long; too many mismatches fail the step:
    /// `mirror: { percent: 100, duration: 30s, max_mismatch_rate: 0.01 }`.
    Mirror(Box<MirrorStep>),
}

/// A canary pause.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PauseStep {
    /// Pause this long. Leave out to wait for `baton promote` (or `until`).
    #[serde(default)]
    pub duration: Option<HumanDuration>,
    /// `approved`: wait for `baton approve`, which records who approved.
    #[serde(default)]
    pub until: Option<PauseUntil>,
}

/// What a pause waits for, kept as text until validation: only `approved`.
#[derive(Debug, Deserialize)]
#[serde(transparent)]
pub(crate) struct PauseUntil(pub String);

impl JsonSchema for PauseUntil {
    fn schema_name() -> Cow<'static, str> {
        "PauseUntil".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "`approved`: wait for `baton approve`.",
            "enum": ["approved"],
        })
    }
}

/// An approval gate; it takes no settings.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApprovalStep {}

/// The instance count of the canary.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CanaryScaleStep {
    /// Instances of the new version, 1 to the app's `instances`.
    #[schemars(required, range(min = 1))]
    pub instances: Option<u32>,
}

/// An analysis step.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AnalysisStep {
    /// How long to judge the new version.
    #[schemars(required)]
    pub duration: Option<HumanDuration>,
}

/// A mirroring step.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct MirrorStep {
    /// Share of user requests copied to the new version, 1 to 100.
    #[schemars(required, range(min = 1, max = 100))]
    pub percent: Option<u32>,
    /// How long to mirror.
    #[schemars(required)]
    pub duration: Option<HumanDuration>,
    /// Highest share (0 to 1) of mirrored requests whose answers may differ from
    /// the stable version's before the step fails. Default 0.01.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1))]
    pub max_mismatch_rate: Option<f64>,
    /// Which requests this step copies, instead of the top-level `mirror.requests`.
    #[serde(default)]
    pub requests: Option<MirrorRequestsSpec>,
    /// What this step compares: each of `status`, `headers` and `body` given here
    /// replaces the top-level `mirror.compare`'s.
    #[serde(default)]
    pub compare: Option<MirrorCompareSpec>,
}

/// A request header rule: the header `name` with exactly the value `equals`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct HeaderMatch {
    /// Header name, such as `X-Canary` (matched without regard to case).
    #[schemars(required, regex(pattern = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"))]
    pub name: Option<String>,
    /// The exact header value that matches, such as `always`.
    #[schemars(required, length(min = 1))]
    pub equals: Option<String>,
}

/// Blue-green release settings.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BlueGreenSpec {
    /// A second router address, as IP:PORT, that reaches only the new (green)
    /// release, for tests before the switch. Default: none (the preview header
    /// still works).
    #[serde(default)]
    pub preview_listen: Option<String>,
    /// Requests to the main `listen` address carrying this header reach green
    /// before the switch. Default `{ name: X-Baton-Preview, equals: "1" }`.
    #[serde(default)]
    pub preview_header: Option<HeaderMatch>,
    /// Switch traffic by itself this long after green is ready and its checks
    /// passed. Default: wait for `baton approve`.
    #[serde(default)]
    pub auto_promote_after: Option<HumanDuration>,
    /// How long blue keeps running after the switch, so that `baton rollback`
    /// switches back at once. Default `30s`.
    #[serde(default)]
    pub scale_down_delay: Option<HumanDuration>,
    /// How long a new instance must stay ready before it counts as available. Default `0s`.
    #[serde(default)]
    pub min_ready: Option<HumanDuration>,
    /// A phase that makes no progress for this long fails the rollout (waiting
    /// for approval does not count). Default `10m`.
    #[serde(default)]
    pub progress_deadline: Option<HumanDuration>,
    /// Crashes of new-version instances tolerated before the rollout fails. Default 3.
    #[serde(default)]
    pub max_restarts: Option<u32>,
}

/// Limits the new version must stay within, measured by baton's router. Leave
/// a limit out to not check it.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AnalysisSpec {
    /// Time between two measurements. Default `5s`.
    #[serde(default)]
    pub interval: Option<HumanDuration>,
    /// How far back each measurement looks. Default `30s`.
    #[serde(default)]
    pub window: Option<HumanDuration>,
    /// Fewer requests than this to the new version in the window: no judgement
    /// yet. Default 50.
    #[serde(default)]
    pub min_requests: Option<u64>,
    /// Failing measurements in a row before the release is rolled back. Default 2.
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub failure_limit: Option<u32>,
    /// Highest error rate (5xx answers and failed connections over requests) of
    /// the new version, 0 to 1, e.g. `0.05`.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1))]
    pub max_error_rate: Option<f64>,
    /// Highest error rate of the new version above the stable version's, 0 to 1,
    /// e.g. `0.02` (two points more).
    #[serde(default)]
    #[schemars(range(min = 0, max = 1))]
    pub max_error_rate_increase: Option<f64>,
    /// Highest p99 latency of the new version, e.g. `500ms`.
    #[serde(default)]
    pub max_p99: Option<HumanDuration>,
    /// Highest p99 latency of the new version as a multiple of the stable
    /// version's, above 1, e.g. `1.5`.
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub max_p99_ratio: Option<f64>,
    /// Highest memory of any new-version instance, e.g. `512MiB`.
    #[serde(default)]
    pub max_memory: Option<String>,
    /// Highest memory of the new version's instances (on average) as a multiple of
    /// the stable version's, above 1, e.g. `1.5`.
    #[serde(default)]
    pub max_memory_ratio: Option<f64>,
    /// Highest CPU time per request of the new version as a multiple of the stable
    /// version's, above 1, e.g. `1.5`.
    #[serde(default)]
    pub max_cpu_per_request_ratio: Option<f64>,
}

/// A pre-flight check: a command that must exit 0.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PreflightCheck {
    /// Names the check in messages and the event log; unique among the checks.
    #[schemars(required, length(min = 1))]
    pub name: Option<String>,
    /// The command: a list of arguments, or one string split like a shell does.
    /// Placeholders `{version}` (the version about to be deployed), `{app}` and
    /// `{baton}` (the path of the baton binary) are replaced.
    #[schemars(required)]
    pub command: Option<CommandLine>,
    /// The check fails if the command runs longer than this. Default `5m`.
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
}

/// Checks run during a rollout.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct HooksSpec {
    /// Tests run in order against the new release through its preview (the
    /// blue-green preview address or header, or the canary header route) before
    /// it gets any user traffic; the first failure aborts the rollout.
    #[serde(default)]
    pub smoke: Option<Vec<SmokeTest>>,
    /// Requests sent to each new instance once it is ready and before it takes
    /// user traffic, to fill its caches, e.g. `{ path: /, requests: 50 }`.
    #[serde(default)]
    pub warmup: Option<WarmupSpec>,
}

/// One smoke test: a map with exactly one key, `command` or `http`.
#[derive(Debug, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum SmokeTest {
    /// A command that must exit 0:
    /// `command: { name: api tests, command: ["./api-tests", "{preview_url}"] }`.
    Command(SmokeCommand),
    /// HTTP requests to the new release that must all get the expected answer:
    /// `http: { name: home page, path: /, expect_status: 200, count: 20 }`.
    Http(SmokeHttp),
}

/// A smoke test command.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SmokeCommand {
    /// Names the test in messages and the event log; unique among the smoke tests.
    #[schemars(required, length(min = 1))]
    pub name: Option<String>,
    /// The command: a list of arguments, or one string split like a shell does.
    /// Placeholders `{preview_url}` (such as `http://127.0.0.1:8081`, reaching only
    /// the new release), `{version}`, `{app}` and `{baton}` are replaced.
    #[schemars(required)]
    pub command: Option<CommandLine>,
    /// The test fails if the command runs longer than this. Default `5m`.
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
}

/// A smoke test made of HTTP requests.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SmokeHttp {
    /// Names the test in messages and the event log; unique among the smoke tests.
    #[schemars(required, length(min = 1))]
    pub name: Option<String>,
    /// The request method, such as `GET`, `HEAD` or `POST`. Default `GET`.
    #[serde(default)]
    #[schemars(regex(pattern = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"))]
    pub method: Option<String>,
    /// The request path, starting with '/', with a query string if needed.
    #[schemars(required, regex(pattern = r"^/"))]
    pub path: Option<String>,
    /// The status every answer must have, 100 to 599. Default 200.
    #[serde(default)]
    #[schemars(range(min = 100, max = 599))]
    pub expect_status: Option<u32>,
    /// Text every answer body must contain. Default: any body.
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub expect_body: Option<String>,
    /// How many requests to send, 1 to 100000. Default 1.
    #[serde(default)]
    #[schemars(range(min = 1, max = 100_000))]
    pub count: Option<u32>,
    /// How many requests are in flight at once, 1 to `count`. Default 1.
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub concurrency: Option<u32>,
    /// Longest wait for each answer. Default `10s`.
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
}

/// Warm-up of each new instance: `GET path`, `requests` times.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct WarmupSpec {
    /// The path requested, starting with '/'. Default `/`.
    #[serde(default)]
    #[schemars(regex(pattern = r"^/"))]
    pub path: Option<String>,
    /// Requests sent to each new instance, 1 to 100000.
    #[schemars(required, range(min = 1, max = 100_000))]
    pub requests: Option<u32>,
    /// How many requests are in flight at once, 1 to `requests`. Default 4.
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub concurrency: Option<u32>,
}

/// When upgrades may run: the allowed windows, read on the clock of `timezone`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpgradeWindows {
    /// An IANA time zone name such as `Europe/Berlin` or `America/New_York`.
    /// Default `UTC`.
    #[serde(default)]
    pub timezone: Option<String>,
    /// The windows; upgrades may run while any of them is open. At least one.
    #[schemars(required, length(min = 1))]
    pub allowed: Option<Vec<UpgradeWindow>>,
    /// What a rollout still running when its window closes does: `finish` (the
    /// default) carries on, `pause` waits for the next window.
    #[serde(default)]
    pub on_end: Option<OnWindowEndText>,
}

/// One allowed window, e.g. `{ days: [mon, tue, wed, thu, fri], start: "02:00", end: "05:00" }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpgradeWindow {
    /// The days the window opens on: `mon` ... `sun` (or `monday` ...). Default
    /// every day.
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub days: Option<Vec<WeekdayText>>,
    /// Opening time, `"HH:MM"` (quote it), 00:00 to 23:59.
    #[schemars(required)]
    pub start: Option<TimeText>,
    /// Closing time, `"HH:MM"`, up to `"24:00"` (the end of the day). Before
    /// `start`, the window crosses midnight and closes the next day.
    #[schemars(required)]
    pub end: Option<TimeText>,
}

/// A day of the week, kept as text until validation.
#[derive(Debug, Deserialize)]
#[serde(transparent)]
pub(crate) struct WeekdayText(pub String);

impl JsonSchema for WeekdayText {
    fn schema_name() -> Cow<'static, str> {
        "Weekday".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A day of the week: `mon`, `tue`, `wed`, `thu`, `fri`, `sat`, \
                            `sun`, or the full English name.",
            "type": "string",
            "examples": ["mon", "sat"],
        })
    }
}

/// A time of day, kept as text until validation.
#[derive(Debug, Deserialize)]
#[serde(transparent)]
pub(crate) struct TimeText(pub String);

impl JsonSchema for TimeText {
    fn schema_name() -> Cow<'static, str> {
        "TimeOfDay".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A time of day on a 24-hour clock, `\"HH:MM\"`.",
            "type": "string",
            "pattern": "^([01]?[0-9]|2[0-3]):[0-5][0-9]$|^24:00$",
            "examples": ["02:00", "23:30"],
        })
    }
}

/// What a stalled rollout does, kept as text until validation.
#[derive(Debug, Deserialize)]
#[serde(transparent)]
pub(crate) struct OnDeadlineText(pub String);

impl JsonSchema for OnDeadlineText {
    fn schema_name() -> Cow<'static, str> {
        "OnProgressDeadline".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "`abort`: roll back to the stable version; `pause`: hold the \
                            rollout for a person (`baton resume` or `baton abort`).",
            "enum": ["abort", "pause"],
        })
    }
}

/// What happens at the end of a window, kept as text until validation.
#[derive(Debug, Deserialize)]
#[serde(transparent)]
pub(crate) struct OnWindowEndText(pub String);

impl JsonSchema for OnWindowEndText {
    fn schema_name() -> Cow<'static, str> {
        "OnWindowEnd".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "`finish`: a running rollout carries on; `pause`: it pauses \
                            until the next window opens.",
            "enum": ["finish", "pause"],
        })
    }
}

/// An externally tagged enum read by hand, so that every mistake (a plain string,
/// no key, two keys, an unknown key) gets an error at the right position; the
/// derived form reports some of these at the end of the document instead.
trait OneKeyEnum: Sized {
    /// What the key names, for messages: "driver", "strategy".
    const WHAT: &'static str;
    const VARIANTS: &'static [&'static str];
    /// Reads the value of variant `key` from `map`.
    fn value<'de, A: MapAccess<'de>>(key: &str, map: &mut A) -> Result<Self, A::Error>;
}

struct OneKeyVisitor<T>(PhantomData<T>);

impl<'de, T: OneKeyEnum> Visitor<'de> for OneKeyVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a map with one key naming the {} ({})",
            T::WHAT,
            T::VARIANTS.join(", ")
        )
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
        let Some(key) = map.next_key::<String>()? else {
            return Err(A::Error::custom(format!(
                "no {} given; choose one of: {}",
                T::WHAT,
                T::VARIANTS.join(", ")
            )));
        };
        let value = T::value(&key, &mut map)?;
        if let Some(extra) = map.next_key::<String>()? {
            return Err(A::Error::custom(format!(
                "only one {} may be given, found `{key}` and `{extra}`",
                T::WHAT
            )));
        }
        Ok(value)
    }
}

impl OneKeyEnum for DriverSpec {
    const WHAT: &'static str = "driver";
    const VARIANTS: &'static [&'static str] = &["process", "container"];

    fn value<'de, A: MapAccess<'de>>(key: &str, map: &mut A) -> Result<Self, A::Error> {
        match key {
            "process" => Ok(DriverSpec::Process(map.next_value()?)),
            "container" => Ok(DriverSpec::Container(Box::new(map.next_value()?))),
            other => Err(A::Error::unknown_variant(other, Self::VARIANTS)),
        }
    }
}

impl<'de> Deserialize<'de> for DriverSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(OneKeyVisitor(PhantomData))
    }
}

impl OneKeyEnum for StrategySpec {
    const WHAT: &'static str = "strategy";
    const VARIANTS: &'static [&'static str] = &["rolling", "canary", "blue_green"];

    fn value<'de, A: MapAccess<'de>>(key: &str, map: &mut A) -> Result<Self, A::Error> {
        match key {
            // `rolling:` with no value takes all the defaults, like `rolling: {}`.
            "rolling" => Ok(StrategySpec::Rolling(
                map.next_value::<Option<RollingSpec>>()?.unwrap_or_default(),
            )),
            // A canary needs its steps, so `canary:` alone is read as `canary: {}`
            // and validation says what is missing.
            "canary" => Ok(StrategySpec::Canary(
                map.next_value::<Option<CanarySpec>>()?.unwrap_or_default(),
            )),
            "blue_green" => Ok(StrategySpec::BlueGreen(
                map.next_value::<Option<BlueGreenSpec>>()?
                    .unwrap_or_default(),
            )),
            other => Err(A::Error::unknown_variant(other, Self::VARIANTS)),
        }
    }
}

impl OneKeyEnum for CanaryStep {
    const WHAT: &'static str = "canary step";
    const VARIANTS: &'static [&'static str] = &[
        "set_weight",
        "pause",
        "approval",
        "set_canary_scale",
        "analysis",
        "mirror",
    ];

    fn value<'de, A: MapAccess<'de>>(key: &str, map: &mut A) -> Result<Self, A::Error> {
        match key {
            "set_weight" => Ok(CanaryStep::SetWeight(map.next_value()?)),
            // `pause:` and `approval:` with no value mean `pause: {}` and `approval: {}`.
            "pause" => Ok(CanaryStep::Pause(
                map.next_value::<Option<PauseStep>>()?.unwrap_or_default(),
            )),
            "approval" => Ok(CanaryStep::Approval(
                map.next_value::<Option<ApprovalStep>>()?
                    .unwrap_or_default(),
            )),
            "set_canary_scale" => Ok(CanaryStep::SetCanaryScale(map.next_value()?)),
            "analysis" => Ok(CanaryStep::Analysis(map.next_value()?)),
            "mirror" => Ok(CanaryStep::Mirror(map.next_value()?)),
            other => Err(A::Error::unknown_variant(other, Self::VARIANTS)),
        }
    }
}

impl<'de> Deserialize<'de> for CanaryStep {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(OneKeyVisitor(PhantomData))
    }
}

impl OneKeyEnum for SmokeTest {
    const WHAT: &'static str = "smoke test";
    const VARIANTS: &'static [&'static str] = &["command", "http"];

    fn value<'de, A: MapAccess<'de>>(key: &str, map: &mut A) -> Result<Self, A::Error> {
        match key {
            "command" => Ok(SmokeTest::Command(map.next_value()?)),
            "http" => Ok(SmokeTest::Http(map.next_value()?)),
            other => Err(A::Error::unknown_variant(other, Self::VARIANTS)),
        }
    }
}

impl<'de> Deserialize<'de> for SmokeTest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(OneKeyVisitor(PhantomData))
    }
}

impl<'de> Deserialize<'de> for StrategySpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(OneKeyVisitor(PhantomData))
    }
}

/// A duration as written by the user, such as `500ms`, `2s` or `1m30s`.
#[derive(Debug, Deserialize)]
#[serde(transparent)]
pub(crate) struct HumanDuration(pub String);

impl JsonSchema for HumanDuration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "A duration: a number and a unit (ns, us, ms, s, m, h, d), \
                            units may be combined.",
            "examples": ["500ms", "2s", "1m30s"],
        })
    }
}

/// A count (`1`) or a percentage (`"25%"`), kept as text until validation.
#[derive(Debug)]
pub(crate) struct IntOrPercentText(pub String);

impl JsonSchema for IntOrPercentText {
    fn schema_name() -> Cow<'static, str> {
        "IntOrPercent".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A number of instances, or a percentage of `instances` such as \"25%\".",
            "anyOf": [
                { "type": "integer", "minimum": 0 },
                { "type": "string", "pattern": "^[0-9]+%$" },
            ],
        })
    }
}

impl<'de> Deserialize<'de> for IntOrPercentText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = IntOrPercentText;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole number or a percentage such as \"25%\"")
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(IntOrPercentText(v.to_string()))
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(IntOrPercentText(v.to_string()))
            }

            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(IntOrPercentText(v.to_string()))
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(IntOrPercentText(v.to_owned()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A command given as a list of arguments or as one shell-like string.
#[derive(Debug)]
pub(crate) enum CommandLine {
    /// `command: ["app", "--port", "{port}"]`
    List(Vec<String>),
    /// `command: app --port {port}`
    Line(String),
}

impl JsonSchema for CommandLine {
    fn schema_name() -> Cow<'static, str> {
        "Command".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A list of arguments, or one string split like a shell does.",
            "anyOf": [
                { "type": "array", "items": { "type": "string" }, "minItems": 1 },
                { "type": "string", "minLength": 1 },
            ],
        })
    }
}

impl<'de> Deserialize<'de> for CommandLine {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = CommandLine;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of strings or one command string")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(CommandLine::Line(v.to_owned()))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut args = Vec::new();
                while let Some(arg) = seq.next_element::<String>()? {
                    args.push(arg);
                }
                Ok(CommandLine::List(args))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}
