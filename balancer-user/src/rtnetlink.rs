//! Adding and removing a host address or a local route over rtnetlink, as
//! `ip addr add|del ADDR/32 dev IF` and `ip route add|del local ADDR/32 dev
//! lo table local` do, without running `ip`: one request, one
//! acknowledgement, on a socket of the calling thread's network namespace.

use std::{io, mem, net::IpAddr, time::Duration};

/// `IFA_ADDRESS`: the prefix address (the peer's on point-to-point links).
const IFA_ADDRESS: u16 = 1;
/// `IFA_LOCAL`: the interface's own address.
const IFA_LOCAL: u16 = 2;
/// `IFA_F_NODAD`: an IPv6 address usable at once, without duplicate
/// address detection (a VIP on `lo` has no link to detect on).
const IFA_F_NODAD: u8 = 0x02;
/// `RT_SCOPE_UNIVERSE`: a global address, which BIRD's `protocol direct`
/// exports.
const RT_SCOPE_UNIVERSE: u8 = 0;
/// `RT_TABLE_LOCAL`, `RTN_LOCAL`, `RT_SCOPE_HOST`: the kind of route that
/// makes an address local without putting it on an interface.
const RT_TABLE_LOCAL: u8 = 255;
const RTN_LOCAL: u8 = 2;
const RT_SCOPE_HOST: u8 = 254;
/// `RTPROT_STATIC`: a route an administrator (here, the daemon) made.
const RTPROT_STATIC: u8 = 4;
/// `RTA_DST`, `RTA_OIF`.
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
/// How long the kernel may take to acknowledge; it answers at once.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Add,
    Remove,
}

/// Add (or keep) `ip` as a host address (/32, /128) on interface `ifindex`,
/// or remove it. Adding an address that is there, or removing one that is
/// not, succeeds: the caller states what it wants, not a change.
pub fn host_address(op: Op, ifindex: u32, ip: IpAddr) -> io::Result<()> {
    let request = message(op, ifindex, ip, 1);
    match exchange(&request) {
        Err(e) if op == Op::Remove && e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => Ok(()),
        other => other,
    }
}

/// Make `ip` (a /32 or /128) local to this namespace through a route in
/// the `local` table via interface `ifindex` (`lo`), or remove that route:
/// sockets may bind it and packets to it are delivered here, yet no
/// interface carries it, so a routing daemon's `protocol direct` does not
/// announce it. Idempotent like [`host_address`].
///
/// Adding never replaces a route that is there: an address already local
/// (on an interface, whose own `local` route the kernel made) stays as it
/// is. Removing matches this kind of route only (protocol static, via
/// `ifindex`), so it never takes away an interface address's route.
pub fn local_route(op: Op, ifindex: u32, ip: IpAddr) -> io::Result<()> {
    match exchange(&route_message(op, ifindex, ip)) {
        Err(e) if op == Op::Add && e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        Err(e) if op == Op::Remove && e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
        other => other,
    }
}

/// The route request: `nlmsghdr`, `rtmsg`, then `RTA_DST` and `RTA_OIF`.
fn route_message(op: Op, ifindex: u32, ip: IpAddr) -> Vec<u8> {
    let (family, prefixlen, octets) = host_prefix(ip);
    let (kind, flags) = match op {
        Op::Add => (libc::RTM_NEWROUTE, libc::NLM_F_CREATE | libc::NLM_F_EXCL),
        Op::Remove => (libc::RTM_DELROUTE, 0),
    };
    // struct rtmsg (<linux/rtnetlink.h>): family, dst_len, src_len, tos,
    // table, protocol, scope, type, then u32 flags.
    let mut body = vec![
        family,
        prefixlen,
        0,
        0,
        RT_TABLE_LOCAL,
        RTPROT_STATIC,
        RT_SCOPE_HOST,
        RTN_LOCAL,
    ];
    body.extend_from_slice(&0u32.to_ne_bytes());
    push_attr(&mut body, RTA_DST, &octets);
    push_attr(&mut body, RTA_OIF, &ifindex.to_ne_bytes());
    request(kind, flags, &body, 1)
}

