//! A private Podman for one test: its own API service, storage, network and
//! configuration in a temporary directory, torn down (containers, processes, mounts,
//! files) when dropped.
//!
//! Why a service per test: tests run in parallel and each looks at "every container of
//! this owner"; separate stores keep them from seeing (or removing) each other's. Why a
//! network per test: services sharing Podman's default bridge would tear it down under
//! each other when their last container stops.
//!
//! Images are built from local files only (`scripts/sample-image.sh`), never pulled.
//!
//! Without `podman` on the PATH, [`Podman::start`] prints "skipped: podman not
//! installed" and returns `None`, unless `BATON_REQUIRE_PODMAN=1`, which makes it fail.
//!
//! [`Podman::start_through`] runs the service through a command prefix, such as
//! `nsenter --net=/run/netns/NAME` for a fleet test host: its containers' bridge and
//! published ports are then that namespace's. (`nsenter --net` and not `ip netns
//! exec`: the latter also gives the service a mount namespace of its own, where its
//! overlay mounts would be out of reach of the clean-up.)

#![allow(dead_code)]

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// How long the API service may take to open its socket.
const SERVICE_DEADLINE: Duration = Duration::from_secs(60);

/// A running `podman system service` with a store of its own.
pub struct Podman {
    /// Everything of this Podman lives here.
    pub dir: PathBuf,
    /// `unix://.../podman.sock`.
    pub endpoint: String,
    service: Child,
    env: Vec<(&'static str, PathBuf)>,
}

impl Podman {
    /// Starts a private Podman, or `None` (test skipped) when podman is not installed.
    pub fn start() -> Option<Podman> {
        Podman::start_through(&[])
    }

    /// Like [`Podman::start`], with the service run as `PREFIX... podman ...`: `prefix`
    /// must exec podman in place (as `nsenter` does), so that the service stays the
    /// leader of the process group Drop stops.
    pub fn start_through(prefix: &[&str]) -> Option<Podman> {
        if !on_path("podman") {
            if std::env::var("BATON_REQUIRE_PODMAN").as_deref() == Ok("1") {
                panic!(
                    "BATON_REQUIRE_PODMAN=1 but podman is not installed (apt-get install podman)"
                );
            }
            eprintln!("skipped: podman not installed (set BATON_REQUIRE_PODMAN=1 to fail instead)");
            return None;
        }
        Some(Podman::start_in(fresh_dir(), prefix))
    }

    fn start_in(dir: PathBuf, prefix: &[&str]) -> Podman {
        let net = network_number();
        for sub in ["storage", "run", "tmp", "networks", "logs"] {
            fs::create_dir_all(dir.join(sub)).expect("create podman test dirs");
        }
        let d = dir.display();
        // - runc, cgroupfs: what the machines of this project run; no systemd here.
        // - events_logger=file: there is no journald.
        // - ulimits: by default Podman asks the runtime for more open files and
        //   processes than the service itself has here (it runs with nofile 20000 and
        //   sets its own nproc to 32768), and without CAP_SYS_RESOURCE (this sandbox
        //   lacks it) the runtime cannot raise them: containers fail with "error setting
        //   rlimits". So ask for exactly what there is.
        // - tmp_dir, lock_type=file: no state shared with other Podmans on the machine.
        // - a network of our own (bridge btnN, subnet 10.89.N.0/24), see the module doc.
        let containers_conf = format!(
            r#"[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "{d}/tmp"
lock_type = "file"

[network]
network_config_dir = "{d}/networks"
default_network = "baton-t{net}"
"#
        );
        let storage_conf = format!(
            r#"[storage]
driver = "overlay"
graphroot = "{d}/storage"
runroot = "{d}/run"
"#
        );
        let network = format!(
            r#"{{
  "name": "baton-t{net}",
  "id": "{id:064x}",
  "driver": "bridge",
  "network_interface": "btn{net}",
  "created": "2026-01-01T00:00:00Z",
  "subnets": [{{"subnet": "10.89.{net}.0/24", "gateway": "10.89.{net}.1"}}],
  "ipv6_enabled": false,
  "internal": false,
  "dns_enabled": false,
  "ipam_options": {{"driver": "host-local"}}
}}
"#,
            id = 0xba70_0000u64 + u64::from(net),
        );
        fs::write(dir.join("containers.conf"), containers_conf).expect("write containers.conf");
        fs::write(dir.join("storage.conf"), storage_conf).expect("write storage.conf");
        fs::write(dir.join(format!("networks/baton-t{net}.json")), network).expect("write network");
        let env = vec![
            ("CONTAINERS_CONF", dir.join("containers.conf")),
            ("CONTAINERS_STORAGE_CONF", dir.join("storage.conf")),
        ];

