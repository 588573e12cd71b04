//! Reading process facts from Linux `/proc`.
//!
//! Everything here treats `/proc` as untrusted input: a process can vanish between two
//! reads, and `comm` (field 2 of `stat`) is chosen by the process itself and may contain
//! spaces and parentheses.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::DriverError;

/// The fields of `/proc/<pid>/stat` the driver needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcStat {
    /// Field 3: one of R S D Z T t X I...
    pub state: char,
    /// Field 5: process-group id.
    pub pgrp: u32,
    /// Fields 14 and 15: CPU time in user and kernel mode, in clock ticks.
    pub utime: u64,
    pub stime: u64,
    /// Field 22: start time in clock ticks after boot.
    pub start_time: u64,
}

impl ProcStat {
    /// A zombie (or a dead task) is not running, whatever its parent does with it.
    pub fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parses the text of `/proc/<pid>/stat`.
pub(crate) fn parse_stat(text: &str) -> Result<ProcStat, String> {
    // comm is "(...)" and may itself contain ") ": the real end is the last ')'.
    let close = text
        .rfind(')')
        .ok_or_else(|| "no ')' after the command name".to_owned())?;
    let mut fields = text[close + 1..].split_ascii_whitespace();
    // After comm: field 3 is index 0 here, so field N is index N - 3.
    let state = fields
        .next()
        .and_then(|s| s.chars().next())
        .ok_or_else(|| "missing state".to_owned())?;
    // Field N is at index N - 4 of what follows the state.
    let rest: Vec<&str> = fields.collect();
    let field = |n: usize, name: &str| -> Result<&str, String> {
        rest.get(n - 4)
            .copied()
            .ok_or_else(|| format!("missing {name}"))
    };
    let number = |n: usize, name: &str| -> Result<u64, String> {
        field(n, name)?
            .parse::<u64>()
            .map_err(|e| format!("bad {name}: {e}"))
    };
    let pgrp = field(5, "pgrp")?
        .parse::<i64>()
        .map_err(|e| format!("bad pgrp: {e}"))?;
    Ok(ProcStat {
        state,
        // A pgrp that does not fit (negative or huge) cannot match any pid we handle.
        pgrp: u32::try_from(pgrp).unwrap_or(0),
        utime: number(14, "utime")?,
        stime: number(15, "stime")?,
        start_time: number(22, "starttime")?,
    })
}

/// Memory figures of `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StatusMemory {
    /// `VmRSS`.
    pub rss_bytes: u64,
    /// `VmHWM`: the peak resident set size.
    pub peak_bytes: u64,
}

pub(crate) fn read_status_memory(pid: u32) -> Option<StatusMemory> {
    let text = std::fs::read_to_string(proc_path(pid, "status")).ok()?;
    parse_status_memory(&text)
}

pub(crate) fn parse_status_memory(text: &str) -> Option<StatusMemory> {
    let kib = |key: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(key))?;
        let value = line[key.len()..].trim().trim_end_matches("kB").trim();
        value.parse::<u64>().ok().map(|k| k * 1024)
    };
    Some(StatusMemory {
        rss_bytes: kib("VmRSS:")?,
        peak_bytes: kib("VmHWM:")?,
    })
}

/// A process's memory cgroup, when it has a limit of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MemoryCgroup {
    pub limit_bytes: Option<u64>,
    pub oom_kills: u64,
    /// Memory charged to the cgroup now (v1 `memory.usage_in_bytes`, v2 `memory.current`).
    pub usage_bytes: Option<u64>,
    /// The most ever charged at once (v1 `memory.max_usage_in_bytes`, v2 `memory.peak`).
    pub peak_bytes: Option<u64>,
}

/// Where a memory cgroup lives in the filesystem, and which interface it speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MemoryCgroupDir {
    /// A directory of the v1 `memory` hierarchy.
    V1(PathBuf),
    /// A directory of the v2 unified hierarchy.
    V2(PathBuf),
}

impl MemoryCgroupDir {
    pub fn path(&self) -> &Path {
        match self {
            MemoryCgroupDir::V1(dir) | MemoryCgroupDir::V2(dir) => dir,
        }
    }
}

/// The memory cgroup (v1 `memory` controller, or the v2 unified hierarchy) of `pid`.
/// For v2, only a cgroup with a `memory.max` of its own counts (not the root).
pub(crate) fn memory_cgroup_dir(pid: u32) -> Option<MemoryCgroupDir> {
    let text = std::fs::read_to_string(proc_path(pid, "cgroup")).ok()?;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let path = path.trim_start_matches('/');
        if controllers.split(',').any(|c| c == "memory") {
            return Some(MemoryCgroupDir::V1(
                Path::new("/sys/fs/cgroup/memory").join(path),
            ));
        }
        if controllers.is_empty() {
            let dir = Path::new("/sys/fs/cgroup").join(path);
            if dir.join("memory.max").exists() {
                return Some(MemoryCgroupDir::V2(dir));
            }
        }
    }
    None
}

