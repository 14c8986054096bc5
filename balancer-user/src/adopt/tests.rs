//! The restart plan, from pinned contents made by writing a first plan the
//! way the data plane would.

use std::str::FromStr;

use balancer_common::types::{BACKEND_UP, Service};

use super::*;
use crate::state::ServiceState;

const TWO_SERVICES: &str = r#"
[interfaces]
clients = "lo"
[[services]]
name = "chat"
vip = "198.18.0.100:80"
table_size = 251
[[services.backends]]
address = "198.18.1.11:3000"
[[services.backends]]
address = "198.18.1.12:3000"
[[services]]
name = "dns"
vip = "198.18.0.100:53"
protocol = "udp"
table_size = 97
[[services.backends]]
address = "198.18.1.11:5353"
"#;

fn config(text: &str) -> Config {
    Config::from_str(text).unwrap()
}

/// What the maps hold after a daemon ran `services` (table half 0 active).
fn pin(services: &[ServiceState], capacity: u32) -> Pinned {
    let mut pinned = Pinned {
        maglev_capacity: capacity,
        ..Pinned::default()
    };
    for s in services {
        let value: Service = s.map_value(0, !s.next_table().is_empty());
        pinned.services.push(PinnedService {
            key: s.key(),
            value,
            table_size: s.config.table_size,
        });
        for b in &s.backends {
            pinned.backends.push((b.id, b.map_value(s.id)));
            if let (true, Some(name)) = (b.runtime, &b.name) {
                pinned.names.insert(b.id, name.clone());
            }
        }
    }
    pinned
}

fn fresh(text: &str) -> Vec<ServiceState> {
    let mut services = plan(
        &config(text),
        &Pinned {
            maglev_capacity: 10_000,
            ..Pinned::default()
        },
    )
    .unwrap()
    .services;
    for s in &mut services {
        s.table = s.next_table();
    }
    services
}

#[test]
fn a_restart_with_the_same_config_keeps_every_id_region_and_table() {
    let first = fresh(TWO_SERVICES);
    let again = plan(&config(TWO_SERVICES), &pin(&first, 10_000)).unwrap();
    assert!(again.removed_services.is_empty() && again.freed_backends.is_empty());
    for (a, b) in first.iter().zip(&again.services) {
        assert_eq!((a.id, a.table_base), (b.id, b.table_base));
        assert_eq!(a.backends, b.backends);
        assert_eq!(
            b.next_table(),
            a.table,
            "the same backend set builds the table packets read before"
        );
    }
}

/// A gateway that reached a backend set through `backend add`s and a
/// restart builds the table of a gateway started with that set.
#[test]
fn a_restart_after_runtime_changes_builds_the_table_a_fresh_gateway_builds() {
    let with_13 = TWO_SERVICES.replace(
        "address = \"198.18.1.12:3000\"\n",
        "address = \"198.18.1.13:3000\"\n[[services.backends]]\naddress = \"198.18.1.12:3000\"\n",
    );
    let reference = fresh(&with_13);
    let mut first = fresh(TWO_SERVICES);
    first[0].backends.push(BackendState {
        id: 9,
        address: "198.18.1.13:3000".parse().unwrap(),
        weight: 1,
        up: true,
        draining: false,
        runtime: true,
        weight_set: false,
        name: None,
    });
    let again = plan(&config(TWO_SERVICES), &pin(&first, 10_000)).unwrap();
    let as_addresses = |s: &ServiceState| -> Vec<std::net::SocketAddr> {
        s.next_table()
            .iter()
            .map(|&id| s.backend_by_id(id).unwrap().address)
            .collect()
    };
    assert_ne!(
        again.services[0].backends[2].id, reference[0].backends[1].id,
        "other local ids"
    );
    assert_eq!(
        as_addresses(&again.services[0]),
        as_addresses(&reference[0])
    );
}

