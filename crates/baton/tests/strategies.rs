//! Canary and blue-green end to end: the real binary, sample service
//! processes, the router process and steady load.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

/// Write a spec with the given strategy (and optional analysis) section.
fn spec(h: &Harness, instances: u32, strategy: &str, analysis: &str) -> std::path::PathBuf {
    let yaml = format!(
        r#"name: demo
environment: test
listen: {listen}
instances: {instances}
drain_timeout: 5s
driver:
  process:
    command: ["{baton}", "sample", "--port", "{{port}}", "--version", "{{version}}"]
    stop_grace: 5s
readiness:
  path: /healthz
  interval: 200ms
  failure_threshold: 2
strategy:
{strategy}
{analysis}
"#,
        listen = h.listen,
        baton = BATON,
    );
    let path = h.dir.join("demo.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

fn bring_up(h: &Harness, path: &std::path::Path) {
    h.cli_ok(&["apply", "-f", path_str(path)]);
    h.cli_ok(&["deploy", "demo", "v1", "--wait"]);
}

fn weight(status: &Value, version: &str) -> u64 {
    status["traffic"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["version"] == version)
        .and_then(|t| t["weight"].as_u64())
        .unwrap_or(0)
}

/// Send `n` requests and return the share (percent) answered by `version`.
fn share(h: &Harness, n: u64, version: &str) -> f64 {
    let mut cfg = h.load(n);
    cfg.fresh_workers = 0;
    let (_, report) = with_load(cfg, n, || ());
    assert_no_failures(&report);
    let hits = report.by_version.get(version).copied().unwrap_or(0);
    hits as f64 * 100.0 / report.requests as f64
}

#[test]
fn canary_shifts_traffic_step_by_step_with_no_failed_request() {
    let h = Harness::new();
    let path = spec(
        &h,
        4,
        "  canary:\n    steps:\n      - set_weight: 10\n      - pause: {}\n      - set_weight: 50\n      - pause: {}\n      - set_weight: 100",
        "",
    );
    bring_up(&h, &path);
    h.cli_ok(&["deploy", "demo", "v2"]);
    for expected in [10.0, 50.0] {
        wait_until("the canary weight", Duration::from_secs(60), || {
            let s = h.status("demo");
            weight(&s, "v2") == expected as u64 && s["phase"] == "progressing"
        });
        let observed = share(&h, 2_000, "v2");
        assert!(
            (observed - expected).abs() <= 2.0,
            "v2 got {observed:.1}% of requests at weight {expected}%"
        );
        h.cli_ok(&["promote", "demo"]);
    }
    wait_until("the canary to be promoted", Duration::from_secs(60), || {
        let s = h.status("demo");
        s["phase"] == "stable" && s["stable_version"] == "v2"
    });
    assert_eq!(share(&h, 500, "v2"), 100.0);
}

#[test]
fn failing_canary_is_rolled_back_by_analysis() {
    let h = Harness::new();
    let path = spec(
        &h,
        2,
        "  canary:\n    steps:\n      - set_weight: 20\n      - pause: { duration: 60s }",
        "analysis:\n  interval: 500ms\n  window: 3s\n  min_requests: 20\n  failure_limit: 2\n  max_error_rate: 0.05",
    );
    bring_up(&h, &path);
    let (out, report) = with_load(h.load(500_000), 2_000, || {
        h.cli(&[
            "deploy",
            "demo",
            "v2",
            "--env",
            "SAMPLE_ERROR_RATE=0.2",
            "--wait",
        ])
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("error rate of v2"), "{stderr}");
    // Users saw at most the canary's share of its error rate.
    let failed_share = report.failures as f64 / report.requests as f64;
    assert!(failed_share <= 0.2 * 0.2 + 0.02, "{report:?}");
    // After the rollback nobody sees an error.
    assert_eq!(share(&h, 1_000, "v1"), 100.0);
    let history: Value = serde_json::from_str(&h.cli_ok(&["history", "demo", "--json"])).unwrap();
    assert_eq!(history[0]["result"], "rolled_back");
    assert!(history[0]["notes"].as_str().unwrap().contains("error rate"));
}
