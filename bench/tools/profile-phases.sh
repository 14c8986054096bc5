#!/bin/sh
# Where the data plane's time goes, per kind of traffic: samples every CPU
# with perf (cpu-clock, call graphs) while the bench's quick per-packet
# part runs, then splits the samples by phase (BENCH_PHASE_LOG prints each
# phase's CLOCK_MONOTONIC bounds) and, for samples inside the
# balancer's programs, names the helper the program was in (or its own
# code) and the innermost function; then, for the XDP program's own code,
# the hot source lines of each phase (profile-lines.py). Sampling slows the
# programs down about 2x: read the shares, not the ns. Needs root, perf and
# bpftool.
#
#   sudo bench/tools/profile-phases.sh [OUT_DIR]
set -eu
out=${1:-/tmp/balancer-profile}
mkdir -p "$out"
cd "$(dirname "$0")/../.."
cargo build --release -p balancer-user >/dev/null 2>&1
sysctl -qw net.core.bpf_jit_kallsyms=1
perf record -a -g -k CLOCK_MONOTONIC -e cpu-clock -F 20000 -o "$out/perf.data" -- sleep 45 >"$out/perf.log" 2>&1 &
perf_pid=$!
# Once the bench loads the balancer's XDP program: where its source lines
# landed in the JIT code (the same object JITs alike on every load).
(
    for _ in $(seq 600); do
        id=$(bpftool prog show 2>/dev/null | awk -F'[: ]+' '/ name balancer_xdp /{print $1; exit}')
        if [ -n "$id" ]; then
            python3 bench/tools/jit-lines.py "$id" >"$out/jit-lines.txt"
            bpftool prog dump xlated id "$id" linum >"$out/xlated.txt"
            grep ' bpf_prog_' /proc/kallsyms >"$out/kallsyms.txt"
            exit 0
        fi
        sleep 0.2
    done
) &
sleep 1
BENCH_PHASE_LOG=1 BALANCER_BIN="$PWD/target/release/balancer" \
    cargo run --release -p balancer-bench -- --quick --only perpacket --out "$out" >"$out/bench.log" 2>&1
wait "$perf_pid"
perf script -i "$out/perf.data" 2>/dev/null >"$out/perf.txt"
python3 bench/tools/profile-phases.py "$out/perf.txt" "$out/bench.log"
for phase in Established NewFlow Reply; do
    python3 bench/tools/profile-lines.py "$out" "$phase"
done
