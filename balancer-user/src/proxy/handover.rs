//! An in-place restart that keeps the daemon-terminated connections
//! (SIGUSR2, as nginx and HAProxy upgrade their binaries). The daemon is
//! the endpoint of these connections, so a plain restart would close them.
//! Instead:
//!
//! 1. Every connection parks at its next safe point: waiting for a request
//!    head, waiting for a response head, or tunnelling. Its sockets,
//!    pipes and unsent bytes are put aside. A body in flight finishes
//!    first.
//! 2. The acceptors park their listening sockets, so no SYN meets a closed
//!    port.
//! 3. The daemon re-executes its binary (the one now on disk) under the
//!    same PID. The parked descriptors are inherited, and a memfd that
//!    describes them is named in `BALANCER_HANDOVER_FD`.
//! 4. The new process adopts the pinned data plane as on any restart,
//!    accepts on the inherited listeners, and resumes each connection
//!    where it stopped.

use std::{
    io::{self, Read, Seek, Write},
    net::SocketAddr,
    os::{
        fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd},
        unix::process::CommandExt,
    },
    time::Duration,
};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// Names the memfd that describes the inherited descriptors.
pub const HANDOVER_ENV: &str = "BALANCER_HANDOVER_FD";
/// How long connections may take to reach a safe point (a body in flight
/// finishing) before the restart goes ahead without them.
pub const PARK_WAIT: Duration = Duration::from_secs(5);

/// What a connection waits for when it parks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ParkedStep {
    /// The next request head (its first bytes may be in `buf`).
    Request,
    /// The response to a request sent in full.
    Response {
        request_is_head: bool,
        request_close: bool,
    },
    /// Nothing: both directions are spliced.
    Tunnel,
}

