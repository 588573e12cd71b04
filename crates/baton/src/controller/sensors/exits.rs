//! Driver events: instances whose process ended on their own, seen by asking
//! the driver for the status of every instance that should be running.

use baton_driver::{DynDriver, InstanceStatus};
use baton_engine::{AppState, ExitCause, Input, InstancePhase as P};

/// How often a container's status is asked of its engine (an API call each;
/// a process's is a read of /proc, asked at every tick). Readiness probes see a
/// dead container sooner; this tells how it ended (exit code, OOM kill).
pub const CONTAINER_POLL_MS: i64 = 2_000;

/// An `Exited` input for each instance the state believes running (starting,
/// ready or draining) whose process the driver reports ended or gone.
/// Containers are only asked about when `containers_too`.
pub async fn exited(driver: &dyn DynDriver, state: &AppState, containers_too: bool) -> Vec<Input> {
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
