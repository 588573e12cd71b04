//! Canary and blue-green end to end: the real binary, sample service
//! processes, the router process and steady load.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

/// Write a spec with the given strategy (and optional analysis) section.
fn spec(h: &Harness, instances: u32, strategy: &str, analysis: &str) -> std::path::PathBuf {
    h.write_spec_with("demo", instances, strategy, analysis)
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
    let report =
        deploy_expecting_failure(&h, &["SAMPLE_ERROR_RATE=0.2"], 2_000, &["error rate of v2"]);
    // Users saw at most the canary's share of its error rate.
    let failed_share = report.failures as f64 / report.requests as f64;
    assert!(failed_share <= 0.2 * 0.2 + 0.02, "{report:?}");
    // After the rollback nobody sees an error.
    assert_eq!(share(&h, 1_000, "v1"), 100.0);
    let history: Value = serde_json::from_str(&h.cli_ok(&["history", "demo", "--json"])).unwrap();
    assert_eq!(history[0]["result"], "rolled_back");
    assert!(history[0]["notes"].as_str().unwrap().contains("error rate"));
    // Each failing measurement is on record (a restarted control plane counts on
    // from there), up to the one that reached the limit.
    let checks: Vec<String> = h
        .events("demo")
        .iter()
        .filter(|e| e["kind"] == "analysis_check")
        .map(|e| e["message"].as_str().unwrap().to_string())
        .collect();
    assert!(
        checks
            .iter()
            .any(|m| m.contains("1 of 2 in a row") && m.contains("error rate of v2")),
        "{checks:?}"
    );
    assert!(
        checks.last().is_some_and(|m| m.contains("2 of 2 in a row")),
        "{checks:?}"
    );
}

/// Deploy v2 (with `env`) under steady, bounded load and expect the rollout to
/// fail: `deploy --wait` exits 1 and its message contains every part of
/// `reasons`. Returns what the load saw.
fn deploy_expecting_failure(
    h: &Harness,
    env: &[&str],
    min_requests: u64,
    reasons: &[&str],
) -> LoadReport {
    let mut args = vec!["deploy", "demo", "v2", "--wait"];
    for e in env {
        args.extend(["--env", e]);
    }
    let (out, report) = with_load(h.load(500_000), min_requests, || h.cli(&args));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for part in reasons {
        assert!(stderr.contains(part), "{part:?} missing from: {stderr}");
    }
    report
}

