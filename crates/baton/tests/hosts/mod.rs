//! Real SSH "hosts" for end-to-end tests, made of Linux network namespaces.
//!
//! A [`Fleet`] of n hosts is a bridge in the root namespace (`btnsK`, address
//! `198.X.Y.1/24`) and n network namespaces `btnsKhI`, each joined to the bridge by a
//! veth pair (`btnsKhI` on the bridge, `eth0` inside) with address `198.X.Y.(10+I)`,
//! `lo` up and no default route. Each host runs its own `sshd` (fresh ed25519 host
//! key, root login with the fleet's one client key only) on its address, port 22.
//! The root namespace reaches every host directly over the bridge.
//!
//! Why namespaces and not containers: a host needs only its own addresses, ports and
//! firewall, so SSH to it, a connection cut by iptables or a killed process behave as
//! on a real machine, while its files stay shared with the test.
//!
//! Concurrent fleets (tests run in parallel, and several test binaries at once) never
//! collide: the fleet's slot K (0..512) picks both its names and its /24 out of the
//! benchmarking range 198.18.0.0/15, and a slot is claimed by creating its bridge,
//! which the kernel refuses with EEXIST when another fleet holds it.
//!
//! Dropping the fleet kills every process left in its namespaces (by pid, after
//! checking the pid is in that namespace), deletes the namespaces, veths, bridge and
//! `/etc/netns/NAME`, and removes its directory; its iptables rules live in its
//! namespaces and go with them. A test killed by a signal cannot run that: see
//! DEVELOPERS.md for the manual clean-up.
//!
//! Without root (with `CAP_NET_ADMIN` and `CAP_SYS_ADMIN`), `ip`, `sshd`, `ssh`,
//! `ssh-keygen` or `iptables`, [`Fleet::create`] prints "skipped: ..." and returns
//! `None`, unless `BATON_REQUIRE_SSH=1`, which makes it fail.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// How long an sshd may take to answer after it is started.
const SSHD_DEADLINE: Duration = Duration::from_secs(60);

/// Slots: one /24 each out of 198.18.0.0/15.
const SLOTS: u32 = 512;

/// One host of a [`Fleet`].
#[derive(Debug, Clone)]
pub struct Host {
    /// Logical name, `h0`, `h1`, ...: the host's index in [`Fleet::hosts`].
    pub name: String,
    /// Its network namespace (also the name of its veth on the bridge).
    pub netns: String,
    pub address: IpAddr,
    pub ssh_port: u16,
    /// `SHA256:...`, as `ssh-keygen -lf` prints it.
    pub host_key_fingerprint: String,
    /// `ADDRESS ssh-ed25519 KEY`, a line of a known_hosts file.
    pub known_hosts_line: String,
}

/// n SSH hosts in network namespaces, torn down when dropped.
pub struct Fleet {
    slot: u32,
    bridge: String,
    /// Hosts asked for; Drop cleans up all their names, created or not.
    count: usize,
    dir: PathBuf,
    client_key: PathBuf,
    hosts: Vec<Host>,
    /// Each host's listening sshd (None while stopped).
    sshd: Vec<Mutex<Option<Child>>>,
    /// What [`Fleet::spawn`] started and is not yet reaped.
    spawned: Mutex<Vec<Child>>,
    sshd_path: PathBuf,
}

