//! `Date` and `Valid-Until` of Release files (RFC 2822 style, as apt reads them).

use crate::ParseError;

/// Parses `Sat, 11 Jul 2026 10:16:37 UTC` (or `+0000`-style offsets) into
/// seconds since the Unix epoch.
pub fn parse_release_date(s: &str) -> Result<i64, ParseError> {
    let bad = || ParseError::Other(format!("unreadable date {s:?}"));
    let s = s.trim();
    let s = s.split_once(',').map_or(s, |(_, r)| r).trim();
    let parts: Vec<&str> = s.split_whitespace().collect();
    if parts.len() < 4 {
        return Err(bad());
    }
    let day: i64 = parts[0].parse().map_err(|_| bad())?;
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    let month = MONTHS
        .iter()
        .position(|m| parts[1].len() >= 3 && parts[1][..3].eq_ignore_ascii_case(m))
        .ok_or_else(bad)? as i64
        + 1;
    let year: i64 = parts[2].parse().map_err(|_| bad())?;
    let hms: Vec<i64> = parts[3]
        .split(':')
        .map(|x| x.parse().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    if hms.len() < 2 || hms.len() > 3 || !(1..=31).contains(&day) {
        return Err(bad());
    }
    let offset = match parts.get(4).copied() {
        None | Some("UTC" | "GMT" | "Z" | "UT") => 0,
        Some(z) if (z.starts_with('+') || z.starts_with('-')) && z.len() == 5 => {
            let n: i64 = z[1..].parse().map_err(|_| bad())?;
            let secs = (n / 100) * 3600 + (n % 100) * 60;
            if z.starts_with('-') { -secs } else { secs }
        }
        Some(_) => return Err(bad()),
    };
    let days = days_from_civil(year, month, day);
    Ok(days * 86400 + hms[0] * 3600 + hms[1] * 60 + hms.get(2).copied().unwrap_or(0) - offset)
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
    }
}
