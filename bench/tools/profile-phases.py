"""Split `perf script` call-graph samples by the bench's phases.

usage: profile-phases.py PERF_SCRIPT_TXT BENCH_LOG (see profile-phases.sh)
"""
import collections
import sys

from phaselog import phases, samples


def main():
    bounds = phases(sys.argv[2])
    by_phase = collections.defaultdict(lambda: [0, collections.Counter(), collections.Counter()])
    for t, syms in samples(sys.argv[1]):
        ours = [i for i, s in enumerate(syms) if s.startswith("bpf_prog_") and ("balancer" in s or "_path" in s)]
        kind = [k for a, b, k in bounds if a <= t <= b]
        if not ours or not kind:
            continue
        mode = "xdp" if any("balancer_xdp" in s or "XdpContext" in s for s in syms) else "tc"
        entry = by_phase[(mode, kind[0])]
        entry[0] += 1
        innermost = min(ours)
        entry[1]["<program code>" if innermost == 0 else syms[innermost - 1]] += 1
        entry[2]["<program code>" if innermost == 0 else syms[0]] += 1
    for (mode, kind), (n, helpers, leaves) in sorted(by_phase.items()):
        print(f"{mode} {kind}: {n} samples")
        print("  in:        " + ", ".join(f"{h} {100 * c / n:.0f}%" for h, c in helpers.most_common(8)))
        print("  innermost: " + ", ".join(f"{h} {100 * c / n:.0f}%" for h, c in leaves.most_common(8)))


main()
