//! Crafting frames for BPF_PROG_TEST_RUN and checking what the program made
//! of them: Ethernet (VLAN tags on request) / IPv4 (with options,
//! fragments) or IPv6 (with extension headers, a fragment header) / TCP,
//! UDP, or an ICMP / ICMPv6 message (an error quoting another packet).
//! Checksums are computed from scratch, never incrementally, so they check
//! the program's incremental updates independently.

use std::net::{IpAddr, SocketAddr};

pub const ETH_LEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const IPV4_LEN: usize = 20;
pub const IPV6_LEN: usize = 40;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;
pub const IPV6_HOP_BY_HOP: u8 = 0;
pub const IPV6_ROUTING: u8 = 43;
pub const IPV6_FRAGMENT: u8 = 44;
pub const IPV6_ESP: u8 = 50;
pub const IPV6_AUTH: u8 = 51;
pub const IPV6_DEST_OPTS: u8 = 60;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DEST_UNREACH: u8 = 3;
/// Code of `ICMP_DEST_UNREACH`: fragmentation needed (the MTU in `rest`).
pub const ICMP_FRAG_NEEDED: u8 = 4;
pub const ICMP_PORT_UNREACH: u8 = 3;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAMETER_PROBLEM: u8 = 12;
pub const ICMPV6_DEST_UNREACH: u8 = 1;
pub const ICMPV6_PACKET_TOO_BIG: u8 = 2;
pub const ICMPV6_TIME_EXCEEDED: u8 = 3;
pub const ICMPV6_PARAMETER_PROBLEM: u8 = 4;
pub const ICMPV6_ECHO_REQUEST: u8 = 128;

/// Is `icmp_type` an error (one that quotes a packet) in `family`'s ICMP?
pub fn is_icmp_error(v4: bool, icmp_type: u8) -> bool {
    if v4 {
        matches!(
            icmp_type,
            ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM
        )
    } else {
        matches!(
            icmp_type,
            ICMPV6_DEST_UNREACH
                | ICMPV6_PACKET_TOO_BIG
                | ICMPV6_TIME_EXCEEDED
                | ICMPV6_PARAMETER_PROBLEM
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp {
        flags: u8,
    },
    Udp,
    /// ICMP (ICMPv6 in an IPv6 frame): type, code and the four bytes after
    /// the checksum (an MTU, a pointer); the message body is the frame's
    /// `payload` (for an error, the quoted packet).
    Icmp {
        icmp_type: u8,
        code: u8,
        rest: u32,
    },
}

/// Where a fragment sits in its datagram: offset in 8-byte units, the
/// more-fragments flag, the identification (16 bits in IPv4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fragment {
    pub offset: u16,
    pub more: bool,
    pub id: u32,
}

impl Fragment {
    /// A fragment that is not the whole datagram (IPv6 "atomic" fragments,
    /// offset 0 without M, are whole).
    pub fn is_piece(&self) -> bool {
        self.offset != 0 || self.more
    }
}

/// An IPv6 extension header, in the order the frame lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtHeader {
    /// `(len + 1) * 8` bytes of PadN.
    HopByHop {
        len: u8,
    },
    DestOpts {
        len: u8,
    },
    /// A segment-routing header with one segment.
    Routing {
        segments_left: u8,
    },
    Fragment(Fragment),
    /// 24 bytes: AH with a 12-byte ICV.
    Auth,
    /// SPI and sequence number; what follows is "encrypted" (the L4 bytes).
    Esp,
}

impl ExtHeader {
    pub fn code(&self) -> u8 {
        match self {
            ExtHeader::HopByHop { .. } => IPV6_HOP_BY_HOP,
            ExtHeader::DestOpts { .. } => IPV6_DEST_OPTS,
            ExtHeader::Routing { .. } => IPV6_ROUTING,
            ExtHeader::Fragment(_) => IPV6_FRAGMENT,
            ExtHeader::Auth => IPV6_AUTH,
            ExtHeader::Esp => IPV6_ESP,
        }
    }

    fn bytes(&self, next: u8) -> Vec<u8> {
        match *self {
            ExtHeader::HopByHop { len } | ExtHeader::DestOpts { len } => {
                let size = (usize::from(len) + 1) * 8;
                // One PadN option filling the 6 bytes after the first two,
                // and PadN options of 8 for the rest.
                let mut h = vec![next, len, 1, 4, 0, 0, 0, 0];
                for _ in 1..size / 8 {
                    h.extend_from_slice(&[1, 6, 0, 0, 0, 0, 0, 0]);
                }
                h
            }
            ExtHeader::Routing { segments_left } => {
                let mut h = vec![next, 2, 4, segments_left, 0, 0, 0, 0];
                h.extend_from_slice(&[
                    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x99,
                ]);
                h
            }
            ExtHeader::Fragment(f) => {
                let word = (f.offset << 3) | u16::from(f.more);
                let mut h = vec![next, 0];
                h.extend_from_slice(&word.to_be_bytes());
                h.extend_from_slice(&f.id.to_be_bytes());
                h
            }
            ExtHeader::Auth => {
                let mut h = vec![next, 4, 0, 0];
                h.extend_from_slice(&0x1000_0001u32.to_be_bytes());
                h.extend_from_slice(&7u32.to_be_bytes());
                h.extend_from_slice(&[0xa5; 12]);
                h
            }
            ExtHeader::Esp => {
                let mut h = 0x1000_0002u32.to_be_bytes().to_vec();
                h.extend_from_slice(&7u32.to_be_bytes());
                h
            }
        }
    }
}

