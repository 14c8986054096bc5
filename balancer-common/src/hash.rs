//! The one flow hash, compiled into both the kernel program and userspace, so
//! `balancer lookup` predicts the kernel's choice exactly.
//!
//! It is xxHash32 over whole little-endian words: the loop bounds are
//! constants, so the BPF verifier sees straight-line code after unrolling.
//! A test checks it against the reference xxh32 over the same bytes.

use crate::types::{SERVICE_FOUR_TUPLE, ServiceKey};

const P1: u32 = 0x9E37_79B1;
const P2: u32 = 0x85EB_CA77;
const P3: u32 = 0xC2B2_AE3D;
const P4: u32 = 0x27D4_EB2F;
const P5: u32 = 0x1656_67B1;

#[inline(always)]
const fn round(acc: u32, input: u32) -> u32 {
    acc.wrapping_add(input.wrapping_mul(P2))
        .rotate_left(13)
        .wrapping_mul(P1)
}

/// xxh32 of the `4 × N` bytes `words` holds (as little-endian words).
#[inline(always)]
pub const fn xxh32_words<const N: usize>(words: &[u32; N], seed: u32) -> u32 {
    let mut i = 0;
    let mut h = if N >= 4 {
        let mut v1 = seed.wrapping_add(P1).wrapping_add(P2);
        let mut v2 = seed.wrapping_add(P2);
        let mut v3 = seed;
        let mut v4 = seed.wrapping_sub(P1);
        while i + 4 <= N {
            v1 = round(v1, words[i]);
            v2 = round(v2, words[i + 1]);
            v3 = round(v3, words[i + 2]);
            v4 = round(v4, words[i + 3]);
            i += 4;
        }
        v1.rotate_left(1)
            .wrapping_add(v2.rotate_left(7))
            .wrapping_add(v3.rotate_left(12))
            .wrapping_add(v4.rotate_left(18))
    } else {
        seed.wrapping_add(P5)
    };
    h = h.wrapping_add((N * 4) as u32);
    while i < N {
        h = h
            .wrapping_add(words[i].wrapping_mul(P3))
            .rotate_left(17)
            .wrapping_mul(P4);
        i += 1;
    }
    h ^= h >> 15;
    h = h.wrapping_mul(P2);
    h ^= h >> 13;
    h = h.wrapping_mul(P3);
    h ^= h >> 16;
    h
}

/// The hash that picks a client's Maglev slot.
///
/// `client` is the client address already masked to the service's prefix;
/// `sport` (network byte order) only counts for four-tuple services, whose
/// destination is the fixed VIP and so adds nothing. `seed` is the
/// service's [`service_seed`], so two services spread the same clients
/// differently.
#[inline(always)]
pub const fn flow_hash(seed: u32, flags: u32, client: &[u32; 4], sport: u16) -> u32 {
    let port_word = if flags & SERVICE_FOUR_TUPLE != 0 {
        sport as u32 | 0x1_0000
    } else {
        0
    };
    xxh32_words(
        &[client[0], client[1], client[2], client[3], port_word],
        seed,
    )
}

const SERVICE_SEED: u32 = 0x7669_7073; // "vips"

/// A service's flow-hash seed, from its VIP (address, port, protocol,
/// family) alone: gateways that gave one service different local ids
/// still hash a client to the same slot.
pub const fn service_seed(vip: &ServiceKey) -> u32 {
    let tail = vip.port as u32 | (vip.proto as u32) << 16 | (vip.family as u32) << 24;
    xxh32_words(
        &[vip.addr[0], vip.addr[1], vip.addr[2], vip.addr[3], tail],
        SERVICE_SEED,
    )
}

/// The slot of `hash` in a table of `table_size` entries.
#[inline(always)]
pub const fn slot(hash: u32, table_size: u32) -> u32 {
    if table_size == 0 {
        0
    } else {
        hash % table_size
    }
}

#[cfg(test)]
mod tests {
    use xxhash_rust::xxh32::xxh32;

    use super::*;

    fn bytes(words: &[u32]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    #[test]
    fn matches_reference_xxh32() {
        let mut state = 0x1234_5678u32;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state
        };
        for _ in 0..2000 {
            let w: [u32; 9] = core::array::from_fn(|_| next());
            let seed = next();
            assert_eq!(xxh32_words(&[w[0]], seed), xxh32(&bytes(&w[..1]), seed));
            assert_eq!(
                xxh32_words(&[w[0], w[1], w[2]], seed),
                xxh32(&bytes(&w[..3]), seed)
            );
            assert_eq!(
                xxh32_words(&[w[0], w[1], w[2], w[3]], seed),
                xxh32(&bytes(&w[..4]), seed)
            );
            let five = [w[0], w[1], w[2], w[3], w[4]];
            assert_eq!(xxh32_words(&five, seed), xxh32(&bytes(&five), seed));
            assert_eq!(xxh32_words(&w, seed), xxh32(&bytes(&w), seed));
        }
    }

    #[test]
    fn four_tuple_uses_port_source_ip_does_not() {
        let c = [0x0100_12c6, 0, 0, 0];
        assert_eq!(flow_hash(1, 0, &c, 1000), flow_hash(1, 0, &c, 2000));
        assert_ne!(
            flow_hash(1, SERVICE_FOUR_TUPLE, &c, 1000),
            flow_hash(1, SERVICE_FOUR_TUPLE, &c, 2000)
        );
        assert_ne!(flow_hash(1, 0, &c, 0), flow_hash(2, 0, &c, 0));
    }

    #[test]
    fn the_service_seed_is_the_vips_alone() {
        let vip = ServiceKey {
            addr: [0x6400_12c6, 0, 0, 0],
            port: 80u16.to_be(),
            proto: 6,
            family: 4,
        };
        let seed = service_seed(&vip);
        assert_eq!(seed, service_seed(&vip.clone()));
        for other in [
            ServiceKey {
                port: 443u16.to_be(),
                ..vip
            },
            ServiceKey { proto: 17, ..vip },
            ServiceKey {
                addr: [0x6500_12c6, 0, 0, 0],
                ..vip
            },
        ] {
            assert_ne!(service_seed(&other), seed, "{other:?}");
        }
    }
}
