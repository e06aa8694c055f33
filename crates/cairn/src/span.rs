//! Durations as an admin writes them on a command line or in a file.

use anyhow::{Context, Result, bail};

/// `7d`, `12h`, `30min`, `3600s` or `3600` as seconds.
pub fn parse_duration(s: &str) -> Result<i64> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (n, unit) = s.split_at(digits);
    let n: i64 = n
        .parse()
        .with_context(|| format!("{s:?}: a number and a unit (7d, 12h, 30min, 3600s)"))?;
    let mul = match unit {
        "" | "s" => 1,
        "min" | "m" => 60,
        "h" => 3600,
        "d" => 86400,
        "w" => 7 * 86400,
        _ => bail!("{s:?}: a number and a unit (7d, 12h, 30min, 3600s)"),
    };
    n.checked_mul(mul)
        .with_context(|| format!("{s:?} is too long"))
}
