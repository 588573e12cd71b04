//! Turns the raw YAML structs into a typed [`AppSpec`], filling in defaults and
//! collecting every problem with its line, field and a hint on how to fix it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::SpecError;
use crate::locate::{Pos, SourceMap, join};
use crate::model::{
    AnalysisSpec, AppSpec, Balance, BlueGreenSpec, BodyCompare, BodyMode, CREDENTIAL_HEADERS,
    CanarySpec, CanaryStep, ContainerDriverSpec, ContainerNetwork, DriverSpec, HeaderMatch,
    HeadersCompare, HooksSpec, HostSpec, HostsSpec, IntOrPercent, MirrorCompare, MirrorRequests,
    MirrorSpec, OnProgressDeadline, OnWindowEnd, PreflightCheck, ProcessDriverSpec, PullPolicy,
    ReadinessSpec, RollingSpec, RouterPlacement, SmokeTest, Spread, StrategySpec, TimeOfDay,
    TrafficSpec, UpgradeWindow, UpgradeWindows, WEBHOOK_EVENTS, WarmupSpec, WebhookFormat,
    WebhookSpec, Weekday,
};
use crate::raw;
use crate::template::{
    IMAGE_PLACEHOLDERS, PLACEHOLDERS, PREFLIGHT_PLACEHOLDERS, SMOKE_PLACEHOLDERS, split_command,
    unknown_placeholders,
};

/// Defaults, in one place so docs and code agree.
pub(crate) mod defaults {
    use std::time::Duration;

    use crate::model::IntOrPercent;

    pub(crate) const ENVIRONMENT: &str = "default";
    pub(crate) const INSTANCES: u32 = 1;
    pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
    pub(crate) const STOP_GRACE: Duration = Duration::from_secs(10);
    pub(crate) const READINESS_PATH: &str = "/healthz";
    pub(crate) const READINESS_INTERVAL: Duration = Duration::from_secs(1);
    pub(crate) const READINESS_TIMEOUT: Duration = Duration::from_secs(1);
    pub(crate) const SUCCESS_THRESHOLD: u32 = 1;
    pub(crate) const FAILURE_THRESHOLD: u32 = 3;
    pub(crate) const INITIAL_DELAY: Duration = Duration::ZERO;
    pub(crate) const MAX_SURGE: IntOrPercent = IntOrPercent::Percent(25);
    pub(crate) const MAX_UNAVAILABLE: IntOrPercent = IntOrPercent::Percent(25);
    pub(crate) const MIN_READY: Duration = Duration::ZERO;
    pub(crate) const PROGRESS_DEADLINE: Duration = Duration::from_secs(600);
    pub(crate) const MAX_RESTARTS: u32 = 3;
    pub(crate) const MAX_MISMATCH_RATE: f64 = 0.01;
    pub(crate) const MIRROR_SAMPLES: u32 = 20;
    pub(crate) const MIRROR_MAX_BODY: u64 = 64 * 1024;
    pub(crate) const PREVIEW_HEADER_NAME: &str = "X-Baton-Preview";
    pub(crate) const PREVIEW_HEADER_VALUE: &str = "1";
    pub(crate) const SCALE_DOWN_DELAY: Duration = Duration::from_secs(30);
    pub(crate) const ANALYSIS_INTERVAL: Duration = Duration::from_secs(5);
    pub(crate) const ANALYSIS_WINDOW: Duration = Duration::from_secs(30);
    pub(crate) const MIN_REQUESTS: u64 = 50;
    pub(crate) const FAILURE_LIMIT: u32 = 2;
    pub(crate) const PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(300);
    pub(crate) const SMOKE_COMMAND_TIMEOUT: Duration = Duration::from_secs(300);
    pub(crate) const SMOKE_HTTP_TIMEOUT: Duration = Duration::from_secs(10);
    pub(crate) const SMOKE_METHOD: &str = "GET";
    pub(crate) const SMOKE_STATUS: u16 = 200;
    pub(crate) const SMOKE_COUNT: u32 = 1;
    pub(crate) const SMOKE_CONCURRENCY: u32 = 1;
    pub(crate) const WARMUP_PATH: &str = "/";
    pub(crate) const WARMUP_CONCURRENCY: u32 = 4;
    pub(crate) const TIMEZONE: &str = "UTC";
    // The router's own defaults (`baton_router::limits::AppLimits`).
    pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
    pub(crate) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
    pub(crate) const CLIENT_HEADER_TIMEOUT: Duration = Duration::from_secs(15);
    pub(crate) const SSH_USER: &str = "root";
    pub(crate) const SSH_PORT: u16 = 22;
    pub(crate) const SSH_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
    pub(crate) const HOST_DIR: &str = ".baton";
    pub(crate) const MAX_UNAVAILABLE_HOSTS: IntOrPercent = IntOrPercent::Count(1);
}

/// Most requests one smoke test or warm-up may send.
const MAX_REQUESTS: u32 = 100_000;

const DURATION_HINT: &str =
    "write a number followed by a unit (ns, us, ms, s, m, h, d), e.g. \"500ms\", \"2s\", \"1m30s\"";

/// `path` without its sequence indices:
/// `strategy.canary.steps[2].set_weight` -> `strategy.canary.steps.set_weight`.
fn without_indices(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_index = false;
    for ch in path.chars() {
        match ch {
            '[' => in_index = true,
            ']' => in_index = false,
            _ if !in_index => out.push(ch),
            _ => {}
        }
    }
    out
}

