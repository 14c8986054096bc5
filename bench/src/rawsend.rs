//! Crafted frames sent into an interface with an AF_PACKET socket: the
//! per-packet phases need exactly one kind of packet through the gateway,
//! which a TCP stack (handshakes, ACKs both ways) cannot give.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use balancer_tests::NetNs;

pub struct RawSender {
    fd: OwnedFd,
}

impl RawSender {
    /// A socket bound to `ifname` in `ns`, bypassing the qdisc (the frames
    /// go straight to the veth, as fast as one core makes them).
    pub fn new(ns: &NetNs, ifname: &str) -> io::Result<RawSender> {
        let ifindex = ns.ifindex(ifname);
        ns.run(|| {
            let proto = (libc::ETH_P_ALL as u16).to_be();
            // SAFETY: plain socket(2); the fd is owned right away.
            let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
            if raw < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `raw` is a fresh fd nobody else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            let one: libc::c_int = 1;
            // SAFETY: valid option pointer and length. A kernel without the
            // option only makes sending slower.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_PACKET,
                    libc::PACKET_QDISC_BYPASS,
                    &one as *const _ as *const libc::c_void,
                    size_of::<libc::c_int>() as u32,
                );
            }
            // SAFETY: sockaddr_ll is plain data; zero is a valid start.
            let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = proto;
            addr.sll_ifindex = ifindex as i32;
            // SAFETY: a valid sockaddr_ll and its length. Protocol 0 at
            // socket() and a bind with ifindex: we send, never receive.
            let ret = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    &addr as *const _ as *const libc::sockaddr,
                    size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            if ret < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(RawSender { fd })
        })
    }

    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: the buffer is valid for its length.
        let ret = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
                0,
            )
        };
        if ret < 0 {
            let err = io::Error::last_os_error();
            // A full device queue: drop this frame, as a NIC would.
            if err.raw_os_error() == Some(libc::ENOBUFS) || err.kind() == io::ErrorKind::WouldBlock
            {
                return Ok(());
            }
            return Err(err);
        }
        Ok(())
    }

    /// Send `frame(i)` for i = 0, 1, ... until `limit` frames or `time`
    /// passed (or Ctrl-C); the number sent.
    pub fn blast(
        &self,
        limit: u64,
        time: Duration,
        mut frame: impl FnMut(u64) -> Vec<u8>,
    ) -> io::Result<u64> {
        let end = Instant::now() + time;
        let mut sent = 0;
        while sent < limit {
            if sent % 1024 == 0 && (Instant::now() >= end || crate::stop::requested()) {
                break;
            }
            self.send(&frame(sent))?;
            sent += 1;
        }
        Ok(sent)
    }
}