/// What to build.
#[derive(Clone, Debug)]
pub struct Frame {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// Both of one family.
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub l4: L4,
    /// TTL or hop limit.
    pub ttl: u8,
    /// IPv4 options (padded to a multiple of 4 bytes).
    pub ip_options: Vec<u8>,
    /// IPv6 extension headers before the L4 header (and before the
    /// fragment header `fragment` adds).
    pub ext_headers: Vec<ExtHeader>,
    /// A piece of a datagram: IPv4 flags and offset, or an IPv6 fragment
    /// header. A later piece (offset ≠ 0) carries `payload` alone, no L4
    /// header.
    pub fragment: Option<Fragment>,
    pub payload: Vec<u8>,
    /// Write a UDP checksum of 0 ("none").
    pub udp_no_checksum: bool,
}

/// The IPv4 identification of frames that are not fragments.
const IPV4_ID: u16 = 0x1234;

impl Frame {
    pub fn tcp(src: &str, sport: u16, dst: &str, dport: u16, flags: u8) -> Self {
        Self::new(src, sport, dst, dport, L4::Tcp { flags })
    }

    pub fn udp(src: &str, sport: u16, dst: &str, dport: u16) -> Self {
        Self::new(src, sport, dst, dport, L4::Udp)
    }

    /// A TCP or UDP frame by protocol number.
    pub fn of_proto(
        proto: u8,
        src: IpAddr,
        sport: u16,
        dst: IpAddr,
        dport: u16,
        flags: u8,
    ) -> Self {
        let l4 = if proto == PROTO_UDP {
            L4::Udp
        } else {
            L4::Tcp { flags }
        };
        Self {
            src,
            dst,
            ..Self::new("0.0.0.0", sport, "0.0.0.0", dport, l4)
        }
    }

    /// An ICMP (or ICMPv6) error from `src` to `dst` quoting the IP packet
    /// of `quoted_frame` (an Ethernet frame), cut to `quote_len` bytes.
    pub fn icmp_error(
        src: &str,
        dst: &str,
        icmp_type: u8,
        code: u8,
        rest: u32,
        quoted_frame: &[u8],
        quote_len: usize,
    ) -> Self {
        let quoted = &quoted_frame[ETH_LEN..];
        Frame {
            payload: quoted[..quote_len.min(quoted.len())].to_vec(),
            ..Self::new(
                src,
                0,
                dst,
                0,
                L4::Icmp {
                    icmp_type,
                    code,
                    rest,
                },
            )
        }
    }

    fn new(src: &str, sport: u16, dst: &str, dport: u16, l4: L4) -> Self {
        Frame {
            // A client's frame to the gateway's client-side interface (the
            // fixture's `CLIENT_MAC` and `CLIENT_IF_MAC`): the balancer
            // answers a client from the MAC its frames were sent to.
            src_mac: [0x02, 0, 0, 0, 0, 0x01],
            dst_mac: [0x02, 0, 0, 0, 0, 0xa0],
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            sport,
            dport,
            l4,
            ttl: 64,
            ip_options: Vec::new(),
            ext_headers: Vec::new(),
            fragment: None,
            payload: b"hello balancer".to_vec(),
            udp_no_checksum: false,
        }
    }

    pub fn is_v4(&self) -> bool {
        self.src.is_ipv4()
    }

    /// The L4 protocol number.
    pub fn proto(&self) -> u8 {
        match self.l4 {
            L4::Tcp { .. } => PROTO_TCP,
            L4::Udp => PROTO_UDP,
            L4::Icmp { .. } if self.is_v4() => PROTO_ICMP,
            L4::Icmp { .. } => PROTO_ICMPV6,
        }
    }

    pub fn build(&self) -> Vec<u8> {
        let later = self.fragment.is_some_and(|f| f.offset != 0);
        let body = if later {
            self.payload.clone()
        } else {
            self.l4_bytes()
        };
        self.frame_around(&body, self.fragment)
    }

