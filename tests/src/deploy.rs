//! The files under `deploy/` that operators load into their own tools: the
//! Prometheus alert rules and the Grafana dashboard, and what the tests
//! read out of them.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

/// `deploy/prometheus/alerts.yml`.
pub fn alert_rules() -> PathBuf {
    repo().join("deploy/prometheus/alerts.yml")
}

/// `deploy/grafana/balancer.json`.
pub fn dashboard() -> PathBuf {
    repo().join("deploy/grafana/balancer.json")
}

/// The workspace root, named without `..`: the VM copies only `deploy/`
/// into the guest, where `tests/..` would not resolve.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives inside the workspace")
        .to_path_buf()
}

/// The names of the alerts in [`alert_rules`], in file order.
pub fn alert_names() -> Vec<String> {
    std::fs::read_to_string(alert_rules())
        .expect("read the alert rules")
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(|name| name.trim().to_owned())
        .collect()
}

/// Every PromQL query of the dashboard: each panel target's `expr` (rows'
/// nested panels too), with the dashboard's variables replaced by values
/// Prometheus accepts (`$__rate_interval` → `1m`, `$instance`/`$service`
/// → `.*`, as "All" selects).
pub fn dashboard_queries() -> Vec<String> {
    let text = std::fs::read_to_string(dashboard()).expect("read the dashboard");
    let json: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    collect_exprs(&json["panels"], &mut exprs);
    exprs
        .into_iter()
        .map(|e| {
            e.replace("$__rate_interval", "1m")
                .replace("$instance", ".*")
                .replace("$service", ".*")
        })
        .collect()
}

fn collect_exprs(panels: &serde_json::Value, out: &mut Vec<String>) {
    for panel in panels.as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                out.push(expr.to_owned());
            }
        }
        collect_exprs(&panel["panels"], out);
    }
}

/// The metrics the dashboard's template variables query, from their
/// `label_values(METRIC{...}, LABEL)`.
pub fn dashboard_variable_metrics() -> Vec<String> {
    let text = std::fs::read_to_string(dashboard()).expect("read the dashboard");
    let json: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    json["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["query"]["query"].as_str())
        .map(|q| {
            let args = q
                .strip_prefix("label_values(")
                .unwrap_or_else(|| panic!("a variable query other than label_values: {q}"));
            args.split(['{', ','])
                .next()
                .expect("a metric")
                .trim()
                .to_owned()
        })
        .collect()
}

/// The metric names a PromQL expression selects: identifiers outside
/// strings, label matchers, ranges and `by (...)`-style label lists, that
/// are neither a function (followed by `(`) nor a keyword or aggregation.
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        // Aggregations, which may come before their `by (...)`.
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "group",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
    ];
    const LABEL_LISTS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    // Set after a keyword that takes a label list: the next `( ... )` holds
    // label names, not metrics.
    let mut labels_next = false;
    while i < chars.len() {
        let c = chars[i];
        let skip_to = |close: char, from: usize| {
            (from + 1..chars.len())
                .find(|&j| chars[j] == close)
                .unwrap_or_else(|| panic!("unclosed {close:?} in {expr}"))
        };
        match c {
            '"' => i = skip_to('"', i) + 1,
            '{' => i = skip_to('}', i) + 1,
            '[' => i = skip_to(']', i) + 1,
            '(' if labels_next => {
                labels_next = false;
                i = skip_to(')', i) + 1;
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let next = chars[i..].iter().find(|c| !c.is_whitespace());
                if LABEL_LISTS.contains(&word.as_str()) {
                    labels_next = true;
                } else if KEYWORDS.contains(&word.as_str()) || next == Some(&'(') {
                    // A keyword or a function call.
                } else {
                    names.insert(word);
                }
            }
            // Numbers, with their exponents and units (`1e3`, `5m`).
            c if c.is_ascii_digit() || c == '.' => {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_skips_functions_labels_and_keywords() {
        let got = metric_names(
            r#"sum by (service, backend) (rate(a_total{x="y{"}[5m])) / ignoring (table) b{t="c"} > 0.9 * 1e3 + on(i) group_left(j) c"#,
        );
        assert_eq!(
            got,
            ["a_total", "b", "c"]
                .map(str::to_owned)
                .into_iter()
                .collect()
        );
        assert!(metric_names("time() - 5").is_empty());
    }
}
