#!/usr/bin/env bash
# Builds the switchyard container image FROM scratch: the release binary, the shared libraries
# it links (as ldd reports them), the example configs and prompts. Nothing is pulled.
# Usage: deploy/container/build.sh [IMAGE_TAG]   (default switchyard:latest)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
tag=${1:-switchyard:latest}
cd "$root"
echo "==> building release binary"
cargo build --release -p switchyard
bin=target/release/switchyard
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
echo "==> collecting the binary and its libraries into $ctx"
mkdir -p "$ctx/rootfs/usr/local/bin" "$ctx/rootfs/etc/switchyard" "$ctx/rootfs/var/lib/switchyard"
cp "$bin" "$ctx/rootfs/usr/local/bin/switchyard"
# Every absolute path ldd names (libc, libm, libgcc_s, the dynamic loader...).
ldd "$bin" | grep -o '/[^ ]*' | sort -u | while read -r lib; do
  mkdir -p "$ctx/rootfs$(dirname "$lib")"
  cp -L "$lib" "$ctx/rootfs$lib"
done
cp -r deploy/examples "$ctx/rootfs/etc/switchyard/examples"
cp -r deploy/media "$ctx/rootfs/etc/switchyard/media"
cp deploy/container/Dockerfile "$ctx/Dockerfile"
echo "==> docker build -t $tag"
docker build -t "$tag" "$ctx"
echo "built $tag"
