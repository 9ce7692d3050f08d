#!/bin/sh
# Builds the supervisor image for linux/amd64 through the Dockerfile's SUPERVISOR_SOURCE=build
# path for real, from the local Rust builder image (scripts/docker-rust-builder.sh) and the local
# busybox base (scripts/docker-test-base.sh), and runs it: a broken Rust stage fails here.
# The engine's build cache keeps the dependency layer, so after the first run only the
# supervisor itself is compiled again (and nothing when the sources are unchanged).
# Usage: scripts/docker-build-check.sh [TAG]   (default region-supervisor-check:build)
# Environment: DOCKER (default /usr/bin/docker)
set -eu
cd "$(dirname "$0")/.."
tag=${1:-region-supervisor-check:build}
docker=${DOCKER:-/usr/bin/docker}
base=region-supervisor-test/busybox:latest
builder=region-supervisor-test/rust:latest
DOCKER=$docker scripts/docker-test-base.sh "$base" >/dev/null
DOCKER=$docker scripts/docker-rust-builder.sh "$builder"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
start=$(date +%s)
if ! DOCKER_BUILDKIT=1 "$docker" build --network host --progress plain --platform linux/amd64 \
  --target supervisor-image --build-arg SUPERVISOR_SOURCE=build \
  --build-arg RUST_IMAGE="$builder" --build-arg BASE_IMAGE="$base" -t "$tag" . >"$log" 2>&1; then
  tail -n 40 "$log" >&2
  echo "docker-build-check: the SUPERVISOR_SOURCE=build image did not build" >&2
  exit 1
fi
took=$(($(date +%s) - start))
want="region-supervisor $(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)"
got=$("$docker" run --rm --network host "$tag" --version)
if [ "$got" != "$want" ]; then
  echo "docker-build-check: $tag --version says '$got', expected '$want'" >&2
  exit 1
fi
"$docker" run --rm --network host "$tag" regions --regions us-east-1,eu-west-1 >/dev/null
size=$("$docker" image inspect --format '{{.Size}}' "$tag")
compiled=$(grep -c 'Compiling ' "$log" || true)
echo "docker-build-check: ok ($tag built in ${took}s, $compiled crates compiled; $got; $((size / 1000)) kB)"
