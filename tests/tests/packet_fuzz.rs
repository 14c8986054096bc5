//! Random and mutated frames through the loaded program (BPF_PROG_TEST_RUN,
//! real maps written by the real loader), in XDP and in TC mode, checking
//! what must hold for any packet:
//!
//! - the verdict is one the hook expects: XDP DROP, PASS, TX or REDIRECT,
//!   never ABORTED; TC OK, SHOT or REDIRECT, never UNSPEC;
//! - a VLAN-tagged or non-IP frame passes untouched; a forwarded frame was
//!   rewritten;
//! - a frame the program changed was, and only in the bytes NAT may touch
//!   (MACs, TTL, addresses, ports, checksums, an ICMP error's quote):
//!   - a VIP packet now addressed to the backend its service gives that
//!     client (predicted in userspace: the tables never change here),
//!   - a backend's reply now coming from the VIP of that backend's service,
//!   - a later fragment (no ports, which stay as they were) now addressed
//!     to a backend of a service at that VIP address and protocol, or
//!     coming from such a VIP,
//!   - an ICMP error about a balanced flow, now addressed to that flow's
//!     backend with the backend's address in the quote, or to the client
//!     with the VIP in the quote (and as source, if the backend sent it);
//! - a changed frame whose checksums were right still has right checksums;
//! - every drop is counted under a reason: the drop counters grow by exactly
//!   the number of drop verdicts.
//!
//! Frames: well-formed IPv4 and IPv6 (extension headers, fragments),
//! VLAN-tagged, and ICMP errors (half of them quoting flows the program has
//! balanced), each sent as built, truncated, or with bytes changed; and
//! random bytes.
//!
//! 200,000 frames through XDP and 200,000 through TC in `cargo xtask test`
//! (about a second each); `FUZZ_FRAMES=n` sets both, `FUZZ_SEED=n` the seed:
//! `FUZZ_FRAMES=1000000 BALANCER_BIN=$PWD/target/release/balancer cargo test --release -p balancer-tests --test packet_fuzz -- --test-threads=1 --nocapture`.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    ops::Range,
    time::Instant,
};

use balancer_common::counters::Counter;
use balancer_tests::{
    packet::{
        ETH_LEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, ExtHeader, Fragment, Frame,
        IPV6_LEN, PROTO_TCP, PROTO_UDP, Parsed, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN,
        try_parse_to, verify_checksums, vlan_tagged,
    },
    xdp_fixture::{
        Fixture, Mode, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, Verdict, XDP_DROP, XDP_PASS,
        XDP_REDIRECT, XDP_TX, with_fixture_mode,
    },
};
use balancer_user::state::ServiceState;

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
    fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// What the fixture's config serves.
struct Expect<'a> {
    /// VIP `addr:port` and protocol → its service.
    services: HashMap<(SocketAddr, u8), &'a ServiceState>,
    /// Backend `addr:port` and protocol → its service's VIP (each backend
    /// address and port is in one service here).
    backend_vip: HashMap<(SocketAddr, u8), SocketAddr>,
    /// VIP address and protocol → the backend addresses of its services.
    vip_backends: HashMap<(IpAddr, u8), HashSet<IpAddr>>,
    /// Backend address and protocol → the VIP addresses it serves.
    backend_vips: HashMap<(IpAddr, u8), HashSet<IpAddr>>,
    vips: Vec<(SocketAddr, u8)>,
    backends: Vec<(SocketAddr, u8)>,
}

fn proto_of(s: &ServiceState) -> u8 {
    if s.config.protocol.to_string() == "udp" {
        PROTO_UDP
    } else {
        PROTO_TCP
    }
}