/// A pipe's ends and the bytes it holds that are not yet written on.
#[derive(Debug, Serialize, Deserialize)]
pub struct ParkedPipe<F> {
    pub fds: Option<(F, F)>,
    pub held: usize,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ParkedBackend<F> {
    pub id: u32,
    pub origin: SocketAddr,
    pub routed_origin: Option<SocketAddr>,
    pub fd: F,
}

/// One connection, put aside with everything needed to go on with it.
/// `F` is an owned descriptor in the process, its number on the way to
/// the next one.
#[derive(Debug, Serialize, Deserialize)]
pub struct ParkedConn<F> {
    pub service: String,
    pub client: F,
    pub peer: SocketAddr,
    pub origin: SocketAddr,
    /// Client bytes read and not yet passed on.
    pub buf: Vec<u8>,
    /// Backend bytes read and not yet passed on.
    pub rbuf: Vec<u8>,
    pub backend: Option<ParkedBackend<F>>,
    pub pipes: [ParkedPipe<F>; 2],
    pub step: ParkedStep,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ParkedListener<F> {
    pub service: String,
    pub vip: SocketAddr,
    pub fd: F,
}

/// Everything put aside for the next process.
#[derive(Debug, Serialize, Deserialize)]
pub struct Handover<F> {
    pub listeners: Vec<ParkedListener<F>>,
    pub connections: Vec<ParkedConn<F>>,
}

impl<F> Default for Handover<F> {
    fn default() -> Self {
        Handover {
            listeners: Vec::new(),
            connections: Vec::new(),
        }
    }
}

impl<F> ParkedPipe<F> {
    fn map<G>(self, f: &mut impl FnMut(F) -> G) -> ParkedPipe<G> {
        ParkedPipe {
            fds: self.fds.map(|(r, w)| (f(r), f(w))),
            held: self.held,
        }
    }
}

impl<F> Handover<F> {
    /// The same handover with each descriptor turned by `f`.
    fn map<G>(self, mut f: impl FnMut(F) -> G) -> Handover<G> {
        Handover {
            listeners: self
                .listeners
                .into_iter()
                .map(|l| ParkedListener {
                    service: l.service,
                    vip: l.vip,
                    fd: f(l.fd),
                })
                .collect(),
            connections: self
                .connections
                .into_iter()
                .map(|c| {
                    let [a, b] = c.pipes;
                    ParkedConn {
                        service: c.service,
                        client: f(c.client),
                        peer: c.peer,
                        origin: c.origin,
                        buf: c.buf,
                        rbuf: c.rbuf,
                        backend: c.backend.map(|b| ParkedBackend {
                            id: b.id,
                            origin: b.origin,
                            routed_origin: b.routed_origin,
                            fd: f(b.fd),
                        }),
                        pipes: [a.map(&mut f), b.map(&mut f)],
                        step: c.step,
                    }
                })
                .collect(),
        }
    }
}

/// Keep `fd` open across exec.
fn inheritable(fd: OwnedFd) -> io::Result<RawFd> {
    // SAFETY: fcntl on a descriptor we own; 0 clears FD_CLOEXEC.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd.into_raw_fd())
}

/// Re-execute this daemon's binary with the same arguments, handing it
/// `handover`. Returns only on failure, when the descriptors are lost:
/// the caller gives up the restart before this point if it can.
pub fn exec(handover: Handover<OwnedFd>) -> anyhow::Error {
    match prepare_exec(handover) {
        Ok(mut command) => anyhow::Error::from(command.exec()).context("re-executing the daemon"),
        Err(e) => e,
    }
}

fn prepare_exec(handover: Handover<OwnedFd>) -> anyhow::Result<std::process::Command> {
    let mut failed = None;
    let handover = handover.map(|fd| {
        inheritable(fd).unwrap_or_else(|e| {
            failed.get_or_insert(e);
            -1
        })
    });
    if let Some(e) = failed {
        return Err(e).context("keeping the parked connections open across exec");
    }
    let text = serde_json::to_vec(&handover)?;
    // SAFETY: memfd_create with a static NUL-terminated name, no flags: the
    // descriptor is inherited by the next process.
    let memfd = unsafe { libc::memfd_create(c"balancer-handover".as_ptr(), 0) };
    if memfd < 0 {
        return Err(io::Error::last_os_error()).context("memfd_create");
    }
    // SAFETY: a fresh descriptor that nothing else owns; kept open (into a
    // raw number again) for the next process.
    let mut file = unsafe { std::fs::File::from_raw_fd(memfd) };
    file.write_all(&text)?;
    let memfd = file.into_raw_fd();
    // The binary on disk now (after a package upgrade, the new one):
    // /proc/self/exe names the old one, " (deleted)" once replaced.
    let exe = std::env::current_exe().context("finding the daemon's binary")?;
    let exe = exe
        .to_str()
        .and_then(|s| s.strip_suffix(" (deleted)"))
        .map_or(exe.clone(), Into::into);
    let mut command = std::process::Command::new(exe);
    command
        .args(std::env::args_os().skip(1))
        .env(HANDOVER_ENV, memfd.to_string());
    Ok(command)
}

/// What the previous process handed over, if this one was started by
/// [`exec`]. Call it once: it takes ownership of the descriptors.
pub fn inherited() -> anyhow::Result<Option<Handover<OwnedFd>>> {
    let Some(value) = std::env::var_os(HANDOVER_ENV) else {
        return Ok(None);
    };
    let fd: RawFd = value
        .to_str()
        .and_then(|s| s.parse().ok())
        .context("BALANCER_HANDOVER_FD is not a descriptor number")?;
    // SAFETY: the previous process left this memfd open for us, and
    // nothing else in this process knows its number.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    let mut text = Vec::new();
    file.rewind()?;
    file.read_to_end(&mut text)?;
    let handover: Handover<RawFd> =
        serde_json::from_slice(&text).context("reading the handover")?;
    // SAFETY: each number is a descriptor the previous process kept open
    // across exec for us, named once in the handover.
    Ok(Some(handover.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What one process writes the next reads back, every descriptor
    /// number and byte in its place.
    #[test]
    fn a_handover_reads_back_as_written() {
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        let handover: Handover<RawFd> = Handover {
            listeners: vec![ParkedListener {
                service: "chat".into(),
                vip: addr("198.18.0.100:80"),
                fd: 7,
            }],
            connections: vec![ParkedConn {
                service: "chat".into(),
                client: 8,
                peer: addr("198.18.4.1:40000"),
                origin: addr("203.0.113.7:5000"),
                buf: b"GET /socket.io/?sid=b1.x HTTP/1.1\r\n".to_vec(),
                rbuf: vec![0, 255, 10],
                backend: Some(ParkedBackend {
                    id: 3,
                    origin: addr("203.0.113.7:5000"),
                    routed_origin: None,
                    fd: 9,
                }),
                pipes: [
                    ParkedPipe {
                        fds: Some((10, 11)),
                        held: 1200,
                    },
                    ParkedPipe { fds: None, held: 0 },
                ],
                step: ParkedStep::Response {
                    request_is_head: false,
                    request_close: true,
                },
            }],
        };
        let text = serde_json::to_vec(&handover).unwrap();
        let back: Handover<RawFd> = serde_json::from_slice(&text).unwrap();
        assert_eq!(format!("{back:?}"), format!("{handover:?}"));
        // Every descriptor is visited once by `map`, in a stable order.
        let mut seen = Vec::new();
        let mapped = back.map(|fd| {
            seen.push(fd);
            fd + 100
        });
        assert_eq!(seen, [7, 8, 9, 10, 11]);
        assert_eq!(mapped.connections[0].client, 108);
        assert_eq!(mapped.connections[0].pipes[0].held, 1200);
    }
}