impl Fleet {
    /// Creates `n` hosts with sshd answering on each, or `None` (test skipped) when
    /// this machine cannot make them.
    pub fn create(n: usize) -> Option<Fleet> {
        assert!(
            n <= 245,
            "a fleet has at most 245 hosts (.10 to .254 of its /24)"
        );
        let (missing, sshd_path) = prerequisites();
        if !missing.is_empty() {
            let missing = missing.join("; ");
            if std::env::var("BATON_REQUIRE_SSH").as_deref() == Ok("1") {
                panic!(
                    "BATON_REQUIRE_SSH=1 but SSH test hosts cannot be made: {missing} \
                     (apt-get install openssh-server openssh-client iproute2 iptables; run as root)"
                );
            }
            eprintln!(
                "skipped: SSH test hosts cannot be made: {missing} (set BATON_REQUIRE_SSH=1 to fail instead)"
            );
            return None;
        }
        let sshd_path = sshd_path.expect("sshd found when nothing is missing");
        let slot = claim_slot();
        let dir = std::env::temp_dir().join(format!("baton-hosts-{}-{slot}", std::process::id()));
        // From here on a panic unwinds through Fleet's Drop, which cleans up.
        let mut fleet = Fleet {
            slot,
            bridge: format!("btns{slot}"),
            count: n,
            client_key: dir.join("client_key"),
            dir,
            hosts: Vec::with_capacity(n),
            sshd: Vec::with_capacity(n),
            spawned: Mutex::new(Vec::new()),
            sshd_path,
        };
        fleet.build();
        Some(fleet)
    }

