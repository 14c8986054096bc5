//! Human durations, read and written by `humantime`: `"500ms"`, `"2s"`,
//! `"10m"`, `"1h"`, and sums such as `"1m30s"` or `"1h 30m"`.
//!
//! Units are humantime's: `ns`, `us`, `ms`, `s`, `m` (minutes), `h`, `d`,
//! `w`, and their long forms (`min`, `sec`, `hours`, ...). What this module
//! adds is the bound [`MAX`], a refusal of humantime's calendar units (`M`
//! is months there, an easy slip for minutes in a timeout; months and years
//! have guessed lengths), and a one-line error that quotes the text.

use std::time::Duration;

/// The longest duration accepted: 365 days. Far beyond any sane timeout, and
/// small enough that its nanoseconds fit the kernel's `u64` timestamps.
pub const MAX: Duration = Duration::from_secs(365 * 24 * 3600);

/// humantime's units of months and years, refused (see the module doc).
const CALENDAR_UNITS: &[&str] = &["M", "month", "months", "y", "year", "years"];

const HINT: &str = r#"use numbers with units, as in "500ms", "2s", "10m" or "1m30s""#;

/// Parses a duration; the error is a one-line message that quotes `text`.
pub fn parse(text: &str) -> Result<Duration, String> {
    if let Some(unit) = text
        .split(|c: char| !c.is_ascii_alphabetic())
        .find(|unit| CALENDAR_UNITS.contains(unit))
    {
        return Err(format!(
            "invalid duration {text:?}: {unit:?} is a calendar unit (\"M\" means months); \
             use m for minutes, or h, d, w"
        ));
    }
    let d = humantime::parse_duration(text)
        .map_err(|e| format!("invalid duration {text:?}: {e}; {HINT}"))?;
    if d > MAX {
        return Err(format!(
            "invalid duration {text:?}: longer than the maximum of 365d"
        ));
    }
    Ok(d)
}

/// Writes `d` the way [`parse`] reads it: `"10m"`, `"1m 30s"`, `"0s"`.
/// Whole days are written as days: humantime would write months and years,
/// which [`parse`] refuses.
pub fn format(d: Duration) -> String {
    const DAY: u64 = 86_400;
    let days = d.as_secs() / DAY;
    let rest = d - Duration::from_secs(days * DAY);
    match (days, rest.is_zero()) {
        (0, _) => humantime::format_duration(rest).to_string(),
        (_, true) => format!("{days}d"),
        (_, false) => format!("{days}d {}", humantime::format_duration(rest)),
    }
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
    fn parses_the_forms_the_config_uses() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("1s500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
    }

    #[test]
    fn rejects_malformed_durations() {
        for bad in ["", "10", "m", "s10", "10x", "-1s", "1e3s", "fast"] {
            let err = parse(bad).expect_err(bad);
            assert!(
                err.starts_with(&format!("invalid duration {bad:?}: ")),
                "{err}"
            );
            assert!(!err.contains('\n'), "{err}");
        }
        assert!(parse("10").unwrap_err().contains("\"500ms\""), "the hint");
        assert!(
            parse("10x")
                .unwrap_err()
                .contains("unknown time unit \"x\"")
        );
    }

    #[test]
    fn refuses_calendar_units() {
        for bad in ["10M", "1month", "2 months", "1y", "1year"] {
            let err = parse(bad).expect_err(bad);
            assert!(err.contains("calendar unit"), "{err}");
        }
        assert_eq!(parse("10min"), Ok(Duration::from_secs(600)));
    }

    #[test]
    fn rejects_overlong_durations() {
        assert_eq!(parse("365d"), Ok(MAX));
        assert!(parse("366d").unwrap_err().contains("maximum"));
        assert!(parse("99999999999999999999999999999999999999999d").is_err());
        assert!(parse("999999999999999999999d").is_err());
    }

    #[test]
    fn formats_as_the_file_writes_them() {
        assert_eq!(format(Duration::ZERO), "0s");
        assert_eq!(format(Duration::from_millis(500)), "500ms");
        assert_eq!(format(Duration::from_secs(2)), "2s");
        assert_eq!(format(Duration::from_secs(600)), "10m");
        assert_eq!(format(Duration::from_secs(3600)), "1h");
        assert_eq!(format(MAX), "365d");
        assert_eq!(format(Duration::from_secs(86_400 + 90)), "1d 1m 30s");
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
