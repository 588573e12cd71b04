//! Lost hosts: a rollout pauses while any host of its app does not answer,
//! naming them and since when, and goes on by itself once all answer again.

use baton_engine::{AppState, Input, PauseReason, RolloutPhase};

/// `HostsUnreachable` when the set of unreachable hosts (`(name, since_ms)`)
/// differs from what the rollout's pause says.
pub fn follow(state: &AppState, unreachable: &[(String, i64)]) -> Option<Input> {
    let r = state.rollout.as_ref()?;
    if r.phase != RolloutPhase::Progressing {
        return None;
    }
    let hosts: Vec<String> = unreachable.iter().map(|(h, _)| h.clone()).collect();
    let since_ms = unreachable.iter().map(|(_, s)| *s).min().unwrap_or(0);
    match &r.paused {
        Some(PauseReason::HostsUnreachable { hosts: paused, .. }) if *paused == hosts => None,
        Some(PauseReason::HostsUnreachable { .. }) => {
            Some(Input::HostsUnreachable { hosts, since_ms })
        }
        // Paused for another reason: that pause stands; nothing to add.
        Some(_) => None,
        None if hosts.is_empty() => None,
        None => Some(Input::HostsUnreachable { hosts, since_ms }),
    }
}
