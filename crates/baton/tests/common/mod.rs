//! Test harness: runs the real `baton serve` binary in a temporary data dir on
//! a free port, drives it with the real CLI, and cleans up every process it
//! started (instances and router included) when dropped.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub use baton::loadgen::{self, LoadConfig, LoadReport};
use serde_json::Value;

pub const BATON: &str = env!("CARGO_BIN_EXE_baton");

/// A port that was free a moment ago and that this test process has not handed
/// out before: the OS may give the same port to two binds of port 0 in a row once
/// the first is released, and a test's API and app address must differ.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Poll `cond` until it holds or `timeout` passes.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

pub struct Harness {
    pub dir: PathBuf,
    pub api: SocketAddr,
    pub listen: SocketAddr,
    server: Option<Child>,
    /// Extra arguments of `baton serve` (e.g. `-c FILE`), kept for restarts.
    pub serve_args: Vec<String>,
    /// Extra environment of `baton serve`.
    pub serve_env: Vec<(String, String)>,
    /// The baton binary `serve` runs (another build of baton, for upgrades).
    pub exe: PathBuf,
    /// The token the CLI uses: `tester`, an admin token made with the admin
    /// token the first start wrote to the data dir (see [`Harness::token`]).
    token: std::sync::OnceLock<String>,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl Harness {
    pub fn new() -> Self {
        let mut h = Self::without_server();
        h.start_server();
        h
    }

    /// A harness whose control plane is not started yet (see [`Harness::start_server`]).
    pub fn without_server() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "baton-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let dir = dir.canonicalize().expect("canonical temp dir");
        Harness {
            api: SocketAddr::from(([127, 0, 0, 1], free_port())),
            listen: SocketAddr::from(([127, 0, 0, 1], free_port())),
            dir,
            server: None,
            serve_args: Vec::new(),
            serve_env: Vec::new(),
            exe: PathBuf::from(BATON),
            token: std::sync::OnceLock::new(),
        }
    }

    pub fn server_url(&self) -> String {
        format!("http://{}", self.api)
    }

    pub fn start_server(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("serve.log"))
            .expect("serve log");
        let child = Command::new(&self.exe)
            .args(["serve", "--data-dir"])
            .arg(&self.dir)
            .args(["--api", &self.api.to_string()])
            .args(&self.serve_args)
            .envs(self.serve_env.iter().map(|(k, v)| (k, v)))
            .env("BATON_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start baton serve");
        self.server = Some(child);
        let api = self.api;
        wait_until("the API to answer", Duration::from_secs(60), || {
            std::net::TcpStream::connect(api).is_ok()
        });
    }

    /// kill -9 the control plane (the router and instances keep running).
    pub fn kill9_server(&mut self) {
        if let Some(mut c) = self.server.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The admin token the first start of this harness's control plane wrote.
    pub fn admin_token(&self) -> String {
        let path = self.dir.join("admin.token");
        wait_until("the admin token", Duration::from_secs(60), || path.exists());
        std::fs::read_to_string(&path)
            .expect("read the admin token")
            .trim()
            .to_string()
    }

    /// The token the CLI of this harness uses: `tester` (role admin), created
    /// on first use with the admin token, so histories name `tester`.
    pub fn token(&self) -> String {
        self.token
            .get_or_init(|| {
                let out = Command::new(BATON)
                    .args(["--server", &self.server_url(), "token", "create", "tester"])
                    .args(["--role", "admin"])
                    .env("BATON_TOKEN", self.admin_token())
                    .env("NO_COLOR", "1")
                    .output()
                    .expect("run baton token create");
                assert!(
                    out.status.success(),
                    "creating the tester token: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                String::from_utf8_lossy(&out.stdout).trim().to_string()
            })
            .clone()
    }

    /// The CLI with this control plane's address and token.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(BATON);
        cmd.args(["--server", &self.server_url()])
            .env("BATON_TOKEN", self.token())
            .env("NO_COLOR", "1");
        cmd
    }

    /// Run the CLI against this control plane.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("run baton")
    }

    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "baton {args:?} failed ({:?}):\n{}\n{}\n--- serve.log tail ---\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.serve_log_tail()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn serve_log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("serve.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// `baton history APP --json`, newest first.
    pub fn history(&self, app: &str) -> Vec<Value> {
        self.json_list(&["history", app, "--json"])
    }

    /// `baton events APP --json`, oldest first.
    pub fn events(&self, app: &str) -> Vec<Value> {
        self.json_list(&["events", app, "--json"])
    }

    fn json_list(&self, args: &[&str]) -> Vec<Value> {
        serde_json::from_str::<Value>(&self.cli_ok(args))
            .expect("JSON from the CLI")
            .as_array()
            .expect("a JSON list")
            .clone()
    }

    pub fn status(&self, app: &str) -> Value {
        let out = self.cli_ok(&["status", app, "--json"]);
        serde_json::from_str(&out).expect("status --json is JSON")
    }

    /// Write a spec file for the sample service with a rolling strategy (one surge
    /// instance, none unavailable) and return its path.
    pub fn write_spec(&self, name: &str, instances: u32, strategy_extra: &str) -> PathBuf {
        self.write_spec_with(
            name,
            instances,
            "  rolling:\n    max_surge: 1\n    max_unavailable: 0",
            strategy_extra,
        )
    }

    /// Write a spec file for the sample service with `strategy` (the YAML under
    /// `strategy:`) followed by `extra` top-level YAML, and return its path.
    pub fn write_spec_with(
        &self,
        name: &str,
        instances: u32,
        strategy: &str,
        extra: &str,
    ) -> PathBuf {
        self.write_spec_on(name, self.listen, instances, strategy, extra)
    }

    /// Like [`Harness::write_spec_with`], listening on `listen`.
    pub fn write_spec_on(
        &self,
        name: &str,
        listen: SocketAddr,
        instances: u32,
        strategy: &str,
        extra: &str,
    ) -> PathBuf {
        let yaml = format!(
            r#"name: {name}
environment: test
listen: {listen}
instances: {instances}
drain_timeout: 5s
driver:
  process:
    command: ["{baton}", "sample", "--port", "{{port}}", "--version", "{{version}}"]
    stop_grace: 5s
readiness:
  path: /healthz
  interval: 200ms
  timeout: 1s
  success_threshold: 1
  failure_threshold: 2
strategy:
{strategy}
{extra}
"#,
            baton = BATON,
        );
        let path = self.dir.join(format!("{name}.yaml"));
        std::fs::write(&path, yaml).expect("write spec");
        path
    }

    /// Apply a spec, deploy v1 and wait until it serves.
    pub fn bring_up(&self, name: &str, instances: u32, strategy_extra: &str) {
        let spec = self.write_spec(name, instances, strategy_extra);
        self.cli_ok(&["apply", "-f", spec.to_str().expect("utf-8 path")]);
        self.cli_ok(&["deploy", name, "v1", "--wait"]);
        let s = self.status(name);
        assert_eq!(s["phase"], "stable", "{s}");
        assert_eq!(s["stable_version"], "v1");
    }

    pub fn load(&self, max_requests: u64) -> LoadConfig {
        let mut cfg = LoadConfig::new(self.listen);
        cfg.keepalive_workers = 4;
        cfg.fresh_workers = 2;
        cfg.max_requests = max_requests;
        cfg.max_duration = Duration::from_secs(240);
        cfg
    }

    /// Live processes this control plane owns (instances), as group leaders.
    pub fn owned_instance_pids(&self) -> Vec<u32> {
        processes_with_env("BATON_OWNER", &self.dir.to_string_lossy())
    }

    pub fn instance_ids_running(&self) -> Vec<String> {
        let mut ids = Vec::new();
        for pid in self.owned_instance_pids() {
            if let Some(id) = env_of(pid, "BATON_INSTANCE_ID") {
                ids.push(id);
            }
        }
        ids.sort();
        ids
    }
}

