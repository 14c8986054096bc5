//! The few bpf(2) calls the bench makes itself, through balancer-user's
//! `sys_bpf`: the floor program (two instructions, loaded without an ELF
//! object so it needs no maps and no change to the kernel crate), links that
//! attach it by ifindex, and BPF_PROG_TEST_RUN on a program found by id (aya
//! runs test_run only on programs it loaded itself).
//!
//! Links are held by their fd: when the bench exits, however it exits, the
//! kernel detaches them.

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd},
};

use aya_obj::generated::{bpf_attach_type, bpf_attr, bpf_cmd, bpf_prog_type};
use balancer_user::syscall::sys_bpf;

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

/// One instruction: opcode, registers, offset, immediate.
const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    code as u64
        | ((dst | (src << 4)) as u64) << 8
        | (off as u16 as u64) << 16
        | (imm as u32 as u64) << 32
}

/// Capacity of the references' maps: the balancer's CONNTRACK's.
const REFERENCE_MAP_ENTRIES: u32 = balancer_common::maps::MAX_FLOWS;
const FLOW_KEY: i32 = size_of::<balancer_common::types::FlowKey>() as i32;
const FLOW_VALUE: i32 = size_of::<balancer_common::types::Flow>() as i32;

/// The map-cost references: hand-assembled XDP programs that make only the
/// conntrack call a balancer path cannot do without, into a new LRU hash of
/// CONNTRACK's size and layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reference {
    /// One `bpf_map_update_elem` per frame: a new connection's insert.
    Insert,
    /// The same insert into a map created with `BPF_F_NO_COMMON_LRU`: an
    /// LRU list per CPU instead of one shared list under one lock.
    InsertPerCpuLru,
    /// One `bpf_map_lookup_elem` per frame, and an insert only on a miss:
    /// under frames of flows it has seen, a conntrack hit's lookup.
    Lookup,
}

impl Reference {
    fn prog_name(self) -> &'static [u8] {
        match self {
            Reference::Insert => b"insert_ref",
            Reference::InsertPerCpuLru => b"insert_pcpu_ref",
            Reference::Lookup => b"lookup_ref",
        }
    }
}

/// A reference program, XDP: a key of the balancer's flow-key size on the
/// stack, its first words the frame's IPv4 source, destination and ports
/// (every connection its own key), a zeroed value of the flow size, then
/// the reference's map calls into `map_fd`, then XDP_PASS. What those calls
/// cost by themselves, with nothing else the balancer does.
fn reference_insns(map_fd: i32, reference: Reference) -> Vec<u64> {
    const LDXW: u8 = 0x61;
    const STXW: u8 = 0x63;
    const STDW: u8 = 0x7a;
    const MOV_X: u8 = 0xbf;
    const MOV_K: u8 = 0xb7;
    const ADD_K: u8 = 0x07;
    const JGT_X: u8 = 0x2d;
    const LD_IMM64: u8 = 0x18;
    const PSEUDO_MAP_FD: u8 = 1;
    const CALL: u8 = 0x85;
    const JNE_K: u8 = 0x55;
    const MAP_LOOKUP_ELEM: i32 = 1;
    const MAP_UPDATE_ELEM: i32 = 2;
    const EXIT: u8 = 0x95;
    let (key, value) = (-FLOW_KEY as i16, -(FLOW_KEY + FLOW_VALUE) as i16);
    let mut p = vec![
        insn(LDXW, 2, 1, 0, 0), // r2 = data
        insn(LDXW, 3, 1, 4, 0), // r3 = data_end
        insn(MOV_X, 4, 2, 0, 0),
        insn(ADD_K, 4, 0, 0, 38), // through the TCP ports
        insn(JGT_X, 4, 3, 0, 0),  // to `pass`, patched below
    ];
    let mut to_pass = vec![p.len() - 1];
    for off in (key..0).step_by(8) {
        p.push(insn(STDW, 10, 0, off, 0));
    }
    for (from, to) in [(26, key), (30, key + 4), (34, key + 8)] {
        p.push(insn(LDXW, 5, 2, from, 0));
        p.push(insn(STXW, 10, 5, to, 0));
    }
    for off in (value..key).step_by(8) {
        p.push(insn(STDW, 10, 0, off, 0));
    }
    if reference == Reference::Lookup {
        p.extend([
            insn(LD_IMM64, 1, PSEUDO_MAP_FD, 0, map_fd),
            0,
            insn(MOV_X, 2, 10, 0, 0),
            insn(ADD_K, 2, 0, 0, key.into()),
            insn(CALL, 0, 0, 0, MAP_LOOKUP_ELEM),
            insn(JNE_K, 0, 0, 0, 0), // found: to `pass`, patched below
        ]);
        to_pass.push(p.len() - 1);
    }
    p.extend([
        insn(LD_IMM64, 1, PSEUDO_MAP_FD, 0, map_fd),
        0,
        insn(MOV_X, 2, 10, 0, 0),
        insn(ADD_K, 2, 0, 0, key.into()),
        insn(MOV_X, 3, 10, 0, 0),
        insn(ADD_K, 3, 0, 0, value.into()),
        insn(MOV_K, 4, 0, 0, 0),
        insn(CALL, 0, 0, 0, MAP_UPDATE_ELEM),
    ]);
    let pass = p.len();
    for jump in to_pass {
        // Keep each jump's opcode and registers; set its offset.
        let off = (pass - jump - 1) as i16;
        p[jump] = (p[jump] & !(0xffff << 16)) | (off as u16 as u64) << 16;
    }
    p.extend([insn(MOV_K, 0, 0, 0, XDP_PASS), insn(EXIT, 0, 0, 0, 0)]);
    p
}

