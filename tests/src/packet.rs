//! Crafting frames for BPF_PROG_TEST_RUN and checking what the program made
//! of them: Ethernet / IPv4 (with options, fragments) / TCP or UDP, with
//! checksums computed from scratch, never incrementally, so they check the
//! program's incremental updates independently.

use std::net::Ipv4Addr;

pub const ETH_LEN: usize = 14;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;
pub const TCP_FIN: u8 = 0x01;
pub const TCP_PSH: u8 = 0x08;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp { flags: u8 },
    Udp,
}

/// What to build.
#[derive(Clone, Debug)]
pub struct Frame {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub l4: L4,
    pub ttl: u8,
    /// IPv4 options (padded to a multiple of 4 bytes).
    pub ip_options: Vec<u8>,
    /// Fragment offset in 8-byte units and the more-fragments flag.
    pub frag_offset: u16,
    pub more_fragments: bool,
    pub payload: Vec<u8>,
    /// Write a UDP checksum of 0 ("none").
    pub udp_no_checksum: bool,
}

impl Frame {
    pub fn tcp(src: &str, sport: u16, dst: &str, dport: u16, flags: u8) -> Self {
        Self::new(src, sport, dst, dport, L4::Tcp { flags })
    }

    pub fn udp(src: &str, sport: u16, dst: &str, dport: u16) -> Self {
        Self::new(src, sport, dst, dport, L4::Udp)
    }

    fn new(src: &str, sport: u16, dst: &str, dport: u16, l4: L4) -> Self {
        Frame {
            src_mac: [0x02, 0, 0, 0, 0, 0x01],
            dst_mac: [0x02, 0, 0, 0, 0, 0xfe],
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            sport,
            dport,
            l4,
            ttl: 64,
            ip_options: Vec::new(),
            frag_offset: 0,
            more_fragments: false,
            payload: b"hello balancer".to_vec(),
            udp_no_checksum: false,
        }
    }

    pub fn build(&self) -> Vec<u8> {
        let mut options = self.ip_options.clone();
        while !options.len().is_multiple_of(4) {
            options.push(0);
        }
        let ihl = 5 + options.len() / 4;
        let l4 = self.l4_bytes();
        let total = ihl * 4 + l4.len();
        let mut f = Vec::with_capacity(ETH_LEN + total);
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        f.extend_from_slice(&0x0800u16.to_be_bytes());
        let mut ip = vec![(4 << 4) | ihl as u8, 0];
        ip.extend_from_slice(&(total as u16).to_be_bytes());
        ip.extend_from_slice(&0x1234u16.to_be_bytes());
        let frag = (u16::from(self.more_fragments) << 13) | (self.frag_offset & 0x1fff);
        ip.extend_from_slice(&frag.to_be_bytes());
        ip.push(self.ttl);
        ip.push(match self.l4 {
            L4::Tcp { .. } => 6,
            L4::Udp => 17,
        });
        ip.extend_from_slice(&[0, 0]);
        ip.extend_from_slice(&self.src.octets());
        ip.extend_from_slice(&self.dst.octets());
        ip.extend_from_slice(&options);
        let c = checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(&l4);
        f
    }

    fn l4_bytes(&self) -> Vec<u8> {
        let mut l4 = Vec::new();
        l4.extend_from_slice(&self.sport.to_be_bytes());
        l4.extend_from_slice(&self.dport.to_be_bytes());
        match self.l4 {
            L4::Tcp { flags } => {
                l4.extend_from_slice(&1000u32.to_be_bytes());
                l4.extend_from_slice(&0u32.to_be_bytes());
                l4.push(5 << 4);
                l4.push(flags);
                l4.extend_from_slice(&65535u16.to_be_bytes());
                l4.extend_from_slice(&[0, 0, 0, 0]);
                l4.extend_from_slice(&self.payload);
                let c = l4_checksum(self.src, self.dst, 6, &l4);
                l4[16..18].copy_from_slice(&c.to_be_bytes());
            }
            L4::Udp => {
                l4.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                l4.extend_from_slice(&[0, 0]);
                l4.extend_from_slice(&self.payload);
                if !self.udp_no_checksum {
                    let mut c = l4_checksum(self.src, self.dst, 17, &l4);
                    if c == 0 {
                        c = 0xffff;
                    }
                    l4[6..8].copy_from_slice(&c.to_be_bytes());
                }
            }
        }
        l4
    }
}

/// The Internet checksum of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 { u16::from_be_bytes([chunk[0], chunk[1]]) } else { u16::from(chunk[0]) << 8 };
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The TCP/UDP checksum over the IPv4 pseudo-header and `segment` (whose
/// checksum field must be zero).
pub fn l4_checksum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, segment: &[u8]) -> u16 {
    let mut pseudo = Vec::with_capacity(12 + segment.len());
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.push(0);
    pseudo.push(proto);
    pseudo.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(segment);
    checksum(&pseudo)
}

