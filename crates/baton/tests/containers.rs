//! Container apps end to end: the real control plane, router and CLI driving a
//! real Podman (a private service per test, see `podman/mod.rs`), with images of
//! the sample service built from the local binary. Nothing is pulled.
//!
//! Without podman these tests print "skipped" (unless `BATON_REQUIRE_PODMAN=1`,
//! which the README's test command sets).

mod common;
#[path = "../../baton-driver/tests/podman/mod.rs"]
mod podman;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use podman::Podman;
use serde_json::Value;

const ROLLING: &str = "  rolling:\n    max_surge: 1\n    max_unavailable: 0\n    min_ready: 500ms";

/// Builds `localhost/baton-sample:VERSION` for each version.
fn images(pm: &Podman, versions: &[&str]) {
    for v in versions {
        pm.sample_image(
            &format!("localhost/baton-sample:{v}"),
            &[&format!("ENV SAMPLE_VERSION={v}")],
        );
    }
}

/// The `driver:` section of a container app on `pm`.
fn container_driver(pm: &Podman, memory: &str) -> String {
    format!(
        r#"driver:
  container:
    endpoint: {endpoint}
    image: localhost/baton-sample:{{version}}
    pull: never
    port: 8080
    command: ["--version", "{{version}}"]
    memory: {memory}
    read_only: true
    stop_grace: 5s
"#,
        endpoint = pm.endpoint
    )
}

/// A container app spec named `name` on the harness's listen address.
fn container_spec(
    h: &Harness,
    pm: &Podman,
    name: &str,
    instances: u32,
    strategy: &str,
    extra: &str,
) -> PathBuf {
    let yaml = format!(
        "name: {name}\nenvironment: test\nlisten: {listen}\ninstances: {instances}\ndrain_timeout: 5s\n{driver}readiness:\n  path: /healthz\n  interval: 200ms\n  timeout: 1s\n  failure_threshold: 2\nstrategy:\n{strategy}\n{extra}\n",
        listen = h.listen,
        driver = container_driver(pm, "64MiB"),
    );
    let path = h.dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).expect("write spec");
    path
}

/// Instance ids of the app's running containers, from baton's labels.
fn running_containers(pm: &Podman, app: &str) -> Vec<String> {
    let out = pm.run(&[
        "ps",
        "--filter",
        &format!("label=baton.app={app}"),
        "--format",
        "{{ index .Labels \"baton.instance\" }}",
    ]);
    let mut ids: Vec<String> = out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    ids.sort();
    ids
}

