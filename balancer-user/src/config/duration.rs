//! Human durations: `"500ms"`, `"2s"`, `"10m"`, `"1h"`, and sums of them
//! written largest unit first without spaces (`"1m30s"`, `"1h30m"`).
//!
//! Units: `ns`, `us`, `ms`, `s`, `m`, `h`, `d`. [`format`] writes the same
//! syntax, so `parse(&format(d)) == Ok(d)` for every duration up to [`MAX`].

use std::time::Duration;

/// The longest duration accepted: 365 days. Far beyond any sane timeout, and
/// small enough that its nanoseconds fit the kernel's `u64` timestamps.
pub const MAX: Duration = Duration::from_secs(365 * 24 * 3600);

/// Units, largest first, with their length in nanoseconds.
const UNITS: [(&str, u128); 7] = [
    ("d", 86_400_000_000_000),
    ("h", 3_600_000_000_000),
    ("m", 60_000_000_000),
    ("s", 1_000_000_000),
    ("ms", 1_000_000),
    ("us", 1_000),
    ("ns", 1),
];

const HINT: &str = r#"use a number and a unit: "500ms", "2s", "10m", "1h" or "1m30s""#;

/// Parses a duration; the error is a one-line message that quotes `text`.
pub fn parse(text: &str) -> Result<Duration, String> {
    let invalid = |why: &str| format!("invalid duration {text:?}: {why}");
    if text.is_empty() {
        return Err(invalid(HINT));
    }
    let mut total: u128 = 0;
    let mut previous_unit = None;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(invalid(HINT));
        }
        let (number, after) = rest.split_at(digits);
        let unit_len = after
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        if unit.is_empty() {
            let why = if after.starts_with('.') {
                r#"fractions are not supported; use a smaller unit, as in "1500ms" for 1.5s"#
            } else {
                HINT
            };
            return Err(invalid(why));
        }
        let Some(index) = UNITS.iter().position(|&(name, _)| name == unit) else {
            return Err(invalid(&format!(
                "unknown unit {unit:?} (expected ns, us, ms, s, m, h or d)"
            )));
        };
        if previous_unit.is_some_and(|p| p >= index) {
            return Err(invalid(
                "write each unit once, largest first, as in \"1m30s\"",
            ));
        }
        previous_unit = Some(index);
        let number: u128 = number.parse().map_err(|_| invalid("number too large"))?;
        total = number
            .checked_mul(UNITS[index].1)
            .and_then(|n| total.checked_add(n))
            .ok_or_else(|| invalid("too long"))?;
        rest = after;
    }
    if total > MAX.as_nanos() {
        return Err(invalid("longer than the maximum of 365d"));
    }
    let secs = (total / 1_000_000_000) as u64;
    let nanos = (total % 1_000_000_000) as u32;
    Ok(Duration::new(secs, nanos))
}

/// Writes `d` the way [`parse`] reads it: `"10m"`, `"1m30s"`, `"0s"`.
pub fn format(d: Duration) -> String {
    let mut left = d.as_nanos();
    if left == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (name, nanos) in UNITS {
        let n = left / nanos;
        if n > 0 {
            out.push_str(&n.to_string());
            out.push_str(name);
            left -= n * nanos;
        }
    }
    out
}

/// `#[serde(serialize_with = "duration::serialize")]`: a duration as its
/// human string, so status JSON and a re-serialized config read like the file.
pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(*d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_single_units() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse("7ns"), Ok(Duration::from_nanos(7)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn parses_compound_durations() {
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("1s500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("90s"), Ok(Duration::from_secs(90)));
    }

    #[test]
    fn rejects_malformed_durations() {
        for bad in [
            "", "10", "m", "s10", "1.5s", "10 m", " 10m", "10m ", "10x", "10min", "1s1m", "1s1s",
            "-1s", "10M", "1e3s",
        ] {
            let err = parse(bad).expect_err(bad);
            assert!(
                err.starts_with(&format!("invalid duration {bad:?}: ")),
                "{err}"
            );
            assert!(!err.contains('\n'), "{err}");
        }
        assert!(parse("1.5s").unwrap_err().contains("1500ms"));
        assert!(parse("10min").unwrap_err().contains("unknown unit \"min\""));
    }

    #[test]
    fn rejects_overlong_durations() {
        assert_eq!(parse("365d"), Ok(MAX));
        assert!(parse("366d").unwrap_err().contains("maximum"));
        assert!(parse("99999999999999999999999999999999999999999d").is_err());
        assert!(parse("999999999999999999999d").is_err());
    }

    #[test]
    fn formats_largest_units_first() {
        assert_eq!(format(Duration::ZERO), "0s");
        assert_eq!(format(Duration::from_millis(500)), "500ms");
        assert_eq!(format(Duration::from_secs(2)), "2s");
        assert_eq!(format(Duration::from_secs(600)), "10m");
        assert_eq!(format(Duration::from_secs(90)), "1m30s");
        assert_eq!(format(Duration::from_secs(3600)), "1h");
        assert_eq!(format(Duration::from_millis(1500)), "1s500ms");
        assert_eq!(format(Duration::new(1, 1)), "1s1ns");
    }

    #[test]
    fn format_round_trips() {
        for d in [
            Duration::ZERO,
            Duration::from_nanos(1),
            Duration::from_micros(1500),
            Duration::from_millis(123_456_789),
            Duration::new(86_400 * 3 + 3661, 1_001_001),
            MAX,
        ] {
            assert_eq!(parse(&format(d)), Ok(d), "{d:?}");
        }
    }
}