/// A parsed IPv4 TCP/UDP frame, as the program left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub ttl: u8,
    pub ip_checksum: u16,
    pub l4_checksum: u16,
}

pub fn parse(f: &[u8]) -> Parsed {
    let ihl = usize::from(f[ETH_LEN] & 0x0f) * 4;
    let l4 = ETH_LEN + ihl;
    let proto = f[ETH_LEN + 9];
    let check_off = if proto == 6 { 16 } else { 6 };
    Parsed {
        dst_mac: f[0..6].try_into().unwrap(),
        src_mac: f[6..12].try_into().unwrap(),
        src: Ipv4Addr::new(f[ETH_LEN + 12], f[ETH_LEN + 13], f[ETH_LEN + 14], f[ETH_LEN + 15]),
        dst: Ipv4Addr::new(f[ETH_LEN + 16], f[ETH_LEN + 17], f[ETH_LEN + 18], f[ETH_LEN + 19]),
        sport: u16::from_be_bytes([f[l4], f[l4 + 1]]),
        dport: u16::from_be_bytes([f[l4 + 2], f[l4 + 3]]),
        ttl: f[ETH_LEN + 8],
        ip_checksum: u16::from_be_bytes([f[ETH_LEN + 10], f[ETH_LEN + 11]]),
        l4_checksum: u16::from_be_bytes([f[l4 + check_off], f[l4 + check_off + 1]]),
    }
}

/// Recompute both checksums of `frame` from scratch and compare them with
/// what the frame carries; panics with the difference.
pub fn assert_checksums_valid(frame: &[u8]) {
    if let Err(e) = verify_checksums(frame) {
        panic!("{e}");
    }
}

/// `Ok` if `frame` is an unfragmented IPv4 TCP or UDP frame whose IP and L4
/// checksums are right; else what is wrong (the header checks make it safe
/// on any bytes).
pub fn verify_checksums(frame: &[u8]) -> Result<(), String> {
    if frame.len() < ETH_LEN + 20 || frame[12..14] != [0x08, 0x00] || frame[ETH_LEN] >> 4 != 4 {
        return Err("not an IPv4 frame".into());
    }
    let ihl = usize::from(frame[ETH_LEN] & 0x0f) * 4;
    let ip = frame.get(ETH_LEN..ETH_LEN + ihl).filter(|_| ihl >= 20).ok_or("bad IHL")?;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let proto = ip[9];
    let off = match proto {
        6 => 16,
        17 => 6,
        _ => return Err(format!("protocol {proto}")),
    };
    if u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
        return Err("a fragment".into());
    }
    if total < ihl + off + 2 || ETH_LEN + total > frame.len() {
        return Err("lengths out of the frame".into());
    }
    let mut zeroed = ip.to_vec();
    zeroed[10] = 0;
    zeroed[11] = 0;
    let carried = u16::from_be_bytes([ip[10], ip[11]]);
    if checksum(&zeroed) != carried {
        return Err(format!("IPv4 header checksum {carried:#06x}, should be {:#06x}", checksum(&zeroed)));
    }
    let mut seg = frame[ETH_LEN + ihl..ETH_LEN + total].to_vec();
    let carried = u16::from_be_bytes([seg[off], seg[off + 1]]);
    if proto == 17 && carried == 0 {
        return Ok(()); // no UDP checksum
    }
    seg[off] = 0;
    seg[off + 1] = 0;
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let mut want = l4_checksum(src, dst, proto, &seg);
    if proto == 17 && want == 0 {
        want = 0xffff;
    }
    if want != carried {
        return Err(format!("L4 checksum (proto {proto}) {carried:#06x}, should be {want:#06x}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crafted_frames_have_valid_checksums() {
        assert_checksums_valid(&Frame::tcp("198.18.0.1", 40000, "198.18.0.100", 80, TCP_SYN).build());
        assert_checksums_valid(&Frame::udp("198.18.0.1", 40000, "198.18.0.100", 53).build());
        let mut f = Frame::tcp("198.18.0.1", 40000, "198.18.0.100", 80, TCP_ACK);
        f.ip_options = vec![1, 1, 1, 1, 1, 1, 1, 0];
        let b = f.build();
        assert_eq!(b[ETH_LEN] & 0x0f, 7);
        assert_checksums_valid(&b);
    }

    #[test]
    fn a_flipped_bit_is_caught() {
        let mut b = Frame::tcp("198.18.0.1", 40000, "198.18.0.100", 80, TCP_SYN).build();
        b[ETH_LEN + 16] ^= 1;
        let r = std::panic::catch_unwind(|| assert_checksums_valid(&b));
        assert!(r.is_err());
    }
}