fn expect(fx: &Fixture) -> Expect<'_> {
    let mut e = Expect {
        services: HashMap::new(),
        backend_vip: HashMap::new(),
        vip_backends: HashMap::new(),
        backend_vips: HashMap::new(),
        vips: Vec::new(),
        backends: Vec::new(),
    };
    for s in &fx.services {
        let (vip, proto) = (s.config.vip, proto_of(s));
        e.services.insert((vip, proto), s);
        e.vips.push((vip, proto));
        for b in &s.backends {
            e.backend_vip.insert((b.address, proto), vip);
            e.vip_backends
                .entry((vip.ip(), proto))
                .or_default()
                .insert(b.address.ip());
            e.backend_vips
                .entry((b.address.ip(), proto))
                .or_default()
                .insert(vip.ip());
            e.backends.push((b.address, proto));
        }
    }
    e
}

/// A flow the program balanced, for ICMP errors to quote.
#[derive(Clone, Copy, Debug)]
struct Flow {
    client: SocketAddr,
    vip: SocketAddr,
    backend: SocketAddr,
    proto: u8,
}

fn client_v4(rng: &mut Rng) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1 + rng.below(250) as u8))
}

fn client_v6(rng: &mut Rng) -> IpAddr {
    let net = if rng.one_in(4) {
        rng.below(8) as u16
    } else {
        0
    };
    IpAddr::V6(Ipv6Addr::new(
        0x2001,
        0xdb8,
        0,
        net,
        0,
        0,
        0,
        1 + rng.below(250) as u16,
    ))
}

fn random_addr(rng: &mut Rng, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(rng.next() as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(
            u128::from(rng.next()) << 64 | u128::from(rng.next()),
        ))
    }
}

fn random_flags(rng: &mut Rng) -> u8 {
    let any = rng.next() as u8;
    *rng.pick(&[
        TCP_SYN,
        TCP_ACK,
        TCP_ACK | TCP_PSH,
        TCP_FIN | TCP_ACK,
        TCP_RST,
        any,
    ])
}

fn random_fragment(rng: &mut Rng) -> Fragment {
    let offset = if rng.one_in(2) {
        0
    } else {
        1 + rng.below(100) as u16
    };
    Fragment {
        offset,
        more: rng.one_in(2),
        id: rng.below(4) as u32,
    }
}

/// A well-formed TCP or UDP frame of one family: a client's VIP packet, a
/// backend's reply (half of them in a flow the program balanced), or other
/// traffic, with random fields. `true`: it arrives on the client side.
fn valid(rng: &mut Rng, e: &Expect, flows: &[Flow], v4: bool) -> (Frame, bool) {
    let client = if v4 { client_v4(rng) } else { client_v6(rng) };
    let flags = random_flags(rng);
    let vips: Vec<_> = e.vips.iter().filter(|(a, _)| a.is_ipv4() == v4).collect();
    let backends: Vec<_> = e
        .backends
        .iter()
        .filter(|(a, _)| a.is_ipv4() == v4)
        .collect();
    let live: Vec<_> = flows.iter().filter(|f| f.client.is_ipv4() == v4).collect();
    let (mut frame, from_client) = match rng.below(3) {
        // Client → VIP (a configured port mostly, sometimes not).
        0 => {
            let &&(vip, proto) = rng.pick(&vips);
            let (port, proto) = if rng.one_in(5) {
                (rng.next() as u16, *rng.pick(&[PROTO_TCP, PROTO_UDP]))
            } else {
                (vip.port(), proto)
            };
            (
                Frame::of_proto(proto, client, rng.next() as u16, vip.ip(), port, flags),
                true,
            )
        }
        // Backend → client in a live flow.
        1 if !live.is_empty() && rng.one_in(2) => {
            let f = **rng.pick(&live);
            (
                Frame::of_proto(
                    f.proto,
                    f.backend.ip(),
                    f.backend.port(),
                    f.client.ip(),
                    f.client.port(),
                    flags,
                ),
                false,
            )
        }
        // Backend → client (a reply, if the program knows the flow).
        1 => {
            let &&(b, proto) = rng.pick(&backends);
            (
                Frame::of_proto(proto, b.ip(), b.port(), client, rng.next() as u16, flags),
                false,
            )
        }
        // Anything else.
        _ => {
            let proto = *rng.pick(&[PROTO_TCP, PROTO_UDP]);
            let (src, dst) = (random_addr(rng, v4), random_addr(rng, v4));
            (
                Frame::of_proto(proto, src, rng.next() as u16, dst, rng.next() as u16, flags),
                rng.one_in(2),
            )
        }
    };
    let any_ttl = rng.next() as u8;
    frame.ttl = *rng.pick(&[64, 1, 2, 255, any_ttl]);
    if v4 && rng.one_in(8) {
        let words = 1 + rng.below(9) as usize;
        frame.ip_options = rng.bytes(4 * words);
    }
    if !v4 && rng.one_in(3) {
        frame.ext_headers = (0..1 + rng.below(5))
            .map(|_| match rng.below(7) {
                0 => ExtHeader::HopByHop {
                    len: rng.below(3) as u8,
                },
                1 | 2 => ExtHeader::DestOpts {
                    len: rng.below(3) as u8,
                },
                3 => ExtHeader::Routing {
                    segments_left: if rng.one_in(2) { 0 } else { rng.next() as u8 },
                },
                4 => ExtHeader::Fragment(random_fragment(rng)),
                5 => ExtHeader::Auth,
                _ => ExtHeader::Esp,
            })
            .collect();
    }
    if rng.one_in(12) {
        frame.fragment = Some(random_fragment(rng));
    }
    let len = rng.below(80) as usize;
    frame.payload = rng.bytes(len);
    frame.udp_no_checksum = rng.one_in(4);
    (frame, from_client)
}

