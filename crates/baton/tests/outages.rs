//! What a new user hits on one control plane with several apps: address
//! conflicts refused by `apply` before anything changes, a port held by another
//! program, `status` saying when the router cannot listen, `apply` showing and
//! confirming what it changes, `delete`, `lint`, and upgrade windows. Real
//! `baton serve`, real router, real sample instances, ports from the OS.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const ROLLING: &str = "  rolling:\n    max_surge: 1\n    max_unavailable: 0\n    min_ready: 0s";

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A rolling spec of the sample service named `name` on `listen`, with
/// `extra` top-level YAML (a `version:` line, windows...).
fn spec_on(h: &Harness, name: &str, listen: SocketAddr, extra: &str) -> PathBuf {
    let path = h.write_spec_with(name, 2, ROLLING, extra);
    let yaml = std::fs::read_to_string(&path).unwrap().replace(
        &format!("listen: {}", h.listen),
        &format!("listen: {listen}"),
    );
    std::fs::write(&path, yaml).unwrap();
    path
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn app_names(h: &Harness) -> Vec<String> {
    let all: Value = serde_json::from_str(&h.cli_ok(&["status", "--json"])).unwrap();
    let mut names: Vec<String> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["app"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

fn bindable(addr: SocketAddr) -> bool {
    TcpListener::bind(addr).is_ok()
}

#[test]
fn a_second_app_on_a_used_address_is_refused_and_nothing_changes() {
    let h = Harness::new();
    h.bring_up("demo", 2, "    min_ready: 0s");
    // The same `listen` as demo.
    let same = spec_on(&h, "shop", h.listen, "version: v1");
    let out = h.cli(&["apply", "-f", path_str(&same)]);
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for part in ["shop", "demo", &h.listen.to_string(), "listen"] {
        assert!(stderr.contains(part), "{part:?} missing: {stderr}");
    }
    // A blue-green preview on demo's address is the same conflict.
    let preview = spec_on(&h, "store", local(free_port()), "");
    let yaml = std::fs::read_to_string(&preview).unwrap().replace(
        ROLLING,
        &format!("  blue_green:\n    preview_listen: {}", h.listen),
    );
    std::fs::write(&preview, yaml).unwrap();
    let out = h.cli(&["apply", "-f", path_str(&preview)]);
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("preview_listen") && stderr.contains("demo"),
        "{stderr}"
    );
    // Nothing changed: not in the store, not in the router; demo still served.
    assert_eq!(app_names(&h), ["demo"]);
    assert_eq!(h.cli(&["status", "shop"]).status.code(), Some(2));
    assert_eq!(get_version(h.listen), (200, "v1".to_string()));
    let config: Value = serde_json::from_str(&h.cli_ok(&["status", "demo", "--json"])).unwrap();
    assert_eq!(config["not_listening"], Value::Null, "{config}");

    // On its own address the second app runs beside the first.
    let own = local(free_port());
    let shop = spec_on(&h, "shop", own, "version: v1");
    h.cli_ok(&["apply", "-f", path_str(&shop)]);
    wait_until("shop to serve v1", Duration::from_secs(60), || {
        TcpStream::connect(own).is_ok() && get_version(own) == (200, "v1".to_string())
    });
    assert_eq!(app_names(&h), ["demo", "shop"]);
    // And a deploy of one does not disturb the other.
    h.cli_ok(&["deploy", "demo", "v2", "--wait"]);
    assert_eq!(get_version(h.listen), (200, "v2".to_string()));
    assert_eq!(get_version(own), (200, "v1".to_string()));
}

#[test]
fn serve_refuses_two_configs_on_one_address() {
    let h = Harness::new();
    let a = spec_on(&h, "one", h.listen, "");
    let b = spec_on(&h, "two", h.listen, "");
    let dir = h.dir.join("other-data");
    let mut child = Command::new(BATON)
        .args(["serve", "--data-dir"])
        .arg(&dir)
        .args(["--api", &local(free_port()).to_string()])
        .args(["-c", path_str(&a), "-c", path_str(&b)])
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("serve started with two apps on one address");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    let stderr = stderr_of(&out);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("one") && stderr.contains("two"), "{stderr}");
    assert!(!dir.join("baton.db").exists(), "nothing was created");
}

#[test]
fn a_port_held_by_another_program_is_refused_at_apply() {
    let h = Harness::new();
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap();
    let path = spec_on(&h, "demo", addr, "version: v1");
    let out = h.cli(&["apply", "-f", path_str(&path)]);
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&addr.to_string()) && stderr.contains("cannot be listened on"),
        "{stderr}"
    );
    assert!(app_names(&h).is_empty(), "nothing registered");
    assert!(h.owned_instance_pids().is_empty(), "nothing started");
    drop(held);
}

