//! End-to-end tests of the rolling upgrade with the real binary, real sample
//! service processes, the real router process and real sockets.

mod common;

use std::time::Duration;

use common::*;

const RELAXED: &str = "    min_ready: 1s\n    progress_deadline: 60s";

#[test]
fn rolling_upgrade_under_load_fails_no_request_and_ends_on_v2() {
    let h = Harness::new();
    h.bring_up("demo", 4, RELAXED);
    let (out, report) = with_load(h.load(60_000), 20_000, || {
        h.cli(&["deploy", "demo", "v2", "--wait"])
    });
    assert!(
        out.status.success(),
        "deploy --wait failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_no_failures(&report);
    assert!(
        report.requests >= 20_000,
        "only {} requests",
        report.requests
    );
    assert!(
        report.by_version.contains_key("v1") && report.by_version.contains_key("v2"),
        "{:?}",
        report.by_version
    );

    let s = h.status("demo");
    assert_eq!(s["phase"], "stable");
    assert_eq!(s["stable_version"], "v2");
    // The last v1 instance may still be draining right after the switch.
    let s = wait_for_instances(&h, "demo", 4);
    let instances = s["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 4, "{s}");
    assert!(
        instances
            .iter()
            .all(|i| i["version"] == "v2" && i["ready"] == true)
    );
    assert_eq!(s["traffic"][0]["version"], "v2");
    assert_eq!(s["traffic"][0]["weight"], 100);
    for _ in 0..200 {
        assert_eq!(get_version(h.listen), (200, "v2".to_string()));
    }
    // Old instances are gone: exactly 4 processes remain.
    wait_until("old instances to stop", Duration::from_secs(30), || {
        h.owned_instance_pids().len() == 4
    });

    let history: serde_json::Value =
        serde_json::from_str(&h.cli_ok(&["history", "demo", "--json"])).unwrap();
    assert_eq!(history[0]["to_version"], "v2");
    assert_eq!(history[0]["from_version"], "v1");
    assert_eq!(history[0]["result"], "succeeded");
    assert_eq!(history[0]["operator"], "tester");
    assert_eq!(history[0]["environment"], "test");
}

/// Wait until the app lists exactly `n` instances (drained ones are gone).
fn wait_for_instances(h: &Harness, app: &str, n: usize) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    wait_until(
        "drained instances to be stopped",
        Duration::from_secs(30),
        || {
            last = h.status(app);
            last["instances"].as_array().map_or(0, |a| a.len()) == n
        },
    );
    last
}

fn assert_rolled_back(h: &Harness, out: &std::process::Output, reason_part: &str) {
    assert_eq!(
        out.status.code(),
        Some(1),
        "deploy --wait should exit 1:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(reason_part),
        "reason missing from: {stderr}"
    );
    let s = wait_for_instances(h, "demo", 4);
    assert_eq!(s["phase"], "stable");
    assert_eq!(s["stable_version"], "v1");
    let ready_v1 = s["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["version"] == "v1" && i["ready"] == true)
        .count();
    assert_eq!(ready_v1, 4, "v1 must keep full capacity: {s}");
    let history: serde_json::Value =
        serde_json::from_str(&h.cli_ok(&["history", "demo", "--json"])).unwrap();
    assert_eq!(history[0]["to_version"], "v2");
    assert_eq!(history[0]["result"], "rolled_back");
    let notes = history[0]["notes"].as_str().unwrap();
    assert!(notes.contains(reason_part), "history notes: {notes}");
    assert!(
        notes.contains("rolled back to v1"),
        "history notes: {notes}"
    );
}

#[test]
fn never_ready_version_is_rolled_back_at_its_deadline() {
    let h = Harness::new();
    h.bring_up("demo", 4, "    min_ready: 500ms\n    progress_deadline: 4s");
    let (out, report) = with_load(h.load(200_000), 2_000, || {
        h.cli(&[
            "deploy",
            "demo",
            "v2",
            "--env",
            "SAMPLE_NEVER_READY=1",
            "--wait",
        ])
    });
    assert_no_failures(&report);
    assert_eq!(
        report.by_version.get("v2"),
        None,
        "a never-ready v2 got traffic"
    );
    assert_rolled_back(&h, &out, "progress deadline");
}

#[test]
fn crashing_version_is_rolled_back_after_max_restarts() {
    let h = Harness::new();
    h.bring_up(
        "demo",
        4,
        "    min_ready: 3s\n    progress_deadline: 60s\n    max_restarts: 2",
    );
    let (out, report) = with_load(h.load(200_000), 2_000, || {
        h.cli(&[
            "deploy",
            "demo",
            "v2",
            "--env",
            "SAMPLE_CRASH_AFTER_MS=1200",
            "--wait",
        ])
    });
    assert_no_failures(&report);
    assert_rolled_back(&h, &out, "max_restarts");
}

#[test]
fn control_plane_killed_mid_rollout_resumes_without_failures_or_orphans() {
    let mut h = Harness::new();
    h.bring_up(
        "demo",
        4,
        "    min_ready: 1500ms\n    progress_deadline: 60s",
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let load = rt.block_on(async { loadgen::start(h.load(300_000)) });
    assert!(rt.block_on(load.wait_for_requests(500, Duration::from_secs(30))));

    h.cli_ok(&["deploy", "demo", "v2"]);
    // Kill the control plane once the rollout is visibly half-way.
    wait_until_half_way(&h, "demo");
    h.kill9_server();
    // Traffic keeps flowing with the control plane dead.
    let (before, _) = load.progress();
    assert!(rt.block_on(load.wait_for_requests(before + 1_000, Duration::from_secs(30))));
    h.start_server();
    wait_until_stable_on(&h, "demo", "v2", "the rollout to finish after the restart");
    let (after, _) = load.progress();
    assert!(rt.block_on(load.wait_for_requests(after + 1_000, Duration::from_secs(30))));
    let report = rt.block_on(load.finish());
    assert_no_failures(&report);

    let s = wait_for_instances(&h, "demo", 4);
    let ids: Vec<String> = s["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 4, "{s}");
    assert!(
        s["instances"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["version"] == "v2")
    );
    // No orphan and no duplicate: the running processes are exactly the
    // instances the control plane knows.
    wait_until(
        "exactly the known instances to run",
        Duration::from_secs(30),
        || {
            let mut known = ids.clone();
            known.sort();
            h.instance_ids_running() == known
        },
    );
}

#[test]
fn rollback_returns_to_v1_by_the_rolling_path_without_failures() {
    let h = Harness::new();
    h.bring_up("demo", 3, RELAXED);
    h.cli_ok(&["deploy", "demo", "v2", "--wait"]);
    let (out, report) = with_load(h.load(100_000), 5_000, || {
        h.cli(&["rollback", "demo", "--wait"])
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_no_failures(&report);
    let s = wait_for_instances(&h, "demo", 3);
    assert_eq!(s["stable_version"], "v1");
    assert!(
        s["instances"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["version"] == "v1")
    );
    assert_eq!(get_version(h.listen), (200, "v1".to_string()));
    let history: serde_json::Value =
        serde_json::from_str(&h.cli_ok(&["history", "demo", "--json"])).unwrap();
    assert_eq!(history[0]["kind"], "rollback");
    assert_eq!(history[0]["to_version"], "v1");
    assert_eq!(history[0]["result"], "succeeded");
    // Revision 1 was restored, not re-created.
    assert_eq!(history[0]["revision"], 1);
}