/// An ICMP or ICMPv6 message, an error mostly, quoting a flow the program
/// balanced (either way round) or random traffic.
fn icmp(rng: &mut Rng, e: &Expect, flows: &[Flow]) -> (Frame, bool) {
    let flow = (!flows.is_empty() && rng.one_in(2)).then(|| *rng.pick(flows));
    let v4 = flow.map_or_else(|| rng.one_in(2), |f| f.client.is_ipv4());
    let router = random_addr(rng, v4);
    let flags = random_flags(rng);
    let (src, dst, quoted, from_client) = match flow {
        // About the reply as it left (VIP → client), to the VIP.
        Some(f) if rng.one_in(2) => {
            let q = Frame::of_proto(
                f.proto,
                f.vip.ip(),
                f.vip.port(),
                f.client.ip(),
                f.client.port(),
                flags,
            );
            (router, f.vip.ip(), q, true)
        }
        // About the request as it reached the backend, to the client, from
        // the backend or a router.
        Some(f) => {
            let q = Frame::of_proto(
                f.proto,
                f.client.ip(),
                f.client.port(),
                f.backend.ip(),
                f.backend.port(),
                flags,
            );
            let src = if rng.one_in(2) {
                f.backend.ip()
            } else {
                router
            };
            (src, f.client.ip(), q, false)
        }
        None => {
            let (mut q, from_client) = valid(rng, e, flows, v4);
            q.ext_headers.clear();
            let dst = if rng.one_in(2) {
                q.src
            } else {
                random_addr(rng, v4)
            };
            (router, dst, q, from_client)
        }
    };
    let payload_len = rng.below(64) as usize;
    let quoted = Frame {
        payload: rng.bytes(payload_len),
        ..quoted
    }
    .build();
    let any_type = rng.next() as u8;
    let icmp_type = if v4 {
        *rng.pick(&[3, 3, 3, 11, 12, 0, 8, any_type])
    } else {
        *rng.pick(&[1, 2, 2, 3, 4, 128, 129, any_type])
    };
    let any_len = rng.below(120) as usize;
    let quote_len = *rng.pick(&[28, 48, 68, any_len, usize::MAX]);
    let any_rest = rng.next() as u32;
    let rest = *rng.pick(&[1280, 1400, any_rest]);
    let mut frame = Frame::icmp_error(
        &src.to_string(),
        &dst.to_string(),
        icmp_type,
        rng.below(6) as u8,
        rest,
        &quoted,
        quote_len,
    );
    let any_ttl = rng.next() as u8;
    frame.ttl = *rng.pick(&[64, 64, 1, any_ttl]);
    (frame, from_client)
}