#[test]
fn status_says_when_the_router_cannot_listen_for_an_app() {
    let mut h = Harness::new();
    h.bring_up("demo", 1, "    min_ready: 0s");
    let other = local(free_port());
    let path = spec_on(&h, "shop", other, "version: v1");
    h.cli_ok(&["apply", "-f", path_str(&path)]);
    wait_until("shop to serve", Duration::from_secs(60), || {
        get_version(other).0 == 200
    });
    // Everything stops; meanwhile another program takes demo's port.
    h.cli_ok(&["down"]);
    let api = h.api;
    wait_until("the control plane to stop", Duration::from_secs(30), || {
        TcpStream::connect(api).is_err()
    });
    h.kill9_server();
    wait_until("demo's port to be free", Duration::from_secs(30), || {
        bindable(h.listen) && bindable(other)
    });
    let held = TcpListener::bind(h.listen).unwrap();
    h.start_server();
    // shop is served again; demo is not, and status says why.
    wait_until("shop to serve again", Duration::from_secs(60), || {
        TcpStream::connect(other).is_ok() && get_version(other).0 == 200
    });
    let s = h.status("demo");
    let why = s["not_listening"].as_str().unwrap_or_default().to_string();
    assert!(why.contains(&h.listen.to_string()), "{s}");
    assert_eq!(h.status("shop")["not_listening"], Value::Null);
    let text = h.cli_ok(&["status", "demo"]);
    assert!(text.contains("not listening:"), "{text}");
    drop(held);
}

#[test]
fn apply_shows_its_changes_and_a_new_listen_takes_effect() {
    let h = Harness::new();
    let path = spec_on(&h, "demo", h.listen, "version: v1");
    let first = h.cli_ok(&["apply", "-f", path_str(&path)]);
    assert!(first.contains("new app"), "{first}");
    wait_until("v1 on the first address", Duration::from_secs(60), || {
        TcpStream::connect(h.listen).is_ok() && get_version(h.listen) == (200, "v1".to_string())
    });
    wait_until("the first rollout to end", Duration::from_secs(60), || {
        h.status("demo")["phase"] == "stable"
    });
    let moved = local(free_port());
    let path = spec_on(&h, "demo", moved, "version: v1");
    let out = h.cli_ok(&["apply", "-f", path_str(&path)]);
    assert!(
        out.contains(&format!("listen: {} → {moved}", h.listen)),
        "{out}"
    );
    wait_until("v1 on the new address", Duration::from_secs(30), || {
        TcpStream::connect(moved).is_ok() && get_version(moved) == (200, "v1".to_string())
    });
    wait_until("the old address to close", Duration::from_secs(30), || {
        TcpStream::connect(h.listen).is_err()
    });
    assert_eq!(h.status("demo")["listen"], moved.to_string());
    let again = h.cli_ok(&["apply", "-f", path_str(&path)]);
    assert!(again.contains("unchanged"), "{again}");
}