impl Harness {
    /// The pid of the running `baton serve`, if this harness started one.
    pub fn server_pid(&self) -> Option<u32> {
        self.server.as_ref().map(Child::id)
    }

    /// Whether the `baton serve` this harness started has exited.
    pub fn server_exited(&mut self) -> bool {
        self.server
            .as_mut()
            .is_none_or(|c| c.try_wait().ok().flatten().is_some())
    }

    /// Router processes of this data dir.
    pub fn router_pids(&self) -> Vec<u32> {
        let socket = self.dir.join("router.sock");
        processes_with_cmdline_part(&socket.to_string_lossy())
            .into_iter()
            .filter(|p| !is_zombie_or_gone(*p))
            .collect()
    }
}

/// `upgrade_windows:` YAML with one one-minute window twelve hours from now
/// in `timezone`: closed now, whatever the time.
pub fn closed_window_yaml(timezone: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is past 1970")
        .as_secs();
    let minute_of_day = (now / 60 + 12 * 60) % (24 * 60);
    let (hh, mm) = (minute_of_day / 60, minute_of_day % 60);
    let (eh, em) = (((minute_of_day + 1) % 1440) / 60, (minute_of_day + 1) % 60);
    format!(
        "upgrade_windows:\n  timezone: {timezone}\n  allowed:\n    - {{ start: \"{hh:02}:{mm:02}\", end: \"{eh:02}:{em:02}\" }}"
    )
}

/// Wait until `app` is stable on `version` (after a rollout ran on).
pub fn wait_until_stable_on(h: &Harness, app: &str, version: &str, what: &str) {
    wait_until(what, Duration::from_secs(120), || {
        let s = h.status(app);
        s["phase"] == "stable" && s["stable_version"] == version
    });
}

/// Wait until a rollout of `app` from v1 to v2 is half-way: some v2 instance
/// serves and some v1 instance is still there.
pub fn wait_until_half_way(h: &Harness, app: &str) {
    wait_until(
        "the rollout to be half-way",
        Duration::from_secs(60),
        || {
            let s = h.status(app);
            let inst = s["instances"].as_array().cloned().unwrap_or_default();
            inst.iter()
                .any(|i| i["version"] == "v2" && i["ready"] == true)
                && inst.iter().any(|i| i["version"] == "v1")
        },
    );
}

