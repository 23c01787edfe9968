//! Calendar compliance periods: `window: calendar_month` or `calendar_quarter`, in a time zone
//! given as a fixed UTC offset (`time_zone: "+02:00"`).
//!
//! A calendar SLO's budget covers the events since the start of the current month (or quarter)
//! in that offset, and starts afresh at the next one. The offset is fixed: no time zone
//! database is bundled, so a zone with daylight saving time is approximated by one of its two
//! offsets and the period boundary is off by one hour for the half of the year in the other one.
//!
//! Dates use the proleptic Gregorian calendar (`days_from_civil` from Howard Hinnant's
//! "chrono-Compatible Low-Level Date Algorithms").

use std::time::Duration;

/// Which calendar period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CalendarUnit {
    /// From the first day of a month, 00:00, to the first of the next.
    Month,
    /// From January, April, July or October 1st, 00:00, to the next of those.
    Quarter,
}

impl CalendarUnit {
    /// The config name: `calendar_month` or `calendar_quarter`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Month => "calendar_month",
            Self::Quarter => "calendar_quarter",
        }
    }

    /// The longest period (31 or 92 days): the live ring's size.
    pub fn longest(self) -> Duration {
        let days = match self {
            Self::Month => 31,
            Self::Quarter => 92,
        };
        Duration::from_secs(days * 86_400)
    }

    fn months(self) -> u32 {
        match self {
            Self::Month => 1,
            Self::Quarter => 3,
        }
    }
}

/// A calendar compliance period in a fixed UTC offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Calendar {
    /// Month or quarter.
    pub unit: CalendarUnit,
    /// Seconds east of UTC (`+02:00` is 7200).
    pub utc_offset_seconds: i32,
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// (year, month 1-12, day 1-31) of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { yoe + 1 } else { yoe } + era * 400, m, d)
}

impl Calendar {
    /// Unix time (seconds) at which the period holding `unix` started.
    pub fn period_start(&self, unix: i64) -> i64 {
        let offset = i64::from(self.utc_offset_seconds);
        let (y, m, _) = civil_from_days((unix + offset).div_euclid(86_400));
        let first = m - (m - 1) % self.unit.months();
        days_from_civil(y, first, 1) * 86_400 - offset
    }

    /// Unix time at which the period holding `unix` ends (the next one starts).
    pub fn period_end(&self, unix: i64) -> i64 {
        let offset = i64::from(self.utc_offset_seconds);
        let (y, m, _) = civil_from_days((self.period_start(unix) + offset).div_euclid(86_400));
        let next = m + self.unit.months();
        let (y, next) = if next > 12 {
            (y + 1, next - 12)
        } else {
            (y, next)
        };
        days_from_civil(y, next, 1) * 86_400 - offset
    }

    /// The offset as `+HH:MM`.
    pub fn offset_text(&self) -> String {
        offset_text(self.utc_offset_seconds)
    }
}

/// `+HH:MM` / `-HH:MM` for seconds east of UTC.
pub fn offset_text(seconds: i32) -> String {
    let sign = if seconds < 0 { '-' } else { '+' };
    let s = seconds.unsigned_abs();
    format!("{sign}{:02}:{:02}", s / 3600, s / 60 % 60)
}