    /// The datagram this frame describes, cut into fragments of `chunk`
    /// bytes of its L4 segment (a multiple of 8; the last is shorter), all
    /// with identification `id`. The L4 checksum covers the whole datagram,
    /// as a sender's does.
    pub fn fragments(&self, id: u32, chunk: usize) -> Vec<Vec<u8>> {
        assert!(
            chunk > 0 && chunk.is_multiple_of(8),
            "fragment size {chunk}"
        );
        let segment = self.l4_bytes();
        let pieces: Vec<&[u8]> = segment.chunks(chunk).collect();
        pieces
            .iter()
            .enumerate()
            .map(|(i, piece)| {
                let fragment = Fragment {
                    offset: (i * chunk / 8) as u16,
                    more: i + 1 < pieces.len(),
                    id,
                };
                self.frame_around(piece, Some(fragment))
            })
            .collect()
    }

    fn frame_around(&self, body: &[u8], fragment: Option<Fragment>) -> Vec<u8> {
        let mut f = Vec::with_capacity(ETH_LEN + IPV6_LEN + 64 + body.len());
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        match (self.src, self.dst) {
            (IpAddr::V4(_), IpAddr::V4(_)) => {
                f.extend_from_slice(&ETH_P_IP.to_be_bytes());
                f.extend_from_slice(&self.ipv4_header(body.len(), fragment));
            }
            (IpAddr::V6(_), IpAddr::V6(_)) => {
                f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
                f.extend_from_slice(&self.ipv6_headers(body.len(), fragment));
            }
            _ => panic!("{} and {} are of different families", self.src, self.dst),
        }
        f.extend_from_slice(body);
        f
    }

    fn ipv4_header(&self, body_len: usize, fragment: Option<Fragment>) -> Vec<u8> {
        let mut options = self.ip_options.clone();
        while !options.len().is_multiple_of(4) {
            options.push(0);
        }
        let header_len = IPV4_LEN + options.len();
        let mut ip = vec![(4 << 4) | (header_len / 4) as u8, 0];
        ip.extend_from_slice(&((header_len + body_len) as u16).to_be_bytes());
        let (id, frag) = match fragment {
            Some(f) => (f.id as u16, (u16::from(f.more) << 13) | (f.offset & 0x1fff)),
            None => (IPV4_ID, 0),
        };
        ip.extend_from_slice(&id.to_be_bytes());
        ip.extend_from_slice(&frag.to_be_bytes());
        ip.push(self.ttl);
        ip.push(self.proto());
        ip.extend_from_slice(&[0, 0]);
        ip.extend_from_slice(&addr_bytes(self.src));
        ip.extend_from_slice(&addr_bytes(self.dst));
        ip.extend_from_slice(&options);
        let c = checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        ip
    }

    fn ipv6_headers(&self, body_len: usize, fragment: Option<Fragment>) -> Vec<u8> {
        let chain: Vec<ExtHeader> = self
            .ext_headers
            .iter()
            .copied()
            .chain(fragment.map(ExtHeader::Fragment))
            .collect();
        let mut ext = Vec::new();
        for (i, h) in chain.iter().enumerate() {
            let next = chain.get(i + 1).map_or(self.proto(), ExtHeader::code);
            ext.extend_from_slice(&h.bytes(next));
        }
        let mut ip = vec![0x60, 0, 0, 0];
        ip.extend_from_slice(&((ext.len() + body_len) as u16).to_be_bytes());
        ip.push(chain.first().map_or(self.proto(), ExtHeader::code));
        ip.push(self.ttl);
        ip.extend_from_slice(&addr_bytes(self.src));
        ip.extend_from_slice(&addr_bytes(self.dst));
        ip.extend_from_slice(&ext);
        ip
    }

    /// The L4 header and payload, checksum included.
    fn l4_bytes(&self) -> Vec<u8> {
        let mut l4 = Vec::new();
        match self.l4 {
            L4::Tcp { flags } => {
                l4.extend_from_slice(&self.sport.to_be_bytes());
                l4.extend_from_slice(&self.dport.to_be_bytes());
                l4.extend_from_slice(&1000u32.to_be_bytes());
                l4.extend_from_slice(&0u32.to_be_bytes());
                l4.push(5 << 4);
                l4.push(flags);
                l4.extend_from_slice(&65535u16.to_be_bytes());
                l4.extend_from_slice(&[0, 0, 0, 0]);
                l4.extend_from_slice(&self.payload);
                let c = l4_checksum(self.src, self.dst, PROTO_TCP, &l4);
                l4[16..18].copy_from_slice(&c.to_be_bytes());
            }
            L4::Udp => {
                l4.extend_from_slice(&self.sport.to_be_bytes());
                l4.extend_from_slice(&self.dport.to_be_bytes());
                l4.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                l4.extend_from_slice(&[0, 0]);
                l4.extend_from_slice(&self.payload);
                if !self.udp_no_checksum {
                    let mut c = l4_checksum(self.src, self.dst, PROTO_UDP, &l4);
                    if c == 0 {
                        c = 0xffff;
                    }
                    l4[6..8].copy_from_slice(&c.to_be_bytes());
                }
            }
            L4::Icmp {
                icmp_type,
                code,
                rest,
            } => {
                l4.extend_from_slice(&[icmp_type, code, 0, 0]);
                l4.extend_from_slice(&rest.to_be_bytes());
                l4.extend_from_slice(&self.payload);
                let c = if self.is_v4() {
                    checksum(&l4)
                } else {
                    l4_checksum(self.src, self.dst, PROTO_ICMPV6, &l4)
                };
                l4[2..4].copy_from_slice(&c.to_be_bytes());
            }
        }
        l4
    }
}

