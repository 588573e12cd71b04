//! Tests with real processes. Waits poll for a condition with a deadline; no fixed sleeps.

use super::*;
use crate::free_port;
use crate::{ProcessTarget, Target};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const WAIT: Duration = Duration::from_secs(10);

/// A scratch directory and owner string unique to one test; instances still alive at the
/// end are killed and the directory removed.
struct Scratch {
    dir: PathBuf,
    owner: String,
    driver: ProcessDriver,
}

impl Scratch {
    fn new(name: &str) -> Scratch {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "baton-driver-test-{}-{n}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let owner = dir.display().to_string();
        Scratch {
            driver: ProcessDriver::new(owner.clone()),
            dir,
            owner,
        }
    }

    fn spec(&self, id: &str, argv: &[&str]) -> LaunchSpec {
        LaunchSpec {
            instance_id: id.to_owned(),
            app: "web".to_owned(),
            version: "1.0.0".to_owned(),
            revision: 1,
            env: BTreeMap::new(),
            target: Target::Process(ProcessTarget {
                argv: argv.iter().map(|s| (*s).to_owned()).collect(),
                workdir: None,
            }),
            host: LOCALHOST,
            port: free_port(LOCALHOST).unwrap(),
            log_path: self.dir.join("logs").join(format!("{id}.log")),
            node: None,
        }
    }

