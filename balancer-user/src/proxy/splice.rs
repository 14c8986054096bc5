//! Moving bytes between two sockets without copying them through this
//! process: splice(2) from one socket into a pipe, then from the pipe into
//! the other socket, the way HAProxy forwards with `option splice-auto`.
//! Each direction has its own pipe; tokio's readiness drives the
//! non-blocking calls.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
};

use tokio::{io::Interest, net::TcpStream};

use super::handover::ParkedPipe;

/// Bytes asked of one splice call: a default pipe's capacity (16 pages).
const CHUNK: usize = 64 * 1024;

/// A pipe, made on first use (most requests have no body to splice), and
/// the bytes it holds that are not yet written on.
#[derive(Default)]
pub struct Pipe {
    fds: Option<(OwnedFd, OwnedFd)>,
    held: usize,
}

impl Pipe {
    /// Put aside for an in-place restart ([`super::handover`]).
    pub fn park(self) -> ParkedPipe<OwnedFd> {
        ParkedPipe {
            fds: self.fds,
            held: self.held,
        }
    }

    pub fn resume(parked: ParkedPipe<OwnedFd>) -> Pipe {
        Pipe {
            fds: parked.fds,
            held: parked.held,
        }
    }

    /// The read and write ends, made now if not yet.
    fn ends(&mut self) -> io::Result<(RawFd, RawFd)> {
        if self.fds.is_none() {
            let mut fds = [0; 2];
            // SAFETY: `fds` has room for the two descriptors pipe2 writes.
            if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: two fresh descriptors that nothing else owns.
            self.fds =
                Some(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) });
        }
        let (read, write) = self.fds.as_ref().expect("made above");
        Ok((read.as_raw_fd(), write.as_raw_fd()))
    }
}

/// One non-blocking splice(2) of up to `len` bytes; `WouldBlock` when
/// either end is not ready.
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: plain splice(2) between descriptors the caller keeps open,
    // with no offsets (both ends are a socket or a pipe).
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// Move bytes from `from` to `to` until `from` has sent `limit` bytes, or
/// until its end of stream when `limit` is `None`. Returns how many bytes
/// were moved; fewer than `limit` means `from` ended first.
pub async fn forward(
    from: &TcpStream,
    to: &TcpStream,
    pipe: &mut Pipe,
    limit: Option<u64>,
) -> io::Result<u64> {
    let mut moved = 0u64;
    if limit == Some(0) {
        return Ok(0);
    }
    let (read_end, write_end) = pipe.ends()?;
    loop {
        while pipe.held > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || {
                splice(read_end, to.as_raw_fd(), pipe.held)
            }) {
                Ok(n) => pipe.held -= n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        let want = match limit {
            Some(limit) if moved >= limit => return Ok(moved),
            Some(limit) => CHUNK.min(usize::try_from(limit - moved).unwrap_or(CHUNK)),
            None => CHUNK,
        };
        from.readable().await?;
        match from.try_io(Interest::READABLE, || {
            splice(from.as_raw_fd(), write_end, want)
        }) {
            Ok(0) => return Ok(moved),
            Ok(n) => {
                pipe.held = n;
                moved += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

/// Forward both ways until both sides have ended their streams, passing
/// each end of stream on (a half-close), as a WebSocket or any upgraded
/// connection needs. An error either way (a reset) ends both at once:
/// nothing is left waiting on a peer that is gone. Returns the bytes
/// moved (a → b, b → a).
pub async fn tunnel(a: &TcpStream, b: &TcpStream, pipes: &mut [Pipe; 2]) -> io::Result<(u64, u64)> {
    let [ab, ba] = pipes;
    let mut a_to_b = std::pin::pin!(async {
        let moved = forward(a, b, ab, None).await?;
        shutdown_write(b);
        io::Result::Ok(moved)
    });
    let mut b_to_a = std::pin::pin!(async {
        let moved = forward(b, a, ba, None).await?;
        shutdown_write(a);
        io::Result::Ok(moved)
    });
    tokio::select! {
        ab = &mut a_to_b => {
            let ab = ab?;
            Ok((ab, b_to_a.await?))
        }
        ba = &mut b_to_a => {
            let ba = ba?;
            Ok((a_to_b.await?, ba))
        }
    }
}

/// Send our end of stream (FIN) on `stream`; reading goes on.
pub fn shutdown_write(stream: &TcpStream) {
    // SAFETY: shutdown(2) on a descriptor `stream` keeps open. An error
    // (the peer is gone already) leaves nothing to do.
    unsafe {
        libc::shutdown(stream.as_raw_fd(), libc::SHUT_WR);
    }
}