fn addr_bytes(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

fn addr_at(b: &[u8], v4: bool) -> IpAddr {
    if v4 {
        IpAddr::from(<[u8; 4]>::try_from(&b[..4]).unwrap())
    } else {
        IpAddr::from(<[u8; 16]>::try_from(&b[..16]).unwrap())
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// `frame` with an 802.1Q (`ETH_P_8021Q`) or 802.1ad (`ETH_P_8021AD`) tag
/// inserted after the MAC addresses.
pub fn vlan_tagged(frame: &[u8], tpid: u16, tci: u16) -> Vec<u8> {
    let mut f = frame[..12].to_vec();
    f.extend_from_slice(&tpid.to_be_bytes());
    f.extend_from_slice(&tci.to_be_bytes());
    f.extend_from_slice(&frame[12..]);
    f
}

/// The Internet checksum of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from(chunk[0]) << 8
        };
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The checksum over the pseudo-header of either family and `segment`
/// (whose checksum field must be zero): TCP, UDP, ICMPv6.
pub fn l4_checksum(src: IpAddr, dst: IpAddr, proto: u8, segment: &[u8]) -> u16 {
    let mut pseudo = Vec::with_capacity(40 + segment.len());
    pseudo.extend_from_slice(&addr_bytes(src));
    pseudo.extend_from_slice(&addr_bytes(dst));
    if src.is_ipv4() {
        pseudo.push(0);
        pseudo.push(proto);
        pseudo.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    } else {
        pseudo.extend_from_slice(&(segment.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, proto]);
    }
    pseudo.extend_from_slice(segment);
    checksum(&pseudo)
}

/// An IP header's facts, outer or quoted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpHeader {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// The L4 protocol (after IPv6 extension headers).
    pub proto: u8,
    pub ttl: u8,
    /// IPv4 only (0 for IPv6).
    pub ip_checksum: u16,
    pub l3_off: usize,
    /// End of the IPv4 header with options / of the IPv6 extension headers.
    pub l4_off: usize,
    /// End of the IP packet in the frame (its announced length; for a
    /// quoted packet, the end of what is there).
    pub end: usize,
    /// `Some` for a fragment (also an IPv6 atomic one).
    pub fragment: Option<Fragment>,
    /// IPv6 extension headers walked, fragment header included.
    pub ext_headers: usize,
}

impl IpHeader {
    pub fn is_v4(&self) -> bool {
        self.src.is_ipv4()
    }

    /// A piece of a datagram whose L4 header is elsewhere.
    pub fn is_later_fragment(&self) -> bool {
        self.fragment.is_some_and(|f| f.offset != 0)
    }
}

/// The IP header at `l3` of `f`. `whole`: the packet must be all there
/// (else, as for a quoted packet, whatever is there will do).
fn parse_ip(f: &[u8], l3: usize, v4: bool, whole: bool) -> Option<IpHeader> {
    if v4 {
        let h = f.get(l3..l3 + IPV4_LEN)?;
        let header_len = usize::from(h[0] & 0x0f) * 4;
        if h[0] >> 4 != 4 || header_len < IPV4_LEN || l3 + header_len > f.len() {
            return None;
        }
        let total = usize::from(be16(h, 2));
        let end = if whole {
            if total < header_len || l3 + total > f.len() {
                return None;
            }
            l3 + total
        } else {
            f.len()
        };
        let word = be16(h, 6);
        let fragment = Fragment {
            offset: word & 0x1fff,
            more: word & 0x2000 != 0,
            id: u32::from(be16(h, 4)),
        };
        return Some(IpHeader {
            src: addr_at(&h[12..], true),
            dst: addr_at(&h[16..], true),
            proto: h[9],
            ttl: h[8],
            ip_checksum: be16(h, 10),
            l3_off: l3,
            l4_off: l3 + header_len,
            end,
            fragment: fragment.is_piece().then_some(fragment),
            ext_headers: 0,
        });
    }
    let h = f.get(l3..l3 + IPV6_LEN)?;
    if h[0] >> 4 != 6 {
        return None;
    }
    let end = if whole {
        let end = l3 + IPV6_LEN + usize::from(be16(h, 4));
        if end > f.len() {
            return None;
        }
        end
    } else {
        f.len()
    };
    let mut next = h[6];
    let mut off = l3 + IPV6_LEN;
    let mut fragment = None;
    let mut ext_headers = 0;
    while ext_headers < 8 {
        let e = match next {
            IPV6_HOP_BY_HOP | IPV6_DEST_OPTS | IPV6_ROUTING | IPV6_FRAGMENT | IPV6_AUTH => {
                f.get(off..off + 8)?
            }
            _ => break,
        };
        if off + 8 > end {
            return None;
        }
        if next == IPV6_FRAGMENT {
            let word = be16(e, 2);
            let f = Fragment {
                offset: word >> 3,
                more: word & 1 != 0,
                id: u32::from_be_bytes([e[4], e[5], e[6], e[7]]),
            };
            fragment = Some(f);
            off += 8;
            if f.offset != 0 {
                // What follows is data of the fragmentable part: `proto` is
                // the header it starts with (TCP, UDP, or another header).
                next = e[0];
                ext_headers += 1;
                break;
            }
        } else if next == IPV6_AUTH {
            off += (usize::from(e[1]) + 2) * 4;
        } else {
            off += (usize::from(e[1]) + 1) * 8;
        }
        next = e[0];
        ext_headers += 1;
    }
    if off > end {
        return None;
    }
    Some(IpHeader {
        src: addr_at(&h[8..], false),
        dst: addr_at(&h[24..], false),
        proto: next,
        ttl: h[7],
        ip_checksum: 0,
        l3_off: l3,
        l4_off: off,
        end,
        fragment,
        ext_headers,
    })
}

/// The packet an ICMP error quotes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quoted {
    pub ip: IpHeader,
    /// Its first four L4 bytes, if quoted.
    pub ports: Option<(u16, u16)>,
}

