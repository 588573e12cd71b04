//! SSH to the hosts of a fleet, through OpenSSH (the `openssh` crate drives the
//! system `ssh` with one multiplexed master connection per host).
//!
//! Host keys are checked strictly against one known_hosts file: a host whose
//! key is missing or different is refused, with the key's fingerprint so the
//! operator can compare it and trust it explicitly (`baton hosts trust`).
//! Keys come from the spec's identity file or the agent; never a password.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use baton_spec::{HostSpec, HostsSpec};
use openssh::{KnownHosts, Session, SessionBuilder};
use tokio::process::Command;

/// The known_hosts file of a fleet: the spec's, else `~/.ssh/known_hosts`.
pub fn known_hosts_file(hosts: &HostsSpec) -> PathBuf {
    match &hosts.known_hosts {
        Some(path) => expand_home(path),
        None => home().join(".ssh").join("known_hosts"),
    }
}

fn home() -> PathBuf {
    PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
}

/// `~/x` as `$HOME/x` (as ssh reads its own paths).
pub fn expand_home(path: &Path) -> PathBuf {
    match path.strip_prefix("~") {
        Ok(rest) => home().join(rest),
        Err(_) => path.to_path_buf(),
    }
}

/// How known_hosts names a host: `addr`, or `[addr]:port` off port 22.
pub fn known_hosts_name(host: &HostSpec) -> String {
    if host.port == 22 {
        host.address.clone()
    } else {
        format!("[{}]:{}", host.address, host.port)
    }
}

/// Why a host's key is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostKeyProblem {
    #[error(
        "host {host} ({name}) is not in {known_hosts}; its key is {fingerprint}. Check it \
         against the host (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` there), then \
         trust it: `baton hosts trust -f SPEC {host} --fingerprint {fingerprint}`"
    )]
    Unknown {
        host: String,
        name: String,
        known_hosts: String,
        fingerprint: String,
    },
    #[error(
        "host {host} ({name}) presents the key {fingerprint}, which differs from the one in \
         {known_hosts}: refused (a reinstalled host, or someone in the middle). If the host \
         was reinstalled, remove its old line (`ssh-keygen -R '{name}' -f {known_hosts}`) \
         and trust the new key with `baton hosts trust`"
    )]
    Changed {
        host: String,
        name: String,
        known_hosts: String,
        fingerprint: String,
    },
    #[error("cannot read the key of host {host} ({name}): {reason}")]
    Unreachable {
        host: String,
        name: String,
        reason: String,
    },
}

/// The keys `host` presents, as known_hosts lines (`ssh-keyscan`).
pub async fn scan_keys(host: &HostSpec, timeout: Duration) -> Result<Vec<String>, String> {
    let out = Command::new("ssh-keyscan")
        .arg("-T")
        .arg(timeout.as_secs().max(1).to_string())
        .arg("-p")
        .arg(host.port.to_string())
        .arg(&host.address)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot run ssh-keyscan: {e}"))?;
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(str::to_owned)
        .collect();
    if lines.is_empty() {
        return Err(format!(
            "no SSH server answered on {}:{}",
            host.address, host.port
        ));
    }
    Ok(lines)
}