/// How to fix a value of the field at `path` (indices and env names are ignored).
pub(crate) fn field_hint(path: &str) -> String {
    // `driver.process.command[2]` -> `driver.process.command`
    let base = without_indices(path);
    let base = if base.starts_with("driver.process.env.") {
        "driver.process.env.*"
    } else if base.starts_with("driver.container.env.") {
        "driver.container.env.*"
    } else if base.starts_with("driver.container.labels.") {
        "driver.container.labels"
    } else if let Some(rest) = base.strip_prefix("strategy.canary.steps.mirror.")
        && (rest.starts_with("requests") || rest.starts_with("compare"))
    {
        // A step's overrides take the same values as the top-level section.
        &base["strategy.canary.steps.".len()..]
    } else {
        base.as_str()
    };
    let hint = match base {
        "name" => {
            "use lowercase letters, digits and '-', starting with a letter or digit, \
             at most 63 characters, e.g. `name: my-app`"
        }
        "environment" => "any text naming where the app runs, e.g. `environment: production`",
        "version" => {
            "use letters, digits, '.', '_' and '-', at most 64 characters, e.g. `version: v1.2.3`"
        }
        "listen" => {
            "give an IP address and a port, e.g. `listen: 127.0.0.1:8080`, `listen: 0.0.0.0:8080` \
             or `listen: \"[::1]:8080\"`"
        }
        "instances" => "give a whole number from 1 to 1000, e.g. `instances: 3`",
        "drain_timeout"
        | "driver.process.stop_grace"
        | "driver.container.stop_grace"
        | "readiness.interval"
        | "readiness.timeout"
        | "readiness.initial_delay"
        | "strategy.rolling.min_ready"
        | "strategy.rolling.progress_deadline"
        | "strategy.canary.min_ready"
        | "strategy.canary.progress_deadline"
        | "strategy.blue_green.min_ready"
        | "strategy.blue_green.progress_deadline"
        | "strategy.blue_green.scale_down_delay"
        | "analysis.interval"
        | "analysis.window" => DURATION_HINT,
        "hosts.list" => "list the machines, e.g. `list: [{name: web-1, address: 10.0.0.5}]`",
        "hosts.max_unavailable" => {
            "a whole number of hosts or a percentage of them, e.g. `1` or `50%`"
        }
        "hosts.ssh.connect_timeout" => DURATION_HINT,
        "traffic.balance" => {
            "write `balance: round_robin` (each instance in turn, the default) or \
             `balance: least_requests` (the instance with the fewest requests in flight)"
        }
        "preflight.timeout"
        | "hooks.smoke.command.timeout"
        | "hooks.smoke.http.timeout"
        | "traffic.connect_timeout"
        | "traffic.response_timeout"
        | "traffic.client_header_timeout" => {
            "write a duration longer than zero, e.g. \"10s\", \"2m\", \"1m30s\""
        }
        "driver" => {
            "choose one driver, e.g. `driver: { process: { command: [\"./server\", \"--port\", \"{port}\"] } }`; \
             available drivers: process, container"
        }
        "driver.container" => {
            "give the container settings as a map, e.g. `container: { image: \"shop:{version}\", port: 8080 }`"
        }
        "driver.container.image" => {
            "give an image reference, e.g. `image: registry.example.com/shop:{version}`; \
             placeholders {version} and {app} may be used"
        }
        "driver.container.endpoint" => {
            "give the engine's API socket, e.g. `endpoint: unix:///run/podman/podman.sock`, \
             or leave it out to use DOCKER_HOST or the usual socket paths"
        }
        "driver.container.pull" => {
            "write `pull: never` (the image must be present), `pull: if_missing` (the default) \
             or `pull: always` (pull at every deploy)"
        }
        "driver.container.port" => {
            "give the port the app listens on inside the container, e.g. `port: 8080`"
        }
        "driver.container.network" => {
            "write `network: publish` (the default: the port is published on 127.0.0.1) \
             or `network: host` (the container shares the host's network and listens on PORT)"
        }
        "driver.container.entrypoint" | "driver.container.command" => {
            "give a non-empty list such as `command: [\"serve\", \"--port\", \"8080\"]` \
             or one string, or leave it out to keep the image's"
        }
        "driver.container.env" => "give a map of NAME: value, e.g. `env: { RUST_LOG: info }`",
        "driver.container.env.*" => {
            "give a string value, e.g. `RUST_LOG: info`; placeholders {version}, {port}, {app} \
             and {instance} may be used"
        }
        "driver.container.memory" => {
            "give a size with its unit, at least 6MiB, e.g. `memory: 256MiB` or `memory: 1GiB`"
        }
        "driver.container.cpus" => "give a number of cores, e.g. `cpus: 0.5` or `cpus: 2`",
        "driver.container.labels" => "give a map of name: value, e.g. `labels: { team: shop }`",
        "driver.process" => {
            "give the process settings as a map, e.g. `process: { command: [\"./server\", \"--port\", \"{port}\"] }`"
        }
        "driver.process.command" => {
            "give a non-empty list such as `command: [\"./server\", \"--port\", \"{port}\"]` \
             or one string such as `command: ./server --port {port}`"
        }
        "driver.process.env" => "give a map of NAME: value, e.g. `env: { RUST_LOG: info }`",
        "driver.process.env.*" => {
            "give a string value, e.g. `RUST_LOG: info`; placeholders {version}, {port}, {app}, \
             {instance} and {baton} may be used"
        }
        "driver.process.workdir" => "give a directory path, e.g. `workdir: /srv/app`",
        "readiness" => "give a map, e.g. `readiness: { path: /healthz, interval: 1s }`",
        "readiness.path" => "give an HTTP path starting with '/', e.g. `path: /healthz`",
        "readiness.success_threshold" | "readiness.failure_threshold" => {
            "give a whole number, at least 1, e.g. `failure_threshold: 3`"
        }
        "strategy" => {
            "choose one strategy, e.g. `strategy: { rolling: { max_surge: 1, max_unavailable: 0 } }`; \
             available strategies: rolling (`rolling: {}` takes the defaults), canary \
             (`canary: { steps: [{ set_weight: 10 }, { pause: { duration: 1m } }] }`) and \
             blue_green (`blue_green: {}` takes the defaults)"
        }
        "strategy.rolling" => {
            "give the rolling settings as a map, e.g. `rolling: { max_surge: 1, max_unavailable: 0 }`, \
             or `rolling: {}` for the defaults"
        }
        "strategy.rolling.max_surge" | "strategy.rolling.max_unavailable" => {
            "give a count such as `1` or a percentage from 0% to 100% such as `\"25%\"`"
        }
        "strategy.rolling.max_restarts"
        | "strategy.canary.max_restarts"
        | "strategy.blue_green.max_restarts" => {
            "give a whole number, e.g. `max_restarts: 3` (0 fails the rollout on the first crash)"
        }
        "strategy.canary" => {
            "give the canary settings as a map with a list of steps, e.g. \
             `canary: { steps: [{ set_weight: 10 }, { pause: { duration: 1m } }, { set_weight: 50 }] }`"
        }
        "strategy.canary.steps" => {
            "give a list of steps, one key each, e.g. `- set_weight: 10` then \
             `- pause: { duration: 30s }`; step kinds: set_weight, pause, approval, \
             set_canary_scale, analysis, mirror"
        }
        "strategy.canary.steps.set_weight" => {
            "give the percentage of user traffic for the new version, 0 to 100, e.g. `- set_weight: 10`"
        }
        "strategy.canary.steps.pause" => {
            "write `- pause: { duration: 30s }` to wait that long, `- pause: {}` to wait for \
             `baton promote`, or `- pause: { until: approved }` to wait for `baton approve`"
        }
        "strategy.canary.steps.pause.duration"
        | "strategy.canary.steps.analysis.duration"
        | "strategy.canary.steps.mirror.duration"
        | "strategy.blue_green.auto_promote_after"
        | "analysis.max_p99" => {
            "write a duration longer than zero, e.g. \"500ms\", \"30s\", \"1m30s\""
        }
        "strategy.canary.steps.pause.until" => {
            "the only value is `approved` (`- pause: { until: approved }` waits for `baton approve`); \
             leave `until` out to wait for `baton promote`"
        }
        "strategy.canary.steps.approval" => {
            "write `- approval: {}` (it takes no settings) to wait for `baton approve`"
        }
        "strategy.canary.steps.set_canary_scale"
        | "strategy.canary.steps.set_canary_scale.instances" => {
            "give the number of new-version instances, from 1 to the app's `instances`, \
             e.g. `- set_canary_scale: { instances: 1 }`"
        }
        "strategy.canary.steps.analysis" => {
            "give how long to judge the new version, e.g. `- analysis: { duration: 1m }`; \
             the limits come from the top-level `analysis:` section"
        }
        "strategy.canary.steps.mirror" | "strategy.canary.steps.mirror.percent" => {
            "give the share of requests to copy (1 to 100) and for how long, e.g. \
             `- mirror: { percent: 100, duration: 30s, max_mismatch_rate: 0.01 }`"
        }
        "strategy.canary.steps.mirror.max_mismatch_rate" => {
            "give a fraction from 0 to 1, e.g. `max_mismatch_rate: 0.01` (1% of answers may differ)"
        }
        "strategy.canary.header_route" | "strategy.blue_green.preview_header" => {
            "give a header name and value, e.g. `{ name: X-Canary, equals: always }`"
        }
        "strategy.canary.header_route.name" | "strategy.blue_green.preview_header.name" => {
            "give an HTTP header name: letters, digits and !#$%&'*+-.^_`|~, e.g. `name: X-Canary`"
        }
        "strategy.canary.header_route.equals" | "strategy.blue_green.preview_header.equals" => {
            "give the exact header value that matches, visible characters and spaces, \
             e.g. `equals: always` (quote numbers: `equals: \"1\"`)"
        }
        "strategy.canary.sticky" => {
            "write `sticky: true` to keep each client on the version it first reached, or `false`"
        }
        "strategy.canary.shielding" => {
            "write `shielding: true` to retry failed idempotent canary requests on the stable \
             version, or `false`"
        }
        "strategy.blue_green" => {
            "give the blue-green settings as a map, e.g. \
             `blue_green: { preview_listen: 127.0.0.1:8081, scale_down_delay: 30s }`, \
             or `blue_green: {}` for the defaults"
        }
        "strategy.blue_green.preview_listen" => {
            "give an IP address and a port other than `listen`'s, e.g. `preview_listen: 127.0.0.1:8081`"
        }
        "analysis" => {
            "give a map with at least one limit, e.g. \
             `analysis: { max_error_rate: 0.05, max_p99: 500ms }`; limits: max_error_rate, \
             max_error_rate_increase, max_p99, max_p99_ratio, max_memory, max_memory_ratio, \
             max_cpu_per_request_ratio"
        }
        "analysis.max_memory" => "give a size with its unit, e.g. `max_memory: 512MiB`",
        "analysis.max_memory_ratio" => {
            "give a multiple of the stable version's memory above 1, e.g. `max_memory_ratio: 1.5`"
        }
        "analysis.max_cpu_per_request_ratio" => {
            "give a multiple of the stable version's CPU time per request above 1, \
             e.g. `max_cpu_per_request_ratio: 1.5`"
        }
        "analysis.min_requests" => "give a whole number, e.g. `min_requests: 50`",
        "mirror.requests.methods" => {
            "give HTTP methods in capitals, e.g. `methods: [GET, HEAD]` (only methods that \
             change nothing are safe to send twice)"
        }
        "mirror.requests.paths" | "mirror.requests.exclude_paths" => {
            "give path prefixes starting with '/', e.g. `exclude_paths: [/healthz, /admin/]`"
        }
        "mirror.requests.max_body" => "give a size with its unit, e.g. `max_body: 64KiB`",
        "mirror.compare.headers"
        | "mirror.compare.headers.only"
        | "mirror.compare.headers.ignore" => {
            "give header names, e.g. `headers: { ignore: [x-version] }` to compare every header \
             but those, or `headers: { only: [content-type] }` to compare just those"
        }
        "mirror.redact_headers" => {
            "give the names of headers that carry secrets, e.g. `redact_headers: [x-api-key]`"
        }
        "mirror.compare.body.as" => {
            "write `as: json` (JSON values, paths in `ignore` left out), `as: text` (line by \
             line, `mask` patterns masked), `as: bytes` or `as: none`"
        }
        "mirror.compare.body.ignore" => {
            "give JSON paths starting with `$`, e.g. `ignore: [$.timestamp, $.items[*].id]`, \
             with `as: json` (the default)"
        }
        "mirror.compare.body.mask" => {
            "give regular expressions, e.g. `mask: ['\\d{4}-\\d\\d-\\d\\dT[0-9:.]+Z']`"
        }
        "mirror.samples" => "give a whole number from 0 to 1000, e.g. `samples: 20`",
        "notifications.webhooks.name" => "give each webhook its own name, e.g. `name: slack`",
        "notifications.webhooks.url" => {
            "give the URL notices are POSTed to, e.g. `url: https://hooks.slack.com/services/...`"
        }
        "notifications.webhooks.format" => "write `format: json` (the default) or `format: slack`",
        "notifications.webhooks.events" => {
            "list some of: started, step, waiting_for_approval, analysis_failed, rolled_back, \
             promoted, succeeded, stuck (default: all)"
        }
        "notifications.webhooks.secret_env" => {
            "name an environment variable of `baton serve` holding the key, e.g. \
             `secret_env: BATON_WEBHOOK_SECRET`"
        }
        "analysis.failure_limit" => {
            "give a whole number, at least 1, e.g. `failure_limit: 2` (failing measurements in a row)"
        }
        "analysis.max_error_rate" | "analysis.max_error_rate_increase" => {
            "give a fraction from 0 to 1, e.g. `0.05` for 5%"
        }
        "analysis.max_p99_ratio" => {
            "give a multiple of the stable version's p99 above 1, e.g. `max_p99_ratio: 1.5`"
        }
        "preflight" => {
            "give a list of checks, e.g. `preflight: [{ name: scan, command: [\"./scan\", \"{version}\"] }]`"
        }
        "preflight.name" | "hooks.smoke.command.name" | "hooks.smoke.http.name" => {
            "give a short name, unique in its list, e.g. `name: vulnerability scan`"
        }
        "preflight.command" => {
            "give a non-empty list such as `command: [\"./scan\", \"--app\", \"{app}\"]` or one \
             string such as `command: ./scan {app} {version}`; placeholders {version}, {app} and \
             {baton} may be used"
        }
        "hooks" => {
            "give a map, e.g. `hooks: { smoke: [{ http: { name: home, path: / } }], \
             warmup: { requests: 50 } }`"
        }
        "hooks.smoke" => {
            "give a list of tests, one key each, e.g. `- http: { name: home page, path: / }` or \
             `- command: { name: api tests, command: [\"./api-tests\", \"{preview_url}\"] }`; \
             test kinds: command, http"
        }
        "hooks.smoke.command" => {
            "give a name and a command, e.g. \
             `- command: { name: api tests, command: [\"./api-tests\", \"{preview_url}\"] }`"
        }
        "hooks.smoke.command.command" => {
            "give a non-empty list such as `command: [\"./api-tests\", \"{preview_url}\"]` or one \
             string such as `command: ./api-tests {preview_url}`; placeholders {preview_url}, \
             {version}, {app} and {baton} may be used"
        }
        "hooks.smoke.http" => {
            "give at least a name and a path, e.g. \
             `- http: { name: home page, path: /, expect_status: 200, count: 20, concurrency: 4 }`"
        }
        "hooks.smoke.http.method" => {
            "give an HTTP method such as `GET`, `HEAD` or `POST` (the default is GET)"
        }
        "hooks.smoke.http.path" | "hooks.warmup.path" => {
            "give an HTTP path starting with '/', without spaces, e.g. `path: /` or \
             `path: /search?q=x`"
        }
        "hooks.smoke.http.expect_status" => {
            "give an HTTP status code from 100 to 599, e.g. `expect_status: 200`"
        }
        "hooks.smoke.http.expect_body" => {
            "give text every answer body must contain, e.g. `expect_body: ok`, or leave \
             `expect_body` out to accept any body"
        }
        "hooks.smoke.http.count" => {
            "give the number of requests, from 1 to 100000, e.g. `count: 20`"
        }
        "hooks.smoke.http.concurrency" => {
            "give how many requests run at once, from 1 to the test's `count`, e.g. `concurrency: 4`"
        }
        "hooks.warmup" => {
            "give the number of requests for each new instance, e.g. \
             `warmup: { path: /, requests: 50, concurrency: 4 }`"
        }
        "hooks.warmup.requests" => {
            "give the number of requests for each new instance, from 1 to 100000, e.g. `requests: 50`"
        }
        "hooks.warmup.concurrency" => {
            "give how many requests run at once, from 1 to `requests`, e.g. `concurrency: 4`"
        }
        "upgrade_windows" => {
            "give a time zone and the allowed windows, e.g. `upgrade_windows: { timezone: \
             Europe/Berlin, allowed: [{ days: [mon, tue, wed, thu, fri], start: \"02:00\", \
             end: \"05:00\" }] }`"
        }
        "upgrade_windows.timezone" => {
            "give an IANA time zone name, such as `Europe/Berlin`, `America/New_York` or `UTC`; \
             check the spelling (Area/City, with capitals) against the IANA time zone database"
        }
        "upgrade_windows.allowed" => {
            "give at least one window, e.g. `- { days: [sat, sun], start: \"01:00\", end: \"06:00\" }`"
        }
        "upgrade_windows.allowed.days" => {
            "give a list of days: mon, tue, wed, thu, fri, sat, sun, e.g. `days: [mon, tue, wed]`; \
             leave `days` out for every day"
        }
        "upgrade_windows.allowed.start" | "upgrade_windows.allowed.end" => {
            "write a 24-hour time as \"HH:MM\" in quotes, e.g. `start: \"02:00\"`, \
             `end: \"05:30\"`; an end of \"24:00\" is midnight at the end of the day, and an end \
             before the start closes the window on the next day"
        }
        "on_progress_deadline" => {
            "write `on_progress_deadline: abort` to roll a stalled rollout back (the default), \
             or `on_progress_deadline: pause` to hold it for a person"
        }
        "upgrade_windows.on_end" => {
            "write `on_end: finish` to let a running rollout finish after its window closes, or \
             `on_end: pause` to pause it until the next window"
        }
        _ => "see examples/quickstart.yaml for a complete spec, and schema/baton-spec.schema.json",
    };
    hint.to_owned()
}