impl Quoted {
    pub fn src(&self) -> SocketAddr {
        SocketAddr::new(self.ip.src, self.ports.expect("quoted ports").0)
    }

    pub fn dst(&self) -> SocketAddr {
        SocketAddr::new(self.ip.dst, self.ports.expect("quoted ports").1)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Icmp {
    pub icmp_type: u8,
    pub code: u8,
    pub checksum: u16,
    pub rest: u32,
    /// For an error: the quoted packet, if its IP header is there.
    pub quoted: Option<Quoted>,
}

/// An IP frame, as the program left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub ip: IpHeader,
    /// TCP or UDP ports, if this piece has the L4 header's first 4 bytes.
    pub ports: Option<(u16, u16)>,
    /// The TCP or UDP checksum field, if there.
    pub l4_checksum: Option<u16>,
    pub icmp: Option<Icmp>,
}

impl Parsed {
    pub fn src(&self) -> IpAddr {
        self.ip.src
    }

    pub fn dst(&self) -> IpAddr {
        self.ip.dst
    }

    pub fn sport(&self) -> u16 {
        self.ports.expect("L4 ports").0
    }

    pub fn dport(&self) -> u16 {
        self.ports.expect("L4 ports").1
    }

    pub fn src_sock(&self) -> SocketAddr {
        SocketAddr::new(self.ip.src, self.sport())
    }

    pub fn dst_sock(&self) -> SocketAddr {
        SocketAddr::new(self.ip.dst, self.dport())
    }

    /// The IP packet's bytes after its headers (L4 segment or fragment data).
    pub fn body<'a>(&self, f: &'a [u8]) -> &'a [u8] {
        &f[self.ip.l4_off..self.ip.end]
    }
}

/// An untagged Ethernet frame with a whole IPv4 or IPv6 packet; `None` for
/// anything else (safe on any bytes).
pub fn try_parse(f: &[u8]) -> Option<Parsed> {
    try_parse_to(f, true)
}

/// [`try_parse`], or with `whole` false the IP packet taken to run to the
/// end of the frame whatever length its header announces.
pub fn try_parse_to(f: &[u8], whole: bool) -> Option<Parsed> {
    let ether_type = be16(f.get(..ETH_LEN)?, 12);
    let v4 = match ether_type {
        ETH_P_IP => true,
        ETH_P_IPV6 => false,
        _ => return None,
    };
    let ip = parse_ip(f, ETH_LEN, v4, whole)?;
    let l4 = &f[ip.l4_off..ip.end];
    let mut parsed = Parsed {
        dst_mac: f[0..6].try_into().unwrap(),
        src_mac: f[6..12].try_into().unwrap(),
        ip,
        ports: None,
        l4_checksum: None,
        icmp: None,
    };
    if parsed.ip.is_later_fragment() {
        return Some(parsed);
    }
    match parsed.ip.proto {
        PROTO_TCP | PROTO_UDP => {
            if l4.len() >= 4 {
                parsed.ports = Some((be16(l4, 0), be16(l4, 2)));
            }
            let check = if parsed.ip.proto == PROTO_TCP { 16 } else { 6 };
            if l4.len() >= check + 2 {
                parsed.l4_checksum = Some(be16(l4, check));
            }
        }
        PROTO_ICMP | PROTO_ICMPV6 if (parsed.ip.proto == PROTO_ICMP) == v4 && l4.len() >= 8 => {
            let quoted = if is_icmp_error(v4, l4[0]) {
                let at = parsed.ip.l4_off + 8;
                let inner = &f[..parsed.ip.end];
                parse_ip(inner, at, v4, false).map(|ip| {
                    let ports = inner
                        .get(ip.l4_off..ip.l4_off + 4)
                        .map(|p| (be16(p, 0), be16(p, 2)));
                    Quoted { ip, ports }
                })
            } else {
                None
            };
            parsed.icmp = Some(Icmp {
                icmp_type: l4[0],
                code: l4[1],
                checksum: be16(l4, 2),
                rest: u32::from_be_bytes([l4[4], l4[5], l4[6], l4[7]]),
                quoted,
            });
        }
        _ => {}
    }
    Some(parsed)
}

