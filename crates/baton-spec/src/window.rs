//! When upgrade windows are open: pure functions of a [`Timestamp`], read on the
//! wall clock of the windows' time zone, so that daylight saving time changes
//! are handled the way people read a clock.
//!
//! Whether the windows are open can only change where the local clock shows a
//! window's start or end, at local midnight (the day changes) or at a time zone
//! transition (the clock jumps). [`UpgradeWindows::next_open`] and
//! [`UpgradeWindows::closes_at`] therefore test just those instants.

use jiff::civil::{Date, DateTime, Time};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Span, Timestamp};

use crate::model::{TimeOfDay, UpgradeWindow, UpgradeWindows, Weekday};

/// How far [`UpgradeWindows::next_open`] and [`UpgradeWindows::closes_at`] look ahead.
const HORIZON: SignedDuration = SignedDuration::from_hours(8 * 24);

impl UpgradeWindows {
    /// The time zone the windows are read in. Validation checked that the name
    /// exists; should this machine's time zone database lack it (a spec stored
    /// elsewhere), UTC.
    pub fn time_zone(&self) -> TimeZone {
        TimeZone::get(&self.timezone).unwrap_or(TimeZone::UTC)
    }

    /// Whether an upgrade may run at `at`: some window's day is the local date
    /// (or, for a window crossing midnight, the day before) and the local time
    /// is in `[start, end)`. A local time that a DST change skips never occurs;
    /// one that it repeats counts both times.
    pub fn is_open(&self, at: Timestamp) -> bool {
        self.open_in(&self.time_zone(), at)
    }

    /// The first instant at or after `at` when a window is open: `at` itself if
    /// one is open now. `None` if none opens within 8 days (only possible when
    /// every window lies in a skipped DST hour).
    pub fn next_open(&self, at: Timestamp) -> Option<Timestamp> {
        let tz = self.time_zone();
        if self.open_in(&tz, at) {
            return Some(at);
        }
        let starts: Vec<TimeOfDay> = self.allowed.iter().map(|w| w.start).collect();
        self.changes(&tz, at, &starts)
            .into_iter()
            .find(|&t| self.open_in(&tz, t))
    }

    /// The first instant after `at` when every window is closed (windows that
    /// touch or overlap count as one). `None` if no window is open at `at`, or
    /// if they stay open for the whole 8 days searched (such as every day from
    /// 00:00 to 24:00).
    pub fn closes_at(&self, at: Timestamp) -> Option<Timestamp> {
        let tz = self.time_zone();
        if !self.open_in(&tz, at) {
            return None;
        }
        let ends: Vec<TimeOfDay> = self.allowed.iter().map(|w| w.end).collect();
        self.changes(&tz, at, &ends)
            .into_iter()
            .find(|&t| !self.open_in(&tz, t))
    }

    fn open_in(&self, tz: &TimeZone, at: Timestamp) -> bool {
        let local = tz.to_datetime(at);
        self.allowed.iter().any(|w| w.contains(local))
    }

    /// Sorted instants in `(at, at + HORIZON]` where the local clock shows one of
    /// `walls` or midnight, plus the time zone's transitions in that span.
    fn changes(&self, tz: &TimeZone, at: Timestamp, walls: &[TimeOfDay]) -> Vec<Timestamp> {
        let Ok(horizon) = at.checked_add(HORIZON) else {
            return Vec::new();
        };
        let in_span = |t: &Timestamp| at < *t && *t <= horizon;
        let mut times: Vec<Timestamp> = tz
            .following(at)
            .map(|tr| tr.timestamp())
            .take_while(|t| *t <= horizon)
            .collect();
        let first_day = tz.to_datetime(at).date();
        // Local dates around the span; a UTC offset is at most a day.
        for offset in -1..=9 {
            let Ok(day) = first_day.checked_add(Span::new().days(offset)) else {
                continue;
            };
            for wall in walls.iter().chain([&TimeOfDay { hour: 0, minute: 0 }]) {
                let Some(local) = wall_time(day, *wall) else {
                    continue;
                };
                // Both readings of a repeated local time; in a skipped one, the
                // transition (already listed) is where the clock passes it.
                let ambiguous = tz.to_ambiguous_timestamp(local);
                let earlier = ambiguous.earlier();
                let later = ambiguous.later();
                times.extend(earlier.into_iter().chain(later).filter(in_span));
            }
        }
        times.sort_unstable();
        times.dedup();
        times
    }
}

impl UpgradeWindow {
    /// Whether the local date and time `local` is in this window.
    fn contains(&self, local: DateTime) -> bool {
        let minute = local_minutes(local);
        let day = Weekday::from(local.date().weekday());
        let (start, end) = (self.start.minutes(), self.end.minutes());
        if self.crosses_midnight() {
            (self.days.contains(&day) && minute >= start)
                || (self.days.contains(&day.previous()) && minute < end)
        } else {
            self.days.contains(&day) && start <= minute && minute < end
        }
    }
}

