//! A service's `table_fingerprint`: one 64-bit hash of everything that
//! decides where a new client of the service goes, with no local id in it,
//! so two gateways with equal fingerprints pick alike.
//!
//! XXH3-64 (seed 0) over, in order, each number little-endian:
//! - the table size (u32), the flow-hash seed (u32, from the VIP), the
//!   four-tuple flag (u8) and the IPv4 and IPv6 source prefixes (u8 each);
//! - for each slot of the table packets read now, 19 bytes: the backend's
//!   address (16 bytes in network order, an IPv4 address in the first 4,
//!   then zeros), its port (big-endian) and its family (4 or 6). A slot
//!   with no backend (every slot, while no backend takes new clients) is
//!   19 zero bytes: family 0 marks it.
//!
//! Shown as 16 lowercase hex digits.

use std::collections::HashMap;

use balancer_common::{addr::to_words, types::SERVICE_FOUR_TUPLE};
use xxhash_rust::xxh3::Xxh3;

use crate::state::ServiceState;

/// Bytes a slot adds to the hash.
const SLOT_BYTES: usize = 19;

/// The fingerprint of `service`'s live table (`service.table`).
pub fn table_fingerprint(service: &ServiceState) -> String {
    let value = service.map_value(0, true);
    let mut h = Xxh3::new();
    h.update(&service.config.table_size.to_le_bytes());
    h.update(&value.hash_seed.to_le_bytes());
    h.update(&[
        u8::from(value.flags & SERVICE_FOUR_TUPLE != 0),
        value.prefix_v4,
        value.prefix_v6,
    ]);
    let identities: HashMap<u32, [u8; SLOT_BYTES]> = service
        .backends
        .iter()
        .map(|b| {
            let (words, family) = to_words(b.address.ip());
            let mut bytes = [0u8; SLOT_BYTES];
            for (i, w) in words.iter().enumerate() {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
            }
            bytes[16..18].copy_from_slice(&b.address.port().to_be_bytes());
            bytes[18] = family;
            (b.id, bytes)
        })
        .collect();
    let empty = [0u8; SLOT_BYTES];
    if service.table.is_empty() {
        for _ in 0..service.config.table_size {
            h.update(&empty);
        }
    } else {
        for id in &service.table {
            h.update(identities.get(id).unwrap_or(&empty));
        }
    }
    format!("{:016x}", h.digest())
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;
    use crate::{adopt, config::Config};

    const CONFIG: &str = r#"
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
[[services.backends]]
address = "198.18.1.13:3000"
"#;

    fn service(text: &str) -> ServiceState {
        let mut s = adopt::from_config(&Config::from_str(text).unwrap()).remove(0);
        s.table = s.next_table();
        s
    }

    #[test]
    fn fingerprint_is_the_sets_not_the_ids_or_order() {
        let a = service(CONFIG);
        let fp = table_fingerprint(&a);
        assert_eq!(fp.len(), 16);
        assert!(fp.chars().all(|c| c.is_ascii_hexdigit()), "{fp}");
        // Other ids and another order of the same set.
        let mut b = a.clone();
        b.backends.reverse();
        for (i, backend) in b.backends.iter_mut().enumerate() {
            backend.id = 40 + i as u32;
        }
        b.table = b.next_table();
        assert_ne!(a.table, b.table, "the ids differ");
        assert_eq!(table_fingerprint(&b), fp);
    }

    #[test]
    fn fingerprint_changes_with_the_table_and_what_decides_a_slot() {
        let a = service(CONFIG);
        let fp = table_fingerprint(&a);
        let mut drained = a.clone();
        drained.backends[0].draining = true;
        drained.table = drained.next_table();
        let mut weighted = a.clone();
        weighted.backends[1].weight = 2;
        weighted.table = weighted.next_table();
        let other_vip = service(&CONFIG.replace("198.18.0.100:80", "198.18.0.100:81"));
        let other_prefix = service(&CONFIG.replace(
            "table_size = 251",
            "table_size = 251\nsource_prefix_v4 = 24",
        ));
        let mut none = a.clone();
        none.backends.iter_mut().for_each(|b| b.up = false);
        none.table = none.next_table();
        let mut seen = vec![fp];
        for s in [&drained, &weighted, &other_vip, &other_prefix, &none] {
            let f = table_fingerprint(s);
            assert!(!seen.contains(&f), "{f} repeats");
            seen.push(f);
        }
        let mut none_again = none.clone();
        none_again.backends.pop();
        assert_eq!(
            table_fingerprint(&none_again),
            table_fingerprint(&none),
            "no backend takes clients: all slots empty, whoever is listed"
        );
    }
}