    fn log(&self, id: &str) -> String {
        std::fs::read_to_string(self.dir.join("logs").join(format!("{id}.log"))).unwrap_or_default()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Ok(found) = self.driver.discover_now(None) {
            for f in found {
                if let Locator::Process { pid, .. } = f.locator
                    && let Some(pgid) = signalable_pgid(pid)
                {
                    let _ = killpg(pgid, Signal::SIGKILL);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The pid of a process handle.
fn pid(h: &InstanceHandle) -> u32 {
    process_of(h).expect("a process handle").0
}

fn start_time(h: &InstanceHandle) -> u64 {
    process_of(h).expect("a process handle").1
}

/// Polls `cond` until it holds; panics (test failure) after `WAIT`.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    assert!(
        poll_until(Instant::now() + WAIT, &mut cond).await,
        "timed out waiting for {what}"
    );
}

#[tokio::test]
async fn start_reports_running_with_pid_and_start_time() {
    let s = Scratch::new("start");
    let spec = s.spec("i1", &["sleep", "100"]);
    let h = s.driver.start(&spec).await.unwrap();
    assert_eq!(h.instance_id, "i1");
    assert_eq!(h.address, std::net::SocketAddr::new(LOCALHOST, spec.port));
    let stat = procfs::read_stat(pid(&h)).unwrap().unwrap();
    assert_eq!(stat.start_time, start_time(&h));
    assert_eq!(stat.pgrp, pid(&h), "instance leads its own process group");
    assert_eq!(s.driver.status_now(&h), InstanceStatus::Running);

    // Marked for discovery. Right after spawn the kernel may still be building the new
    // image's environment (environ reads empty), so wait for it.
    eventually("environ", || {
        procfs::read_environ(pid(&h)).is_some_and(|env| !env.is_empty())
    })
    .await;
    let env = procfs::read_environ(pid(&h)).unwrap();
    let get = |k: &str| {
        env.iter()
            .find(|(key, _)| key == k.as_bytes())
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    assert_eq!(get(ENV_INSTANCE_ID).as_deref(), Some("i1"));
    assert_eq!(get(ENV_OWNER).as_deref(), Some(s.owner.as_str()));
    assert_eq!(get(ENV_PORT), Some(spec.port.to_string()));

    assert_eq!(
        s.driver.stop(&h, WAIT).await.unwrap(),
        StopOutcome::Graceful
    );
}

#[tokio::test]
async fn exit_code_is_reported() {
    let s = Scratch::new("exit");
    let h = s
        .driver
        .start(&s.spec("i1", &["sh", "-c", "exit 3"]))
        .await
        .unwrap();
    eventually("exit", || {
        s.driver.status_now(&h) != InstanceStatus::Running
    })
    .await;
    assert_eq!(
        s.driver.status_now(&h),
        InstanceStatus::Exited(Exit {
            code: Some(3),
            ..Exit::default()
        })
    );
    assert_eq!(
        s.driver.stop(&h, WAIT).await.unwrap(),
        StopOutcome::AlreadyGone
    );
}

#[tokio::test]
async fn log_receives_stdout_and_stderr_and_env() {
    let s = Scratch::new("log");
    let mut spec = s.spec(
        "i1",
        &[
            "sh",
            "-c",
            "echo out $PORT $BATON_INSTANCE_ID $GREETING; echo err >&2; pwd",
        ],
    );
    spec.env.insert("GREETING".into(), "hello".into());
    if let Target::Process(p) = &mut spec.target {
        p.workdir = Some(std::env::temp_dir());
    }
    let h = s.driver.start(&spec).await.unwrap();
    eventually("exit", || {
        s.driver.status_now(&h) != InstanceStatus::Running
    })
    .await;
    let log = s.log("i1");
    assert!(
        log.contains(&format!("out {} i1 hello", spec.port)),
        "log: {log:?}"
    );
    assert!(log.contains("err\n"), "log: {log:?}");
    let tmp = std::env::temp_dir().canonicalize().unwrap();
    assert!(log.contains(&tmp.display().to_string()), "log: {log:?}");

    // A second run appends.
    let h2 = s.driver.start(&spec).await.unwrap();
    eventually("exit", || {
        s.driver.status_now(&h2) != InstanceStatus::Running
    })
    .await;
    assert_eq!(s.log("i1").matches("err\n").count(), 2);
}

#[tokio::test]
async fn missing_executable_is_a_spawn_error() {
    let s = Scratch::new("missing");
    let err = s
        .driver
        .start(&s.spec("i1", &["/nonexistent/baton-no-such-program"]))
        .await
        .unwrap_err();
    assert!(matches!(err, DriverError::Spawn { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("/nonexistent/baton-no-such-program"), "{msg}");

    let err = s.driver.start(&s.spec("i2", &[])).await.unwrap_err();
    assert!(matches!(err, DriverError::InvalidSpec { .. }), "{err:?}");
}

#[tokio::test]
async fn stop_kills_a_process_that_ignores_sigterm() {
    let s = Scratch::new("stubborn");
    let h = s
        .driver
        .start(&s.spec(
            "i1",
            &[
                "sh",
                "-c",
                "trap '' TERM; echo ready; sleep 100; echo survived",
            ],
        ))
        .await
        .unwrap();
    // Signal only once the trap is in place.
    eventually("trap installed", || s.log("i1").contains("ready")).await;
    let started = Instant::now();
    let outcome = s.driver.stop(&h, Duration::from_millis(300)).await.unwrap();
    assert_eq!(outcome, StopOutcome::Killed);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(s.driver.status_now(&h), InstanceStatus::Gone);
    assert!(
        procfs::instance_group_members(pid(&h), &h.instance_id).is_empty(),
        "sleep was killed too"
    );
    assert!(!s.log("i1").contains("survived"));
}

#[tokio::test]
async fn stop_of_a_well_behaved_process_is_graceful_and_takes_its_children() {
    let s = Scratch::new("graceful");
    // The shell forks sleep into the same group; both must go.
    let h = s
        .driver
        .start(&s.spec("i1", &["sh", "-c", "sleep 100 & wait"]))
        .await
        .unwrap();
    let started = Instant::now();
    let outcome = s.driver.stop(&h, WAIT).await.unwrap();
    assert_eq!(outcome, StopOutcome::Graceful);
    assert!(started.elapsed() < WAIT);
    assert!(procfs::instance_group_members(pid(&h), &h.instance_id).is_empty());
    assert_eq!(
        s.driver.stop(&h, WAIT).await.unwrap(),
        StopOutcome::AlreadyGone
    );
}

#[tokio::test]
async fn handle_with_wrong_start_time_is_gone() {
    let s = Scratch::new("reuse");
    let h = s
        .driver
        .start(&s.spec("i1", &["sleep", "100"]))
        .await
        .unwrap();
    let stale = InstanceHandle {
        locator: Locator::Process {
            pid: pid(&h),
            start_time: start_time(&h) + 1,
        },
        ..h.clone()
    };
    assert_eq!(s.driver.status_now(&stale), InstanceStatus::Gone);
    // A driver that did not start it agrees.
    let other = ProcessDriver::new(s.owner.clone());
    assert_eq!(other.status_now(&stale), InstanceStatus::Gone);
    assert_eq!(other.status_now(&h), InstanceStatus::Running);
    // Stopping by a stale handle must not touch the process now holding the pid.
    assert_eq!(
        s.driver.stop(&stale, WAIT).await.unwrap(),
        StopOutcome::AlreadyGone
    );
    assert_eq!(s.driver.status_now(&h), InstanceStatus::Running);
    s.driver.stop(&h, WAIT).await.unwrap();
}

#[tokio::test]
async fn discover_finds_own_instances_across_restarts_only() {
    let s = Scratch::new("discover");
    let other_owner = Scratch::new("discover-other");

    // One plain instance, one that forks a child carrying the same environment.
    let a = s
        .driver
        .start(&s.spec("a", &["sleep", "100"]))
        .await
        .unwrap();
    let b_spec = s.spec("b", &["sh", "-c", "sleep 100 & echo forked; wait"]);
    let b = s.driver.start(&b_spec).await.unwrap();
    let foreign = other_owner
        .driver
        .start(&other_owner.spec("x", &["sleep", "100"]))
        .await
        .unwrap();
    eventually("fork", || s.log("b").contains("forked")).await;

    // A new driver with the same owner stands in for a restarted control plane.
    let restarted = ProcessDriver::new(s.owner.clone());
    let found = restarted.discover_now(None).unwrap();
    assert_eq!(
        found,
        vec![
            FoundInstance {
                instance_id: "a".into(),
                locator: a.locator.clone(),
                address: Some(a.address),
            },
            FoundInstance {
                instance_id: "b".into(),
                locator: b.locator.clone(),
                address: Some(SocketAddr::new(LOCALHOST, b_spec.port)),
            },
        ]
    );
    assert_eq!(found[0].handle(), Some(a.clone()));
    assert!(!found.iter().any(|f| f.locator == foreign.locator));

    // The restarted control plane can stop an instance it did not spawn.
    assert_eq!(
        restarted.status_now(&found[0].handle().unwrap()),
        InstanceStatus::Running
    );
    assert_eq!(
        restarted.stop(&a, WAIT).await.unwrap(),
        StopOutcome::Graceful
    );
    eventually("a gone from discovery", || {
        restarted
            .discover_now(None)
            .is_ok_and(|f| f.iter().all(|f| f.instance_id != "a"))
    })
    .await;
    assert_eq!(
        restarted.stop(&b, WAIT).await.unwrap(),
        StopOutcome::Graceful
    );
    other_owner.driver.stop(&foreign, WAIT).await.unwrap();
    assert!(restarted.discover_now(None).unwrap().is_empty());
}

#[tokio::test]
async fn serves_on_the_given_port() {
    // A real server: the instance gets PORT and listens on it.
    if std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("python3 not available; skipping");
        return;
    }
    let s = Scratch::new("http");
    let spec = s.spec(
        "i1",
        &[
            "sh",
            "-c",
            "exec python3 -m http.server --bind 127.0.0.1 \"$PORT\"",
        ],
    );
    let h = s.driver.start(&spec).await.unwrap();
    eventually("listening", || {
        std::net::TcpStream::connect_timeout(&h.address, Duration::from_millis(200)).is_ok()
    })
    .await;
    assert_eq!(
        s.driver.stop(&h, WAIT).await.unwrap(),
        StopOutcome::Graceful
    );
}

#[test]
fn refuses_to_signal_everyone_or_itself() {
    assert_eq!(signalable_pgid(0), None);
    assert_eq!(signalable_pgid(1), None);
    assert_eq!(signalable_pgid(u32::MAX), None);
    let own_group = nix::unistd::getpgrp().as_raw().unsigned_abs();
    assert_eq!(signalable_pgid(own_group), None);
}

#[test]
fn free_port_returns_a_bindable_port() {
    let port = free_port(LOCALHOST).unwrap();
    assert_ne!(port, 0);
    std::net::TcpListener::bind((LOCALHOST, port)).unwrap();
}

/// The trait's futures are `Send`, so generic controller code can spawn them.
#[tokio::test]
async fn driver_futures_are_send() {
    async fn start_on_a_task<D: Driver>(
        driver: Arc<D>,
        spec: LaunchSpec,
    ) -> Result<InstanceHandle, DriverError> {
        tokio::spawn(async move { driver.start(&spec).await })
            .await
            .expect("start task panicked")
    }
    let s = Scratch::new("send");
    let driver = Arc::new(s.driver.clone());
    let h = start_on_a_task(driver.clone(), s.spec("i1", &["sleep", "100"]))
        .await
        .unwrap();
    let d = driver.clone();
    let outcome = tokio::spawn(async move { d.stop(&h, WAIT).await })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome, StopOutcome::Graceful);
}

#[tokio::test]
async fn samples_cpu_time_and_memory_of_a_live_instance() {
    let s = Scratch::new("sample");
    let h = s
        .driver
        .start(&s.spec("busy", &["sh", "-c", "while :; do :; done"]))
        .await
        .unwrap();
    eventually("some CPU time", || {
        s.driver.sample_now(&h).is_some_and(|r| r.cpu_ms > 0)
    })
    .await;
    let r = s.driver.sample_now(&h).unwrap();
    assert!(r.memory_bytes > 0, "{r:?}");
    assert!(
        r.memory_peak_bytes.is_some_and(|p| p >= r.memory_bytes),
        "{r:?}"
    );
    s.driver.stop(&h, WAIT).await.unwrap();
    assert_eq!(
        s.driver.sample_now(&h),
        None,
        "a stopped instance has no sample"
    );
}
