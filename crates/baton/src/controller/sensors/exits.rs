//! Driver events: instances whose process ended on their own, seen by asking
//! the driver for the status of every instance that should be running.

use baton_driver::{DynDriver, InstanceStatus};
use baton_engine::{AppState, ExitCause, Input, InstancePhase as P};

/// How often a container's status is asked of its engine (an API call each;
/// a process's is a read of /proc, asked at every tick). Readiness probes see a
/// dead container sooner; this tells how it ended (exit code, OOM kill).
const CONTAINER_POLL_MS: i64 = 2_000;

/// Watches for instances that ended by themselves.
#[derive(Debug)]
pub struct Exits {
    /// When the containers' status was last asked of their engine.
    last_container_poll_ms: i64,
}

impl Default for Exits {
    fn default() -> Self {
        Exits {
            last_container_poll_ms: i64::MIN,
        }
    }
}

impl Exits {
    /// An `Exited` input for each instance the state believes running (starting,
    /// ready or draining) whose process the driver reports ended or gone.
    /// Containers are asked about every [`CONTAINER_POLL_MS`], processes always.
    pub async fn exited(
        &mut self,
        driver: &dyn DynDriver,
        state: &AppState,
        now: i64,
    ) -> Vec<Input> {
        let containers_too = now.saturating_sub(self.last_container_poll_ms) >= CONTAINER_POLL_MS;
        if containers_too {
            self.last_container_poll_ms = now;
        }
        exited(driver, state, containers_too).await
    }
}

async fn exited(driver: &dyn DynDriver, state: &AppState, containers_too: bool) -> Vec<Input> {
    let watched: Vec<_> = state
        .instances
        .iter()
        .filter(|inst| {
            matches!(
                inst.phase,
                P::Starting | P::Ready { .. } | P::Draining { .. }
            )
        })
        .filter_map(|inst| Some((inst, inst.handle.as_ref()?)))
        .filter(|(_, handle)| {
            containers_too || !matches!(handle.locator, baton_engine::Locator::Container { .. })
        })
        .collect();
    // All at once: a container's status is an API round trip, and the controller
    // waits for this round (one after another, 50 containers held it ~250 ms).
    let statuses =
        futures_util::future::join_all(watched.iter().map(|(_, handle)| driver.status(handle)))
            .await;
    let mut exited = Vec::new();
    for ((inst, handle), status) in watched.into_iter().zip(statuses) {
        match status {
            InstanceStatus::Running => {}
            InstanceStatus::Exited(exit) => exited.push(Input::Exited {
                id: inst.id.clone(),
                detail: exit.to_string(),
                cause: if exit.oom_killed {
                    ExitCause::OutOfMemory
                } else {
                    ExitCause::Crashed
                },
            }),
            InstanceStatus::Gone => exited.push(Input::Exited {
                id: inst.id.clone(),
                detail: format!("{} gone", handle.locator),
                cause: ExitCause::Crashed,
            }),
        }
    }
    exited
}
