//! `trusted_proxies` entries: an address block such as `198.18.5.0/24` or
//! `2001:db8::/32`, or one address (a /32 or /128).

use std::{fmt, net::IpAddr, str::FromStr};

use serde::{Serialize, Serializer};

/// An address block. The address is stored masked, so `198.18.5.7/24` and
/// `198.18.5.0/24` are the same block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Is `ip` in this block? An address of the other family never is (an
    /// IPv4-mapped IPv6 address is compared as the IPv4 address it maps).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                mask_bits(u32::from(ip).into(), 32, self.prefix) == u32::from(net).into()
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                mask_bits(u128::from(ip), 128, self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }
}

/// `value` (of `width` bits) with all but its first `prefix` bits cleared.
fn mask_bits(value: u128, width: u8, prefix: u8) -> u128 {
    if prefix == 0 {
        return 0;
    }
    let kept = u128::MAX << (128 - u32::from(prefix)) >> (128 - u32::from(width));
    value & kept
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let invalid = || {
            format!(
                r#"invalid address block {s:?} (expected ADDRESS/PREFIX, e.g. "198.18.5.0/24" or "2001:db8::/32")"#
            )
        };
        let (address, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let address: IpAddr = address.parse().map_err(|_| invalid())?;
        let width: u8 = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => width,
            // Digits only: `u8::from_str` would take "+8".
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => p
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= width)
                .ok_or_else(invalid)?,
            Some(_) => return Err(invalid()),
        };
        let network = match address {
            IpAddr::V4(v4) => {
                IpAddr::V4((mask_bits(u32::from(v4).into(), 32, prefix) as u32).into())
            }
            IpAddr::V6(v6) => IpAddr::V6(mask_bits(v6.into(), 128, prefix).into()),
        };
        Ok(Cidr { network, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn blocks_contain_their_addresses_only() {
        let block = cidr("198.18.5.7/24");
        assert_eq!(block.to_string(), "198.18.5.0/24");
        assert!(block.contains("198.18.5.200".parse().unwrap()));
        assert!(block.contains("::ffff:198.18.5.1".parse().unwrap()));
        assert!(!block.contains("198.18.6.1".parse().unwrap()));
        assert!(!block.contains("2001:db8::1".parse().unwrap()));
        let one = cidr("198.18.5.7");
        assert!(one.contains("198.18.5.7".parse().unwrap()));
        assert!(!one.contains("198.18.5.8".parse().unwrap()));
        let v6 = cidr("2001:db8:1::/48");
        assert!(v6.contains("2001:db8:1:ffff::1".parse().unwrap()));
        assert!(!v6.contains("2001:db8:2::1".parse().unwrap()));
        assert!(cidr("0.0.0.0/0").contains("203.0.113.1".parse().unwrap()));
        assert!(cidr("::/0").contains("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn bad_blocks_are_refused_with_one_line() {
        for bad in [
            "",
            "198.18.5.0/33",
            "2001:db8::/129",
            "198.18.5/24",
            "x/8",
            "1.2.3.4/",
            "1.2.3.4/+8",
        ] {
            let e = bad.parse::<Cidr>().unwrap_err();
            assert!(e.contains("invalid address block"), "{bad}: {e}");
            assert!(!e.contains('\n'));
        }
    }
}