/// Parses a fixed UTC offset: `UTC`, `Z`, `+02:00`, `-05:30`, `+0200` (at most 14 hours).
pub fn parse_offset(text: &str) -> Result<i32, String> {
    let t = text.trim();
    if matches!(t, "UTC" | "utc" | "Z" | "Etc/UTC" | "GMT") {
        return Ok(0);
    }
    let bad = || {
        format!("time zone {text:?} is not a fixed UTC offset: use UTC, +02:00 or -05:30 (no time zone database is bundled)")
    };
    let t = t.strip_prefix("UTC").unwrap_or(t);
    let (sign, rest) = match t.as_bytes().first() {
        Some(b'+') => (1, &t[1..]),
        Some(b'-') => (-1, &t[1..]),
        _ => return Err(bad()),
    };
    let (h, m) = match rest.split_once(':') {
        Some((h, m)) => (h, m),
        None if rest.len() == 4 => rest.split_at(2),
        None if rest.len() <= 2 => (rest, "0"),
        None => return Err(bad()),
    };
    let (Ok(h), Ok(m)) = (h.parse::<i32>(), m.parse::<i32>()) else {
        return Err(bad());
    };
    if h > 14 || m > 59 || (h == 14 && m > 0) {
        return Err(bad());
    }
    Ok(sign * (h * 3600 + m * 60))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unix(y: i64, m: u32, d: u32, h: i64) -> i64 {
        days_from_civil(y, m, d) * 86_400 + h * 3600
    }

    #[test]
    fn civil_dates_round_trip() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        for z in [-800_000, -1, 0, 59, 60, 11_016, 19_782, 20_000, 800_000] {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z, "{z}");
        }
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
    }

    #[test]
    fn months_start_at_local_midnight_of_the_first() {
        let utc = Calendar {
            unit: CalendarUnit::Month,
            utc_offset_seconds: 0,
        };
        let t = unix(2026, 3, 15, 12);
        assert_eq!(utc.period_start(t), unix(2026, 3, 1, 0));
        assert_eq!(utc.period_end(t), unix(2026, 4, 1, 0));
        assert_eq!(utc.period_end(unix(2026, 12, 31, 23)), unix(2027, 1, 1, 0));
        assert_eq!(utc.period_start(unix(2026, 3, 1, 0)), unix(2026, 3, 1, 0));
        // +02:00: March starts at 22:00 UTC on February 28th; 23:00 UTC that day is March.
        let berlin = Calendar {
            utc_offset_seconds: 7200,
            ..utc
        };
        assert_eq!(
            berlin.period_start(unix(2026, 2, 28, 23)),
            unix(2026, 2, 28, 22)
        );
        assert_eq!(
            berlin.period_start(unix(2026, 2, 28, 21)),
            unix(2026, 1, 31, 22)
        );
        let new_york = Calendar {
            utc_offset_seconds: -5 * 3600,
            ..utc
        };
        // 02:00 UTC on April 1st is still March 31st in New York.
        assert_eq!(
            new_york.period_start(unix(2026, 4, 1, 2)),
            unix(2026, 3, 1, 5)
        );
    }

    #[test]
    fn quarters_start_in_january_april_july_and_october() {
        let q = Calendar {
            unit: CalendarUnit::Quarter,
            utc_offset_seconds: 0,
        };
        assert_eq!(q.period_start(unix(2026, 5, 20, 0)), unix(2026, 4, 1, 0));
        assert_eq!(q.period_end(unix(2026, 5, 20, 0)), unix(2026, 7, 1, 0));
        assert_eq!(q.period_start(unix(2026, 12, 31, 0)), unix(2026, 10, 1, 0));
        assert_eq!(q.period_end(unix(2026, 11, 2, 0)), unix(2027, 1, 1, 0));
        assert_eq!(q.period_start(unix(2026, 3, 31, 23)), unix(2026, 1, 1, 0));
    }

    #[test]
    fn offsets_parse_and_print() {
        assert_eq!(parse_offset("UTC"), Ok(0));
        assert_eq!(parse_offset("+02:00"), Ok(7200));
        assert_eq!(parse_offset("-05:30"), Ok(-(5 * 3600 + 1800)));
        assert_eq!(parse_offset("+0545"), Ok(5 * 3600 + 45 * 60));
        assert!(parse_offset("Europe/Berlin")
            .unwrap_err()
            .contains("fixed UTC offset"));
        assert!(parse_offset("+15:00").is_err());
        assert_eq!(offset_text(-(5 * 3600 + 1800)), "-05:30");
        assert_eq!(offset_text(0), "+00:00");
    }
}