/// Collects errors while converting.
struct Checker<'a> {
    file: &'a str,
    map: &'a SourceMap,
    errors: Vec<SpecError>,
}

impl Checker<'_> {
    /// Records a problem with the value at `path`.
    fn fail(&mut self, path: &str, message: impl Into<String>, hint: impl Into<String>) {
        let pos = self.map.value_pos(path);
        self.push(path, pos, message.into(), hint.into());
    }

    /// Records a problem with the map at `path` as a whole, placed at its key.
    fn fail_at_key(&mut self, path: &str, message: impl Into<String>, hint: impl Into<String>) {
        let pos = self.map.key_pos(path);
        self.push(path, pos, message.into(), hint.into());
    }

    fn push(&mut self, path: &str, pos: Option<Pos>, message: String, hint: String) {
        self.errors.push(SpecError {
            file: self.file.to_owned(),
            line: pos.map(|p| p.line),
            column: pos.map(|p| p.column),
            field: path.to_owned(),
            message,
            hint,
        });
    }

    fn duration(
        &mut self,
        path: &str,
        value: Option<&raw::HumanDuration>,
        default: Duration,
    ) -> Duration {
        let Some(raw::HumanDuration(text)) = value else {
            return default;
        };
        match humantime::parse_duration(text.trim()) {
            Ok(d) => d,
            Err(e) => {
                self.fail(
                    path,
                    format!("invalid duration `{text}`: {e}"),
                    DURATION_HINT,
                );
                default
            }
        }
    }

    /// A duration that must not be zero (a zero probe interval would spin).
    fn positive_duration(
        &mut self,
        path: &str,
        value: Option<&raw::HumanDuration>,
        default: Duration,
    ) -> Duration {
        let d = self.duration(path, value, default);
        if d.is_zero() {
            self.fail(
                path,
                "must be longer than zero",
                format!(
                    "{DURATION_HINT}; the default is {}",
                    humantime::format_duration(default)
                ),
            );
            return default;
        }
        d
    }

    fn at_least_one(&mut self, path: &str, value: Option<u32>, default: u32) -> u32 {
        match value {
            None => default,
            Some(0) => {
                self.fail(path, "must be at least 1", field_hint(path));
                default
            }
            Some(n) => n,
        }
    }

    fn int_or_percent(
        &mut self,
        path: &str,
        value: Option<&raw::IntOrPercentText>,
        default: IntOrPercent,
    ) -> IntOrPercent {
        let Some(raw::IntOrPercentText(text)) = value else {
            return default;
        };
        match IntOrPercent::parse(text) {
            Some(IntOrPercent::Percent(p)) if p > 100 => {
                self.fail(
                    path,
                    format!("percentage `{text}` is above 100%"),
                    field_hint(path),
                );
                default
            }
            Some(v) => v,
            None => {
                self.fail(
                    path,
                    format!("`{text}` is neither a whole number nor a percentage"),
                    field_hint(path),
                );
                default
            }
        }
    }

    /// A value the user must give; absent, it is reported where its map is.
    fn required<T>(&mut self, path: &str, value: Option<T>) -> Option<T> {
        if value.is_none() {
            let field = path.rsplit('.').next().unwrap_or(path);
            self.fail(
                path,
                format!("missing required field `{field}`"),
                field_hint(path),
            );
        }
        value
    }

    /// A required duration that must be longer than zero.
    fn required_positive(&mut self, path: &str, value: Option<&raw::HumanDuration>) -> Duration {
        let Some(raw) = self.required(path, value) else {
            return Duration::ZERO;
        };
        self.optional_positive(path, Some(raw)).unwrap_or_default()
    }

    /// An optional duration that, when given, must be longer than zero.
    fn optional_positive(
        &mut self,
        path: &str,
        value: Option<&raw::HumanDuration>,
    ) -> Option<Duration> {
        value?;
        let d = self.duration(path, value, Duration::ZERO);
        if d.is_zero() {
            if self.errors.last().is_none_or(|e| e.field != path) {
                self.fail(path, "must be longer than zero", field_hint(path));
            }
            return None;
        }
        Some(d)
    }

    /// A fraction in 0..=1.
    fn fraction(&mut self, path: &str, value: Option<f64>) -> Option<f64> {
        let v = value?;
        if !(0.0..=1.0).contains(&v) {
            self.fail(path, format!("{v} is out of range 0..=1"), field_hint(path));
            return None;
        }
        Some(v)
    }

    /// A header rule; `None` if a part is missing (already reported).
    fn header(&mut self, path: &str, h: raw::HeaderMatch) -> Option<HeaderMatch> {
        let name_path = join(path, "name");
        let equals_path = join(path, "equals");
        let name = self.required(&name_path, h.name);
        if let Some(name) = &name
            && !is_header_token(name)
        {
            self.fail(
                &name_path,
                format!("`{name}` is not a valid HTTP header name"),
                field_hint(&name_path),
            );
        }
        let equals = self.required(&equals_path, h.equals);
        if let Some(equals) = &equals
            && !is_header_value(equals)
        {
            let message = if equals.is_empty() {
                "must not be empty".to_owned()
            } else {
                format!(
                    "`{}` is not a valid HTTP header value",
                    equals.escape_debug()
                )
            };
            self.fail(&equals_path, message, field_hint(&equals_path));
        }
        Some(HeaderMatch {
            name: name?,
            equals: equals?,
        })
    }

    /// Reports a `min_ready` that is not shorter than `progress_deadline` (under `base`).
    fn min_ready_before_deadline(
        &mut self,
        base: &str,
        min_ready_given: bool,
        min_ready: Duration,
        progress_deadline: Duration,
    ) {
        if min_ready < progress_deadline {
            return;
        }
        let at = join(
            base,
            if min_ready_given {
                "min_ready"
            } else {
                "progress_deadline"
            },
        );
        self.fail(
            &at,
            format!(
                "min_ready ({}) must be shorter than progress_deadline ({})",
                humantime::format_duration(min_ready),
                humantime::format_duration(progress_deadline)
            ),
            "shorten min_ready or lengthen progress_deadline, otherwise no new instance \
             could become available before the rollout times out",
        );
    }

    /// Reports placeholders in `template` that `used` does not allow.
    fn placeholders(&mut self, path: &str, template: &str, used: TemplateUse) {
        let allowed = used.allowed();
        let unknown = unknown_placeholders(template, allowed);
        let Some(first) = unknown.first() else {
            return;
        };
        let braced = |names: &[&str]| {
            names
                .iter()
                .map(|n| format!("{{{n}}}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let list = braced(&unknown);
        let elsewhere: Vec<&str> = unknown
            .iter()
            .copied()
            .filter(|n| TemplateUse::ALL.iter().any(|u| u.allowed().contains(n)))
            .collect();
        let message = if elsewhere.len() == unknown.len() {
            format!("{list} cannot be used in {}", used.what())
        } else {
            format!("unknown placeholder {list}")
        };
        let mut hint = match used {
            TemplateUse::Instance => format!("the placeholders are {}", braced(allowed)),
            _ => format!(
                "the placeholders of {} are {}",
                used.what(),
                braced(allowed)
            ),
        };
        for name in elsewhere {
            let only = TemplateUse::ALL
                .iter()
                .filter(|u| u.allowed().contains(&name))
                .map(|u| u.what())
                .collect::<Vec<_>>()
                .join(" and ");
            hint = format!("{hint}; {{{name}}} exists only in {only}");
        }
        if let Some(close) = crate::suggest(first, allowed) {
            hint = format!("did you mean {{{close}}}? {hint}");
        }
        self.fail(path, message, hint);
    }

    /// The environment of an instance at `BASE.env`: valid names, values with the
    /// instance placeholders only.
    fn instance_env(&mut self, base: &str, env: &BTreeMap<String, String>) {
        for (name, value) in env {
            let path = join(&join(base, "env"), name);
            if name.is_empty() || name.contains(['=', '\0']) {
                self.fail(
                    &path,
                    format!("invalid environment variable name `{name}`"),
                    "use a name without '=' such as `RUST_LOG`",
                );
            }
            self.placeholders(&path, value, TemplateUse::Instance);
        }
    }

    /// A size with its unit at `path` (`64MiB`, `1GiB`), at least `min` bytes
    /// (`too_small` says why otherwise).
    fn size(&mut self, path: &str, text: &str, min: u64, too_small: &str) -> Option<u64> {
        match text.trim().parse::<bytesize::ByteSize>() {
            Ok(size) if size.as_u64() >= min => Some(size.as_u64()),
            Ok(_) => {
                self.fail(path, format!("`{text}` {too_small}"), field_hint(path));
                None
            }
            Err(e) => {
                self.fail(
                    path,
                    format!("invalid size `{text}`: {e}"),
                    field_hint(path),
                );
                None
            }
        }
    }

    /// A command at `path`: a list, or one string split like a shell does; never
    /// empty, and with only the placeholders `used` allows.
    fn command(&mut self, path: &str, command: raw::CommandLine, used: TemplateUse) -> Vec<String> {
        let (command, from_list) = match command {
            raw::CommandLine::List(args) => (args, true),
            raw::CommandLine::Line(line) => match split_command(&line) {
                Ok(words) => (words, false),
                Err(e) => {
                    self.fail(
                        path,
                        format!("cannot split the command: {e}"),
                        "close every quote, or give the command as a list of arguments",
                    );
                    (Vec::new(), false)
                }
            },
        };
        if command.is_empty() || command[0].trim().is_empty() {
            if self.errors.iter().all(|e| e.field != path) {
                self.fail(path, "the command is empty", field_hint(path));
            }
        } else {
            for (i, arg) in command.iter().enumerate() {
                // Elements of a one-string command have no place of their own.
                let at = if from_list {
                    format!("{path}[{i}]")
                } else {
                    path.to_owned()
                };
                self.placeholders(&at, arg, used);
            }
        }
        command
    }

    /// A required name at `path`, not blank and not in `taken` (where it is added);
    /// `what` names the list's items in the message.
    fn unique_name(
        &mut self,
        path: &str,
        name: Option<String>,
        taken: &mut Vec<String>,
        what: &str,
    ) -> String {
        let Some(name) = self.required(path, name) else {
            return String::new();
        };
        if name.trim().is_empty() {
            self.fail(path, "must not be empty", field_hint(path));
        } else if taken.contains(&name) {
            self.fail(
                path,
                format!("another {what} is already named `{name}`"),
                format!(
                    "give each {what} its own name, so that messages and events can tell them apart"
                ),
            );
        } else {
            taken.push(name.clone());
        }
        name
    }

    /// An HTTP request path at `path`: starts with '/', no spaces or control characters.
    fn request_path(&mut self, path: &str, value: &str) {
        if !value.starts_with('/') {
            self.fail(
                path,
                format!("`{value}` does not start with '/'"),
                field_hint(path),
            );
        } else if value
            .chars()
            .any(|ch| ch.is_whitespace() || ch.is_control())
        {
            self.fail(
                path,
                format!(
                    "`{}` contains a space or control character",
                    value.escape_debug()
                ),
                field_hint(path),
            );
        }
    }

    /// A count in `1..=max` at `path`, `default` when absent; `max_what` explains `max`.
    fn count_in(
        &mut self,
        path: &str,
        value: Option<u32>,
        default: u32,
        max: u32,
        max_what: &str,
    ) -> u32 {
        let n = value.unwrap_or(default);
        if !(1..=max).contains(&n) {
            self.fail(
                path,
                format!("{n} is out of range 1..={max}{max_what}"),
                field_hint(path),
            );
        }
        n
    }
}

/// Where a command template is used, which decides its placeholders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TemplateUse {
    /// `driver.process.command` and env values.
    Instance,
    /// `preflight[].command`.
    Preflight,
    /// `hooks.smoke[].command.command`.
    Smoke,
    /// `driver.container.image`.
    Image,
}

impl TemplateUse {
    const ALL: [TemplateUse; 4] = [
        TemplateUse::Instance,
        TemplateUse::Preflight,
        TemplateUse::Smoke,
        TemplateUse::Image,
    ];

    fn allowed(self) -> &'static [&'static str] {
        match self {
            TemplateUse::Instance => &PLACEHOLDERS,
            TemplateUse::Preflight => &PREFLIGHT_PLACEHOLDERS,
            TemplateUse::Smoke => &SMOKE_PLACEHOLDERS,
            TemplateUse::Image => &IMAGE_PLACEHOLDERS,
        }
    }

    fn what(self) -> &'static str {
        match self {
            TemplateUse::Instance => "instance commands and env values",
            TemplateUse::Preflight => "a pre-flight command",
            TemplateUse::Smoke => "a smoke test command",
            TemplateUse::Image => "an image reference",
        }
    }
}

