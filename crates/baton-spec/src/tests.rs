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
    let mut found = false;
    let out: Vec<&str> = BASE
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
    let DriverSpec::Process(p) = &spec.driver;
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
    let StrategySpec::Rolling(r) = &spec.strategy;
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
    let DriverSpec::Process(p) = &spec.driver;
    assert_eq!(p.command, ["./app", "--port", "{port}"]);
    assert_eq!(p.stop_grace, Duration::from_secs(10));
    assert_eq!(spec.readiness.path, "/healthz");
    assert_eq!(spec.readiness.interval, Duration::from_secs(1));
    assert_eq!(spec.readiness.success_threshold, 1);
    assert_eq!(spec.readiness.failure_threshold, 3);
    let StrategySpec::Rolling(r) = &spec.strategy;
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
        let StrategySpec::Rolling(r) = &spec.strategy;
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
        &with("rolling:", "  canary:"),
        18,
        "strategy",
        "unknown strategy",
    );
    assert!(e.hint.contains("`rolling`"), "{e}");
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
    let StrategySpec::Rolling(r) = &spec.strategy;
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
    let StrategySpec::Rolling(r) = &spec.strategy;
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
    let DriverSpec::Process(p) = &spec.driver;
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
    let DriverSpec::Process(p) = &mut spec.driver;
    p.workdir = Some(PathBuf::from("/srv/demo"));
    p.stop_grace = Duration::from_micros(1500);
    let StrategySpec::Rolling(r) = &mut spec.strategy;
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
    let DriverSpec::Process(p) = &spec.driver;
    assert_eq!(p.command[..2], ["{baton}", "sample"]);
    let StrategySpec::Rolling(r) = &spec.strategy;
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
    ] {
        assert!(
            props.get(field).is_some(),
            "{field} missing from the schema"
        );
    }
    assert_eq!(schema["additionalProperties"], false);
    let required = schema["required"].as_array().unwrap();
    assert!(required.iter().any(|v| v == "name"));
}
