//! Mirroring a user can act on, end to end: the real binary, sample service
//! processes whose `/items` answers change shape with `SAMPLE_SHAPE`, the
//! router process and steady load on several paths.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use baton::loadgen::{self, LoadConfig, LoadReport};
use common::*;
use serde_json::Value;

/// The `mirror:` section of `examples/canary.yaml`, so that the example's
/// settings are the ones shown to work: the sample names its version, pid and
/// port in `GET /` and its version and time in `/items`, differences that do
/// not matter and that the example leaves out.
fn example_mirror_section() -> String {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/canary.yaml"
    ))
    .expect("read examples/canary.yaml");
    let mut lines = text.lines().skip_while(|l| !l.starts_with("mirror:"));
    let mut out: Vec<&str> = lines.next().into_iter().collect();
    out.extend(lines.take_while(|l| l.starts_with(' ') || l.is_empty()));
    assert!(out.len() > 3, "examples/canary.yaml has a mirror section");
    out.join("\n")
}

const CANARY: &str = "  canary:\n    steps:\n      - mirror: { percent: 100, duration: 6s, max_mismatch_rate: 0.01 }\n      - set_weight: 100";

/// The paths the load asks for.
const PATHS: &[&str] = &["/", "/items", "/items/1", "/items/2"];

fn bring_up(h: &Harness) {
    let path = h.write_spec_with("demo", 2, CANARY, &example_mirror_section());
    h.cli_ok(&["apply", "-f", path_str(&path)]);
    h.cli_ok(&["deploy", "demo", "v1", "--wait"]);
}

/// Steady load on every path of [`PATHS`] while `during` runs, and at least
/// `min_each` requests on each.
fn with_loads<T>(h: &Harness, min_each: u64, during: impl FnOnce() -> T) -> (T, Vec<LoadReport>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let loads: Vec<_> = PATHS
        .iter()
        .map(|p| {
            let mut cfg = LoadConfig::new(h.listen);
            cfg.path = p.to_string();
            cfg.keepalive_workers = 1;
            cfg.fresh_workers = 0;
            cfg.max_requests = 200_000;
            cfg.max_duration = Duration::from_secs(240);
            cfg.pace = Duration::from_millis(2);
            rt.block_on(async { loadgen::start(cfg) })
        })
        .collect();
    for l in &loads {
        assert!(
            rt.block_on(l.wait_for_requests(20, Duration::from_secs(30))),
            "load did not get going"
        );
    }
    let out = during();
    let mut reports = Vec::new();
    for l in loads {
        rt.block_on(l.wait_for_requests(min_each, Duration::from_secs(120)));
        reports.push(rt.block_on(l.finish()));
    }
    (out, reports)
}

/// Users got only answers of `version`, and none failed.
fn assert_users_only_saw(reports: &[LoadReport], version: &str) {
    for r in reports {
        assert_no_failures(r);
        let others: Vec<_> = r.by_version.keys().filter(|v| *v != version).collect();
        assert!(
            others.is_empty(),
            "users saw {others:?}: {:?}",
            r.by_version
        );
    }
}

fn deploy(h: &Harness, version: &str, env: &[&str]) -> std::process::Output {
    let mut args = vec!["deploy", "demo", version, "--wait"];
    for e in env {
        args.extend(["--env", e]);
    }
    h.cli(&args)
}

/// Every (path, field) that differed, from a mirror report (`baton diff
/// --json`, or a replay's `report`).
fn differing(report: &Value) -> BTreeSet<(String, String)> {
    report["paths"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["mismatches"].as_u64().unwrap() > 0)
        .flat_map(|p| {
            p["fields"].as_array().unwrap().iter().map(move |f| {
                (
                    p["path"].as_str().unwrap().to_string(),
                    f["field"].as_str().unwrap().to_string(),
                )
            })
        })
        .collect()
}