/// Reads the counters of a memory cgroup; `None` once it is gone (removed with its
/// container, say).
pub(crate) fn read_memory_cgroup(dir: &MemoryCgroupDir) -> Option<MemoryCgroup> {
    match dir {
        MemoryCgroupDir::V1(dir) => {
            let limit = read_number(&dir.join("memory.limit_in_bytes"));
            let oom = std::fs::read_to_string(dir.join("memory.oom_control")).ok()?;
            Some(MemoryCgroup {
                // The v1 "no limit" is a page-rounded i64::MAX.
                limit_bytes: limit.filter(|l| *l < (1 << 62)),
                oom_kills: counter(&oom, "oom_kill").unwrap_or(0),
                usage_bytes: read_number(&dir.join("memory.usage_in_bytes")),
                peak_bytes: read_number(&dir.join("memory.max_usage_in_bytes")),
            })
        }
        MemoryCgroupDir::V2(dir) => {
            let limit = std::fs::read_to_string(dir.join("memory.max")).ok()?;
            let events = std::fs::read_to_string(dir.join("memory.events")).ok();
            Some(MemoryCgroup {
                // "max" (no limit) does not parse as a number.
                limit_bytes: limit.trim().parse().ok(),
                oom_kills: events
                    .as_deref()
                    .and_then(|t| counter(t, "oom_kill"))
                    .unwrap_or(0),
                usage_bytes: read_number(&dir.join("memory.current")),
                peak_bytes: read_number(&dir.join("memory.peak")),
            })
        }
    }
}

/// CPU time used by the processes of the cgroup whose memory directory is `dir`, in
/// nanoseconds: v1 `cpuacct.usage` of the same cgroup in the `cpuacct` hierarchy, v2
/// `usage_usec` of `cpu.stat`.
pub(crate) fn cgroup_cpu_ns(dir: &MemoryCgroupDir) -> Option<u64> {
    match dir {
        MemoryCgroupDir::V1(dir) => {
            let relative = dir.strip_prefix("/sys/fs/cgroup/memory").ok()?;
            read_number(
                &Path::new("/sys/fs/cgroup/cpuacct")
                    .join(relative)
                    .join("cpuacct.usage"),
            )
        }
        MemoryCgroupDir::V2(dir) => {
            let stat = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
            counter(&stat, "usage_usec").map(|us| us * 1_000)
        }
    }
}

/// Reads the memory cgroup of `pid` when it is its own: not the one of `parent` (a
/// plain child shares the control plane's cgroup, whose limit and OOM kills are not
/// the instance's). `None` when it has none of its own that can be read.
pub(crate) fn own_memory_cgroup(pid: u32, parent: u32) -> Option<MemoryCgroup> {
    let dir = memory_cgroup_dir(pid)?;
    if !is_own_cgroup(&dir, memory_cgroup_dir(parent).as_ref()) {
        return None;
    }
    read_memory_cgroup(&dir)
}

fn is_own_cgroup(dir: &MemoryCgroupDir, parent: Option<&MemoryCgroupDir>) -> bool {
    parent != Some(dir)
}

fn read_number(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The value of `name` in a `key value` per line file (`memory.oom_control`, `memory.events`).
pub(crate) fn counter(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == name).then(|| v.trim().parse().ok())?
    })
}

/// Clock ticks per second (`USER_HZ`), for the CPU times of `/proc/<pid>/stat`.
pub(crate) fn clock_ticks_per_second() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .unwrap_or(100)
}

fn proc_path(pid: u32, file: &str) -> PathBuf {
    Path::new("/proc").join(pid.to_string()).join(file)
}

/// Reads `/proc/<pid>/stat`. `Ok(None)` when the process does not exist.
pub(crate) fn read_stat(pid: u32) -> Result<Option<ProcStat>, DriverError> {
    let path = proc_path(pid, "stat");
    match std::fs::read_to_string(&path) {
        Ok(text) => parse_stat(&text)
            .map(Some)
            .map_err(|reason| DriverError::Proc { path, reason }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        // ESRCH: the process died while we read.
        Err(e) if e.raw_os_error() == Some(nix::libc::ESRCH) => Ok(None),
        Err(e) => Err(DriverError::Proc {
            path,
            reason: e.to_string(),
        }),
    }
}

/// Reads `/proc/<pid>/environ` as `(key, value)` byte pairs. `None` when unreadable
/// (gone, another user's process, kernel thread).
pub(crate) fn read_environ(pid: u32) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let bytes = std::fs::read(proc_path(pid, "environ")).ok()?;
    Some(parse_environ(&bytes))
}

