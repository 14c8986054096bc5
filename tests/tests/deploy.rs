//! The operator's files under `deploy/`: the Prometheus alert rules pass
//! `promtool check rules` and their unit tests (`promtool test rules`), and
//! the Grafana dashboard queries only metrics the daemon exports. That a
//! real Prometheus loads and evaluates the rules against a real daemon is
//! in `control.rs` (`prometheus_scrapes_the_metrics`).

use std::{collections::BTreeSet, process::Command};

use balancer_tests::deploy::{
    alert_names, alert_rules, dashboard_queries, dashboard_variable_metrics, metric_names,
};
use balancer_user::metrics::{Snapshot, render_prometheus_text};

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .output()
        .expect("promtool (Debian's prometheus package)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let rules = alert_rules();
    let checked = promtool(&["check", "rules", rules.to_str().unwrap()]);
    let names = alert_names();
    assert!(
        checked.contains(&format!("SUCCESS: {} rules found", names.len())),
        "{checked}"
    );
    for want in [
        "BalancerBackendDown",
        "BalancerServiceAllBackendsDown",
        "BalancerConntrackTableNearlyFull",
        "BalancerAffinityTableNearlyFull",
        "BalancerDropsRising",
        "BalancerClusterPeerDown",
        "BalancerProxyBadInput",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
    }
    let tests = rules.with_file_name("alerts_test.yml");
    let tested = promtool(&["test", "rules", tests.to_str().unwrap()]);
    assert!(tested.contains("SUCCESS"), "{tested}");
    // Every metric the rules (and their descriptions) name is exported.
    let text = std::fs::read_to_string(&rules).unwrap();
    let exported = exported();
    let mut named = BTreeSet::new();
    for (i, _) in text.match_indices("balancer_") {
        let name: String = text[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        assert!(
            exported.contains(&name),
            "the alert rules name {name}, which the daemon does not export"
        );
        named.insert(name);
    }
    assert!(named.contains("balancer_cluster_peer_up"), "{named:?}");
    println!("alert rules: {} rules checked and unit-tested", names.len());
}

/// Every family the daemon exports, from the `# TYPE` lines of its
/// classic text exposition (families are written even with no samples;
/// the cluster's with `[cluster] peers`).
fn exported() -> BTreeSet<String> {
    let snapshot = Snapshot {
        cluster: Some(Box::default()),
        ..Snapshot::default()
    };
    render_prometheus_text(&snapshot)
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap().to_owned())
        .collect()
}

#[test]
fn the_dashboard_queries_only_exported_metrics() {
    let exported = exported();
    let queries = dashboard_queries();
    assert!(queries.len() >= 15, "{queries:#?}");
    let mut used = BTreeSet::new();
    for q in &queries {
        let names = metric_names(q);
        assert!(!names.is_empty(), "a query without a metric: {q}");
        for name in names {
            assert!(
                exported.contains(&name),
                "the dashboard queries {name}, which the daemon does not export: {q}\nexported: {exported:?}"
            );
            used.insert(name);
        }
    }
    for name in dashboard_variable_metrics() {
        assert!(exported.contains(&name), "variable on {name}: {exported:?}");
    }
    // What the dashboard is for: each of these has a panel.
    for want in [
        "balancer_backend_up",
        "balancer_backend_active_connections",
        "balancer_backend_connections_total",
        "balancer_backend_packets_total",
        "balancer_backend_bytes_total",
        "balancer_packets_dropped_total",
        "balancer_affinity_entries",
        "balancer_conntrack_entries",
        "balancer_table_capacity",
        "balancer_health_checks_total",
        "balancer_backend_last_change_seconds",
    ] {
        assert!(used.contains(want), "no panel shows {want}");
    }
    println!(
        "dashboard: {} queries over {} of {} exported metrics",
        queries.len(),
        used.len(),
        exported.len()
    );
}