/// Minutes since local midnight, 0..1440.
fn local_minutes(local: DateTime) -> u16 {
    let hour = u16::try_from(local.hour()).unwrap_or(0);
    let minute = u16::try_from(local.minute()).unwrap_or(0);
    hour * 60 + minute
}

/// `day` at `wall`; 24:00 is the next day's midnight.
fn wall_time(day: Date, wall: TimeOfDay) -> Option<DateTime> {
    if wall == TimeOfDay::END_OF_DAY {
        return Some(day.tomorrow().ok()?.to_datetime(Time::midnight()));
    }
    let time = Time::new(
        i8::try_from(wall.hour).ok()?,
        i8::try_from(wall.minute).ok()?,
        0,
        0,
    )
    .ok()?;
    Some(day.to_datetime(time))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::OnWindowEnd;

    fn hm(text: &str) -> TimeOfDay {
        TimeOfDay::parse(text).unwrap()
    }

    fn windows(timezone: &str, allowed: &[(&[Weekday], &str, &str)]) -> UpgradeWindows {
        UpgradeWindows {
            timezone: timezone.to_owned(),
            allowed: allowed
                .iter()
                .map(|(days, start, end)| UpgradeWindow {
                    days: days.to_vec(),
                    start: hm(start),
                    end: hm(end),
                })
                .collect(),
            on_end: OnWindowEnd::Finish,
        }
    }

    /// A local time in `tz` (the earlier reading if repeated) as a timestamp.
    fn at(tz: &str, local: &str) -> Timestamp {
        let dt: DateTime = local.parse().unwrap();
        TimeZone::get(tz)
            .unwrap()
            .to_ambiguous_timestamp(dt)
            .earlier()
            .unwrap()
    }

    fn utc(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    const WEEKDAYS: &[Weekday] = &[
        Weekday::Mon,
        Weekday::Tue,
        Weekday::Wed,
        Weekday::Thu,
        Weekday::Fri,
    ];

    fn berlin_nights() -> UpgradeWindows {
        windows("Europe/Berlin", &[(WEEKDAYS, "02:00", "05:00")])
    }

    #[test]
    fn friday_night_waits_for_monday() {
        let w = berlin_nights();
        // 2026-11-20 is a Friday.
        let friday = at("Europe/Berlin", "2026-11-20T23:00");
        assert_eq!(
            TimeZone::get("Europe/Berlin")
                .unwrap()
                .to_datetime(friday)
                .weekday(),
            jiff::civil::Weekday::Friday
        );
        assert!(!w.is_open(friday));
        assert_eq!(w.closes_at(friday), None);
        let monday = at("Europe/Berlin", "2026-11-23T02:00");
        assert_eq!(w.next_open(friday), Some(monday));
        // 02:00 in Berlin in winter is 01:00 UTC.
        assert_eq!(monday, utc("2026-11-23T01:00:00Z"));
        assert!(w.is_open(monday));
        // Just before the window it is still closed.
        assert!(!w.is_open(utc("2026-11-23T00:59:59.999Z")));
    }

    #[test]
    fn inside_a_window() {
        let w = berlin_nights();
        let now = at("Europe/Berlin", "2026-11-24T03:17:12");
        assert!(w.is_open(now));
        assert_eq!(w.next_open(now), Some(now));
        assert_eq!(
            w.closes_at(now),
            Some(at("Europe/Berlin", "2026-11-24T05:00"))
        );
        // The end is exclusive.
        let end = at("Europe/Berlin", "2026-11-24T05:00");
        assert!(!w.is_open(end));
        assert_eq!(
            w.next_open(end),
            Some(at("Europe/Berlin", "2026-11-25T02:00"))
        );
    }

    #[test]
    fn window_crossing_midnight() {
        // Opens Friday and Saturday at 22:00, closes the next day at 03:00.
        let w = windows(
            "America/New_York",
            &[(&[Weekday::Fri, Weekday::Sat], "22:00", "03:00")],
        );
        let tz = "America/New_York";
        // 2026-11-21 is a Saturday.
        let saturday_1am = at(tz, "2026-11-21T01:00");
        assert!(w.is_open(saturday_1am)); // Friday's window
        let sunday_1am = at(tz, "2026-11-22T01:00");
        assert!(w.is_open(sunday_1am)); // Saturday's window
        // The two nights are separate windows.
        assert_eq!(w.closes_at(sunday_1am), Some(at(tz, "2026-11-22T03:00")));
        // Monday 01:00 would be Sunday's window, which is not allowed.
        let monday_1am = at(tz, "2026-11-23T01:00");
        assert!(!w.is_open(monday_1am));
        assert_eq!(w.next_open(monday_1am), Some(at(tz, "2026-11-27T22:00")));
        let friday_noon = at(tz, "2026-11-20T12:00");
        assert_eq!(w.next_open(friday_noon), Some(at(tz, "2026-11-20T22:00")));
        assert_eq!(
            w.closes_at(at(tz, "2026-11-20T23:59")),
            Some(at(tz, "2026-11-21T03:00"))
        );
    }

    #[test]
    fn touching_windows_close_once() {
        let w = windows(
            "UTC",
            &[
                (&Weekday::ALL, "20:00", "24:00"),
                (&Weekday::ALL, "00:00", "06:00"),
            ],
        );
        let t = utc("2026-11-20T21:00:00Z");
        assert_eq!(w.closes_at(t), Some(utc("2026-11-21T06:00:00Z")));
        // Always open: never closes within the horizon.
        let always = windows("UTC", &[(&Weekday::ALL, "00:00", "24:00")]);
        assert!(always.is_open(t));
        assert_eq!(always.next_open(t), Some(t));
        assert_eq!(always.closes_at(t), None);
    }

    #[test]
    fn spring_forward_day() {
        // On 2026-03-29 Berlin clocks jump from 02:00 CET to 03:00 CEST (01:00 UTC).
        let w = windows("Europe/Berlin", &[(&Weekday::ALL, "02:00", "05:00")]);
        let before = utc("2026-03-29T00:30:00Z"); // 01:30 CET
        assert!(!w.is_open(before));
        // The clock never shows 02:xx: the window opens when it jumps to 03:00.
        assert_eq!(w.next_open(before), Some(utc("2026-03-29T01:00:00Z")));
        assert_eq!(
            w.closes_at(utc("2026-03-29T01:00:00Z")),
            Some(utc("2026-03-29T03:00:00Z")) // 05:00 CEST
        );
        // A window inside the skipped hour does not happen that day.
        let skipped = windows("Europe/Berlin", &[(&Weekday::ALL, "02:15", "02:45")]);
        assert_eq!(
            skipped.next_open(before),
            Some(at("Europe/Berlin", "2026-03-30T02:15"))
        );
        // The day before, 02:00 was 01:00 UTC; the day after, 00:00 UTC.
        assert_eq!(
            w.next_open(utc("2026-03-28T00:00:00Z")),
            Some(utc("2026-03-28T01:00:00Z"))
        );
        assert_eq!(
            w.next_open(utc("2026-03-29T04:00:00Z")),
            Some(utc("2026-03-30T00:00:00Z"))
        );
    }

    #[test]
    fn fall_back_day() {
        // On 2026-10-25 Berlin clocks go back from 03:00 CEST to 02:00 CET (01:00 UTC).
        let w = windows("Europe/Berlin", &[(&Weekday::ALL, "02:00", "05:00")]);
        let open = utc("2026-10-25T00:00:00Z"); // 02:00 CEST
        assert_eq!(w.next_open(utc("2026-10-24T23:00:00Z")), Some(open));
        // Four hours long: 02:00 CEST to 05:00 CET.
        assert_eq!(w.closes_at(open), Some(utc("2026-10-25T04:00:00Z")));
        // A window in the repeated hour opens twice.
        let repeated = windows("Europe/Berlin", &[(&Weekday::ALL, "01:30", "02:30")]);
        let first = utc("2026-10-24T23:30:00Z"); // 01:30 CEST
        assert!(repeated.is_open(first));
        assert_eq!(repeated.closes_at(first), Some(utc("2026-10-25T00:30:00Z")));
        let between = utc("2026-10-25T00:45:00Z"); // 02:45 CEST
        assert!(!repeated.is_open(between));
        // The clock goes back to 02:00 CET: open again until 02:30 CET.
        assert_eq!(
            repeated.next_open(between),
            Some(utc("2026-10-25T01:00:00Z"))
        );
        assert_eq!(
            repeated.closes_at(utc("2026-10-25T01:00:00Z")),
            Some(utc("2026-10-25T01:30:00Z"))
        );
    }

    #[test]
    fn nothing_within_eight_days() {
        // Only inside the skipped hour, and only on Sundays: the next such
        // Sunday without a DST change is found, one with a change is not.
        let w = windows("Europe/Berlin", &[(&[Weekday::Sun], "02:15", "02:45")]);
        let saturday = utc("2026-03-28T12:00:00Z");
        assert_eq!(
            w.next_open(saturday),
            Some(at("Europe/Berlin", "2026-04-05T02:15"))
        );
        let sunday_after = utc("2026-04-05T00:20:00Z"); // 02:20 CEST
        assert_eq!(w.next_open(sunday_after), Some(sunday_after));
        let monday = utc("2026-03-23T12:00:00Z");
        // Sunday 2026-03-29 is skipped; 2026-04-05 is more than 8 days away.
        assert_eq!(w.next_open(monday), None);
    }

    #[test]
    fn unknown_zone_reads_as_utc() {
        let w = windows("Nowhere/Atlantis", &[(&Weekday::ALL, "02:00", "03:00")]);
        assert!(w.is_open(utc("2026-11-20T02:30:00Z")));
    }
}