    fn build(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
        fs::create_dir_all(self.dir.join("sshd")).expect("create fleet dir");
        // sshd's privilege separation directory, shared by every sshd on the machine.
        fs::create_dir_all("/run/sshd").expect("create /run/sshd");

        let gateway = self.bridge_address();
        ip(&["addr", "add", &format!("{gateway}/24"), "dev", &self.bridge]);
        ip(&["link", "set", &self.bridge, "up"]);
        // Who owns it, for whoever finds it left behind (`ip -d link show`).
        let owner = format!(
            "baton test fleet of pid {} in {}",
            std::process::id(),
            self.dir.display()
        );
        ip(&["link", "set", &self.bridge, "alias", &owner]);

        keygen(&self.client_key, "baton-fleet-client");
        // OpenSSH 9.8 and later slow down addresses whose connections fail (every
        // test connection comes from the bridge address); older ones do not know
        // the option that turns this off.
        let penalties = sshd_version(&self.sshd_path) >= (9, 8);
        let machine = fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();

        for i in 0..self.count {
            let name = format!("h{i}");
            let netns = self.netns_name(i);
            let address = self.address_of(i);
            ip(&["netns", "add", &netns]);
            ip(&[
                "link", "add", &netns, "type", "veth", "peer", "name", "eth0", "netns", &netns,
            ]);
            ip(&["link", "set", &netns, "master", &self.bridge, "up"]);
            ip(&[
                "-n",
                &netns,
                "addr",
                "add",
                &format!("{address}/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &netns, "link", "set", "eth0", "up"]);
            ip(&["-n", &netns, "link", "set", "lo", "up"]);
            // `ip netns exec` bind-mounts this over /etc/hosts: the host's own name
            // (and the machine's, which it shares) resolve without asking a DNS
            // server it cannot reach.
            let hosts = format!(
                "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{address}\t{name} {netns} {}\n",
                machine.trim()
            );
            write_netns_hosts(&netns, &hosts);

            let sshd_dir = self.sshd_dir(i);
            fs::create_dir_all(&sshd_dir).expect("create sshd dir");
            let key = sshd_dir.join("ssh_host_ed25519_key");
            keygen(&key, &name);
            let public = fs::read_to_string(key.with_extension("pub")).expect("read host key");
            let mut fields = public.split_whitespace();
            let (kind, blob) = (
                fields.next().expect("host key type"),
                fields.next().expect("host key"),
            );
            let fingerprint = run(
                Command::new("ssh-keygen")
                    .arg("-lf")
                    .arg(key.with_extension("pub")),
                "ssh-keygen -lf",
            );
            let fingerprint = fingerprint
                .split_whitespace()
                .nth(1)
                .expect("ssh-keygen -lf prints BITS FINGERPRINT COMMENT (TYPE)")
                .to_owned();
            fs::write(
                sshd_dir.join("sshd_config"),
                self.sshd_config(i, address, &key, penalties),
            )
            .expect("write sshd_config");
            self.hosts.push(Host {
                name,
                netns,
                address: IpAddr::V4(address),
                ssh_port: 22,
                host_key_fingerprint: fingerprint,
                known_hosts_line: format!("{address} {kind} {blob}"),
            });
            self.sshd.push(Mutex::new(None));
        }
        let known: String = self
            .hosts
            .iter()
            .map(|h| format!("{}\n", h.known_hosts_line))
            .collect();
        fs::write(self.known_hosts_file(), known).expect("write known_hosts");

        // Start every sshd before waiting for any: they come up in parallel.
        for i in 0..self.count {
            *self.sshd[i].lock().unwrap() = Some(self.spawn_sshd(i));
        }
        for i in 0..self.count {
            self.wait_for_sshd(i);
        }
    }

    fn sshd_config(&self, i: usize, address: Ipv4Addr, key: &Path, penalties: bool) -> String {
        let dir = self.sshd_dir(i);
        let mut config = format!(
            "ListenAddress {address}:22\n\
             HostKey {key}\n\
             PidFile {pid}\n\
             AuthorizedKeysFile {authorized}\n\
             PermitRootLogin prohibit-password\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             UsePAM no\n\
             StrictModes no\n\
             Subsystem sftp internal-sftp\n\
             PrintMotd no\n\
             # Tests open many connections (and multiplexed sessions) at once;\n\
             # by default sshd drops unauthenticated ones beyond 10 at random.\n\
             MaxStartups 200\n\
             MaxSessions 100\n",
            key = key.display(),
            pid = dir.join("sshd.pid").display(),
            authorized = self.client_key.with_extension("pub").display(),
        );
        if penalties {
            config.push_str("PerSourcePenalties no\n");
        }
        config
    }

    fn spawn_sshd(&self, i: usize) -> Child {
        let dir = self.sshd_dir(i);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("sshd.log"))
            .expect("open sshd log");
        // `ip netns exec` execs sshd in place: the child is sshd itself, in a
        // process group of its own (sshd puts each connection in a session of
        // its own, so stopping it leaves open connections alone, as on a server).
        Command::new("ip")
            .args(["netns", "exec", &self.hosts[i].netns])
            .arg(&self.sshd_path)
            .args(["-D", "-e", "-f"])
            .arg(dir.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone sshd log"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("start sshd")
    }

    /// Polls until host i's sshd sends its banner.
    fn wait_for_sshd(&self, i: usize) {
        let host = &self.hosts[i];
        let addr = SocketAddr::new(host.address, host.ssh_port);
        let deadline = Instant::now() + SSHD_DEADLINE;
        let mut pause = Duration::from_millis(5);
        loop {
            if ssh_banner(addr) {
                return;
            }
            if let Some(child) = self.sshd[i].lock().unwrap().as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "sshd of {} exited ({status}) before answering:\n{}",
                    host.name,
                    self.sshd_log(i)
                );
            }
            assert!(
                Instant::now() < deadline,
                "sshd of {} did not answer on {addr} within {SSHD_DEADLINE:?}:\n{}",
                host.name,
                self.sshd_log(i)
            );
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The private key every host accepts for root (ed25519, no passphrase).
    pub fn client_key(&self) -> &Path {
        &self.client_key
    }

    /// A known_hosts file with every host's key.
    pub fn known_hosts_file(&self) -> PathBuf {
        self.dir.join("known_hosts")
    }

    /// A directory the fleet owns (removed on drop): put per-host data under it.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The bridge's address: the root namespace as the hosts see it.
    pub fn bridge_address(&self) -> Ipv4Addr {
        self.subnet_address(1)
    }

    /// The bridge's interface name.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// sshd's log of host i (its stderr, across restarts).
    pub fn sshd_log(&self, i: usize) -> String {
        fs::read_to_string(self.sshd_dir(i).join("sshd.log")).unwrap_or_default()
    }

    /// `ssh` to root on host i with the fleet's key and known_hosts file, strict host
    /// key checking and no prompts (`-F none`: the machine's ssh_config and
    /// ~/.ssh/config play no part). Append more `-o` options and the remote command;
    /// ssh keeps the first value it sees of an option, so these cannot be overridden.
    pub fn ssh(&self, i: usize) -> Command {
        let host = &self.hosts[i];
        let mut cmd = Command::new("ssh");
        cmd.args(["-F", "none", "-i"])
            .arg(self.client_key())
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                self.known_hosts_file().display()
            ))
            .args([
                "-o",
                "GlobalKnownHostsFile=/dev/null",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "BatchMode=yes",
                "-p",
                &host.ssh_port.to_string(),
                "-l",
                "root",
                &host.address.to_string(),
            ])
            .stdin(Stdio::null());
        cmd
    }

    /// `ip netns exec NETNS program` for host i: a command to run inside it
    /// (processes left there are killed on drop; [`Fleet::spawn`] also reaps them).
    pub fn command(&self, i: usize, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.hosts[i].netns])
            .arg(program)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `argv` in host i's namespace to completion.
    pub fn exec(&self, i: usize, argv: &[&str]) -> Output {
        let (program, args) = argv.split_first().expect("exec needs a command");
        self.command(i, program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run ip netns exec: {e}"))
    }

    /// Starts `argv` in host i's namespace in the background, its output appended to
    /// `dir()/logs/hI.log`; its pid. The fleet reaps it after it exits and kills it
    /// on drop.
    pub fn spawn(&self, i: usize, argv: &[&str]) -> u32 {
        let (program, args) = argv.split_first().expect("spawn needs a command");
        let logs = self.dir.join("logs");
        fs::create_dir_all(&logs).expect("create fleet logs dir");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(logs.join(format!("h{i}.log")))
            .expect("open host log");
        let child = self
            .command(i, program)
            .args(args)
            .stdout(log.try_clone().expect("clone host log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run ip netns exec {program}: {e}"));
        let pid = child.id();
        let mut spawned = self.spawned.lock().unwrap();
        spawned.retain_mut(|c| matches!(c.try_wait(), Ok(None)));
        spawned.push(child);
        pid
    }

    /// Drops all TCP port 22 traffic in and out of host i (new connections time out,
    /// established ones stall); other ports keep working.
    pub fn cut_ssh(&self, i: usize) {
        for rule in SSH_CUT {
            if !self.iptables(i, "-C", rule).status.success() {
                self.iptables_ok(i, "-I", rule);
            }
        }
    }

    /// Undoes [`Fleet::cut_ssh`].
    pub fn restore_ssh(&self, i: usize) {
        for rule in SSH_CUT {
            while self.iptables(i, "-C", rule).status.success() {
                self.iptables_ok(i, "-D", rule);
            }
        }
    }

    /// Stops host i's listening sshd (SIGTERM, then SIGKILL after 10 s). Sessions it
    /// already accepted live on, as with a real server's `systemctl stop ssh`.
    pub fn stop_sshd(&self, i: usize) {
        let Some(mut child) = self.sshd[i].lock().unwrap().take() else {
            return;
        };
        stop_group(&mut child, Duration::from_secs(10));
    }

    /// Starts host i's sshd again (same host key) and waits until it answers; does
    /// nothing when it is running.
    pub fn start_sshd(&self, i: usize) {
        {
            let mut slot = self.sshd[i].lock().unwrap();
            if let Some(child) = slot.as_mut() {
                if matches!(child.try_wait(), Ok(None)) {
                    return;
                }
                let _ = child.wait();
            }
            *slot = Some(self.spawn_sshd(i));
        }
        self.wait_for_sshd(i);
    }

    /// Kills (SIGKILL) every process in host i's namespace, sshd included, as a
    /// machine crash would. [`Fleet::start_sshd`] brings sshd back.
    pub fn kill_all_in(&self, i: usize) {
        let left = kill_namespace(&self.hosts[i].netns, Duration::from_secs(10));
        assert!(
            left.is_empty(),
            "processes {left:?} still in {} after SIGKILL",
            self.hosts[i].netns
        );
        if let Some(child) = self.sshd[i].lock().unwrap().as_mut() {
            let _ = child.wait();
        }
        self.spawned
            .lock()
            .unwrap()
            .retain_mut(|c| matches!(c.try_wait(), Ok(None)));
    }

    fn iptables(&self, i: usize, op: &str, rule: &[&str]) -> Output {
        let mut argv = vec!["iptables", "-w", op];
        argv.extend_from_slice(rule);
        self.exec(i, &argv)
    }

    fn iptables_ok(&self, i: usize, op: &str, rule: &[&str]) {
        let out = self.iptables(i, op, rule);
        assert!(
            out.status.success(),
            "iptables {op} {} in {} failed ({}): {}",
            rule.join(" "),
            self.hosts[i].netns,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn netns_name(&self, i: usize) -> String {
        format!("btns{}h{i}", self.slot)
    }

    fn address_of(&self, i: usize) -> Ipv4Addr {
        let last = u8::try_from(10 + i).expect("checked by Fleet::create");
        self.subnet_address(last)
    }

    fn subnet_address(&self, last: u8) -> Ipv4Addr {
        let (a, b) = subnet(self.slot);
        Ipv4Addr::new(198, a, b, last)
    }

    fn sshd_dir(&self, i: usize) -> PathBuf {
        self.dir.join("sshd").join(format!("h{i}"))
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // Processes first (a namespace with processes in it outlives its name), then
        // the links, namespaces, bridge and files. Never panics: this runs while a
        // failed test unwinds too.
        for i in 0..self.count {
            let netns = self.netns_name(i);
            let left = kill_namespace(&netns, Duration::from_secs(10));
            if !left.is_empty() {
                eprintln!("processes {left:?} still in {netns} after SIGKILL");
            }
        }
        // Reap our children (killed above; kill() again in case they were not).
        let spawned = self.spawned.get_mut().unwrap_or_else(|e| e.into_inner());
        let sshds = self
            .sshd
            .iter_mut()
            .filter_map(|m| m.get_mut().unwrap_or_else(|e| e.into_inner()).as_mut());
        for child in spawned.iter_mut().chain(sshds) {
            let _ = child.kill();
            let _ = child.wait();
        }
        for i in 0..self.count {
            let netns = self.netns_name(i);
            // Deleting our end deletes the pair at once; the namespace's end would
            // otherwise go only when the kernel gets round to freeing the namespace.
            if Path::new("/sys/class/net").join(&netns).exists() {
                quiet_ip(&["link", "del", &netns]);
            }
            if Path::new("/run/netns").join(&netns).exists() {
                quiet_ip(&["netns", "del", &netns]);
            }
            let _ = fs::remove_dir_all(Path::new("/etc/netns").join(&netns));
        }
        quiet_ip(&["link", "del", &self.bridge]);
        // Only when empty: other fleets may be using it. (They retry if it goes
        // away under them, see write_netns_hosts.)
        let _ = fs::remove_dir("/etc/netns");
        if let Err(e) = fs::remove_dir_all(&self.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("cannot remove {}: {e}", self.dir.display());
        }
    }
}

/// The rules of [`Fleet::cut_ssh`]: port 22 both as the host's sshd and as a client.
const SSH_CUT: [&[&str]; 4] = [
    &["INPUT", "-p", "tcp", "--dport", "22", "-j", "DROP"],
    &["INPUT", "-p", "tcp", "--sport", "22", "-j", "DROP"],
    &["OUTPUT", "-p", "tcp", "--sport", "22", "-j", "DROP"],
    &["OUTPUT", "-p", "tcp", "--dport", "22", "-j", "DROP"],
];

/// Polls `done` until it holds, panicking with `what` after `within`.
pub fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    let mut pause = Duration::from_millis(5);
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// What this machine lacks to make hosts, and where sshd is.
fn prerequisites() -> (Vec<String>, Option<PathBuf>) {
    let mut missing = Vec::new();
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let euid = field("Uid:").get(1).cloned().unwrap_or_default();
    let caps = field("CapEff:")
        .first()
        .and_then(|c| u64::from_str_radix(c, 16).ok())
        .unwrap_or(0);
    const CAP_NET_ADMIN: u64 = 1 << 12;
    const CAP_SYS_ADMIN: u64 = 1 << 21;
    if euid != "0" {
        missing.push("not root".to_owned());
    } else if caps & (CAP_NET_ADMIN | CAP_SYS_ADMIN) != CAP_NET_ADMIN | CAP_SYS_ADMIN {
        missing.push("root without CAP_NET_ADMIN and CAP_SYS_ADMIN".to_owned());
    }
    // sshd re-executes itself, so it needs its absolute path; as a non-root user
    // /usr/sbin is often not on the PATH.
    let sshd = find_program("sshd", &["/usr/sbin", "/usr/local/sbin"]);
    for (program, found) in [
        ("ip", find_program("ip", &["/usr/sbin", "/sbin"]).is_some()),
        ("sshd", sshd.is_some()),
        ("ssh", find_program("ssh", &[]).is_some()),
        ("ssh-keygen", find_program("ssh-keygen", &[]).is_some()),
        (
            "iptables",
            find_program("iptables", &["/usr/sbin", "/sbin"]).is_some(),
        ),
    ] {
        if !found {
            missing.push(format!("{program} not installed"));
        }
    }
    // With UsePAM no, sshd refuses every login to an account whose password is
    // locked ("!..." in /etc/shadow), keys included.
    if euid == "0"
        && let Ok(shadow) = fs::read_to_string("/etc/shadow")
        && let Some(line) = shadow.lines().find(|l| l.starts_with("root:"))
        && line.split(':').nth(1).is_some_and(|p| p.starts_with('!'))
    {
        missing.push(
            "root's password is locked (sshd refuses locked accounts without PAM; \
             `usermod -p '*' root` disables the password without locking the account)"
                .to_owned(),
        );
    }
    (missing, sshd)
}

fn find_program(program: &str, extra_dirs: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra_dirs.iter().map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|p| p.is_absolute() && p.is_file())
}

/// The /24 of slot k: `198.(18 + k/256).(k%256).0`.
fn subnet(slot: u32) -> (u8, u8) {
    (
        u8::try_from(18 + slot / 256).expect("slot < 512"),
        u8::try_from(slot % 256).expect("byte"),
    )
}

/// Claims a free slot by creating its bridge: the kernel lets only one fleet
/// create a given name. Slots whose names or addresses something else on the
/// machine uses (a fleet's leftovers, say) are passed over.
fn claim_slot() -> u32 {
    let start = fastrand::u32(0..SLOTS);
    for k in (0..SLOTS).map(|n| (start + n) % SLOTS) {
        let bridge = format!("btns{k}");
        if Path::new("/sys/class/net").join(&bridge).exists() || slot_has_netns(k) {
            continue;
        }
        let (a, b) = subnet(k);
        let prefix = format!("198.{a}.{b}.0/24");
        let routes = [["root", prefix.as_str()], ["match", prefix.as_str()]]
            .iter()
            .any(|how| {
                let out = run(
                    Command::new("ip")
                        .args(["-4", "route", "show", "table", "all"])
                        .args(how),
                    "ip route show",
                );
                out.lines().any(|l| !l.starts_with("default"))
            });
        if routes {
            continue;
        }
        let out = Command::new("ip")
            .args(["link", "add", &bridge, "type", "bridge"])
            .output()
            .expect("run ip link add");
        if out.status.success() {
            return k;
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("File exists"),
            "ip link add {bridge} type bridge failed: {err}"
        );
    }
    panic!("all {SLOTS} SSH test fleet slots (bridges btns0..btns511) are in use");
}

fn slot_has_netns(k: u32) -> bool {
    let prefix = format!("btns{k}h");
    fs::read_dir("/run/netns").is_ok_and(|entries| {
        entries.flatten().any(|e| {
            e.file_name().to_str().is_some_and(|n| {
                n.strip_prefix(&prefix)
                    .is_some_and(|rest| rest.bytes().all(|c| c.is_ascii_digit()))
            })
        })
    })
}

/// Writes `/etc/netns/NETNS/hosts`.
fn write_netns_hosts(netns: &str, content: &str) {
    let dir = Path::new("/etc/netns").join(netns);
    // Another fleet's Drop removes /etc/netns when it is empty, which can happen
    // between creating it and creating our directory in it: try again.
    let mut tries = 0;
    loop {
        match fs::create_dir_all(&dir).and_then(|()| fs::write(dir.join("hosts"), content)) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && tries < 10 => tries += 1,
            Err(e) => panic!("cannot write {}/hosts: {e}", dir.display()),
        }
    }
}

/// An ed25519 key pair without passphrase at `path` and `path.pub`.
fn keygen(path: &Path, comment: &str) {
    run(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
            .arg(path),
        "ssh-keygen",
    );
}

/// sshd's (major, minor) version, from `sshd -V` ("OpenSSH_9.2p1 ..." on stderr);
/// (0, 0) when it does not say.
fn sshd_version(sshd: &Path) -> (u32, u32) {
    let out = Command::new(sshd).arg("-V").output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
        .unwrap_or_default();
    let version = text
        .split("OpenSSH_")
        .nth(1)
        .unwrap_or_default()
        .split(|c: char| !c.is_ascii_digit() && c != '.')
        .next()
        .unwrap_or_default();
    let mut parts = version.split('.').map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// Whether an SSH server answers at `addr` with its banner.
fn ssh_banner(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut banner = [0u8; 4];
    // Say who we are so that sshd does not log "did not receive identification".
    let _ = stream.write_all(b"SSH-2.0-baton-fleet-probe\r\n");
    stream.read_exact(&mut banner).is_ok() && &banner == b"SSH-"
}

/// SIGTERM to the child's process group, SIGKILL after `grace`; reaps the child.
fn stop_group(child: &mut Child, grace: Duration) {
    let group = Pid::from_raw(i32::try_from(child.id()).expect("pid fits i32"));
    let _ = killpg(group, Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = killpg(group, Signal::SIGKILL);
    let _ = child.wait();
}

/// SIGKILLs every process in network namespace `netns` until none is left or
/// `within` passes (they may fork meanwhile); returns the pids still there.
///
/// Each pid from `ip netns pids` is checked to be in the namespace right before it
/// is signalled, so that a pid reused by a process elsewhere is left alone.
fn kill_namespace(netns: &str, within: Duration) -> Vec<i32> {
    let Some(target) = namespace_id(&Path::new("/run/netns").join(netns)) else {
        return Vec::new();
    };
    if Some(target) == namespace_id(Path::new("/proc/self/ns/net")) {
        // Never: that would be every process of the machine.
        eprintln!("{netns} is the root network namespace; not killing anything in it");
        return Vec::new();
    }
    let deadline = Instant::now() + within;
    loop {
        let pids: Vec<i32> = Command::new("ip")
            .args(["netns", "pids", netns])
            .stderr(Stdio::null())
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        let pids: Vec<i32> = pids
            .into_iter()
            .filter(|&pid| in_namespace(pid, target))
            .collect();
        if pids.is_empty() || Instant::now() >= deadline {
            return pids;
        }
        for pid in pids {
            // Again right before the signal: it may have exited and its pid been
            // reused since.
            if in_namespace(pid, target) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn in_namespace(pid: i32, target: (u64, u64)) -> bool {
    namespace_id(Path::new(&format!("/proc/{pid}/ns/net"))) == Some(target)
}

/// (device, inode) of a network namespace file: equal for the same namespace.
fn namespace_id(path: &Path) -> Option<(u64, u64)> {
    fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Runs `ip ARGS`, panicking with its error on failure.
fn ip(args: &[&str]) {
    run(
        Command::new("ip").args(args),
        &format!("ip {}", args.join(" ")),
    );
}

/// Runs `ip ARGS`, ignoring failure (clean-up of what may not exist).
fn quiet_ip(args: &[&str]) {
    let _ = Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Runs `cmd`; its stdout. Panics on failure, with its output.
fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
