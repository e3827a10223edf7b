#!/usr/bin/env bash
# What copying calls to their standbys costs (ADR 0015): the same constant load on a local
# three-node cluster (two sites, so each call has two standbys) with `[cluster]
# replicate_calls` on and then off. Prints, per mode, calls answered and the three nodes' CPU
# per answered call (user + system, from /proc), and the mesh copies sent.
#
#   cargo build --release -p switchyard -p switchyard-bench
#   bash bench/cluster/replication_cost.sh [CALLS_PER_S] [SECONDS]      # default 300 30
#
# Runs on loopback with the harness on the same machine; the nodes are pinned to no CPU, so
# compare the two modes of one run rather than absolute figures across machines.
set -euo pipefail
rate=${1:-300}
secs=${2:-30}
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${SWITCHYARD_BIN:-$root/target/release/switchyard}
bench=${SWITCHYARD_BENCH_BIN:-$root/target/release/switchyard-bench}
for b in "$bin" "$bench"; do
    [ -x "$b" ] || { echo "build first: cargo build --release -p switchyard -p switchyard-bench" >&2; exit 1; }
done
work=$(mktemp -d /tmp/replication-cost.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

echo "work dir $work"
"$bin" ctl ca-create --dir "$work/certs/ca" >/dev/null
for i in 1 2 3; do
    "$bin" ctl cert-issue --ca "$work/certs/ca" --node-id "$i" --name "node$i" \
        --out "$work/certs/node$i" >/dev/null
done

cat >"$work/load.toml" <<EOF
name = "replication-cost"
description = "Constant arrivals of short calls with media over three nodes, no queueing."
duration = "${secs}s"
drain = "10s"

[arrivals]
process = "constant"
rate = $rate

[callers]
dids = [{ number = "1000", queue = "support" }]
talk_time = "500ms"

[[agents]]
count = 400
first_extension = 2001
skills = ["support"]
answer_delay = "0s"
EOF

# Node CPU in clock ticks (utime + stime).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

run_mode() {
    local mode=$1
    local dir=$work/$mode
    mkdir -p "$dir"
    pids=()
    for i in 1 2 3; do
        sed -e "s#certs = \"certs/node$i\"#certs = \"$work/certs/node$i\"#" \
            -e "s#\.\./\.\./media/#$root/deploy/media/#" \
            -e 's#extensions = "2001-2100"#extensions = "2001-2400"#' \
            -e "s#^failure_timeout_ms = .*#&\nreplicate_calls = $mode#" \
            "$root/deploy/examples/cluster-3/node$i.toml" >"$dir/node$i.toml"
        "$bin" node --config "$dir/node$i.toml" --data-dir "$dir/data$i" >"$dir/node$i.log" 2>&1 &
        pids+=($!)
    done
    for _ in $(seq 1 100); do
        if "$bin" ctl status --http 127.0.0.1:8081 2>/dev/null | grep -qi leader; then break; fi
        sleep 0.2
    done
    sleep 2
    local before=0 after=0
    for p in "${pids[@]}"; do before=$((before + $(cpu_ticks "$p"))); done
    "$bench" run "$work/load.toml" --quiet --out "$dir/bench" \
        --target 127.0.0.1:5061 --target 127.0.0.1:5062 --target 127.0.0.1:5063 \
        --http 127.0.0.1:8081 --http 127.0.0.1:8082 --http 127.0.0.1:8083 >"$dir/bench.log" 2>&1 || true
    for p in "${pids[@]}"; do after=$((after + $(cpu_ticks "$p"))); done
    local copies=0
    for port in 8081 8082 8083; do
        local n
        n=$(curl -s "http://127.0.0.1:$port/metrics" | awk '/^failover_replicas_sent_total/ {s += $2} END {print s + 0}')
        copies=$((copies + ${n%.*}))
    done
    cleanup
    pids=()
    local answered
    answered=$(python3 -c "import json;print(json.load(open('$dir/bench/summary.json'))['calls']['answered'])")
    local hz
    hz=$(getconf CLK_TCK)
    python3 - "$mode" "$answered" "$before" "$after" "$hz" "$copies" <<'PY'
import sys
mode, answered, before, after, hz, copies = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
cpu_s = (after - before) / hz
per_call = cpu_s * 1e6 / max(answered, 1)
print(f"replicate_calls={mode:5}  answered {answered:6}  node CPU {cpu_s:7.2f} s  "
      f"{per_call:7.0f} us/call  copies sent {copies} ({copies / max(answered, 1):.1f}/call)")
PY
}

run_mode true
run_mode false
echo "bench reports: $work/{true,false}/bench/report.html"
