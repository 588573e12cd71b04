//! Tests of parsing and validation through the public API: every kind of error
//! must carry its line and field.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::*;

/// A valid spec; tests replace one line of it. Line numbers:
const BASE: &str = "\
name: demo
environment: staging
version: v1
listen: 127.0.0.1:8080
instances: 3
drain_timeout: 30s
driver:
  process:
    command: [\"{baton}\", sample, --port, \"{port}\"]
    env: { RUST_LOG: info }
    stop_grace: 5s
readiness:
  path: /healthz
  interval: 500ms
  success_threshold: 2
  failure_threshold: 3
strategy:
  rolling:
    max_surge: 1
    max_unavailable: 0
    min_ready: 2s
    progress_deadline: 2m
";

/// BASE with the line starting with `prefix` replaced by `replacement`.
fn with(prefix: &str, replacement: &str) -> String {
    replace_line(BASE, prefix, replacement)
}

#[track_caller]
fn error(yaml: &str) -> SpecError {
    match parse_spec("t.yaml", yaml) {
        Ok(spec) => panic!("expected an error, got {spec:?}"),
        Err(e) => {
            assert!(!e.hint.is_empty(), "no hint in {e}");
            assert!(!e.message.is_empty(), "no message in {e}");
            e
        }
    }
}

/// Asserts the error's line and field, and that its message contains `needle`.
#[track_caller]
fn expect(yaml: &str, line: usize, field: &str, needle: &str) -> SpecError {
    let e = error(yaml);
    assert_eq!((e.line, e.field.as_str()), (Some(line), field), "{e}");
    assert!(e.column.is_some(), "{e}");
    assert!(e.message.contains(needle), "{e:?} lacks {needle:?}");
    e
}

#[test]
fn base_parses_with_values_and_defaults() {
    let spec = parse_spec("t.yaml", BASE).unwrap();
    assert_eq!(spec.name, "demo");
    assert_eq!(spec.environment, "staging");
    assert_eq!(spec.version.as_deref(), Some("v1"));
    assert_eq!(spec.listen, "127.0.0.1:8080".parse::<SocketAddr>().unwrap());
    assert_eq!(spec.instances, 3);
    assert_eq!(spec.drain_timeout, Duration::from_secs(30));
    let DriverSpec::Process(p) = &spec.driver else {
        panic!("a process driver")
    };
    assert_eq!(p.command, ["{baton}", "sample", "--port", "{port}"]);
    assert_eq!(p.env.get("RUST_LOG").map(String::as_str), Some("info"));
    assert_eq!(p.workdir, None);
    assert_eq!(p.stop_grace, Duration::from_secs(5));
    assert_eq!(spec.readiness.path, "/healthz");
    assert_eq!(spec.readiness.interval, Duration::from_millis(500));
    assert_eq!(spec.readiness.timeout, Duration::from_secs(1));
    assert_eq!(spec.readiness.success_threshold, 2);
    assert_eq!(spec.readiness.failure_threshold, 3);
    assert_eq!(spec.readiness.initial_delay, Duration::ZERO);
    let StrategySpec::Rolling(r) = &spec.strategy else {
        panic!("not rolling")
    };
    assert_eq!(r.max_surge, IntOrPercent::Count(1));
    assert_eq!(r.max_unavailable, IntOrPercent::Count(0));
    assert_eq!(r.min_ready, Duration::from_secs(2));
    assert_eq!(r.progress_deadline, Duration::from_secs(120));
    assert_eq!(r.max_restarts, 3);
}

#[test]
fn minimal_spec_takes_defaults() {
    let spec = parse_spec(
        "t.yaml",
        "name: a\nlisten: \"[::1]:80\"\ndriver: { process: { command: \"./app --port {port}\" } }\n",
    )
    .unwrap();
    assert_eq!(spec.environment, "default");
    assert_eq!(spec.version, None);
    assert_eq!(spec.instances, 1);
    assert_eq!(spec.drain_timeout, Duration::from_secs(30));
    let DriverSpec::Process(p) = &spec.driver else {
        panic!("a process driver")
    };
    assert_eq!(p.command, ["./app", "--port", "{port}"]);
    assert_eq!(p.stop_grace, Duration::from_secs(10));
    assert_eq!(spec.readiness.path, "/healthz");
    assert_eq!(spec.readiness.interval, Duration::from_secs(1));
    assert_eq!(spec.readiness.success_threshold, 1);
    assert_eq!(spec.readiness.failure_threshold, 3);
    let StrategySpec::Rolling(r) = &spec.strategy else {
        panic!("not rolling")
    };
    assert_eq!(r.max_surge, IntOrPercent::Percent(25));
    assert_eq!(r.max_unavailable, IntOrPercent::Percent(25));
    assert_eq!(r.min_ready, Duration::ZERO);
    assert_eq!(r.progress_deadline, Duration::from_secs(600));
    assert_eq!(r.max_restarts, 3);
}

#[test]
fn empty_rolling_takes_defaults() {
    for form in ["strategy: { rolling: {} }", "strategy:\n  rolling:"] {
        let yaml = format!(
            "name: a\nlisten: 127.0.0.1:80\ndriver: {{ process: {{ command: [app] }} }}\n{form}\n"
        );
        let spec = parse_spec("t.yaml", &yaml).unwrap();
        let StrategySpec::Rolling(r) = &spec.strategy else {
            panic!("not rolling")
        };
        assert_eq!(r.max_surge, IntOrPercent::Percent(25), "{form}");
    }
}

#[test]
fn broken_yaml_has_parser_position() {
    let e = error(&with("listen:", "listen: 127.0.0.1: 8080: x"));
    assert_eq!(e.line, Some(4), "{e}");
    assert!(e.column.is_some());
    let e = error("name: demo\n  listen: x: y\n");
    assert_eq!(e.line, Some(2), "{e}");
}

#[test]
fn empty_file_is_an_error() {
    let e = parse_spec("t.yaml", "  \n").unwrap_err();
    assert!(e.message.contains("empty"), "{e}");
}

#[test]
fn unknown_field_names_it_and_lists_valid_ones() {
    let e = expect(
        &with("max_surge:", "    max_surg: 1"),
        19,
        "strategy.rolling.max_surg",
        "unknown field `max_surg`",
    );
    assert!(e.hint.contains("did you mean `max_surge`?"), "{e}");
    assert!(e.hint.contains("`max_unavailable`"), "{e}");
    let e = expect(
        &with("instances:", "instance: 3"),
        5,
        "instance",
        "unknown field",
    );
    assert!(e.hint.contains("`instances`"), "{e}");
    expect(
        &with("path:", "  pth: /healthz"),
        13,
        "readiness.pth",
        "unknown field",
    );
}

#[test]
fn unknown_driver_or_strategy() {
    let e = expect(
        &with("process:", "  proces:"),
        8,
        "driver",
        "unknown driver `proces`",
    );
    assert!(e.hint.contains("`process`"), "{e}");
    let e = expect(
        &with("rolling:", "  canery:"),
        18,
        "strategy",
        "unknown strategy",
    );
    assert!(e.hint.contains("did you mean `canary`?"), "{e}");
    assert!(e.hint.contains("`rolling`, `canary`, `blue_green`"), "{e}");
}

#[test]
fn missing_required_field() {
    let yaml = BASE.replace("name: demo\n", "");
    let e = expect(&yaml, 1, "name", "missing required field `name`");
    assert!(e.hint.contains("name: my-app"), "{e}");
    let yaml = BASE.replace(
        "    command: [\"{baton}\", sample, --port, \"{port}\"]\n",
        "",
    );
    expect(&yaml, 8, "driver.process.command", "missing required field");
}

#[test]
fn wrong_types() {
    expect(&with("instances:", "instances: three"), 5, "instances", "");
    expect(&with("instances:", "instances: -2"), 5, "instances", "");
    expect(&with("path:", "  path: [a]"), 13, "readiness.path", "");
    expect(&with("readiness:", "readiness: 5"), 12, "readiness", "");
    expect(&with("env:", "    env: [a]"), 10, "driver.process.env", "");
    expect(
        &with("max_surge:", "    max_surge: [1]"),
        19,
        "strategy.rolling.max_surge",
        "",
    );
    expect(
        &with("strategy:", "strategy: rolling"),
        17,
        "strategy",
        "map",
    );
}

#[test]
fn bad_durations() {
    for (prefix, line, field, value) in [
        ("drain_timeout:", 6, "drain_timeout", "drain_timeout: 30"),
        (
            "stop_grace:",
            11,
            "driver.process.stop_grace",
            "    stop_grace: soon",
        ),
        (
            "interval:",
            14,
            "readiness.interval",
            "  interval: 5 parsecs",
        ),
        (
            "min_ready:",
            21,
            "strategy.rolling.min_ready",
            "    min_ready: 2x",
        ),
        (
            "progress_deadline:",
            22,
            "strategy.rolling.progress_deadline",
            "    progress_deadline: -1s",
        ),
    ] {
        let e = expect(&with(prefix, value), line, field, "invalid duration");
        assert!(e.hint.contains("\"1m30s\""), "{e}");
    }
    expect(
        &with("interval:", "  interval: 0s"),
        14,
        "readiness.interval",
        "longer than zero",
    );
}

#[test]
fn bad_socket_address() {
    let e = expect(
        &with("listen:", "listen: localhost:8080"),
        4,
        "listen",
        "not an IP:PORT",
    );
    assert!(e.hint.contains("127.0.0.1:8080"), "{e}");
    expect(&with("listen:", "listen: 127.0.0.1"), 4, "listen", "");
}

#[test]
fn name_and_version_patterns() {
    for bad in ["Demo", "-demo", "de_mo", "\"\"", &"a".repeat(64)] {
        expect(
            &with("name:", &format!("name: {bad}")),
            1,
            "name",
            "invalid app name",
        );
    }
    for good in ["a", "0-a", &"a".repeat(63)] {
        parse_spec("t.yaml", &with("name:", &format!("name: {good}"))).unwrap();
    }
    for bad in ["v1/2", "\"\"", "\"v 1\"", &"v".repeat(65)] {
        expect(
            &with("version:", &format!("version: {bad}")),
            3,
            "version",
            "invalid version",
        );
    }
    for good in ["1.2.3", "v1_2-rc.1", "2024"] {
        parse_spec("t.yaml", &with("version:", &format!("version: {good}"))).unwrap();
    }
}

#[test]
fn instances_range() {
    expect(
        &with("instances:", "instances: 0"),
        5,
        "instances",
        "out of range",
    );
    expect(
        &with("instances:", "instances: 1001"),
        5,
        "instances",
        "out of range",
    );
    parse_spec("t.yaml", &with("instances:", "instances: 1000")).unwrap();
}

#[test]
fn thresholds_at_least_one() {
    expect(
        &with("success_threshold:", "  success_threshold: 0"),
        15,
        "readiness.success_threshold",
        "at least 1",
    );
    expect(
        &with("failure_threshold:", "  failure_threshold: 0"),
        16,
        "readiness.failure_threshold",
        "at least 1",
    );
}

#[test]
fn percentages() {
    expect(
        &with("max_surge:", "    max_surge: 101%"),
        19,
        "strategy.rolling.max_surge",
        "above 100%",
    );
    expect(
        &with("max_unavailable:", "    max_unavailable: \"x%\""),
        20,
        "strategy.rolling.max_unavailable",
        "neither",
    );
    expect(
        &with("max_surge:", "    max_surge: 1.5"),
        19,
        "strategy.rolling.max_surge",
        "neither",
    );
    let spec = parse_spec("t.yaml", &with("max_surge:", "    max_surge: 100%")).unwrap();
    let StrategySpec::Rolling(r) = &spec.strategy else {
        panic!("not rolling")
    };
    assert_eq!(r.max_surge, IntOrPercent::Percent(100));
}

#[test]
fn surge_and_unavailable_not_both_zero() {
    let e = expect(
        &with("max_surge:", "    max_surge: 0"),
        19,
        "strategy.rolling.max_surge",
        "both come to 0",
    );
    assert!(e.hint.contains("max_surge: 1"), "{e}");
    // 10% of 3 rounds up to 1 surge: fine.
    parse_spec("t.yaml", &with("max_surge:", "    max_surge: 10%")).unwrap();
    // ... but 0 surge and 10% of 3 unavailable (rounded down to 0) is not.
    let yaml = with("max_surge:", "    max_surge: 0%")
        .replace("max_unavailable: 0", "max_unavailable: 10%");
    expect(&yaml, 19, "strategy.rolling.max_surge", "both come to 0");
    // With max_surge left out, point at max_unavailable.
    let yaml = BASE
        .replace("    max_surge: 1\n", "")
        .replace("instances: 3", "instances: 4");
    let spec = parse_spec("t.yaml", &yaml).unwrap(); // default 25% surge of 4 = 1
    let StrategySpec::Rolling(r) = &spec.strategy else {
        panic!("not rolling")
    };
    assert_eq!(r.max_surge.resolve_up(spec.instances), 1);
}

#[test]
fn command_must_not_be_empty() {
    expect(
        &with("command:", "    command: []"),
        9,
        "driver.process.command",
        "empty",
    );
    expect(
        &with("command:", "    command: \"  \""),
        9,
        "driver.process.command",
        "empty",
    );
    expect(
        &with("command:", "    command: \"app 'unclosed\""),
        9,
        "driver.process.command",
        "quote",
    );
}

#[test]
fn command_as_one_string_is_split() {
    let spec = parse_spec(
        "t.yaml",
        &with(
            "command:",
            "    command: '{baton} sample --greeting \"hello world\" --port {port}'",
        ),
    )
    .unwrap();
    let DriverSpec::Process(p) = &spec.driver else {
        panic!("a process driver")
    };
    assert_eq!(
        p.command,
        [
            "{baton}",
            "sample",
            "--greeting",
            "hello world",
            "--port",
            "{port}"
        ]
    );
}

#[test]
fn unknown_placeholders() {
    let e = expect(
        &with("command:", "    command: [app, --port, \"{prot}\"]"),
        9,
        "driver.process.command[2]",
        "unknown placeholder {prot}",
    );
    assert!(e.hint.contains("did you mean {port}?"), "{e}");
    assert!(e.hint.contains("{instance}"), "{e}");
    let yaml = with("env:", "    env:\n      A: ok\n      B: \"{home}/x\"");
    expect(
        &yaml,
        12,
        "driver.process.env.B",
        "unknown placeholder {home}",
    );
    // JSON in a value is not a placeholder.
    parse_spec("t.yaml", &with("env:", "    env: { J: '{\"a\": 1}' }")).unwrap();
}

#[test]
fn readiness_path_starts_with_slash() {
    let e = expect(
        &with("path:", "  path: healthz"),
        13,
        "readiness.path",
        "does not start with '/'",
    );
    assert!(e.hint.contains("/healthz"), "{e}");
}

#[test]
fn min_ready_shorter_than_progress_deadline() {
    let e = expect(
        &with("min_ready:", "    min_ready: 2m"),
        21,
        "strategy.rolling.min_ready",
        "shorter than progress_deadline",
    );
    assert!(e.message.contains("2m"), "{e}");
}

#[test]
fn all_errors_are_collected() {
    let yaml = with("name:", "name: Demo")
        .replace("instances: 3", "instances: 0")
        .replace("path: /healthz", "path: healthz");
    let errors = parse_spec_all("t.yaml", &yaml).unwrap_err();
    let fields: Vec<_> = errors.iter().map(|e| (e.line, e.field.as_str())).collect();
    assert_eq!(
        fields,
        [
            (Some(1), "name"),
            (Some(5), "instances"),
            (Some(13), "readiness.path")
        ]
    );
}

#[test]
fn display_has_file_line_field_and_hint() {
    let e = error(&with("max_surge:", "    max_surge: 200%"));
    let text = e.to_string();
    assert!(
        text.starts_with("t.yaml:19:16: strategy.rolling.max_surge: "),
        "{text}"
    );
    assert!(text.contains("\n  hint: "), "{text}");
}

#[test]
fn load_spec_reports_unreadable_file() {
    let e = load_spec(Path::new("/nonexistent/baton/spec.yaml")).unwrap_err();
    assert_eq!(e.file, "/nonexistent/baton/spec.yaml");
    assert_eq!(e.line, None);
    assert!(e.message.contains("cannot read"), "{e}");
}

#[test]
fn int_or_percent_resolution() {
    assert_eq!(IntOrPercent::Count(2).resolve_up(10), 2);
    assert_eq!(IntOrPercent::Count(2).resolve_down(10), 2);
    assert_eq!(IntOrPercent::Percent(25).resolve_up(3), 1);
    assert_eq!(IntOrPercent::Percent(25).resolve_down(3), 0);
    assert_eq!(IntOrPercent::Percent(25).resolve_up(4), 1);
    assert_eq!(IntOrPercent::Percent(25).resolve_down(4), 1);
    assert_eq!(IntOrPercent::Percent(10).resolve_up(1), 1);
    assert_eq!(IntOrPercent::Percent(0).resolve_up(1000), 0);
    assert_eq!(IntOrPercent::Percent(100).resolve_down(1000), 1000);
}

#[test]
fn app_spec_round_trips_through_json() {
    let mut spec = parse_spec("t.yaml", BASE).unwrap();
    // Awkward durations too: sub-millisecond parts and very long ones.
    spec.drain_timeout = Duration::new(1, 500_000_007);
    spec.readiness.initial_delay = Duration::new(400_000_000, 1);
    let DriverSpec::Process(p) = &mut spec.driver else {
        panic!("a process driver")
    };
    p.workdir = Some(PathBuf::from("/srv/demo"));
    p.stop_grace = Duration::from_micros(1500);
    let StrategySpec::Rolling(r) = &mut spec.strategy else {
        panic!("not rolling")
    };
    r.max_surge = IntOrPercent::Percent(25);

    let json = serde_json::to_string(&spec).unwrap();
    let back: AppSpec = serde_json::from_str(&json).unwrap();
    assert_eq!(back, spec, "{json}");
    let value = serde_json::to_value(&spec).unwrap();
    assert_eq!(value["drain_timeout"], "1s 500ms 7ns");
    assert_eq!(value["strategy"]["rolling"]["max_surge"], "25%");
    assert_eq!(value["strategy"]["rolling"]["max_unavailable"], 0);
}

#[test]
fn many_durations_round_trip() {
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    for _ in 0..2000 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let d = Duration::new(rng % 10_000_000_000, (rng >> 20) as u32 % 1_000_000_000);
        let text = humantime::format_duration(d).to_string();
        assert_eq!(humantime::parse_duration(&text).unwrap(), d, "{text}");
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn quickstart_example_parses() {
    let spec = load_spec(&repo_root().join("examples/quickstart.yaml")).unwrap();
    assert_eq!(spec.name, "demo");
    assert_eq!(spec.instances, 3);
    let DriverSpec::Process(p) = &spec.driver else {
        panic!("a process driver")
    };
    assert_eq!(p.command[..2], ["{baton}", "sample"]);
    let StrategySpec::Rolling(r) = &spec.strategy else {
        panic!("not rolling")
    };
    assert_eq!(r.max_surge, IntOrPercent::Count(1));
    assert_eq!(r.max_unavailable, IntOrPercent::Count(0));
}

/// The checked-in schema must match the code. To regenerate it:
/// `BATON_UPDATE_SCHEMA=1 cargo test -p baton-spec checked_in_schema`.
#[test]
fn checked_in_schema_is_current() {
    let path = repo_root().join("schema/baton-spec.schema.json");
    let expected = serde_json::to_string_pretty(&json_schema()).unwrap() + "\n";
    if std::env::var_os("BATON_UPDATE_SCHEMA").is_some_and(|v| v == "1") {
        std::fs::write(&path, &expected).unwrap();
        return;
    }
    let actual = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        actual == expected,
        "{} is missing or out of date; regenerate it with\n  \
         BATON_UPDATE_SCHEMA=1 cargo test -p baton-spec checked_in_schema",
        path.display()
    );
}

#[test]
fn schema_describes_the_format() {
    let schema = json_schema();
    let props = &schema["properties"];
    for field in [
        "name",
        "listen",
        "instances",
        "driver",
        "readiness",
        "strategy",
        "analysis",
        "preflight",
        "hooks",
        "upgrade_windows",
    ] {
        assert!(
            props.get(field).is_some(),
            "{field} missing from the schema"
        );
    }
    assert_eq!(schema["additionalProperties"], false);
    let required = schema["required"].as_array().unwrap();
    assert!(required.iter().any(|v| v == "name"));
    let defs = &schema["$defs"];
    for def in [
        "CanarySpec",
        "CanaryStep",
        "BlueGreenSpec",
        "AnalysisSpec",
        "PreflightCheck",
        "SmokeTest",
        "WarmupSpec",
        "UpgradeWindows",
        "UpgradeWindow",
        "Weekday",
        "OnWindowEnd",
    ] {
        assert!(defs.get(def).is_some(), "{def} missing from the schema");
    }
    assert_eq!(defs["CanarySpec"]["required"], serde_json::json!(["steps"]));
    assert_eq!(
        defs["CanaryStep"]["oneOf"].as_array().map(Vec::len),
        Some(6)
    );
    assert_eq!(defs["SmokeTest"]["oneOf"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        defs["UpgradeWindows"]["required"],
        serde_json::json!(["allowed"])
    );
}

/// A valid canary spec; tests replace one line of it. Line numbers:
const CANARY: &str = "\
name: demo
listen: 127.0.0.1:8080
instances: 4
driver: { process: { command: [app, \"{port}\"] } }
strategy:
  canary:
    steps:
      - set_weight: 10
      - pause: { duration: 30s }
      - set_canary_scale: { instances: 2 }
      - analysis: { duration: 1m }
      - mirror: { percent: 50, duration: 20s, max_mismatch_rate: 0.02 }
      - set_weight: 50
      - pause: { until: approved }
      - approval: {}
      - pause: {}
      - set_weight: 100
    header_route: { name: X-Canary, equals: always }
    sticky: true
    shielding: true
    min_ready: 1s
    progress_deadline: 5m
    max_restarts: 1
analysis:
  interval: 2s
  window: 20s
  min_requests: 10
  failure_limit: 3
  max_error_rate: 0.05
  max_error_rate_increase: 0.01
  max_p99: 500ms
  max_p99_ratio: 1.5
";

/// `doc` with the first line starting with `prefix` (after indentation)
/// replaced by `replacement`.
fn replace_line(doc: &str, prefix: &str, replacement: &str) -> String {
    let mut found = false;
    let out: Vec<&str> = doc
        .lines()
        .map(|l| {
            if !found && l.trim_start().starts_with(prefix) {
                found = true;
                replacement
            } else {
                l
            }
        })
        .collect();
    assert!(found, "no line starts with {prefix:?}");
    out.join("\n") + "\n"
}

fn canary_with(prefix: &str, replacement: &str) -> String {
    replace_line(CANARY, prefix, replacement)
}

#[test]
fn canary_parses_with_values_and_defaults() {
    let spec = parse_spec("t.yaml", CANARY).unwrap();
    let StrategySpec::Canary(c) = &spec.strategy else {
        panic!("not canary: {:?}", spec.strategy)
    };
    assert_eq!(
        c.steps,
        [
            CanaryStep::SetWeight(10),
            CanaryStep::Pause(Some(Duration::from_secs(30))),
            CanaryStep::SetCanaryScale(2),
            CanaryStep::Analysis(Duration::from_secs(60)),
            CanaryStep::Mirror {
                percent: 50,
                duration: Duration::from_secs(20),
                max_mismatch_rate: 0.02,
                settings: None
            },
            CanaryStep::SetWeight(50),
            CanaryStep::Approval,
            CanaryStep::Approval,
            CanaryStep::Pause(None),
            CanaryStep::SetWeight(100),
        ]
    );
    assert_eq!(
        c.header_route,
        Some(HeaderMatch {
            name: "X-Canary".into(),
            equals: "always".into()
        })
    );
    assert!(c.sticky);
    assert!(c.shielding);
    assert_eq!(c.min_ready, Duration::from_secs(1));
    assert_eq!(c.progress_deadline, Duration::from_secs(300));
    assert_eq!(c.max_restarts, 1);
    let a = spec.analysis.as_ref().unwrap();
    assert_eq!(
        *a,
        AnalysisSpec {
            interval: Duration::from_secs(2),
            window: Duration::from_secs(20),
            min_requests: 10,
            failure_limit: 3,
            max_error_rate: Some(0.05),
            max_error_rate_increase: Some(0.01),
            max_p99: Some(Duration::from_millis(500)),
            max_p99_ratio: Some(1.5),
            max_memory_bytes: None,
            max_memory_ratio: None,
            max_cpu_per_request_ratio: None,
        }
    );
}

#[test]
fn canary_and_analysis_defaults() {
    let yaml = "name: a\nlisten: 127.0.0.1:80\ndriver: { process: { command: [app] } }\n\
                strategy: { canary: { steps: [{ set_weight: 20 }, { pause: }, { approval: }, \
                { mirror: { percent: 100, duration: 1m } }] } }\n\
                analysis: { max_p99: 1s }\n";
    let spec = parse_spec("t.yaml", yaml).unwrap();
    let StrategySpec::Canary(c) = &spec.strategy else {
        panic!("not canary")
    };
    assert_eq!(
        c.steps,
        [
            CanaryStep::SetWeight(20),
            CanaryStep::Pause(None),
            CanaryStep::Approval,
            CanaryStep::Mirror {
                percent: 100,
                duration: Duration::from_secs(60),
                max_mismatch_rate: 0.01,
                settings: None
            },
        ]
    );
    assert_eq!(c.min_ready, Duration::ZERO);
    assert_eq!(c.progress_deadline, Duration::from_secs(600));
    assert_eq!(c.max_restarts, 3);
    assert_eq!(c.header_route, None);
    assert!(!c.sticky);
    assert!(!c.shielding);
    let a = spec.analysis.unwrap();
    assert_eq!(a.interval, Duration::from_secs(5));
    assert_eq!(a.window, Duration::from_secs(30));
    assert_eq!(a.min_requests, 50);
    assert_eq!(a.failure_limit, 2);
    assert_eq!(a.max_error_rate, None);
    assert_eq!(a.max_error_rate_increase, None);
    assert_eq!(a.max_p99, Some(Duration::from_secs(1)));
    assert_eq!(a.max_p99_ratio, None);
    // Without the section there is no analysis.
    assert_eq!(parse_spec("t.yaml", BASE).unwrap().analysis, None);
}

#[test]
fn canary_needs_steps() {
    for (form, needle) in [
        ("  canary: {}", "missing required field `steps`"),
        ("  canary:", "missing required field `steps`"),
        ("  canary: { steps: [] }", "at least one step"),
    ] {
        let yaml = CANARY.replace(
            &CANARY[CANARY.find("  canary:").unwrap()..CANARY.find("    header_route").unwrap()],
            &format!("{form}\n"),
        );
        let yaml = yaml
            .lines()
            .filter(|l| !l.starts_with("    "))
            .collect::<Vec<_>>()
            .join("\n");
        let e = expect(&yaml, 6, "strategy.canary.steps", needle);
        assert!(e.hint.contains("set_weight"), "{e}");
    }
}

#[test]
fn unknown_canary_step_lists_the_kinds() {
    let e = expect(
        &canary_with("- set_weight: 10", "      - set_wieght: 10"),
        8,
        "strategy.canary.steps[0]",
        "unknown canary step `set_wieght`",
    );
    assert!(e.hint.contains("did you mean `set_weight`?"), "{e}");
    for kind in [
        "set_weight",
        "pause",
        "approval",
        "set_canary_scale",
        "analysis",
        "mirror",
    ] {
        assert!(e.hint.contains(&format!("`{kind}`")), "{e}");
    }
    expect(
        &canary_with("- set_weight: 10", "      - { set_weight: 10, pause: {} }"),
        8,
        "strategy.canary.steps[0]",
        "only one canary step",
    );
    let e = expect(
        &canary_with("- set_weight: 10", "      - {}"),
        8,
        "strategy.canary.steps[0]",
        "no canary step given",
    );
    assert!(e.message.contains("set_canary_scale"), "{e}");
    expect(
        &canary_with("- set_weight: 10", "      - set_weight"),
        8,
        "strategy.canary.steps[0]",
        "expected a map",
    );
}

#[test]
fn canary_weights() {
    let e = expect(
        &canary_with("- set_weight: 10", "      - set_weight: 101"),
        8,
        "strategy.canary.steps[0].set_weight",
        "out of range 0..=100",
    );
    assert!(e.hint.contains("0 to 100"), "{e}");
    expect(
        &canary_with("- set_weight: 10", "      - set_weight: ten"),
        8,
        "strategy.canary.steps[0].set_weight",
        "",
    );
    expect(
        &canary_with("- set_weight: 10", "      - set_weight: -1"),
        8,
        "strategy.canary.steps[0].set_weight",
        "",
    );
    let spec = parse_spec(
        "t.yaml",
        &canary_with("- set_weight: 10", "      - set_weight: 0"),
    )
    .unwrap();
    let StrategySpec::Canary(c) = &spec.strategy else {
        panic!("not canary")
    };
    assert_eq!(c.steps[0], CanaryStep::SetWeight(0));
}

#[test]
fn canary_pauses() {
    let e = expect(
        &canary_with("- pause: { duration", "      - pause: { duraton: 30s }"),
        9,
        "strategy.canary.steps[1].pause.duraton",
        "unknown field `duraton`",
    );
    assert!(e.hint.contains("did you mean `duration`?"), "{e}");
    assert!(e.hint.contains("`until`"), "{e}");
    let e = expect(
        &canary_with("- pause: { until", "      - pause: { until: approve }"),
        14,
        "strategy.canary.steps[6].pause.until",
        "unknown pause condition `approve`",
    );
    assert!(e.hint.contains("did you mean `approved`?"), "{e}");
    let e = expect(
        &canary_with("- pause: { until", "      - pause: { until: tomorrow }"),
        14,
        "strategy.canary.steps[6].pause.until",
        "unknown pause condition",
    );
    assert!(e.hint.contains("`approved`"), "{e}");
    expect(
        &canary_with(
            "- pause: { until",
            "      - pause: { until: approved, duration: 1m }",
        ),
        14,
        "strategy.canary.steps[6].pause.until",
        "not both",
    );
    let e = expect(
        &canary_with("- pause: { duration", "      - pause: { duration: 30 }"),
        9,
        "strategy.canary.steps[1].pause.duration",
        "invalid duration",
    );
    assert!(e.hint.contains("\"1m30s\""), "{e}");
    expect(
        &canary_with("- pause: { duration", "      - pause: { duration: 0s }"),
        9,
        "strategy.canary.steps[1].pause.duration",
        "longer than zero",
    );
    expect(
        &canary_with("- pause: { duration", "      - pause: 30s"),
        9,
        "strategy.canary.steps[1].pause",
        "expected a map",
    );
    let e = expect(
        &canary_with("- approval", "      - approval: { by: ops }"),
        15,
        "strategy.canary.steps[7].approval.by",
        "unknown field `by`",
    );
    assert!(e.hint.contains("no settings"), "{e}");
}

#[test]
fn canary_scale() {
    for bad in ["0", "5"] {
        let e = expect(
            &canary_with(
                "- set_canary_scale",
                &format!("      - set_canary_scale: {{ instances: {bad} }}"),
            ),
            10,
            "strategy.canary.steps[2].set_canary_scale.instances",
            "out of range 1..=4",
        );
        assert!(e.hint.contains("instances: 1"), "{e}");
    }
    expect(
        &canary_with("- set_canary_scale", "      - set_canary_scale: {}"),
        10,
        "strategy.canary.steps[2].set_canary_scale.instances",
        "missing required field `instances`",
    );
    parse_spec(
        "t.yaml",
        &canary_with(
            "- set_canary_scale",
            "      - set_canary_scale: { instances: 4 }",
        ),
    )
    .unwrap();
}

#[test]
fn canary_analysis_step() {
    expect(
        &canary_with("- analysis:", "      - analysis: { duration: soon }"),
        11,
        "strategy.canary.steps[3].analysis.duration",
        "invalid duration",
    );
    expect(
        &canary_with("- analysis:", "      - analysis: {}"),
        11,
        "strategy.canary.steps[3].analysis.duration",
        "missing required field `duration`",
    );
    // The limits come from the top-level section, which must be there.
    let yaml = CANARY[..CANARY.find("analysis:\n").unwrap()].to_owned();
    let e = expect(
        &yaml,
        11,
        "strategy.canary.steps[3].analysis",
        "needs the top-level `analysis:` section",
    );
    assert!(e.hint.contains("max_error_rate"), "{e}");
    // Without analysis steps, the section is optional.
    let yaml = replace_line(&yaml, "- analysis:", "      - set_weight: 20");
    assert_eq!(parse_spec("t.yaml", &yaml).unwrap().analysis, None);
}

#[test]
fn canary_mirror_step() {
    let line = |v: &str| canary_with("- mirror:", &format!("      - mirror: {v}"));
    for (value, field, needle) in [
        (
            "{ percent: 0, duration: 20s }",
            "percent",
            "out of range 1..=100",
        ),
        (
            "{ percent: 101, duration: 20s }",
            "percent",
            "out of range 1..=100",
        ),
        ("{ duration: 20s }", "percent", "missing required field"),
        ("{ percent: 5 }", "duration", "missing required field"),
        (
            "{ percent: 5, duration: 0s }",
            "duration",
            "longer than zero",
        ),
        (
            "{ percent: 5, duration: 1s, max_mismatch_rate: 1.5 }",
            "max_mismatch_rate",
            "out of range 0..=1",
        ),
        (
            "{ percent: 5, duration: 1s, max_mismatch_rate: -0.1 }",
            "max_mismatch_rate",
            "out of range 0..=1",
        ),
        (
            "{ percent: 5, duration: 1s, mismatch: 0.1 }",
            "mismatch",
            "unknown field",
        ),
    ] {
        let e = expect(
            &line(value),
            12,
            &format!("strategy.canary.steps[4].mirror.{field}"),
            needle,
        );
        assert!(!e.hint.is_empty(), "{e}");
    }
}

#[test]
fn header_rules() {
    let e = expect(
        &canary_with(
            "header_route:",
            "    header_route: { name: X Canary, equals: a }",
        ),
        18,
        "strategy.canary.header_route.name",
        "not a valid HTTP header name",
    );
    assert!(e.hint.contains("X-Canary"), "{e}");
    expect(
        &canary_with(
            "header_route:",
            "    header_route: { name: X-Canary, equals: \"\" }",
        ),
        18,
        "strategy.canary.header_route.equals",
        "must not be empty",
    );
    expect(
        &canary_with(
            "header_route:",
            "    header_route: { name: X-Canary, equals: \"a\\nb\" }",
        ),
        18,
        "strategy.canary.header_route.equals",
        "not a valid HTTP header value",
    );
    expect(
        &canary_with("header_route:", "    header_route: { name: X-Canary }"),
        18,
        "strategy.canary.header_route.equals",
        "missing required field `equals`",
    );
    let e = expect(
        &canary_with("header_route:", "    header_route: { nam: X }"),
        18,
        "strategy.canary.header_route.nam",
        "unknown field",
    );
    assert!(e.hint.contains("did you mean `name`?"), "{e}");
    expect(
        &canary_with("sticky:", "    sticky: maybe"),
        19,
        "strategy.canary.sticky",
        "",
    );
}

#[test]
fn canary_min_ready_shorter_than_progress_deadline() {
    expect(
        &canary_with("min_ready:", "    min_ready: 5m"),
        21,
        "strategy.canary.min_ready",
        "shorter than progress_deadline",
    );
    expect(
        &canary_with("progress_deadline:", "    progress_deadline: 1x"),
        22,
        "strategy.canary.progress_deadline",
        "invalid duration",
    );
}

#[test]
fn analysis_limits() {
    let a = |prefix: &str, value: &str| canary_with(prefix, &format!("  {prefix} {value}"));
    for (prefix, value, line, needle) in [
        ("interval:", "0s", 25, "longer than zero"),
        ("window:", "forever", 26, "invalid duration"),
        ("min_requests:", "-1", 27, ""),
        ("failure_limit:", "0", 28, "at least 1"),
        ("max_error_rate:", "5", 29, "out of range 0..=1"),
        ("max_error_rate_increase:", "-0.5", 30, "out of range 0..=1"),
        ("max_p99:", "0ms", 31, "longer than zero"),
        ("max_p99:", "fast", 31, "invalid duration"),
        ("max_p99_ratio:", "1", 32, "not above 1"),
        ("max_p99_ratio:", "0.5", 32, "not above 1"),
        ("max_p99_ratio:", "x", 32, ""),
    ] {
        let field = format!("analysis.{}", prefix.trim_end_matches(':'));
        expect(&a(prefix, value), line, &field, needle);
    }
    let e = expect(
        &canary_with("max_error_rate:", "  max_eror_rate: 0.1"),
        29,
        "analysis.max_eror_rate",
        "unknown field",
    );
    assert!(e.hint.contains("did you mean `max_error_rate`?"), "{e}");
    // A section without any limit would check nothing.
    let yaml = CANARY[..CANARY.find("  max_error_rate:").unwrap()].to_owned();
    let e = expect(&yaml, 24, "analysis", "no limit given");
    assert!(e.hint.contains("max_p99"), "{e}");
}

/// A valid blue-green spec. Line numbers:
const BLUE_GREEN: &str = "\
name: demo
listen: 127.0.0.1:8080
instances: 2
driver: { process: { command: [app, \"{port}\"] } }
strategy:
  blue_green:
    preview_listen: 127.0.0.1:8081
    preview_header: { name: X-Preview, equals: \"yes\" }
    auto_promote_after: 1m
    scale_down_delay: 2m
    min_ready: 3s
    progress_deadline: 4m
    max_restarts: 0
";

fn blue_green_with(prefix: &str, replacement: &str) -> String {
    replace_line(BLUE_GREEN, prefix, replacement)
}

#[test]
fn blue_green_parses_with_values_and_defaults() {
    let spec = parse_spec("t.yaml", BLUE_GREEN).unwrap();
    let StrategySpec::BlueGreen(b) = &spec.strategy else {
        panic!("not blue-green")
    };
    assert_eq!(
        *b,
        BlueGreenSpec {
            preview_listen: Some("127.0.0.1:8081".parse().unwrap()),
            preview_header: HeaderMatch {
                name: "X-Preview".into(),
                equals: "yes".into()
            },
            auto_promote_after: Some(Duration::from_secs(60)),
            scale_down_delay: Duration::from_secs(120),
            min_ready: Duration::from_secs(3),
            progress_deadline: Duration::from_secs(240),
            max_restarts: 0,
        }
    );
    for form in ["strategy: { blue_green: {} }", "strategy:\n  blue_green:"] {
        let yaml = format!(
            "name: a\nlisten: 127.0.0.1:80\ndriver: {{ process: {{ command: [app] }} }}\n{form}\n"
        );
        let spec = parse_spec("t.yaml", &yaml).unwrap();
        let StrategySpec::BlueGreen(b) = &spec.strategy else {
            panic!("not blue-green: {form}")
        };
        assert_eq!(
            *b,
            BlueGreenSpec {
                preview_listen: None,
                preview_header: HeaderMatch {
                    name: "X-Baton-Preview".into(),
                    equals: "1".into()
                },
                auto_promote_after: None,
                scale_down_delay: Duration::from_secs(30),
                min_ready: Duration::ZERO,
                progress_deadline: Duration::from_secs(600),
                max_restarts: 3,
            },
            "{form}"
        );
    }
}

#[test]
fn blue_green_errors() {
    for same in ["127.0.0.1:8080", "0.0.0.0:8080"] {
        let e = expect(
            &blue_green_with("preview_listen:", &format!("    preview_listen: {same}")),
            7,
            "strategy.blue_green.preview_listen",
            "share its port with `listen`",
        );
        assert!(e.hint.contains("127.0.0.1:8081"), "{e}");
    }
    // Another address on the same port is a different listener.
    parse_spec(
        "t.yaml",
        &blue_green_with("preview_listen:", "    preview_listen: 127.0.0.2:8080"),
    )
    .unwrap();
    expect(
        &blue_green_with("preview_listen:", "    preview_listen: localhost:8081"),
        7,
        "strategy.blue_green.preview_listen",
        "not an IP:PORT",
    );
    expect(
        &blue_green_with(
            "preview_header:",
            "    preview_header: { name: \"X:P\", equals: \"1\" }",
        ),
        8,
        "strategy.blue_green.preview_header.name",
        "not a valid HTTP header name",
    );
    for (prefix, field) in [
        ("auto_promote_after:", "auto_promote_after"),
        ("scale_down_delay:", "scale_down_delay"),
        ("min_ready:", "min_ready"),
        ("progress_deadline:", "progress_deadline"),
    ] {
        let e = expect(
            &blue_green_with(prefix, &format!("    {prefix} later")),
            BLUE_GREEN.lines().position(|l| l.contains(prefix)).unwrap() + 1,
            &format!("strategy.blue_green.{field}"),
            "invalid duration",
        );
        assert!(e.hint.contains("1m30s"), "{e}");
    }
    expect(
        &blue_green_with("min_ready:", "    min_ready: 4m"),
        11,
        "strategy.blue_green.min_ready",
        "shorter than progress_deadline",
    );
    let e = expect(
        &blue_green_with("scale_down_delay:", "    scale_down_dealy: 2m"),
        10,
        "strategy.blue_green.scale_down_dealy",
        "unknown field",
    );
    assert!(e.hint.contains("did you mean `scale_down_delay`?"), "{e}");
}

#[test]
fn strategy_hint_names_every_strategy() {
    let e = expect(
        &with("strategy:", "strategy: canary"),
        17,
        "strategy",
        "map",
    );
    for name in ["rolling", "canary", "blue_green"] {
        assert!(e.hint.contains(name), "{e}");
    }
    let e = expect(
        &with("rolling:", "  rolling: {}\n  canary: {}"),
        18,
        "strategy",
        "only one strategy",
    );
    assert!(e.hint.contains("blue_green"), "{e}");
}

#[test]
fn canary_and_blue_green_specs_round_trip_through_json() {
    let mut spec = parse_spec("t.yaml", CANARY).unwrap();
    let StrategySpec::Canary(c) = &mut spec.strategy else {
        panic!("not canary")
    };
    c.steps.push(CanaryStep::Pause(Some(Duration::new(3, 7))));
    c.steps.push(CanaryStep::Mirror {
        percent: 3,
        duration: Duration::from_nanos(1),
        max_mismatch_rate: 0.1 + 0.2,
        settings: Some(Box::new(MirrorSpec {
            samples: 7,
            ..MirrorSpec::default()
        })),
    });
    spec.mirror.compare.body.ignore = vec!["$.a".into()];
    spec.mirror.compare.headers = HeadersCompare::Only(vec!["etag".into()]);
    c.min_ready = Duration::new(0, 999_999_999);
    let a = spec.analysis.as_mut().unwrap();
    a.max_error_rate = Some(1.0 / 3.0);
    a.max_p99_ratio = Some(1.000_000_000_000_000_2);
    a.max_p99 = Some(Duration::new(86_400 * 400, 1));
    let json = serde_json::to_string(&spec).unwrap();
    let back: AppSpec = serde_json::from_str(&json).unwrap();
    assert_eq!(back, spec, "{json}");
    let value = serde_json::to_value(&spec).unwrap();
    let steps = &value["strategy"]["canary"]["steps"];
    assert_eq!(steps[0], serde_json::json!({ "set_weight": 10 }));
    assert_eq!(steps[1], serde_json::json!({ "pause": "30s" }));
    assert_eq!(steps[6], "approval");
    assert_eq!(steps[8], serde_json::json!({ "pause": null }));
    assert_eq!(
        value["analysis"]["max_p99"],
        "1year 1month 4days 7h 26m 24s 1ns"
    );

    let mut spec = parse_spec("t.yaml", BLUE_GREEN).unwrap();
    let json = serde_json::to_string(&spec).unwrap();
    assert_eq!(serde_json::from_str::<AppSpec>(&json).unwrap(), spec);
    let StrategySpec::BlueGreen(b) = &mut spec.strategy else {
        panic!("not blue-green")
    };
    b.preview_listen = Some("[::1]:9000".parse().unwrap());
    b.auto_promote_after = None;
    b.scale_down_delay = Duration::new(1, 1);
    let json = serde_json::to_string(&spec).unwrap();
    assert_eq!(
        serde_json::from_str::<AppSpec>(&json).unwrap(),
        spec,
        "{json}"
    );
    assert_eq!(
        serde_json::to_value(&spec).unwrap()["analysis"],
        serde_json::Value::Null
    );
}

#[test]
fn many_fractions_round_trip_through_json() {
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    for _ in 0..20_000 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let x = (rng >> 11) as f64 / (1u64 << 53) as f64;
        let text = serde_json::to_string(&x).unwrap();
        assert_eq!(serde_json::from_str::<f64>(&text).unwrap(), x, "{text}");
    }
}

#[test]
fn json_written_before_analysis_existed_still_reads() {
    let spec = parse_spec("t.yaml", BASE).unwrap();
    let mut value = serde_json::to_value(&spec).unwrap();
    value.as_object_mut().unwrap().remove("analysis");
    assert_eq!(serde_json::from_value::<AppSpec>(value).unwrap(), spec);
}

#[test]
fn canary_example_parses() {
    let spec = load_spec(&repo_root().join("examples/canary.yaml")).unwrap();
    let StrategySpec::Canary(c) = &spec.strategy else {
        panic!("not canary")
    };
    assert!(c.steps.contains(&CanaryStep::Approval));
    assert!(
        c.steps
            .iter()
            .any(|s| matches!(s, CanaryStep::Mirror { percent: 100, .. }))
    );
    assert!(
        spec.mirror
            .compare
            .body
            .ignore
            .contains(&"$.served_at".to_string())
    );
    assert_eq!(
        spec.mirror.compare.headers,
        HeadersCompare::AllExcept(vec!["x-version".into()])
    );
    assert_eq!(c.steps.last(), Some(&CanaryStep::SetWeight(100)));
    assert!(c.header_route.is_some());
    assert!(spec.analysis.is_some());
    let DriverSpec::Process(p) = &spec.driver else {
        panic!("a process driver")
    };
    assert_eq!(p.command[..2], ["{baton}", "sample"]);
}

#[test]
fn blue_green_example_parses() {
    let spec = load_spec(&repo_root().join("examples/blue-green.yaml")).unwrap();
    let StrategySpec::BlueGreen(b) = &spec.strategy else {
        panic!("not blue-green")
    };
    assert!(b.preview_listen.is_some());
    let DriverSpec::Process(p) = &spec.driver else {
        panic!("a process driver")
    };
    assert_eq!(p.command[..2], ["{baton}", "sample"]);
}

/// A valid spec with pre-flight checks, hooks and upgrade windows; tests replace
/// one line of it. Line numbers:
const CHECKS: &str = "\
name: demo
listen: 127.0.0.1:8080
driver: { process: { command: [app, \"{port}\"] } }
preflight:
  - name: vulnerability scan
    command: [\"sh\", \"-c\", \"echo scanning {app} {version}\"]
    timeout: 2m
  - name: deps
    command: ./check-deps {baton} {version}
hooks:
  smoke:
    - http: { name: home page, path: /, expect_status: 200, expect_body: version, count: 20, concurrency: 4 }
    - command: { name: api tests, command: [\"sh\", \"-c\", \"curl -fsS {preview_url}/healthz\"] }
    - http:
        name: search
        method: post
        path: /search?q=x
        expect_status: 201
        timeout: 2s
  warmup: { path: /, requests: 50 }
upgrade_windows:
  timezone: Europe/Berlin
  allowed:
    - { days: [mon, tue, wed, thu, fri], start: \"02:00\", end: \"05:00\" }
    - days: [Saturday, sun, sat]
      start: \"22:00\"
      end: \"03:00\"
  on_end: pause
";

fn checks_with(prefix: &str, replacement: &str) -> String {
    replace_line(CHECKS, prefix, replacement)
}

#[test]
fn checks_parse_with_values_and_defaults() {
    let spec = parse_spec("t.yaml", CHECKS).unwrap();
    assert_eq!(
        spec.preflight,
        [
            PreflightCheck {
                name: "vulnerability scan".into(),
                command: vec![
                    "sh".into(),
                    "-c".into(),
                    "echo scanning {app} {version}".into()
                ],
                timeout: Duration::from_secs(120),
            },
            PreflightCheck {
                name: "deps".into(),
                command: vec!["./check-deps".into(), "{baton}".into(), "{version}".into()],
                timeout: Duration::from_secs(300),
            },
        ]
    );
    assert_eq!(
        spec.hooks.smoke,
        [
            SmokeTest::Http {
                name: "home page".into(),
                method: "GET".into(),
                path: "/".into(),
                expect_status: 200,
                expect_body: Some("version".into()),
                count: 20,
                concurrency: 4,
                timeout: Duration::from_secs(10),
            },
            SmokeTest::Command {
                name: "api tests".into(),
                command: vec![
                    "sh".into(),
                    "-c".into(),
                    "curl -fsS {preview_url}/healthz".into()
                ],
                timeout: Duration::from_secs(300),
            },
            SmokeTest::Http {
                name: "search".into(),
                method: "POST".into(),
                path: "/search?q=x".into(),
                expect_status: 201,
                expect_body: None,
                count: 1,
                concurrency: 1,
                timeout: Duration::from_secs(2),
            },
        ]
    );
    assert_eq!(spec.hooks.smoke[1].name(), "api tests");
    assert_eq!(
        spec.hooks.warmup,
        Some(WarmupSpec {
            path: "/".into(),
            requests: 50,
            concurrency: 4
        })
    );
    let hm = |hour, minute| TimeOfDay { hour, minute };
    assert_eq!(
        spec.upgrade_windows,
        Some(UpgradeWindows {
            timezone: "Europe/Berlin".into(),
            allowed: vec![
                UpgradeWindow {
                    days: Weekday::ALL[..5].to_vec(),
                    start: hm(2, 0),
                    end: hm(5, 0),
                },
                UpgradeWindow {
                    days: vec![Weekday::Sat, Weekday::Sun],
                    start: hm(22, 0),
                    end: hm(3, 0),
                },
            ],
            on_end: OnWindowEnd::Pause,
        })
    );
    assert!(spec.upgrade_windows.as_ref().unwrap().allowed[1].crosses_midnight());
}

#[test]
fn checks_and_windows_are_optional() {
    let spec = parse_spec("t.yaml", BASE).unwrap();
    assert!(spec.preflight.is_empty());
    assert_eq!(spec.hooks, HooksSpec::default());
    assert_eq!(spec.upgrade_windows, None);
    for form in [
        "hooks: {}",
        "hooks:",
        "hooks: { smoke: [] }",
        "preflight: []",
    ] {
        let spec = parse_spec("t.yaml", &format!("{BASE}{form}\n")).unwrap();
        assert_eq!(spec.hooks, HooksSpec::default(), "{form}");
        assert!(spec.preflight.is_empty(), "{form}");
    }
    let yaml = format!(
        "{BASE}hooks: {{ warmup: {{ requests: 2 }} }}\n\
         upgrade_windows: {{ allowed: [{{ start: \"1:30\", end: \"24:00\" }}] }}\n"
    );
    let spec = parse_spec("t.yaml", &yaml).unwrap();
    // The default concurrency is 4, but never more than the requests.
    assert_eq!(
        spec.hooks.warmup,
        Some(WarmupSpec {
            path: "/".into(),
            requests: 2,
            concurrency: 2
        })
    );
    assert_eq!(
        spec.upgrade_windows,
        Some(UpgradeWindows {
            timezone: "UTC".into(),
            allowed: vec![UpgradeWindow {
                days: Weekday::ALL.to_vec(),
                start: TimeOfDay {
                    hour: 1,
                    minute: 30
                },
                end: TimeOfDay::END_OF_DAY,
            }],
            on_end: OnWindowEnd::Finish,
        })
    );
    // Time zone names are looked up without regard to case and stored as the
    // database spells them.
    let spec = parse_spec(
        "t.yaml",
        &checks_with("timezone:", "  timezone: america/new_york"),
    )
    .unwrap();
    assert_eq!(spec.upgrade_windows.unwrap().timezone, "America/New_York");
}

#[test]
fn unknown_smoke_test_kind_lists_the_kinds() {
    let e = expect(
        &checks_with("- http: { name: home", "    - comand: { name: x }"),
        12,
        "hooks.smoke[0]",
        "unknown smoke test `comand`",
    );
    assert!(e.hint.contains("did you mean `command`?"), "{e}");
    assert!(e.hint.contains("`command`, `http`"), "{e}");
    let e = expect(
        &checks_with(
            "- http: { name: home",
            "    - { http: { name: a, path: / }, command: { name: b, command: x } }",
        ),
        12,
        "hooks.smoke[0]",
        "only one smoke test",
    );
    assert!(e.hint.contains("http"), "{e}");
    expect(
        &checks_with("- http: { name: home", "    - {}"),
        12,
        "hooks.smoke[0]",
        "no smoke test given",
    );
    let e = expect(
        &checks_with("expect_status: 201", "        expect_staus: 201"),
        18,
        "hooks.smoke[2].http.expect_staus",
        "unknown field",
    );
    assert!(e.hint.contains("did you mean `expect_status`?"), "{e}");
}

#[test]
fn window_times_are_hh_mm() {
    let line = |start: &str, end: &str| {
        format!("    - {{ days: [mon, tue, wed, thu, fri], start: {start}, end: {end} }}")
    };
    for bad in [
        "\"2am\"",
        "\"2:0\"",
        "\"24:00\"",
        "\"12:60\"",
        "\"-1:00\"",
        "\"\"",
    ] {
        let e = expect(
            &checks_with("- { days: [mon", &line(bad, "\"05:00\"")),
            24,
            "upgrade_windows.allowed[0].start",
            "is not a time of day as HH:MM, 00:00 to 23:59",
        );
        assert!(e.hint.contains("\"HH:MM\""), "{e}");
    }
    for bad in ["\"25:00\"", "\"24:01\"", "\"5\""] {
        expect(
            &checks_with("- { days: [mon", &line("\"02:00\"", bad)),
            24,
            "upgrade_windows.allowed[0].end",
            "00:00 to 24:00",
        );
    }
    expect(
        &checks_with("start: \"22:00\"", "      start: 22"),
        26,
        "upgrade_windows.allowed[1].start",
        "",
    );
    // Unquoted times are text in YAML 1.2.
    let spec = parse_spec(
        "t.yaml",
        &checks_with("- { days: [mon", &line("02:00", "5:30")),
    )
    .unwrap();
    let w = &spec.upgrade_windows.unwrap().allowed[0];
    assert_eq!(
        (w.start.to_string(), w.end.to_string()),
        ("02:00".into(), "05:30".into())
    );
    expect(
        &checks_with("start: \"22:00\"", "      strat: \"22:00\""),
        26,
        "upgrade_windows.allowed[1].strat",
        "unknown field",
    );
    let yaml = CHECKS.replace("      start: \"22:00\"\n", "");
    expect(
        &yaml,
        25,
        "upgrade_windows.allowed[1].start",
        "missing required field `start`",
    );
}

#[test]
fn unknown_weekday() {
    let e = expect(
        &checks_with("- days: [Saturday", "    - days: [Saturday, sun, wensday]"),
        25,
        "upgrade_windows.allowed[1].days[2]",
        "unknown weekday `wensday`",
    );
    assert!(e.hint.contains("did you mean `wed`?"), "{e}");
    assert!(e.hint.contains("mon, tue, wed"), "{e}");
    let e = expect(
        &checks_with("- days: [Saturday", "    - days: [sut]"),
        25,
        "upgrade_windows.allowed[1].days[0]",
        "unknown weekday `sut`",
    );
    assert!(
        e.hint.contains("did you mean `sat`?") || e.hint.contains("did you mean `sun`?"),
        "{e}"
    );
    expect(
        &checks_with("- days: [Saturday", "    - days: []"),
        25,
        "upgrade_windows.allowed[1].days",
        "no days given",
    );
}

#[test]
fn unknown_time_zone() {
    let e = expect(
        &checks_with("timezone:", "  timezone: Europe/Berln"),
        22,
        "upgrade_windows.timezone",
        "unknown time zone `Europe/Berln`",
    );
    assert!(e.hint.contains("did you mean `Europe/Berlin`?"), "{e}");
    assert!(e.hint.contains("IANA time zone"), "{e}");
    for bad in ["CEST", "\"\"", "Mars/Olympus_Mons", "+02:00"] {
        expect(
            &checks_with("timezone:", &format!("  timezone: {bad}")),
            22,
            "upgrade_windows.timezone",
            "unknown time zone",
        );
    }
}

#[test]
fn upgrade_windows_need_a_window() {
    let lines: Vec<&str> = CHECKS.lines().collect();
    let mut yaml = lines[..22].join("\n");
    yaml.push_str("\n  allowed: []\n  on_end: pause\n");
    let e = expect(&yaml, 23, "upgrade_windows.allowed", "no window given");
    assert!(e.hint.contains("start: \"01:00\""), "{e}");
    let yaml = lines[..22].join("\n") + "\n";
    expect(
        &yaml,
        21,
        "upgrade_windows.allowed",
        "missing required field `allowed`",
    );
}

#[test]
fn window_start_and_end_differ() {
    let e = expect(
        &checks_with("end: \"03:00\"", "      end: \"22:00\""),
        27,
        "upgrade_windows.allowed[1].end",
        "both 22:00",
    );
    assert!(e.hint.contains("\"24:00\""), "{e}");
}

#[test]
fn unknown_on_end() {
    let e = expect(
        &checks_with("on_end:", "  on_end: paus"),
        28,
        "upgrade_windows.on_end",
        "unknown on_end `paus`",
    );
    assert!(e.hint.contains("did you mean `pause`?"), "{e}");
}

#[test]
fn smoke_count_and_concurrency_ranges() {
    let line = |count: &str, concurrency: &str| {
        format!(
            "    - http: {{ name: home page, path: /, count: {count}, concurrency: {concurrency} }}"
        )
    };
    for (count, concurrency, field, needle) in [
        ("0", "1", "count", "0 is out of range 1..=100000"),
        ("100001", "1", "count", "100001 is out of range 1..=100000"),
        (
            "20",
            "0",
            "concurrency",
            "0 is out of range 1..=20 (the test's `count`)",
        ),
        ("20", "21", "concurrency", "21 is out of range 1..=20"),
    ] {
        let e = expect(
            &checks_with("- http: { name: home", &line(count, concurrency)),
            12,
            &format!("hooks.smoke[0].http.{field}"),
            needle,
        );
        assert!(e.hint.contains(&format!("`{field}: ")), "{e}");
    }
    parse_spec(
        "t.yaml",
        &checks_with("- http: { name: home", &line("100000", "100000")),
    )
    .unwrap();
    expect(
        &checks_with("warmup:", "  warmup: { path: /, requests: 0 }"),
        20,
        "hooks.warmup.requests",
        "out of range 1..=100000",
    );
    expect(
        &checks_with("warmup:", "  warmup: { path: /, requests: 100001 }"),
        20,
        "hooks.warmup.requests",
        "out of range 1..=100000",
    );
    expect(
        &checks_with("warmup:", "  warmup: { requests: 5, concurrency: 6 }"),
        20,
        "hooks.warmup.concurrency",
        "6 is out of range 1..=5",
    );
    expect(
        &checks_with("warmup:", "  warmup: { path: / }"),
        20,
        "hooks.warmup.requests",
        "missing required field `requests`",
    );
}

#[test]
fn smoke_status_method_and_body() {
    for status in ["99", "600", "70000"] {
        expect(
            &checks_with(
                "expect_status: 201",
                &format!("        expect_status: {status}"),
            ),
            18,
            "hooks.smoke[2].http.expect_status",
            "out of range 100..=599",
        );
    }
    let e = expect(
        &checks_with("method: post", "        method: \"GE T\""),
        16,
        "hooks.smoke[2].http.method",
        "not a valid HTTP method",
    );
    assert!(e.hint.contains("HEAD"), "{e}");
    // Other method tokens are kept as written.
    let spec = parse_spec(
        "t.yaml",
        &checks_with("method: post", "        method: PROPFIND"),
    )
    .unwrap();
    let SmokeTest::Http { method, .. } = &spec.hooks.smoke[2] else {
        panic!("not http")
    };
    assert_eq!(method, "PROPFIND");
    expect(
        &checks_with("method: post", "        expect_body: \"\""),
        16,
        "hooks.smoke[2].http.expect_body",
        "must not be empty",
    );
    expect(
        &checks_with("timeout: 2s", "        timeout: 0s"),
        19,
        "hooks.smoke[2].http.timeout",
        "longer than zero",
    );
}

#[test]
fn request_paths_start_with_slash() {
    let e = expect(
        &checks_with("path: /search", "        path: search"),
        17,
        "hooks.smoke[2].http.path",
        "does not start with '/'",
    );
    assert!(e.hint.contains("path: /"), "{e}");
    expect(
        &checks_with("path: /search", "        path: \"/a b\""),
        17,
        "hooks.smoke[2].http.path",
        "contains a space",
    );
    expect(
        &checks_with("warmup:", "  warmup: { path: index.html, requests: 5 }"),
        20,
        "hooks.warmup.path",
        "does not start with '/'",
    );
    let yaml = CHECKS.replace("        path: /search?q=x\n", "");
    expect(
        &yaml,
        14,
        "hooks.smoke[2].http.path",
        "missing required field `path`",
    );
}

#[test]
fn placeholders_depend_on_the_command() {
    // {port} and {instance} exist only for instances.
    let e = expect(
        &checks_with(
            "command: [\"sh\", \"-c\", \"echo scanning",
            "    command: [scan, --port, \"{port}\"]",
        ),
        6,
        "preflight[0].command[2]",
        "{port} cannot be used in a pre-flight command",
    );
    assert!(e.hint.contains("{version}, {app}, {baton}"), "{e}");
    assert!(
        e.hint.contains("{port} exists only in instance commands"),
        "{e}"
    );
    expect(
        &checks_with(
            "command: ./check-deps",
            "    command: ./check-deps {instance}",
        ),
        9,
        "preflight[1].command",
        "{instance} cannot be used in a pre-flight command",
    );
    let e = expect(
        &checks_with(
            "- command: { name: api tests",
            "    - command: { name: api tests, command: [curl, \"{preview_url}:{port}\"] }",
        ),
        13,
        "hooks.smoke[1].command.command[1]",
        "{port} cannot be used in a smoke test command",
    );
    assert!(
        e.hint.contains("{preview_url}, {version}, {app}, {baton}"),
        "{e}"
    );
    // {preview_url} exists only in smoke test commands.
    let e = expect(
        &checks_with(
            "command: [\"sh\", \"-c\", \"echo scanning",
            "    command: [scan, \"{preview_url}\"]",
        ),
        6,
        "preflight[0].command[1]",
        "{preview_url} cannot be used in a pre-flight command",
    );
    assert!(
        e.hint
            .contains("{preview_url} exists only in a smoke test command"),
        "{e}"
    );
    expect(
        &checks_with(
            "driver:",
            "driver: { process: { command: [app, \"{preview_url}\"] } }",
        ),
        3,
        "driver.process.command[1]",
        "{preview_url} cannot be used in instance commands",
    );
    // Unknown everywhere.
    let e = expect(
        &checks_with(
            "- command: { name: api tests",
            "    - command: { name: api tests, command: [test, \"{verison}\"] }",
        ),
        13,
        "hooks.smoke[1].command.command[1]",
        "unknown placeholder {verison}",
    );
    assert!(e.hint.contains("did you mean {version}?"), "{e}");
}

#[test]
fn check_commands_must_not_be_empty() {
    let e = expect(
        &checks_with(
            "command: [\"sh\", \"-c\", \"echo scanning",
            "    command: []",
        ),
        6,
        "preflight[0].command",
        "the command is empty",
    );
    assert!(e.hint.contains("{version}"), "{e}");
    expect(
        &checks_with("command: ./check-deps", "    command: \"  \""),
        9,
        "preflight[1].command",
        "the command is empty",
    );
    expect(
        &checks_with("command: ./check-deps", "    command: \"./check 'x\""),
        9,
        "preflight[1].command",
        "quote",
    );
    let e = expect(
        &checks_with(
            "- command: { name: api tests",
            "    - command: { name: api tests, command: \"\" }",
        ),
        13,
        "hooks.smoke[1].command.command",
        "the command is empty",
    );
    assert!(e.hint.contains("{preview_url}"), "{e}");
    expect(
        &checks_with(
            "- command: { name: api tests",
            "    - command: { name: api tests }",
        ),
        13,
        "hooks.smoke[1].command.command",
        "missing required field `command`",
    );
    expect(
        &checks_with("timeout: 2m", "    timeout: 0s"),
        7,
        "preflight[0].timeout",
        "longer than zero",
    );
}

#[test]
fn check_names_are_required_and_unique() {
    let e = expect(
        &checks_with("- name: deps", "  - name: vulnerability scan"),
        8,
        "preflight[1].name",
        "another pre-flight check is already named `vulnerability scan`",
    );
    assert!(e.hint.contains("its own name"), "{e}");
    expect(
        &checks_with("name: search", "        name: home page"),
        15,
        "hooks.smoke[2].http.name",
        "another smoke test is already named `home page`",
    );
    expect(
        &checks_with("- name: deps", "  - name: \" \""),
        8,
        "preflight[1].name",
        "must not be empty",
    );
    let yaml = CHECKS.replace("        name: search\n", "");
    expect(
        &yaml,
        14,
        "hooks.smoke[2].http.name",
        "missing required field `name`",
    );
}

#[test]
fn all_check_errors_are_collected() {
    let yaml = checks_with("timezone:", "  timezone: Nowhere")
        .replace("count: 20, concurrency: 4", "count: 20, concurrency: 40")
        .replace("timeout: 2m", "timeout: soon");
    let errors = parse_spec_all("t.yaml", &yaml).unwrap_err();
    let fields: Vec<_> = errors.iter().map(|e| (e.line, e.field.as_str())).collect();
    assert_eq!(
        fields,
        [
            (Some(7), "preflight[0].timeout"),
            (Some(12), "hooks.smoke[0].http.concurrency"),
            (Some(22), "upgrade_windows.timezone"),
        ]
    );
}

#[test]
fn checks_and_windows_round_trip_through_json() {
    let mut spec = parse_spec("t.yaml", CHECKS).unwrap();
    spec.preflight[0].timeout = Duration::new(1, 1);
    if let SmokeTest::Http { timeout, .. } = &mut spec.hooks.smoke[0] {
        *timeout = Duration::from_nanos(999);
    }
    let w = spec.upgrade_windows.as_mut().unwrap();
    w.allowed.push(UpgradeWindow {
        days: vec![Weekday::Wed],
        start: TimeOfDay { hour: 0, minute: 0 },
        end: TimeOfDay::END_OF_DAY,
    });
    let json = serde_json::to_string(&spec).unwrap();
    let back: AppSpec = serde_json::from_str(&json).unwrap();
    assert_eq!(back, spec, "{json}");
    let value = serde_json::to_value(&spec).unwrap();
    assert_eq!(
        value["preflight"][0],
        serde_json::json!({
            "name": "vulnerability scan",
            "command": ["sh", "-c", "echo scanning {app} {version}"],
            "timeout": "1s 1ns",
        })
    );
    assert_eq!(
        value["hooks"]["smoke"][0],
        serde_json::json!({ "http": {
            "name": "home page",
            "method": "GET",
            "path": "/",
            "expect_status": 200,
            "expect_body": "version",
            "count": 20,
            "concurrency": 4,
            "timeout": "999ns",
        }})
    );
    assert_eq!(value["hooks"]["smoke"][1]["command"]["timeout"], "5m");
    assert_eq!(
        value["hooks"]["warmup"],
        serde_json::json!({ "path": "/", "requests": 50, "concurrency": 4 })
    );
    assert_eq!(
        value["upgrade_windows"],
        serde_json::json!({
            "timezone": "Europe/Berlin",
            "allowed": [
                { "days": ["mon", "tue", "wed", "thu", "fri"], "start": "02:00", "end": "05:00" },
                { "days": ["sat", "sun"], "start": "22:00", "end": "03:00" },
                { "days": ["wed"], "start": "00:00", "end": "24:00" },
            ],
            "on_end": "pause",
        })
    );
    // Every on_end and weekday.
    let mut spec = parse_spec("t.yaml", CHECKS).unwrap();
    let w = spec.upgrade_windows.as_mut().unwrap();
    w.on_end = OnWindowEnd::Finish;
    w.allowed[0].days = Weekday::ALL.to_vec();
    let json = serde_json::to_string(&spec).unwrap();
    assert_eq!(serde_json::from_str::<AppSpec>(&json).unwrap(), spec);
    assert!(json.contains(r#""on_end":"finish""#), "{json}");
    // Invalid stored values are refused rather than misread.
    for (bad, good) in [
        (r#""start":"02:00""#, r#""start":"2:0""#),
        (r#""start":"02:00""#, r#""start":"24:00x""#),
        (r#""mon""#, r#""monday""#),
    ] {
        let broken = json.replacen(bad, good, 1);
        assert_ne!(broken, json);
        assert!(
            serde_json::from_str::<AppSpec>(&broken).is_err(),
            "{broken}"
        );
    }
}

#[test]
fn json_written_before_checks_existed_still_reads() {
    let spec = parse_spec("t.yaml", CANARY).unwrap();
    let mut value = serde_json::to_value(&spec).unwrap();
    let object = value.as_object_mut().unwrap();
    for field in ["preflight", "hooks", "upgrade_windows"] {
        assert!(object.remove(field).is_some(), "{field}");
    }
    assert_eq!(serde_json::from_value::<AppSpec>(value).unwrap(), spec);
}

#[test]
fn blue_green_example_has_checks_and_an_open_window() {
    let spec = load_spec(&repo_root().join("examples/blue-green.yaml")).unwrap();
    assert!(matches!(
        spec.hooks.smoke.as_slice(),
        [SmokeTest::Http { .. }]
    ));
    assert!(spec.hooks.warmup.is_some());
    let w = spec.upgrade_windows.unwrap();
    // The example deploys at any time.
    let mut t: jiff::Timestamp = "2026-03-29T00:59:00Z".parse().unwrap();
    for _ in 0..200 {
        assert!(w.is_open(t), "{t}");
        t += jiff::SignedDuration::from_mins(97);
    }
}

#[test]
fn quickstart_commented_checks_parse_when_uncommented() {
    let text = std::fs::read_to_string(repo_root().join("examples/quickstart.yaml")).unwrap();
    let (_, block) = text
        .split_once("# Optional checks and upgrade windows")
        .unwrap();
    let uncommented: String = block
        .lines()
        .skip(1)
        .filter_map(|l| l.strip_prefix("# "))
        .filter(|l| !l.starts_with("# ") && *l != "#")
        .map(|l| format!("{l}\n"))
        .collect();
    let yaml = text.replace(block, "") + "\n" + &uncommented;
    let spec = parse_spec("quickstart.yaml", &yaml).unwrap();
    assert_eq!(spec.preflight.len(), 1);
    assert_eq!(spec.hooks.smoke.len(), 2);
    let w = spec.upgrade_windows.unwrap();
    assert_eq!(
        (w.timezone.as_str(), w.on_end),
        ("Europe/Berlin", OnWindowEnd::Pause)
    );
    // Friday 23:00 in Berlin waits for Monday 02:00.
    let friday: jiff::Timestamp = "2026-11-20T22:00:00Z".parse().unwrap();
    assert_eq!(
        w.next_open(friday),
        Some("2026-11-23T01:00:00Z".parse().unwrap())
    );
}

#[test]
fn on_progress_deadline_takes_abort_or_pause() {
    let base = include_str!("../../../examples/quickstart.yaml");
    let spec = parse_spec("q.yaml", &format!("{base}\non_progress_deadline: pause\n")).unwrap();
    assert_eq!(spec.on_progress_deadline, crate::OnProgressDeadline::Pause);
    let spec = parse_spec("q.yaml", base).unwrap();
    assert_eq!(spec.on_progress_deadline, crate::OnProgressDeadline::Abort);
    let text = format!("{base}\non_progress_deadline: wait\n");
    let err = parse_spec("q.yaml", &text).unwrap_err();
    assert_eq!(err.field, "on_progress_deadline");
    assert_eq!(err.line, Some(text.lines().count()));
    assert!(err.hint.contains("pause"), "{}", err.hint);
}

#[test]
fn traffic_sets_balancing_and_timeouts() {
    let base = include_str!("../../../examples/quickstart.yaml");
    let spec = parse_spec("q.yaml", base).unwrap();
    assert_eq!(spec.traffic, crate::TrafficSpec::default());
    assert_eq!(spec.traffic.balance, crate::Balance::RoundRobin);
    assert_eq!(spec.traffic.response_timeout, Duration::from_secs(60));

    let text = format!(
        "{base}\ntraffic:\n  balance: least_requests\n  connect_timeout: 500ms\n  \
         response_timeout: 2m\n  client_header_timeout: 5s\n"
    );
    let t = parse_spec("q.yaml", &text).unwrap().traffic;
    assert_eq!(t.balance, crate::Balance::LeastRequests);
    assert_eq!(t.connect_timeout, Duration::from_millis(500));
    assert_eq!(t.response_timeout, Duration::from_secs(120));
    assert_eq!(t.client_header_timeout, Duration::from_secs(5));

    let text = format!("{base}\ntraffic:\n  balance: random\n");
    let err = parse_spec("q.yaml", &text).unwrap_err();
    assert_eq!(err.field, "traffic.balance");
    assert_eq!(err.line, Some(text.lines().count()));
    assert!(err.hint.contains("least_requests"), "{}", err.hint);

    let text = format!("{base}\ntraffic:\n  response_timeout: 0s\n");
    let err = parse_spec("q.yaml", &text).unwrap_err();
    assert_eq!(err.field, "traffic.response_timeout");
    assert!(err.message.contains("longer than zero"), "{}", err.message);

    let text = format!("{base}\ntraffic:\n  retries: 3\n");
    let err = parse_spec("q.yaml", &text).unwrap_err();
    assert!(err.to_string().contains("retries"), "{err}");
}

const CONTAINER: &str = "name: boxes
listen: 127.0.0.1:8095
driver:
  container:
    image: localhost/sample:{version}
    pull: never
    port: 8080
    command: [--version, \"{version}\"]
    env: { RUST_LOG: info }
    memory: 64MiB
    cpus: 0.5
    read_only: true
    labels: { team: platform }
";

#[test]
fn container_driver_parses_with_values_and_defaults() {
    let spec = parse_spec("t.yaml", CONTAINER).unwrap();
    let DriverSpec::Container(c) = &spec.driver else {
        panic!("a container driver")
    };
    assert_eq!(c.image, "localhost/sample:{version}");
    assert_eq!(c.pull, PullPolicy::Never);
    assert_eq!(c.port, 8080);
    assert_eq!(c.network, ContainerNetwork::Publish);
    assert_eq!(
        c.command.as_deref(),
        Some(&["--version".to_string(), "{version}".to_string()][..])
    );
    assert_eq!(c.entrypoint, None);
    assert_eq!(c.memory_bytes, Some(64 << 20));
    assert_eq!(c.cpus, Some(0.5));
    assert!(c.read_only);
    assert_eq!(c.labels.get("team").map(String::as_str), Some("platform"));
    assert_eq!(c.endpoint, None);
    assert_eq!(spec.driver.stop_grace(), Duration::from_secs(10));
    assert_eq!(spec.driver.kind(), "container");
}

#[test]
fn container_driver_mistakes_are_named_with_a_fix() {
    let e = expect(
        &CONTAINER.replace("pull: never", "pull: sometimes"),
        6,
        "driver.container.pull",
        "unknown pull policy `sometimes`",
    );
    assert!(e.hint.contains("if_missing"), "{e}");
    let e = expect(
        &CONTAINER.replace("64MiB", "64 lots"),
        10,
        "driver.container.memory",
        "invalid size `64 lots`",
    );
    assert!(e.hint.contains("256MiB"), "{e}");
    expect(
        &CONTAINER.replace("64MiB", "1MiB"),
        10,
        "driver.container.memory",
        "too little memory",
    );
    expect(
        &CONTAINER.replace("cpus: 0.5", "cpus: 0"),
        11,
        "driver.container.cpus",
        "not a CPU limit",
    );
    expect(
        &CONTAINER.replace("team: platform", "baton.app: x"),
        13,
        "driver.container.labels.baton.app",
        "baton's own",
    );
    expect(
        &CONTAINER.replace("{version}\n", "{instanse}\n"),
        5,
        "driver.container.image",
        "{instanse}",
    );
    let e = error(&CONTAINER.replace("    port: 8080\n", ""));
    assert_eq!(e.field, "driver.container.port", "{e}");
    let e = error(&CONTAINER.replace("container:", "containr:"));
    assert!(e.to_string().contains("container"), "{e}");
}

#[test]
fn analysis_takes_memory_and_cpu_limits() {
    let yaml = format!(
        "{CONTAINER}analysis: {{ max_memory: 48MiB, max_memory_ratio: 1.5, max_cpu_per_request_ratio: 2 }}\n"
    );
    let spec = parse_spec("t.yaml", &yaml).unwrap();
    let a = spec.analysis.unwrap();
    assert_eq!(a.max_memory_bytes, Some(48 << 20));
    assert_eq!(a.max_memory_ratio, Some(1.5));
    assert_eq!(a.max_cpu_per_request_ratio, Some(2.0));
    let e = error(&yaml.replace("1.5", "0.5"));
    assert_eq!(e.field, "analysis.max_memory_ratio", "{e}");
}

#[test]
fn containers_example_parses() {
    let spec = load_spec(&repo_root().join("examples/containers.yaml")).unwrap();
    let DriverSpec::Container(c) = &spec.driver else {
        panic!("a container driver")
    };
    assert_eq!(c.memory_bytes, Some(64 << 20));
    let a = spec.analysis.unwrap();
    assert_eq!(a.max_memory_bytes, Some(56 << 20));
}

const HOSTS: &str = "\
hosts:
  spread: per_host
  max_unavailable: 50%
  ssh: { user: deploy, identity_file: /keys/id, known_hosts: /keys/known_hosts }
  list:
    - { name: web-1, address: 10.0.0.11, labels: { zone: a } }
    - { name: web-2, address: 10.0.0.12, port: 2222, user: ops }
    - { name: web-3, address: 10.0.0.13, dir: /srv/baton }
";

#[test]
fn hosts_take_the_shared_ssh_settings_and_spread_instances() {
    let spec = parse_spec("t.yaml", &format!("{BASE}{HOSTS}")).expect("valid");
    let hosts = spec.hosts.expect("hosts");
    assert_eq!(hosts.spread, Spread::PerHost);
    assert_eq!(hosts.router, RouterPlacement::PerHost);
    assert_eq!(hosts.max_unavailable_hosts(), 1, "50% of 3, rounded down");
    assert_eq!(
        hosts.shares(3),
        [
            ("web-1".into(), 3),
            ("web-2".into(), 3),
            ("web-3".into(), 3)
        ]
    );
    let h2 = hosts.host("web-2").expect("web-2");
    assert_eq!((h2.port, h2.user.as_str()), (2222, "ops"));
    assert_eq!(h2.identity_file.as_deref(), Some(Path::new("/keys/id")));
    assert_eq!(hosts.host("web-1").map(|h| h.dir.as_str()), Some(".baton"));
    assert_eq!(
        hosts.host("web-3").map(|h| h.dir.as_str()),
        Some("/srv/baton")
    );
    let even = parse_spec(
        "t.yaml",
        &format!(
            "{}{}",
            with("instances:", "instances: 5"),
            HOSTS.replace("per_host", "even")
        ),
    )
    .expect("valid");
    let shares: Vec<u32> = even
        .hosts
        .expect("hosts")
        .shares(5)
        .iter()
        .map(|s| s.1)
        .collect();
    assert_eq!(shares, [2, 2, 1], "earlier hosts first");
}

#[test]
fn hosts_errors_name_the_field() {
    let dup = format!("{BASE}{}", HOSTS.replace("name: web-3", "name: web-1"));
    assert!(error(&dup).message.contains("listed twice"));
    let few = format!(
        "{}{}",
        with("instances:", "instances: 2"),
        HOSTS.replace("per_host", "even")
    );
    assert!(error(&few).message.contains("leaves a host with none"));
}

#[test]
fn containers_run_on_hosts_each_on_its_own_engine() {
    let containers = format!(
        "{}{HOSTS}",
        BASE.replace(
            "  process:\n    command: [\"{baton}\", sample, --port, \"{port}\"]\n    env: { RUST_LOG: info }\n    stop_grace: 5s\n",
            "  container:\n    image: app:{version}\n    port: 8080\n"
        )
    );
    let spec = parse_spec("t.yaml", &containers).expect("valid");
    assert!(matches!(spec.driver, DriverSpec::Container(ref c) if c.endpoint.is_none()));
    assert_eq!(spec.hosts.expect("hosts").hosts.len(), 3);
}

const MIRRORED: &str = r#"name: a
listen: 127.0.0.1:80
driver: { process: { command: [app] } }
mirror:
  requests: { methods: [GET], paths: [/api/], exclude_paths: [/api/admin], max_body: 1KiB }
  compare:
    headers: { ignore: [X-Version] }
    body: { ignore: ['$.version', '$.items[*].id'] }
  redact_headers: [X-Api-Key]
  samples: 5
strategy: { canary: { steps: [
  { mirror: { percent: 100, duration: 10s } },
  { mirror: { percent: 50, duration: 10s, compare: { body: { as: text, mask: ['pid \d+'] } } } },
  { mirror: { percent: 50, duration: 10s, requests: { methods: [GET, POST] } } } ] } }
"#;

#[test]
fn mirror_settings_and_step_overrides() {
    let spec = parse_spec("t.yaml", MIRRORED).unwrap();
    let m = &spec.mirror;
    assert_eq!(m.requests.methods, vec!["GET"]);
    assert_eq!(m.requests.paths, vec!["/api/"]);
    assert_eq!(m.requests.exclude_paths, vec!["/api/admin"]);
    assert_eq!(m.requests.max_body_bytes, 1024);
    assert!(m.compare.status);
    assert_eq!(
        m.compare.headers,
        HeadersCompare::AllExcept(vec!["x-version".into()])
    );
    assert_eq!(m.compare.body.mode, BodyMode::Json);
    assert_eq!(m.compare.body.ignore, vec!["$.version", "$.items[*].id"]);
    assert_eq!(m.redact_headers, vec!["x-api-key"]);
    assert_eq!(m.samples, 5);
    let StrategySpec::Canary(c) = &spec.strategy else {
        panic!("not canary")
    };
    // No override: the app's settings.
    assert_eq!(spec.mirror_settings(&c.steps[0]), m);
    // A body override replaces the body only; the rest is the app's.
    let s1 = spec.mirror_settings(&c.steps[1]);
    assert_eq!(s1.compare.body.mode, BodyMode::Text);
    assert_eq!(s1.compare.body.mask, vec![r"pid \d+"]);
    assert!(s1.compare.body.ignore.is_empty());
    assert_eq!(s1.compare.headers, m.compare.headers);
    assert_eq!(s1.requests, m.requests);
    assert_eq!(s1.redact_headers, m.redact_headers);
    // A requests override replaces the requests.
    let s2 = spec.mirror_settings(&c.steps[2]);
    assert_eq!(s2.requests.methods, vec!["GET", "POST"]);
    assert_eq!(s2.requests.max_body_bytes, 64 * 1024);
    assert_eq!(s2.compare, m.compare);
    // Defaults without a section.
    let plain = parse_spec(
        "t.yaml",
        "name: a\nlisten: 127.0.0.1:80\ndriver: { process: { command: [app] } }\n",
    )
    .unwrap();
    assert_eq!(plain.mirror, MirrorSpec::default());
    assert_eq!(plain.mirror.requests.methods, vec!["GET", "HEAD"]);
}

#[test]
fn bad_mirror_settings_name_the_field() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "mirror: { compare: { body: { ignore: ['items'] } } }",
            "mirror.compare.body.ignore[0]",
            "must start with '$'",
        ),
        (
            "mirror: { compare: { body: { mask: ['('] } } }",
            "mirror.compare.body.mask[0]",
            "not a valid regular expression",
        ),
        (
            "mirror: { compare: { body: { as: xml } } }",
            "mirror.compare.body.as",
            "unknown body comparison `xml`",
        ),
        (
            "mirror: { compare: { body: { as: text, ignore: ['$.a'] } } }",
            "mirror.compare.body.ignore",
            "only apply to `as: json`",
        ),
        (
            "mirror: { compare: { headers: { only: [a], ignore: [b] } } }",
            "mirror.compare.headers",
            "not both",
        ),
        (
            "mirror: { compare: { headers: { only: [Cookie] } } }",
            "mirror.compare.headers.only[0]",
            "carries credentials",
        ),
        (
            "mirror: { requests: { methods: [get] } }",
            "mirror.requests.methods[0]",
            "in capitals",
        ),
        (
            "mirror: { requests: { paths: [api] } }",
            "mirror.requests.paths[0]",
            "does not start with '/'",
        ),
        (
            "mirror: { requests: { max_body: 1PiB } }",
            "mirror.requests.max_body",
            "16MiB",
        ),
        (
            "mirror: { redact_headers: ['x y'] }",
            "mirror.redact_headers[0]",
            "not a valid HTTP header name",
        ),
        (
            "mirror: { samples: 5000 }",
            "mirror.samples",
            "out of range",
        ),
        (
            "strategy: { canary: { steps: [{ mirror: { percent: 5, duration: 1s, compare: { body: { ignore: ['x'] } } } }] } }",
            "strategy.canary.steps[0].mirror.compare.body.ignore[0]",
            "must start with '$'",
        ),
    ];
    for (extra, field, message) in cases {
        let yaml = format!(
            "name: a\nlisten: 127.0.0.1:80\ndriver: {{ process: {{ command: [app] }} }}\n{extra}\n"
        );
        let e = parse_spec("t.yaml", &yaml).unwrap_err();
        assert_eq!(e.field, *field, "{extra}: {e}");
        assert!(e.message.contains(message), "{extra}: {e}");
        assert!(
            !e.hint.is_empty() && !e.hint.starts_with("see examples"),
            "{extra}: no hint: {e}"
        );
    }
}

#[test]
fn webhooks_and_approvals() {
    let yaml = r#"name: a
listen: 127.0.0.1:80
driver: { process: { command: [app] } }
approval: { by_another_person: true }
notifications:
  webhooks:
    - { name: sink, url: "https://example.com/hook", secret_env: HOOK_KEY }
    - { name: chat, url: "http://127.0.0.1:9/x", format: slack, events: [rolled_back, stuck], timeout: 2s }
"#;
    let spec = parse_spec("t.yaml", yaml).unwrap();
    assert!(spec.approval_by_another_person);
    assert_eq!(spec.webhooks.len(), 2);
    assert_eq!(spec.webhooks[0].format, WebhookFormat::Json);
    assert_eq!(spec.webhooks[0].secret_env.as_deref(), Some("HOOK_KEY"));
    assert_eq!(spec.webhooks[0].timeout, Duration::from_secs(5));
    assert!(spec.webhooks[0].events.is_empty(), "all events");
    assert_eq!(spec.webhooks[1].format, WebhookFormat::Slack);
    assert_eq!(spec.webhooks[1].events, vec!["rolled_back", "stuck"]);
    let plain = parse_spec(
        "t.yaml",
        "name: a\nlisten: 127.0.0.1:80\ndriver: { process: { command: [app] } }\n",
    )
    .unwrap();
    assert!(!plain.approval_by_another_person && plain.webhooks.is_empty());

    let cases: &[(&str, &str, &str)] = &[
        (
            "- { name: x, url: 'ftp://h/' }",
            "notifications.webhooks[0].url",
            "not an http:// or https:// URL",
        ),
        (
            "- { name: x, url: 'http://h/', events: [deployed] }",
            "notifications.webhooks[0].events[0]",
            "unknown event `deployed`",
        ),
        (
            "- { name: x, url: 'http://h/', format: xml }",
            "notifications.webhooks[0].format",
            "unknown format `xml`",
        ),
        (
            "- { name: x, url: 'http://h/' }\n    - { name: x, url: 'http://h/' }",
            "notifications.webhooks[1].name",
            "listed twice",
        ),
        (
            "- { url: 'http://h/' }",
            "notifications.webhooks[0].name",
            "missing",
        ),
    ];
    for (hooks, field, message) in cases {
        let yaml = format!(
            "name: a\nlisten: 127.0.0.1:80\ndriver: {{ process: {{ command: [app] }} }}\nnotifications:\n  webhooks:\n    {hooks}\n"
        );
        let e = parse_spec("t.yaml", &yaml).unwrap_err();
        assert_eq!(e.field, *field, "{hooks}: {e}");
        assert!(e.message.contains(message), "{hooks}: {e}");
    }
}