#[test]
fn runtime_state_survives_and_the_configs_changes_apply() {
    let mut first = fresh(TWO_SERVICES);
    // At runtime: .12 went down, was drained and given weight 7, .13 was
    // added, named "b13".
    first[0].backends[1].up = false;
    first[0].backends[1].draining = true;
    first[0].backends[1].weight = 7;
    first[0].backends[1].weight_set = true;
    first[0].backends.push(BackendState {
        id: 9,
        address: "198.18.1.13:3000".parse().unwrap(),
        weight: 3,
        up: true,
        draining: false,
        runtime: true,
        weight_set: false,
        name: Some("b13".into()),
    });
    let pinned = pin(&first, 10_000);
    // The new config drops the dns service and .11, and lists .14.
    let text = TWO_SERVICES
        .replace(
            "address = \"198.18.1.11:3000\"",
            "address = \"198.18.1.14:3000\"",
        )
        .split("[[services]]\nname = \"dns\"")
        .next()
        .unwrap()
        .to_owned();
    let next = plan(&config(&text), &pinned).unwrap();
    assert_eq!(next.services.len(), 1);
    let chat = &next.services[0];
    assert_eq!(chat.id, first[0].id);
    let find = |a: &str| {
        chat.backends
            .iter()
            .find(|b| b.address == a.parse().unwrap())
            .cloned()
    };
    let b12 = find("198.18.1.12:3000").unwrap();
    assert_eq!(
        (b12.id, b12.up, b12.draining, b12.weight, b12.weight_set),
        (first[0].backends[1].id, false, true, 7, true),
        "health, drain and the operator's weight adopted"
    );
    let b13 = find("198.18.1.13:3000").unwrap();
    assert_eq!(
        (b13.id, b13.weight, b13.runtime, b13.name.as_deref()),
        (9, 3, true, Some("b13")),
        "a runtime backend is kept, with its name"
    );
    let b14 = find("198.18.1.14:3000").unwrap();
    assert!(
        b14.up && ![first[0].backends[0].id, 9, first[1].backends[0].id].contains(&b14.id),
        "new id: {b14:?}"
    );
    assert!(find("198.18.1.11:3000").is_none());
    assert_eq!(next.removed_services, vec![first[1].key()]);
    let mut freed = next.freed_backends.clone();
    freed.sort_unstable();
    let mut expected = vec![first[0].backends[0].id, first[1].backends[0].id];
    expected.sort_unstable();
    assert_eq!(
        freed, expected,
        "the dropped backend and the dropped service's backend"
    );
}

#[test]
fn a_new_service_gets_a_free_id_and_region_and_a_changed_size_a_new_region() {
    let first = fresh(TWO_SERVICES);
    let pinned = pin(&first, 10_000);
    let text = TWO_SERVICES.replace("table_size = 97", "table_size = 101")
        + "[[services]]\nname = \"new\"\nvip = \"198.18.0.101:80\"\ntable_size = 53\n";
    let next = plan(&config(&text), &pinned).unwrap();
    let [chat, dns, new] = &next.services[..] else {
        panic!()
    };
    assert_eq!(
        (chat.id, chat.table_base),
        (first[0].id, first[0].table_base)
    );
    assert_eq!(
        dns.id, first[1].id,
        "same VIP, same id (affinity keys stay valid)"
    );
    assert_ne!(
        dns.table_base, first[1].table_base,
        "another size: a new region"
    );
    assert!(![chat.id, dns.id].contains(&new.id));
    let regions = [
        (chat.table_base, 2 * 251),
        (dns.table_base, 2 * 101),
        (new.table_base, 2 * 53),
    ];
    for (i, a) in regions.iter().enumerate() {
        assert!(a.0 + a.1 <= 10_000);
        for b in &regions[i + 1..] {
            assert!(
                a.0 + a.1 <= b.0 || b.0 + b.1 <= a.0,
                "regions overlap: {regions:?}"
            );
        }
    }
    // The old dns region is still in use by packets until the flip, so it
    // is not reused.
    assert!(
        dns.table_base >= first[1].table_base + 2 * 97
            || dns.table_base + 2 * 101 <= first[1].table_base
    );
    let too_small = Pinned {
        maglev_capacity: 2 * 251 + 2 * 97,
        ..pinned
    };
    let e = plan(&config(&text), &too_small).unwrap_err().to_string();
    assert!(e.contains("MAGLEV") && e.contains("detach"), "{e}");
}

#[test]
fn pinned_backend_values_carry_state_weight_and_origin() {
    let mut s = fresh(TWO_SERVICES).remove(0);
    s.backends[0].draining = true;
    s.backends[0].runtime = true;
    s.backends[0].weight = 7;
    let v = s.backends[0].map_value(s.id);
    assert_eq!(v.state & BACKEND_UP, BACKEND_UP);
    assert!(v.in_use() && v.weight == 7);
    assert_ne!(v.state & BACKEND_ADMIN_DRAIN, 0);
    assert_ne!(v.state & BACKEND_RUNTIME, 0);
    s.backends[0].up = false;
    let v = s.backends[0].map_value(s.id);
    assert_eq!(
        v.state & (BACKEND_UP | balancer_common::types::BACKEND_DRAINING),
        0,
        "down: the kernel sees neither"
    );
    assert_ne!(
        v.state & BACKEND_ADMIN_DRAIN,
        0,
        "the drain is kept for a restart"
    );
}