pub(crate) fn parse_environ(bytes: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    bytes
        .split(|b| *b == 0)
        .filter(|entry| !entry.is_empty())
        .filter_map(|entry| {
            let eq = entry.iter().position(|b| *b == b'=')?;
            Some((entry[..eq].to_vec(), entry[eq + 1..].to_vec()))
        })
        .collect()
}

/// Pids of every process currently listed in `/proc`.
pub(crate) fn list_pids() -> Result<Vec<u32>, DriverError> {
    let dir = Path::new("/proc");
    let entries = std::fs::read_dir(dir).map_err(|e| DriverError::Proc {
        path: dir.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| pid_from_name(&entry.file_name()))
        .collect())
}

fn pid_from_name(name: &OsStr) -> Option<u32> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// Whether any live (non-zombie) process is in process group `pgid`.
/// Live members of process group `pgid` that belong to instance `instance_id`
/// (they inherited its `BATON_INSTANCE_ID`). Checking the variable matters once
/// the group's leader is gone: its number can then be reused by an unrelated
/// process group, which must never be signalled.
pub(crate) fn instance_group_members(pgid: u32, instance_id: &str) -> Vec<u32> {
    let Ok(pids) = list_pids() else {
        return Vec::new();
    };
    pids.into_iter()
        .filter(|&pid| matches!(read_stat(pid), Ok(Some(st)) if st.pgrp == pgid && !st.is_dead()))
        .filter(|&pid| {
            read_environ(pid).is_some_and(|env| {
                env.iter().any(|(k, v)| {
                    k.as_slice() == crate::ENV_INSTANCE_ID.as_bytes()
                        && v.as_slice() == instance_id.as_bytes()
                })
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // A real line, with a hostile comm.
    const STAT: &str = "4242 (we) ird (x) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                        1 2 0 0 20 0 1 0 987654 1000000 200 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";

    #[test]
    fn parses_stat_with_parens_and_spaces_in_comm() {
        let st = parse_stat(STAT).unwrap();
        assert_eq!(
            st,
            ProcStat {
                state: 'S',
                pgrp: 4242,
                utime: 1,
                stime: 2,
                start_time: 987654,
            }
        );
    }

    #[test]
    fn parses_status_memory_and_cgroup_counters() {
        let status = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(
            parse_status_memory(status),
            Some(StatusMemory {
                rss_bytes: 1024 * 1024,
                peak_bytes: 2048 * 1024
            })
        );
        assert_eq!(parse_status_memory("Name: kthread\n"), None);
        let oom = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(counter(oom, "oom_kill"), Some(3));
        assert_eq!(counter(oom, "oom_kill_disable"), Some(0));
        assert_eq!(counter(oom, "missing"), None);
    }

    #[test]
    fn samples_own_cpu_and_memory() {
        let me = std::process::id();
        let mem = read_status_memory(me).unwrap();
        assert!(mem.peak_bytes >= mem.rss_bytes && mem.rss_bytes > 0);
    }

    #[test]
    fn a_cgroup_shared_with_the_control_plane_is_not_the_instances() {
        let ours = MemoryCgroupDir::V1("/sys/fs/cgroup/memory/system.slice/baton.service".into());
        let unit = MemoryCgroupDir::V1("/sys/fs/cgroup/memory/system.slice/app.scope".into());
        assert!(!is_own_cgroup(&ours, Some(&ours)));
        assert!(is_own_cgroup(&unit, Some(&ours)));
        assert!(is_own_cgroup(&unit, None));
    }

    #[test]
    fn rejects_truncated_stat() {
        assert!(parse_stat("12 (x) S 1 12").is_err());
        assert!(parse_stat("garbage").is_err());
        assert!(parse_stat("").is_err());
    }

    #[test]
    fn reads_own_stat() {
        let me = std::process::id();
        let st = read_stat(me).unwrap().unwrap();
        assert!(st.start_time > 0);
        assert!(!st.is_dead());
    }

    #[test]
    fn parses_environ() {
        let env = parse_environ(b"A=1\0B=x=y\0\0NOEQ\0C=\0");
        assert_eq!(
            env,
            vec![
                (b"A".to_vec(), b"1".to_vec()),
                (b"B".to_vec(), b"x=y".to_vec()),
                (b"C".to_vec(), b"".to_vec()),
            ]
        );
    }

    #[test]
    fn pid_names() {
        assert_eq!(pid_from_name(OsStr::new("123")), Some(123));
        assert_eq!(pid_from_name(OsStr::new("self")), None);
        assert_eq!(pid_from_name(OsStr::new("")), None);
    }
}