pub fn parse(f: &[u8]) -> Parsed {
    try_parse(f).unwrap_or_else(|| panic!("not an IP frame: {f:02x?}"))
}

/// Recompute every checksum of `frame` from scratch and compare them with
/// what the frame carries; panics with the difference.
pub fn assert_checksums_valid(frame: &[u8]) {
    if let Err(e) = verify_checksums(frame) {
        panic!("{e}: {frame:02x?}");
    }
}

/// `Ok` if every checksum `frame` carries is right: the IPv4 header's; the
/// TCP, UDP (0 is "none"), ICMP or ICMPv6 checksum of a packet that is not a
/// fragment; and the IPv4 header checksum of a packet an ICMP error quotes
/// (its L4 checksum covers bytes the error does not carry). Else what is
/// wrong (safe on any bytes).
pub fn verify_checksums(frame: &[u8]) -> Result<(), String> {
    let p = try_parse(frame).ok_or("not an untagged IP frame with whole headers")?;
    if p.ip.is_v4() {
        ipv4_header_valid(&frame[p.ip.l3_off..p.ip.l4_off], "IPv4 header")?;
    }
    if p.ip.fragment.is_some_and(|f| f.is_piece()) {
        // The L4 checksum covers the whole datagram: see `reassemble`.
        return Ok(());
    }
    segment_valid(p.ip.src, p.ip.dst, p.ip.proto, p.body(frame))?;
    if let Some(q) = p.icmp.and_then(|i| i.quoted).filter(|q| q.ip.is_v4()) {
        ipv4_header_valid(&frame[q.ip.l3_off..q.ip.l4_off], "quoted IPv4 header")?;
    }
    Ok(())
}

fn ipv4_header_valid(header: &[u8], what: &str) -> Result<(), String> {
    let mut zeroed = header.to_vec();
    zeroed[10] = 0;
    zeroed[11] = 0;
    let (carried, want) = (be16(header, 10), checksum(&zeroed));
    if carried != want {
        return Err(format!(
            "{what} checksum {carried:#06x}, should be {want:#06x}"
        ));
    }
    Ok(())
}

/// Is the checksum of a whole L4 segment of `proto` right?
pub fn segment_valid(src: IpAddr, dst: IpAddr, proto: u8, segment: &[u8]) -> Result<(), String> {
    let off = match proto {
        PROTO_TCP => 16,
        PROTO_UDP => 6,
        PROTO_ICMP | PROTO_ICMPV6 => 2,
        _ => return Err(format!("protocol {proto}")),
    };
    if segment.len() < off + 2
        || (proto == PROTO_TCP && segment.len() < 20)
        || (proto == PROTO_UDP && segment.len() < 8)
    {
        return Err(format!(
            "protocol {proto}: segment of {} bytes",
            segment.len()
        ));
    }
    let carried = be16(segment, off);
    if proto == PROTO_UDP && carried == 0 {
        return Ok(()); // no UDP checksum
    }
    let mut seg = segment.to_vec();
    seg[off] = 0;
    seg[off + 1] = 0;
    let mut want = if proto == PROTO_ICMP {
        checksum(&seg)
    } else {
        l4_checksum(src, dst, proto, &seg)
    };
    if proto == PROTO_UDP && want == 0 {
        want = 0xffff;
    }
    if want != carried {
        return Err(format!(
            "L4 checksum (protocol {proto}) {carried:#06x}, should be {want:#06x}"
        ));
    }
    Ok(())
}

