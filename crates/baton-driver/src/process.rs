//! The process driver: each instance is a local process in its own process group.
//!
//! Why a process group: the instance must outlive a crash of the control plane (and must
//! not receive the terminal's Ctrl-C), and stopping it must also stop whatever it forked.
//! The group leader's pid identifies the instance; `start_time` from `/proc` tells a live
//! instance apart from an unrelated process that later got the same pid.
//!
//! Every child carries `BATON_OWNER` in its environment, so a restarted control plane can
//! find its predecessor's instances by scanning `/proc/*/environ` ([`Driver::discover`]).

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::procfs;
use crate::{
    Driver, DriverError, ENV_APP, ENV_INSTANCE_ID, ENV_OWNER, ENV_PORT, Exit, FoundInstance,
    InstanceHandle, InstanceStatus, LaunchSpec, Locator, ResourceSample, Scope, StopOutcome,
    Target,
};

/// How long to wait for the group to vanish after SIGKILL before reporting it stuck.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// Polling interval bounds while waiting for a process to exit.
const POLL_MIN: Duration = Duration::from_millis(5);
const POLL_MAX: Duration = Duration::from_millis(50);

/// A child this driver spawned. The exit is filled in by its reaper task.
#[derive(Debug)]
struct OwnChild {
    start_time: u64,
    /// `None` while running; how it ended once reaped.
    exit: watch::Receiver<Option<Exit>>,
}

/// Runs instances as local processes. Cheap to clone; clones share the child table.
#[derive(Debug, Clone)]
pub struct ProcessDriver {
    owner: String,
    /// Children spawned by this driver, keyed by pid. An entry whose `start_time` differs
    /// from a handle's belongs to an earlier process that had the same pid.
    children: Arc<Mutex<HashMap<u32, OwnChild>>>,
}

