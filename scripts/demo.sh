#!/usr/bin/env bash
# Demo: release builds of the node and the load harness, then `switchyard-bench demo`, which
# starts a local three-node cluster with its embedded stores (free ports, data under data/demo), registers
# 50 simulated agent phones and drives a busy hour of callers (Poisson arrivals at 80% of the
# agents' capacity, 20 times faster than real time), with RTP both ways, printing live figures
# every second and a summary, checked against the node's own figures, at the end. Four calls
# in ten go through the 10086 hotline: the IVR menu (RFC 4733 keys 1/2/0 or none, prompts from
# deploy/prompts), VIP callers with priority 10, and surveys after the agent hangs up; each is
# checked against its call record.
#
#   bash scripts/demo.sh                      # until Ctrl-C
#   bash scripts/demo.sh --duration 120       # 120 s of arrivals, then drain and stop
#   bash scripts/demo.sh --rate 50            # 50 calls/s instead of the busy-hour load
#   bash scripts/demo.sh --agents 200 --nodes 1 --scenario bench/scenarios/steady.toml
#
# Every option is passed to `switchyard-bench demo` (see its --help). Ctrl-C stops cleanly:
# calls are hung up, agents un-register, the node is stopped. The HTML report is written to
# data/demo/bench/report.html; node logs are in data/demo/node1/. Needs only Rust: the
# simulated callers and agents are the harness's own (no SIPp).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

for arg in "$@"; do
    case "$arg" in
        -h|--help)
            sed -n '2,/^set -euo/p' "$0" | grep '^#'
            if [ -x target/release/switchyard-bench ]; then
                echo
                target/release/switchyard-bench demo --help
            fi
            exit 0
            ;;
    esac
done

echo "==== Build (release) ===="
cargo build --release -p switchyard -p switchyard-bench

echo "==== Demo ===="
# The harness finds the node binary next to itself (target/release/switchyard).
# `switchyard demo` runs the harness's demo on a local three-node cluster (Raft, QUIC mesh,
# placement) unless --nodes says otherwise.
exec target/release/switchyard demo "$@"
