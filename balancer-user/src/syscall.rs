//! The one wrapper around bpf(2), for the commands aya does not offer:
//! batched map scans and writes (`mapscan`), and the bench's own programs.

use std::{io, mem, ptr};

/// `bpf(cmd, attr, sizeof *attr)`: its non-negative result (an fd for
/// `BPF_MAP_CREATE`, `BPF_PROG_LOAD`, `BPF_LINK_CREATE`), or the errno.
///
/// # Safety
///
/// `A` is the member of `union bpf_attr` that `cmd` reads (or the whole
/// union), and every pointer in it is valid for what the kernel reads and
/// writes through it.
pub unsafe fn sys_bpf<A>(cmd: libc::c_int, attr: &mut A) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live `A` of the size passed; the caller vouches
    // for the pointers inside it.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            ptr::from_mut(attr),
            mem::size_of::<A>() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}