const XDP_PASS: i32 = 2;
const TC_ACT_OK: i32 = 0;

fn zeroed_attr() -> bpf_attr {
    // SAFETY: bpf_attr is plain old data; all zeroes is its documented default.
    unsafe { std::mem::zeroed() }
}

fn owned_fd(ret: libc::c_long) -> OwnedFd {
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
    load(prog_type, &floor_insns(verdict), name)
}

/// `BPF_F_NO_COMMON_LRU` (uapi/linux/bpf.h): per-CPU LRU lists.
const BPF_F_NO_COMMON_LRU: u32 = 1 << 1;

/// Load a reference (XDP, `insert_ref`, `insert_pcpu_ref` or `lookup_ref`)
/// with a new LRU hash of the balancer's CONNTRACK size and layout:
/// (program, map). The map lives as long as the program, whether or not
/// its fd is kept.
pub fn load_reference(reference: Reference) -> io::Result<(OwnedFd, OwnedFd)> {
    let flags = if reference == Reference::InsertPerCpuLru {
        BPF_F_NO_COMMON_LRU
    } else {
        0
    };
    let map = create_lru_hash(
        FLOW_KEY as u32,
        FLOW_VALUE as u32,
        REFERENCE_MAP_ENTRIES,
        flags,
    )?;
    let prog = load(
        bpf_prog_type::BPF_PROG_TYPE_XDP,
        &reference_insns(map.as_raw_fd(), reference),
        reference.prog_name(),
    )?;
    Ok((prog, map))
}

/// A new LRU hash map, unnamed and unpinned: it lives as long as its fd or
/// a program or map-in-map that holds it.
pub fn create_lru_hash(
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    flags: u32,
) -> io::Result<OwnedFd> {
    let mut attr = zeroed_attr();
    // Writing union fields is safe; the BPF_MAP_CREATE member is the one read.
    attr.__bindgen_anon_1.map_type = aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_LRU_HASH as u32;
    attr.__bindgen_anon_1.key_size = key_size;
    attr.__bindgen_anon_1.value_size = value_size;
    attr.__bindgen_anon_1.max_entries = max_entries;
    attr.__bindgen_anon_1.map_flags = flags;
    // SAFETY: the BPF_MAP_CREATE fields are set; none is a pointer.
    unsafe { sys_bpf(bpf_cmd::BPF_MAP_CREATE as libc::c_int, &mut attr) }.map(owned_fd)
}

/// `bpf_map_update_elem(map, key, value, BPF_ANY)` with raw bytes: for a
/// map-in-map, whose value is the inner map's fd.
pub fn map_update(map: RawFd, key: &[u8], value: &[u8]) -> io::Result<()> {
    let mut attr = zeroed_attr();
    // Writing union fields is safe; the BPF_MAP_UPDATE_ELEM member is the one read.
    attr.__bindgen_anon_2.map_fd = map as u32;
    attr.__bindgen_anon_2.key = key.as_ptr() as u64;
    attr.__bindgen_anon_2.__bindgen_anon_1.value = value.as_ptr() as u64;
    // SAFETY: `key` and `value` outlive the call and have the map's sizes
    // (the kernel reads key_size and value_size bytes).
    unsafe { sys_bpf(bpf_cmd::BPF_MAP_UPDATE_ELEM as libc::c_int, &mut attr) }.map(|_| ())
}

