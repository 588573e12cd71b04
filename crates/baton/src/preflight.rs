//! Pre-flight checks, run before a rollout changes anything: the command
//! exists, the host has the memory and disk the plan's surge needs. A failed
//! check refuses the deploy with the reason; nothing is created or started.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use baton_spec::{AppSpec, DriverSpec, TemplateVars};

/// One check's outcome, for the refusal message and the event log.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckResult {
    pub check: Check,
    pub ok: bool,
    pub detail: String,
}

/// Which pre-flight check a result is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// The release's program has the expected sha256.
    Checksum,
    /// The router can listen where the spec says.
    Port,
    /// The command to start an instance exists.
    Command,
    /// A container release's image is there (or pulled), for this platform.
    Image,
    /// The host has the memory the plan's surge needs.
    Memory,
    /// The data dir's disk has room for the instances' logs.
    Disk,
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Check::Checksum => "checksum",
            Check::Port => "port",
            Check::Command => "command",
            Check::Image => "image",
            Check::Memory => "memory",
            Check::Disk => "disk",
        })
    }
}

/// What the checks look at.
pub struct Preflight<'a> {
    pub spec: &'a AppSpec,
    pub version: &'a str,
    pub baton_exe: &'a str,
    pub data_dir: &'a Path,
    /// Instances the rollout adds at its peak (from the plan).
    pub extra_instances: u32,
    /// Memory each running instance takes (its limit, or its use), to estimate the
    /// size of one.
    pub instance_memory: &'a [u64],
    /// Expected sha256 of the release's program (`deploy --sha256`).
    pub sha256: Option<&'a str>,
    /// The router already listens on the app's address.
    pub router_serves_app: bool,
    /// For a container app: whether its image can be used (found or pulled under the
    /// pull policy, right platform, matching `--sha256`), checked through the driver.
    pub image: Option<CheckResult>,
}

/// Run every check for a rollout.
pub fn run(p: &Preflight<'_>) -> Vec<CheckResult> {
    let (spec, version, baton_exe, data_dir) = (p.spec, p.version, p.baton_exe, p.data_dir);
    let (extra_instances, instance_memory, sha256, router_serves_app) = (
        p.extra_instances,
        p.instance_memory,
        p.sha256,
        p.router_serves_app,
    );
    let mut results = Vec::new();
    if let Some(image) = &p.image {
        results.push(image.clone());
    }
    if let DriverSpec::Process(process) = &spec.driver {
        let (command, program) = command_exists(process, spec, version, baton_exe);
        results.push(command);
        if let Some(want) = sha256 {
            results.push(match program {
                Some(program) => checksum(&program, want),
                None => CheckResult {
                    check: Check::Checksum,
                    ok: false,
                    detail: "no program to check".into(),
                },
            });
        }
    }
    if !router_serves_app {
        results.push(port_free(spec.listen));
    }
    results.push(memory(extra_instances, instance_memory));
    results.push(disk(data_dir));
    results
}

/// The release's program is exactly the artifact that was vetted.
fn checksum(program: &Path, want: &str) -> CheckResult {
    use sha2::{Digest, Sha256};
    let got = std::fs::read(program).map(|bytes| {
        Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    });
    let (ok, detail) = match got {
        Ok(got) if got.eq_ignore_ascii_case(want.trim()) => {
            (true, format!("{} has sha256 {got}", program.display()))
        }
        Ok(got) => (
            false,
            format!(
                "{} has sha256 {got}, expected {want}: this is not the artifact that was checked",
                program.display()
            ),
        ),
        Err(e) => (false, format!("cannot read {}: {e}", program.display())),
    };
    CheckResult {
        check: Check::Checksum,
        ok,
        detail,
    }
}

/// The router must be able to listen where the spec says.
fn port_free(listen: std::net::SocketAddr) -> CheckResult {
    let ok = std::net::TcpListener::bind(listen).is_ok();
    CheckResult {
        check: Check::Port,
        ok,
        detail: if ok {
            format!("{listen} is free")
        } else {
            format!(
                "{listen} is already in use by another program; free it or change `listen` in the spec"
            )
        },
    }
}