/// A well-formed frame of some kind, built: `(kind, bytes, from_client)`.
fn well_formed(rng: &mut Rng, e: &Expect, flows: &[Flow]) -> (&'static str, Vec<u8>, bool) {
    match rng.below(10) {
        0..=2 => {
            let (f, c) = valid(rng, e, flows, true);
            ("ipv4", f.build(), c)
        }
        3..=5 => {
            let (f, c) = valid(rng, e, flows, false);
            ("ipv6", f.build(), c)
        }
        6 => {
            let v4 = rng.one_in(2);
            let (f, c) = valid(rng, e, flows, v4);
            let tpid = *rng.pick(&[ETH_P_8021Q, ETH_P_8021AD]);
            let mut b = vlan_tagged(&f.build(), tpid, rng.next() as u16);
            if rng.one_in(4) {
                b = vlan_tagged(&b, ETH_P_8021AD, rng.next() as u16);
            }
            ("vlan", b, c)
        }
        _ => {
            let (f, c) = icmp(rng, e, flows);
            ("icmp", f.build(), c)
        }
    }
}

fn ether_type(f: &[u8]) -> u16 {
    u16::from_be_bytes([f[12], f[13]])
}

/// The byte ranges NAT may change in `p`'s frame.
fn rewritable(p: &Parsed) -> Vec<Range<usize>> {
    let l3 = p.ip.l3_off;
    let mut r = Vec::new();
    r.push(0..12); // the MACs
    if p.ip.is_v4() {
        r.extend([l3 + 8..l3 + 9, l3 + 10..l3 + 12, l3 + 12..l3 + 20]);
    } else {
        r.extend([l3 + 7..l3 + 8, l3 + 8..l3 + IPV6_LEN]);
    }
    if p.ports.is_some() {
        let l4 = p.ip.l4_off;
        let check = if p.ip.proto == PROTO_TCP { 16 } else { 6 };
        r.extend([l4..l4 + 4, l4 + check..l4 + check + 2]);
    }
    if let Some(icmp) = &p.icmp {
        r.push(p.ip.l4_off + 2..p.ip.l4_off + 4);
        if let Some(q) = &icmp.quoted {
            let q3 = q.ip.l3_off;
            if q.ip.is_v4() {
                r.extend([q3 + 10..q3 + 12, q3 + 12..q3 + 20]);
            } else {
                r.push(q3 + 8..q3 + IPV6_LEN);
            }
            r.push(q.ip.l4_off..q.ip.l4_off + 4);
        }
    }
    r
}

/// What a correct rewrite was.
struct Rewrite {
    what: &'static str,
    /// A TCP/UDP packet the program balanced (for ICMP errors to quote).
    flow: Option<Flow>,
    /// Bytes past the IP packet's announced length were rewritten too.
    past_ip_end: bool,
}

