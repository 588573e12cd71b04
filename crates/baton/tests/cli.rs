//! CLI contract: bad input exits 2 with a message naming line and field and
//! changes nothing; plan; the demo runs end to end.

mod common;

use common::*;

fn apply_expecting_error(h: &Harness, yaml: &str, must_contain: &[&str]) {
    let path = h.dir.join("bad.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = h.cli(&["apply", "-f", path_str(&path)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "exit code; stderr: {stderr}");
    for part in must_contain {
        assert!(stderr.contains(part), "{part:?} missing from: {stderr}");
    }
}

#[test]
fn bad_specs_exit_2_with_line_and_field_and_change_nothing() {
    let h = Harness::new();
    h.bring_up("demo", 2, "    min_ready: 0s");
    let before = h.status("demo");
    let good = std::fs::read_to_string(h.dir.join("demo.yaml")).unwrap();

    // Unknown field (a typo).
    let typo = good.replace("instances: 2", "instancez: 2");
    apply_expecting_error(&h, &typo, &["bad.yaml:4", "instancez"]);
    // Bad duration.
    let duration = good.replace("interval: 200ms", "interval: 2 parsecs");
    apply_expecting_error(&h, &duration, &["bad.yaml:12", "readiness.interval"]);
    // Broken YAML.
    let broken = good.replace("instances: 2", "instances: [2");
    apply_expecting_error(&h, &broken, &["bad.yaml:"]);
    // Both surge and unavailable zero.
    let stuck = good.replace("max_surge: 1", "max_surge: 0");
    apply_expecting_error(&h, &stuck, &["max_surge"]);

    let after = h.status("demo");
    assert_eq!(
        before["generation"], after["generation"],
        "the store changed"
    );
    let apps: serde_json::Value = serde_json::from_str(&h.cli_ok(&["status", "--json"])).unwrap();
    assert_eq!(apps.as_array().unwrap().len(), 1);
    // The server also refuses a bad spec sent to the API directly: exit 2 for bad deploy input.
    let out = h.cli(&["deploy", "demo", "not a version!"]);
    assert_eq!(out.status.code(), Some(2));
    let out = h.cli(&["deploy", "nosuchapp", "v2"]);
    assert_eq!(out.status.code(), Some(2));
    let out = h.cli(&["deploy", "demo", "v2", "--env", "NOEQUALS"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(h.status("demo")["generation"], after["generation"]);
}

#[test]
fn plan_lists_the_steps_deploy_then_records() {
    let h = Harness::new();
    h.bring_up("demo", 3, "    min_ready: 0s");
    let plan: serde_json::Value =
        serde_json::from_str(&h.cli_ok(&["plan", "demo", "v2", "--json"])).unwrap();
    let planned: Vec<String> = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(plan["peak_instances"], 5);
    let text = h.cli_ok(&["plan", "demo", "v2"]);
    assert!(text.contains("rolling"), "{text}");
    let events_before: serde_json::Value =
        serde_json::from_str(&h.cli_ok(&["events", "demo", "--json"])).unwrap();
    let skip = events_before.as_array().unwrap().len();
    h.cli_ok(&["deploy", "demo", "v2", "--wait"]);
    wait_until(
        "old instances to stop",
        std::time::Duration::from_secs(30),
        || h.owned_instance_pids().len() == 3,
    );
    let events: serde_json::Value =
        serde_json::from_str(&h.cli_ok(&["events", "demo", "--json"])).unwrap();
    let executed: Vec<String> = events.as_array().unwrap()[skip..]
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect();
    // The same kinds of step happen, the same number of times each (the real
    // world may interleave independent starts and stops differently).
    let count = |v: &[String], k: &str| v.iter().filter(|x| x.as_str() == k).count();
    for kind in [
        "instance_started",
        "instance_ready",
        "instance_draining",
        "instance_stopped",
        "rollout_finished",
    ] {
        assert_eq!(
            count(&planned, kind),
            count(&executed, kind),
            "{kind}: planned {planned:?} executed {executed:?}"
        );
    }
    assert_eq!(
        executed.first().map(String::as_str),
        Some("rollout_started")
    );
}

#[test]
fn demo_runs_a_real_upgrade_with_no_failed_request() {
    let out = std::process::Command::new(BATON)
        .args(["demo"])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("failed:         0"), "{stdout}");
    assert!(stdout.contains("answered by v2"), "{stdout}");
}

#[test]
fn failed_preflight_check_changes_nothing() {
    let h = Harness::new();
    h.bring_up("demo", 2, "    min_ready: 0s");
    let history_before = h.cli_ok(&["history", "demo", "--json"]);
    // The new spec names a command that does not exist.
    let good = std::fs::read_to_string(h.dir.join("demo.yaml")).unwrap();
    let broken = good.replace(&format!("\"{BATON}\""), "\"/no/such/server\"");
    let path = h.dir.join("broken.yaml");
    std::fs::write(&path, broken).unwrap();
    h.cli_ok(&["apply", "-f", path_str(&path)]);
    let generation = h.status("demo")["generation"].clone();
    let out = h.cli(&["deploy", "demo", "v2", "--wait"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("pre-flight") && stderr.contains("/no/such/server"),
        "{stderr}"
    );
    let s = h.status("demo");
    assert_eq!(s["generation"], generation, "the state changed");
    assert_eq!(s["stable_version"], "v1");
    assert_eq!(h.cli_ok(&["history", "demo", "--json"]), history_before);
}

#[test]
fn deploy_checks_the_artifact_checksum() {
    use sha2::{Digest, Sha256};
    let h = Harness::new();
    h.bring_up("demo", 1, "    min_ready: 0s");
    let wrong = "0".repeat(64);
    let out = h.cli(&["deploy", "demo", "v2", "--sha256", &wrong, "--wait"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("checksum") && stderr.contains("expected 000000"),
        "{stderr}"
    );
    assert_eq!(h.status("demo")["stable_version"], "v1");
    let right: String = Sha256::digest(std::fs::read(BATON).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    h.cli_ok(&["deploy", "demo", "v2", "--sha256", &right, "--wait"]);
    assert_eq!(h.status("demo")["stable_version"], "v2");
}
