//! Where logs go and how they look: one line per event on stderr, as text
//! (coloured on a terminal) or as JSON objects for a log shipper.
//!
//! The level filter comes from `--log-level` when given, else from
//! `RUST_LOG`, else `info`: the flag the operator wrote on the command line
//! (or in the unit file) wins over the environment. Both take a full
//! `tracing` filter, e.g. `info,balancer_user::health=debug`.

use clap::ValueEnum;
use tracing_subscriber::{EnvFilter, filter::LevelFilter};

/// `--log-format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `message`, the
    /// event's fields and `target`.
    Json,
}

/// Checks a `--log-level` value (clap's `value_parser`), so a bad filter is
/// refused before anything starts. A single word must be a level: a filter
/// would read `verbose` as a module name and log nothing at all.
pub fn parse_level(level: &str) -> Result<String, String> {
    let hint = "try error, warn, info, debug or trace";
    if !level.contains(['=', ',']) {
        return level
            .parse::<LevelFilter>()
            .map(|_| level.to_owned())
            .map_err(|_| format!("not a log level; {hint}"));
    }
    EnvFilter::try_new(level)
        .map(|_| level.to_owned())
        .map_err(|e| format!("not a log filter ({e}); {hint}"))
}

/// The filter: `level` if given, else `RUST_LOG`, else `info`.
fn filter(level: Option<&str>) -> EnvFilter {
    match level {
        // `parse_level` accepted it already.
        Some(level) => EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info")),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    }
}

/// Installs the global subscriber; call once, first thing.
pub fn init(format: LogFormat, level: Option<&str>) {
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter(level));
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder.json().flatten_event(true).with_ansi(false).init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_levels_and_filters_parse_and_nonsense_does_not() {
        for good in ["info", "DEBUG", "off", "warn,balancer_user::health=debug"] {
            assert_eq!(parse_level(good).as_deref(), Ok(good));
        }
        for (bad, starts) in [
            ("verbose", "not a log level;"),
            ("info,a=bogus", "not a log filter ("),
            ("=x", "not a log filter ("),
        ] {
            let err = parse_level(bad).unwrap_err();
            assert!(err.starts_with(starts), "{bad}: {err}");
        }
    }
}
