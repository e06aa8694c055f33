//! `Date` and `Valid-Until` of Release files (RFC 2822 style, as apt reads them).

use crate::ParseError;

/// Parses `Sat, 11 Jul 2026 10:16:37 UTC` (or `+0000`-style offsets) into
/// seconds since the Unix epoch. Every field is range-checked: a date that
/// does not exist (`31 Feb`, `99:99:99`, a `+9999` offset, year 0 or 99999)
/// is refused, never wrapped into another one.
pub fn parse_release_date(s: &str) -> Result<i64, ParseError> {
    let bad = || ParseError::Other(format!("unreadable date {s:?}"));
    let s = s.trim();
    let s = s.split_once(',').map_or(s, |(_, r)| r).trim();
    let parts: Vec<&str> = s.split_whitespace().collect();
    if parts.len() < 4 || parts.len() > 5 {
        return Err(bad());
    }
    let num = |t: &str, max_len: usize| -> Result<i64, ParseError> {
        if t.is_empty() || t.len() > max_len || !t.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        t.parse().map_err(|_| bad())
    };
    let day = num(parts[0], 2)?;
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    let month = MONTHS
        .iter()
        .position(|m| parts[1].get(..3).is_some_and(|p| p.eq_ignore_ascii_case(m)))
        .ok_or_else(bad)? as i64
        + 1;
    let year = num(parts[2], 4)?;
    if !(1970..=9999).contains(&year) || !(1..=days_in_month(year, month)).contains(&day) {
        return Err(bad());
    }
    let hms: Vec<&str> = parts[3].split(':').collect();
    if hms.len() < 2 || hms.len() > 3 {
        return Err(bad());
    }
    let (h, m) = (num(hms[0], 2)?, num(hms[1], 2)?);
    let sec = hms.get(2).map(|x| num(x, 2)).transpose()?.unwrap_or(0);
    // 60: a leap second, as RFC 2822 allows.
    if h > 23 || m > 59 || sec > 60 {
        return Err(bad());
    }
    let offset = match parts.get(4).copied() {
        None | Some("UTC" | "GMT" | "Z" | "UT") => 0,
        Some(z) if (z.starts_with('+') || z.starts_with('-')) && z.len() == 5 && z.is_ascii() => {
            let (oh, om) = (num(&z[1..3], 2)?, num(&z[3..5], 2)?);
            if oh > 23 || om > 59 {
                return Err(bad());
            }
            let secs = oh * 3600 + om * 60;
            if z.starts_with('-') { -secs } else { secs }
        }
        Some(_) => return Err(bad()),
    };
    let days = days_from_civil(year, month, day);
    Ok(days * 86400 + h * 3600 + m * 60 + sec - offset)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        4 | 6 | 9 | 11 => 30,
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        _ => 31,
    }
}

/// Formats seconds since the epoch the way Release files write dates.
pub fn format_release_date(t: i64) -> String {
    let days = t.div_euclid(86400);
    let secs = t.rem_euclid(86400);
    let (y, m, d) = civil_from_days(days);
    const WD: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MN: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} UTC",
        WD[days.rem_euclid(7) as usize],
        d,
        MN[(m - 1) as usize],
        y,
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// `20261125T181500Z`: a UTC time that sorts as text (image versions,
/// mirror generations).
pub fn format_compact(t: i64) -> String {
    let (y, m, d) = civil_from_days(t.div_euclid(86400));
    let s = t.rem_euclid(86400);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

// Howard Hinnant's civil-date algorithms.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_offsets() {
        let t = parse_release_date("Sat, 11 Jul 2026 10:16:37 UTC").unwrap();
        assert_eq!(t, 1783764997);
        assert_eq!(format_release_date(t), "Sat, 11 Jul 2026 10:16:37 UTC");
        assert_eq!(
            parse_release_date("Sat, 11 Jul 2026 12:16:37 +0200").unwrap(),
            t
        );
        assert_eq!(format_release_date(0), "Thu, 01 Jan 1970 00:00:00 UTC");
        assert_eq!(format_compact(t), "20260711T101637Z");
        assert!(parse_release_date("yesterday").is_err());
        assert!(parse_release_date("Sat, 11 Foo 2026 10:16:37 UTC").is_err());
        assert_eq!(
            parse_release_date("Thu, 29 Feb 2024 23:59:60 UTC").unwrap(),
            parse_release_date("Fri, 01 Mar 2024 00:00:00 UTC").unwrap()
        );
    }

    /// Dates that do not exist are refused, not wrapped into others.
    #[test]
    fn impossible_dates_are_refused() {
        // Five bytes, not five characters (found by the fuzzer).
        assert!(parse_release_date("Fri, 11 Jul 2025 10:16 -m\u{FFFD}").is_err());
        for d in [
            "Tue, 31 Feb 2026 10:00:00 UTC",
            "Sat, 29 Feb 2025 10:00:00 UTC",
            "Sat, 31 Apr 2026 10:00:00 UTC",
            "Sat, 11 Jul 2026 99:99:99 UTC",
            "Sat, 11 Jul 2026 24:00:00 UTC",
            "Sat, 11 Jul 2026 10:60:00 UTC",
            "Sat, 11 Jul 2026 10:00:61 UTC",
            "Sat, 11 Jul 2026 10:16:37 +9999",
            "Sat, 11 Jul 2026 10:16:37 +2400",
            "Sat, 11 Jul 2026 10:16:37 +0060",
            "Sat, 11 Jul 2026 10:16:37 +-100",
            "Sat, 00 Jul 2026 10:16:37 UTC",
            "Sat, 11 Jul 0 10:16:37 UTC",
            "Sat, 11 Jul 99999 10:16:37 UTC",
            "Sat, 11 Jul 9223372036854775807 10:16:37 UTC",
            "Sat, -1 Jul 2026 10:16:37 UTC",
            "Sat, 11 aaé 2026 10:16:37 UTC",
            "Sat, 11 Jul 2026 10:16:37 UTC extra",
            "Sat, 11 Jul 2026 1:2:3:4 UTC",
        ] {
            assert!(parse_release_date(d).is_err(), "{d}");
        }
    }
}
