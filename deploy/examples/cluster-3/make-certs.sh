#!/usr/bin/env bash
# Creates a cluster CA and one certificate per node under deploy/examples/cluster-3/certs/.
# The keys are secrets: they are not committed (see .gitignore).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${SWITCHYARD_BIN:-$here/../../../target/release/switchyard}
[ -x "$bin" ] || { echo "build first: cargo build --release (or set SWITCHYARD_BIN)" >&2; exit 1; }
certs=$here/certs
if [ ! -f "$certs/ca/ca.pem" ]; then
    "$bin" ctl ca-create --dir "$certs/ca"
fi
for i in 1 2 3; do
    [ -f "$certs/node$i/node.pem" ] || "$bin" ctl cert-issue --ca "$certs/ca" --node-id "$i" --name "node$i" --out "$certs/node$i"
done
echo "certificates in $certs"