fn load(prog_type: bpf_prog_type, insns: &[u64], name: &[u8]) -> io::Result<OwnedFd> {
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
    // SAFETY: `insns` and `license` outlive the call.
    unsafe { sys_bpf(bpf_cmd::BPF_PROG_LOAD as libc::c_int, &mut attr) }.map(owned_fd)
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
    // SAFETY: the BPF_LINK_CREATE fields are set; none is a pointer.
    unsafe { sys_bpf(bpf_cmd::BPF_LINK_CREATE as libc::c_int, &mut attr) }.map(owned_fd)
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
    // SAFETY: `frame`, `out` and `ctx` outlive the call, with the sizes
    // given.
    unsafe { sys_bpf(bpf_cmd::BPF_PROG_TEST_RUN as libc::c_int, &mut attr) }?;
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
        assert_eq!(
            [insn(0xb7, 0, 0, 0, 2), insn(0x95, 0, 0, 0, 0)],
            floor_insns(2)
        );
    }

    /// Needs root. The verifier takes the hand-assembled references, and
    /// both leave one entry per frame with new addresses or ports, none for a
    /// frame too short to carry ports.
    #[test]
    fn references_keep_one_entry_per_flow() {
        for reference in [
            Reference::Insert,
            Reference::InsertPerCpuLru,
            Reference::Lookup,
        ] {
            let keys = reference_keys(reference, &[40000, 40001, 40001]);
            assert_eq!(
                keys.len(),
                2,
                "{reference:?}: two distinct flows; the short frame made none"
            );
            assert_eq!(
                &keys[0][..12],
                &[198, 18, 0, 1, 198, 18, 0, 100, 0x9c, 0x40, 0, 80],
                "{reference:?}"
            );
        }
    }

    /// Needs root. The lookup reference inserts only on a miss: a flow's
    /// entry made by its first frame is the one later frames find (an
    /// update would rewrite it; the test marks it to tell).
    #[test]
    fn lookup_reference_finds_a_known_flow_and_leaves_it() {
        use std::os::fd::AsFd as _;

        let (prog, map) = load_reference(Reference::Lookup).unwrap();
        let mut map = flow_map(map);
        assert_eq!(
            test_run(prog.as_fd(), &frame(40000), None, 1)
                .unwrap()
                .retval,
            XDP_PASS as u32
        );
        let key = map.keys().next().unwrap().unwrap();
        map.insert(key, [7u8; FLOW_VALUE as usize], 0).unwrap();
        assert_eq!(
            test_run(prog.as_fd(), &frame(40000), None, 1)
                .unwrap()
                .retval,
            XDP_PASS as u32
        );
        assert_eq!(
            map.get(&key, 0).unwrap(),
            [7u8; FLOW_VALUE as usize],
            "found, not rewritten"
        );
    }

    type FlowMap =
        aya::maps::HashMap<aya::maps::MapData, [u8; FLOW_KEY as usize], [u8; FLOW_VALUE as usize]>;

    fn flow_map(fd: OwnedFd) -> FlowMap {
        use aya::maps::{HashMap, Map, MapData};
        HashMap::try_from(Map::LruHashMap(MapData::from_fd(fd).unwrap())).unwrap()
    }

    /// A TCP frame from 198.18.0.1:`sport` to 198.18.0.100:80 (the IPv4 and
    /// TCP headers' bytes the references read; the rest zero).
    fn frame(sport: u16) -> Vec<u8> {
        let mut f = vec![0u8; 54];
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        f[26..30].copy_from_slice(&[198, 18, 0, 1]);
        f[30..34].copy_from_slice(&[198, 18, 0, 100]);
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        f[36..38].copy_from_slice(&80u16.to_be_bytes());
        f
    }

    /// The keys `reference` leaves after a frame from each of `sports`, and
    /// one frame cut before its ports; sorted.
    fn reference_keys(reference: Reference, sports: &[u16]) -> Vec<[u8; FLOW_KEY as usize]> {
        use std::os::fd::AsFd as _;

        let (prog, map) = load_reference(reference).unwrap();
        let mut frames: Vec<Vec<u8>> = sports.iter().map(|&p| frame(p)).collect();
        frames.push(frame(40009)[..37].to_vec());
        for f in frames {
            assert_eq!(
                test_run(prog.as_fd(), &f, None, 1).unwrap().retval,
                XDP_PASS as u32
            );
        }
        let mut keys: Vec<_> = flow_map(map).keys().map(Result::unwrap).collect();
        keys.sort();
        keys
    }
}
