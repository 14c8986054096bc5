//! The human status page at `GET /`, in the spirit of HAProxy's stats page:
//! one table per service, a coloured state per backend, refreshed every 2 s.

use std::fmt::Write as _;

use super::{BackendSnapshot, Snapshot};

const STYLE: &str = "\
body{font-family:sans-serif;font-size:13px;margin:1em;background:#fafafa}\
h1{font-size:18px}h2{font-size:15px;margin:1.2em 0 .3em}\
table{border-collapse:collapse;margin-bottom:1em}\
th,td{border:1px solid #999;padding:2px 6px}th{background:#ddd}\
td.n{text-align:right;font-family:monospace}\
tr.up td.state{background:#6c6;font-weight:bold}\
tr.down td.state{background:#e55;font-weight:bold;color:#fff}\
tr.drain td.state{background:#6af;font-weight:bold}\
.muted{color:#666}";

/// The snapshot as an HTML page; every text from the snapshot is escaped.
pub fn render_html(s: &Snapshot) -> String {
    let mut h = String::new();
    // `write!` to a String cannot fail; the results are ignored below.
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"2\">\
         <title>balancer status</title><style>{STYLE}</style></head><body>\n\
         <h1>balancer status</h1>\n\
         <p class=\"muted\">generated at {} (Unix time) &middot; conntrack entries: {} &middot; \
         <a href=\"/metrics\">/metrics</a> &middot; <a href=\"/status\">/status</a></p>\n",
        s.generated_at, s.conntrack_entries,
    );
    for svc in &s.services {
        let _ = write!(
            h,
            "<h2>{} <span class=\"muted\">{} {} &middot; affinity {} ({} entries)</span></h2>\n\
             <table>\n<tr><th>backend</th><th>state</th><th>weight</th><th>active</th>\
             <th>total</th><th>packets in</th><th>packets out</th><th>bytes in</th>\
             <th>bytes out</th><th>checks passed</th><th>checks failed</th><th>last check</th></tr>\n",
            escape(&svc.name),
            escape(&svc.protocol),
            escape(&svc.vip),
            escape(&svc.affinity),
            svc.affinity_entries,
        );
        for b in &svc.backends {
            backend_row(&mut h, b);
        }
        if svc.backends.is_empty() {
            h.push_str("<tr><td colspan=\"12\" class=\"muted\">no backends</td></tr>\n");
        }
        h.push_str("</table>\n");
    }
    if !s.drops.is_empty() {
        h.push_str("<h2>dropped packets</h2>\n<table>\n<tr><th>reason</th><th>packets</th></tr>\n");
        for (reason, n) in &s.drops {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td class=\"n\">{n}</td></tr>",
                escape(reason)
            );
        }
        h.push_str("</table>\n");
    }
    h.push_str("</body></html>\n");
    h
}

fn backend_row(h: &mut String, b: &BackendSnapshot) {
    let (class, state) = if !b.up {
        ("down", "DOWN")
    } else if b.draining {
        ("drain", "DRAIN")
    } else {
        ("up", "UP")
    };
    let _ = writeln!(
        h,
        "<tr class=\"{class}\"><td>{}</td><td class=\"state\">{state}</td>\
         <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
         <td class=\"n\">{}</td><td class=\"n\">{}</td>\
         <td class=\"n\" title=\"{} bytes\">{}</td><td class=\"n\" title=\"{} bytes\">{}</td>\
         <td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
        escape(&b.address),
        b.weight,
        b.active_connections,
        b.connections_total,
        b.packets_in,
        b.packets_out,
        b.bytes_in,
        human_bytes(b.bytes_in),
        b.bytes_out,
        human_bytes(b.bytes_out),
        b.health_passed,
        b.health_failed,
        b.last_check
            .as_deref()
            .map_or_else(|| "-".to_owned(), escape),
    );
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
        // web: 198.18.1.1 up, 198.18.1.2 down; dns: [2001:db8::1] draining.
        assert!(
            html.contains("<tr class=\"up\"><td>198.18.1.1:8080</td><td class=\"state\">UP</td>")
        );
        assert!(
            html.contains(
                "<tr class=\"down\"><td>198.18.1.2:8080</td><td class=\"state\">DOWN</td>"
            )
        );
        assert!(html.contains(
            "<tr class=\"drain\"><td>[2001:db8::1]:53</td><td class=\"state\">DRAIN</td>"
        ));
        assert!(html.contains("ok (200) 100 ms, 2s ago"));
        assert!(html.contains("no_backend"));
    }

    #[test]
    fn metrics_escape_and_human_bytes() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 * 1024 * 1024), "5.0 MiB");
    }
}
