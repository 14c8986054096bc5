//! The human status page at `GET /`, in the spirit of HAProxy's stats page:
//! one table per service, a coloured state per backend, refreshed every 2 s.

use std::{
    fmt::Write as _,
    time::{Duration, UNIX_EPOCH},
};

use super::{BackendSnapshot, Snapshot};

const STYLE: &str = "\
body{font-family:sans-serif;font-size:13px;margin:1em;background:#fafafa}\
h1{font-size:18px}h2{font-size:15px;margin:1.2em 0 .3em}\
table{border-collapse:collapse;margin-bottom:1em;table-layout:fixed;width:100%;max-width:1400px}\
table.small{width:auto}\
td{overflow-wrap:anywhere}\
.alert{color:#c00;font-weight:bold}\
th,td{border:1px solid #999;padding:2px 6px}th{background:#ddd}\
td.n{text-align:right;font-family:monospace}\
tr.up td.state{background:#6c6;font-weight:bold}\
tr.down td.state{background:#e55;font-weight:bold;color:#fff}\
tr.drain td.state{background:#6af;font-weight:bold}\
.why{font-weight:normal;font-size:11px}\
.muted{color:#666}";

/// How often the page reloads itself.
const REFRESH_SECONDS: u32 = 2;

/// The snapshot as an HTML page; every text from the snapshot is escaped.
pub fn render_html(s: &Snapshot) -> String {
    let mut h = String::new();
    let now = s.generated_at;
    // `write!` to a String cannot fail; the results are ignored below.
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\
         <title>balancer status</title><style>{STYLE}</style></head><body>\n\
         <h1>balancer status</h1>\n\
         <p class=\"muted\">balancer {} (git {}) &middot; up {} (since {}) &middot; \
         generated {} &middot; refreshes every {REFRESH_SECONDS} s &middot; \
         <a href=\"/metrics\">/metrics</a> &middot; <a href=\"/status\">/status</a></p>\n\
         <p class=\"muted\">conntrack table {} &middot; affinity table {}</p>\n",
        escape(&s.version),
        escape(&s.git),
        duration(now.saturating_sub(s.started_at)),
        time(s.started_at),
        time(now),
        fill(s.conntrack_entries, s.tables.flows.entries),
        fill(
            s.services
                .iter()
                .map(|svc| svc.affinity_entries)
                .sum::<u64>(),
            s.tables.affinity.entries
        ),
    );
    for svc in &s.services {
        let up = svc.backends.iter().filter(|b| b.up).count();
        let _ = write!(
            h,
            "<h2>{} <span class=\"{}\">{} of {} up</span> \
             <span class=\"muted\">&middot; {} {} &middot; affinity {} ({} entries) &middot; \
             table <code title=\"table_fingerprint: equal on gateways that pick alike\">{}</code></span></h2>\n\
             <table>\n{COLUMNS}<tr><th>backend</th><th>state</th><th>since</th><th>weight</th><th>active</th>\
             <th>total</th><th>packets in</th><th>packets out</th><th>bytes in</th>\
             <th>bytes out</th><th>checks passed</th><th>checks failed</th><th>last check</th></tr>\n",
            escape(&svc.name),
            if up == 0 && !svc.backends.is_empty() {
                "alert"
            } else {
                "muted"
            },
            up,
            svc.backends.len(),
            escape(&svc.protocol),
            escape(&svc.vip),
            escape(&svc.affinity),
            svc.affinity_entries,
            escape(&svc.table_fingerprint),
        );
        for b in &svc.backends {
            backend_row(&mut h, b, now);
        }
        if svc.backends.is_empty() {
            h.push_str("<tr><td colspan=\"13\" class=\"muted\">no backends</td></tr>\n");
        }
        h.push_str("</table>\n");
    }
    if !s.drops.is_empty() {
        h.push_str("<h2>dropped packets</h2>\n<table class=\"small\">\n<tr><th>reason</th><th>packets</th></tr>\n");
        for (reason, n) in &s.drops {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td class=\"n\">{}</td></tr>",
                escape(reason),
                thousands(*n)
            );
        }
        h.push_str("</table>\n");
    }
    h.push_str("</body></html>\n");
    h
}

fn backend_row(h: &mut String, b: &BackendSnapshot, now: u64) {
    let (class, state) = if !b.up {
        ("down", "DOWN")
    } else if b.draining {
        ("drain", "DRAIN")
    } else {
        ("up", "UP")
    };
    // Under the state: why it is down (the failed check that took it
    // down), and that a down backend is also draining, which its state
    // colour no longer shows.
    let notes: Vec<String> = [
        b.down_reason.as_deref().filter(|_| !b.up).map(escape),
        (!b.up && b.draining).then(|| "draining".to_owned()),
    ]
    .into_iter()
    .flatten()
    .collect();
    let why = if notes.is_empty() {
        String::new()
    } else {
        format!("<div class=\"why\">{}</div>", notes.join(" &middot; "))
    };
    let _ = writeln!(
        h,
        "<tr class=\"{class}\"><td>{}</td><td class=\"state\">{state}{why}</td>\
         <td title=\"{}\">{} ago</td>\
         <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
         <td class=\"n\">{}</td><td class=\"n\">{}</td>\
         <td class=\"n\" title=\"{} bytes\">{}</td><td class=\"n\" title=\"{} bytes\">{}</td>\
         <td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
        escape(&b.address),
        time(b.last_change),
        duration(now.saturating_sub(b.last_change)),
        b.weight,
        thousands(b.active_connections),
        thousands(b.connections_total),
        thousands(b.packets_in),
        thousands(b.packets_out),
        b.bytes_in,
        human_bytes(b.bytes_in),
        b.bytes_out,
        human_bytes(b.bytes_out),
        thousands(b.health_passed),
        thousands(b.health_failed),
        b.last_check
            .as_deref()
            .map_or_else(|| "-".to_owned(), escape),
    );
}