/// Check a frame the program changed.
///
/// Nothing past the IP packet's announced length may change: the program
/// bounds the headers it rewrites by that length, not by the frame (which
/// may carry padding).
fn check_rewrite(
    e: &Expect,
    input: &[u8],
    out: &[u8],
    verdict: Verdict,
) -> Result<Rewrite, String> {
    let ip_end = announced_end(input).ok_or("rewrote a frame shorter than its IP packet")?;
    let pi = try_parse_to(input, false).ok_or("rewrote a frame that is not untagged IP")?;
    let po = try_parse_to(out, false).ok_or("rewrote into a frame that does not parse")?;
    if input.len() != out.len() {
        return Err(format!("length {} became {}", input.len(), out.len()));
    }
    let allowed = rewritable(&pi);
    if let Some(at) =
        (0..input.len()).find(|&i| input[i] != out[i] && !allowed.iter().any(|r| r.contains(&i)))
    {
        return Err(format!("byte {at} changed, which NAT never touches"));
    }
    let past_ip_end = (ip_end..input.len()).any(|i| input[i] != out[i]);
    if past_ip_end {
        return Err(format!(
            "rewrote bytes past the IP packet's announced end ({ip_end})"
        ));
    }
    let proto = pi.ip.proto;
    let forwarded = verdict == Verdict::Forwarded;
    let want_ttl = if forwarded {
        pi.ip.ttl.wrapping_sub(1)
    } else {
        pi.ip.ttl
    };
    if po.ip.ttl != want_ttl {
        return Err(format!(
            "TTL {} became {} ({verdict:?})",
            pi.ip.ttl, po.ip.ttl
        ));
    }
    let mut flow = None;
    let what;
    if let (Some(icmp_in), Some(icmp_out)) = (&pi.icmp, &po.icmp) {
        let (qi, qo) = match (&icmp_in.quoted, &icmp_out.quoted) {
            (Some(qi), Some(qo)) if qi.ports.is_some() => (qi, qo),
            _ => return Err("rewrote an ICMP message that quotes no ports".into()),
        };
        let q_proto = qi.ip.proto;
        if pi.dst() != qi.ip.src {
            return Err("rewrote an ICMP error not sent back to the quoted source".into());
        }
        if po.dst() != pi.dst() {
            // To the backend: the quote is VIP → client.
            let service = e
                .services
                .get(&(qi.src(), q_proto))
                .ok_or("ICMP to a backend about a packet not from a VIP")?;
            let backend = predicted(service, qi.dst())?;
            if (po.dst(), qo.src(), qo.dst(), po.src())
                != (backend.ip(), backend, qi.dst(), pi.src())
            {
                return Err(format!(
                    "ICMP error for {} sent to {}, quoting {} → {}",
                    qi.src(),
                    po.dst(),
                    qo.src(),
                    qo.dst()
                ));
            }
            what = "ICMP error to a backend";
        } else {
            // To the client: the quote is client → backend.
            let vip = e
                .backend_vip
                .get(&(qi.dst(), q_proto))
                .ok_or("ICMP to a client about a packet not to a backend")?;
            let src = if pi.src() == qi.ip.dst {
                vip.ip()
            } else {
                pi.src()
            };
            if (po.src(), qo.dst(), qo.src()) != (src, *vip, qi.src()) {
                return Err(format!(
                    "ICMP error from {} about {} became from {}, quoting {}",
                    pi.src(),
                    qi.dst(),
                    po.src(),
                    qo.dst()
                ));
            }
            what = "ICMP error to a client";
        }
    } else if pi.ip.is_later_fragment() {
        // Ports are not there: their bytes are not in `rewritable`.
        if po.dst() != pi.dst() {
            let ok = e
                .vip_backends
                .get(&(pi.dst(), proto))
                .is_some_and(|b| b.contains(&po.dst()));
            if !ok || po.src() != pi.src() {
                return Err(format!(
                    "later fragment to {} sent to {}",
                    pi.dst(),
                    po.dst()
                ));
            }
            what = "later fragment to a backend";
        } else {
            let ok = e
                .backend_vips
                .get(&(pi.src(), proto))
                .is_some_and(|v| v.contains(&po.src()));
            if !ok {
                return Err(format!(
                    "later fragment from {} now from {}",
                    pi.src(),
                    po.src()
                ));
            }
            what = "later fragment to a client";
        }
    } else if pi.ports.is_some() && matches!(proto, PROTO_TCP | PROTO_UDP) {
        if let Some(service) = e.services.get(&(pi.dst_sock(), proto)) {
            let backend = predicted(service, pi.src_sock())?;
            if (po.src_sock(), po.dst_sock()) != (pi.src_sock(), backend) {
                return Err(format!(
                    "VIP packet sent to {}, its backend is {backend}",
                    po.dst_sock()
                ));
            }
            flow = Some(Flow {
                client: pi.src_sock(),
                vip: pi.dst_sock(),
                backend,
                proto,
            });
            what = "to a backend";
        } else {
            let vip = e
                .backend_vip
                .get(&(pi.src_sock(), proto))
                .ok_or("rewrote a packet from no backend to no VIP")?;
            if (po.src_sock(), po.dst_sock()) != (*vip, pi.dst_sock()) {
                return Err(format!(
                    "reply from {} now from {}, its VIP is {vip}",
                    pi.src_sock(),
                    po.src_sock()
                ));
            }
            what = "to a client";
        }
    } else {
        return Err("rewrote a packet that is neither TCP/UDP nor an ICMP error".into());
    }
    if verify_checksums(input).is_ok()
        && let Err(why) = verify_checksums(out)
    {
        return Err(format!("checksums broken by the rewrite ({why})"));
    }
    Ok(Rewrite {
        what,
        flow,
        past_ip_end,
    })
}

