//! Upgrade windows: a rollout still running when its window closes is paused
//! (if the spec says so) and resumed when the next one opens.

use baton_engine::{AppState, Input};
use baton_spec::AppSpec;

/// Who pauses and resumes a rollout for its window, as the engine records it.
const BY_WINDOW: &str = "the upgrade window";

/// The `Pause` or `Resume` the window calls for at `now_ms`, if any.
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
        (None, false) => Some(Input::Pause {
            by: BY_WINDOW.into(),
        }),
        (Some(p), true) if p.contains(BY_WINDOW) => Some(Input::Resume {
            by: BY_WINDOW.into(),
        }),
        _ => None,
    }
}
