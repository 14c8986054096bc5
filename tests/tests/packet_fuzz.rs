//! Random and mutated frames through the loaded program (BPF_PROG_TEST_RUN,
//! real maps written by the real loader), checking what must hold for any
//! packet:
//!
//! - the verdict is DROP, PASS, TX or REDIRECT, never ABORTED;
//! - a frame the program changed was a VIP packet now addressed to one of
//!   that service's backends, or a backend's reply now coming from the VIP:
//!   nothing is misrouted;
//! - a changed frame whose checksums were right still has right checksums;
//! - every drop is counted under a reason: the drop counters grow by exactly
//!   the number of DROP verdicts.
//!
//! 200,000 frames in `cargo xtask test` (under a second); `FUZZ_FRAMES=1000000` (and
//! `FUZZ_SEED=n`) for the long run:
//! `FUZZ_FRAMES=1000000 BALANCER_BIN=target/release/balancer cargo test --release -p balancer-tests --test packet_fuzz -- --nocapture`.

use std::{
    collections::{BTreeMap, HashSet},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
};

use balancer_common::counters::Counter;
use balancer_tests::{
    packet::{ETH_LEN, Frame, TCP_ACK, TCP_FIN, TCP_PSH, TCP_SYN, verify_checksums},
    xdp_fixture::{Fixture, with_fixture},
};

const XDP_ABORTED: u32 = 0;
const XDP_DROP: u32 = 1;
const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);

/// xorshift64*: reproducible from `FUZZ_SEED`, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// What the fixture's config serves.
struct Expect {
    /// VIP port and protocol → that service's backends.
    backends: BTreeMap<(u16, u8), HashSet<SocketAddrV4>>,
    /// Every backend address.
    all_backends: HashSet<SocketAddrV4>,
}

fn expect(fx: &Fixture) -> Expect {
    let mut backends = BTreeMap::new();
    let mut all_backends = HashSet::new();
    for s in &fx.services {
        let proto = if s.config.protocol.to_string() == "udp" { 17 } else { 6 };
        let set: HashSet<SocketAddrV4> = s
            .backends
            .iter()
            .filter_map(|b| match b.address {
                SocketAddr::V4(a) => Some(a),
                SocketAddr::V6(_) => None,
            })
            .collect();
        all_backends.extend(set.iter().copied());
        backends.insert((s.config.vip.port(), proto), set);
    }
    Expect { backends, all_backends }
}

/// A well-formed frame: a client's VIP packet, a backend's reply, or other
/// traffic, with random fields.
fn valid(rng: &mut Rng, e: &Expect) -> (Frame, bool) {
    let client = Ipv4Addr::new(198, 18, 0, 1 + rng.below(250) as u8);
    let any_flags = rng.next() as u8;
    let flags = *rng.pick(&[TCP_SYN, TCP_ACK, TCP_ACK | TCP_PSH, TCP_FIN | TCP_ACK, 0x04, any_flags]);
    let mut frame = match rng.below(3) {
        // Client → VIP (a configured port mostly, sometimes not).
        0 => {
            let (port, proto) = if rng.below(5) == 0 {
                (rng.next() as u16, *rng.pick(&[6u8, 17]))
            } else {
                *rng.pick(&e.backends.keys().copied().collect::<Vec<_>>())
            };
            new_frame(client, rng.next() as u16, VIP, port, proto, flags)
        }
        // Backend → client (a reply, if conntrack knows the flow).
        1 => {
            let all: Vec<_> = e.all_backends.iter().copied().collect();
            let b = rng.pick(&all);
            let proto = if b.port() == 5353 { 17 } else { 6 };
            return (new_frame(*b.ip(), b.port(), client, rng.next() as u16, proto, flags), false);
        }
        // Anything else.
        _ => new_frame(
            Ipv4Addr::from(rng.next() as u32),
            rng.next() as u16,
            Ipv4Addr::from(rng.next() as u32),
            rng.next() as u16,
            *rng.pick(&[6u8, 17]),
            flags,
        ),
    };
    let any_ttl = rng.next() as u8;
    frame.ttl = *rng.pick(&[64, 1, 2, 255, any_ttl]);
    if rng.below(8) == 0 {
        let words = 1 + rng.below(9) as usize;
        frame.ip_options = rng.bytes(4 * words);
    }
    if rng.below(16) == 0 {
        frame.frag_offset = rng.below(100) as u16;
        frame.more_fragments = rng.below(2) == 0;
    }
    let len = rng.below(80) as usize;
    frame.payload = rng.bytes(len);
    frame.udp_no_checksum = rng.below(4) == 0;
    (frame, true)
}

fn new_frame(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, proto: u8, flags: u8) -> Frame {
    let (s, d) = (src.to_string(), dst.to_string());
    if proto == 17 { Frame::udp(&s, sport, &d, dport) } else { Frame::tcp(&s, sport, &d, dport, flags) }
}