/// Where the IP packet of an untagged IP frame ends, by its header's
/// length field, if the frame holds that much.
fn announced_end(f: &[u8]) -> Option<usize> {
    let ip = f.get(ETH_LEN..ETH_LEN + 6)?;
    let end = match ether_type(f) {
        ETH_P_IP => ETH_LEN + usize::from(u16::from_be_bytes([ip[2], ip[3]])),
        _ => ETH_LEN + IPV6_LEN + usize::from(u16::from_be_bytes([ip[4], ip[5]])),
    };
    (end <= f.len()).then_some(end)
}

/// The backend `service` gives `client` (no table ever changes here, so
/// conntrack and affinity agree with the table).
fn predicted(service: &ServiceState, client: SocketAddr) -> Result<SocketAddr, String> {
    let id = service
        .predict(client.ip(), client.port())
        .ok_or("a service without a table forwarded")?;
    Ok(service.backend_by_id(id).unwrap().address)
}

fn drops(fx: &Fixture) -> u64 {
    Counter::ALL
        .iter()
        .filter(|c| c.drop_reason().is_some())
        .map(|&c| fx.counter(c))
        .sum()
}

fn fuzz(mode: Mode, default_frames: usize) {
    let frames: usize = std::env::var("FUZZ_FRAMES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default_frames);
    let seed: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0x5eed_ba1a_2026);
    with_fixture_mode(mode, |fx| {
        let e = expect(fx);
        let mut rng = Rng(seed | 1);
        let drops_before = drops(fx);
        let mut verdicts: BTreeMap<u32, u64> = BTreeMap::new();
        let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
        let mut flows: Vec<Flow> = Vec::new();
        let mut rewrites: BTreeMap<&str, u64> = BTreeMap::new();
        let (mut changed, mut refused, mut dropped, mut past_ip_end) = (0u64, 0u64, 0u64, 0u64);
        let started = Instant::now();
        // Triage: report each kind of failure once and go on.
        let keep_going = std::env::var_os("FUZZ_KEEP_GOING").is_some();
        let mut failures: BTreeMap<String, u64> = BTreeMap::new();
        for i in 0..frames {
            let (base, mut input, from_client) = well_formed(&mut rng, &e, &flows);
            let how = match rng.below(10) {
                0..=3 => "valid",
                4..=5 => {
                    // Down to the Ethernet header: BPF_PROG_TEST_RUN refuses
                    // shorter frames, as no driver hands XDP one.
                    input
                        .truncate(ETH_LEN + rng.below((input.len() - ETH_LEN) as u64 + 1) as usize);
                    "truncated"
                }
                6..=8 => {
                    for _ in 0..1 + rng.below(4) {
                        let at = rng.below(input.len() as u64) as usize;
                        input[at] = rng.next() as u8;
                    }
                    "mutated"
                }
                _ => {
                    let n = ETH_LEN + rng.below(128) as usize;
                    input = rng.bytes(n);
                    "random"
                }
            };
            let kind = if how == "random" {
                how.to_owned()
            } else {
                format!("{base} {how}")
            };
            *kinds.entry(kind.clone()).or_default() += 1;
            if !fx.runnable(&input) {
                refused += 1;
                continue;
            }
            let ifindex = if from_client {
                fx.client_if
            } else {
                fx.backend_if
            };
            let (raw, out) = fx.run_raw_on(ifindex, &input);
            *verdicts.entry(raw).or_default() += 1;
            let verdict = Verdict::of(mode, raw);
            let case = || {
                format!(
                    "frame {i} ({kind}, {mode:?}, seed {seed:#x}): {input:02x?}\nout: {out:02x?}"
                )
            };
            assert!(
                matches!(verdict, Verdict::Pass | Verdict::Drop | Verdict::Forwarded),
                "verdict {raw} ({verdict:?}) for {}",
                case()
            );
            dropped += u64::from(verdict == Verdict::Drop);
            let tagged = matches!(ether_type(&input), ETH_P_8021Q | ETH_P_8021AD);
            if !matches!(ether_type(&input), ETH_P_IP | ETH_P_IPV6) {
                assert_eq!(
                    (verdict, &out),
                    (Verdict::Pass, &input),
                    "{} frames pass untouched: {}",
                    if tagged { "tagged" } else { "non-IP" },
                    case()
                );
            }
            if out == input {
                assert_ne!(
                    verdict,
                    Verdict::Forwarded,
                    "forwarded without a rewrite: {}",
                    case()
                );
                continue;
            }
            changed += 1;
            match check_rewrite(&e, &input, &out, verdict) {
                Ok(rewrite) => {
                    past_ip_end += u64::from(rewrite.past_ip_end);
                    *rewrites.entry(rewrite.what).or_default() += 1;
                    match rewrite.flow {
                        Some(flow) if flows.len() < 256 => flows.push(flow),
                        Some(flow) => {
                            let at = rng.below(flows.len() as u64) as usize;
                            flows[at] = flow;
                        }
                        None => {}
                    }
                }
                Err(why) if keep_going => {
                    let n = failures
                        .entry(
                            why.split(':')
                                .next()
                                .unwrap_or("")
                                .chars()
                                .filter(|c| !c.is_ascii_digit())
                                .collect(),
                        )
                        .or_default();
                    if *n == 0 {
                        println!("{why}: {}", case());
                    }
                    *n += 1;
                }
                Err(why) => panic!("{why}: {}", case()),
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        assert!(failures.is_empty(), "failures: {failures:#?}");
        assert_eq!(
            drops(fx) - drops_before,
            dropped,
            "every drop is counted under a reason"
        );
        let names = match mode {
            Mode::Xdp => {
                format!("{XDP_DROP} drop, {XDP_PASS} pass, {XDP_TX} tx, {XDP_REDIRECT} redirect")
            }
            Mode::Tc => format!("{TC_ACT_OK} ok, {TC_ACT_SHOT} shot, {TC_ACT_REDIRECT} redirect"),
        };
        println!(
            "packet fuzz ({mode:?}): {frames} frames in {seconds:.1} s (seed {seed:#x}); kinds {kinds:?}; \
             {refused} refused by BPF_PROG_TEST_RUN; verdicts ({names}) {verdicts:?}; {changed} rewritten, all \
             as NAT should {rewrites:?} ({past_ip_end} also past the IP packet's announced length); {dropped} drops, all \
             counted"
        );
    });
}

#[test]
fn any_frame_through_xdp_gets_a_sane_verdict_and_nothing_is_misrouted() {
    fuzz(Mode::Xdp, 200_000);
}

#[test]
fn any_frame_through_tc_gets_a_sane_verdict_and_nothing_is_misrouted() {
    fuzz(Mode::Tc, 200_000);
}
