"""Where each source line of a loaded BPF program landed in its JIT code.

usage: jit-lines.py PROG_ID

Prints one row per line-info record: the JIT'd function's kernel address,
the record's offset in that function, and the instruction index (of the
xlated program) it annotates. `bpftool prog dump xlated id ID linum` names
the source line of each instruction index. Reads bpf_prog_info through
bpf(2) directly: Debian's bpftool cannot dump JIT code (no libbfd).
"""
import ctypes
import os
import struct
import sys

SYS_BPF = 321  # x86_64
BPF_PROG_GET_FD_BY_ID = 13
BPF_OBJ_GET_INFO_BY_FD = 15
# Offsets in struct bpf_prog_info (uapi linux/bpf.h).
NR_JITED_KSYMS, JITED_KSYMS = 104, 112
NR_LINE_INFO, LINE_INFO, JITED_LINE_INFO = 148, 152, 160
NR_JITED_LINE_INFO, LINE_INFO_REC_SIZE, JITED_LINE_INFO_REC_SIZE = 168, 172, 176

libc = ctypes.CDLL(None, use_errno=True)


def bpf(cmd, attr):
    buf = ctypes.create_string_buffer(attr, 128)
    fd = libc.syscall(SYS_BPF, cmd, buf, 128)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return fd


def prog_info(fd, u32s=None, u64s=None):
    info = ctypes.create_string_buffer(256)
    for off, val in (u32s or {}).items():
        struct.pack_into("I", info, off, val)
    for off, val in (u64s or {}).items():
        struct.pack_into("Q", info, off, val)
    bpf(BPF_OBJ_GET_INFO_BY_FD, struct.pack("IIQ", fd, 256, ctypes.addressof(info)))
    return info


def main():
    fd = bpf(BPF_PROG_GET_FD_BY_ID, struct.pack("I", int(sys.argv[1])))
    info = prog_info(fd)
    (n_ksyms,) = struct.unpack_from("I", info, NR_JITED_KSYMS)
    (n_lines,) = struct.unpack_from("I", info, NR_LINE_INFO)
    n_jited, rec_size, jited_rec_size = struct.unpack_from("III", info, NR_JITED_LINE_INFO)
    ksyms = (ctypes.c_uint64 * n_ksyms)()
    lines = ctypes.create_string_buffer(n_lines * rec_size)
    jited = (ctypes.c_uint64 * n_jited)()
    prog_info(
        fd,
        {NR_JITED_KSYMS: n_ksyms, NR_LINE_INFO: n_lines, NR_JITED_LINE_INFO: n_jited,
         LINE_INFO_REC_SIZE: rec_size, JITED_LINE_INFO_REC_SIZE: jited_rec_size},
        {JITED_KSYMS: ctypes.addressof(ksyms), LINE_INFO: ctypes.addressof(lines),
         JITED_LINE_INFO: ctypes.addressof(jited)},
    )
    starts = sorted(ksyms)
    for i in range(n_jited):
        (insn,) = struct.unpack_from("I", lines, i * rec_size)
        start = max(s for s in starts if s <= jited[i])
        print(f"{start:#x} {jited[i] - start:#x} {insn}")


main()
