#!/bin/sh
# Builds the supervisor and the stand-in plugin, then supervises 12 stand-in regions on
# ports 8001-8012 with metrics and health on 127.0.0.1:9090, until Ctrl-C.
set -eu
cd "$(dirname "$0")/.."
cargo build --release --quiet --bins
export SUPERVISOR_COMMAND="${SUPERVISOR_COMMAND:-$PWD/target/release/finfocus-standin}"
export SUPERVISOR_METRICS_ADDR="${SUPERVISOR_METRICS_ADDR:-127.0.0.1:9090}"
echo "supervising 12 stand-in regions: try  curl -s 127.0.0.1:9090/healthz  (Ctrl-C stops)" >&2
exec ./target/release/region-supervisor "$@"
