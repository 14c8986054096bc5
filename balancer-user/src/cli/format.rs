//! Formatting the CLI's commands share: durations, byte counts, aligned
//! tables, JSON, and writing to stdout.

use std::io::{self, Write as _};

use anyhow::Context as _;
use serde::Serialize;

/// A duration in milliseconds, short and readable: `850ms`, `3.2s`,
/// `4m05s`, `3h07m`, `2d04h`.
pub fn duration_ms(ms: u64) -> String {
    const MINUTE: u64 = 60;
    const HOUR: u64 = 60 * MINUTE;
    const DAY: u64 = 24 * HOUR;
    if ms < 1000 {
        return format!("{ms}ms");
    }
    if ms < 60_000 {
        // Tenths, truncated, so 59.99 s does not read as 60.0s.
        return format!("{}.{}s", ms / 1000, ms % 1000 / 100);
    }
    let s = ms / 1000;
    match s {
        _ if s < HOUR => format!("{}m{:02}s", s / MINUTE, s % MINUTE),
        _ if s < DAY => format!("{}h{:02}m", s / HOUR, s % HOUR / MINUTE),
        _ => format!("{}d{:02}h", s / DAY, s % DAY / HOUR),
    }
}

/// A byte count in binary units: `512 B`, `9.8 KiB`, `1.2 MiB`, ...
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    // Move up before `{:.1}` would round to 1024.0.
    while v >= 1023.95 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// How a table column lines up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A text table: a header row, then rows, columns two spaces apart, no
/// trailing spaces. Control characters in cells print as `?`.
#[derive(Debug)]
pub struct Table {
    columns: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(columns: &[(&'static str, Align)]) -> Table {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; it must have one cell per column.
    pub fn row(&mut self, cells: Vec<String>) {
        assert_eq!(cells.len(), self.columns.len(), "one cell per column");
        self.rows.push(
            cells
                .into_iter()
                .map(|c| {
                    c.chars()
                        .map(|ch| if ch.is_control() { '?' } else { ch })
                        .collect()
                })
                .collect(),
        );
    }

    /// The table, every line starting with `indent` and ending in `\n`.
    pub fn render(&self, indent: &str) -> String {
        let header: Vec<String> = self.columns.iter().map(|(h, _)| h.to_string()).collect();
        let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::from(indent);
            for (i, ((cell, width), (_, align))) in
                row.iter().zip(&widths).zip(&self.columns).enumerate()
            {
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = " ".repeat(width - cell.chars().count());
                match align {
                    Align::Left => {
                        line.push_str(cell);
                        line.push_str(&pad);
                    }
                    Align::Right => {
                        line.push_str(&pad);
                        line.push_str(cell);
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `value` as pretty JSON, with a final newline.
pub fn json<T: Serialize>(value: &T) -> String {
    let mut s =
        serde_json::to_string_pretty(value).expect("the control protocol's types always serialize");
    s.push('\n');
    s
}

/// Write `text` to stdout. A closed pipe (`balancer flows | head`) is not
/// an error: the reader has what it wanted.
pub fn print(text: &str) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("cannot write to stdout"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_format_durations() {
        for (ms, want) in [
            (0, "0ms"),
            (999, "999ms"),
            (1000, "1.0s"),
            (3_250, "3.2s"),
            (59_999, "59.9s"),
            (60_000, "1m00s"),
            (245_000, "4m05s"),
            (3_599_999, "59m59s"),
            (3_600_000, "1h00m"),
            (11_220_000, "3h07m"),
            (86_400_000, "1d00h"),
            (187_200_000, "2d04h"),
            (u64::MAX, "213503982334d14h"),
        ] {
            assert_eq!(duration_ms(ms), want, "{ms} ms");
        }
    }

    #[test]
    fn cli_format_bytes() {
        for (n, want) in [
            (0, "0 B"),
            (1023, "1023 B"),
            (1024, "1.0 KiB"),
            (10_035, "9.8 KiB"),
            (1024 * 1024 - 1, "1.0 MiB"),
            (1_258_291, "1.2 MiB"),
            (5 * 1024 * 1024 * 1024, "5.0 GiB"),
            (u64::MAX, "16.0 EiB"),
        ] {
            assert_eq!(bytes(n), want, "{n} bytes");
        }
    }

    #[test]
    fn cli_format_table_aligns_and_trims() {
        let mut t = Table::new(&[
            ("NAME", Align::Left),
            ("N", Align::Right),
            ("NOTE", Align::Left),
        ]);
        t.row(vec!["a".into(), "1234".into(), String::new()]);
        t.row(vec!["longer\u{1b}[31m".into(), "5".into(), "x".into()]);
        assert_eq!(
            t.render("  "),
            "  NAME            N  NOTE\n\
             \x20 a            1234\n\
             \x20 longer?[31m     5  x\n"
        );
    }
}
