//! Spoofed TCP handshakes to a VIP, sent from the client side of the
//! gateway with a [`RawSender`]: SYNs, or SYN-then-ACK pairs, from random
//! addresses in 198.19.0.0/16 (inside the tests' 198.18.0.0/15) and random
//! ports. The sources are addresses no namespace owns and no route leads to
//! (the gateway routes only 198.18.x.0/24s and has no default route),
//! so the backends' answers die in the gateway and nothing leaves the
//! topology; the attacker never sees a SYN-ACK, so an ACK's acknowledgement
//! number is a guess.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use crate::{
    NetNs,
    packet::{ETH_LEN, Frame, IPV4_LEN, PROTO_TCP, TCP_ACK, TCP_SYN, checksum, l4_checksum},
    rawsend::{BlastLimits, RawSender, mac_of},
    topology::{CLIENT_IF, GW_CLIENT_IF},
};

/// What each spoofed flow sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// A bare SYN.
    Syn,
    /// A SYN, then the ACK that would complete the handshake had the
    /// sender seen the SYN-ACK: two frames per flow.
    SynThenAck,
}

impl Shape {
    fn frames_per_flow(self) -> u64 {
        match self {
            Shape::Syn => 1,
            Shape::SynThenAck => 2,
        }
    }
}

/// What a flood sent.
#[derive(Clone, Copy, Debug)]
pub struct FloodReport {
    pub frames: u64,
    pub elapsed: Duration,
}

impl FloodReport {
    pub fn per_second(&self) -> f64 {
        self.frames as f64 / self.elapsed.as_secs_f64()
    }
}

/// Spoofed frames from the client namespace's interface to the gateway.
pub struct Spoofer {
    tx: RawSender,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    rng: SplitMix64,
}

const IP: usize = ETH_LEN;
const TCP: usize = ETH_LEN + IPV4_LEN;

impl Spoofer {
    /// A sender on the client's interface, addressed to the gateway's
    /// client-side MAC; `seed` makes the addresses and ports reproducible.
    pub fn new(client: &NetNs, gw: &NetNs, seed: u64) -> io::Result<Spoofer> {
        Ok(Spoofer {
            tx: RawSender::new(client, CLIENT_IF)?,
            src_mac: mac_of(client, CLIENT_IF)?,
            dst_mac: mac_of(gw, GW_CLIENT_IF)?,
            rng: SplitMix64(seed),
        })
    }

    /// `flows` spoofed flows of `shape` to `vip`, at most `per_second`
    /// frames a second and for at most `time`.
    pub fn flood(
        &mut self,
        vip: SocketAddrV4,
        shape: Shape,
        flows: u64,
        per_second: u64,
        time: Duration,
    ) -> io::Result<FloodReport> {
        let mut template = Frame::tcp("198.19.0.1", 1024, &vip.ip().to_string(), vip.port(), 0);
        template.src_mac = self.src_mac;
        template.dst_mac = self.dst_mac;
        template.payload.clear();
        let template = template.build();
        let limits = BlastLimits {
            frames: flows * shape.frames_per_flow(),
            time,
            per_second: Some(per_second),
        };
        let rng = &mut self.rng;
        // The flow the last SYN opened, for its ACK.
        let mut open = (Ipv4Addr::UNSPECIFIED, 0u16, 0u32);
        let start = Instant::now();
        let frames = self.tx.blast(
            limits,
            || false,
            |i| {
                let mut f = template.clone();
                if shape == Shape::SynThenAck && i % 2 == 1 {
                    let (src, sport, seq) = open;
                    write_tcp(
                        &mut f,
                        src,
                        sport,
                        seq.wrapping_add(1),
                        rng.next() as u32,
                        TCP_ACK,
                    );
                } else {
                    let r = rng.next();
                    // 198.19.0.0/16: 16 random bits; ports 1024-65535.
                    let src = Ipv4Addr::from(0xc613_0000 | (r as u32 & 0x0000_ffff));
                    let sport = 1024 + ((r >> 16) % (65536 - 1024)) as u16;
                    let seq = (r >> 40) as u32 ^ rng.next() as u32;
                    open = (src, sport, seq);
                    write_tcp(&mut f, src, sport, seq, 0, TCP_SYN);
                }
                f
            },
        )?;
        Ok(FloodReport {
            frames,
            elapsed: start.elapsed(),
        })
    }
}

/// Turn the template into this segment: source, port, numbers, flags, and
/// both checksums computed afresh.
fn write_tcp(f: &mut [u8], src: Ipv4Addr, sport: u16, seq: u32, ack: u32, flags: u8) {
    f[IP + 12..IP + 16].copy_from_slice(&src.octets());
    f[IP + 10..IP + 12].fill(0);
    let c = checksum(&f[IP..TCP]);
    f[IP + 10..IP + 12].copy_from_slice(&c.to_be_bytes());
    f[TCP..TCP + 2].copy_from_slice(&sport.to_be_bytes());
    f[TCP + 4..TCP + 8].copy_from_slice(&seq.to_be_bytes());
    f[TCP + 8..TCP + 12].copy_from_slice(&ack.to_be_bytes());
    f[TCP + 13] = flags;
    f[TCP + 16..TCP + 18].fill(0);
    let dst = Ipv4Addr::new(f[IP + 16], f[IP + 17], f[IP + 18], f[IP + 19]);
    let c = l4_checksum(IpAddr::V4(src), IpAddr::V4(dst), PROTO_TCP, &f[TCP..]);
    f[TCP + 16..TCP + 18].copy_from_slice(&c.to_be_bytes());
}

/// A small, seedable generator (SplitMix64): enough for addresses and
/// ports that do not repeat, no dependency.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{assert_checksums_valid, parse};

    #[test]
    fn rewritten_segments_keep_valid_checksums() {
        let mut f = Frame::tcp("198.19.0.1", 1024, "198.18.0.100", 80, 0);
        f.payload.clear();
        let mut f = f.build();
        write_tcp(&mut f, Ipv4Addr::new(198, 19, 2, 3), 40000, 7, 9, TCP_ACK);
        assert_checksums_valid(&f);
        let p = parse(&f);
        assert_eq!(p.src().to_string(), "198.19.2.3");
        assert_eq!(p.sport(), 40000);
    }
}
