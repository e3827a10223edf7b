#!/usr/bin/env bash
# The project's test command: formatting, lints, the node build, then every test in the
# workspace, including the end-to-end tests in tests/ that run real `switchyard node`
# processes against SIPp (Debian's sip-tester), installed here when missing.
#
#   bash scripts/test.sh
#
# Useful while iterating:
#   cargo build -p switchyard && cargo test -p switchyard-tests            # end-to-end only
#   cargo test -p switchyard-tests --test calls -- --nocapture              # one file, with logs
#   SWITCHYARD_TEST_LOG=debug SWITCHYARD_KEEP_TEST_DIRS=1 cargo test -p switchyard-tests ...
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

section() {
    printf '\n==== %s ====\n' "$*"
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "need root to run: $*" >&2
        return 1
    fi
}

section "Tools"
if ! command -v sipp >/dev/null 2>&1; then
    echo "sipp not found: installing Debian's sip-tester"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq sip-tester
fi
# baresip (Debian's baresip-core) is the real phone the registrar tests register.
if ! command -v baresip >/dev/null 2>&1; then
    echo "baresip not found: installing Debian's baresip-core"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq baresip-core
fi
# The cluster tests cut links with iptables (real partitions on loopback).
if ! command -v iptables >/dev/null 2>&1; then
    echo "iptables not found: installing it"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iptables
fi
# `sipp -v` exits 99 by design.
sipp -v 2>&1 | grep -m1 -i 'sipp' || true
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    if command -v rustup >/dev/null 2>&1; then
        rustup component add rustfmt clippy
    fi
fi
cargo --version
cargo fmt --version
cargo clippy --version

section "cargo fmt --all -- --check"
cargo fmt --all -- --check

section "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

section "cargo build -p switchyard"
cargo build -p switchyard

section "cargo test --workspace"
# --workspace: the tests crate is not a default member. The end-to-end tests find the node
# binary built above in target/debug (or $SWITCHYARD_BIN).
cargo test --workspace --no-fail-fast

section "All tests passed"