#[test]
fn blue_green_waits_for_approval_then_switches_and_rolls_back_instantly() {
    let h = Harness::new();
    let path = spec(&h, 2, "  blue_green:\n    scale_down_delay: 60s", "");
    bring_up(&h, &path);
    h.cli_ok(&["deploy", "demo", "v2"]);
    wait_until(
        "green to be up and waiting",
        Duration::from_secs(60),
        || h.status("demo")["phase"] == "awaiting_approval",
    );
    // Users are all on blue; the preview header reaches green.
    assert_eq!(share(&h, 500, "v1"), 100.0);
    for _ in 0..20 {
        assert_eq!(
            get_version_with(h.listen, &[("X-Baton-Preview", "1")]),
            (200, "v2".to_string())
        );
    }

    let (out, report) = with_load(h.load(300_000), 3_000, || h.cli(&["approve", "demo"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_no_failures(&report);
    wait_until("the switch", Duration::from_secs(30), || {
        weight(&h.status("demo"), "v2") == 100
    });
    assert_eq!(share(&h, 500, "v2"), 100.0);
    let approvals: Vec<Value> = h
        .events("demo")
        .into_iter()
        .filter(|e| e["kind"] == "approved")
        .collect();
    assert_eq!(approvals.len(), 1);
    assert!(approvals[0]["message"].as_str().unwrap().contains("tester"));

    // Inside the scale-down delay, rollback is an instant switch back.
    let before = h.events("demo").len();
    // The API answers a rollback only after the new routing table is live in
    // the router, so its round trip bounds the switch-back time.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let api = baton::client::ApiClient::new(&h.server_url(), Some(h.token()));
    let started = std::time::Instant::now();
    rt.block_on(api.post("/v1/apps/demo/rollback", &serde_json::json!({})))
        .expect("rollback accepted");
    let took = started.elapsed();
    eprintln!("blue-green switch back took {} ms", took.as_millis());
    assert_eq!(share(&h, 500, "v1"), 100.0);
    assert!(took < Duration::from_secs(2), "rollback took {took:?}");
    let after = h.events("demo");
    assert_no_instance_started(&after[before..], "the switch back");
}

#[test]
fn failing_smoke_test_aborts_before_any_user_reaches_v2() {
    let h = Harness::new();
    let path = spec(
        &h,
        2,
        "  blue_green:\n    auto_promote_after: 0s\n    scale_down_delay: 5s",
        "hooks:\n  smoke:\n    - http: { name: home page, path: /, expect_body: \"no such text\", count: 5 }",
    );
    bring_up(&h, &path);
    let report = deploy_expecting_failure(&h, &[], 1_000, &["smoke test failed", "home page"]);
    assert_no_failures(&report);
    assert_eq!(
        report.by_version.get("v2"),
        None,
        "a user reached v2: {:?}",
        report.by_version
    );
    let kinds: Vec<String> = h
        .events("demo")
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect();
    assert!(kinds.contains(&"checks_failed".to_string()), "{kinds:?}");
    assert!(!kinds.contains(&"weight_set".to_string()), "{kinds:?}");
}

#[test]
fn passing_smoke_tests_and_warm_up_let_blue_green_switch_by_itself() {
    let h = Harness::new();
    let path = spec(
        &h,
        2,
        "  blue_green:\n    auto_promote_after: 0s\n    scale_down_delay: 1s",
        "hooks:\n  smoke:\n    - http: { name: home page, path: /, expect_body: v2, count: 10, concurrency: 2 }\n  warmup: { path: /, requests: 20 }",
    );
    bring_up(&h, &path);
    let (out, report) = with_load(h.load(200_000), 2_000, || {
        h.cli(&["deploy", "demo", "v2", "--wait"])
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_no_failures(&report);
    let passed: Vec<Value> = h
        .events("demo")
        .into_iter()
        .filter(|e| e["kind"] == "checks_passed")
        .collect();
    assert_eq!(passed.len(), 1);
    assert!(passed[0]["message"].as_str().unwrap().contains("home page"));
}

#[test]
fn failing_preflight_scanner_changes_nothing() {
    let h = Harness::new();
    let path = spec(
        &h,
        2,
        "  canary:\n    steps:\n      - set_weight: 50",
        "preflight:\n  - name: vulnerability scan\n    command: [\"sh\", \"-c\", \"echo CVE-2026-0001 found in {version}; exit 1\"]",
    );
    h.cli_ok(&["apply", "-f", path_str(&path)]);
    let out = h.cli(&["deploy", "demo", "v1", "--wait"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("vulnerability scan") && stderr.contains("CVE-2026-0001 found in v1"),
        "{stderr}"
    );
    let s = h.status("demo");
    assert_eq!(s["phase"], "empty");
    assert!(s["instances"].as_array().unwrap().is_empty());
    assert!(h.owned_instance_pids().is_empty());
    let history: Value = serde_json::from_str(&h.cli_ok(&["history", "demo", "--json"])).unwrap();
    assert!(history.as_array().unwrap().is_empty());
}

#[test]
fn deploy_outside_the_upgrade_window_waits_and_now_proceeds() {
    let h = Harness::new();
    let windows = closed_window_yaml("UTC");
    let path = spec(
        &h,
        2,
        "  rolling:\n    max_surge: 1\n    max_unavailable: 0",
        &windows,
    );
    h.cli_ok(&["apply", "-f", path_str(&path)]);
    h.cli_ok(&["deploy", "demo", "v1", "--now", "--wait"]);
    h.cli_ok(&["deploy", "demo", "v2"]);
    let s = h.status("demo");
    assert_eq!(s["phase"], "waiting_for_window", "{s}");
    // Nothing starts while it waits.
    std::thread::sleep(Duration::from_millis(1500));
    let s = h.status("demo");
    assert!(
        s["instances"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["version"] == "v1"),
        "{s}"
    );
    h.cli_ok(&["abort", "demo"]);
    wait_until("the abort", Duration::from_secs(30), || {
        h.status("demo")["phase"] == "stable"
    });
    h.cli_ok(&["deploy", "demo", "v2", "--now", "--wait"]);
    assert_eq!(h.status("demo")["stable_version"], "v2");
}

#[test]
fn rollout_still_running_when_its_window_closes_is_paused() {
    let h = Harness::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // Open since ten minutes ago, closing at the next minute boundary (or the one
    // after, when the next is too close for the rollout to get going first).
    let minute = now / 60;
    let closes_minute = if 60 - now % 60 < 15 {
        minute + 2
    } else {
        minute + 1
    };
    let closes_at = closes_minute * 60;
    let hhmm = |m: u64| format!("{:02}:{:02}", m % 1440 / 60, m % 60);
    let windows = format!(
        "upgrade_windows:\n  timezone: UTC\n  on_end: pause\n  allowed:\n    - {{ start: \"{}\", end: \"{}\" }}",
        hhmm(minute - 10),
        hhmm(closes_minute)
    );
    let path = spec(
        &h,
        2,
        "  canary:\n    steps:\n      - set_weight: 20\n      - pause: { duration: 10m }",
        &windows,
    );
    bring_up(&h, &path);
    h.cli_ok(&["deploy", "demo", "v2"]);
    wait_until("v2 at 20%", Duration::from_secs(60), || {
        weight(&h.status("demo"), "v2") == 20
    });
    let epoch_now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    // Still going while the window is open; paused by the window once it closes.
    wait_until(
        "the pause at the window's end",
        Duration::from_secs(closes_at.saturating_sub(now) + 30),
        || {
            let s = h.status("demo");
            if epoch_now() < closes_at as f64 - 1.0 {
                assert_eq!(
                    s["phase"], "progressing",
                    "paused before the window closed: {s}"
                );
            }
            s["phase"] == "paused"
        },
    );
    assert!(epoch_now() >= closes_at as f64 - 1.0);
    let s = h.status("demo");
    assert_eq!(
        s["rollout"]["reason"], "paused by the upgrade window",
        "{s}"
    );
    // Paused means held where it was: v2 keeps its share, nothing is promoted.
    assert_eq!(weight(&s, "v2"), 20, "{s}");
    let text = h.cli_ok(&["status", "demo"]);
    assert!(text.contains("paused by the upgrade window"), "{text}");
    h.cli_ok(&["abort", "demo"]);
    wait_until("the abort", Duration::from_secs(30), || {
        h.status("demo")["phase"] == "stable"
    });
    assert_eq!(h.status("demo")["stable_version"], "v1");
}

#[test]
fn slow_canary_is_rolled_back_by_the_latency_check() {
    let h = Harness::new();
    let path = spec(
        &h,
        2,
        "  canary:\n    steps:\n      - set_weight: 50\n      - pause: { duration: 60s }",
        "analysis:\n  interval: 500ms\n  window: 3s\n  min_requests: 20\n  failure_limit: 2\n  max_p99: 100ms",
    );
    bring_up(&h, &path);
    let report = deploy_expecting_failure(
        &h,
        &["SAMPLE_LATENCY_MS=200"],
        1_000,
        &["p99 latency of v2", "limit 100 ms"],
    );
    assert_no_failures(&report);
    let history: Value = serde_json::from_str(&h.cli_ok(&["history", "demo", "--json"])).unwrap();
    assert_eq!(history[0]["result"], "rolled_back");
}

#[test]
fn shielded_bad_canary_shows_users_no_error_and_is_still_rolled_back() {
    let h = Harness::new();
    let path = spec(
        &h,
        2,
        "  canary:\n    shielding: true\n    steps:\n      - set_weight: 50\n      - pause: { duration: 60s }",
        "analysis:\n  interval: 500ms\n  window: 3s\n  min_requests: 20\n  failure_limit: 2\n  max_error_rate: 0.05",
    );
    bring_up(&h, &path);
    let report =
        deploy_expecting_failure(&h, &["SAMPLE_ERROR_RATE=0.2"], 2_000, &["error rate of v2"]);
    // Every GET the canary failed was answered by the stable version.
    assert_no_failures(&report);
}

#[test]
fn mirror_step_compares_answers_before_any_user_sees_v2() {
    let h = Harness::new();
    // The sample's answer names its version, so every mirrored answer of v2
    // differs from v1's: the mirror step must fail and roll back.
    let path = spec(
        &h,
        2,
        "  canary:\n    steps:\n      - mirror: { percent: 100, duration: 60s, max_mismatch_rate: 0.01 }\n      - set_weight: 100",
        "",
    );
    bring_up(&h, &path);
    let report = deploy_expecting_failure(&h, &[], 1_000, &["mirrored responses of v2 differ"]);
    assert_no_failures(&report);
    assert_eq!(
        report.by_version.get("v2"),
        None,
        "users saw v2: {:?}",
        report.by_version
    );
}

#[test]
fn deploy_and_plan_take_a_one_off_strategy() {
    let h = Harness::new();
    let path = spec(
        &h,
        2,
        "  rolling:\n    max_surge: 1\n    max_unavailable: 0",
        "",
    );
    bring_up(&h, &path);
    let plan: Value = serde_json::from_str(&h.cli_ok(&[
        "plan",
        "demo",
        "v2",
        "--strategy",
        "blue-green",
        "--json",
    ]))
    .unwrap();
    assert_eq!(plan["strategy"], "blue-green");
    let kinds: Vec<&str> = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"approved"), "{kinds:?}");
    assert_eq!(plan["peak_instances"], 4, "blue and green side by side");
    h.cli_ok(&["deploy", "demo", "v2", "--strategy", "blue-green"]);
    wait_until(
        "green to wait for approval",
        Duration::from_secs(60),
        || h.status("demo")["phase"] == "awaiting_approval",
    );
    h.cli_ok(&["approve", "demo"]);
    wait_until("the switch", Duration::from_secs(30), || {
        weight(&h.status("demo"), "v2") == 100
    });
    // What ran so far is what the plan said: the same starts, approval and switch.
    let executed: Vec<String> = h
        .events("demo")
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect();
    let count = |v: &[&str], k: &str| v.iter().filter(|x| **x == k).count();
    let executed: Vec<&str> = executed.iter().map(String::as_str).collect();
    let since_deploy = &executed[executed
        .iter()
        .rposition(|k| *k == "rollout_started")
        .unwrap()..];
    for kind in [
        "instance_started",
        "instance_ready",
        "approved",
        "weight_set",
    ] {
        assert_eq!(
            count(&kinds, kind),
            count(since_deploy, kind),
            "{kind}: plan {kinds:?}, executed {since_deploy:?}"
        );
    }
    // Skip the scale-down delay.
    h.cli_ok(&["promote", "demo"]);
    wait_until("the switch to finish", Duration::from_secs(60), || {
        let s = h.status("demo");
        s["phase"] == "stable" && s["stable_version"] == "v2"
    });
    // The next plan is the spec's own strategy again.
    let plan: Value = serde_json::from_str(&h.cli_ok(&["plan", "demo", "v3", "--json"])).unwrap();
    assert_eq!(plan["strategy"], "rolling");
    let out = h.cli(&["deploy", "demo", "v3", "--strategy", "sideways"]);
    assert_eq!(out.status.code(), Some(2));
}
