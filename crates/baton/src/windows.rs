//! Upgrade windows (low-traffic periods): when a deploy may start and when a
//! running rollout should pause. The calendar arithmetic (time zones, DST,
//! windows across midnight) lives with the spec; this turns it into the
//! millisecond times the engine takes.

use baton_spec::{AppSpec, UpgradeWindows};

fn timestamp(ms: i64) -> Option<jiff::Timestamp> {
    jiff::Timestamp::from_millisecond(ms).ok()
}

/// When a deploy asked for at `now_ms` may start: `None` if it may start now
/// (no windows, or one is open).
pub fn next_start_ms(spec: &AppSpec, now_ms: i64) -> Option<i64> {
    let w = spec.upgrade_windows.as_ref()?;
    let now = timestamp(now_ms)?;
    if w.is_open(now) {
        return None;
    }
    w.next_open(now).map(|t| t.as_millisecond())
}

/// Whether a window is open at `now_ms`.
pub fn is_open(w: &UpgradeWindows, now_ms: i64) -> bool {
    timestamp(now_ms).is_none_or(|t| w.is_open(t))
}
