//! What a user of the CLI meets (issue 9): `status` says where a rollout is,
//! a blue-green rollout ends at its switch while the old set stays warm, and
//! the command line behaves (pipes, exit codes, aligned tables, clear refusals).
//! Real processes and sockets throughout.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn wait_for_phase(h: &Harness, phase: &str) {
    wait_until(phase, Duration::from_secs(60), || {
        h.status("demo")["phase"] == phase
    });
}

/// Run `baton` with `args` and no harness defaults.
fn baton(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(BATON);
    cmd.args(args)
        .env("NO_COLOR", "1")
        .env_remove("BATON_SERVER");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run baton")
}

#[test]
fn output_to_a_closed_pipe_ends_quietly() {
    let h = Harness::new();
    h.bring_up("demo", 1, "    min_ready: 0s");
    // The reader goes away before baton writes (`baton events demo | head -0`).
    let mut child = h
        .command()
        .args(["events", "demo"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run baton");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait for baton");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn an_unreachable_server_has_its_own_exit_code_and_a_bad_address_is_bad_input() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let out = baton(&["status", "--server", &url], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("cannot reach"), "{stderr}");
    // The hint starts a control plane where the CLI looks for it.
    assert!(
        stderr.contains(&format!("baton serve --api 127.0.0.1:{port}")),
        "{stderr}"
    );
    assert!(stderr.contains("refused"), "{stderr}");

    let bare = format!("127.0.0.1:{port}");
    let out = baton(&["status"], &[("BATON_SERVER", &bare)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no scheme"), "{stderr}");
    assert!(stderr.contains(&format!("http://{bare}")), "{stderr}");
    let out = baton(&["deploy", "demo", "v2", "--server", "ftp://x:1"], &[]);
    assert_eq!(out.status.code(), Some(2));
    // The exit codes are documented where users look.
    let help = String::from_utf8_lossy(&baton(&["--help"], &[]).stdout).into_owned();
    assert!(
        help.contains("3 the control plane could not be reached"),
        "{help}"
    );
}

#[test]
fn serve_on_a_taken_api_port_exits_2_and_leaves_no_router_behind() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = std::env::temp_dir().join(format!("baton-taken-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = Command::new(BATON)
        .args(["serve", "--data-dir", path_str(&dir), "--api", &addr])
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run baton serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    let routers = processes_with_cmdline_part(&dir.join("router.sock").to_string_lossy());
    for pid in &routers {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(status.is_some(), "serve kept running: {stderr}");
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&addr), "{stderr}");
    assert!(routers.is_empty(), "a router was left behind: {routers:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Where `header`'s column starts in the header line equals where `value`
/// starts in the row that holds it.
fn assert_column(text: &str, header: &str, value: &str) {
    let mut lines = text.lines();
    let head = lines.next().unwrap();
    let at = head
        .find(header)
        .unwrap_or_else(|| panic!("{header}: {text}"));
    let row = lines
        .find(|l| l.contains(value))
        .unwrap_or_else(|| panic!("{value}: {text}"));
    assert_eq!(
        row.find(value),
        Some(at),
        "{value:?} not under {header:?}:\n{text}"
    );
}

#[test]
fn history_and_plan_tables_align_with_their_headers() {
    let h = Harness::new();
    h.bring_up("demo", 3, "    min_ready: 0s");
    h.cli_ok(&["deploy", "demo", "1.4.0-rc.1-long-name", "--wait"]);
    let text = h.cli_ok(&["history", "demo"]);
    assert_column(&text, "version", "1.4.0-rc.1-long-name");
    assert_column(&text, "date", "20");
    assert_column(&text, "result", "succeeded");
    assert_column(&text, "operator", "tester");

    wait_until("old instances to stop", Duration::from_secs(30), || {
        h.owned_instance_pids().len() == 3
            && h.status("demo")["instances"].as_array().unwrap().len() == 3
    });
    let text = h.cli_ok(&["plan", "demo", "v3"]);
    let table: String = text.lines().skip(1).map(|l| format!("{l}\n")).collect();
    assert_column(&table, "event", "rollout_started");
    assert_column(&table, "what", "deploy 1.4.0");
    // The peak is the largest count of the `running` column (3 + 1 surge,
    // plus an old instance still stopping while the next new one starts).
    let plan: Value = serde_json::from_str(&h.cli_ok(&["plan", "demo", "v3", "--json"])).unwrap();
    let most = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["total_instances"].as_u64().unwrap())
        .max();
    assert_eq!(plan["peak_instances"].as_u64(), most);
    assert_eq!(most, Some(5), "{text}");
    assert!(text.contains("running"), "{text}");
}

#[test]
fn event_fields_are_objects_in_json() {
    let h = Harness::new();
    h.bring_up("demo", 1, "    min_ready: 0s");
    for e in h.events("demo") {
        assert!(e["fields"].is_object(), "{e}");
        assert!(e.get("fields_json").is_none(), "{e}");
    }
}

fn blue_green(h: &Harness) {
    let path = h.write_spec_with("demo", 2, "  blue_green:\n    scale_down_delay: 5m", "");
    h.cli_ok(&["apply", "-f", path_str(&path)]);
    h.cli_ok(&["deploy", "demo", "v1", "--wait"]);
}

/// Blue-green: `status` says where the rollout is; `resume` of a rollout that
/// is not paused and a rollback before the switch say what they do; after the
/// switch the rollout is finished (history closed, new deploys allowed) while
/// blue stays warm, and `rollback` switches back to it at once.
#[test]
fn blue_green_finishes_at_the_switch_and_rolls_back_to_the_warm_set_at_once() {
    let mut h = Harness::new();
    blue_green(&h);
    // A blue-green plan names its steps for what they do.
    let plan = h.cli_ok(&["plan", "demo", "v2"]);
    assert!(!plan.contains("canary"), "{plan}");
    assert!(
        plan.contains("run 2 instances of the new release"),
        "{plan}"
    );
    assert!(plan.contains("warm_standby"), "{plan}");

    // Before the switch: where it is, how to preview, how to move on.
    h.cli_ok(&["deploy", "demo", "v2"]);
    wait_for_phase(&h, "awaiting_approval");
    let text = h.cli_ok(&["status", "demo"]);
    assert!(
        text.contains("step 2 of 4: waiting for approval — run `baton approve demo`"),
        "{text}"
    );
    assert!(
        text.contains("preview: v2") && text.contains("X-Baton-Preview: 1"),
        "{text}"
    );
    assert!(!text.contains("canary"), "{text}");
    let s = h.status("demo");
    assert_eq!(s["step"]["waiting"]["for"], "approval", "{s}");
    let out = h.cli(&["resume", "demo"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("not paused"), "{stderr}");

    // A rollback before the switch is an abort, and says so; its record
    // names both versions.
    let out = h.cli_ok(&["rollback", "demo"]);
    assert!(
        out.contains("aborting the blue-green rollout to v2: users stay on v1"),
        "{out}"
    );
    wait_until("the abort to finish", Duration::from_secs(60), || {
        h.history("demo")[0]["result"] == "aborted"
    });
    let notes = h.history("demo")[0]["notes"].as_str().unwrap().to_string();
    assert!(notes.contains("rolled back to v1 (from v2)"), "{notes}");

    // The switch ends the rollout; blue stays ready, out of routing.
    h.cli_ok(&["deploy", "demo", "v2"]);
    wait_for_phase(&h, "awaiting_approval");
    h.cli_ok(&["approve", "demo"]);
    wait_for_phase(&h, "stable");
    let record = &h.history("demo")[0];
    assert_eq!(record["to_version"], "v2");
    assert_eq!(record["result"], "succeeded", "{record}");
    assert!(
        record["notes"].as_str().unwrap().contains("v1 kept ready"),
        "{record}"
    );
    let s = h.status("demo");
    assert_eq!(s["stable_version"], "v2");
    assert_eq!(s["warm"]["version"], "v1", "{s}");
    assert_eq!(s["warm"]["ready"], 2, "{s}");
    assert_eq!(get_version(h.listen), (200, "v2".to_string()));
    let text = h.cli_ok(&["status", "demo"]);
    assert!(text.contains("kept ready: v1"), "{text}");
    // `abort` has nothing to abort any more, and says what undoes the switch.
    let out = h.cli(&["abort", "demo"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("`baton rollback demo`"), "{stderr}");

    // The standby survives a crash of the control plane.
    h.kill9_server();
    h.start_server();
    assert_eq!(h.status("demo")["warm"]["version"], "v1");

    // Rollback inside the delay: back to the warm set, nothing started.
    let before = h.events("demo").len();
    let out = h.cli_ok(&["rollback", "demo", "--wait"]);
    assert!(
        out.contains("switching all traffic back to v1 at once"),
        "{out}"
    );
    let after = h.events("demo");
    assert_no_instance_started(&after[before..], "the switch back");
    for _ in 0..20 {
        assert_eq!(get_version(h.listen), (200, "v1".to_string()));
    }

    // A new deploy is allowed at once after a switch (blue is then drained).
    h.cli_ok(&["deploy", "demo", "v2"]);
    wait_for_phase(&h, "awaiting_approval");
    h.cli_ok(&["approve", "demo"]);
    wait_for_phase(&h, "stable");
    let s = h.status("demo");
    assert_eq!(s["warm"]["version"], "v1", "{s}");
    h.cli_ok(&["deploy", "demo", "v3"]);
    let gone = |version: &str| {
        let s = h.status("demo");
        s["warm"].is_null()
            && !s["instances"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["version"] == version)
    };
    wait_until("blue to drain", Duration::from_secs(30), || gone("v1"));

    // `promote` lets a kept release go early, and says so.
    wait_for_phase(&h, "awaiting_approval");
    h.cli_ok(&["approve", "demo"]);
    wait_for_phase(&h, "stable");
    assert_eq!(h.status("demo")["warm"]["version"], "v2");
    let out = h.cli_ok(&["promote", "demo"]);
    assert!(out.contains("v2 is no longer kept ready"), "{out}");
    wait_until("the kept release to drain", Duration::from_secs(30), || {
        gone("v2")
    });
}

/// Canary with analysis: `status` shows the step, the time left and the last
/// check; the set weight stands next to the share really answered; passing
/// checks are in the event log (once per step, not at every interval).
#[test]
fn status_shows_the_step_the_last_check_and_the_actual_share() {
    let h = Harness::new();
    let path = h.write_spec_with(
        "demo",
        2,
        "  canary:\n    steps:\n      - set_weight: 50\n      - analysis: { duration: 10m }",
        "analysis:\n  interval: 300ms\n  window: 3s\n  min_requests: 10\n  failure_limit: 2\n  max_error_rate: 0.05\n  max_p99: 2s",
    );
    h.cli_ok(&["apply", "-f", path_str(&path)]);
    h.cli_ok(&["deploy", "demo", "v1", "--wait"]);
    h.cli_ok(&["deploy", "demo", "v2"]);
    let (s, report) = with_load(h.load(200_000), 500, || {
        wait_until("a check to pass", Duration::from_secs(60), || {
            h.status("demo")["last_check"]["passed"] == true
        });
        wait_until(
            "passing checks to be recorded",
            Duration::from_secs(30),
            || {
                h.events("demo").iter().any(|e| {
                    e["kind"] == "analysis_check"
                        && e["message"]
                            .as_str()
                            .is_some_and(|m| m.contains("passed (step 2 of 2)"))
                })
            },
        );
        // A few more intervals: still one passing event for this step.
        let seen = h.status("demo")["last_check"]["at_ms"].as_i64().unwrap();
        wait_until("more checks", Duration::from_secs(30), || {
            h.status("demo")["last_check"]["at_ms"].as_i64().unwrap() > seen + 1_000
        });
        h.status("demo")
    });
    assert_no_failures(&report);
    let text = s["step"]["text"].as_str().unwrap();
    assert!(text.starts_with("step 2 of 2: analysis"), "{s}");
    assert!(text.contains(" left, last check: error rate "), "{text}");
    assert!(text.contains("≤ 5%"), "{text}");
    let v2 = s["traffic"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["version"] == "v2")
        .unwrap()
        .clone();
    assert_eq!(v2["weight"], 50);
    let actual = v2["actual"].as_f64().expect("actual share");
    assert!((20.0..=80.0).contains(&actual), "{v2}");
    let passes = h
        .events("demo")
        .iter()
        .filter(|e| {
            e["kind"] == "analysis_check"
                && e["message"].as_str().is_some_and(|m| m.contains("passed"))
        })
        .count();
    assert_eq!(passes, 1, "one passing check recorded for the step");
    let text = h.cli_ok(&["status", "demo"]);
    assert!(text.contains("(actual "), "{text}");
    h.cli_ok(&["abort", "demo"]);
}