/// The release's program exists and is executable; returns where it is.
fn command_exists(
    p: &baton_spec::ProcessDriverSpec,
    spec: &AppSpec,
    version: &str,
    baton_exe: &str,
) -> (CheckResult, Option<PathBuf>) {
    let vars = TemplateVars {
        version,
        port: 0,
        app: &spec.name,
        instance: "preflight",
        baton: baton_exe,
    };
    let program = p
        .command
        .first()
        .map(|c| baton_spec::render_template(c, &vars))
        .unwrap_or_default();
    let workdir = p.workdir.clone();
    match resolve_program(&program, workdir.as_deref()) {
        Some(path) => (
            CheckResult {
                check: Check::Command,
                ok: true,
                detail: format!("{} is executable", path.display()),
            },
            Some(path),
        ),
        None => (
            CheckResult {
                check: Check::Command,
                ok: false,
                detail: format!(
                    "the command `{program}` of version {version} was not found or is not executable; \
                 install it, or fix driver.process.command in the spec"
                ),
            },
            None,
        ),
    }
}

/// Find `program` as a path (relative to `workdir`) or on PATH.
fn resolve_program(program: &str, workdir: Option<&Path>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if program.contains('/') {
        let path = match workdir {
            Some(dir) if !program.starts_with('/') => dir.join(program),
            _ => PathBuf::from(program),
        };
        return executable(&path).then_some(path);
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join(program))
        .find(|p| executable(p))
}

/// Numbers from /proc/meminfo, in KiB.
fn meminfo() -> BTreeMap<String, u64> {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.to_string(), v.split_whitespace().next()?.parse().ok()?))
        })
        .collect()
}

/// The surge needs roughly what the running instances take, per new instance
/// (their memory limit where they have one, else what they use now).
fn memory(extra_instances: u32, instance_memory: &[u64]) -> CheckResult {
    let available = meminfo().get("MemAvailable").copied().unwrap_or(0);
    let per_instance = if instance_memory.is_empty() {
        0
    } else {
        instance_memory.iter().sum::<u64>() / 1024 / instance_memory.len() as u64
    };
    let needed = per_instance * u64::from(extra_instances);
    CheckResult {
        check: Check::Memory,
        ok: needed <= available,
        detail: format!(
            "{} MiB needed for {extra_instances} more instance(s) at ~{} MiB each, {} MiB available",
            needed / 1024,
            per_instance / 1024,
            available / 1024
        ),
    }
}

/// Instance logs go to the data dir; refuse to start when it is nearly full.
fn disk(data_dir: &Path) -> CheckResult {
    const MIN_FREE_MIB: u64 = 64;
    let free_mib = nix::sys::statvfs::statvfs(data_dir)
        .map(|s| s.blocks_available() * s.fragment_size() / (1024 * 1024))
        .unwrap_or(u64::MAX);
    CheckResult {
        check: Check::Disk,
        ok: free_mib >= MIN_FREE_MIB,
        detail: format!(
            "{free_mib} MiB free in {} (at least {MIN_FREE_MIB} MiB needed for instance logs)",
            data_dir.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_programs_on_path_and_by_path() {
        assert!(resolve_program("sh", None).is_some());
        assert!(resolve_program("/bin/sh", None).is_some());
        assert!(resolve_program("no-such-program-baton", None).is_none());
        assert!(resolve_program("./no/such/file", Some(Path::new("/"))).is_none());
    }

    #[test]
    fn memory_check_scales_with_the_surge() {
        assert!(memory(1, &[64 << 20]).ok);
        assert!(!memory(u32::MAX, &[64 << 20]).ok);
        assert!(
            memory(3, &[]).ok,
            "nothing running: nothing to estimate from"
        );
    }
}
