//! Duration flags: humantime values (`10s`, `500ms`, `1m 30s`). The flags were integers
//! before (`--connect-timeout-ms 2000`, `--shutdown-grace-s 10`), and those spellings keep
//! working as aliases: a bare number is read in the unit the old name carried.

use std::time::Duration;

fn parse(s: &str, bare: fn(u64) -> Duration, unit: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(n) = s.parse::<u64>() {
        return Ok(bare(n));
    }
    humantime::parse_duration(s).map_err(|e| {
        format!("{s:?} is not a duration ({e}); write e.g. 10s, 500ms, or a number of {unit}")
    })
}

/// A duration; a bare number is milliseconds.
pub fn ms(s: &str) -> Result<Duration, String> {
    parse(s, Duration::from_millis, "milliseconds")
}

/// A duration; a bare number is seconds.
pub fn secs(s: &str) -> Result<Duration, String> {
    parse(s, Duration::from_secs, "seconds")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn humantime_or_a_bare_number_in_the_old_unit() {
        assert_eq!(ms("2000"), Ok(Duration::from_secs(2)));
        assert_eq!(ms("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(ms("1m 30s"), Ok(Duration::from_secs(90)));
        assert_eq!(secs("10"), Ok(Duration::from_secs(10)));
        assert_eq!(secs("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(secs(" 3s "), Ok(Duration::from_secs(3)));
        for bad in ["", "x", "2h5", "-1", "1.5"] {
            assert!(ms(bad).is_err(), "{bad:?}");
        }
    }
}
