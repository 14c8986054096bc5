//! The few bpf(2) calls the bench makes itself: the floor program (two
//! instructions, loaded without an ELF object so it needs no maps and no
//! change to the kernel crate), links that attach it by ifindex, and
//! BPF_PROG_TEST_RUN on a program found by id (aya runs test_run only on
//! programs it loaded itself).
//!
//! Links are held by their fd: when the bench exits, however it exits, the
//! kernel detaches them.

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
};

use aya_obj::generated::{bpf_attach_type, bpf_attr, bpf_cmd, bpf_prog_type};

/// Where a program runs: XDP in the driver, or TC (tcx) ingress on the skb.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Hook {
    Xdp,
    Tc,
}

impl Hook {
    pub fn name(self) -> &'static str {
        match self {
            Hook::Xdp => "xdp",
            Hook::Tc => "tc",
        }
    }
}

/// `r0 = verdict; exit`: the cheapest program the hook can run.
const fn floor_insns(verdict: i32) -> [u64; 2] {
    // BPF_ALU64 | BPF_MOV | BPF_K (0xb7), dst r0, imm verdict; then BPF_EXIT (0x95).
    [0xb7 | ((verdict as u32 as u64) << 32), 0x95]
}

const XDP_PASS: i32 = 2;
const TC_ACT_OK: i32 = 0;

fn sys_bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<i64> {
    // SAFETY: `attr` is a valid, zero-initialised bpf_attr with the fields of
    // `cmd` set; the kernel reads at most size_of::<bpf_attr>() bytes.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut bpf_attr,
            size_of::<bpf_attr>(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn zeroed_attr() -> bpf_attr {
    // SAFETY: bpf_attr is plain old data; all zeroes is its documented default.
    unsafe { std::mem::zeroed() }
}

fn owned_fd(ret: i64) -> OwnedFd {
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(ret as i32) }
}

/// Load the floor program for `hook`, named `floor_xdp` / `floor_tc`.
pub fn load_floor(hook: Hook) -> io::Result<OwnedFd> {
    let (prog_type, verdict, name): (_, _, &[u8]) = match hook {
        Hook::Xdp => (bpf_prog_type::BPF_PROG_TYPE_XDP, XDP_PASS, b"floor_xdp"),
        Hook::Tc => (
            bpf_prog_type::BPF_PROG_TYPE_SCHED_CLS,
            TC_ACT_OK,
            b"floor_tc",
        ),
    };
    let insns = floor_insns(verdict);
    let license = c"GPL";
    let mut attr = zeroed_attr();
    // SAFETY: writing plain integer fields of the BPF_PROG_LOAD member.
    unsafe {
        let load = &mut attr.__bindgen_anon_3;
        load.prog_type = prog_type as u32;
        load.insn_cnt = insns.len() as u32;
        load.insns = insns.as_ptr() as u64;
        load.license = license.as_ptr() as u64;
        for (dst, src) in load.prog_name.iter_mut().zip(name) {
            *dst = *src as libc::c_char;
        }
    }
    sys_bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr).map(owned_fd)
}

/// Attach `prog` to `ifindex` (in the calling thread's network namespace)
/// with a bpf_link; the link lives as long as the returned fd.
pub fn attach(prog: BorrowedFd<'_>, ifindex: u32, hook: Hook) -> io::Result<OwnedFd> {
    let attach_type = match hook {
        Hook::Xdp => bpf_attach_type::BPF_XDP,
        Hook::Tc => bpf_attach_type::BPF_TCX_INGRESS,
    };
    let mut attr = zeroed_attr();
    // Writing union fields is safe; the BPF_LINK_CREATE member is the one read.
    attr.link_create.__bindgen_anon_1.prog_fd = prog.as_raw_fd() as u32;
    attr.link_create.__bindgen_anon_2.target_ifindex = ifindex;
    attr.link_create.attach_type = attach_type as u32;
    sys_bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr).map(owned_fd)
}

/// What one BPF_PROG_TEST_RUN call reported.
#[derive(Clone, Copy, Debug)]
pub struct TestRun {
    pub retval: u32,
    /// The kernel's own average over the repetitions, in ns.
    pub duration_ns: u32,
}

/// Run `prog` `repeat` times on `frame` (XDP context `ctx`, or none). The
/// kernel reruns the program on the frame as the previous run left it:
/// only a frame the program does not change gives a meaningful average.
pub fn test_run(
    prog: BorrowedFd<'_>,
    frame: &[u8],
    ctx: Option<&[u8]>,
    repeat: u32,
) -> io::Result<TestRun> {
    let mut out = vec![0u8; frame.len() + 256];
    let mut attr = zeroed_attr();
    // SAFETY: writing plain integer fields of the BPF_PROG_TEST_RUN member;
    // the buffers outlive the call.
    unsafe {
        let t = &mut attr.test;
        t.prog_fd = prog.as_raw_fd() as u32;
        t.data_in = frame.as_ptr() as u64;
        t.data_size_in = frame.len() as u32;
        t.data_out = out.as_mut_ptr() as u64;
        t.data_size_out = out.len() as u32;
        t.repeat = repeat;
        if let Some(ctx) = ctx {
            t.ctx_in = ctx.as_ptr() as u64;
            t.ctx_size_in = ctx.len() as u32;
        }
    }
    sys_bpf(bpf_cmd::BPF_PROG_TEST_RUN, &mut attr)?;
    // SAFETY: the kernel filled in the test member.
    let t = unsafe { attr.test };
    Ok(TestRun {
        retval: t.retval,
        duration_ns: t.duration,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_is_mov_r0_then_exit() {
        assert_eq!(floor_insns(2), [0x0000_0002_0000_00b7, 0x95]);
    }
}
