"""The bench's phase bounds and perf's samples, for the profile scripts."""
import re


def phases(log):
    """(start s, end s, kind) of the balancer's phases, from BENCH_PHASE_LOG lines."""
    out = []
    for line in open(log):
        if line.startswith("phase "):
            _, start, end, who, kind = line.split()[:5]
            if who == "balancer":
                out.append((int(start) / 1e9, int(end) / 1e9, kind))
    return out


def samples(txt, keep_offsets=False):
    """(time s, [symbols, innermost first]) of every sample in `perf script`
    output; `keep_offsets` keeps each symbol's `+0x…` offset."""
    for block in open(txt).read().split("\n\n"):
        lines = block.strip().split("\n")
        head = re.search(r" (\d+\.\d+): ", lines[0]) if lines else None
        if not head:
            continue
        syms = [l.split()[1] for l in lines[1:] if len(l.split()) > 1]
        if not keep_offsets:
            syms = [re.sub(r"\+0x[0-9a-f]+$", "", s) for s in syms]
        yield float(head.group(1)), syms
