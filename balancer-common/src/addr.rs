//! Address words (network-order bytes in native `u32`s) and prefix masking.

use crate::types::FAMILY_V4;

/// Network-order mask of the first `bits` bits of a 32-bit word, as a native
/// word whose in-memory bytes are the mask's big-endian bytes.
#[inline(always)]
const fn word_mask(bits: u32) -> u32 {
    if bits == 0 {
        0
    } else if bits >= 32 {
        u32::MAX
    } else {
        (u32::MAX << (32 - bits)).to_be()
    }
}

/// `addr` with every bit past `prefix` cleared (IPv4 uses word 0 only).
/// A prefix beyond the family's width is the whole address.
#[inline(always)]
pub const fn mask(addr: [u32; 4], family: u8, prefix: u8) -> [u32; 4] {
    let prefix = prefix as u32;
    if family == FAMILY_V4 {
        [addr[0] & word_mask(prefix), 0, 0, 0]
    } else {
        [
            addr[0] & word_mask(prefix),
            addr[1] & word_mask(prefix.saturating_sub(32)),
            addr[2] & word_mask(prefix.saturating_sub(64)),
            addr[3] & word_mask(prefix.saturating_sub(96)),
        ]
    }
}

#[cfg(feature = "std")]
mod conv {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use crate::types::{FAMILY_V4, FAMILY_V6};

    /// `(words, family)` of an address.
    pub fn to_words(ip: IpAddr) -> ([u32; 4], u8) {
        match ip {
            IpAddr::V4(v4) => ([u32::from_ne_bytes(v4.octets()), 0, 0, 0], FAMILY_V4),
            IpAddr::V6(v6) => {
                let o = v6.octets();
                let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
                ([w(0), w(4), w(8), w(12)], FAMILY_V6)
            }
        }
    }

    /// The address that `to_words` made.
    pub fn from_words(words: [u32; 4], family: u8) -> IpAddr {
        if family == FAMILY_V4 {
            IpAddr::V4(Ipv4Addr::from(words[0].to_ne_bytes()))
        } else {
            let mut o = [0u8; 16];
            for (i, w) in words.iter().enumerate() {
                o[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(o))
        }
    }
}
#[cfg(feature = "std")]
pub use conv::{from_words, to_words};

#[cfg(all(test, feature = "std"))]
mod tests {
    use std::net::IpAddr;

    use super::*;

    fn masked(ip: &str, prefix: u8) -> IpAddr {
        let (w, f) = to_words(ip.parse().unwrap());
        from_words(mask(w, f, prefix), f)
    }

    #[test]
    fn v4_prefixes() {
        assert_eq!(
            masked("198.18.7.201", 32),
            "198.18.7.201".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            masked("198.18.7.201", 24),
            "198.18.7.0".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            masked("198.18.7.201", 16),
            "198.18.0.0".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            masked("198.18.7.201", 15),
            "198.18.0.0".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            masked("198.19.7.201", 15),
            "198.18.0.0".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            masked("198.18.7.201", 0),
            "0.0.0.0".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            masked("198.18.7.201", 200),
            "198.18.7.201".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn v4_same_slash24_same_key() {
        let (a, f) = to_words("198.18.7.1".parse().unwrap());
        let (b, _) = to_words("198.18.7.254".parse().unwrap());
        let (c, _) = to_words("198.18.8.1".parse().unwrap());
        assert_eq!(mask(a, f, 24), mask(b, f, 24));
        assert_ne!(mask(a, f, 24), mask(c, f, 24));
        assert_ne!(mask(a, f, 32), mask(b, f, 32));
    }

    #[test]
    fn v6_prefixes() {
        let cases = [
            (128, "2001:db8:1:2:3:4:5:6"),
            (64, "2001:db8:1:2::"),
            (56, "2001:db8:1:0::"),
            (48, "2001:db8:1::"),
            (0, "::"),
        ];
        for (p, want) in cases {
            assert_eq!(
                masked("2001:db8:1:2:3:4:5:6", p),
                want.parse::<IpAddr>().unwrap(),
                "/{p}"
            );
        }
    }

    #[test]
    fn words_round_trip() {
        for ip in [
            "198.18.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "2001:db8::1",
            "::",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let (w, f) = to_words(ip);
            assert_eq!(from_words(w, f), ip);
        }
    }
}
