//! Deadline arithmetic: days after Apple's posting date at a local time, ring delays, weekends
//! and the minimum lead time, computed in the policy's time zone. Devices receive the result as
//! local time without an offset.

use jiff::civil::{Date, DateTime, Weekday};
use jiff::{Timestamp, ToSpan};

use crate::api::validate::CheckedDeadline;

/// The deadline for a release posted on `posted`, in a ring delayed by `delay_days`, as if
/// handed out at `now` (no sooner than the minimum lead time from then). The rollout ledger
/// (`ledger`) fixes it once a device has it.
pub fn deadline(rule: &CheckedDeadline, posted: Date, delay_days: u32, now: Timestamp) -> DateTime {
    let days = i64::from(rule.days_after_posting) + i64::from(delay_days);
    let date = posted.checked_add(days.days()).unwrap_or(posted);
    let at = skip_weekend(rule, date).to_datetime(rule.local_time);
    match earliest(rule, now) {
        Some(earliest) => at.max(earliest),
        None => at,
    }
}

/// The first deadline the minimum lead time allows when handing out at `now`: the first
/// `localTime` at or after `now + minimumLeadTime` (weekends skipped when asked); `None` when
/// the policy sets no lead time.
pub fn earliest(rule: &CheckedDeadline, now: Timestamp) -> Option<DateTime> {
    let lead = rule.minimum_lead_time?;
    let earliest = now
        .checked_add(lead)
        .unwrap_or(now)
        .to_zoned(rule.time_zone.clone())
        .datetime();
    let mut date = earliest.date();
    if date.to_datetime(rule.local_time) < earliest {
        date = date.tomorrow().unwrap_or(date);
    }
    Some(skip_weekend(rule, date).to_datetime(rule.local_time))
}

pub fn skip_weekend(rule: &CheckedDeadline, date: Date) -> Date {
    if !rule.skip_weekends {
        return date;
    }
    let shift = match date.weekday() {
        Weekday::Saturday => 2,
        Weekday::Sunday => 1,
        _ => 0,
    };
    date.checked_add(shift.days()).unwrap_or(date)
}

/// The moment a device-local deadline falls, read in the policy's time zone (for "is it past").
pub fn instant(rule_zone: &jiff::tz::TimeZone, at: DateTime) -> Option<Timestamp> {
    at.to_zoned(rule_zone.clone()).ok().map(|z| z.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::{date, time};

    fn rule(skip_weekends: bool, lead: Option<&str>) -> CheckedDeadline {
        CheckedDeadline {
            days_after_posting: 14,
            local_time: time(19, 0, 0, 0),
            time_zone: jiff::tz::TimeZone::get("Europe/Berlin").expect("tz"),
            skip_weekends,
            minimum_lead_time: lead.map(|l| l.parse().expect("duration")),
        }
    }

    fn now(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    #[test]
    fn days_after_posting_at_local_time() {
        // 2026-03-04 + 14 days = Wednesday 2026-03-18.
        let at = deadline(
            &rule(false, None),
            date(2026, 3, 4),
            0,
            now("2026-03-05T00:00:00Z"),
        );
        assert_eq!(at, date(2026, 3, 18).at(19, 0, 0, 0));
        let ring = deadline(
            &rule(false, None),
            date(2026, 3, 4),
            7,
            now("2026-03-05T00:00:00Z"),
        );
        assert_eq!(ring, date(2026, 3, 25).at(19, 0, 0, 0));
    }

    #[test]
    fn weekends_move_to_monday() {
        // 2026-03-07 + 14 = Saturday 2026-03-21 → Monday 2026-03-23.
        let at = deadline(
            &rule(true, None),
            date(2026, 3, 7),
            0,
            now("2026-03-08T00:00:00Z"),
        );
        assert_eq!(at, date(2026, 3, 23).at(19, 0, 0, 0));
        let sunday = deadline(
            &rule(true, None),
            date(2026, 3, 8),
            0,
            now("2026-03-08T00:00:00Z"),
        );
        assert_eq!(sunday, date(2026, 3, 23).at(19, 0, 0, 0));
    }

    #[test]
    fn lead_time_pushes_past_deadlines_out() {
        // Posted long ago: the deadline would be in the past; 72h from Tuesday 2026-03-17 10:00
        // Berlin is Friday 2026-03-20 10:00 → that evening at 19:00.
        let at = deadline(
            &rule(false, Some("72h")),
            date(2026, 1, 1),
            0,
            now("2026-03-17T09:00:00Z"),
        );
        assert_eq!(at, date(2026, 3, 20).at(19, 0, 0, 0));
        // 81h lands on Friday 18:00 UTC = 19:00 Berlin exactly and keeps Friday; 82h passes it
        // → Saturday, and with skipped weekends Monday.
        let exact = deadline(
            &rule(true, Some("81h")),
            date(2026, 1, 1),
            0,
            now("2026-03-17T09:00:00Z"),
        );
        assert_eq!(exact, date(2026, 3, 20).at(19, 0, 0, 0));
        let at = deadline(
            &rule(true, Some("82h")),
            date(2026, 1, 1),
            0,
            now("2026-03-17T09:00:00Z"),
        );
        assert_eq!(at, date(2026, 3, 23).at(19, 0, 0, 0));
    }
}