impl ProcessDriver {
    /// A driver whose instances are marked with `owner` (the canonical data-dir path of
    /// this control plane).
    pub fn new(owner: String) -> Self {
        ProcessDriver {
            owner,
            children: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The owner string every child is marked with.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    fn children(&self) -> MutexGuard<'_, HashMap<u32, OwnChild>> {
        // The table stays consistent even if a holder panicked: every update is one insert
        // or remove.
        self.children.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn own_exit(&self, pid: u32, start_time: u64) -> Option<Option<Exit>> {
        let children = self.children();
        let child = children.get(&pid)?;
        (child.start_time == start_time).then(|| *child.exit.borrow())
    }

    async fn spawn(&self, spec: &LaunchSpec) -> Result<InstanceHandle, DriverError> {
        let Target::Process(target) = &spec.target else {
            return Err(DriverError::Unsupported(format!(
                "instance {} is not a process; the process driver cannot start it",
                spec.instance_id
            )));
        };
        let Some((program, args)) = target.argv.split_first() else {
            return Err(DriverError::InvalidSpec {
                instance_id: spec.instance_id.clone(),
                reason: "argv is empty".to_owned(),
            });
        };
        let log = open_log(&spec.log_path).await?;
        let log_err = log.try_clone().map_err(|source| DriverError::Log {
            path: spec.log_path.clone(),
            source,
        })?;

        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .envs(&spec.env)
            // Set after the user's env so an instance cannot claim another owner or id.
            .env(ENV_INSTANCE_ID, &spec.instance_id)
            .env(ENV_APP, &spec.app)
            .env(ENV_OWNER, &self.owner)
            .env(ENV_PORT, spec.port.to_string())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // Own process group: survives our death, no terminal signals, and stop can
            // signal everything the instance forked.
            .process_group(0)
            .kill_on_drop(false);
        if let Some(dir) = &target.workdir {
            cmd.current_dir(dir);
        }
        let mut child = cmd.spawn().map_err(|source| DriverError::Spawn {
            program: program.clone(),
            workdir: target.workdir.clone(),
            source,
        })?;
        let Some(pid) = child.id() else {
            // Only possible once the child has been reaped, which nothing has done yet.
            return Err(DriverError::Proc {
                path: "/proc".into(),
                reason: "spawned child has no pid".to_owned(),
            });
        };
        // Read start_time before anything can reap the child: until `wait` is polled the
        // process (even if it already exited) stays in /proc as a zombie.
        let start_time = match procfs::read_stat(pid) {
            Ok(Some(stat)) => stat.start_time,
            other => {
                let reason = match other {
                    Err(e) => e.to_string(),
                    _ => "process vanished before it could be inspected".to_owned(),
                };
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(DriverError::Proc {
                    path: format!("/proc/{pid}/stat").into(),
                    reason,
                });
            }
        };

        let (exit_tx, exit_rx) = watch::channel(None);
        self.children().insert(
            pid,
            OwnChild {
                start_time,
                exit: exit_rx,
            },
        );
        let instance_id = spec.instance_id.clone();
        // The reaper: waits so the child never lingers as a zombie, and records the exit
        // code for status(). It owns the Child, so the process outlives this driver.
        tokio::spawn(async move {
            let exit = match child.wait().await {
                Ok(status) => {
                    use std::os::unix::process::ExitStatusExt;
                    Exit {
                        code: status.code(),
                        signal: status.signal(),
                        ..Exit::default()
                    }
                }
                Err(e) => {
                    tracing::warn!(instance_id, pid, error = %e, "waiting for instance failed");
                    Exit::default()
                }
            };
            tracing::info!(instance_id, pid, code = ?exit.code, signal = ?exit.signal, "instance exited");
            exit_tx.send_replace(Some(exit));
        });

        let handle = InstanceHandle {
            instance_id: spec.instance_id.clone(),
            address: std::net::SocketAddr::new(spec.host, spec.port),
            locator: Locator::Process { pid, start_time },
        };
        tracing::info!(
            instance_id = %handle.instance_id,
            app = %spec.app,
            version = %spec.version,
            pid,
            address = %handle.address,
            "instance started"
        );
        Ok(handle)
    }

    /// The instance's status now, without waiting (the process table is local).
    pub fn status_now(&self, handle: &InstanceHandle) -> InstanceStatus {
        let Some((pid, start_time)) = process_of(handle) else {
            return InstanceStatus::Gone;
        };
        if let Some(exit) = self.own_exit(pid, start_time) {
            return match exit {
                None => InstanceStatus::Running,
                Some(exit) => InstanceStatus::Exited(exit),
            };
        }
        // Not our child (adopted from an earlier control plane) or an old handle.
        match procfs::read_stat(pid) {
            Ok(Some(stat)) if stat.start_time == start_time && !stat.is_dead() => {
                InstanceStatus::Running
            }
            _ => InstanceStatus::Gone,
        }
    }

    fn is_running(&self, handle: &InstanceHandle) -> bool {
        self.status_now(handle) == InstanceStatus::Running
    }

    async fn stop_instance(
        &self,
        handle: &InstanceHandle,
        grace: Duration,
    ) -> Result<StopOutcome, DriverError> {
        let Some((pid, _)) = process_of(handle) else {
            return Err(not_a_process(handle));
        };
        // Check identity before signalling: never signal a group whose leader is gone or
        // whose pid now belongs to someone else.
        if !self.is_running(handle) {
            self.forget(handle);
            return Ok(StopOutcome::AlreadyGone);
        }
        let Some(pgid) = signalable_pgid(pid) else {
            return Ok(StopOutcome::AlreadyGone);
        };
        if !signal_group(pgid, Signal::SIGTERM)? {
            self.forget(handle);
            return Ok(StopOutcome::AlreadyGone);
        }
        tracing::info!(instance_id = %handle.instance_id, pid, ?grace, "stopping instance");

        let deadline = Instant::now() + grace;
        // Wait for the leader, then give the rest of the group (workers it forked, which
        // got SIGTERM too) the remaining grace before sweeping them.
        let leader_exited = poll_until(deadline, || !self.is_running(handle)).await;
        let members = || procfs::instance_group_members(pid, &handle.instance_id);
        if leader_exited {
            poll_until(deadline, || members().is_empty()).await;
        }
        let outcome = if leader_exited {
            StopOutcome::Graceful
        } else {
            StopOutcome::Killed
        };
        if self.is_running(handle) {
            // The leader is alive (identity checked), so the group is still ours.
            tracing::warn!(instance_id = %handle.instance_id, pid, "grace period over, killing instance");
            signal_group(pgid, Signal::SIGKILL)?;
        }
        // Stragglers the leader left behind are killed one by one: after the
        // leader is gone its group number may belong to someone else.
        for member in members() {
            let _ = nix::sys::signal::kill(Pid::from_raw(member as i32), Signal::SIGKILL);
        }
        let gone = poll_until(Instant::now() + KILL_WAIT, || {
            !self.is_running(handle) && members().is_empty()
        })
        .await;
        if !gone {
            return Err(DriverError::StillRunning {
                instance_id: handle.instance_id.clone(),
                pid,
            });
        }
        self.forget(handle);
        tracing::info!(instance_id = %handle.instance_id, pid, ?outcome, "instance stopped");
        Ok(outcome)
    }

    /// Drops our record of a stopped child (its exit is no longer of interest).
    fn forget(&self, handle: &InstanceHandle) {
        let Some((pid, start_time)) = process_of(handle) else {
            return;
        };
        let mut children = self.children();
        if children
            .get(&pid)
            .is_some_and(|c| c.start_time == start_time && c.exit.borrow().is_some())
        {
            children.remove(&pid);
        }
    }

    /// Live instances marked with this driver's owner (and, when `app` is given, that
    /// app), found by scanning `/proc`.
    pub fn discover_now(&self, app: Option<&str>) -> Result<Vec<FoundInstance>, DriverError> {
        let me = std::process::id();
        let owner = self.owner.as_bytes();
        let mut found = Vec::new();
        for pid in procfs::list_pids()? {
            if pid == me {
                continue;
            }
            // Unreadable environ: another user's process or gone; neither is ours. (A
            // process caught mid-exec briefly shows an empty environ; only an instance
            // spawned in the same instant as the scan can be missed that way.)
            let Some(env) = procfs::read_environ(pid) else {
                continue;
            };
            let var = |name: &str| {
                env.iter()
                    .find(|(k, _)| k == name.as_bytes())
                    .map(|(_, v)| v.as_slice())
            };
            if var(ENV_OWNER) != Some(owner) {
                continue;
            }
            if let Some(app) = app
                && var(ENV_APP) != Some(app.as_bytes())
            {
                continue;
            }
            let Some(instance_id) = var(ENV_INSTANCE_ID)
                .and_then(|v| std::str::from_utf8(v).ok())
                .map(str::to_owned)
            else {
                continue;
            };
            let port: Option<u16> = var(ENV_PORT)
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.parse().ok());
            // Only group leaders are instances; their children inherit the environment.
            let Ok(Some(stat)) = procfs::read_stat(pid) else {
                continue;
            };
            if stat.pgrp != pid || stat.is_dead() {
                continue;
            }
            found.push(FoundInstance {
                instance_id,
                locator: Locator::Process {
                    pid,
                    start_time: stat.start_time,
                },
                address: port.map(|p| {
                    std::net::SocketAddr::new(
                        std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
                        p,
                    )
                }),
            });
        }
        found.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
        Ok(found)
    }

    /// CPU time and memory of the instance's leader process, from `/proc`, with its
    /// memory cgroup's limit and OOM-kill count where it has a limit of its own.
    pub fn sample_now(&self, handle: &InstanceHandle) -> Option<ResourceSample> {
        let (pid, start_time) = process_of(handle)?;
        let stat = procfs::read_stat(pid).ok()??;
        if stat.start_time != start_time || stat.is_dead() {
            return None;
        }
        let tick_ms = 1000 / procfs::clock_ticks_per_second().max(1);
        let status = procfs::read_status_memory(pid)?;
        let cgroup = procfs::own_memory_cgroup(pid, std::process::id());
        Some(ResourceSample {
            cpu_ms: (stat.utime + stat.stime) * tick_ms,
            memory_bytes: status.rss_bytes,
            memory_peak_bytes: Some(status.peak_bytes),
            memory_limit_bytes: cgroup.and_then(|c| c.limit_bytes),
            oom_kills: cgroup.map_or(0, |c| c.oom_kills),
        })
    }
}

fn process_of(handle: &InstanceHandle) -> Option<(u32, u64)> {
    match handle.locator {
        Locator::Process { pid, start_time } => Some((pid, start_time)),
        _ => None,
    }
}

fn not_a_process(handle: &InstanceHandle) -> DriverError {
    DriverError::Unsupported(format!(
        "instance {} runs as {}, not as a local process",
        handle.instance_id, handle.locator
    ))
}

impl Driver for ProcessDriver {
    async fn start(&self, spec: &LaunchSpec) -> Result<InstanceHandle, DriverError> {
        self.spawn(spec).await
    }

