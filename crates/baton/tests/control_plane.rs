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
    // Reads need a token too, and the CLI (JSON, a token, no Origin) still
    // changes things.
    let read = format!(
        "GET /v1/apps HTTP/1.1\r\nHost: {host}\r\nOrigin: http://evil.example\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(raw_status(&h, &read), 401);
    h.cli_ok(&["deploy", "web", "v2", "--wait"]);
}

/// `GET path` with `token`; the whole answer.
fn raw_body(h: &Harness, path: &str, token: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(h.api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
}

/// One API call with `token` (and extra header lines); its status.
fn call(h: &Harness, method: &str, path: &str, token: Option<&str>, extra: &str) -> u16 {
    let body = if method == "GET" { "" } else { "{}" };
    call_with(h, method, path, token, extra, body)
}

fn call_with(
    h: &Harness,
    method: &str,
    path: &str,
    token: Option<&str>,
    extra: &str,
    body: &str,
) -> u16 {
    let host = h.api.to_string();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    raw_status(
        h,
        &format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{auth}{extra}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}

/// A new token made with the harness's admin token; the token.
fn token(h: &Harness, name: &str, role: &str, apps: &[&str]) -> String {
    let mut args = vec!["token", "create", name, "--role", role];
    for a in apps {
        args.extend(["--app", a]);
    }
    h.cli_ok(&args).trim().to_string()
}

#[test]
fn tokens_decide_who_may_do_what_and_name_the_operator() {
    let h = Harness::new();
    h.bring_up("web", 1, "");
    // The first start wrote the admin token for its user only.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(h.dir.join("admin.token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let viewer = token(&h, "dashboard", "viewer", &[]);
    let ci = token(&h, "ci-bot", "operator", &["web"]);
    let other = token(&h, "shop-team", "operator", &["shop"]);
    // No token, a wrong one: 401 and nothing changes.
    assert_eq!(call(&h, "GET", "/v1/apps/web", None, ""), 401);
    assert_eq!(call(&h, "POST", "/v1/apps/web/pause", None, ""), 401);
    assert_eq!(
        call(&h, "POST", "/v1/apps/web/pause", Some("baton_0000"), ""),
        401
    );
    // A viewer reads and changes nothing.
    assert_eq!(call(&h, "GET", "/v1/apps/web", Some(&viewer), ""), 200);
    assert_eq!(
        call(&h, "POST", "/v1/apps/web/pause", Some(&viewer), ""),
        403
    );
    assert_eq!(call(&h, "POST", "/v1/down", Some(&viewer), ""), 403);
    // An operator of another app may not touch this one; nor may an operator
    // apply specs or manage tokens.
    assert_eq!(
        call(&h, "POST", "/v1/apps/web/pause", Some(&other), ""),
        403
    );
    assert_eq!(call(&h, "GET", "/v1/tokens", Some(&ci), ""), 403);
    // A token limited to other apps does not see this one listed.
    let listed = h
        .command()
        .env("BATON_TOKEN", &other)
        .args(["status", "--json"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&listed.stdout).trim(), "[]");
    wait_until("web's instance metrics", Duration::from_secs(30), || {
        raw_body(&h, "/metrics", &viewer).contains("app=\"web\"")
    });
    let metrics = raw_body(&h, "/metrics", &other);
    assert!(!metrics.contains("app=\"web\""), "{metrics}");
    let s = h.status("web");
    assert_eq!(s["phase"], "stable", "{s}");

    // The operator recorded is the token's name, whatever the request says.
    let out = h
        .command()
        .env("BATON_TOKEN", &ci)
        .args(["deploy", "web", "v2", "--wait"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(h.history("web")[0]["operator"], "ci-bot");
    let spoof = call_with(
        &h,
        "POST",
        "/v1/apps/web/deploy",
        Some(&ci),
        "X-Baton-Operator: the-boss\r\n",
        r#"{"version": "v3", "operator": "the-boss"}"#,
    );
    assert_eq!(spoof, 200);
    wait_until_stable_on(&h, "web", "v3", "the deploy of v3");
    let history = h.history("web");
    assert_eq!(history[0]["operator"], "ci-bot", "{history:?}");
    // `whoami` and the CLI's errors.
    let me = h
        .command()
        .env("BATON_TOKEN", &viewer)
        .args(["whoami"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&me.stdout).trim(),
        "dashboard (role viewer, every app)"
    );
    let denied = h
        .command()
        .env("BATON_TOKEN", &viewer)
        .args(["abort", "web"])
        .output()
        .unwrap();
    assert_eq!(denied.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("dashboard (role viewer) may not abort"),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );
    // Revoked: refused at once; listed, never shown.
    h.cli_ok(&["token", "revoke", "ci-bot"]);
    assert_eq!(call(&h, "GET", "/v1/apps/web", Some(&ci), ""), 401);
    let list = h.cli_ok(&["token", "list", "--json"]);
    assert!(!list.contains(&ci) && !list.contains("hash"), "{list}");
    assert!(list.contains("\"revoked_ms\""), "{list}");
    // A taken name, a bad role: exit 2.
    let dup = h.cli(&["token", "create", "ci-bot", "--role", "viewer"]);
    assert_eq!(dup.status.code(), Some(2));
    let bad = h.cli(&["token", "create", "x", "--role", "root"]);
    assert_eq!(bad.status.code(), Some(2));
}

/// The audit log's records, as `baton audit export` prints them.
fn audit_records(h: &Harness) -> Vec<serde_json::Value> {
    let out = Command::new(BATON)
        .args(["audit", "export", "--data-dir", path_str(&h.dir)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn audit_verify(h: &Harness) -> std::process::Output {
    Command::new(BATON)
        .args(["audit", "verify", "--data-dir", path_str(&h.dir)])
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

/// Makes the audit log immutable (even for root) until the guard drops.
struct Immutable(std::path::PathBuf);

impl Immutable {
    fn new(path: std::path::PathBuf) -> Immutable {
        let ok = Command::new("chattr")
            .arg("+i")
            .arg(&path)
            .status()
            .unwrap();
        assert!(ok.success(), "chattr +i {}", path.display());
        Immutable(path)
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

#[test]
fn the_audit_log_records_every_change_and_catches_tampering() {
    let h = Harness::new();
    h.bring_up("web", 1, "");
    let viewer = token(&h, "dashboard", "viewer", &[]);
    assert_eq!(
        call(&h, "POST", "/v1/apps/web/pause", Some(&viewer), ""),
        403
    );
    assert_eq!(call(&h, "POST", "/v1/apps/web/pause", None, ""), 401);
    h.cli_ok(&["deploy", "web", "v2", "--wait"]);

    let records = audit_records(&h);
    let find = |actor: &str, action: &str, outcome: &str| {
        records
            .iter()
            .any(|r| r["actor"] == actor && r["action"] == action && r["outcome"] == outcome)
    };
    assert!(find("tester", "apply", "requested") && find("tester", "apply", "done"));
    assert!(find("tester", "deploy", "requested") && find("tester", "deploy", "done"));
    assert!(find("dashboard", "pause", "refused"), "{records:#?}");
    assert!(find("anonymous", "pause", "refused"));
    assert!(
        find("baton", "rollout_finished", "decided"),
        "baton's own decisions too"
    );
    let deploy = records.iter().find(|r| r["action"] == "deploy").unwrap();
    assert_eq!(deploy["app"], "web");
    assert!(
        deploy["source"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{deploy}"
    );
    let out = audit_verify(&h);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("intact"));

    // Fail closed: with the log read-only, every change is refused with the
    // reason, and nothing changes.
    let log = h.dir.join("audit.jsonl");
    {
        let _ro = Immutable::new(log.clone());
        let out = h.cli(&["pause", "web"]);
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("cannot write the audit record") && stderr.contains("nothing was done"),
            "{stderr}"
        );
        let out = h.cli(&["deploy", "web", "v3"]);
        assert_eq!(out.status.code(), Some(1));
        let s = h.status("web");
        assert_eq!(s["phase"], "stable", "{s}");
        assert_eq!(s["stable_version"], "v2");
    }

    // Tampering, each kind on a copy of the log: named by `audit verify`.
    let original = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = original.lines().collect();
    assert!(lines.len() > 6);
    let check = |text: String, expected: &str| {
        std::fs::write(&log, text).unwrap();
        let out = audit_verify(&h);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{stdout}");
        assert!(stdout.contains(expected), "{expected:?} not in {stdout}");
    };
    let edited = original.replacen("\"actor\":\"dashboard\"", "\"actor\":\"tester\"", 1);
    check(edited, "was edited");
    let mut deleted = lines.clone();
    deleted.remove(3);
    check(deleted.join("\n") + "\n", "record(s) deleted");
    let mut reordered = lines.clone();
    reordered.swap(2, 4);
    check(reordered.join("\n") + "\n", "reordered");
    std::fs::write(&log, &original).unwrap();
    assert!(audit_verify(&h).status.success());
}

#[test]
fn an_approval_from_another_person_and_the_record_in_every_format() {
    let h = Harness::new();
    let path = h.write_spec_with(
        "web",
        1,
        "  blue_green:\n    scale_down_delay: 0s",
        "approval:\n  by_another_person: true",
    );
    h.cli_ok(&["apply", "-f", path_str(&path)]);
    h.cli_ok(&["deploy", "web", "v1", "--wait"]);
    let ana = token(&h, "ana", "operator", &[]);
    let bo = token(&h, "bo", "operator", &[]);
    let as_who = |t: &str, args: &[&str]| {
        h.command()
            .env("BATON_TOKEN", t)
            .args(args)
            .output()
            .unwrap()
    };
    let out = as_who(&ana, &["deploy", "web", "v2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(
        "the switch to wait for approval",
        Duration::from_secs(60),
        || h.status("web")["phase"] == "awaiting_approval",
    );
    let out = as_who(&ana, &["approve", "web"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ana started this rollout of web"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(h.status("web")["phase"], "awaiting_approval");
    let out = as_who(&bo, &["approve", "web"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until_stable_on(&h, "web", "v2", "the switch");

    let history: serde_json::Value =
        serde_json::from_str(&h.cli_ok(&["history", "web", "--json"])).unwrap();
    assert_eq!(history[0]["operator"], "ana");
    assert_eq!(history[0]["approvers"], serde_json::json!(["bo"]));
    let csv = h.cli_ok(&["history", "web", "--csv"]);
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("rev,date,kind,version,from,environment,operator,approvers,result,notes")
    );
    let row = lines.next().unwrap();
    assert!(
        row.starts_with("2,") && row.contains(",v2,v1,test,ana,bo,succeeded,"),
        "{row}"
    );
    let md = h.cli_ok(&["history", "web", "--markdown"]);
    let mut lines = md.lines();
    assert_eq!(
        lines.next(),
        Some(
            "| rev | date | kind | version | from | environment | operator | approvers | result | notes |"
        )
    );
    assert_eq!(
        lines.next(),
        Some("| ---: | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    );
    assert!(
        lines.next().unwrap().contains("| ana | bo | succeeded |"),
        "{md}"
    );
    let both = h.cli(&["history", "web", "--csv", "--json"]);
    assert_eq!(both.status.code(), Some(2));
}

#[test]
fn off_loopback_the_api_serves_only_tls() {
    // Without TLS: refused before anything starts.
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("baton-tls-refused-{}", std::process::id()));
    let out = output_within(
        Command::new(BATON)
            .args(["serve", "--data-dir", path_str(&dir)])
            .args(["--api", &format!("0.0.0.0:{port}")])
            .env("NO_COLOR", "1"),
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--tls-cert and --tls-key"), "{stderr}");
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    let _ = std::fs::remove_dir_all(&dir);

    // A private CA and a certificate for 127.0.0.1 it signed, made by openssl.
    let mut h = Harness::without_server();
    let file = |n: &str| h.dir.join(n);
    let (ca, ca_key, cert, key, csr, ext) = (
        file("ca.pem"),
        file("ca.key"),
        file("cert.pem"),
        file("key.pem"),
        file("leaf.csr"),
        file("leaf.ext"),
    );
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut args = vec!["req", "-x509", "-days", "1", "-subj", "/CN=baton test CA"];
    args.extend(ec);
    args.extend(["-keyout", path_str(&ca_key), "-out", path_str(&ca)]);
    openssl(&args);
    let mut args = vec!["req", "-subj", "/CN=127.0.0.1"];
    args.extend(ec);
    args.extend(["-keyout", path_str(&key), "-out", path_str(&csr)]);
    openssl(&args);
    openssl(&[
        "x509",
        "-req",
        "-days",
        "1",
        "-in",
        path_str(&csr),
        "-CA",
        path_str(&ca),
        "-CAkey",
        path_str(&ca_key),
        "-CAcreateserial",
        "-extfile",
        path_str(&ext),
        "-out",
        path_str(&cert),
    ]);
    h.api = SocketAddr::from(([0, 0, 0, 0], free_port()));
    h.serve_args = vec![
        "--tls-cert".into(),
        path_str(&cert).into(),
        "--tls-key".into(),
        path_str(&key).into(),
    ];
    h.start_server();
    let url = format!("https://127.0.0.1:{}", h.api.port());
    let cli = |server: &str, trust: bool| {
        let mut cmd = Command::new(BATON);
        cmd.args(["whoami", "--server", server])
            .env("BATON_TOKEN", h.admin_token())
            .env("NO_COLOR", "1");
        if trust {
            cmd.env("BATON_CA_CERT", &ca);
        }
        cmd.output().unwrap()
    };
    let ok = cli(&url, true);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&ok.stdout).trim(),
        "admin (role admin, every app)"
    );
    // A certificate nobody vouches for, and plain HTTP: no answer.
    assert_eq!(cli(&url, false).status.code(), Some(3));
    let plain = cli(&format!("http://127.0.0.1:{}", h.api.port()), true);
    assert_eq!(plain.status.code(), Some(3));
}

/// Every endpoint of the real API against every role: allowed (whatever the
/// answer then) or 403, and the audit log has both the refusals and the
/// requests. The calls are made so that an allowed one changes nothing (a
/// version missing, nothing to approve, an app that does not exist).
#[test]
fn each_role_against_each_endpoint_of_the_real_api() {
    let h = Harness::new();
    h.bring_up("web", 1, "");
    let roles = [
        ("viewer", token(&h, "role-viewer", "viewer", &[])),
        ("operator", token(&h, "role-operator", "operator", &[])),
        ("admin", token(&h, "role-admin", "admin", &[])),
    ];
    let rank = |r: &str| {
        ["viewer", "operator", "admin"]
            .iter()
            .position(|x| *x == r)
            .unwrap()
    };
    // (method, path, body, least role)
    let table: &[(&str, &str, &str, &str)] = &[
        ("GET", "/v1/apps", "", "viewer"),
        ("GET", "/v1/apps/web", "", "viewer"),
        ("GET", "/v1/apps/web/plan?version=v9", "", "viewer"),
        ("GET", "/v1/apps/web/history", "", "viewer"),
        ("GET", "/v1/apps/web/events", "", "viewer"),
        ("GET", "/v1/apps/web/mirror", "", "viewer"),
        ("GET", "/v1/apps/web/mirror/record", "", "viewer"),
        ("GET", "/v1/hosts", "", "viewer"),
        ("GET", "/v1/whoami", "", "viewer"),
        ("GET", "/v1/audit", "", "viewer"),
        ("GET", "/metrics", "", "viewer"),
        ("POST", "/v1/apps/web/deploy", "{}", "operator"),
        ("POST", "/v1/apps/web/promote", "{}", "operator"),
        ("POST", "/v1/apps/web/pause", "{}", "operator"),
        ("POST", "/v1/apps/web/resume", "{}", "operator"),
        ("POST", "/v1/apps/web/approve", "{}", "operator"),
        ("POST", "/v1/apps/web/abort", "{}", "operator"),
        ("POST", "/v1/apps/web/retry", "{}", "operator"),
        (
            "POST",
            "/v1/apps/web/rollback",
            r#"{"to_revision": 99}"#,
            "operator",
        ),
        (
            "POST",
            "/v1/apps/web/mirror/record",
            r#"{"requests": 0}"#,
            "operator",
        ),
        ("DELETE", "/v1/apps/web/mirror/record", "", "operator"),
        (
            "POST",
            "/v1/apps/web/mirror/replay",
            r#"{"version": "", "requests": []}"#,
            "operator",
        ),
        (
            "POST",
            "/v1/apps",
            r#"{"file": "x.yaml", "yaml": "name: ["}"#,
            "admin",
        ),
        ("POST", "/v1/apps/nope/delete", "{}", "admin"),
        ("GET", "/v1/tokens", "", "admin"),
        (
            "POST",
            "/v1/tokens",
            r#"{"name": "", "role": "viewer"}"#,
            "admin",
        ),
        ("DELETE", "/v1/tokens/nope", "", "admin"),
    ];
    for (method, path, body, least) in table {
        for (role, t) in &roles {
            let status = call_with(&h, method, path, Some(t), "", body);
            if rank(role) >= rank(least) {
                assert!(
                    status != 401 && status != 403,
                    "{role} {method} {path}: {status}"
                );
            } else {
                assert_eq!(status, 403, "{role} {method} {path}");
            }
        }
    }
    // Stopping everything: refused below admin (and not tried as admin here).
    for (role, t) in &roles[..2] {
        assert_eq!(call(&h, "POST", "/v1/down", Some(t), ""), 403, "{role}");
    }
    let records = audit_records(&h);
    let has = |actor: &str, action: &str, outcome: &str| {
        records
            .iter()
            .any(|r| r["actor"] == actor && r["action"] == action && r["outcome"] == outcome)
    };
    assert!(has("role-viewer", "deploy", "refused"));
    assert!(has("role-operator", "deploy", "requested"));
    assert!(has("role-operator", "apply", "refused"));
    assert!(has("role-admin", "apply", "requested"));
    assert!(has("role-operator", "down", "refused"));
    assert!(
        has("role-admin", "manage_tokens", "failed"),
        "a refused creation is recorded as failed"
    );
    // Nothing changed.
    let s = h.status("web");
    assert_eq!(s["phase"], "stable", "{s}");
    assert_eq!(s["stable_version"], "v1");
}
