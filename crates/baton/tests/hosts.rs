//! Fleets end to end: the real control plane upgrading the sample service on
//! three hosts reached over real SSH. Each host is a network namespace with its
//! own sshd (see `hosts/mod.rs`); baton installs itself there, runs `baton
//! node` (that host's router and instances) and drives it through sockets
//! forwarded over SSH. User traffic goes to every host's own router.
//!
//! Without root, sshd or iproute2 these tests print "skipped" (unless
//! `BATON_REQUIRE_SSH=1`, which the README's test command sets). The container
//! test also needs podman (see `podman/mod.rs`; `BATON_REQUIRE_PODMAN=1`).

mod common;
#[path = "hosts/mod.rs"]
mod hosts;
#[path = "../../baton-driver/tests/podman/mod.rs"]
mod podman;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use hosts::{Fleet, Host};
use podman::Podman;
use serde_json::Value;

/// Rollouts over SSH start processes on three hosts: generous deadlines.
const DEADLINE: Duration = Duration::from_secs(240);

/// The sample service as a process on each host.
const PROCESSES: &str = r#"driver:
  process:
    command: ["{baton}", "sample", "--host", "{host}", "--port", "{port}", "--version", "{version}"]
    stop_grace: 5s
"#;

/// The sample service as containers, each host's on that host's own engine:
/// no endpoint, so each node takes its `DIR/podman.sock` (see [`host_podmans`]).
const CONTAINERS: &str = r#"driver:
  container:
    image: localhost/baton-sample:{version}
    pull: never
    port: 8080
    command: ["--version", "{version}"]
    stop_grace: 5s
"#;

/// The directory of host `host`'s node.
fn node_dir(fleet: &Fleet, host: &Host) -> PathBuf {
    fleet.dir().join(format!("node-{}", host.name))
}

/// A spec for the sample service on every host of `fleet`, `per_host`
/// instances on each, behind a router on each host listening on `port`.
fn fleet_spec(h: &Harness, fleet: &Fleet, name: &str, port: u16, strategy: &str) -> String {
    fleet_spec_with(h, fleet, name, port, strategy, PROCESSES)
}

/// [`fleet_spec`] with another `driver:` section.
fn fleet_spec_with(
    h: &Harness,
    fleet: &Fleet,
    name: &str,
    port: u16,
    strategy: &str,
    driver: &str,
) -> String {
    let mut list = String::new();
    for host in fleet.hosts() {
        list.push_str(&format!(
            "    - name: {}\n      address: {}\n      dir: {}\n",
            host.name,
            host.address,
            node_dir(fleet, host).display()
        ));
    }
    let yaml = format!(
        r#"name: {name}
environment: test
listen: 0.0.0.0:{port}
instances: 2
drain_timeout: 5s
{driver}readiness:
  path: /healthz
  interval: 200ms
  timeout: 1s
  success_threshold: 1
  failure_threshold: 2
strategy:
{strategy}
hosts:
  spread: per_host
  router: per_host
  max_unavailable: 1
  ssh:
    user: root
    identity_file: {key}
    known_hosts: {known}
    connect_timeout: 5s
  list:
{list}"#,
        key = fleet.client_key().display(),
        known = fleet.known_hosts_file().display(),
    );
    let path = h.dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).expect("write spec");
    path.display().to_string()
}

const ROLLING: &str = "  rolling:\n    max_surge: 1\n    max_unavailable: 0";

/// Every host router's address for the app.
fn routers(fleet: &Fleet, port: u16) -> Vec<SocketAddr> {
    fleet
        .hosts()
        .iter()
        .map(|h| SocketAddr::new(h.address, port))
        .collect()
}

/// Load on every host's router at once (keep-alive and new connections).
fn with_loads<T>(targets: &[SocketAddr], during: impl FnOnce() -> T) -> (T, Vec<LoadReport>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let loads: Vec<_> = targets
        .iter()
        .map(|t| {
            let mut cfg = LoadConfig::new(*t);
            cfg.keepalive_workers = 2;
            cfg.fresh_workers = 1;
            cfg.max_requests = 200_000;
            cfg.max_duration = Duration::from_secs(300);
            cfg.pace = Duration::from_millis(2);
            rt.block_on(async { loadgen::start(cfg) })
        })
        .collect();
    for l in &loads {
        assert!(
            rt.block_on(l.wait_for_requests(50, Duration::from_secs(30))),
            "load did not get going"
        );
    }
    let out = during();
    let reports = loads.into_iter().map(|l| rt.block_on(l.finish())).collect();
    (out, reports)
}

