#!/usr/bin/env bash
# Relays the same G.711 load (N calls, both directions, 20 ms packets, on 127.0.0.1) through
# Switchyard's media worker (one thread) and through rtpengine (Debian package, userspace
# forwarding: --table=-1, one worker thread), with the same load generator
# (media/examples/relay_bench.rs), and prints loss, added latency and relay CPU per call.
#
# The relay (Switchyard's worker thread, or the whole rtpengine process) is pinned to CPU 1 and
# the load generator and receiver to CPU 0, so they do not steal each other's core; on loopback
# the kernel's delivery work is charged to the sending side, so each side pays for half of it.
#
# Usage: bench/media-vs-rtpengine.sh [SECONDS] [CALLS...]   (default: 10 s, 250 500 1000 calls)
# Installs rtpengine-daemon with apt-get when it is missing (needs root).
set -euo pipefail

cd "$(dirname "$0")/.."
seconds="${1:-10}"
shift || true
calls=("$@")
[ ${#calls[@]} -gt 0 ] || calls=(250 500 1000)

if ! command -v rtpengine >/dev/null; then
    apt-get install -y rtpengine-daemon >/dev/null
fi
cargo build --release -q -p switchyard-media --example relay_bench
bench=target/release/examples/relay_bench

ng=127.0.0.1:22230
log=$(mktemp -t rtpengine-XXXX.log)
rtpe=
trap '[ -z "$rtpe" ] || kill "$rtpe" 2>/dev/null || true' EXIT

# A fresh rtpengine for each run, so no idle calls from the previous one linger.
start_rtpengine() {
    taskset -c 1 rtpengine --config-file=none --table=-1 --foreground --log-stderr -L 4 \
        --interface=127.0.0.1 --listen-ng="$ng" --port-min=40000 --port-max=49999 \
        --num-threads=1 --timeout=600 >"$log" 2>&1 &
    rtpe=$!
    sleep 1
    kill -0 "$rtpe" 2>/dev/null || { cat "$log"; exit 1; }
}

stop_rtpengine() {
    kill "$rtpe"
    wait "$rtpe" 2>/dev/null || true
    rtpe=
}

row() {
    # relay calls loss% p50 p99 cpu-us-per-call-second
    awk -v relay="$1" -v calls="$2" '
        /^sent=/ { for (i = 1; i <= NF; i++) if ($i ~ /^loss=/) { sub("loss=", "", $i); loss = $i } }
        /^latency_us/ { split($2, a, "="); p50 = a[2]; split($3, b, "="); p99 = b[2] }
        /^relay_cpu=/ { match($0, /[0-9.]+ us CPU per call-second/); cpu = substr($0, RSTART, RLENGTH); sub(" us.*", "", cpu) }
        END { printf "%-10s %6s %9s %8s %8s %12s\n", relay, calls, loss, p50, p99, cpu }'
}

printf "%-10s %6s %9s %8s %8s %12s\n" relay calls "loss" "p50(us)" "p99(us)" "cpu/call(us/s)"
for n in "${calls[@]}"; do
    # The full output goes to stderr, the summary row to stdout.
    out=$(taskset -c 0 "$bench" --calls "$n" --seconds "$seconds" --relay-cpu 1)
    echo "$out" >&2
    echo "$out" | row switchyard "$n"
    start_rtpengine
    out=$(taskset -c 0 "$bench" --calls "$n" --seconds "$seconds" --rtpengine "$ng" --rtpengine-pid "$rtpe")
    echo "$out" >&2
    echo "$out" | row rtpengine "$n"
    stop_rtpengine
done