fn events_of_kind(h: &Harness, kind: &str) -> Vec<String> {
    h.events("demo")
        .into_iter()
        .filter(|e| e["kind"] == kind)
        .map(|e| e["message"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_compatible_release_passes_its_mirror_step_and_an_incompatible_one_fails_naming_the_field() {
    let h = Harness::new();
    bring_up(&h);

    // v2 answers the same once the sample's own names are left out; status
    // shows the comparisons while the step runs.
    let (text, reports) = with_loads(&h, 200, || {
        h.cli_ok(&["deploy", "demo", "v2"]);
        wait_until("comparisons in status", Duration::from_secs(30), || {
            let m = &h.status("demo")["mirror"];
            m["running"] == true && m["compared"].as_u64().unwrap_or(0) >= 20
        });
        let text = h.cli_ok(&["status", "demo"]);
        wait_until_stable_on(&h, "demo", "v2", "the mirror step to pass");
        text
    });
    assert!(
        text.contains("mirror step 1 (v2 vs v1): ")
            && text.contains("matching (0.0% differ, limit 1.0%)"),
        "{text}"
    );
    // v2 took over once promoted; nobody saw an error on the way.
    for r in &reports {
        assert_no_failures(r);
    }
    // Recorded by the controller once it sees the step over.
    wait_until("the mirror step's summary", Duration::from_secs(20), || {
        !events_of_kind(&h, "mirror_compared").is_empty()
    });
    let ended = events_of_kind(&h, "mirror_compared");
    assert_eq!(ended.len(), 1, "{ended:?}");
    assert!(
        ended[0].starts_with("mirror step 1 of v2 ended: ") && ended[0].contains("(0.0% differ"),
        "{}",
        ended[0]
    );
    let diff: Value = serde_json::from_str(&h.cli_ok(&["diff", "demo", "--json"])).unwrap();
    assert_eq!(diff["total"]["mismatches"], 0, "{diff}");
    let compared = diff["total"]["matches"].as_u64().unwrap();
    assert!(compared >= 20, "{diff}");
    let paths: BTreeSet<&str> = diff["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        PATHS.iter().copied().collect(),
        "every path mirrored but /healthz"
    );

    // v3 calls each item's price `cost`: the step fails, naming the path and field.
    let (out, reports) = with_loads(&h, 200, || deploy(&h, "v3", &["SAMPLE_SHAPE=renamed"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for part in [
        "mirrored responses of v3 differ from v2's",
        "worst: /items",
        "$.items[*].price",
    ] {
        assert!(stderr.contains(part), "{part:?} missing from: {stderr}");
    }
    assert_users_only_saw(&reports, "v2");
    let failed = events_of_kind(&h, "mirror_compared");
    assert!(
        failed.last().unwrap().starts_with("mirror step failed: ")
            && failed.last().unwrap().contains("$.items[*].cost"),
        "{failed:?}"
    );
    let diff: Value = serde_json::from_str(&h.cli_ok(&["diff", "demo", "--json"])).unwrap();
    let fields = differing(&diff);
    for expected in [
        ("/items", "$.items[*].price"),
        ("/items", "$.items[*].cost"),
        ("/items/1", "$.price"),
        ("/items/2", "$.cost"),
    ] {
        assert!(
            fields.contains(&(expected.0.to_string(), expected.1.to_string())),
            "{expected:?} not in {fields:?}"
        );
    }
    assert!(
        !fields.iter().any(|(p, _)| p == "/"),
        "GET / answers the same: {fields:?}"
    );
    // A pair shows both values.
    let pair = diff["samples"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["path"] == "/items/1")
        .expect("a sample of /items/1");
    let differences = pair["differences"].as_array().unwrap();
    assert!(
        differences.contains(&serde_json::json!(
            {"kind": "json", "path": "$.price", "primary": 4.5, "mirror": null}
        )),
        "{pair}"
    );
    // The text view says the same.
    let text = h.cli_ok(&["diff", "demo"]);
    assert!(text.contains("body $.price: 4.5 vs (missing)"), "{text}");
    assert!(text.contains("$.items[*].price"), "{text}");
}

#[test]
fn a_recorded_slice_replayed_against_a_preview_reports_what_mirroring_did() {
    let h = Harness::new();
    bring_up(&h);
    let file = h.dir.join("traffic.jsonl");
    let file = path_str(&file).to_string();

    // Record 40 real requests; each carries credentials that must not be kept.
    let recorder = {
        let mut cmd = h.command();
        let file = file.clone();
        std::thread::spawn(move || {
            cmd.args(["mirror", "record", "demo"])
                .args(["--to", &file, "--requests", "40", "--duration", "120s"])
                .output()
                .expect("run baton")
        })
    };
    let secret = [
        ("Authorization", "Bearer secret-token"),
        ("Cookie", "session=secret-cookie"),
        ("X-Api-Key", "secret-key"),
    ];
    let mut sent = 0;
    while !recorder.is_finished() {
        let path = PATHS[sent % PATHS.len()];
        assert_eq!(get_path_with(h.listen, path, &secret).0, 200);
        sent += 1;
        assert!(sent < 20_000, "the recording never ended");
    }
    let out = recorder.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("recorded 40 requests of demo"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let recorded = std::fs::read_to_string(&file).unwrap();
    assert_eq!(recorded.lines().count(), 40);
    assert!(
        !recorded.contains("secret"),
        "a credential was recorded: {recorded}"
    );
    assert!(recorded.contains(r#""uri":"/items/2""#), "{recorded}");

    // A compatible preview: every answer matches; it is stopped afterwards.
    let out = h.cli(&[
        "mirror",
        "replay",
        &file,
        "--against",
        "demo",
        "v2",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ok: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ok["sent"], 40, "{ok}");
    assert_eq!(ok["report"]["total"]["matches"], 40, "{ok}");
    assert_eq!(ok["against"], "v1");
    wait_until("the preview to stop", Duration::from_secs(30), || {
        !h.instance_ids_running()
            .iter()
            .any(|i| i.contains("preview"))
    });

    // A preview whose /items/2 answers another price: exit 1, the path named.
    let out = h.cli(&[
        "mirror",
        "replay",
        &file,
        "--against",
        "demo",
        "v2",
        "--env",
        "SAMPLE_SHAPE=changed",
        "--json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let replayed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let from_replay = differing(&replayed["report"]);
    assert_eq!(
        from_replay,
        [("/items/2".to_string(), "$.price".to_string())].into(),
        "{replayed}"
    );
    let text = h.cli(&[
        "mirror",
        "replay",
        &file,
        "--against",
        "demo",
        "v2",
        "--env",
        "SAMPLE_SHAPE=changed",
    ]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("body $.price: 3.0 vs 3.5"), "{text}");
    assert_eq!(
        h.status("demo")["phase"],
        "stable",
        "a replay changes nothing"
    );

    // The same release through a live mirror step: the same differences.
    let (out, reports) = with_loads(&h, 200, || deploy(&h, "v2", &["SAMPLE_SHAPE=changed"]));
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_users_only_saw(&reports, "v1");
    let diff: Value = serde_json::from_str(&h.cli_ok(&["diff", "demo", "--json"])).unwrap();
    assert_eq!(differing(&diff), from_replay, "{diff}");

    // A pre-flight check can replay the slice: a release whose answers differ is
    // refused before anything changes.
    let preflight = format!(
        "preflight:\n  - name: replay\n    command: [env, \"BATON_TOKEN={}\", \"{{baton}}\", mirror, replay, \"{file}\", --against, \"{{app}}\", \"{{version}}\", --env, SAMPLE_SHAPE=changed, --server, \"{}\"]\n    timeout: 2m",
        h.token(),
        h.server_url()
    );
    let path = h.write_spec_with(
        "demo",
        2,
        CANARY,
        &format!("{}\n{preflight}", example_mirror_section()),
    );
    h.cli_ok(&["apply", "-f", path_str(&path)]);
    let out = deploy(&h, "v2", &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("pre-flight checks failed") && stderr.contains("differ"),
        "{stderr}"
    );
    assert_eq!(h.status("demo")["stable_version"], "v1");
}

#[test]
fn bad_recordings_and_settings_are_refused_with_exit_2() {
    let h = Harness::new();
    bring_up(&h);
    let bad = h.dir.join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"method\":\"GET\",\"uri\":\"/\",\"headers\":[],\"at_ms\":1}\nnot json\n",
    )
    .unwrap();
    let out = h.cli(&[
        "mirror",
        "replay",
        path_str(&bad),
        "--against",
        "demo",
        "v2",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.jsonl:2: not a recorded request"),
        "{stderr}"
    );
    let out = h.cli(&[
        "mirror",
        "replay",
        path_str(&bad),
        "--against",
        "demo",
        "v2",
        "--max-mismatch-rate",
        "2",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let out = h.cli(&[
        "mirror",
        "record",
        "demo",
        "--to",
        "/nonexistent/dir/x.jsonl",
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A spec whose mirror settings are wrong changes nothing.
    let path = h.write_spec_with(
        "demo",
        2,
        CANARY,
        "mirror:\n  compare:\n    body: { ignore: ['items'] }",
    );
    let out = h.cli(&["apply", "-f", path_str(&path)]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("mirror.compare.body.ignore[0]") && stderr.contains("must start with '$'"),
        "{stderr}"
    );
}
