//! Crafted frames sent into an interface with an AF_PACKET socket, past the
//! sending namespace's TCP stack: exactly one kind of packet through the
//! gateway (the bench's per-packet phases), or packets from addresses that
//! never answer (the flood suite's spoofed handshakes), which a real TCP
//! stack cannot give.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use crate::NetNs;

/// How many frames a blast sends between two looks at the clock.
const BATCH: u64 = 256;

pub struct RawSender {
    fd: OwnedFd,
}

/// How much a [`RawSender::blast`] sends: at most `frames`, for at most
/// `time`, at most `per_second` if set (else as fast as one core goes).
#[derive(Clone, Copy, Debug)]
pub struct BlastLimits {
    pub frames: u64,
    pub time: Duration,
    pub per_second: Option<u64>,
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

    /// Send one frame; a full device queue drops it, as a NIC would.
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
            if err.raw_os_error() == Some(libc::ENOBUFS) || err.kind() == io::ErrorKind::WouldBlock
            {
                return Ok(());
            }
            return Err(err);
        }
        Ok(())
    }

    /// Send `frame(i)` for i = 0, 1, ... within `limits`, or until `stop()`
    /// says so (looked at every few hundred frames); the number sent.
    pub fn blast(
        &self,
        limits: BlastLimits,
        stop: impl Fn() -> bool,
        mut frame: impl FnMut(u64) -> Vec<u8>,
    ) -> io::Result<u64> {
        let start = Instant::now();
        let end = start + limits.time;
        let mut sent = 0;
        while sent < limits.frames {
            if sent % BATCH == 0 {
                let now = Instant::now();
                if now >= end || stop() {
                    break;
                }
                // Paced: never ahead of `per_second` since the start (a
                // sender that falls behind catches up at full speed).
                if let Some(rate) = limits.per_second {
                    let due = start + Duration::from_secs_f64(sent as f64 / rate as f64);
                    if due > now {
                        std::thread::sleep((due - now).min(end - now));
                    }
                }
            }
            self.send(&frame(sent))?;
            sent += 1;
        }
        Ok(sent)
    }
}

/// The MAC address of `ifname` in `ns`, for addressing crafted frames.
pub fn mac_of(ns: &NetNs, ifname: &str) -> io::Result<[u8; 6]> {
    let out = ns.ip(["-j", "link", "show", "dev", ifname]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let bad = || io::Error::new(io::ErrorKind::InvalidData, format!("no MAC of {ifname}"));
    let text = v[0]["address"].as_str().ok_or_else(bad)?;
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = text.split(':').collect();
    if parts.len() != 6 {
        return Err(bad());
    }
    for (b, part) in mac.iter_mut().zip(parts) {
        *b = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    Ok(mac)
}