/// The fragments of one datagram (any order) put together: the first
/// fragment's parse and the whole L4 segment, whose checksum is checked.
/// Every fragment's own header checksum is checked too.
pub fn reassemble(fragments: &[&[u8]]) -> Result<(Parsed, Vec<u8>), String> {
    let mut pieces = Vec::new();
    for f in fragments {
        verify_checksums(f)?;
        let p = try_parse(f).ok_or("a fragment that does not parse")?;
        let frag = p.ip.fragment.ok_or("not a fragment")?;
        pieces.push((frag.offset, frag.more, p.clone(), p.body(f).to_vec()));
    }
    pieces.sort_by_key(|(offset, ..)| *offset);
    let first = pieces.first().ok_or("no fragments")?.2.clone();
    let mut segment = Vec::new();
    for (offset, more, p, body) in &pieces {
        if (p.ip.src, p.ip.dst, p.ip.proto) != (first.ip.src, first.ip.dst, first.ip.proto)
            || p.ip.fragment.map(|f| f.id) != first.ip.fragment.map(|f| f.id)
        {
            return Err(format!("fragment at {offset} of another datagram: {p:?}"));
        }
        if usize::from(*offset) * 8 != segment.len() {
            return Err(format!(
                "fragment at {offset} after {} bytes",
                segment.len()
            ));
        }
        segment.extend_from_slice(body);
        if !more && segment.len() != usize::from(*offset) * 8 + body.len() {
            return Err("data after the last fragment".into());
        }
    }
    segment_valid(first.ip.src, first.ip.dst, first.ip.proto, &segment)?;
    Ok((first, segment))
}

/// Which end of a packet a rewrite changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    Source,
    Destination,
}