        if !prefix.is_empty() {
            fixed_bridge(prefix, net);
        }

        let socket = dir.join("podman.sock");
        let endpoint = format!("unix://{}", socket.display());
        let log = fs::File::create(dir.join("service.log")).expect("create service log");
        let mut service = match prefix.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg("podman");
                cmd
            }
            None => Command::new("podman"),
        };
        let service = service
            .arg("--root")
            .arg(dir.join("storage"))
            .arg("--runroot")
            .arg(dir.join("run"))
            .args(["system", "service", "--time=0", &endpoint])
            .envs(env.iter().map(|(k, v)| (k, v)))
            // conmon (2.1.6) drops its `oom` marker file into its working directory
            // when a container is OOM-killed (where Podman 4.3 does not look for it):
            // keep that out of the source tree.
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            // Its own group, so Drop can stop it and whatever it forked in one signal.
            .process_group(0)
            .spawn()
            .expect("start podman system service");
        let mut podman = Podman {
            dir,
            endpoint,
            service,
            env,
        };
        podman.wait_for_socket(&socket);
        podman
    }

    /// Polls until the service accepts connections on its socket.
    fn wait_for_socket(&mut self, socket: &Path) {
        let deadline = Instant::now() + SERVICE_DEADLINE;
        let mut pause = Duration::from_millis(5);
        loop {
            if std::os::unix::net::UnixStream::connect(socket).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.service.try_wait() {
                panic!(
                    "podman system service exited ({status}) before opening its socket:\n{}",
                    self.service_log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "podman system service did not open {} within {SERVICE_DEADLINE:?}:\n{}",
                socket.display(),
                self.service_log()
            );
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    pub fn service_log(&self) -> String {
        fs::read_to_string(self.dir.join("service.log")).unwrap_or_default()
    }

    /// `podman` talking to this service.
    pub fn cli(&self) -> Command {
        let mut cmd = Command::new("podman");
        cmd.args(["--url", &self.endpoint])
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Runs `podman ARGS` against this service; its stdout, trimmed. Panics on failure.
    pub fn run(&self, args: &[&str]) -> String {
        output_of(self.cli().args(args), &format!("podman {}", args.join(" ")))
    }

    /// Like [`Podman::run`], but `None` when podman fails.
    pub fn try_run(&self, args: &[&str]) -> Option<String> {
        let out = self.cli().args(args).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Builds the sample-service image `tag` in this Podman's store with
    /// `scripts/sample-image.sh` and extra Dockerfile `changes`; returns its id
    /// (`sha256:...`).
    pub fn sample_image(&self, tag: &str, changes: &[&str]) -> String {
        let script = workspace_root().join("scripts/sample-image.sh");
        let mut cmd = Command::new("bash");
        cmd.arg(&script)
            .arg(sample_binary())
            .arg(tag)
            .args(changes)
            .env("PODMAN", format!("podman --url {}", self.endpoint))
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        let out = output_of(&mut cmd, &format!("sample-image.sh {tag}"));
        let id = out.lines().last().unwrap_or_default();
        format!("sha256:{}", id.trim_start_matches("sha256:"))
    }

    /// Copies image `tag` from this Podman's store into `other`'s (`podman save`, then
    /// `podman load`): the same image id there, though Podman gives it another repo
    /// digest.
    pub fn copy_image(&self, tag: &str, other: &Podman) {
        let archive = self.dir.join("tmp").join("copy.tar");
        let archive_str = archive.to_str().expect("utf-8 path");
        self.run(&["save", "--quiet", "-o", archive_str, tag]);
        other.run(&["load", "--quiet", "-i", archive_str]);
        let _ = fs::remove_file(&archive);
    }

    /// A log file path for an instance.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{name}.log"))
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Containers first, through the service, so that it also tears down their
        // network; then the service; then what it mounted; then the files.
        let _ = self
            .cli()
            .args(["rm", "--all", "--force", "--time", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let group = Pid::from_raw(self.service.id() as i32);
        let _ = killpg(group, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.service.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = killpg(group, Signal::SIGKILL);
        let _ = self.service.wait();
        // Anything the service left (it died early, say), straight from the store.
        let _ = Command::new("podman")
            .arg("--root")
            .arg(self.dir.join("storage"))
            .arg("--runroot")
            .arg(self.dir.join("run"))
            .args(["rm", "--all", "--force", "--time", "0"])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        for mount in mounts_under(&self.dir) {
            let _ = Command::new("umount")
                .arg("--lazy")
                .arg(&mount)
                .stderr(Stdio::null())
                .status();
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("cannot remove {}: {e}", self.dir.display());
        }
    }
}

/// Makes the network's bridge `btnN` beforehand, in the namespace `prefix` enters,
/// with a fixed MAC address, as udev's `MACAddressPolicy=persistent` does on a
/// machine that runs it (nothing does in a test host's namespace).
///
/// Why: a bridge whose MAC nobody set takes the lowest of its ports', so it changes
/// when the container with that port goes. Containers keep the gateway's old MAC in
/// their neighbour tables, and the answers of those whose clients are not
/// masqueraded to the gateway (a router reaching them at the host's own address, not
/// 127.0.0.1) are lost until the entry is checked again, some 20 s later. Seen with
/// netavark 1.4. Netavark uses a bridge that exists, and removes it with the
/// network's last container.
fn fixed_bridge(prefix: &[&str], net: u32) {
    let bridge = format!("btn{net}");
    let mac = format!("02:ba:70:00:{:02x}:{:02x}", net >> 8, net & 0xff);
    let gateway = format!("10.89.{net}.1/24");
    for args in [
        &["link", "add", &bridge, "type", "bridge"][..],
        &["link", "set", &bridge, "address", &mac],
        &["addr", "add", &gateway, "dev", &bridge],
        &["link", "set", &bridge, "up"],
    ] {
        let (program, rest) = prefix.split_first().expect("a prefix");
        let mut cmd = Command::new(program);
        cmd.args(rest).arg("ip").args(args);
        output_of(&mut cmd, &format!("ip {}", args.join(" ")));
    }
}

fn output_of(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// A new empty directory; short, since a unix socket path must fit in 108 bytes.
fn fresh_dir() -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("baton-pm-{}-{n}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create podman test dir");
    dir
}

/// A network number (bridge `btnN`, subnet `10.89.N.0/24`) no other test of this
/// process took and no bridge on the machine uses.
fn network_number() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id() % 200;
    loop {
        let n = 10 + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % 240;
        if !Path::new(&format!("/sys/class/net/btn{n}")).exists() {
            return n;
        }
    }
}

/// Mount points at or below `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = text
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The `baton-sample` binary of this build's profile, built once per test process.
/// `BATON_SAMPLE_BIN` overrides it.
pub fn sample_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        if let Some(bin) = std::env::var_os("BATON_SAMPLE_BIN") {
            return PathBuf::from(bin);
        }
        // This test runs as <target>/<profile>/deps/containers-<hash>.
        let exe = std::env::current_exe().expect("current exe");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test binary in <target>/<profile>/deps")
            .to_owned();
        let target_dir = profile_dir.parent().expect("target dir");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        build
            .args([
                "build",
                "-p",
                "baton-sample",
                "--bin",
                "baton-sample",
                "--target-dir",
            ])
            .arg(target_dir)
            .current_dir(workspace_root());
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build");
        assert!(status.success(), "cargo build -p baton-sample failed");
        profile_dir.join("baton-sample")
    })
}