fn is_valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !bytes.is_empty()
        && bytes.len() <= 63
        && ok(bytes[0])
        && bytes.iter().all(|&b| ok(b) || b == b'-')
}

/// A release version as specs and deploys name it: 1 to 64 letters, digits,
/// '.', '_' or '-'.
pub fn is_valid_version(version: &str) -> bool {
    (1..=64).contains(&version.len())
        && version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// An HTTP header name: a non-empty RFC 9110 token.
fn is_header_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// An HTTP header value baton can match exactly: not empty, visible ASCII, spaces
/// and tabs inside but not at either end (clients and proxies trim those).
fn is_header_value(value: &str) -> bool {
    !value.is_empty()
        && value.trim_matches([' ', '\t']) == value
        && value
            .bytes()
            .all(|b| b.is_ascii_graphic() || b == b' ' || b == b'\t')
}

/// Validates `spec` (read from `file`, positions in `map`) and builds the typed spec.
pub(crate) fn validate(
    file: &str,
    map: &SourceMap,
    spec: raw::AppSpec,
) -> Result<AppSpec, Vec<SpecError>> {
    let mut c = Checker {
        file,
        map,
        errors: Vec::new(),
    };

    if !is_valid_name(&spec.name) {
        c.fail(
            "name",
            format!("invalid app name `{}`", spec.name),
            field_hint("name"),
        );
    }
    let environment = match spec.environment {
        Some(env) if env.trim().is_empty() => {
            c.fail(
                "environment",
                "must not be empty",
                field_hint("environment"),
            );
            String::new()
        }
        Some(env) => env,
        None => defaults::ENVIRONMENT.to_owned(),
    };
    if let Some(version) = &spec.version
        && !is_valid_version(version)
    {
        c.fail(
            "version",
            format!("invalid version `{version}`"),
            field_hint("version"),
        );
    }
    let listen = match spec.listen.trim().parse::<SocketAddr>() {
        Ok(addr) => addr,
        Err(_) => {
            c.fail(
                "listen",
                format!("`{}` is not an IP:PORT socket address", spec.listen),
                field_hint("listen"),
            );
            SocketAddr::from(([127, 0, 0, 1], 0))
        }
    };
    let instances = spec.instances.unwrap_or(defaults::INSTANCES);
    if !(1..=1000).contains(&instances) {
        c.fail(
            "instances",
            format!("{instances} is out of range 1..=1000"),
            field_hint("instances"),
        );
    }
    let drain_timeout = c.duration(
        "drain_timeout",
        spec.drain_timeout.as_ref(),
        defaults::DRAIN_TIMEOUT,
    );

    let driver = match spec.driver {
        raw::DriverSpec::Process(p) => DriverSpec::Process(process_driver(&mut c, p)),
        raw::DriverSpec::Container(p) => DriverSpec::Container(container_driver(&mut c, *p)),
    };
    let readiness = readiness(&mut c, spec.readiness.unwrap_or_default());
    let has_analysis = spec.analysis.is_some();
    let mirror = mirror_settings(&mut c, "mirror", spec.mirror.unwrap_or_default());
    let strategy = match spec
        .strategy
        .unwrap_or(raw::StrategySpec::Rolling(raw::RollingSpec::default()))
    {
        raw::StrategySpec::Rolling(r) => StrategySpec::Rolling(rolling(&mut c, r, instances)),
        raw::StrategySpec::Canary(r) => {
            StrategySpec::Canary(canary(&mut c, r, instances, has_analysis, &mirror))
        }
        raw::StrategySpec::BlueGreen(r) => {
            let listen = c
                .errors
                .iter()
                .all(|e| e.field != "listen")
                .then_some(listen);
            StrategySpec::BlueGreen(blue_green(&mut c, r, listen))
        }
    };
    let analysis = spec.analysis.map(|a| analysis(&mut c, a));
    let preflight = preflight(&mut c, spec.preflight.unwrap_or_default());
    let hooks = hooks(&mut c, spec.hooks.unwrap_or_default());
    let upgrade_windows = spec.upgrade_windows.map(|w| upgrade_windows(&mut c, w));
    let on_progress_deadline = match spec.on_progress_deadline.map(|raw::OnDeadlineText(t)| t) {
        None => OnProgressDeadline::Abort,
        Some(text) => match text.as_str() {
            "abort" => OnProgressDeadline::Abort,
            "pause" => OnProgressDeadline::Pause,
            other => {
                c.fail(
                    "on_progress_deadline",
                    format!("unknown on_progress_deadline `{other}`"),
                    field_hint("on_progress_deadline"),
                );
                OnProgressDeadline::Abort
            }
        },
    };

    let traffic = traffic(&mut c, spec.traffic.unwrap_or_default());
    let webhooks = webhooks(
        &mut c,
        spec.notifications
            .and_then(|n| n.webhooks)
            .unwrap_or_default(),
    );
    let hosts = spec.hosts.map(|h| hosts(&mut c, h, instances));

    if c.errors.is_empty() {
        Ok(AppSpec {
            name: spec.name,
            environment,
            version: spec.version,
            listen,
            instances,
            driver,
            readiness,
            strategy,
            drain_timeout,
            analysis,
            preflight,
            hooks,
            upgrade_windows,
            on_progress_deadline,
            traffic,
            hosts,
            mirror,
            approval_by_another_person: spec
                .approval
                .and_then(|a| a.by_another_person)
                .unwrap_or(false),
            webhooks,
        })
    } else {
        Err(c.errors)
    }
}

fn traffic(c: &mut Checker<'_>, t: raw::TrafficSpec) -> TrafficSpec {
    let balance = match t.balance.map(|raw::BalanceText(b)| b) {
        None => Balance::RoundRobin,
        Some(text) => match text.as_str() {
            "round_robin" => Balance::RoundRobin,
            "least_requests" => Balance::LeastRequests,
            other => {
                c.fail(
                    "traffic.balance",
                    format!("unknown balance `{other}`"),
                    field_hint("traffic.balance"),
                );
                Balance::RoundRobin
            }
        },
    };
    TrafficSpec {
        balance,
        connect_timeout: c.positive_duration(
            "traffic.connect_timeout",
            t.connect_timeout.as_ref(),
            defaults::CONNECT_TIMEOUT,
        ),
        response_timeout: c.positive_duration(
            "traffic.response_timeout",
            t.response_timeout.as_ref(),
            defaults::RESPONSE_TIMEOUT,
        ),
        client_header_timeout: c.positive_duration(
            "traffic.client_header_timeout",
            t.client_header_timeout.as_ref(),
            defaults::CLIENT_HEADER_TIMEOUT,
        ),
    }
}

fn hosts(c: &mut Checker<'_>, h: raw::HostsSpec, instances: u32) -> HostsSpec {
    let ssh = h.ssh.unwrap_or_default();
    if h.list.is_empty() {
        c.fail(
            "hosts.list",
            "must name at least one host",
            field_hint("hosts.list"),
        );
    }
    let dir = h.dir.unwrap_or_else(|| defaults::HOST_DIR.to_owned());
    let mut seen = std::collections::BTreeSet::new();
    let mut list = Vec::new();
    for (i, e) in h.list.into_iter().enumerate() {
        let at = format!("hosts.list[{i}]");
        if !is_valid_name(&e.name) {
            c.fail(
                &format!("{at}.name"),
                format!("invalid host name `{}`", e.name),
                "use lowercase letters, digits and '-', such as `web-1`",
            );
        } else if !seen.insert(e.name.clone()) {
            c.fail(
                &format!("{at}.name"),
                format!("host `{}` is listed twice", e.name),
                "give every host its own name",
            );
        }
        let address = e.address.trim().to_owned();
        if address.is_empty() || address.contains(char::is_whitespace) || address.contains('/') {
            c.fail(
                &format!("{at}.address"),
                format!("`{}` is not an IP address or host name", e.address),
                "write the address SSH reaches the host at, such as `10.0.0.5` or `web-1.internal`",
            );
        }
        list.push(HostSpec {
            name: e.name,
            address,
            port: e.port.or(ssh.port).unwrap_or(defaults::SSH_PORT),
            user: e
                .user
                .or_else(|| ssh.user.clone())
                .unwrap_or_else(|| defaults::SSH_USER.to_owned()),
            identity_file: e
                .identity_file
                .or_else(|| ssh.identity_file.clone())
                .map(PathBuf::from),
            dir: e.dir.unwrap_or_else(|| dir.clone()),
            labels: e.labels.unwrap_or_default(),
        });
    }
    let spread = match h.spread.as_deref() {
        None | Some("even") => Spread::Even,
        Some("per_host") => Spread::PerHost,
        Some(other) => {
            c.fail(
                "hosts.spread",
                format!("unknown spread `{other}`"),
                "use `even` (instances is the total) or `per_host` (instances on every host)",
            );
            Spread::Even
        }
    };
    let router = match h.router.as_deref() {
        None | Some("per_host") => RouterPlacement::PerHost,
        Some("central") => RouterPlacement::Central,
        Some(other) => {
            c.fail(
                "hosts.router",
                format!("unknown router placement `{other}`"),
                "use `per_host` (a router on every host) or `central` (baton's own router)",
            );
            RouterPlacement::PerHost
        }
    };
    if spread == Spread::Even
        && router == RouterPlacement::PerHost
        && (instances as usize) < list.len()
    {
        c.fail(
            "instances",
            format!(
                "{instances} instance(s) spread over {} hosts leaves a host with none, and its \
                 router with nothing to send users to",
                list.len()
            ),
            "run at least one instance per host (`instances` >= the number of hosts, or \
             `hosts.spread: per_host`), or use `hosts.router: central`",
        );
    }
    let max_unavailable = c.int_or_percent(
        "hosts.max_unavailable",
        h.max_unavailable.as_ref(),
        defaults::MAX_UNAVAILABLE_HOSTS,
    );
    HostsSpec {
        hosts: list,
        spread,
        router,
        max_unavailable,
        known_hosts: ssh.known_hosts.map(PathBuf::from),
        connect_timeout: c.positive_duration(
            "hosts.ssh.connect_timeout",
            ssh.connect_timeout.as_ref(),
            defaults::SSH_CONNECT_TIMEOUT,
        ),
    }
}

fn process_driver(c: &mut Checker<'_>, p: raw::ProcessDriverSpec) -> ProcessDriverSpec {
    const BASE: &str = "driver.process";
    let command = c.command(&join(BASE, "command"), p.command, TemplateUse::Instance);

    let env: BTreeMap<String, String> = p.env.unwrap_or_default();
    c.instance_env(BASE, &env);

    let workdir = match p.workdir {
        Some(dir) if dir.trim().is_empty() => {
            c.fail(
                &join(BASE, "workdir"),
                "must not be empty",
                "give a directory, or leave `workdir` out to use baton's own",
            );
            None
        }
        other => other.map(PathBuf::from),
    };
    let stop_grace = c.duration(
        &join(BASE, "stop_grace"),
        p.stop_grace.as_ref(),
        defaults::STOP_GRACE,
    );
    ProcessDriverSpec {
        command,
        env,
        workdir,
        stop_grace,
    }
}

fn container_driver(c: &mut Checker<'_>, p: raw::ContainerDriverSpec) -> ContainerDriverSpec {
    const BASE: &str = "driver.container";
    let image = match c.required(&join(BASE, "image"), p.image) {
        Some(image) if image.trim().is_empty() || image.contains(char::is_whitespace) => {
            c.fail(
                &join(BASE, "image"),
                format!("`{image}` is not an image reference"),
                field_hint("driver.container.image"),
            );
            image
        }
        Some(image) => {
            c.placeholders(&join(BASE, "image"), &image, TemplateUse::Image);
            image
        }
        None => String::new(),
    };
    let endpoint = match p.endpoint {
        Some(e)
            if !(e.starts_with("unix://")
                || e.starts_with('/')
                || e.starts_with("tcp://")
                || e.starts_with("http://")) =>
        {
            c.fail(
                &join(BASE, "endpoint"),
                format!("`{e}` is not an API endpoint"),
                field_hint("driver.container.endpoint"),
            );
            None
        }
        other => other,
    };
    let pull = match p.pull.as_deref() {
        None | Some("if_missing") => PullPolicy::IfMissing,
        Some("never") => PullPolicy::Never,
        Some("always") => PullPolicy::Always,
        Some(other) => {
            c.fail(
                &join(BASE, "pull"),
                format!("unknown pull policy `{other}`"),
                field_hint("driver.container.pull"),
            );
            PullPolicy::IfMissing
        }
    };
    let port = match c.required(&join(BASE, "port"), p.port) {
        Some(0) => {
            c.fail(
                &join(BASE, "port"),
                "must not be 0",
                field_hint("driver.container.port"),
            );
            0
        }
        Some(port) => port,
        None => 0,
    };
    let network = match p.network.as_deref() {
        None | Some("publish") => ContainerNetwork::Publish,
        Some("host") => ContainerNetwork::Host,
        Some(other) => {
            c.fail(
                &join(BASE, "network"),
                format!("unknown network mode `{other}`"),
                field_hint("driver.container.network"),
            );
            ContainerNetwork::Publish
        }
    };
    let entrypoint = p
        .entrypoint
        .map(|e| c.command(&join(BASE, "entrypoint"), e, TemplateUse::Instance));
    let command = p
        .command
        .map(|e| c.command(&join(BASE, "command"), e, TemplateUse::Instance));
    let env: BTreeMap<String, String> = p.env.unwrap_or_default();
    c.instance_env(BASE, &env);
    // Below 6 MiB no engine starts a container.
    let memory_bytes = p.memory.as_deref().and_then(|text| {
        c.size(
            &join(BASE, "memory"),
            text,
            6 << 20,
            "is too little memory for a container",
        )
    });
    let cpus = match p.cpus {
        Some(cpus) if !(cpus.is_finite() && cpus >= 0.01) => {
            c.fail(
                &join(BASE, "cpus"),
                format!("`{cpus}` is not a CPU limit"),
                field_hint("driver.container.cpus"),
            );
            None
        }
        other => other,
    };
    let labels = p.labels.unwrap_or_default();
    for name in labels.keys() {
        if name.starts_with("baton.") {
            c.fail(
                &join(&join(BASE, "labels"), name),
                format!("label `{name}` is baton's own"),
                "baton sets the `baton.*` labels itself (app, instance, revision, owner); \
                 name yours differently",
            );
        }
    }
    let stop_grace = c.duration(
        &join(BASE, "stop_grace"),
        p.stop_grace.as_ref(),
        defaults::STOP_GRACE,
    );
    ContainerDriverSpec {
        image,
        endpoint,
        pull,
        port,
        network,
        entrypoint,
        command,
        env,
        user: p.user.filter(|u| !u.trim().is_empty()),
        workdir: p.workdir.filter(|w| !w.trim().is_empty()),
        memory_bytes,
        cpus,
        read_only: p.read_only.unwrap_or(false),
        labels,
        stop_grace,
    }
}

fn readiness(c: &mut Checker<'_>, r: raw::ReadinessSpec) -> ReadinessSpec {
    let path = r
        .path
        .unwrap_or_else(|| defaults::READINESS_PATH.to_owned());
    if !path.starts_with('/') {
        c.fail(
            "readiness.path",
            format!("`{path}` does not start with '/'"),
            field_hint("readiness.path"),
        );
    }
    ReadinessSpec {
        path,
        interval: c.positive_duration(
            "readiness.interval",
            r.interval.as_ref(),
            defaults::READINESS_INTERVAL,
        ),
        timeout: c.positive_duration(
            "readiness.timeout",
            r.timeout.as_ref(),
            defaults::READINESS_TIMEOUT,
        ),
        success_threshold: c.at_least_one(
            "readiness.success_threshold",
            r.success_threshold,
            defaults::SUCCESS_THRESHOLD,
        ),
        failure_threshold: c.at_least_one(
            "readiness.failure_threshold",
            r.failure_threshold,
            defaults::FAILURE_THRESHOLD,
        ),
        initial_delay: c.duration(
            "readiness.initial_delay",
            r.initial_delay.as_ref(),
            defaults::INITIAL_DELAY,
        ),
    }
}

fn rolling(c: &mut Checker<'_>, r: raw::RollingSpec, instances: u32) -> RollingSpec {
    const SURGE: &str = "strategy.rolling.max_surge";
    const UNAVAILABLE: &str = "strategy.rolling.max_unavailable";
    const MIN_READY: &str = "strategy.rolling.min_ready";
    const DEADLINE: &str = "strategy.rolling.progress_deadline";

    let max_surge = c.int_or_percent(SURGE, r.max_surge.as_ref(), defaults::MAX_SURGE);
    let max_unavailable = c.int_or_percent(
        UNAVAILABLE,
        r.max_unavailable.as_ref(),
        defaults::MAX_UNAVAILABLE,
    );
    if max_surge.resolve_up(instances) == 0 && max_unavailable.resolve_down(instances) == 0 {
        // Point at whichever of the two the user wrote (surge first).
        let at = if r.max_surge.is_some() || r.max_unavailable.is_none() {
            SURGE
        } else {
            UNAVAILABLE
        };
        c.fail(
            at,
            format!(
                "max_surge ({max_surge}) and max_unavailable ({max_unavailable}) both come to 0 \
                 for {instances} instance(s), so the rollout could never replace an instance"
            ),
            "allow at least one extra instance (`max_surge: 1`) or one missing instance \
             (`max_unavailable: 1`)",
        );
    }
    let min_ready = c.duration(MIN_READY, r.min_ready.as_ref(), defaults::MIN_READY);
    let progress_deadline = c.duration(
        DEADLINE,
        r.progress_deadline.as_ref(),
        defaults::PROGRESS_DEADLINE,
    );
    c.min_ready_before_deadline(
        "strategy.rolling",
        r.min_ready.is_some(),
        min_ready,
        progress_deadline,
    );
    RollingSpec {
        max_surge,
        max_unavailable,
        min_ready,
        progress_deadline,
        max_restarts: r.max_restarts.unwrap_or(defaults::MAX_RESTARTS),
    }
}

fn canary(
    c: &mut Checker<'_>,
    r: raw::CanarySpec,
    instances: u32,
    has_analysis: bool,
    mirror: &MirrorSpec,
) -> CanarySpec {
    const BASE: &str = "strategy.canary";
    let steps_path = join(BASE, "steps");
    let mut steps = Vec::new();
    match c.required(&steps_path, r.steps) {
        Some(raw_steps) if raw_steps.is_empty() => {
            c.fail(
                &steps_path,
                "a canary needs at least one step",
                field_hint(&steps_path),
            );
        }
        Some(raw_steps) => {
            for (i, step) in raw_steps.into_iter().enumerate() {
                let path = format!("{steps_path}[{i}]");
                if let Some(step) = canary_step(c, &path, step, instances, has_analysis, mirror) {
                    steps.push(step);
                }
            }
        }
        None => {}
    }
    let min_ready_path = join(BASE, "min_ready");
    let deadline_path = join(BASE, "progress_deadline");
    let min_ready = c.duration(&min_ready_path, r.min_ready.as_ref(), defaults::MIN_READY);
    let progress_deadline = c.duration(
        &deadline_path,
        r.progress_deadline.as_ref(),
        defaults::PROGRESS_DEADLINE,
    );
    c.min_ready_before_deadline(BASE, r.min_ready.is_some(), min_ready, progress_deadline);
    let header_route = r
        .header_route
        .and_then(|h| c.header(&join(BASE, "header_route"), h));
    CanarySpec {
        steps,
        min_ready,
        progress_deadline,
        max_restarts: r.max_restarts.unwrap_or(defaults::MAX_RESTARTS),
        header_route,
        sticky: r.sticky.unwrap_or(false),
        shielding: r.shielding.unwrap_or(false),
    }
}

/// One canary step at `path` (`strategy.canary.steps[i]`); `None` if it is invalid.
fn canary_step(
    c: &mut Checker<'_>,
    path: &str,
    step: raw::CanaryStep,
    instances: u32,
    has_analysis: bool,
    app_mirror: &MirrorSpec,
) -> Option<CanaryStep> {
    match step {
        raw::CanaryStep::SetWeight(weight) => {
            if weight > 100 {
                let at = join(path, "set_weight");
                c.fail(
                    &at,
                    format!("weight {weight} is out of range 0..=100"),
                    field_hint(&at),
                );
                return None;
            }
            Some(CanaryStep::SetWeight(weight))
        }
        raw::CanaryStep::Pause(p) => {
            let base = join(path, "pause");
            let until_path = join(&base, "until");
            match (p.until.map(|raw::PauseUntil(text)| text), &p.duration) {
                (Some(_), Some(_)) => {
                    c.fail(
                        &until_path,
                        "a pause has either a `duration` or `until`, not both",
                        "write `- pause: { duration: 30s }` to wait a while, or \
                         `- pause: { until: approved }` to wait for `baton approve`",
                    );
                    None
                }
                (Some(until), None) if until.trim() == "approved" => Some(CanaryStep::Approval),
                (Some(until), None) => {
                    let mut hint = field_hint(&until_path);
                    if crate::suggest(until.trim(), &["approved"]).is_some() {
                        hint = format!("did you mean `approved`? {hint}");
                    }
                    c.fail(
                        &until_path,
                        format!("unknown pause condition `{until}`"),
                        hint,
                    );
                    None
                }
                (None, Some(_)) => {
                    let d = c.optional_positive(&join(&base, "duration"), p.duration.as_ref())?;
                    Some(CanaryStep::Pause(Some(d)))
                }
                (None, None) => Some(CanaryStep::Pause(None)),
            }
        }
        raw::CanaryStep::Approval(raw::ApprovalStep {}) => Some(CanaryStep::Approval),
        raw::CanaryStep::SetCanaryScale(s) => {
            let at = join(&join(path, "set_canary_scale"), "instances");
            let n = c.required(&at, s.instances)?;
            if !(1..=instances).contains(&n) {
                c.fail(
                    &at,
                    format!("{n} is out of range 1..={instances} (the app's `instances`)"),
                    field_hint(&at),
                );
                return None;
            }
            Some(CanaryStep::SetCanaryScale(n))
        }
        raw::CanaryStep::Analysis(a) => {
            let base = join(path, "analysis");
            let d = c.required_positive(&join(&base, "duration"), a.duration.as_ref());
            if !has_analysis {
                c.fail(
                    &base,
                    "an analysis step needs the top-level `analysis:` section",
                    "add the limits to judge by, e.g. \
                     `analysis: { max_error_rate: 0.05, max_p99: 500ms }` at the top level",
                );
                return None;
            }
            (!d.is_zero()).then_some(CanaryStep::Analysis(d))
        }
        raw::CanaryStep::Mirror(m) => {
            let base = join(path, "mirror");
            let before = c.errors.len();
            let percent_path = join(&base, "percent");
            let percent = c.required(&percent_path, m.percent).unwrap_or(0);
            if m.percent.is_some() && !(1..=100).contains(&percent) {
                c.fail(
                    &percent_path,
                    format!("{percent} is out of range 1..=100"),
                    field_hint(&percent_path),
                );
            }
            let duration = c.required_positive(&join(&base, "duration"), m.duration.as_ref());
            let max_mismatch_rate = c
                .fraction(&join(&base, "max_mismatch_rate"), m.max_mismatch_rate)
                .unwrap_or(defaults::MAX_MISMATCH_RATE);
            let overrides = m.requests.is_some() || m.compare.is_some();
            let requests = m
                .requests
                .map(|r| mirror_requests(c, &join(&base, "requests"), r))
                .unwrap_or_else(|| app_mirror.requests.clone());
            let compare = m.compare.map_or_else(
                || app_mirror.compare.clone(),
                |r| {
                    mirror_compare(
                        c,
                        &join(&base, "compare"),
                        r,
                        &app_mirror.compare,
                        &app_mirror.redact_headers,
                    )
                },
            );
            let settings = overrides.then(|| {
                Box::new(MirrorSpec {
                    requests,
                    compare,
                    ..app_mirror.clone()
                })
            });
            (c.errors.len() == before).then_some(CanaryStep::Mirror {
                percent,
                duration,
                max_mismatch_rate,
                settings,
            })
        }
    }
}

/// `notifications.webhooks`.
fn webhooks(c: &mut Checker<'_>, list: Vec<raw::WebhookEntry>) -> Vec<WebhookSpec> {
    const BASE: &str = "notifications.webhooks";
    let mut out: Vec<WebhookSpec> = Vec::new();
    for (i, w) in list.into_iter().enumerate() {
        let base = format!("{BASE}[{i}]");
        let name = c.required(&join(&base, "name"), w.name).unwrap_or_default();
        if out.iter().any(|o| o.name == name) {
            let at = join(&base, "name");
            c.fail(
                &at,
                format!("a webhook named `{name}` is listed twice"),
                field_hint(&at),
            );
        }
        let url = c.required(&join(&base, "url"), w.url).unwrap_or_default();
        let scheme_ok = url.starts_with("http://") || url.starts_with("https://");
        if !url.is_empty() && (!scheme_ok || url.contains(char::is_whitespace)) {
            let at = join(&base, "url");
            c.fail(
                &at,
                format!("`{url}` is not an http:// or https:// URL"),
                field_hint(&at),
            );
        }
        let format = match w.format.as_deref() {
            None | Some("json") => WebhookFormat::Json,
            Some("slack") => WebhookFormat::Slack,
            Some(other) => {
                let at = join(&base, "format");
                c.fail(&at, format!("unknown format `{other}`"), field_hint(&at));
                WebhookFormat::Json
            }
        };
        let events = w.events.unwrap_or_default();
        for (k, e) in events.iter().enumerate() {
            if !WEBHOOK_EVENTS.contains(&e.as_str()) {
                let at = format!("{base}.events[{k}]");
                c.fail(
                    &at,
                    format!("unknown event `{e}`"),
                    field_hint(&join(&base, "events")),
                );
            }
        }
        if let Some(var) = &w.secret_env
            && (var.is_empty() || var.contains(['=', '\0']))
        {
            let at = join(&base, "secret_env");
            c.fail(
                &at,
                format!("`{var}` is not an environment variable name"),
                field_hint(&at),
            );
        }
        let timeout = c.positive_duration(
            &join(&base, "timeout"),
            w.timeout.as_ref(),
            std::time::Duration::from_secs(5),
        );
        out.push(WebhookSpec {
            name,
            url,
            format,
            events,
            secret_env: w.secret_env,
            timeout,
        });
    }
    out
}

/// The `mirror:` section at `base`.
fn mirror_settings(c: &mut Checker<'_>, base: &str, m: raw::MirrorSpec) -> MirrorSpec {
    let redact_headers = header_names(c, &join(base, "redact_headers"), m.redact_headers);
    let samples = m.samples.unwrap_or(defaults::MIRROR_SAMPLES);
    if samples > 1000 {
        let at = join(base, "samples");
        c.fail(
            &at,
            format!("{samples} is out of range 0..=1000"),
            field_hint(&at),
        );
    }
    let requests = m
        .requests
        .map(|r| mirror_requests(c, &join(base, "requests"), r))
        .unwrap_or_default();
    let compare = m.compare.map_or_else(MirrorCompare::default, |r| {
        mirror_compare(
            c,
            &join(base, "compare"),
            r,
            &MirrorCompare::default(),
            &redact_headers,
        )
    });
    MirrorSpec {
        requests,
        compare,
        redact_headers,
        samples,
    }
}

/// Header names at `path` (a list), lower-cased.
fn header_names(c: &mut Checker<'_>, path: &str, names: Option<Vec<String>>) -> Vec<String> {
    let mut out = Vec::new();
    for (i, name) in names.unwrap_or_default().into_iter().enumerate() {
        if is_header_token(&name) {
            out.push(name.to_ascii_lowercase());
        } else {
            let at = format!("{path}[{i}]");
            c.fail(
                &at,
                format!("`{name}` is not a valid HTTP header name"),
                field_hint(path),
            );
        }
    }
    out
}

/// `requests:` of a mirror section at `base`.
fn mirror_requests(c: &mut Checker<'_>, base: &str, r: raw::MirrorRequestsSpec) -> MirrorRequests {
    let mut out = MirrorRequests::default();
    if let Some(methods) = r.methods {
        let path = join(base, "methods");
        if methods.is_empty() {
            c.fail(&path, "at least one method is needed", field_hint(&path));
        }
        for (i, m) in methods.iter().enumerate() {
            if !is_header_token(m) || m.bytes().any(|b| b.is_ascii_lowercase()) {
                c.fail(
                    &format!("{path}[{i}]"),
                    format!("`{m}` is not an HTTP method in capitals"),
                    field_hint(&path),
                );
            }
        }
        out.methods = methods;
    }
    for (field, list, target) in [
        ("paths", r.paths, &mut out.paths),
        ("exclude_paths", r.exclude_paths, &mut out.exclude_paths),
    ] {
        let path = join(base, field);
        for (i, p) in list.unwrap_or_default().into_iter().enumerate() {
            c.request_path(&format!("{path}[{i}]"), &p);
            target.push(p);
        }
    }
    if let Some(text) = r.max_body {
        let path = join(base, "max_body");
        if let Some(n) = c.size(&path, &text, 1, "is too small: give at least 1B") {
            if n > 16 << 20 {
                c.fail(
                    &path,
                    format!("`{text}` is over the 16MiB limit"),
                    field_hint(&path),
                );
            }
            out.max_body_bytes = n;
        }
    }
    out
}

/// `compare:` at `base`; each part given replaces `inherit`'s.
fn mirror_compare(
    c: &mut Checker<'_>,
    base: &str,
    r: raw::MirrorCompareSpec,
    inherit: &MirrorCompare,
    redact: &[String],
) -> MirrorCompare {
    let mut out = inherit.clone();
    if let Some(status) = r.status {
        out.status = status;
    }
    if let Some(h) = r.headers {
        let path = join(base, "headers");
        let only_path = join(&path, "only");
        let only = header_names(c, &only_path, h.only.clone());
        let ignore = header_names(c, &join(&path, "ignore"), h.ignore.clone());
        out.headers = match (h.only, h.ignore) {
            (Some(_), Some(_)) => {
                c.fail(
                    &path,
                    "give either `only` (compare just those headers) or `ignore` (compare \
                     every header but those), not both",
                    field_hint(&path),
                );
                HeadersCompare::AllExcept(ignore)
            }
            (Some(_), None) => {
                for (i, name) in only.iter().enumerate() {
                    if CREDENTIAL_HEADERS.contains(&name.as_str()) || redact.contains(name) {
                        c.fail(
                            &format!("{only_path}[{i}]"),
                            format!(
                                "`{name}` carries credentials, which are never compared or stored"
                            ),
                            field_hint(&only_path),
                        );
                    }
                }
                HeadersCompare::Only(only)
            }
            _ => HeadersCompare::AllExcept(ignore),
        };
    }
    if let Some(b) = r.body {
        let path = join(base, "body");
        let mut body = BodyCompare::default();
        if let Some(mode) = b.as_ {
            body.mode = match mode.as_str() {
                "json" => BodyMode::Json,
                "text" => BodyMode::Text,
                "bytes" => BodyMode::Bytes,
                "none" => BodyMode::None,
                other => {
                    let at = join(&path, "as");
                    c.fail(
                        &at,
                        format!("unknown body comparison `{other}`"),
                        field_hint(&at),
                    );
                    BodyMode::Json
                }
            };
        }
        let ignore_path = join(&path, "ignore");
        for (i, p) in b.ignore.unwrap_or_default().into_iter().enumerate() {
            if let Err(e) = crate::JsonPath::parse(&p) {
                c.fail(&format!("{ignore_path}[{i}]"), e, field_hint(&ignore_path));
            }
            body.ignore.push(p);
        }
        let mask_path = join(&path, "mask");
        for (i, m) in b.mask.unwrap_or_default().into_iter().enumerate() {
            if let Err(e) = regex::RegexBuilder::new(&m).size_limit(1 << 20).build() {
                c.fail(
                    &format!("{mask_path}[{i}]"),
                    format!("`{m}` is not a valid regular expression: {e}"),
                    field_hint(&mask_path),
                );
            }
            body.mask.push(m);
        }
        if !body.ignore.is_empty() && body.mode != BodyMode::Json {
            c.fail(
                &ignore_path,
                "JSON paths only apply to `as: json`",
                field_hint(&ignore_path),
            );
        }
        out.body = body;
    }
    out
}

fn blue_green(
    c: &mut Checker<'_>,
    r: raw::BlueGreenSpec,
    listen: Option<SocketAddr>,
) -> BlueGreenSpec {
    const BASE: &str = "strategy.blue_green";
    let preview_path = join(BASE, "preview_listen");
    let preview_listen = r.preview_listen.and_then(|text| {
        let Ok(addr) = text.trim().parse::<SocketAddr>() else {
            c.fail(
                &preview_path,
                format!("`{text}` is not an IP:PORT socket address"),
                field_hint(&preview_path),
            );
            return None;
        };
        if let Some(listen) = listen
            && same_listener(addr, listen)
        {
            c.fail(
                &preview_path,
                format!("{addr} would share its port with `listen` ({listen})"),
                field_hint(&preview_path),
            );
            return None;
        }
        Some(addr)
    });
    let preview_header = match r.preview_header {
        Some(h) => c.header(&join(BASE, "preview_header"), h),
        None => None,
    }
    .unwrap_or_else(|| HeaderMatch {
        name: defaults::PREVIEW_HEADER_NAME.to_owned(),
        equals: defaults::PREVIEW_HEADER_VALUE.to_owned(),
    });
    let auto_promote_after = match &r.auto_promote_after {
        Some(_) => Some(c.duration(
            &join(BASE, "auto_promote_after"),
            r.auto_promote_after.as_ref(),
            Duration::ZERO,
        )),
        None => None,
    };
    let scale_down_delay = c.duration(
        &join(BASE, "scale_down_delay"),
        r.scale_down_delay.as_ref(),
        defaults::SCALE_DOWN_DELAY,
    );
    let min_ready = c.duration(
        &join(BASE, "min_ready"),
        r.min_ready.as_ref(),
        defaults::MIN_READY,
    );
    let progress_deadline = c.duration(
        &join(BASE, "progress_deadline"),
        r.progress_deadline.as_ref(),
        defaults::PROGRESS_DEADLINE,
    );
    c.min_ready_before_deadline(BASE, r.min_ready.is_some(), min_ready, progress_deadline);
    BlueGreenSpec {
        preview_listen,
        preview_header,
        auto_promote_after,
        scale_down_delay,
        min_ready,
        progress_deadline,
        max_restarts: r.max_restarts.unwrap_or(defaults::MAX_RESTARTS),
    }
}

/// Whether two listeners would need the same port: equal addresses, or the same
/// port where one of them is a wildcard address.
fn same_listener(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.port() != 0
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

fn analysis(c: &mut Checker<'_>, a: raw::AnalysisSpec) -> AnalysisSpec {
    let interval = c.positive_duration(
        "analysis.interval",
        a.interval.as_ref(),
        defaults::ANALYSIS_INTERVAL,
    );
    let window = c.positive_duration(
        "analysis.window",
        a.window.as_ref(),
        defaults::ANALYSIS_WINDOW,
    );
    let failure_limit = c.at_least_one(
        "analysis.failure_limit",
        a.failure_limit,
        defaults::FAILURE_LIMIT,
    );
    let max_error_rate = c.fraction("analysis.max_error_rate", a.max_error_rate);
    let max_error_rate_increase = c.fraction(
        "analysis.max_error_rate_increase",
        a.max_error_rate_increase,
    );
    let max_p99 = c.optional_positive("analysis.max_p99", a.max_p99.as_ref());
    let mut ratio = |path: &str, value: Option<f64>| {
        value.filter(|&ratio| {
            let ok = ratio.is_finite() && ratio > 1.0;
            if !ok {
                c.fail(path, format!("{ratio} is not above 1"), field_hint(path));
            }
            ok
        })
    };
    let max_p99_ratio = ratio("analysis.max_p99_ratio", a.max_p99_ratio);
    let max_memory_ratio = ratio("analysis.max_memory_ratio", a.max_memory_ratio);
    let max_cpu_per_request_ratio = ratio(
        "analysis.max_cpu_per_request_ratio",
        a.max_cpu_per_request_ratio,
    );
    let max_memory_bytes = a
        .max_memory
        .as_deref()
        .and_then(|text| c.size("analysis.max_memory", text, 1, "must not be zero"));
    if a.max_error_rate.is_none()
        && a.max_error_rate_increase.is_none()
        && a.max_p99.is_none()
        && a.max_p99_ratio.is_none()
        && a.max_memory.is_none()
        && a.max_memory_ratio.is_none()
        && a.max_cpu_per_request_ratio.is_none()
    {
        c.fail_at_key(
            "analysis",
            "no limit given, so nothing would be checked",
            field_hint("analysis"),
        );
    }
    AnalysisSpec {
        interval,
        window,
        min_requests: a.min_requests.unwrap_or(defaults::MIN_REQUESTS),
        failure_limit,
        max_error_rate,
        max_error_rate_increase,
        max_p99,
        max_p99_ratio,
        max_memory_bytes,
        max_memory_ratio,
        max_cpu_per_request_ratio,
    }
}

fn preflight(c: &mut Checker<'_>, checks: Vec<raw::PreflightCheck>) -> Vec<PreflightCheck> {
    let mut names = Vec::new();
    let mut out = Vec::with_capacity(checks.len());
    for (i, check) in checks.into_iter().enumerate() {
        let base = format!("preflight[{i}]");
        let name = c.unique_name(
            &join(&base, "name"),
            check.name,
            &mut names,
            "pre-flight check",
        );
        let command_path = join(&base, "command");
        let command = match c.required(&command_path, check.command) {
            Some(command) => c.command(&command_path, command, TemplateUse::Preflight),
            None => Vec::new(),
        };
        let timeout = c.positive_duration(
            &join(&base, "timeout"),
            check.timeout.as_ref(),
            defaults::PREFLIGHT_TIMEOUT,
        );
        out.push(PreflightCheck {
            name,
            command,
            timeout,
        });
    }
    out
}

/// The standard HTTP methods, written upper case whatever the spec's case.
const HTTP_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

fn hooks(c: &mut Checker<'_>, h: raw::HooksSpec) -> HooksSpec {
    let mut names = Vec::new();
    let mut smoke = Vec::new();
    for (i, test) in h.smoke.unwrap_or_default().into_iter().enumerate() {
        let path = format!("hooks.smoke[{i}]");
        smoke.push(match test {
            raw::SmokeTest::Command(t) => {
                let base = join(&path, "command");
                let name = c.unique_name(&join(&base, "name"), t.name, &mut names, "smoke test");
                let command_path = join(&base, "command");
                let command = match c.required(&command_path, t.command) {
                    Some(command) => c.command(&command_path, command, TemplateUse::Smoke),
                    None => Vec::new(),
                };
                let timeout = c.positive_duration(
                    &join(&base, "timeout"),
                    t.timeout.as_ref(),
                    defaults::SMOKE_COMMAND_TIMEOUT,
                );
                SmokeTest::Command {
                    name,
                    command,
                    timeout,
                }
            }
            raw::SmokeTest::Http(t) => smoke_http(c, &join(&path, "http"), t, &mut names),
        });
    }
    let warmup = h.warmup.map(|w| warmup(c, w));
    HooksSpec { smoke, warmup }
}

fn smoke_http(
    c: &mut Checker<'_>,
    base: &str,
    t: raw::SmokeHttp,
    names: &mut Vec<String>,
) -> SmokeTest {
    let name = c.unique_name(&join(base, "name"), t.name, names, "smoke test");
    let method_path = join(base, "method");
    let method = match t.method {
        None => defaults::SMOKE_METHOD.to_owned(),
        Some(m) if !is_header_token(&m) => {
            c.fail(
                &method_path,
                format!("`{}` is not a valid HTTP method", m.escape_debug()),
                field_hint(&method_path),
            );
            m
        }
        Some(m) => {
            let upper = m.to_ascii_uppercase();
            if HTTP_METHODS.contains(&upper.as_str()) {
                upper
            } else {
                m
            }
        }
    };
    let path_path = join(base, "path");
    let path = c.required(&path_path, t.path).unwrap_or_default();
    if c.errors.last().is_none_or(|e| e.field != path_path) {
        c.request_path(&path_path, &path);
    }
    let status_path = join(base, "expect_status");
    let expect_status = match t.expect_status {
        None => defaults::SMOKE_STATUS,
        Some(code) => match u16::try_from(code) {
            Ok(code) if (100..=599).contains(&code) => code,
            _ => {
                c.fail(
                    &status_path,
                    format!("{code} is out of range 100..=599"),
                    field_hint(&status_path),
                );
                defaults::SMOKE_STATUS
            }
        },
    };
    let body_path = join(base, "expect_body");
    if t.expect_body.as_deref() == Some("") {
        c.fail(&body_path, "must not be empty", field_hint(&body_path));
    }
    let count_path = join(base, "count");
    let count = c.count_in(
        &count_path,
        t.count,
        defaults::SMOKE_COUNT,
        MAX_REQUESTS,
        "",
    );
    let count_ok = c.errors.last().is_none_or(|e| e.field != count_path);
    let concurrency_path = join(base, "concurrency");
    let concurrency = if count_ok {
        c.count_in(
            &concurrency_path,
            t.concurrency,
            defaults::SMOKE_CONCURRENCY,
            count,
            " (the test's `count`)",
        )
    } else {
        c.count_in(
            &concurrency_path,
            t.concurrency,
            defaults::SMOKE_CONCURRENCY,
            MAX_REQUESTS,
            "",
        )
    };
    let timeout = c.positive_duration(
        &join(base, "timeout"),
        t.timeout.as_ref(),
        defaults::SMOKE_HTTP_TIMEOUT,
    );
    SmokeTest::Http {
        name,
        method,
        path,
        expect_status,
        expect_body: t.expect_body,
        count,
        concurrency,
        timeout,
    }
}

fn warmup(c: &mut Checker<'_>, w: raw::WarmupSpec) -> WarmupSpec {
    const BASE: &str = "hooks.warmup";
    let path_path = join(BASE, "path");
    let path = w.path.unwrap_or_else(|| defaults::WARMUP_PATH.to_owned());
    c.request_path(&path_path, &path);
    let requests_path = join(BASE, "requests");
    let requests = match c.required(&requests_path, w.requests) {
        Some(n) => c.count_in(&requests_path, Some(n), n, MAX_REQUESTS, ""),
        None => 1,
    };
    let requests_ok = c.errors.last().is_none_or(|e| e.field != requests_path);
    let concurrency = match w.concurrency {
        None => defaults::WARMUP_CONCURRENCY.min(requests.max(1)),
        Some(n) => c.count_in(
            &join(BASE, "concurrency"),
            Some(n),
            n,
            if requests_ok { requests } else { MAX_REQUESTS },
            if requests_ok { " (`requests`)" } else { "" },
        ),
    };
    WarmupSpec {
        path,
        requests,
        concurrency,
    }
}

fn upgrade_windows(c: &mut Checker<'_>, w: raw::UpgradeWindows) -> UpgradeWindows {
    const BASE: &str = "upgrade_windows";
    let timezone = match w.timezone {
        None => defaults::TIMEZONE.to_owned(),
        Some(name) => time_zone(c, &join(BASE, "timezone"), name),
    };
    let allowed_path = join(BASE, "allowed");
    let mut allowed = Vec::new();
    match c.required(&allowed_path, w.allowed) {
        Some(windows) if windows.is_empty() => {
            c.fail(
                &allowed_path,
                "no window given, so no upgrade could ever run",
                field_hint(&allowed_path),
            );
        }
        Some(windows) => {
            for (i, window) in windows.into_iter().enumerate() {
                let path = format!("{allowed_path}[{i}]");
                if let Some(window) = upgrade_window(c, &path, window) {
                    allowed.push(window);
                }
            }
        }
        None => {}
    }
    let on_end_path = join(BASE, "on_end");
    let on_end = match w.on_end.map(|raw::OnWindowEndText(text)| text) {
        None => OnWindowEnd::default(),
        Some(text) => match text.trim() {
            "finish" => OnWindowEnd::Finish,
            "pause" => OnWindowEnd::Pause,
            other => {
                let mut hint = field_hint(&on_end_path);
                if let Some(close) = crate::suggest(other, &["finish", "pause"]) {
                    hint = format!("did you mean `{close}`? {hint}");
                }
                c.fail(&on_end_path, format!("unknown on_end `{other}`"), hint);
                OnWindowEnd::default()
            }
        },
    };
    UpgradeWindows {
        timezone,
        allowed,
        on_end,
    }
}

/// A time zone name known to the time zone database, as the database spells it.
fn time_zone(c: &mut Checker<'_>, path: &str, name: String) -> String {
    let trimmed = name.trim();
    if let Ok(tz) = jiff::tz::TimeZone::get(trimmed)
        && !trimmed.is_empty()
    {
        return tz.iana_name().unwrap_or(trimmed).to_owned();
    }
    let known: Vec<String> = jiff::tz::db()
        .available()
        .map(|n| n.as_str().to_owned())
        .collect();
    let known: Vec<&str> = known.iter().map(String::as_str).collect();
    let mut hint = field_hint(path);
    if let Some(close) = crate::suggest(trimmed, &known) {
        hint = format!("did you mean `{close}`? {hint}");
    }
    c.fail(path, format!("unknown time zone `{name}`"), hint);
    name
}

/// One window at `path`; `None` if it is invalid.
fn upgrade_window(c: &mut Checker<'_>, path: &str, w: raw::UpgradeWindow) -> Option<UpgradeWindow> {
    let before = c.errors.len();
    let days_path = join(path, "days");
    let days = match w.days {
        None => Weekday::ALL.to_vec(),
        Some(days) if days.is_empty() => {
            c.fail(
                &days_path,
                "no days given, so the window would never open",
                field_hint(&days_path),
            );
            Vec::new()
        }
        Some(days) => {
            let mut out = Vec::with_capacity(days.len());
            for (j, raw::WeekdayText(text)) in days.into_iter().enumerate() {
                match Weekday::parse(&text) {
                    Some(day) => out.push(day),
                    None => {
                        let at = format!("{days_path}[{j}]");
                        let lower = text.trim().to_ascii_lowercase();
                        let mut hint = field_hint(&at);
                        let close = crate::suggest(&lower, &Weekday::ALL.map(Weekday::as_str))
                            .or_else(|| {
                                crate::suggest(&lower, &Weekday::ALL.map(Weekday::full_name_lower))
                                    .and_then(Weekday::parse)
                                    .map(Weekday::as_str)
                            });
                        if let Some(close) = close {
                            hint = format!("did you mean `{close}`? {hint}");
                        }
                        c.fail(&at, format!("unknown weekday `{text}`"), hint);
                    }
                }
            }
            out.sort_unstable();
            out.dedup();
            out
        }
    };
    let start = time_of_day(c, &join(path, "start"), w.start, false);
    let end_path = join(path, "end");
    let end = time_of_day(c, &end_path, w.end, true);
    if let (Some(start), Some(end)) = (start, end)
        && start == end
    {
        c.fail(
            &end_path,
            format!("start and end are both {start}, so the window would be empty"),
            "give an end other than the start; for a whole day write `start: \"00:00\"` and \
             `end: \"24:00\"`",
        );
    }
    (c.errors.len() == before).then(|| UpgradeWindow {
        days,
        start: start.unwrap_or_default(),
        end: end.unwrap_or_default(),
    })
}

/// A required `"HH:MM"` at `path`; 24:00 only if `is_end`.
fn time_of_day(
    c: &mut Checker<'_>,
    path: &str,
    value: Option<raw::TimeText>,
    is_end: bool,
) -> Option<TimeOfDay> {
    let raw::TimeText(text) = c.required(path, value)?;
    match TimeOfDay::parse(text.trim()) {
        Some(t) if t != TimeOfDay::END_OF_DAY || is_end => Some(t),
        _ => {
            let range = if is_end {
                "00:00 to 24:00"
            } else {
                "00:00 to 23:59"
            };
            c.fail(
                path,
                format!("`{text}` is not a time of day as HH:MM, {range}"),
                field_hint(path),
            );
            None
        }
    }
}
