//! Upgrade windows: a rollout still running when its window closes is paused
//! (if the spec says so) and resumed when the next one opens.

use baton_engine::{AppState, Input, PauseReason};
use baton_spec::AppSpec;

/// `UpgradeWindowClosed` or `UpgradeWindowOpened` when the window at `now_ms`
/// calls for a pause or the end of the window's own pause.
pub fn follow(spec: &AppSpec, state: &AppState, now_ms: i64) -> Option<Input> {
    let w = spec.upgrade_windows.as_ref()?;
    if w.on_end != baton_spec::OnWindowEnd::Pause {
        return None;
    }
    let r = state.rollout.as_ref()?;
    if r.phase != baton_engine::RolloutPhase::Progressing || r.not_before_ms.is_some() {
        return None;
    }
    let open = crate::windows::is_open(w, now_ms);
    match (&r.paused, open) {
        (None, false) => Some(Input::UpgradeWindowClosed),
        (Some(PauseReason::UpgradeWindow), true) => Some(Input::UpgradeWindowOpened),
        _ => None,
    }
}