/// Instance ids `status` knows, sorted.
fn known_instances(s: &Value) -> Vec<String> {
    let mut ids: Vec<String> = s["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

/// Waits until the containers running are exactly the instances `status` knows,
/// `count` of them, all of `version`.
fn wait_for_exactly(h: &Harness, pm: &Podman, app: &str, version: &str, count: usize) {
    wait_until(
        &format!("exactly {count} {version} containers, each known to baton"),
        Duration::from_secs(60),
        || {
            let s = h.status(app);
            let known = known_instances(&s);
            known.len() == count
                && s["instances"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|i| i["version"] == version)
                && running_containers(pm, app) == known
        },
    );
}

#[test]
fn rolling_upgrade_of_four_containers_drops_nothing() {
    let Some(pm) = Podman::start() else { return };
    let h = Harness::new();
    images(&pm, &["v1", "v2"]);
    let spec = container_spec(&h, &pm, "boxes", 4, ROLLING, "");
    h.cli_ok(&["apply", "-f", path_str(&spec)]);
    h.cli_ok(&["deploy", "boxes", "v1", "--wait"]);
    wait_for_exactly(&h, &pm, "boxes", "v1", 4);

    let (_, report) = with_load(h.load(40_000), 2_000, || {
        h.cli_ok(&["deploy", "boxes", "v2", "--wait"])
    });
    assert_no_failures(&report);
    assert!(report.requests >= 2_000, "{} requests", report.requests);
    for _ in 0..20 {
        assert_eq!(get_version(h.listen), (200, "v2".to_string()));
    }
    wait_for_exactly(&h, &pm, "boxes", "v2", 4);
    // Status says what runs each instance, its image digest, and (once sampled)
    // its memory against its limit.
    wait_until(
        "memory samples of every container",
        Duration::from_secs(30),
        || {
            let s = h.status("boxes");
            s["instances"].as_array().unwrap().iter().all(|i| {
                i["runs"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("container "))
                    && i["image_digest"]
                        .as_str()
                        .is_some_and(|d| d.starts_with("sha256:"))
                    && i["memory_bytes"].as_u64().is_some_and(|m| m > 0)
                    && i["memory_limit_bytes"] == 64u64 << 20
            })
        },
    );
    let text = h.cli_ok(&["status", "boxes"]);
    assert!(
        text.contains("container ") && text.contains("/ 64 MiB"),
        "{text}"
    );
    let metrics = http_get_body(h.api, "/metrics", &h.token());
    assert!(
        metrics.contains("baton_instance_memory_limit_bytes{app=\"boxes\",version=\"v2\""),
        "{metrics}"
    );
}

#[test]
fn kill_9_mid_rollout_adopts_the_containers_without_duplicates() {
    let Some(pm) = Podman::start() else { return };
    let mut h = Harness::without_server();
    images(&pm, &["v1", "v2"]);
    let spec = container_spec(&h, &pm, "boxes", 4, ROLLING, "version: v1");
    h.serve_args = vec!["-c".into(), path_str(&spec).into()];
    h.start_server();
    wait_until_stable_on(&h, "boxes", "v1", "v1 to be deployed from -c");

    let (_, report) = with_load(h.load(60_000), 1_000, || {
        h.cli_ok(&["deploy", "boxes", "v2"]);
        wait_until_half_way(&h, "boxes");
        h.kill9_server();
        h.start_server();
        wait_until_stable_on(&h, "boxes", "v2", "the rollout to finish after the restart");
    });
    assert_no_failures(&report);
    wait_for_exactly(&h, &pm, "boxes", "v2", 4);
    let rows = h.history("boxes");
    let results: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| {
            (
                r["to_version"].as_str().unwrap(),
                r["result"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(results, [("v2", "succeeded"), ("v1", "succeeded")]);
}

#[test]
fn a_leaking_release_is_oom_killed_and_rolled_back_with_the_limit_named() {
    let Some(pm) = Podman::start() else { return };
    let h = Harness::new();
    images(&pm, &["v1", "v2"]);
    // A canary with shielding: a request the dying v2 fails is replayed on v1.
    let canary = "  canary:\n    steps:\n      - set_weight: 50\n      - pause: { duration: 2m }\n    shielding: true\n    min_ready: 500ms\n    max_restarts: 5";
    let spec = container_spec(&h, &pm, "boxes", 2, canary, "");
    h.cli_ok(&["apply", "-f", path_str(&spec)]);
    h.cli_ok(&["deploy", "boxes", "v1", "--wait"]);

    let (out, report) = with_load(h.load(40_000), 1_000, || {
        h.cli(&[
            "deploy",
            "boxes",
            "v2",
            "--env",
            "SAMPLE_LEAK_MB_PER_S=32",
            "--wait",
        ])
    });
    assert!(!out.status.success(), "the rollout must fail");
    assert_no_failures(&report);
    let last = &h.history("boxes")[0];
    assert_eq!(last["result"], "rolled_back", "{last}");
    let notes = last["notes"].as_str().unwrap();
    assert!(
        notes.contains("v2 OOM-killed (memory limit 64 MiB)"),
        "{notes}"
    );
    wait_for_exactly(&h, &pm, "boxes", "v1", 2);
}

#[test]
fn a_missing_image_is_refused_at_pre_flight_and_a_crashing_one_rolled_back() {
    let Some(pm) = Podman::start() else { return };
    let h = Harness::new();
    images(&pm, &["v1", "v2"]);
    let spec = container_spec(
        &h,
        &pm,
        "boxes",
        2,
        "  rolling:\n    max_surge: 1\n    max_unavailable: 0\n    max_restarts: 1",
        "",
    );
    h.cli_ok(&["apply", "-f", path_str(&spec)]);
    h.cli_ok(&["deploy", "boxes", "v1", "--wait"]);
    let before = h.history("boxes").len();

    let out = h.cli(&["deploy", "boxes", "v9"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("localhost/baton-sample:v9"), "{err}");
    assert_eq!(h.history("boxes").len(), before, "nothing recorded");
    assert_eq!(h.status("boxes")["stable_version"], "v1");

    // v2 exits at once: it crash-loops and is rolled back, with the reason.
    let out = h.cli(&[
        "deploy",
        "boxes",
        "v2",
        "--env",
        "SAMPLE_CRASH_AFTER_MS=1",
        "--wait",
    ]);
    assert!(!out.status.success());
    let last = &h.history("boxes")[0];
    assert_eq!(last["result"], "rolled_back", "{last}");
    let notes = last["notes"].as_str().unwrap();
    assert!(
        notes.contains("exit code 1") && notes.contains("max_restarts"),
        "{notes}"
    );
    wait_for_exactly(&h, &pm, "boxes", "v1", 2);
}

#[test]
fn a_rollback_runs_the_pinned_digest_after_the_tag_moved() {
    let Some(pm) = Podman::start() else { return };
    let h = Harness::new();
    images(&pm, &["v1", "v2"]);
    let spec = container_spec(&h, &pm, "boxes", 2, ROLLING, "");
    h.cli_ok(&["apply", "-f", path_str(&spec)]);
    h.cli_ok(&["deploy", "boxes", "v1", "--wait"]);
    let v1_digest = h.status("boxes")["instances"][0]["image_digest"]
        .as_str()
        .unwrap()
        .to_string();
    h.cli_ok(&["deploy", "boxes", "v2", "--wait"]);
    // Someone re-points the v1 tag to another image (answering "moved").
    pm.sample_image("localhost/baton-sample:v1", &["ENV SAMPLE_VERSION=moved"]);
    // The command line names the version; the image must be the v1 that was deployed.
    // (The sample's `--version {version}` argument wins over SAMPLE_VERSION, so
    // the answer cannot tell; the digest each container runs can.)
    h.cli_ok(&["rollback", "boxes", "--wait"]);
    wait_for_exactly(&h, &pm, "boxes", "v1", 2);
    let s = h.status("boxes");
    for i in s["instances"].as_array().unwrap() {
        assert_eq!(i["image_digest"], v1_digest.as_str(), "{s}");
    }
    for id in running_containers(&pm, "boxes") {
        let env = pm.run(&[
            "inspect",
            &format!("baton-{id}"),
            "--format",
            "{{ .Config.Env }}",
        ]);
        assert!(
            env.contains("SAMPLE_VERSION=v1") && !env.contains("moved"),
            "{env}"
        );
    }
}

/// `examples/NAME.yaml` with its driver swapped for containers on `pm` and its
/// addresses for free ones; its strategy and checks unchanged.
fn example_on_containers(h: &Harness, pm: &Podman, name: &str) -> (PathBuf, String) {
    let text =
        std::fs::read_to_string(podman::workspace_root().join(format!("examples/{name}.yaml")))
            .unwrap();
    let mut out = String::new();
    let mut app = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if let Some(n) = line.strip_prefix("name: ") {
            app = n.trim().to_string();
        }
        if line.starts_with("driver:") {
            out.push_str(&container_driver(pm, "64MiB"));
            // Skip the example's own driver section (indented lines and comments).
            while lines
                .peek()
                .is_some_and(|l| l.starts_with(' ') || l.is_empty())
            {
                lines.next();
            }
            continue;
        }
        if line.starts_with("listen:") {
            out.push_str(&format!("listen: {}\n", h.listen));
        } else if line.trim_start().starts_with("preview_listen:") {
            out.push_str(&format!("    preview_listen: 127.0.0.1:{}\n", free_port()));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    let path = h.dir.join(format!("{name}-containers.yaml"));
    std::fs::write(&path, out).unwrap();
    (path, app)
}

#[test]
fn the_blue_green_and_canary_examples_run_unchanged_on_containers() {
    let Some(pm) = Podman::start() else { return };
    images(&pm, &["v1", "v2"]);
    for example in ["blue-green", "canary"] {
        let h = Harness::new();
        let (spec, app) = example_on_containers(&h, &pm, example);
        // The examples name `version: v1`: applying them deploys it.
        h.cli_ok(&["apply", "-f", path_str(&spec)]);
        wait_until_stable_on(&h, &app, "v1", &format!("{example}'s v1 to be deployed"));
        let (_, report) = with_load(h.load(60_000), 500, || {
            h.cli_ok(&["deploy", &app, "v2"]);
            // Both examples wait for a person at some point: approve, then
            // skip the remaining pauses.
            wait_until(
                &format!("{example} to wait for an approval"),
                Duration::from_secs(180),
                || {
                    let s = h.status(&app);
                    s.to_string().contains("waiting for approval") || s["phase"] == "stable"
                },
            );
            let _ = h.cli(&["approve", &app]);
            let _ = h.cli(&["promote", &app, "--full"]);
            wait_until_stable_on(&h, &app, "v2", &format!("the {example} rollout to finish"));
        });
        assert_no_failures(&report);
        assert_eq!(get_version(h.listen), (200, "v2".to_string()));
        drop(h);
    }
}

/// `GET path` of the control plane's API with `token`; the whole response.
fn http_get_body(api: std::net::SocketAddr, path: &str, token: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(api).expect("connect API");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf
}
