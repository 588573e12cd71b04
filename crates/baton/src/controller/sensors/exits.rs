//! Driver events: instances whose process ended on their own, seen by asking
//! the driver for the status of every instance that should be running.

use baton_driver::{DynDriver, InstanceStatus};
use baton_engine::{AppState, ExitCause, Input, InstancePhase as P};

/// How often a container's status is asked of its engine (an API call each;
/// a process's is a read of /proc, asked at every tick).
pub const CONTAINER_POLL_MS: i64 = 1_000;

/// An `Exited` input for each instance the state believes running (starting,
/// ready or draining) whose process the driver reports ended or gone.
/// Containers are only asked about when `containers_too`.
pub async fn exited(driver: &dyn DynDriver, state: &AppState, containers_too: bool) -> Vec<Input> {
    let mut exited = Vec::new();
    for inst in &state.instances {
        if !matches!(
            inst.phase,
            P::Starting | P::Ready { .. } | P::Draining { .. }
        ) {
            continue;
        }
        let Some(handle) = &inst.handle else {
            continue;
        };
        if !containers_too && matches!(handle.locator, baton_engine::Locator::Container { .. }) {
            continue;
        }
        match driver.status(handle).await {
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
