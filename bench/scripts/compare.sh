#!/bin/bash
# Compare daemons on every workload: a fresh daemon per (daemon, depth) run, plus the floor.
#
#   bench/scripts/compare.sh SHARED_DIR [DEPTHS] [SECONDS]
#
# SHARED_DIR is prepared first (idempotent). Daemons: $VIRTIOFSD (default ~/.cargo/bin/virtiofsd)
# and $VUFSD (default target/release/vufsd) when present; DAEMONS="virtiofsd vufsd" picks which.
# CLIENT_CPUS / DAEMON_CPUS pin the two with taskset (e.g. 0 and 1: on this kind of VM a
# cross-CPU eventfd wakeup costs ~25 us, a same-CPU one ~2 us, which dominates depth-1
# latency). Output: one JSON line per run.
set -euo pipefail
shared=${1:?usage: compare.sh SHARED_DIR [DEPTHS] [SECONDS]}
depths=${2:-"1 16"}
secs=${3:-5}
root=$(cd "$(dirname "$0")/../.." && pwd)
bench="$root/target/release/vufsd-bench"
[ -x "$bench" ] || cargo build --release -p vufsd-bench --manifest-path "$root/Cargo.toml" >&2
"$bench" prepare "$shared" >&2

run_daemon() { # name binary depth
    local sock pid
    sock=$(mktemp -u /tmp/vufsd-bench-XXXXXX.sock)
    ${DAEMON_CPUS:+taskset -c "$DAEMON_CPUS"} "$2" --sandbox none --socket-path "$sock" --shared-dir "$shared" >"$sock.log" 2>&1 &
    pid=$!
    for _ in $(seq 200); do [ -S "$sock" ] && break; sleep 0.05; done
    ${CLIENT_CPUS:+taskset -c "$CLIENT_CPUS"} "$bench" --socket "$sock" --workload all --depth "$3" --duration "$secs" --json \
        | sed "s/^{/{\"daemon\":\"$1\",/" || echo "{\"daemon\":\"$1\",\"depth\":$3,\"error\":true}"
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -f "$sock" "$sock.log"
}

for depth in $depths; do
    "$bench" --floor --dir "$shared" --workload all --depth "$depth" --duration "$secs" --json \
        | sed 's/^{/{"daemon":"none",/'
    for d in ${DAEMONS:-virtiofsd vufsd}; do
        case $d in
            virtiofsd) bin=${VIRTIOFSD:-$HOME/.cargo/bin/virtiofsd} ;;
            vufsd) bin=${VUFSD:-$root/target/release/vufsd} ;;
            *) bin=$d ;;
        esac
        if [ -x "$bin" ]; then run_daemon "$(basename "$d")" "$bin" "$depth"; fi
    done
done
