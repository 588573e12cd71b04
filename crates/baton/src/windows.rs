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

/// How a deploy that waits for its window says when it starts, on the
/// window's own clock: `waits for the window Mon 02:00 Europe/Berlin, in 3 d 14 h`.
pub fn describe_wait(w: &UpgradeWindows, start_ms: i64, now_ms: i64) -> String {
    let when = timestamp(start_ms)
        .map(|t| {
            t.to_zoned_datetime(w.time_zone())
                .strftime("%a %H:%M")
                .to_string()
        })
        .unwrap_or_else(|| "?".into());
    format!(
        "waits for the window {when} {}, in {} (`baton deploy --now` starts it at once)",
        w.timezone,
        format_wait(start_ms.saturating_sub(now_ms))
    )
}

/// A wait in its two largest units: `3 d 14 h`, `2 h 5 min`, `40 s`.
fn format_wait(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    let (d, h, m) = (s / 86_400, s / 3_600 % 24, s / 60 % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s} s"),
        (0, 0, m) => format!("{m} min"),
        (0, h, m) => format!("{h} h {m} min"),
        (d, h, _) => format!("{d} d {h} h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An app whose only window is Monday 02:00-05:00 in `tz`.
    fn monday_nights(tz: &str) -> AppSpec {
        let yaml = format!(
            "name: x\nlisten: 127.0.0.1:1\ninstances: 1\ndriver:\n  process:\n    command: [\"sh\"]\nreadiness:\n  path: /\nstrategy:\n  rolling: {{}}\nupgrade_windows:\n  timezone: {tz}\n  allowed:\n    - {{ days: [mon], start: \"02:00\", end: \"05:00\" }}\n"
        );
        baton_spec::parse_spec("x.yaml", &yaml).expect("valid spec")
    }

    #[test]
    fn a_waiting_deploy_says_when_it_starts_on_the_window_clock() {
        let spec = monday_nights("Europe/Berlin");
        // Thursday 2026-11-26 11:00 UTC (12:00 in Berlin); the window opens
        // Monday 02:00 in Berlin (01:00 UTC).
        let now: jiff::Timestamp = "2026-11-26T11:00:00Z".parse().unwrap();
        let start = next_start_ms(&spec, now.as_millisecond()).expect("closed now");
        let w = spec.upgrade_windows.as_ref().unwrap();
        let text = describe_wait(w, start, now.as_millisecond());
        assert!(
            text.starts_with("waits for the window Mon 02:00 Europe/Berlin, in 3 d 14 h"),
            "{text}"
        );
    }

    #[test]
    fn waits_read_in_their_two_largest_units() {
        assert_eq!(format_wait(40_000), "40 s");
        assert_eq!(format_wait(125 * 60_000), "2 h 5 min");
        assert_eq!(format_wait(7 * 60_000), "7 min");
        assert_eq!(format_wait((86_400 + 3_600) * 1000), "1 d 1 h");
    }
}
