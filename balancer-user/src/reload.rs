//! What a live reload may change, and how a change is described to the
//! operator. Pure: configs and service states in, lines out.
//!
//! A reload applies the services (and their backends) of the new file with
//! the planning rules a restart uses ([`crate::adopt`]). Everything outside
//! `[[services]]` is fixed when the daemon starts (the interfaces it attached
//! to, the pin dir and kernel table sizes the maps were created with, the
//! addresses it listens on), so a change there is refused, naming the key.

use std::collections::BTreeMap;

use anyhow::bail;
use serde_json::Value;

use crate::{
    config::{Config, ServiceConfig},
    state::{BackendState, ServiceState},
};

/// `Err` naming the first key outside `[[services]]` whose change needs a
/// restart.
pub fn restart_only(running: &Config, next: &Config) -> anyhow::Result<()> {
    let sections = |c: &Config| {
        let mut all = BTreeMap::new();
        flatten("interfaces", json(&c.interfaces), &mut all);
        flatten("bpf", json(&c.bpf), &mut all);
        flatten("tables", json(&c.tables), &mut all);
        flatten("proxy", json(&c.proxy), &mut all);
        flatten("metrics", json(&c.metrics), &mut all);
        flatten("control", json(&c.control), &mut all);
        flatten("announce", json(&c.announce), &mut all);
        flatten("cluster", json(&c.cluster), &mut all);
        all
    };
    let (old, new) = (sections(running), sections(next));
    // Both ways: a key set in one and left out of the other (an optional
    // section, `control.group`) is a change too.
    for key in old.keys().chain(new.keys()) {
        let (before, after) = (old.get(key), new.get(key));
        if before != after {
            let show = |v: Option<&Value>| v.map_or_else(|| "unset".to_owned(), text);
            bail!(
                "{key} changed ({} -> {}): that needs a restart, not a reload",
                show(before),
                show(after)
            );
        }
    }
    Ok(())
}

/// What turning `current` into `next` changes, one line each:
/// `+`/`-` for services and backends added and removed, `~` for a setting
/// that changed. Services are matched by VIP and protocol, backends by
/// address, as the planning does. Empty when nothing changes.
pub fn changes(current: &[ServiceState], next: &[ServiceState]) -> Vec<String> {
    let mut lines = Vec::new();
    for old in current {
        if !next.iter().any(|s| s.key() == old.key()) {
            lines.push(format!(
                "- service {} {}",
                old.config.name,
                vip(&old.config)
            ));
        }
    }
    for new in next {
        let name = &new.config.name;
        let Some(old) = current.iter().find(|s| s.key() == new.key()) else {
            lines.push(format!("+ service {name} {}", vip(&new.config)));
            for b in &new.backends {
                lines.push(format!(
                    "+ backend {name} {} weight {}",
                    b.address, b.weight
                ));
            }
            continue;
        };
        let (before, after) = (settings(&old.config), settings(&new.config));
        for (key, value) in &after {
            if before.get(key) != Some(value) {
                let was = before.get(key).map_or_else(|| "unset".to_owned(), text);
                lines.push(format!("~ service {name}: {key} {was} -> {}", text(value)));
            }
        }
        lines.extend(backend_changes(name, &old.backends, &new.backends));
    }
    lines
}

fn backend_changes(service: &str, old: &[BackendState], new: &[BackendState]) -> Vec<String> {
    let mut lines = Vec::new();
    for o in old {
        if !new.iter().any(|n| n.address == o.address) {
            lines.push(format!("- backend {service} {}", o.address));
        }
    }
    for n in new {
        match old.iter().find(|o| o.address == n.address) {
            None => lines.push(format!(
                "+ backend {service} {} weight {}",
                n.address, n.weight
            )),
            Some(o) => {
                if o.weight != n.weight {
                    lines.push(format!(
                        "~ backend {service} {}: weight {} -> {}",
                        n.address, o.weight, n.weight
                    ));
                }
                if o.runtime && !n.runtime {
                    lines.push(format!(
                        "~ backend {service} {}: now in the config (was added at run time)",
                        n.address
                    ));
                }
            }
        }
    }
    lines
}

/// `VIP/PROTOCOL`.
fn vip(config: &ServiceConfig) -> String {
    format!("{}/{}", config.vip, config.protocol)
}