fn stable_on(h: &Harness, app: &str, version: &str) -> bool {
    let s = h.status(app);
    s["phase"] == "stable" && s["stable_version"] == version
}

/// `deploy web v2 --wait` under load on every router in `targets`: no request
/// fails, and every answer is v2 afterwards.
fn deploy_v2_under_load(h: &Harness, targets: &[SocketAddr]) {
    let (_, reports) = with_loads(targets, || {
        h.cli_ok(&["deploy", "web", "v2", "--wait"]);
    });
    for r in &reports {
        assert_no_failures(r);
    }
    assert!(stable_on(h, "web", "v2"));
    for addr in targets {
        for _ in 0..10 {
            assert_eq!(get_version(*addr), (200, "v2".to_string()), "{addr}");
        }
    }
}

/// The hosts as `baton hosts --json` shows them.
fn host_states(h: &Harness) -> Vec<Value> {
    let out = h.cli_ok(&["hosts", "--json"]);
    serde_json::from_str::<Value>(&out)
        .expect("hosts json")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// `n` test hosts and a control plane running the sample service v1 on them
/// (app `web`, two instances per host, `strategy`); `None`: skipped.
fn up(n: usize, strategy: &str) -> Option<(Fleet, Harness, u16)> {
    let fleet = Fleet::create(n)?;
    let h = Harness::new();
    let port = free_port();
    let spec = fleet_spec(&h, &fleet, "web", port, strategy);
    bring_up(&h, &fleet, &spec, port);
    Some((fleet, h, port))
}

/// Apply the fleet spec, deploy v1 and wait until every host's router serves it.
fn bring_up(h: &Harness, fleet: &Fleet, spec: &str, port: u16) {
    h.cli_ok(&["apply", "-f", spec]);
    h.cli_ok(&["deploy", "web", "v1"]);
    wait_until("v1 stable on every host", DEADLINE, || {
        stable_on(h, "web", "v1")
    });
    for addr in routers(fleet, port) {
        wait_until("the host's router to serve v1", DEADLINE, || {
            get_version(addr) == (200, "v1".to_string())
        });
    }
}

/// Wait until an event of `web` says `needle`.
fn wait_for_event(h: &Harness, what: &str, needle: &str) {
    wait_until(what, DEADLINE, || {
        h.events("web")
            .iter()
            .any(|e| e["message"].as_str().is_some_and(|m| m.contains(needle)))
    });
}

fn instances_by_host(h: &Harness, app: &str) -> Vec<(String, String)> {
    let s = h.status(app);
    s["instances"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|i| {
            (
                i["runs"].as_str().unwrap_or("").to_string(),
                i["version"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// `baton down`, then nothing of baton is left on any host of `fleet`.
fn shutdown(h: &mut Harness, fleet: &Fleet) {
    let _ = h.cli(&["down"]);
    wait_until("the control plane to exit", Duration::from_secs(60), || {
        h.server_exited()
    });
    for (i, host) in fleet.hosts().iter().enumerate() {
        let dir = node_dir(fleet, host);
        wait_until(
            "nothing of baton left on the host",
            Duration::from_secs(30),
            || {
                processes_on(fleet, i).is_empty()
                    && processes_with_cmdline_part(&dir.to_string_lossy()).is_empty()
            },
        );
    }
}

#[test]
fn rolling_upgrade_goes_host_by_host_under_load_on_every_router() {
    let Some((fleet, mut h, port)) = up(3, ROLLING) else {
        return;
    };
    let hosts = host_states(&h);
    assert_eq!(hosts.len(), 3, "{hosts:?}");
    for host in &hosts {
        assert_eq!(host["reachable"], true, "{host}");
        assert!(host["node"]["pid"].as_u64().is_some(), "{host}");
    }
    let targets = routers(&fleet, port);
    deploy_v2_under_load(&h, &targets);
    // Node by node: every v2 instance of a host started only once the host
    // before it had all its v2 instances (events in order).
    let starts: Vec<String> = h
        .events("web")
        .iter()
        .filter(|e| e["kind"] == "instance_starting")
        .filter_map(|e| e["message"].as_str().map(str::to_owned))
        .filter(|m| m.contains("(v2)"))
        .collect();
    let host_order: Vec<&str> = starts
        .iter()
        .filter_map(|m| m.rsplit(" on ").next())
        .collect();
    assert_eq!(
        host_order,
        ["h0", "h0", "h1", "h1", "h2", "h2"],
        "v2 starts: {starts:?}"
    );
    let by_host = instances_by_host(&h, "web");
    assert_eq!(by_host.len(), 6, "{by_host:?}");
    for host in host_states(&h) {
        let on = host["instances"]["web"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(on.len(), 2, "{host}");
        assert!(
            on.iter()
                .all(|i| i.as_str().is_some_and(|i| i.ends_with("(v2)"))),
            "{host}"
        );
    }
    for host in ["h0", "h1", "h2"] {
        let on = by_host
            .iter()
            .filter(|(runs, v)| runs.ends_with(&format!("on {host}")) && v == "v2")
            .count();
        assert_eq!(on, 2, "{host}: {by_host:?}");
    }
    shutdown(&mut h, &fleet);
}

#[test]
fn a_host_whose_ssh_is_cut_pauses_the_rollout_which_finishes_once_it_is_back() {
    let Some((fleet, mut h, port)) = up(3, ROLLING) else {
        return;
    };
    let targets = routers(&fleet, port);
    let (_, reports) = with_loads(&targets, || {
        // Slow starts keep the rollout on h0 long enough to cut h1's SSH.
        h.cli_ok(&["deploy", "web", "v2", "--env", "SAMPLE_STARTUP_MS=1500"]);
        wait_for_event(&h, "the rollout to start on h0", "(v2) starting on h0");
        fleet.cut_ssh(1);
        wait_until("the rollout to pause naming h1", DEADLINE, || {
            let s = h.status("web");
            s.to_string().contains("host h1 is unreachable since")
        });
        let hosts = host_states(&h);
        assert_eq!(hosts[1]["reachable"], false, "{hosts:?}");
        // Paused: the other hosts keep serving, nothing moves on h2.
        let before = instances_by_host(&h, "web");
        assert!(
            !before
                .iter()
                .any(|(runs, v)| runs.ends_with("on h2") && v == "v2"),
            "{before:?}"
        );
        fleet.restore_ssh(1);
        wait_until("the rollout to finish by itself", DEADLINE, || {
            stable_on(&h, "web", "v2")
        });
    });
    for r in &reports {
        assert_no_failures(r);
    }
    let events = h.events("web");
    let messages: Vec<&str> = events
        .iter()
        .filter_map(|e| e["message"].as_str())
        .collect();
    assert!(
        messages
            .iter()
            .any(|m| m.contains("every host answers again")),
        "{messages:#?}"
    );
    for addr in &targets {
        assert_eq!(get_version(*addr), (200, "v2".to_string()), "{addr}");
    }
    shutdown(&mut h, &fleet);
}

#[test]
fn a_host_with_an_unknown_key_is_refused_with_its_fingerprint_and_nothing_changes() {
    let Some(fleet) = Fleet::create(2) else {
        return;
    };
    let h = Harness::new();
    let port = free_port();
    let spec = fleet_spec(&h, &fleet, "web", port, ROLLING);
    // known_hosts without host h1's key.
    let known = fleet.known_hosts_file();
    let text = std::fs::read_to_string(&known).expect("known_hosts");
    let h1 = &fleet.hosts()[1];
    let without: String = text
        .lines()
        .filter(|l| !l.starts_with(&h1.address.to_string()))
        .map(|l| format!("{l}\n"))
        .collect();
    let partial = h.dir.join("known_hosts");
    std::fs::write(&partial, without).expect("write known_hosts");
    let yaml = std::fs::read_to_string(&spec)
        .expect("spec")
        .replace(&known.display().to_string(), &partial.display().to_string());
    std::fs::write(&spec, yaml).expect("rewrite spec");

    let out = h.cli(&["apply", "-f", &spec]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&h1.host_key_fingerprint), "{stderr}");
    assert!(stderr.contains("h1"), "{stderr}");
    // Nothing changed: no app, no host link, nothing installed on any host.
    let apps = h.cli_ok(&["status", "--json"]);
    assert!(!apps.contains("\"web\""), "{apps}");
    assert!(host_states(&h).is_empty());
    for host in fleet.hosts() {
        assert!(!Path::new(&fleet.dir().join(format!("node-{}", host.name))).exists());
    }

    // Trusted explicitly by its fingerprint, the same apply goes through.
    let trusted = h.cli(&[
        "hosts",
        "trust",
        "-f",
        &spec,
        "h1",
        "--fingerprint",
        &h1.host_key_fingerprint,
    ]);
    assert!(trusted.status.success(), "{trusted:?}");
    h.cli_ok(&["apply", "-f", &spec]);
}

/// The instance processes running on host `i` of `fleet` (marked with its
/// node's directory), with the version each runs.
fn processes_on(fleet: &Fleet, i: usize) -> Vec<(u32, String)> {
    let dir = fleet
        .dir()
        .join(format!("node-{}", fleet.hosts()[i].name))
        .canonicalize()
        .expect("node dir");
    processes_with_env("BATON_OWNER", &dir.to_string_lossy())
        .into_iter()
        .map(|pid| (pid, env_of(pid, "BATON_VERSION").unwrap_or_default()))
        .collect()
}

#[test]
fn a_control_plane_killed_mid_rollout_finds_its_nodes_serving_and_finishes_cleanly() {
    let Some((fleet, mut h, port)) = up(3, ROLLING) else {
        return;
    };
    let targets = routers(&fleet, port);
    let (_, reports) = with_loads(&targets, || {
        h.cli_ok(&["deploy", "web", "v2", "--env", "SAMPLE_STARTUP_MS=1000"]);
        wait_for_event(&h, "the rollout to reach h1", "(v2) starting on h1");
        h.kill9_server();
        // The hosts go on serving without it (the loads keep running).
        for addr in &targets {
            assert_eq!(get_version(*addr).0, 200, "{addr}");
        }
        h.start_server();
        wait_until("the rollout to finish after the restart", DEADLINE, || {
            stable_on(&h, "web", "v2")
        });
    });
    for r in &reports {
        assert_no_failures(r);
    }
    // No orphan, no duplicate: two instances per host, all v2, and exactly the
    // ones the control plane knows.
    for i in 0..3 {
        wait_until("the old instances to be gone", DEADLINE, || {
            processes_on(&fleet, i).len() == 2
        });
        let on = processes_on(&fleet, i);
        assert!(on.iter().all(|(_, v)| v == "v2"), "host {i}: {on:?}");
    }
    let known = instances_by_host(&h, "web");
    assert_eq!(known.len(), 6, "{known:?}");
    let hosts = host_states(&h);
    assert!(hosts.iter().all(|s| s["reachable"] == true), "{hosts:?}");
    shutdown(&mut h, &fleet);
}

#[test]
fn a_blue_green_switch_across_hosts_is_two_phase_and_its_skew_is_shown_and_rollback_is_as_fast() {
    let strategy = "  blue_green:\n    scale_down_delay: 5m\n    min_ready: 200ms";
    let Some((fleet, mut h, port)) = up(3, strategy) else {
        return;
    };
    let targets = routers(&fleet, port);
    let (switch, reports) = with_loads(&targets, || {
        h.cli_ok(&["deploy", "web", "v2"]);
        wait_until("green ready and waiting for approval", DEADLINE, || {
            h.status("web")["step"]
                .to_string()
                .contains("waiting for approval")
        });
        // Before the switch every host still serves blue.
        for addr in &targets {
            assert_eq!(get_version(*addr), (200, "v1".to_string()), "{addr}");
        }
        h.cli_ok(&["approve", "web"]);
        wait_until("the switch", DEADLINE, || stable_on(&h, "web", "v2"));
        wait_until("the switch record", DEADLINE, || {
            !h.status("web")["hosts_switch"].is_null()
        });
        let switch = h.status("web")["hosts_switch"].clone();
        for addr in &targets {
            assert_eq!(get_version(*addr), (200, "v2".to_string()), "{addr}");
        }
        // Rollback to the warm blue: the same two-phase switch back.
        let before = switch["at_ms"].as_i64().unwrap_or(0);
        h.cli_ok(&["rollback", "web"]);
        wait_until("the switch back", DEADLINE, || {
            h.status("web")["hosts_switch"]["at_ms"]
                .as_i64()
                .unwrap_or(0)
                > before
        });
        for addr in &targets {
            wait_until("blue again on every host", DEADLINE, || {
                get_version(*addr) == (200, "v1".to_string())
            });
        }
        (switch, h.status("web")["hosts_switch"].clone())
    });
    for r in &reports {
        assert_no_failures(r);
    }
    let (forward, back) = switch;
    for sw in [&forward, &back] {
        assert!(sw["fallback"].is_null(), "{sw}");
        assert_eq!(sw["hosts"].as_array().map(Vec::len), Some(3), "{sw}");
        assert!(sw["skew_us"].as_u64().is_some(), "{sw}");
    }
    eprintln!(
        "switch skew across 3 hosts: {} µs; back: {} µs",
        forward["skew_us"], back["skew_us"]
    );
    let shown = h.cli_ok(&["status", "web"]);
    assert!(shown.contains("last switch: 3 hosts within"), "{shown}");
    shutdown(&mut h, &fleet);
}

#[test]
fn a_central_router_sends_users_to_the_instances_of_every_host() {
    let Some(fleet) = Fleet::create(2) else {
        return;
    };
    let mut h = Harness::new();
    let port = free_port();
    let spec = fleet_spec(&h, &fleet, "web", port, ROLLING);
    let yaml = std::fs::read_to_string(&spec)
        .expect("spec")
        .replace("router: per_host", "router: central")
        .replace("listen: 0.0.0.0:", "listen: 127.0.0.1:");
    std::fs::write(&spec, yaml).expect("rewrite spec");
    h.cli_ok(&["apply", "-f", &spec]);
    h.cli_ok(&["deploy", "web", "v1", "--wait"]);
    let local = SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(get_version(local), (200, "v1".to_string()));
    let (_, reports) = with_loads(&[local], || {
        h.cli_ok(&["deploy", "web", "v2", "--wait"]);
    });
    for r in &reports {
        assert_no_failures(r);
    }
    assert_eq!(get_version(local), (200, "v2".to_string()));
    // The instances run on the hosts, not here.
    let by_host = instances_by_host(&h, "web");
    assert_eq!(by_host.len(), 4, "{by_host:?}");
    assert!(
        by_host.iter().all(|(runs, _)| runs.contains(" on h")),
        "{by_host:?}"
    );
    assert!(h.owned_instance_pids().is_empty());
    shutdown(&mut h, &fleet);
}

/// Hex SHA-256 of a file, by `sha256sum`.
fn sha256(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

#[test]
fn a_new_baton_replaces_every_node_and_router_while_instances_keep_serving() {
    let Some(fleet) = Fleet::create(2) else {
        return;
    };
    let mut h = Harness::without_server();
    // Two "releases" of baton: the same program, different bytes.
    let old = h.dir.join("baton-old");
    std::fs::copy(BATON, &old).expect("copy baton");
    let new = h.dir.join("baton-new");
    std::fs::copy(BATON, &new).expect("copy baton");
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&new)
            .expect("open");
        f.write_all(b"baton-next").expect("append");
    }
    h.exe = old.clone();
    h.start_server();
    let port = free_port();
    let spec = fleet_spec(&h, &fleet, "web", port, ROLLING);
    bring_up(&h, &fleet, &spec, port);
    let node_of = |h: &Harness| -> Vec<(u64, String)> {
        host_states(h)
            .iter()
            .map(|s| {
                (
                    s["node"]["pid"].as_u64().unwrap_or(0),
                    s["node"]["binary_sha256"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                )
            })
            .collect()
    };
    let before = node_of(&h);
    assert!(
        before.iter().all(|(_, sha)| *sha == sha256(&old)),
        "{before:?}"
    );
    let routers_of = |i: usize| {
        let dir = fleet.dir().join(format!("node-h{i}")).join("router.sock");
        processes_with_cmdline_part(&dir.to_string_lossy())
    };
    let routers_before: Vec<Vec<u32>> = (0..2).map(routers_of).collect();
    let instances_before: Vec<Vec<(u32, String)>> =
        (0..2).map(|i| processes_on(&fleet, i)).collect();
    let targets = routers(&fleet, port);
    let (_, reports) = with_loads(&targets, || {
        // The upgrade of baton itself: the control plane restarted on the new
        // binary installs it on every host and replaces each node.
        h.kill9_server();
        h.exe = new.clone();
        h.start_server();
        let want = sha256(&new);
        wait_until("every node to run the new baton", DEADLINE, || {
            let nodes = node_of(&h);
            nodes.len() == 2 && nodes.iter().all(|(_, sha)| *sha == want)
        });
        for addr in &targets {
            assert_eq!(get_version(*addr), (200, "v1".to_string()), "{addr}");
        }
    });
    for r in &reports {
        assert_no_failures(r);
    }
    let after = node_of(&h);
    for (b, a) in before.iter().zip(&after) {
        assert_ne!(b.0, a.0, "the node was replaced: {before:?} -> {after:?}");
    }
    // Each router handed its listening sockets to a router of the new build (a new
    // process, under load, with no failed request above); the instances were left
    // alone.
    let routers_after: Vec<Vec<u32>> = (0..2).map(routers_of).collect();
    for (b, a) in routers_before.iter().zip(&routers_after) {
        assert_eq!(
            a.len(),
            1,
            "one router per host after the upgrade: {routers_after:?}"
        );
        assert!(
            b.iter().all(|pid| !a.contains(pid)),
            "the router was replaced by one of the new build: {routers_before:?} -> {routers_after:?}"
        );
    }
    let instances_after: Vec<Vec<(u32, String)>> =
        (0..2).map(|i| processes_on(&fleet, i)).collect();
    assert_eq!(instances_before, instances_after);
    // And the next rollout runs on the new nodes.
    h.cli_ok(&["deploy", "web", "v2", "--wait"]);
    shutdown(&mut h, &fleet);
}

/// A private Podman in each host's network namespace (its service started
/// with `nsenter --net`, so its containers' bridge and published ports are the
/// host's), with its socket linked as that host's node's `DIR/podman.sock`;
/// `None` (skipped) without podman. All hosts share one filesystem: each
/// Podman has its store and socket in a directory of its own.
///
/// Drop these before the fleet (declare them after it): each removes its
/// containers through its service, which the fleet would otherwise kill first.
fn host_podmans(fleet: &Fleet) -> Option<Vec<Podman>> {
    let mut all = Vec::new();
    for host in fleet.hosts() {
        let net = format!("--net=/run/netns/{}", host.netns);
        let pm = Podman::start_through(&["nsenter", &net])?;
        let dir = node_dir(fleet, host);
        std::fs::create_dir_all(&dir).expect("create node dir");
        std::os::unix::fs::symlink(pm.dir.join("podman.sock"), dir.join("podman.sock"))
            .expect("link the host's podman socket");
        all.push(pm);
    }
    Some(all)
}

/// (instance, version) of the app's running containers on `pm`, sorted.
fn containers_on(pm: &Podman, app: &str) -> Vec<(String, String)> {
    let out = pm.run(&[
        "ps",
        "--filter",
        &format!("label=baton.app={app}"),
        "--format",
        "{{ index .Labels \"baton.instance\" }} {{ index .Labels \"baton.version\" }}",
    ]);
    let mut found: Vec<(String, String)> = out
        .lines()
        .filter_map(|l| l.trim().split_once(' '))
        .map(|(i, v)| (i.to_owned(), v.to_owned()))
        .collect();
    found.sort();
    found
}

/// What `pm` says `tag`'s digest is (what baton pins and reports).
fn digest_on(pm: &Podman, tag: &str) -> String {
    pm.run(&["image", "inspect", "--format", "{{.Digest}}", tag])
}

#[test]
fn containers_roll_host_by_host_on_each_host_s_engine_and_a_host_with_another_image_is_refused() {
    let Some(fleet) = Fleet::create(2) else {
        return;
    };
    let mut h = Harness::new();
    let Some(pms) = host_podmans(&fleet) else {
        return;
    };
    // Built once from the local sample binary, copied to the other host: one
    // image id on both (Podman gives the copy another repo digest).
    let mut ids = Vec::new();
    for v in ["v1", "v2"] {
        let tag = format!("localhost/baton-sample:{v}");
        ids.push(pms[0].sample_image(&tag, &[&format!("ENV SAMPLE_VERSION={v}")]));
        pms[0].copy_image(&tag, &pms[1]);
    }
    let port = free_port();
    let spec = fleet_spec_with(&h, &fleet, "web", port, ROLLING, CONTAINERS);
    h.cli_ok(&["apply", "-f", &spec]);
    // A deploy resolves its image on every host, which must answer by then.
    wait_until("every host to answer", DEADLINE, || {
        let hosts = host_states(&h);
        hosts.len() == 2 && hosts.iter().all(|s| s["reachable"] == true)
    });
    h.cli_ok(&["deploy", "web", "v1", "--wait"]);
    let targets = routers(&fleet, port);
    for addr in &targets {
        wait_until("the host's router to serve v1", DEADLINE, || {
            get_version(*addr) == (200, "v1".to_string())
        });
    }
    for pm in &pms {
        let on = containers_on(pm, "web");
        assert_eq!(on.len(), 2, "{on:?}");
    }

    deploy_v2_under_load(&h, &targets);
    // Each host's engine runs exactly that host's two v2 instances.
    let by_host = instances_by_host(&h, "web");
    for (pm, host) in pms.iter().zip(["h0", "h1"]) {
        wait_until("the old containers to be gone", DEADLINE, || {
            containers_on(pm, "web").len() == 2
        });
        let on = containers_on(pm, "web");
        assert!(on.iter().all(|(_, v)| v == "v2"), "{host}: {on:?}");
        let known = by_host
            .iter()
            .filter(|(runs, v)| runs.ends_with(&format!("on {host}")) && v == "v2")
            .count();
        assert_eq!(known, 2, "{host}: {by_host:?}");
    }
    let host_order: Vec<String> = h
        .events("web")
        .iter()
        .filter(|e| e["kind"] == "instance_starting")
        .filter_map(|e| e["message"].as_str())
        .filter(|m| m.contains("(v2)"))
        .filter_map(|m| m.rsplit(" on ").next().map(str::to_owned))
        .collect();
    assert_eq!(host_order, ["h0", "h0", "h1", "h1"]);

    // v3 built on each host by itself: two images under one reference.
    pms[0].sample_image("localhost/baton-sample:v3", &["ENV SAMPLE_VERSION=v3"]);
    pms[1].sample_image(
        "localhost/baton-sample:v3",
        &["ENV SAMPLE_VERSION=v3", "ENV BUILT=elsewhere"],
    );
    let (d0, d1) = (
        digest_on(&pms[0], "localhost/baton-sample:v3"),
        digest_on(&pms[1], "localhost/baton-sample:v3"),
    );
    assert_ne!(d0, d1);
    // v4 only on h0, and `pull: never`.
    pms[0].sample_image("localhost/baton-sample:v4", &["ENV SAMPLE_VERSION=v4"]);
    let history = h.history("web").len();
    let running: Vec<_> = pms.iter().map(|pm| containers_on(pm, "web")).collect();
    let out = h.cli(&["deploy", "web", "v3"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("deploy v3: {stderr}");
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for needle in [
        "host h1",
        "localhost/baton-sample:v3",
        &format!("{d1} there"),
        &format!("{d0} on h0"),
    ] {
        assert!(stderr.contains(needle), "{needle}: {stderr}");
    }
    let out = h.cli(&["deploy", "web", "v4"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("deploy v4: {stderr}");
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for needle in ["host h1", "localhost/baton-sample:v4", "does not exist"] {
        assert!(stderr.contains(needle), "{needle}: {stderr}");
    }
    // Nothing changed.
    assert!(stable_on(&h, "web", "v2"));
    assert_eq!(h.history("web").len(), history);
    let after: Vec<_> = pms.iter().map(|pm| containers_on(pm, "web")).collect();
    assert_eq!(after, running);
    for addr in &targets {
        assert_eq!(get_version(*addr), (200, "v2".to_string()), "{addr}");
    }
    // A rollback runs v1's pinned image on every host: its id, the digest the
    // copies share.
    h.cli_ok(&["rollback", "web", "--wait"]);
    assert!(stable_on(&h, "web", "v1"));
    for addr in &targets {
        assert_eq!(get_version(*addr), (200, "v1".to_string()), "{addr}");
    }
    wait_until("the v2 instances to be gone", DEADLINE, || {
        instances_by_host(&h, "web").len() == 4
    });
    let s = h.status("web");
    let digests: Vec<&str> = s["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["image_digest"].as_str())
        .collect();
    assert_eq!(digests, [ids[0].as_str(); 4], "{s}");

    shutdown(&mut h, &fleet);
    for pm in &pms {
        assert!(containers_on(pm, "web").is_empty());
    }
}

/// Median and range of `values`.
fn summary(values: &mut [f64]) -> String {
    values.sort_by(f64::total_cmp);
    match values {
        [] => "-".into(),
        v => format!("{:.2} ({:.2}–{:.2})", v[v.len() / 2], v[0], v[v.len() - 1]),
    }
}

/// `bench/hosts.sh`: the skew of a blue-green switch across N hosts (first to
/// last host to switch), and the wall time of a node-by-node rolling upgrade
/// against the sum of its instances' start times. Not part of the suite.
#[test]
#[ignore]
fn bench_hosts() {
    let sizes: Vec<usize> = std::env::var("BATON_BENCH_HOSTS")
        .unwrap_or_else(|_| "3,6,12".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    let runs: usize = std::env::var("BATON_BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let mut table = vec![format!(
        "{:>5}  {:>28}  {:>28}  {:>30}",
        "hosts",
        "switch skew ms: median (range)",
        "switch back skew ms",
        "rolling wall / sum of starts"
    )];
    for n in sizes {
        let Some(fleet) = Fleet::create(n) else {
            return;
        };
        let mut h = Harness::new();
        // Blue-green: every deploy is a switch forward, every rollback one back.
        let port = free_port();
        let bg = "  blue_green:\n    auto_promote_after: 200ms\n    scale_down_delay: 5m\n    min_ready: 200ms";
        let spec = fleet_spec(&h, &fleet, "web", port, bg);
        bring_up(&h, &fleet, &spec, port);
        let (mut forward, mut back) = (Vec::new(), Vec::new());
        for run in 0..runs {
            let version = format!("v{}", run + 2);
            let before = h.status("web")["hosts_switch"]["at_ms"]
                .as_i64()
                .unwrap_or(0);
            h.cli_ok(&["deploy", "web", &version, "--wait"]);
            wait_until("the switch record", DEADLINE, || {
                h.status("web")["hosts_switch"]["at_ms"]
                    .as_i64()
                    .unwrap_or(0)
                    > before
            });
            let sw = h.status("web")["hosts_switch"].clone();
            forward.push(sw["skew_us"].as_u64().unwrap_or(u64::MAX) as f64 / 1000.0);
            let before = sw["at_ms"].as_i64().unwrap_or(0);
            h.cli_ok(&["rollback", "web"]);
            wait_until("the switch back", DEADLINE, || {
                h.status("web")["hosts_switch"]["at_ms"]
                    .as_i64()
                    .unwrap_or(0)
                    > before
            });
            let sw = h.status("web")["hosts_switch"].clone();
            back.push(sw["skew_us"].as_u64().unwrap_or(u64::MAX) as f64 / 1000.0);
        }
        h.cli_ok(&["delete", "web"]);
        // Rolling, node by node: rollout wall time / sum of instance start times.
        let port = free_port();
        let spec = fleet_spec(&h, &fleet, "roll", port, ROLLING);
        h.cli_ok(&["apply", "-f", &spec]);
        h.cli_ok(&["deploy", "roll", "v1", "--wait"]);
        let mut ratios = Vec::new();
        for run in 0..runs.min(3) {
            let version = format!("v{}", run + 2);
            h.cli_ok(&["deploy", "roll", &version, "--wait"]);
            let events = h.events("roll");
            let at = |e: &Value| e["at_ms"].as_i64().unwrap_or(0);
            let started = events
                .iter()
                .rev()
                .find(|e| e["kind"] == "rollout_started")
                .map(at)
                .unwrap_or(0);
            let finished = events
                .iter()
                .rev()
                .find(|e| e["kind"] == "rollout_finished")
                .map(at)
                .unwrap_or(0);
            let id_of = |e: &Value| {
                e["message"]
                    .as_str()
                    .and_then(|m| m.split_whitespace().next())
                    .unwrap_or("")
                    .to_string()
            };
            let tag = format!("({version})");
            let mut sum = 0;
            for s in events.iter().filter(|e| {
                e["kind"] == "instance_starting"
                    && e["message"].as_str().is_some_and(|m| m.contains(&tag))
            }) {
                let id = id_of(s);
                if let Some(r) = events
                    .iter()
                    .find(|e| e["kind"] == "instance_ready" && id_of(e) == id)
                {
                    sum += at(r) - at(s);
                }
            }
            ratios.push((finished - started) as f64 / sum.max(1) as f64);
        }
        table.push(format!(
            "{n:>5}  {:>28}  {:>28}  {:>30}",
            summary(&mut forward),
            summary(&mut back),
            summary(&mut ratios)
        ));
        shutdown(&mut h, &fleet);
    }
    println!("\n{}", table.join("\n"));
}

#[test]
fn a_canary_weight_is_applied_in_every_host_router_at_once() {
    let canary =
        "  canary:\n    steps:\n      - set_weight: 50\n      - pause: {}\n    min_ready: 200ms";
    let Some((fleet, mut h, port)) = up(2, canary) else {
        return;
    };
    h.cli_ok(&["deploy", "web", "v2"]);
    wait_until("the canary at 50%", DEADLINE, || {
        h.status("web")["traffic"]
            .as_array()
            .is_some_and(|t| t.iter().any(|s| s["version"] == "v2" && s["weight"] == 50))
    });
    wait_until("the switch record", DEADLINE, || {
        !h.status("web")["hosts_switch"].is_null()
    });
    let sw = h.status("web")["hosts_switch"].clone();
    assert!(
        sw["fallback"].is_null() && sw["skew_us"].as_u64().is_some(),
        "{sw}"
    );
    // Each host's router splits its own users between its own v1 and v2.
    for addr in routers(&fleet, port) {
        let v2 = (0..100)
            .filter(|_| get_version(addr) == (200, "v2".to_string()))
            .count();
        assert!(
            (30..=70).contains(&v2),
            "{addr}: {v2} of 100 answers from v2"
        );
    }
    h.cli_ok(&["promote", "web"]);
    wait_until("v2 promoted", DEADLINE, || stable_on(&h, "web", "v2"));
    shutdown(&mut h, &fleet);
}