    async fn status(&self, handle: &InstanceHandle) -> InstanceStatus {
        self.status_now(handle)
    }

    async fn stop(
        &self,
        handle: &InstanceHandle,
        grace: Duration,
    ) -> Result<StopOutcome, DriverError> {
        self.stop_instance(handle, grace).await
    }

    async fn discover(&self, scope: &Scope) -> Result<Vec<FoundInstance>, DriverError> {
        self.discover_now(Some(&scope.app))
    }

    async fn sample(&self, handle: &InstanceHandle) -> Option<ResourceSample> {
        self.sample_now(handle)
    }
}

/// Creates the log file's directory and opens the file for appending.
pub(crate) async fn open_log(path: &std::path::Path) -> Result<std::fs::File, DriverError> {
    let err = |source| DriverError::Log {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(dir).await.map_err(err)?;
    }
    let file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
        .map_err(err)?;
    Ok(file.into_std().await)
}

/// The process-group id to signal for `pid`, refusing values that would hit everyone
/// (`0`, `1`, negative after conversion) or our own group.
fn signalable_pgid(pid: u32) -> Option<Pid> {
    let raw = i32::try_from(pid).ok().filter(|p| *p > 1)?;
    let pgid = Pid::from_raw(raw);
    (pgid != nix::unistd::getpgrp()).then_some(pgid)
}

/// Sends `signal` to group `pgid`. `Ok(false)` when the group no longer exists.
fn signal_group(pgid: Pid, signal: Signal) -> Result<bool, DriverError> {
    match killpg(pgid, signal) {
        Ok(()) => Ok(true),
        Err(nix::Error::ESRCH) => Ok(false),
        Err(source) => Err(DriverError::Signal {
            pid: pgid.as_raw().unsigned_abs(),
            signal: signal.as_str(),
            source,
        }),
    }
}

/// Polls `done` with a growing interval until it holds (true) or `deadline` passes (false).
async fn poll_until(deadline: Instant, mut done: impl FnMut() -> bool) -> bool {
    let mut interval = POLL_MIN;
    loop {
        if done() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        tokio::time::sleep(interval.min(deadline - now)).await;
        interval = (interval * 2).min(POLL_MAX);
    }
}

#[cfg(test)]
mod tests;