/// Column widths, the same in every service's table so they line up.
const COLUMNS: &str = "<colgroup><col style=\"width:13%\"><col style=\"width:11%\">\
<col style=\"width:8%\"><col style=\"width:5%\"><col style=\"width:5%\"><col style=\"width:6%\">\
<col style=\"width:7%\"><col style=\"width:7%\"><col style=\"width:6%\"><col style=\"width:6%\">\
<col style=\"width:5%\"><col style=\"width:5%\"><col style=\"width:16%\"></colgroup>\n";

/// `1234567` → `"1,234,567"`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `"12,000 of 65,536 entries (18%)"`.
fn fill(entries: u64, capacity: u32) -> String {
    let percent = if capacity == 0 {
        0
    } else {
        entries * 100 / u64::from(capacity)
    };
    format!(
        "{} of {} entries ({percent}%)",
        thousands(entries),
        thousands(u64::from(capacity))
    )
}

/// Unix seconds as `2023-11-14 22:13:20 UTC`.
fn time(unix: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(unix);
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replace('T', " ")
        .replace('Z', " UTC")
}

/// Seconds as `2h 5m` (`45s` under a minute, days beyond 24 h): the two
/// largest units are enough to read at a glance.
fn duration(seconds: u64) -> String {
    const UNITS: [(&str, u64); 4] = [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)];
    let Some(first) = UNITS.iter().position(|&(_, n)| seconds >= n) else {
        return "0s".to_owned();
    };
    let (unit, n) = UNITS[first];
    let mut out = format!("{}{unit}", seconds / n);
    if let Some(&(next_unit, next)) = UNITS.get(first + 1) {
        let rest = seconds % n / next;
        if rest > 0 {
            let _ = write!(out, " {rest}{next_unit}");
        }
    }
    out
}

/// Escapes text for HTML element content and quoted attribute values.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `1536` → `"1.5 KiB"`.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::tests::sample;

    #[test]
    fn metrics_page_escapes_and_shows_states() {
        let html = render_html(&sample());
        assert!(!html.contains("<script>"), "{html}");
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{html}"
        );
        assert!(html.contains("<meta http-equiv=\"refresh\" content=\"2\">"));
        // Version, uptime and times in words, not Unix seconds.
        assert!(
            html.contains("balancer 0.1.0 (git 1a2b3c4-dirty)"),
            "{html}"
        );
        assert!(
            html.contains("up 2h 46m (since 2023-11-14 19:26:40 UTC)"),
            "{html}"
        );
        assert!(html.contains("generated 2023-11-14 22:13:20 UTC"), "{html}");
        assert!(!html.contains("1700000000"), "{html}");
        assert!(
            html.contains("conntrack table 33 of 1,048,576 entries (0%)"),
            "{html}"
        );
        assert!(
            html.contains("<span class=\"muted\">1 of 2 up</span>"),
            "{html}"
        );
        // Each backend's last change, and why a down one went down.
        assert!(
            html.contains("<td title=\"2023-11-14 21:58:20 UTC\">15m ago</td>"),
            "{html}"
        );
        assert!(
            html.contains(
                "<td class=\"state\">DOWN<div class=\"why\">connection refused</div></td>"
            ),
            "{html}"
        );
        // web: 198.18.1.1 up, 198.18.1.2 down; dns: [2001:db8::1] draining.
        assert!(
            html.contains("<tr class=\"up\"><td>198.18.1.1:8080</td><td class=\"state\">UP</td>")
        );
        assert!(
            html.contains("<tr class=\"down\"><td>198.18.1.2:8080</td><td class=\"state\">DOWN<")
        );
        assert!(html.contains(
            "<tr class=\"drain\"><td>[2001:db8::1]:53</td><td class=\"state\">DRAIN</td>"
        ));
        assert!(html.contains("ok (200) 100 ms, 2s ago"));
        assert!(html.contains("no_backend"));
        assert!(html.contains(">00112233aabbccdd</code>"), "{html}");
    }

    /// A down backend that is also draining says both; an up one has no
    /// reason even if an old one is left.
    #[test]
    fn metrics_page_notes_under_the_state() {
        let mut s = sample();
        s.services[0].backends[1].draining = true;
        s.services[0].backends[0].down_reason = Some("stale".to_owned());
        let html = render_html(&s);
        assert!(
            html.contains("DOWN<div class=\"why\">connection refused &middot; draining</div>"),
            "{html}"
        );
        assert!(!html.contains("stale"), "{html}");
    }

    #[test]
    fn metrics_escape_human_bytes_and_times() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 * 1024 * 1024), "5.0 MiB");
        for (seconds, words) in [
            (0, "0s"),
            (59, "59s"),
            (60, "1m"),
            (61, "1m 1s"),
            (3_600, "1h"),
            (3_661, "1h 1m"),
            (90_061, "1d 1h"),
        ] {
            assert_eq!(duration(seconds), words);
        }
        assert_eq!(time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(fill(12_000, 65_536), "12,000 of 65,536 entries (18%)");
        assert_eq!(fill(0, 0), "0 of 0 entries (0%)");
    }
}
