//! The control plane itself: one per data dir, restarts with its own command
//! line, drains only what the router has acknowledged, `down` leaves nothing
//! behind, and a one-off strategy survives a crash. Real `baton serve`,
//! router, sample-service processes and sockets.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

const ROLLING: &str = "  rolling:\n    max_surge: 1\n    max_unavailable: 0\n    min_ready: 1s";

#[test]
fn a_second_serve_on_the_same_data_dir_exits_2_naming_the_holder() {
    let h = Harness::new();
    h.bring_up("demo", 2, "");
    let other_api = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let out = output_within(
        Command::new(BATON)
            .args(["serve", "--data-dir"])
            .arg(&h.dir)
            .args(["--api", &other_api.to_string()])
            .env("NO_COLOR", "1"),
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let holder = h.server_pid().expect("the first serve runs");
    assert!(
        stderr.contains(&format!("pid {holder}")) && stderr.contains(&h.api.to_string()),
        "the error names the holder's pid and API: {stderr}"
    );
    assert!(
        std::net::TcpStream::connect(other_api).is_err(),
        "the second serve must not have bound its API"
    );
    // The first one is untouched: it answers, and the app serves as before.
    let s = h.status("demo");
    assert_eq!(s["phase"], "stable", "{s}");
    assert_eq!(get_version(h.listen), (200, "v1".to_string()));
    assert_eq!(h.instance_ids_running().len(), 2);
}

#[test]
fn kill_9_mid_rollout_then_the_same_serve_c_finishes_it_without_failures() {
    let mut h = Harness::without_server();
    let spec = h.write_spec_with("demo", 4, ROLLING, "version: v1");
    h.serve_args = vec!["-c".into(), path_str(&spec).into()];
    h.start_server();
    wait_until("v1 to be deployed from -c", Duration::from_secs(90), || {
        let s = h.status("demo");
        s["phase"] == "stable" && s["stable_version"] == "v1"
    });
    let rt = runtime();
    let load = rt.block_on(async { loadgen::start(h.load(400_000)) });
    assert!(rt.block_on(load.wait_for_requests(500, Duration::from_secs(30))));

    h.cli_ok(&["deploy", "demo", "v2"]);
    wait_until_half_way(&h, "demo");
    h.kill9_server();
    // What a supervisor does: the very same command line again.
    h.start_server();
    wait_until_stable_on(&h, "demo", "v2", "the rollout to finish after the restart");
    assert!(
        !h.server_exited(),
        "serve -c must keep running after a restart"
    );
    let (after, _) = load.progress();
    assert!(rt.block_on(load.wait_for_requests(after + 1_000, Duration::from_secs(30))));
    let report = rt.block_on(load.finish());
    assert_no_failures(&report);
    assert!(
        h.serve_log_tail().contains("spec unchanged"),
        "the restart says the spec did not change:\n{}",
        h.serve_log_tail()
    );
    // The version deployed since with `baton deploy` stands: v1 from the spec
    // was not deployed again, and the history has each rollout once.
    let history: serde_json::Value =
        serde_json::from_str(&h.cli_ok(&["history", "demo", "--json"])).unwrap();
    let rows = history.as_array().unwrap();
    let versions: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| {
            (
                r["to_version"].as_str().unwrap(),
                r["result"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(versions, [("v2", "succeeded"), ("v1", "succeeded")]);
    wait_until(
        "exactly four v2 instances to run",
        Duration::from_secs(30),
        || {
            let s = h.status("demo");
            let mut known: Vec<String> = s["instances"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|i| i["version"] == "v2")
                .map(|i| i["id"].as_str().unwrap().to_string())
                .collect();
            known.sort();
            known.len() == 4 && h.instance_ids_running() == known
        },
    );
}

#[test]
fn down_stops_every_instance_of_twenty_apps_the_router_and_the_control_plane() {
    let mut h = Harness::new();
    const APPS: usize = 20;
    for n in 0..APPS {
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let spec = h.write_spec_on(&format!("app{n:02}"), listen, 3, ROLLING, "version: v1");
        h.cli_ok(&["apply", "-f", path_str(&spec)]);
    }
    wait_until("60 instances to be up", Duration::from_secs(240), || {
        h.instance_ids_running().len() == APPS * 3
    });
    let router = h.router_pids();
    assert_eq!(router.len(), 1, "one router: {router:?}");
    h.cli_ok(&["down"]);
    wait_until(
        "every instance, the router and the control plane to stop",
        Duration::from_secs(120),
        || h.owned_instance_pids().is_empty() && h.router_pids().is_empty() && h.server_exited(),
    );
}

#[test]
fn an_unreachable_router_holds_every_drain_until_it_answers_again() {
    let h = Harness::new();
    h.bring_up("demo", 3, "    min_ready: 500ms");
    let v1_ids = h.instance_ids_running();
    assert_eq!(v1_ids.len(), 3);
    let rt = runtime();
    let load = rt.block_on(async { loadgen::start(h.load(400_000)) });
    assert!(rt.block_on(load.wait_for_requests(500, Duration::from_secs(30))));

    // The router keeps serving users, but the control plane cannot reach it.
    let socket = h.dir.join("router.sock");
    let away = h.dir.join("router.sock.away");
    std::fs::rename(&socket, &away).unwrap();
    h.cli_ok(&["deploy", "demo", "v2"]);
    wait_until(
        "status to say the router holds the rollout",
        Duration::from_secs(60),
        || {
            let s = h.status("demo");
            s["routing_held"]["router"]
                .as_str()
                .is_some_and(|r| r.ends_with("router.sock"))
                && s["instances"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|i| i["state"] == "draining")
        },
    );
    let text = h.cli_ok(&["status", "demo"]);
    assert!(text.contains("holding:"), "{text}");
    // Held: for as long as the router does not answer, every v1 process runs.
    let held_since = Instant::now();
    while held_since.elapsed() < Duration::from_secs(3) {
        let running = h.instance_ids_running();
        assert!(
            v1_ids.iter().all(|id| running.contains(id)),
            "a v1 instance was stopped while the router could still send it requests: {running:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::rename(&away, &socket).unwrap();
    wait_until(
        "the rollout to go on by itself and finish",
        Duration::from_secs(120),
        || {
            let s = h.status("demo");
            s["phase"] == "stable" && s["stable_version"] == "v2" && s["routing_held"].is_null()
        },
    );
    let (after, _) = load.progress();
    assert!(rt.block_on(load.wait_for_requests(after + 1_000, Duration::from_secs(30))));
    let report = rt.block_on(load.finish());
    assert_no_failures(&report);
}

#[test]
fn a_one_off_blue_green_stays_blue_green_after_kill_9() {
    let mut h = Harness::new();
    h.bring_up("demo", 2, "");
    h.cli_ok(&["deploy", "demo", "v2", "--strategy", "blue-green"]);
    let at_gate = |h: &Harness| {
        let s = h.status("demo");
        let ready_v2 = s["instances"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["version"] == "v2" && i["ready"] == true)
            .count();
        ready_v2 == 2 && s["strategy"] == "blue-green"
    };
    wait_until("the green set to be up", Duration::from_secs(60), || {
        at_gate(&h)
    });
    h.kill9_server();
    h.start_server();
    wait_until(
        "the restarted control plane to show the same rollout",
        Duration::from_secs(30),
        || at_gate(&h),
    );
    // Routing is still blue-green's: users on v1, the preview header on v2.
    wait_until(
        "the preview header to reach v2",
        Duration::from_secs(30),
        || get_version_with(h.listen, &[("X-Baton-Preview", "1")]).1 == "v2",
    );
    assert_eq!(get_version(h.listen).1, "v1");
    let history: serde_json::Value =
        serde_json::from_str(&h.cli_ok(&["history", "demo", "--json"])).unwrap();
    assert_eq!(history[0]["to_version"], "v2");
    assert_eq!(history[0]["strategy"], "blue-green", "{history}");
    // The gate is blue-green's approval; passing it switches everyone at once.
    h.cli_ok(&["approve", "demo"]);
    wait_until("users to be on v2", Duration::from_secs(60), || {
        get_version(h.listen).1 == "v2"
    });
}

/// A raw HTTP/1.1 request to the API; the status code of the answer.
fn raw_status(h: &Harness, request: &str) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(h.api).expect("connect to the API");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    s.write_all(request.as_bytes()).expect("send");
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_request_a_web_page_could_forge_changes_nothing() {
    let h = Harness::new();
    h.bring_up("web", 1, "");
    let host = h.api.to_string();
    // What any page the operator opens can send to 127.0.0.1 without a CORS
    // preflight: a text/plain POST with its own Origin, and a form.
    let forged = [
        format!(
            "POST /v1/down HTTP/1.1\r\nHost: {host}\r\nOrigin: http://evil.example\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        ),
        format!(
            "POST /v1/apps/web/abort HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 3\r\nConnection: close\r\n\r\na=b"
        ),
        format!(
            "POST /v1/down HTTP/1.1\r\nHost: {host}\r\nSec-Fetch-Site: cross-site\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        ),
        format!(
            "POST /v1/down HTTP/1.1\r\nHost: {host}\r\nOrigin: http://evil.example\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        ),
    ];
    for request in &forged {
        assert_eq!(raw_status(&h, request), 403, "{request}");
    }
    // Nothing changed: the control plane, the router and the app still serve.
    let s = h.status("web");
    assert_eq!(s["phase"], "stable", "{s}");
    assert_eq!(get_version(h.listen), (200, "v1".to_string()));
    // Reads stay open, and the CLI (JSON, no Origin) still changes things.
    let read = format!(
        "GET /v1/apps HTTP/1.1\r\nHost: {host}\r\nOrigin: http://evil.example\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(raw_status(&h, &read), 200);
    h.cli_ok(&["deploy", "web", "v2", "--wait"]);
}