/// `ip`'s family, host prefix length and bytes.
fn host_prefix(ip: IpAddr) -> (u8, u8, Vec<u8>) {
    match ip {
        IpAddr::V4(a) => (libc::AF_INET as u8, 32, a.octets().to_vec()),
        IpAddr::V6(a) => (libc::AF_INET6 as u8, 128, a.octets().to_vec()),
    }
}

/// The address request: `nlmsghdr`, `ifaddrmsg`, then `IFA_LOCAL` and
/// `IFA_ADDRESS` (both the address, as `ip` sends them).
fn message(op: Op, ifindex: u32, ip: IpAddr, seq: u32) -> Vec<u8> {
    let (family, prefixlen, octets) = host_prefix(ip);
    let (kind, flags) = match op {
        // REPLACE: an address already there is no error.
        Op::Add => (libc::RTM_NEWADDR, libc::NLM_F_CREATE | libc::NLM_F_REPLACE),
        Op::Remove => (libc::RTM_DELADDR, 0),
    };
    // struct ifaddrmsg (<linux/if_addr.h>; libc has no type for it).
    let ifa_flags = if ip.is_ipv6() { IFA_F_NODAD } else { 0 };
    let mut body = vec![family, prefixlen, ifa_flags, RT_SCOPE_UNIVERSE];
    body.extend_from_slice(&ifindex.to_ne_bytes());
    for attr in [IFA_LOCAL, IFA_ADDRESS] {
        push_attr(&mut body, attr, &octets);
    }
    request(kind, flags, &body, seq)
}

/// rtattr: length (header and data, unpadded), type, data padded to 4.
fn push_attr(body: &mut Vec<u8>, kind: u16, data: &[u8]) {
    let len = 4 + data.len();
    body.extend_from_slice(&(len as u16).to_ne_bytes());
    body.extend_from_slice(&kind.to_ne_bytes());
    body.extend_from_slice(data);
    body.resize(body.len().next_multiple_of(4), 0);
}

/// `body` behind an `nlmsghdr` asking for an acknowledgement.
fn request(kind: u16, flags: i32, body: &[u8], seq: u32) -> Vec<u8> {
    let header_len = mem::size_of::<libc::nlmsghdr>();
    let mut out = Vec::with_capacity(header_len + body.len());
    out.extend_from_slice(&((header_len + body.len()) as u32).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_ACK | flags) as u16).to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel fills in ours
    out.extend_from_slice(body);
    out
}