/// Rewrite one end (address and port) of the IP packet at `l3` of `f` the
/// way the balancer rewrites a quoted packet: the IPv4 header checksum
/// recomputed, the L4 checksum left alone.
pub fn set_quoted_end(f: &mut [u8], l3: usize, end: End, to: SocketAddr) {
    let v4 = f[l3] >> 4 == 4;
    let ip = parse_ip(f, l3, v4, false).expect("an IP header");
    let addr_off = match (v4, end) {
        (true, End::Source) => 12,
        (true, End::Destination) => 16,
        (false, End::Source) => 8,
        (false, End::Destination) => 24,
    };
    let bytes = addr_bytes(to.ip());
    f[l3 + addr_off..l3 + addr_off + bytes.len()].copy_from_slice(&bytes);
    let port_off = ip.l4_off + if end == End::Source { 0 } else { 2 };
    f[port_off..port_off + 2].copy_from_slice(&to.port().to_be_bytes());
    if v4 {
        f[l3 + 10] = 0;
        f[l3 + 11] = 0;
        let c = checksum(&f[l3..ip.l4_off]);
        f[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crafted_frames_have_valid_checksums() {
        assert_checksums_valid(
            &Frame::tcp("198.18.0.1", 40000, "198.18.0.100", 80, TCP_SYN).build(),
        );
        assert_checksums_valid(&Frame::udp("198.18.0.1", 40000, "198.18.0.100", 53).build());
        let mut f = Frame::tcp("198.18.0.1", 40000, "198.18.0.100", 80, TCP_ACK);
        f.ip_options = vec![1, 1, 1, 1, 1, 1, 1, 0];
        let b = f.build();
        assert_eq!(b[ETH_LEN] & 0x0f, 7);
        assert_checksums_valid(&b);
        assert_eq!(parse(&b).dst_sock(), "198.18.0.100:80".parse().unwrap());
    }

    #[test]
    fn ipv6_frames_with_extension_headers() {
        let mut f = Frame::tcp("2001:db8::1", 40000, "2001:db8::100", 80, TCP_SYN);
        assert_checksums_valid(&f.build());
        f.ext_headers = vec![
            ExtHeader::HopByHop { len: 0 },
            ExtHeader::DestOpts { len: 1 },
            ExtHeader::Routing { segments_left: 0 },
        ];
        let b = f.build();
        assert_checksums_valid(&b);
        let p = parse(&b);
        assert_eq!(
            (p.ip.proto, p.ip.ext_headers, p.ip.l4_off),
            (PROTO_TCP, 3, ETH_LEN + IPV6_LEN + 8 + 16 + 24)
        );
        assert_eq!(p.dst_sock(), "[2001:db8::100]:80".parse().unwrap());
        assert_eq!(b[ETH_LEN + 6], IPV6_HOP_BY_HOP);
        f.ext_headers = vec![ExtHeader::Auth];
        let p = parse(&f.build());
        assert_eq!(
            (p.ip.proto, p.ip.l4_off),
            (PROTO_TCP, ETH_LEN + IPV6_LEN + 24)
        );
        assert_checksums_valid(&Frame::udp("2001:db8::1", 5000, "2001:db8::100", 53).build());
    }

    #[test]
    fn fragments_reassemble() {
        for (src, dst) in [
            ("198.18.0.1", "198.18.0.100"),
            ("2001:db8::1", "2001:db8::100"),
        ] {
            let mut f = Frame::udp(src, 5000, dst, 53);
            f.payload = (0..100).collect();
            let pieces = f.fragments(0x4242, 48);
            assert_eq!(pieces.len(), 3);
            let first = parse(&pieces[0]);
            assert_eq!(
                first.ip.fragment,
                Some(Fragment {
                    offset: 0,
                    more: true,
                    id: 0x4242
                })
            );
            assert_eq!(first.dport(), 53);
            let later = parse(&pieces[2]);
            assert_eq!((later.ip.fragment.unwrap().offset, later.ports), (12, None));
            let refs: Vec<&[u8]> = pieces.iter().rev().map(Vec::as_slice).collect();
            let (_, segment) = reassemble(&refs).unwrap();
            assert_eq!(segment.len(), 108);
            let mut bad = pieces[1].clone();
            *bad.last_mut().unwrap() ^= 1;
            assert!(reassemble(&[&pieces[0], &bad, &pieces[2]]).is_err());
        }
    }

    #[test]
    fn icmp_errors_quote_a_packet() {
        let quoted = Frame::tcp("198.18.0.100", 80, "198.18.0.1", 40000, TCP_ACK).build();
        let e = Frame::icmp_error(
            "198.18.5.1",
            "198.18.0.100",
            ICMP_DEST_UNREACH,
            ICMP_FRAG_NEEDED,
            1400,
            &quoted,
            28,
        )
        .build();
        assert_checksums_valid(&e);
        let q = parse(&e).icmp.unwrap().quoted.unwrap();
        assert_eq!(
            (q.src(), q.dst()),
            (
                "198.18.0.100:80".parse().unwrap(),
                "198.18.0.1:40000".parse().unwrap()
            )
        );
        let mut bad = e.clone();
        bad[ETH_LEN + IPV4_LEN + 8 + 12] ^= 1; // quoted source address
        assert!(
            verify_checksums(&bad).is_err(),
            "the quoted header's checksum is checked"
        );
        set_quoted_end(
            &mut bad,
            ETH_LEN + IPV4_LEN + 8,
            End::Source,
            "198.18.1.11:3000".parse().unwrap(),
        );
        assert!(
            verify_checksums(&bad).unwrap_err().contains("L4 checksum"),
            "only ICMP's own is off now"
        );

        let quoted = Frame::tcp("2001:db8::100", 80, "2001:db8::1", 40000, TCP_ACK).build();
        let e = Frame::icmp_error(
            "2001:db8:5::1",
            "2001:db8::100",
            ICMPV6_PACKET_TOO_BIG,
            0,
            1280,
            &quoted,
            1000,
        )
        .build();
        assert_checksums_valid(&e);
        let p = parse(&e);
        assert_eq!(p.ip.proto, PROTO_ICMPV6);
        assert_eq!(
            p.icmp.unwrap().quoted.unwrap().dst(),
            "[2001:db8::1]:40000".parse().unwrap()
        );
        let mut bad = e.clone();
        bad[ETH_LEN + 8] ^= 1; // outer source: in ICMPv6's pseudo-header
        assert!(verify_checksums(&bad).is_err());
    }

    #[test]
    fn vlan_tags_hide_the_ip_header() {
        let f = Frame::tcp("198.18.0.1", 40000, "198.18.0.100", 80, TCP_SYN).build();
        let tagged = vlan_tagged(&f, ETH_P_8021Q, 7);
        assert_eq!(tagged.len(), f.len() + 4);
        assert_eq!(&tagged[12..16], &[0x81, 0x00, 0, 7]);
        assert!(try_parse(&tagged).is_none());
    }

    #[test]
    fn a_flipped_bit_is_caught() {
        let mut b = Frame::tcp("198.18.0.1", 40000, "198.18.0.100", 80, TCP_SYN).build();
        b[ETH_LEN + 16] ^= 1;
        let r = std::panic::catch_unwind(|| assert_checksums_valid(&b));
        assert!(r.is_err());
        let mut b = Frame::tcp("2001:db8::1", 40000, "2001:db8::100", 80, TCP_SYN).build();
        b[ETH_LEN + 39] ^= 1;
        assert!(verify_checksums(&b).is_err());
    }

    #[test]
    fn parsing_any_bytes_never_panics() {
        let base = [
            Frame::tcp("2001:db8::1", 1, "2001:db8::100", 80, TCP_SYN).build(),
            Frame::icmp_error(
                "198.18.5.1",
                "198.18.0.100",
                3,
                4,
                0,
                &Frame::udp("198.18.0.100", 53, "198.18.0.1", 9).build(),
                60,
            )
            .build(),
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for b in base {
            for len in 0..b.len() {
                let _ = verify_checksums(&b[..len]);
                for _ in 0..20 {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let mut m = b[..len].to_vec();
                    if len > 0 {
                        m[state as usize % len] = (state >> 32) as u8;
                    }
                    let _ = verify_checksums(&m);
                }
            }
        }
    }
}