/// Run a command to its end, killing it if it runs past `timeout`.
pub fn output_within(cmd: &mut Command, timeout: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => out.expect("wait for the command"),
        Err(_) => {
            kill_group(pid);
            panic!("command did not end within {timeout:?}: {cmd:?}");
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.kill9_server();
        for pid in self.owned_instance_pids() {
            kill_group(pid);
        }
        let socket = self.dir.join("router.sock");
        for pid in processes_with_cmdline_part(&socket.to_string_lossy()) {
            kill_group(pid);
        }
        // SSH master connections to the hosts of a fleet (their control
        // sockets live in the data dir).
        let hosts = self.dir.join("hosts");
        for pid in processes_with_cmdline_part(&hosts.to_string_lossy()) {
            kill_group(pid);
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("test data kept in {}", self.dir.display());
        }
    }
}

/// SIGKILL a process and, when it leads one, its process group. Done with the
/// syscalls directly: the `kill` utility's parsing of negative ids differs
/// between versions and can end up signalling every process.
fn kill_group(pid: u32) {
    use nix::sys::signal::{Signal, kill, killpg};
    use nix::unistd::Pid;
    let Ok(raw) = i32::try_from(pid) else { return };
    if raw <= 1 {
        return;
    }
    if group_leader(pid) {
        let _ = killpg(Pid::from_raw(raw), Signal::SIGKILL);
    }
    let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
}

fn pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn is_zombie_or_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            .unwrap_or(true),
        Err(_) => true,
    }
}

fn group_leader(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let rest = stat.rsplit_once(')')?.1;
            let pgid: u32 = rest.split_whitespace().nth(2)?.parse().ok()?;
            Some(pgid == pid)
        })
        .unwrap_or(false)
}

pub fn env_of(pid: u32, key: &str) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    raw.split(|b| *b == 0).find_map(|kv| {
        let kv = std::str::from_utf8(kv).ok()?;
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.to_string())
    })
}

pub fn processes_with_env(key: &str, value: &str) -> Vec<u32> {
    pids()
        .into_iter()
        .filter(|&p| env_of(p, key).as_deref() == Some(value))
        .filter(|&p| group_leader(p) && !is_zombie_or_gone(p))
        .collect()
}

pub fn processes_with_cmdline_part(part: &str) -> Vec<u32> {
    pids()
        .into_iter()
        .filter(|&p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(part))
                .unwrap_or(false)
        })
        .filter(|&p| !is_zombie_or_gone(p))
        .collect()
}

/// Fetch `/` through the router once; returns (status, X-Version).
pub fn get_version(addr: SocketAddr) -> (u16, String) {
    get_version_with(addr, &[])
}

/// Fetch `/` with extra request headers; returns (status, X-Version).
pub fn get_version_with(addr: SocketAddr, headers: &[(&str, &str)]) -> (u16, String) {
    get_path_with(addr, "/", headers)
}

/// Fetch `path` through the router with extra request headers; returns (status,
/// X-Version).
pub fn get_path_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect router");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n"
    )
    .expect("write");
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let version = buf
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("x-version")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    (status, version)
}

/// Run a load in a tokio runtime of its own while `during` runs on this thread.
pub fn with_load<T>(
    cfg: LoadConfig,
    min_requests: u64,
    during: impl FnOnce() -> T,
) -> (T, LoadReport) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let load = rt.block_on(async { loadgen::start(cfg) });
    assert!(
        rt.block_on(load.wait_for_requests(200, Duration::from_secs(30))),
        "load did not get going"
    );
    let out = during();
    rt.block_on(load.wait_for_requests(min_requests, Duration::from_secs(180)));
    let report = rt.block_on(load.finish());
    (out, report)
}

pub fn assert_no_failures(report: &LoadReport) {
    assert_eq!(
        report.failures, 0,
        "{} of {} requests failed; first failures: {:#?}",
        report.failures, report.requests, report.failure_samples
    );
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// kill -9 a process and, when it leads one, its process group (an instance).
pub fn kill9(pid: u32) {
    kill_group(pid);
}

/// Live instances of this control plane as (instance id, group leader pid), sorted.
pub fn instance_pids_by_id(h: &Harness) -> Vec<(String, u32)> {
    let mut out: Vec<(String, u32)> = h
        .owned_instance_pids()
        .into_iter()
        .filter_map(|pid| Some((env_of(pid, "BATON_INSTANCE_ID")?, pid)))
        .collect();
    out.sort();
    out
}

/// Asserts that none of `events` started an instance.
#[track_caller]
pub fn assert_no_instance_started(events: &[Value], what: &str) {
    assert!(
        !events.iter().any(|e| e["kind"] == "instance_started"),
        "{what} started an instance: {events:?}"
    );
}
