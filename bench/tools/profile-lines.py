"""The hot source lines of the balancer's XDP program in one bench phase.

usage: profile-lines.py OUT_DIR PHASE (see profile-phases.sh)

Takes the samples whose innermost frame is in the program's own code (not
a helper), finds the line-info record each landed in (jit-lines.py), and
names its source line (bpftool's xlated dump). A sample lands on the
instruction after a stall, so a line that loads a map value often stands
for that load's cache miss.
"""
import bisect
import collections
import re
import sys

from phaselog import phases, samples


def main():
    out, want = sys.argv[1], sys.argv[2]
    bounds = phases(f"{out}/bench.log")
    symbol_at = {}
    for line in open(f"{out}/kallsyms.txt"):
        addr, _, name = line.split()[:3]
        symbol_at[name] = int(addr, 16)
    records = collections.defaultdict(list)
    for line in open(f"{out}/jit-lines.txt"):
        start, off, insn = line.split()
        records[int(start, 16)].append((int(off, 16), int(insn)))
    for r in records.values():
        r.sort()
    # Each instruction's source line; a line of a library (core, aya) also
    # names the last line of the balancer's own code above it.
    source, current, ours = {}, None, ""
    for line in open(f"{out}/xlated.txt"):
        if m := re.match(r"\s*;\s*(.*?)\s*\[file:(\S+) line_num:(\d+)", line):
            where = f"{m.group(2).rsplit('/', 1)[-1]}:{m.group(3)}"
            if "/balancer-" in m.group(2):
                current = ours = f"{m.group(1)}  ({where})"
            else:
                current = f"{m.group(1)}  ({where}) in: {ours}"
        elif (m := re.match(r"\s*(\d+):", line)) and current:
            source[int(m.group(1))] = current
    insns = sorted(source)
    hot, total = collections.Counter(), 0
    for t, frames in samples(f"{out}/perf.txt", keep_offsets=True):
        if [k for a, b, k in bounds if a <= t <= b] != [want] or not frames:
            continue
        m = re.match(r"(bpf_prog_\S+)\+0x([0-9a-f]+)$", frames[0])
        if not m or m.group(1) not in symbol_at:
            continue
        r = records.get(symbol_at[m.group(1)])
        if not r:
            continue
        k = bisect.bisect_right(r, (int(m.group(2), 16), 1 << 62)) - 1
        if k < 0:
            continue
        j = bisect.bisect_right(insns, r[k][1]) - 1
        hot[source[insns[j]] if j >= 0 else "?"] += 1
        total += 1
    print(f"xdp {want}: {total} samples in the program's own code")
    for line, n in hot.most_common(25):
        print(f"{n:5d} {100 * n / total:5.1f}%  {line[:200]}")


main()