/// Send `request` and read the kernel's acknowledgement: `Ok` for error 0,
/// the errno otherwise.
fn exchange(request: &[u8]) -> io::Result<()> {
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd that nothing else owns.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    let timeout = libc::timeval {
        tv_sec: ACK_TIMEOUT.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    // SAFETY: a valid timeval of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            raw,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            std::ptr::from_ref(&timeout).cast(),
            mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: zeroed sockaddr_nl is valid; pid 0 addresses the kernel.
    let mut kernel: libc::sockaddr_nl = unsafe { mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: `request` and `kernel` are valid for the lengths passed.
    let sent = unsafe {
        libc::sendto(
            raw,
            request.as_ptr().cast(),
            request.len(),
            0,
            std::ptr::from_ref(&kernel).cast(),
            mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = [0u8; 4096];
    // SAFETY: `buf` is valid for its length.
    let n = unsafe { libc::recv(raw, buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    ack(&buf[..n as usize])
}

/// The acknowledgement's verdict: `nlmsghdr` of type `NLMSG_ERROR`, then
/// the (negative) errno, 0 for success.
fn ack(reply: &[u8]) -> io::Result<()> {
    let header_len = mem::size_of::<libc::nlmsghdr>();
    let unreadable = || io::Error::new(io::ErrorKind::InvalidData, "unreadable netlink reply");
    let kind = reply.get(4..6).ok_or_else(unreadable)?;
    if u16::from_ne_bytes([kind[0], kind[1]]) != libc::NLMSG_ERROR as u16 {
        return Err(unreadable());
    }
    let code = reply
        .get(header_len..header_len + 4)
        .ok_or_else(unreadable)?;
    match i32::from_ne_bytes([code[0], code[1], code[2], code[3]]) {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(-e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_request_is_what_ip_addr_add_sends() {
        let m = message(Op::Add, 1, "198.18.0.100".parse().unwrap(), 7);
        // 16 (header) + 8 (ifaddrmsg) + 2 × (4 + 4) (attributes)
        assert_eq!(m.len(), 40);
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()), 40);
        assert_eq!(
            u16::from_ne_bytes(m[4..6].try_into().unwrap()),
            libc::RTM_NEWADDR
        );
        let flags = u16::from_ne_bytes(m[6..8].try_into().unwrap());
        assert_eq!(
            flags as i32,
            libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_REPLACE
        );
        assert_eq!(u32::from_ne_bytes(m[8..12].try_into().unwrap()), 7);
        assert_eq!(&m[16..20], &[libc::AF_INET as u8, 32, 0, 0]);
        assert_eq!(u32::from_ne_bytes(m[20..24].try_into().unwrap()), 1);
        assert_eq!(u16::from_ne_bytes(m[24..26].try_into().unwrap()), 8);
        assert_eq!(u16::from_ne_bytes(m[26..28].try_into().unwrap()), IFA_LOCAL);
        assert_eq!(&m[28..32], &[198, 18, 0, 100]);
        assert_eq!(
            u16::from_ne_bytes(m[34..36].try_into().unwrap()),
            IFA_ADDRESS
        );
        assert_eq!(&m[36..40], &[198, 18, 0, 100]);
    }

    #[test]
    fn v6_removal_is_a_host_route_without_dad() {
        let m = message(Op::Remove, 9, "2001:db8::100".parse().unwrap(), 1);
        assert_eq!(m.len(), 16 + 8 + 2 * 20);
        assert_eq!(
            u16::from_ne_bytes(m[4..6].try_into().unwrap()),
            libc::RTM_DELADDR
        );
        let flags = u16::from_ne_bytes(m[6..8].try_into().unwrap());
        assert_eq!(flags as i32, libc::NLM_F_REQUEST | libc::NLM_F_ACK);
        assert_eq!(&m[16..20], &[libc::AF_INET6 as u8, 128, IFA_F_NODAD, 0]);
        assert_eq!(
            m[28..44],
            "2001:db8::100"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
        );
    }

    #[test]
    fn local_route_is_what_ip_route_add_local_sends() {
        let m = route_message(Op::Add, 1, "198.18.0.100".parse().unwrap());
        // 16 (header) + 12 (rtmsg) + 2 × 8 (attributes)
        assert_eq!(m.len(), 44);
        assert_eq!(
            u16::from_ne_bytes(m[4..6].try_into().unwrap()),
            libc::RTM_NEWROUTE
        );
        assert_eq!(&m[16..24], &[libc::AF_INET as u8, 32, 0, 0, 255, 4, 254, 2]);
        assert_eq!(&m[28..36], &[8, 0, 1, 0, 198, 18, 0, 100]);
        assert_eq!(&m[36..44], &[8, 0, 4, 0, 1, 0, 0, 0]);
    }

    #[test]
    fn acks_and_errors() {
        let reply = |code: i32| {
            let mut r = vec![0u8; 36];
            r[4..6].copy_from_slice(&(libc::NLMSG_ERROR as u16).to_ne_bytes());
            r[16..20].copy_from_slice(&code.to_ne_bytes());
            r
        };
        assert!(ack(&reply(0)).is_ok());
        let e = ack(&reply(-libc::ENODEV)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENODEV));
        assert_eq!(ack(&[0; 3]).unwrap_err().kind(), io::ErrorKind::InvalidData);
    }
}