/// The IPv4 TCP/UDP header fields of a frame, if it has them whole.
fn l3l4(f: &[u8]) -> Option<(SocketAddrV4, SocketAddrV4, u8)> {
    if f.len() < ETH_LEN + 20 || f[12..14] != [0x08, 0x00] {
        return None;
    }
    let ihl = usize::from(f[ETH_LEN] & 0x0f) * 4;
    let l4 = f.get(ETH_LEN + ihl..ETH_LEN + ihl + 4)?;
    let ip = &f[ETH_LEN..];
    let src = SocketAddrV4::new(Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]), u16::from_be_bytes([l4[0], l4[1]]));
    let dst = SocketAddrV4::new(Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]), u16::from_be_bytes([l4[2], l4[3]]));
    Some((src, dst, ip[9]))
}

fn drops(fx: &Fixture) -> u64 {
    Counter::ALL.iter().filter(|c| c.drop_reason().is_some()).map(|&c| fx.counter(c)).sum()
}

#[test]
fn any_frame_gets_a_sane_verdict_and_nothing_is_misrouted() {
    let frames: usize = std::env::var("FUZZ_FRAMES").ok().and_then(|n| n.parse().ok()).unwrap_or(200_000);
    let seed: u64 = std::env::var("FUZZ_SEED").ok().and_then(|n| n.parse().ok()).unwrap_or(0x5eed_ba1a_2026);
    with_fixture(|fx| {
        let e = expect(fx);
        let mut rng = Rng(seed | 1);
        let drops_before = drops(fx);
        let mut verdicts: BTreeMap<u32, u64> = BTreeMap::new();
        let mut kinds: BTreeMap<&str, u64> = BTreeMap::new();
        let mut changed = 0u64;
        for i in 0..frames {
            let (kind, input, from_client) = match rng.below(4) {
                0 => {
                    let (f, from_client) = valid(&mut rng, &e);
                    ("valid", f.build(), from_client)
                }
                1 => {
                    let (f, from_client) = valid(&mut rng, &e);
                    let mut b = f.build();
                    // Down to the Ethernet header: BPF_PROG_TEST_RUN refuses
                    // shorter frames, as no driver hands XDP one.
                    let keep = ETH_LEN + rng.below((b.len() - ETH_LEN) as u64 + 1) as usize;
                    b.truncate(keep);
                    ("truncated", b, from_client)
                }
                2 => {
                    let (f, from_client) = valid(&mut rng, &e);
                    let mut b = f.build();
                    for _ in 0..1 + rng.below(4) {
                        let at = rng.below(b.len() as u64) as usize;
                        b[at] = rng.next() as u8;
                    }
                    ("mutated", b, from_client)
                }
                _ => {
                    let n = ETH_LEN + rng.below(128) as usize;
                    ("random", rng.bytes(n), rng.below(2) == 0)
                }
            };
            *kinds.entry(kind).or_default() += 1;
            let (verdict, out) = if from_client { fx.run_client_frame(&input) } else { fx.run_backend_frame(&input) };
            *verdicts.entry(verdict).or_default() += 1;
            let case = || format!("frame {i} ({kind}, seed {seed:#x}): {input:02x?}");
            assert!(verdict != XDP_ABORTED && verdict <= 4, "verdict {verdict} for {}", case());
            if out == input {
                continue;
            }
            changed += 1;
            // Rewritten: it must be a balanced packet, and only that.
            let (in_src, in_dst, proto) = l3l4(&input).unwrap_or_else(|| panic!("rewrote a non-IPv4 frame: {}", case()));
            let (out_src, out_dst, out_proto) = l3l4(&out).unwrap_or_else(|| panic!("rewrote into garbage: {}", case()));
            assert_eq!(proto, out_proto, "{}", case());
            if *in_dst.ip() == VIP {
                let set = e.backends.get(&(in_dst.port(), proto)).unwrap_or_else(|| panic!("not a service: {}", case()));
                assert!(set.contains(&out_dst), "VIP packet sent to {out_dst}, not a backend of its service: {}", case());
                assert_eq!(out_src, in_src, "{}", case());
            } else {
                assert!(e.all_backends.contains(&in_src), "rewrote a packet from {in_src}: {}", case());
                assert_eq!(*out_src.ip(), VIP, "reply not from the VIP: {}", case());
                assert_eq!(out_dst, in_dst, "{}", case());
            }
            if verify_checksums(&input).is_ok()
                && let Err(why) = verify_checksums(&out)
            {
                panic!("checksums broken by the rewrite ({why}): {}", case());
            }
        }
        let dropped = verdicts.get(&XDP_DROP).copied().unwrap_or(0);
        assert_eq!(drops(fx) - drops_before, dropped, "every drop is counted under a reason");
        println!(
            "packet fuzz: {frames} frames (seed {seed:#x}) {kinds:?}; verdicts (1 drop, 2 pass, 3 tx, 4 redirect) {verdicts:?}; {changed} rewritten, all to a backend or from the VIP; {dropped} drops, all counted"
        );
    });
}
