#!/bin/sh
# Fills dist/<arch>/ for an offline image build (SUPERVISOR_SOURCE=context,
# PLUGINS_SOURCE=context): the static supervisor, and the stand-in plugin installed under all 12
# regional names of the table, so a build with any REGIONS (the default 10, or with the GovCloud
# regions) finds its binaries; the image takes only those of REGIONS.
# Usage: scripts/stage-dist.sh [amd64|arm64]   (default: amd64)
set -eu
cd "$(dirname "$0")/.."
arch=${1:-amd64}
case "$arch" in
  amd64) target=x86_64-unknown-linux-musl ;;
  arm64) target=aarch64-unknown-linux-musl ;;
  *)
    echo "stage-dist: unknown architecture '$arch' (use amd64 or arm64)" >&2
    exit 2
    ;;
esac
cargo build --release --locked --bins --target "$target"
out=dist/$arch
rm -rf "$out"
mkdir -p "$out/plugins"
install -m 0755 "target/$target/release/region-supervisor" "$out/region-supervisor"
for region in us-east-1 us-west-2 eu-west-1 ap-southeast-1 ap-southeast-2 ap-northeast-1 \
  ap-south-1 ca-central-1 sa-east-1 us-gov-west-1 us-gov-east-1 us-west-1; do
  install -m 0755 "target/$target/release/finfocus-standin" "$out/plugins/finfocus-plugin-aws-public-$region"
done
echo "stage-dist: $out ready ($(du -sh "$out" | cut -f1))"