/// A service's settings but its backends, as `key = value` (`health.rise`).
fn settings(config: &ServiceConfig) -> BTreeMap<String, Value> {
    let mut value = json(config);
    if let Value::Object(map) = &mut value {
        map.remove("backends");
    }
    let mut all = BTreeMap::new();
    flatten("", value, &mut all);
    all
}

fn json(value: &impl serde::Serialize) -> Value {
    serde_json::to_value(value).expect("config types serialize")
}

/// Nested tables as dotted keys.
fn flatten(prefix: &str, value: Value, out: &mut BTreeMap<String, Value>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        // A section left out: its keys are unset.
        Value::Null => {}
        other => {
            out.insert(prefix.to_owned(), other);
        }
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adopt;

    const HEAD: &str = "[interfaces]\nclients = \"eth0\"\n";

    fn config(text: &str) -> Config {
        format!("{HEAD}{text}").parse().unwrap()
    }

    const WEB: &str = "[[services]]\nname = \"web\"\nvip = \"198.18.0.10:80\"\n\
        [[services.backends]]\naddress = \"198.18.1.11:3000\"\n\
        [[services.backends]]\naddress = \"198.18.1.12:3000\"\n";

    #[test]
    fn an_equal_config_changes_nothing() {
        let a = adopt::from_config(&config(WEB));
        assert_eq!(changes(&a, &a), Vec::<String>::new());
    }

    #[test]
    fn added_removed_and_changed_backends_and_settings_are_listed() {
        let a = adopt::from_config(&config(WEB));
        let b = adopt::from_config(&config(
            "[[services]]\nname = \"web\"\nvip = \"198.18.0.10:80\"\n\
             affinity_timeout = \"1m\"\n[services.health]\nrise = 5\n\
             [[services.backends]]\naddress = \"198.18.1.12:3000\"\nweight = 3\n\
             [[services.backends]]\naddress = \"198.18.1.13:3000\"\n\
             [[services]]\nname = \"dns\"\nvip = \"198.18.0.10:53\"\nprotocol = \"udp\"\n",
        ));
        assert_eq!(
            changes(&a, &b),
            [
                "~ service web: affinity_timeout 10m -> 1m",
                "~ service web: health.rise 2 -> 5",
                "- backend web 198.18.1.11:3000",
                "~ backend web 198.18.1.12:3000: weight 1 -> 3",
                "+ backend web 198.18.1.13:3000 weight 1",
                "+ service dns 198.18.0.10:53/udp",
            ]
        );
        assert_eq!(
            changes(&b, &a)[..1],
            ["- service dns 198.18.0.10:53/udp".to_owned()]
        );
    }

    #[test]
    fn keys_fixed_at_start_need_a_restart() {
        let running = config(WEB);
        assert!(restart_only(&running, &config(WEB)).is_ok());
        let moved = format!("[bpf]\npin_dir = \"/sys/fs/bpf/other\"\n{WEB}");
        let e = restart_only(&running, &config(&moved)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "bpf.pin_dir changed (/sys/fs/bpf/balancer -> /sys/fs/bpf/other): that needs a restart, not a reload"
        );
        let bigger = format!("[tables]\nflows = 2000000\n{WEB}");
        let e = restart_only(&running, &config(&bigger)).unwrap_err();
        assert!(e.to_string().starts_with("tables.flows changed"), "{e}");
        let threads = format!("[proxy]\nthreads = 4\n{WEB}");
        let e = restart_only(&running, &config(&threads)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "proxy.threads changed (unset -> 4): that needs a restart, not a reload"
        );
        // An optional section or key, added or left out.
        let announced = format!("[announce]\ninterface = \"lo\"\n{WEB}");
        let e = restart_only(&running, &config(&announced)).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("announce.interface changed (unset -> lo)"),
            "{e}"
        );
        let e = restart_only(&config(&announced), &running).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("announce.interface changed (lo -> unset)"),
            "{e}"
        );
        let grouped = format!("[control]\ngroup = \"ops\"\n{WEB}");
        let e = restart_only(&config(&grouped), &running).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("control.group changed (ops -> unset)"),
            "{e}"
        );
    }
}