#[test]
fn a_downgrade_by_apply_needs_yes() {
    let h = Harness::new();
    let v1 = spec_on(&h, "demo", h.listen, "version: v1");
    h.cli_ok(&["apply", "-f", path_str(&v1)]);
    wait_until("v1 to be stable", Duration::from_secs(60), || {
        h.status("demo")["stable_version"] == "v1" && h.status("demo")["phase"] == "stable"
    });
    h.cli_ok(&["deploy", "demo", "v4", "--wait"]);
    wait_until(
        "the v1 instances to be gone",
        Duration::from_secs(30),
        || {
            let s = h.status("demo");
            s["instances"]
                .as_array()
                .unwrap()
                .iter()
                .all(|i| i["version"] == "v4" && i["ready"] == true)
        },
    );
    let generation = h.status("demo")["generation"].clone();
    // The example's `version: v1` applied to an app running v4.
    let out = h.cli(&["apply", "-f", path_str(&v1)]);
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("downgrade demo to v1") && stderr.contains("--yes"),
        "{stderr}"
    );
    let s = h.status("demo");
    assert_eq!(s["generation"], generation, "nothing changed: {s}");
    assert_eq!(s["stable_version"], "v4");
    assert_eq!(s["phase"], "stable");
    // A newer version needs no confirmation; an older one with --yes goes.
    let out = h.cli_ok(&["apply", "-f", path_str(&v1), "--yes"]);
    assert!(out.contains("deploying v1"), "{out}");
    wait_until("the downgrade to finish", Duration::from_secs(60), || {
        let s = h.status("demo");
        s["phase"] == "stable" && s["stable_version"] == "v1"
    });
    let v5 = spec_on(&h, "demo", h.listen, "version: v5");
    let out = h.cli_ok(&["apply", "-f", path_str(&v5)]);
    assert!(out.contains("version: v1 → v5"), "{out}");
}

#[test]
fn a_failed_preflight_on_a_first_apply_leaves_no_app_behind() {
    let h = Harness::new();
    let path = spec_on(&h, "demo", h.listen, "version: v1");
    let broken = std::fs::read_to_string(&path)
        .unwrap()
        .replace(&format!("\"{BATON}\""), "\"/no/such/server\"");
    std::fs::write(&path, broken).unwrap();
    let out = h.cli(&["apply", "-f", path_str(&path)]);
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("/no/such/server"), "{stderr}");
    assert!(app_names(&h).is_empty(), "half-registered app left");
    assert_eq!(h.cli(&["status", "demo"]).status.code(), Some(2));
    wait_until(
        "the router to let go of the address",
        Duration::from_secs(10),
        || bindable(h.listen),
    );
    // Fixed, the same file registers the app.
    let path = spec_on(&h, "demo", h.listen, "version: v1");
    h.cli_ok(&["apply", "-f", path_str(&path)]);
    assert_eq!(app_names(&h), ["demo"]);
}

#[test]
fn delete_drains_stops_and_keeps_the_history() {
    let h = Harness::new();
    h.bring_up("demo", 2, "    min_ready: 0s");
    h.cli_ok(&[
        "deploy",
        "demo",
        "v2",
        "--env",
        "SAMPLE_LATENCY_MS=1500",
        "--wait",
    ]);
    wait_until(
        "the v1 instances to be gone",
        Duration::from_secs(30),
        || h.instance_ids_running().len() == 2,
    );
    // A slow request (1.5 s) sent before the delete still gets its answer.
    let mut conn = TcpStream::connect(h.listen).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let slow = std::thread::spawn(move || {
        let mut answer = String::new();
        let _ = conn.read_to_string(&mut answer);
        answer
    });
    let out = h.cli_ok(&["delete", "demo"]);
    assert!(out.contains("deleted"), "{out}");
    let answer = slow.join().unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.to_ascii_lowercase().contains("x-version: v2"),
        "{answer}"
    );
    let left = h.instance_ids_running();
    assert!(left.is_empty(), "instances left: {left:?}");
    assert!(app_names(&h).is_empty());
    assert_eq!(h.cli(&["status", "demo"]).status.code(), Some(2));
    wait_until("the listener to close", Duration::from_secs(10), || {
        TcpStream::connect(h.listen).is_err()
    });
    let history: Value = serde_json::from_str(&h.cli_ok(&["history", "demo", "--json"])).unwrap();
    assert_eq!(history.as_array().unwrap().len(), 2, "{history}");
    assert_eq!(h.cli(&["delete", "demo"]).status.code(), Some(2));
    // Applied again, it comes back with its revisions and history.
    let path = spec_on(&h, "demo", h.listen, "version: v3");
    h.cli_ok(&["apply", "-f", path_str(&path)]);
    wait_until("v3 to serve", Duration::from_secs(60), || {
        TcpStream::connect(h.listen).is_ok() && get_version(h.listen) == (200, "v3".to_string())
    });
    let history: Value = serde_json::from_str(&h.cli_ok(&["history", "demo", "--json"])).unwrap();
    assert_eq!(history.as_array().unwrap().len(), 3, "{history}");
}

