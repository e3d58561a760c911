#!/usr/bin/env bash
# Where a daemon's CPU goes under one workload: perf record (cpu-clock, call graphs) of the
# daemon while vufsd-bench drives it, then a breakdown into context switches, each syscall and
# each user-space crate, in µs per op. Also counts syscalls and context switches per op.
#
#   bench/scripts/profile.sh vufsd|virtiofsd WORKLOAD DEPTH [SECONDS] [TREE]
#
# vufsd is built with debug info and frame pointers into target/profiling (the release binary
# is left alone). Client and daemon share CPU 0, as in scripts/bench. Needs `perf` (Debian
# linux-perf); this kind of VM has no hardware counters, hence the cpu-clock software event.
set -euo pipefail
cd "$(dirname "$0")/../.."
daemon=${1:?usage: profile.sh vufsd|virtiofsd WORKLOAD DEPTH [SECONDS] [TREE]}
workload=${2:?workload}
depth=${3:?depth}
secs=${4:-5}
tree=${5:-/var/tmp/vufsd-bench-tree}
command -v perf >/dev/null || { echo "profile: needs perf (apt-get install linux-perf)" >&2; exit 1; }

cargo build --release --locked -p vufsd-bench
bench=target/release/vufsd-bench
case $daemon in
    vufsd)
        CARGO_PROFILE_RELEASE_DEBUG=2 CARGO_PROFILE_RELEASE_STRIP=false RUSTFLAGS="-C force-frame-pointers=yes" \
            cargo build --release --locked -p vufsd --target-dir target/profiling
        bin=target/profiling/release/vufsd; args=(--sandbox none) ;;
    virtiofsd) bin=${VIRTIOFSD:-${CARGO_HOME:-$HOME/.cargo}/bin/virtiofsd}; args=(--sandbox none) ;;
    *) echo "profile: daemon must be vufsd or virtiofsd" >&2; exit 2 ;;
esac
"$bench" prepare "$tree" >&2

work=$(mktemp -d /tmp/vufsd-profile-XXXXXX)
out=${PROFILE_OUT:-$work}
mkdir -p "$out"
sock=$work/d.sock
nofile=$(ulimit -Hn)
taskset -c 0 prlimit --nofile="$nofile:$nofile" "$bin" "${args[@]}" --socket-path "$sock" \
    --shared-dir "$tree" >"$work/daemon.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; [ -n "${PROFILE_OUT:-}" ] || rm -rf "$work"' EXIT
for _ in $(seq 200); do [ -S "$sock" ] && break; sleep 0.05; done
# The client runs longer than the recording and the counting, which start once its setup
# (lookups) is over.
taskset -c 0 "$bench" --socket "$sock" --workload "$workload" --depth "$depth" \
    --duration "$((2 * secs + 3))" --json --watch-pid "$pid" >"$out/run.json" &
sleep 1.5
perf record -q -F 1999 -e cpu-clock --call-graph fp -p "$pid" -o "$out/perf.data" -- sleep "$secs" 2>/dev/null
# Counted after the recording, not during it: the syscall tracepoint costs time of its own.
perf stat -e context-switches,raw_syscalls:sys_enter -p "$pid" -o "$out/stat.txt" -- sleep "$secs"
wait
python3 bench/scripts/perf_classify.py "$out/perf.data" "$out/run.json" "$out/stat.txt" "$secs"
[ -z "${PROFILE_OUT:-}" ] || echo "profile: perf data in $out (perf report -i $out/perf.data)"
