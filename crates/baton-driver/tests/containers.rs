//! The container driver against a real Podman: real containers, real published ports,
//! real cgroups. Each test starts a private Podman service (see `podman/mod.rs`) and
//! builds the sample-service image into it from the local `baton-sample` binary.
//!
//! ```text
//! cargo test -p baton-driver --test containers
//! BATON_REQUIRE_PODMAN=1 cargo test ...    # fail, not skip, without podman
//! ```

mod podman;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use baton_driver::{
    ContainerDriver, ContainerTarget, Driver, DriverError, Drivers, Exit, InstanceHandle,
    InstanceStatus, LaunchSpec, Locator, PullPolicy, Scope, StopOutcome, Target, free_port,
};
use podman::Podman;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const OWNER: &str = "/var/lib/baton-test";
const APP: &str = "web";
const MIB: u64 = 1 << 20;
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// How long an instance may take to answer, or to exit, on a busy 2-core machine.
const DEADLINE: Duration = Duration::from_secs(60);

fn spec(pm: &Podman, instance_id: &str, image: &str) -> LaunchSpec {
    LaunchSpec {
        instance_id: instance_id.to_owned(),
        app: APP.to_owned(),
        version: "v1".to_owned(),
        revision: 1,
        env: BTreeMap::new(),
        host: LOCALHOST,
        port: free_port(LOCALHOST).expect("free port"),
        log_path: pm.log_path(instance_id),
        target: Target::Container(ContainerTarget {
            endpoint: pm.endpoint.clone(),
            image: image.to_owned(),
            digest: None,
            pull: PullPolicy::Never,
            container_port: 8080,
            host_network: false,
            entrypoint: None,
            command: None,
            user: None,
            workdir: None,
            memory_bytes: None,
            cpus: None,
            read_only: false,
            labels: BTreeMap::new(),
        }),
        node: None,
    }
}

fn target(spec: &mut LaunchSpec) -> &mut ContainerTarget {
    match &mut spec.target {
        Target::Container(t) => t,
        Target::Process(_) => unreachable!("specs here are containers"),
    }
}

fn container_id(handle: &InstanceHandle) -> &str {
    match &handle.locator {
        Locator::Container { id, .. } => id,
        _ => panic!("not a container: {handle:?}"),
    }
}

async fn connect(pm: &Podman, owner: &str) -> ContainerDriver {
    ContainerDriver::connect(&pm.endpoint, owner.to_owned())
        .await
        .expect("connect to the test podman")
}

/// `GET path` over HTTP/1.1; the whole response (status line, headers, body).
async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        stream.read_to_string(&mut response),
    )
    .await
    .map_err(|_| std::io::Error::other("response timed out"))??;
    Ok(response)
}

