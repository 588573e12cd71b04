//! Turns the raw YAML structs into a typed [`AppSpec`], filling in defaults and
//! collecting every problem with its line, field and a hint on how to fix it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::SpecError;
use crate::locate::{SourceMap, join};
use crate::model::{
    AppSpec, DriverSpec, IntOrPercent, ProcessDriverSpec, ReadinessSpec, RollingSpec, StrategySpec,
};
use crate::raw;
use crate::template::{PLACEHOLDERS, split_command, unknown_placeholders};

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
}

const DURATION_HINT: &str =
    "write a number followed by a unit (ns, us, ms, s, m, h, d), e.g. \"500ms\", \"2s\", \"1m30s\"";

/// How to fix a value of the field at `path` (indices and env names are ignored).
pub(crate) fn field_hint(path: &str) -> String {
    // `driver.process.command[2]` -> `driver.process.command`
    let base = path.split('[').next().unwrap_or(path);
    let base = if base.starts_with("driver.process.env.") {
        "driver.process.env.*"
    } else {
        base
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
        | "readiness.interval"
        | "readiness.timeout"
        | "readiness.initial_delay"
        | "strategy.rolling.min_ready"
        | "strategy.rolling.progress_deadline" => DURATION_HINT,
        "driver" => {
            "choose one driver, e.g. `driver: { process: { command: [\"./server\", \"--port\", \"{port}\"] } }`; \
             available drivers: process"
        }
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
             available strategies: rolling (`rolling: {}` takes the defaults)"
        }
        "strategy.rolling" => {
            "give the rolling settings as a map, e.g. `rolling: { max_surge: 1, max_unavailable: 0 }`, \
             or `rolling: {}` for the defaults"
        }
        "strategy.rolling.max_surge" | "strategy.rolling.max_unavailable" => {
            "give a count such as `1` or a percentage from 0% to 100% such as `\"25%\"`"
        }
        "strategy.rolling.max_restarts" => {
            "give a whole number, e.g. `max_restarts: 3` (0 fails the rollout on the first crash)"
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
        self.errors.push(SpecError {
            file: self.file.to_owned(),
            line: pos.map(|p| p.line),
            column: pos.map(|p| p.column),
            field: path.to_owned(),
            message: message.into(),
            hint: hint.into(),
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

    fn placeholders(&mut self, path: &str, template: &str) {
        let unknown = unknown_placeholders(template);
        if let Some(first) = unknown.first() {
            let list = unknown
                .iter()
                .map(|n| format!("{{{n}}}"))
                .collect::<Vec<_>>()
                .join(", ");
            let mut hint = format!(
                "the placeholders are {}",
                PLACEHOLDERS.map(|n| format!("{{{n}}}")).join(", ")
            );
            if let Some(close) = crate::suggest(first, &PLACEHOLDERS) {
                hint = format!("did you mean {{{close}}}? {hint}");
            }
            self.fail(path, format!("unknown placeholder {list}"), hint);
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

fn is_valid_version(version: &str) -> bool {
    (1..=64).contains(&version.len())
        && version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
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
    };
    let readiness = readiness(&mut c, spec.readiness.unwrap_or_default());
    let strategy = match spec
        .strategy
        .unwrap_or(raw::StrategySpec::Rolling(raw::RollingSpec::default()))
    {
        raw::StrategySpec::Rolling(r) => StrategySpec::Rolling(rolling(&mut c, r, instances)),
    };

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
        })
    } else {
        Err(c.errors)
    }
}

fn process_driver(c: &mut Checker<'_>, p: raw::ProcessDriverSpec) -> ProcessDriverSpec {
    const BASE: &str = "driver.process";
    let command_path = join(BASE, "command");
    let (command, from_list) = match p.command {
        raw::CommandLine::List(args) => (args, true),
        raw::CommandLine::Line(line) => match split_command(&line) {
            Ok(words) => (words, false),
            Err(e) => {
                c.fail(
                    &command_path,
                    format!("cannot split the command: {e}"),
                    "close every quote, or give the command as a list of arguments",
                );
                (Vec::new(), false)
            }
        },
    };
    if command.is_empty() || command[0].trim().is_empty() {
        if c.errors.iter().all(|e| e.field != command_path) {
            c.fail(
                &command_path,
                "the command is empty",
                field_hint(&command_path),
            );
        }
    } else {
        for (i, arg) in command.iter().enumerate() {
            // Elements of a one-string command have no place of their own.
            let path = if from_list {
                format!("{command_path}[{i}]")
            } else {
                command_path.clone()
            };
            c.placeholders(&path, arg);
        }
    }

    let env: BTreeMap<String, String> = p.env.unwrap_or_default();
    for (name, value) in &env {
        let path = join(&join(BASE, "env"), name);
        if name.is_empty() || name.contains(['=', '\0']) {
            c.fail(
                &path,
                format!("invalid environment variable name `{name}`"),
                "use a name without '=' such as `RUST_LOG`",
            );
        }
        c.placeholders(&path, value);
    }

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
    if min_ready >= progress_deadline {
        let at = if r.min_ready.is_some() {
            MIN_READY
        } else {
            DEADLINE
        };
        c.fail(
            at,
            format!(
                "min_ready ({}) must be shorter than progress_deadline ({})",
                humantime::format_duration(min_ready),
                humantime::format_duration(progress_deadline)
            ),
            "shorten min_ready or lengthen progress_deadline, otherwise no new instance \
             could become available before the rollout times out",
        );
    }
    RollingSpec {
        max_surge,
        max_unavailable,
        min_ready,
        progress_deadline,
        max_restarts: r.max_restarts.unwrap_or(defaults::MAX_RESTARTS),
    }
}