/// `SHA256:...` of a known_hosts line's key.
pub async fn fingerprint(line: &str) -> String {
    let mut child = match Command::new("ssh-keygen")
        .args(["-l", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(_) => return "(unknown)".into(),
    };
    if let Some(mut stdin) = child.stdin.take() {
        use tokio::io::AsyncWriteExt;
        let _ = stdin.write_all(format!("{line}\n").as_bytes()).await;
    }
    match child.wait_with_output().await {
        Ok(out) => String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(1)
            .unwrap_or("(unknown)")
            .to_owned(),
        Err(_) => "(unknown)".into(),
    }
}

/// The key part (`type base64`) of a known_hosts line.
fn key_of(line: &str) -> Option<(String, String)> {
    let mut parts = line.split_whitespace();
    // Marker lines (@cert-authority, @revoked) are not plain host keys.
    let first = parts.next()?;
    if first.starts_with('@') {
        return None;
    }
    Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
}

/// Does `known_hosts` hold a key `host` presents? Errors name the fingerprint.
pub async fn check_host_key(
    host: &HostSpec,
    known_hosts: &Path,
    timeout: Duration,
) -> Result<(), HostKeyProblem> {
    let name = known_hosts_name(host);
    let scanned = scan_keys(host, timeout)
        .await
        .map_err(|reason| HostKeyProblem::Unreachable {
            host: host.name.clone(),
            name: name.clone(),
            reason,
        })?;
    // `ssh-keygen -F` finds hashed entries too.
    let known = Command::new("ssh-keygen")
        .arg("-F")
        .arg(&name)
        .arg("-f")
        .arg(known_hosts)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .await
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let known: Vec<(String, String)> = known
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(key_of)
        .collect();
    let presented: Vec<(String, String)> = scanned.iter().filter_map(|l| key_of(l)).collect();
    if presented.iter().any(|k| known.contains(k)) {
        return Ok(());
    }
    // Show the key ssh would use first: ed25519 when the host has one.
    let shown = scanned
        .iter()
        .find(|l| l.contains("ssh-ed25519"))
        .or(scanned.first())
        .cloned()
        .unwrap_or_default();
    let fingerprint = fingerprint(&shown).await;
    let known_hosts = known_hosts.display().to_string();
    Err(if known.is_empty() {
        HostKeyProblem::Unknown {
            host: host.name.clone(),
            name,
            known_hosts,
            fingerprint,
        }
    } else {
        HostKeyProblem::Changed {
            host: host.name.clone(),
            name,
            known_hosts,
            fingerprint,
        }
    })
}

/// Add the key of `host` whose fingerprint is `expected` to `known_hosts`
/// (after scanning it again: a different key is refused).
pub async fn trust(host: &HostSpec, known_hosts: &Path, expected: &str) -> anyhow::Result<()> {
    let scanned = scan_keys(host, Duration::from_secs(10))
        .await
        .map_err(anyhow::Error::msg)?;
    for line in &scanned {
        if fingerprint(line).await == expected {
            if let Some(dir) = known_hosts.parent() {
                std::fs::create_dir_all(dir)?;
            }
            use std::io::Write;
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(known_hosts)
                .with_context(|| format!("opening {}", known_hosts.display()))?;
            writeln!(file, "{line}")?;
            return Ok(());
        }
    }
    anyhow::bail!(
        "host {} ({}:{}) presents no key with fingerprint {expected}; nothing was trusted",
        host.name,
        host.address,
        host.port
    )
}

/// Settings every connection of a fleet shares, beyond what the builder sets:
/// dead links are noticed within about 3 s, a forwarded socket left by an
/// earlier master is replaced, and only the fleet's known_hosts is consulted.
const SSH_CONFIG: &str = "\
ServerAliveCountMax 2
StreamLocalBindUnlink yes
GlobalKnownHostsFile /dev/null
PasswordAuthentication no
KbdInteractiveAuthentication no
";

/// Open a multiplexed master connection to `host`, its control socket in `dir`.
pub async fn connect(
    host: &HostSpec,
    known_hosts: &Path,
    connect_timeout: Duration,
    dir: &Path,
) -> anyhow::Result<Session> {
    std::fs::create_dir_all(dir)?;
    stop_stale_masters(dir).await;
    let config = dir.join("ssh_config");
    std::fs::write(&config, SSH_CONFIG)?;
    let mut b = SessionBuilder::default();
    b.user(host.user.clone())
        .port(host.port)
        .known_hosts_check(KnownHosts::Strict)
        .user_known_hosts_file(known_hosts)
        .connect_timeout(connect_timeout)
        .server_alive_interval(Duration::from_secs(1))
        .control_directory(dir)
        .config_file(&config);
    if let Some(key) = &host.identity_file {
        b.keyfile(expand_home(key));
    }
    tokio::time::timeout(
        connect_timeout + Duration::from_secs(5),
        b.connect(&host.address),
    )
    .await
    .map_err(|_| anyhow::anyhow!("no SSH connection within {connect_timeout:?}"))?
    .map_err(|e| anyhow::anyhow!("{}", describe(&e)))
}

/// An openssh error with its sources (the master's log says why it failed).
fn describe(e: &openssh::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Masters left behind by an earlier control plane (killed before it could
/// close them) keep their connection open forever: ask each to exit.
async fn stop_stale_masters(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let master = entry.path().join("master");
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(".ssh-connection")
            && master.exists()
        {
            let _ = Command::new("ssh")
                .arg("-S")
                .arg(&master)
                .args(["-O", "exit", "stale"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await;
        }
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(".ssh-connection")
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Run `script` with `sh -c` on the host; its stdout, or an error with its stderr.
pub async fn run(session: &Session, script: &str) -> anyhow::Result<String> {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        session.command("sh").arg("-c").arg(script).output(),
    )
    .await
    .map_err(|_| anyhow::anyhow!("`{script}` did not finish within 30 s"))??;
    if !out.status.success() {
        anyhow::bail!(
            "`{script}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