/// Polls `GET /` until it answers 200; the response.
async fn wait_http(addr: SocketAddr) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match http_get(addr, "/").await {
            Ok(r) if r.starts_with("HTTP/1.1 200") => return r,
            other => assert!(
                Instant::now() < deadline,
                "{addr} did not answer 200 within {DEADLINE:?}; last: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls the status (every 50 ms, as a controller would) until the instance exits.
async fn wait_exit(driver: &ContainerDriver, handle: &InstanceHandle) -> Exit {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match driver.status(handle).await {
            InstanceStatus::Exited(exit) => return exit,
            InstanceStatus::Gone => panic!("{} vanished instead of exiting", handle.instance_id),
            InstanceStatus::Running => assert!(
                Instant::now() < deadline,
                "{} still running after {DEADLINE:?}",
                handle.instance_id
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls until the log file holds `needle`; its content.
async fn wait_log(path: &std::path::Path, needle: &str) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{} never showed {needle:?}; it holds:\n{text}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_serves_logs_and_stops() {
    let Some(pm) = Podman::start() else { return };
    pm.sample_image("localhost/sample:v1", &["ENV SAMPLE_VERSION=one"]);
    let driver = connect(&pm, OWNER).await;
    let mut spec = spec(&pm, "web-1", "localhost/sample:v1");
    spec.env.insert("GREETING".into(), "hi".into());
    target(&mut spec)
        .labels
        .insert("team".into(), "edge".into());

    let handle = driver.start(&spec).await.expect("start");
    assert_eq!(handle.address, SocketAddr::new(LOCALHOST, spec.port));
    assert_eq!(driver.status(&handle).await, InstanceStatus::Running);
    let answer = wait_http(handle.address).await;
    assert!(answer.contains("\"version\":\"one\""), "{answer}");

    // Named, labelled, configured as asked.
    let id = container_id(&handle);
    let inspect = pm.run(&[
        "inspect",
        "--format",
        "{{.Name}} {{index .Config.Labels \"baton.owner\"}} {{index .Config.Labels \"baton.instance\"}} \
         {{index .Config.Labels \"team\"}} {{.HostConfig.RestartPolicy.Name}}",
        id,
    ]);
    assert_eq!(inspect, format!("baton-web-1 {OWNER} web-1 edge no"));
    let env = pm.run(&["inspect", "--format", "{{json .Config.Env}}", id]);
    for var in [
        "PORT=8080",
        "BATON_INSTANCE_ID=web-1",
        "BATON_APP=web",
        "GREETING=hi",
    ] {
        assert!(env.contains(var), "{var} missing from {env}");
    }

    // The sample service writes its banner to stderr: the log follower got it.
    wait_log(&spec.log_path, "listening on 0.0.0.0:8080").await;

    let outcome = driver
        .stop(&handle, Duration::from_secs(10))
        .await
        .expect("stop");
    assert_eq!(outcome, StopOutcome::Graceful);
    assert_eq!(pm.try_run(&["inspect", id]), None, "container not removed");
    assert_eq!(driver.status(&handle).await, InstanceStatus::Gone);
    assert_eq!(
        driver.stop(&handle, Duration::from_secs(1)).await.unwrap(),
        StopOutcome::AlreadyGone
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_after_a_restart_finds_only_own_containers() {
    let Some(pm) = Podman::start() else { return };
    pm.sample_image("localhost/sample:v1", &[]);
    let first = connect(&pm, OWNER).await;
    let mine = spec(&pm, "web-7", "localhost/sample:v1");
    let handle = first.start(&mine).await.expect("start mine");

    // Same app, same endpoint, another control plane.
    let other = connect(&pm, "/var/lib/someone-else").await;
    let theirs = other
        .start(&spec(&pm, "web-8", "localhost/sample:v1"))
        .await
        .expect("start theirs");
    // Host networking: the address comes from PORT.
    let mut host_net = spec(&pm, "web-9", "localhost/sample:v1");
    target(&mut host_net).host_network = true;
    let host_handle = first.start(&host_net).await.expect("start host-network");
    wait_http(host_handle.address).await;
    drop(first);

    // A "restarted" control plane: a new driver, nothing remembered.
    let restarted = Drivers::new(OWNER.to_owned());
    let scope = Scope {
        app: APP.to_owned(),
        container_endpoints: vec![pm.endpoint.clone()],
        hosts: Vec::new(),
    };
    let found = restarted.discover(&scope).await.expect("discover");
    let ids: Vec<&str> = found.iter().map(|f| f.instance_id.as_str()).collect();
    assert_eq!(ids, ["web-7", "web-9"], "{found:?}");
    assert_eq!(found[0].handle().as_ref(), Some(&handle));
    assert_eq!(found[1].address, Some(host_handle.address));
    assert_eq!(
        restarted.status(&found[0].handle().unwrap()).await,
        InstanceStatus::Running
    );
    // Another app of the same owner is not in this scope.
    let other_app = Scope {
        app: "api".to_owned(),
        ..scope.clone()
    };
    let none = restarted.discover(&other_app).await.expect("discover api");
    assert!(
        none.iter()
            .all(|f| matches!(f.locator, Locator::Process { .. }))
    );

    let grace = Duration::from_secs(5);
    restarted.stop(&handle, grace).await.unwrap();
    restarted.stop(&host_handle, grace).await.unwrap();
    other.stop(&theirs, grace).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_command_exits_with_its_code() {
    let Some(pm) = Podman::start() else { return };
    pm.sample_image("localhost/sample:v1", &[]);
    let driver = connect(&pm, OWNER).await;
    let mut spec = spec(&pm, "web-2", "localhost/sample:v1");
    // The sample exits 2 on an unknown argument, saying why on stderr.
    target(&mut spec).command = Some(vec!["--no-such-flag".to_owned()]);
    let handle = driver.start(&spec).await.expect("start");
    let exit = wait_exit(&driver, &handle).await;
    assert_eq!(
        exit,
        Exit {
            code: Some(2),
            signal: None,
            oom_killed: false,
            memory_limit: None,
        }
    );
    wait_log(&spec.log_path, "--no-such-flag").await;
    // An exited container is removed by stop, which reports it gone already.
    assert_eq!(
        driver.stop(&handle, Duration::from_secs(1)).await.unwrap(),
        StopOutcome::AlreadyGone
    );
    assert_eq!(pm.try_run(&["inspect", container_id(&handle)]), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_ignores_its_stop_signal_is_killed_after_the_grace() {
    let Some(pm) = Podman::start() else { return };
    // SIGURG is ignored by default: the stop signal does nothing.
    pm.sample_image("localhost/sample:stubborn", &["STOPSIGNAL SIGURG"]);
    let driver = connect(&pm, OWNER).await;
    let handle = driver
        .start(&spec(&pm, "web-10", "localhost/sample:stubborn"))
        .await
        .expect("start");
    wait_http(handle.address).await;
    let grace = Duration::from_secs(1);
    let stop = {
        let (driver, handle) = (driver.clone(), handle.clone());
        tokio::spawn(async move { driver.stop(&handle, grace).await })
    };
    // Alive while the engine waits out the grace period.
    assert_eq!(driver.status(&handle).await, InstanceStatus::Running);
    let began = Instant::now();
    assert_eq!(stop.await.unwrap().unwrap(), StopOutcome::Killed);
    assert!(began.elapsed() < grace + Duration::from_secs(20));
    assert_eq!(pm.try_run(&["inspect", container_id(&handle)]), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leak_past_the_memory_limit_is_an_oom_kill() {
    let Some(pm) = Podman::start() else { return };
    pm.sample_image("localhost/sample:v1", &[]);
    let driver = connect(&pm, OWNER).await;
    let mut spec = spec(&pm, "web-3", "localhost/sample:v1");
    // 6 MiB steps: the last level that fits is above 90% of 64 MiB.
    spec.env.insert("SAMPLE_LEAK_MB_PER_S".into(), "6".into());
    target(&mut spec).memory_bytes = Some(64 * MIB);
    let handle = driver.start(&spec).await.expect("start");
    let exit = wait_exit(&driver, &handle).await;
    assert!(exit.oom_killed, "not seen as an OOM kill: {exit:?}");
    assert_eq!(exit.memory_limit, Some(64 * MIB));
    assert_eq!(exit.signal, Some(9));
    assert_eq!(exit.to_string(), "OOM-killed (memory limit 64 MiB)");
    driver.stop(&handle, Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samples_cpu_and_memory_with_the_limit() {
    let Some(pm) = Podman::start() else { return };
    pm.sample_image("localhost/sample:v1", &[]);
    let driver = connect(&pm, OWNER).await;
    let mut spec = spec(&pm, "web-4", "localhost/sample:v1");
    target(&mut spec).memory_bytes = Some(128 * MIB);
    target(&mut spec).cpus = Some(1.0);
    target(&mut spec).read_only = true;
    let handle = driver.start(&spec).await.expect("start");
    wait_http(handle.address).await;
    for _ in 0..20 {
        http_get(handle.address, "/").await.expect("request");
    }
    let sample = driver.sample(&handle).await.expect("a sample");
    assert!(
        sample.cpu_ms >= 1 && sample.cpu_ms < 60_000,
        "cpu {sample:?}"
    );
    assert!(
        sample.memory_bytes > 100_000 && sample.memory_bytes < 128 * MIB,
        "memory {sample:?}"
    );
    assert_eq!(sample.memory_limit_bytes, Some(128 * MIB));
    assert!(
        sample
            .memory_peak_bytes
            .is_some_and(|p| p >= sample.memory_bytes)
    );
    assert_eq!(sample.oom_kills, 0);
    let nano_cpus = pm.run(&[
        "inspect",
        "--format",
        "{{.HostConfig.NanoCpus}}",
        container_id(&handle),
    ]);
    assert_eq!(nano_cpus, "1000000000");
    driver.stop(&handle, Duration::from_secs(5)).await.unwrap();
    assert_eq!(driver.sample(&handle).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_images_are_named_and_explained() {
    let Some(pm) = Podman::start() else { return };
    let id = pm.sample_image("localhost/sample:v1", &[]);
    let drivers = Drivers::new(OWNER.to_owned());

    let info = drivers
        .resolve_image(&pm.endpoint, "localhost/sample:v1", PullPolicy::Never)
        .await
        .expect("present image");
    assert_eq!(info.id, id);
    assert!(info.digest.starts_with("sha256:"), "{info:?}");
    assert_eq!(
        (info.os.as_str(), info.architecture.as_str()),
        ("linux", "amd64")
    );
    assert!(info.size_bytes > 1_000_000, "{info:?}");

    let err = drivers
        .resolve_image(&pm.endpoint, "localhost/nope:v9", PullPolicy::Never)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, DriverError::Image { .. }), "{err:?}");
    for needle in ["localhost/nope:v9", "does not exist", "pull"] {
        assert!(text.contains(needle), "{needle:?} missing from: {text}");
    }

    // Allowed to pull, it is looked for at the registry its name gives: `localhost`,
    // where none listens.
    let err = drivers
        .resolve_image(&pm.endpoint, "localhost/nope:v9", PullPolicy::IfMissing)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, DriverError::Image { .. }), "{err:?}");
    for needle in ["localhost/nope:v9", "does not exist", "pulling it failed"] {
        assert!(text.contains(needle), "{needle:?} missing from: {text}");
    }

    // Starting from it fails the same way, before creating anything.
    let driver = connect(&pm, OWNER).await;
    let err = driver
        .start(&spec(&pm, "web-5", "localhost/nope:v9"))
        .await
        .unwrap_err();
    assert!(matches!(err, DriverError::Image { .. }), "{err:?}");
    assert_eq!(pm.run(&["ps", "--all", "--quiet"]), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_digest_runs_that_image_after_the_tag_moved() {
    let Some(pm) = Podman::start() else { return };
    let a = pm.sample_image("localhost/sample:stable", &["ENV SAMPLE_VERSION=a"]);
    let driver = connect(&pm, OWNER).await;
    let pinned = driver
        .resolve_image("localhost/sample:stable", PullPolicy::Never)
        .await
        .expect("resolve a");
    assert_eq!(pinned.id, a);

    let b = pm.sample_image("localhost/sample:stable", &["ENV SAMPLE_VERSION=b"]);
    assert_ne!(a, b);
    let now = driver
        .resolve_image("localhost/sample:stable", PullPolicy::Never)
        .await
        .expect("resolve b");
    assert_eq!(now.id, b);
    assert_ne!(now.digest, pinned.digest);

    let mut spec = spec(&pm, "web-6", "localhost/sample:stable");
    target(&mut spec).digest = Some(pinned.digest.clone());
    let handle = driver.start(&spec).await.expect("start pinned");
    match &handle.locator {
        Locator::Container { digest, .. } => assert_eq!(digest, &pinned.digest),
        other => panic!("{other:?}"),
    }
    let answer = wait_http(handle.address).await;
    assert!(answer.contains("\"version\":\"a\""), "{answer}");
    let image = pm.run(&["inspect", "--format", "{{.Image}}", container_id(&handle)]);
    assert_eq!(format!("sha256:{}", image.trim_start_matches("sha256:")), a);

    // A new start of the same instance (a crash between create and record) replaces
    // the leftover container instead of failing on its name.
    let again = driver.start(&spec).await.expect("start over the leftover");
    assert_ne!(container_id(&again), container_id(&handle));
    assert_eq!(driver.status(&handle).await, InstanceStatus::Gone);
    wait_http(again.address).await;
    driver.stop(&again, Duration::from_secs(5)).await.unwrap();
}