#[test]
fn lint_validates_offline_and_the_examples_fit_side_by_side() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let examples: Vec<String> = ["quickstart", "canary", "blue-green"]
        .iter()
        .map(|n| {
            root.join(format!("examples/{n}.yaml"))
                .display()
                .to_string()
        })
        .collect();
    // No server anywhere: lint never needs one.
    let lint = |files: &[&str]| {
        let mut cmd = Command::new(BATON);
        cmd.args(["--server", "http://127.0.0.1:9", "lint"]);
        for f in files {
            cmd.args(["-f", f]);
        }
        cmd.env("NO_COLOR", "1").output().unwrap()
    };
    let out = lint(&examples.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let stdout = stdout_of(&out);
    assert_eq!(stdout.matches("valid").count(), 3, "{stdout}");

    let dir = std::env::temp_dir().join(format!("baton-lint-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let quickstart = std::fs::read_to_string(&examples[0]).unwrap();
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, quickstart.replace("instances: 3", "instances: lots")).unwrap();
    let out = lint(&[path_str(&bad)]);
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("bad.yaml") && stderr.contains("instances"),
        "{stderr}"
    );
    // Two files on one address.
    let twin = dir.join("twin.yaml");
    std::fs::write(&twin, quickstart.replace("name: demo", "name: twin")).unwrap();
    let out = lint(&[&examples[0], path_str(&twin)]);
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("twin") && stderr.contains("demo"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_deploy_outside_its_window_says_when_and_now_starts_it() {
    let h = Harness::new();
    let windows = closed_window_yaml("Europe/Berlin");
    let path = spec_on(&h, "demo", h.listen, &windows);
    h.cli_ok(&["apply", "-f", path_str(&path)]);
    h.cli_ok(&["deploy", "demo", "v1", "--now", "--wait"]);
    let out = h.cli_ok(&["deploy", "demo", "v2"]);
    assert!(
        out.contains("waits for the window") && out.contains("Europe/Berlin, in "),
        "{out}"
    );
    assert_eq!(h.status("demo")["phase"], "waiting_for_window");
    // `--now` on the waiting rollout starts it.
    h.cli_ok(&["deploy", "demo", "v2", "--now", "--wait"]);
    let s = h.status("demo");
    assert_eq!(s["stable_version"], "v2", "{s}");
    let history: Value = serde_json::from_str(&h.cli_ok(&["history", "demo", "--json"])).unwrap();
    assert_eq!(
        history.as_array().unwrap().len(),
        2,
        "one record per rollout: {history}"
    );
}

/// A `baton serve -c FILE` of its own on the harness's data dir and API
/// address, killed when dropped (the harness cleans up instances and router).
struct ServeWithConfig(std::process::Child);

impl ServeWithConfig {
    fn start(h: &Harness, config: &std::path::Path) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(h.dir.join("serve-c.log"))
            .unwrap();
        let child = Command::new(BATON)
            .args(["serve", "--data-dir"])
            .arg(&h.dir)
            .args(["--api", &h.api.to_string(), "-c", path_str(config)])
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let api = h.api;
        wait_until("serve -c to answer", Duration::from_secs(60), || {
            TcpStream::connect(api).is_ok()
        });
        ServeWithConfig(child)
    }
}

impl Drop for ServeWithConfig {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_restart_with_serve_c_does_not_downgrade_what_runs() {
    let mut h = Harness::new();
    h.kill9_server();
    let path = spec_on(&h, "demo", h.listen, "version: v1");
    let stable_on = |h: &Harness, version: &str| {
        let s = h.status("demo");
        s["phase"] == "stable" && s["stable_version"] == version
    };
    let serve = ServeWithConfig::start(&h, &path);
    wait_until("v1 from the config", Duration::from_secs(60), || {
        stable_on(&h, "v1")
    });
    h.cli_ok(&["deploy", "demo", "v2", "--wait"]);
    drop(serve);
    // Restarted with the same file, which still says v1: v2 keeps running.
    let _serve = ServeWithConfig::start(&h, &path);
    wait_until("the app to be resumed", Duration::from_secs(30), || {
        h.cli(&["status", "demo", "--json"]).status.success()
    });
    let s = h.status("demo");
    assert_eq!(s["stable_version"], "v2", "{s}");
    assert_eq!(s["rollout"], Value::Null, "a rollout was started: {s}");
    let history: Value = serde_json::from_str(&h.cli_ok(&["history", "demo", "--json"])).unwrap();
    assert_eq!(history.as_array().unwrap().len(), 2, "{history}");
}

#[test]
fn an_app_the_router_has_no_route_for_is_shown_as_not_listening() {
    let mut h = Harness::new();
    h.bring_up("demo", 1, "    min_ready: 0s");
    let other = local(free_port());
    let path = spec_on(&h, "shop", other, "version: v1");
    h.cli_ok(&["apply", "-f", path_str(&path)]);
    h.cli_ok(&["down"]);
    let api = h.api;
    wait_until("the control plane to stop", Duration::from_secs(30), || {
        TcpStream::connect(api).is_err()
    });
    h.kill9_server();
    // A data dir from before `apply` refused shared addresses: shop on demo's.
    {
        let mut store = baton_store::Store::open(&h.dir.join("baton.db")).unwrap();
        let rec = store.get_app("shop").unwrap().unwrap();
        let mut spec: baton_spec::AppSpec = serde_json::from_str(&rec.spec_json).unwrap();
        spec.listen = h.listen;
        let json = serde_json::to_string(&spec).unwrap();
        store.upsert_app("shop", &json, &rec.spec_yaml, 1).unwrap();
    }
    h.start_server();
    // The router refuses any table with both; whichever app it has no route
    // for says so instead of looking healthy.
    wait_until(
        "status to say an app is not served",
        Duration::from_secs(30),
        || {
            ["demo", "shop"].iter().any(|app| {
                h.status(app)["not_listening"]
                    .as_str()
                    .is_some_and(|w| w.contains("no route"))
            })
        },
    );
    let log = std::fs::read_to_string(h.dir.join("serve.log")).unwrap();
    assert!(
        log.contains("two apps share an address"),
        "{}",
        h.serve_log_tail()
    );
}

#[test]
fn delete_during_a_rollout_stops_every_instance_and_closes_the_record() {
    let h = Harness::new();
    h.bring_up("demo", 2, "    min_ready: 0s");
    // v2 instances take a while to listen: the rollout is mid-way when deleted.
    h.cli_ok(&["deploy", "demo", "v2", "--env", "SAMPLE_STARTUP_MS=3000"]);
    wait_until("a v2 instance to exist", Duration::from_secs(10), || {
        h.status("demo")["instances"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["version"] == "v2")
    });
    h.cli_ok(&["delete", "demo"]);
    let left = h.instance_ids_running();
    assert!(left.is_empty(), "instances left: {left:?}");
    let history: Value = serde_json::from_str(&h.cli_ok(&["history", "demo", "--json"])).unwrap();
    let last = history
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["to_version"] == "v2")
        .cloned()
        .unwrap();
    assert_eq!(last["result"], "aborted", "{history}");
    assert!(
        last["notes"].as_str().unwrap().contains("deleted"),
        "{last}"
    );
}
