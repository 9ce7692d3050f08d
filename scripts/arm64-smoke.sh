#!/bin/sh
# Builds the supervisor and the stand-in for aarch64-unknown-linux-musl (linked with rust-lld,
# see .cargo/config.toml) and smoke-tests them under qemu-aarch64-static: --version, regions,
# and a short supervision of 2 regions that becomes ready and stops with exit 0 on SIGTERM.
# Usage: scripts/arm64-smoke.sh [PORT_BASE]   (default 23001; two ports + metrics at base+20)
set -eu
cd "$(dirname "$0")/.."
base=${1:-23001}
target=aarch64-unknown-linux-musl
qemu=$(command -v qemu-aarch64-static || true)
if [ -z "$qemu" ]; then
  echo "arm64-smoke: qemu-aarch64-static is missing (apt-get install qemu-user-static)" >&2
  exit 1
fi
cargo build --release --locked --bins --target "$target"
bin=target/$target/release
file_type=$(od -An -tx1 -j18 -N2 "$bin/region-supervisor" | tr -d ' ')
if [ "$file_type" != "b700" ]; then # e_machine 0xB7 = EM_AARCH64
  echo "arm64-smoke: $bin/region-supervisor is not an aarch64 binary" >&2
  exit 1
fi

"$qemu" "$bin/region-supervisor" --version
"$qemu" "$bin/region-supervisor" regions --regions us-east-1,eu-west-1 >/dev/null

log=$(mktemp)
trap 'rm -f "$log"' EXIT
# The children are aarch64 too; the command template runs them through qemu as well.
SUPERVISOR_COMMAND="$qemu $PWD/$bin/finfocus-standin" \
  SUPERVISOR_REGIONS=us-east-1,eu-west-1 \
  SUPERVISOR_PORT_BASE=$base \
  SUPERVISOR_METRICS_ADDR=127.0.0.1:$((base + 20)) \
  SUPERVISOR_STARTUP_TIMEOUT=60s \
  "$qemu" "$bin/region-supervisor" >"$log" 2>&1 &
pid=$!
ready=0
i=0
while [ $i -lt 600 ]; do
  if [ "$(grep -c '"message":"ready"' "$log")" -ge 2 ]; then
    ready=1
    break
  fi
  if ! kill -0 "$pid" 2>/dev/null; then
    break
  fi
  sleep 0.1
  i=$((i + 1))
done
if [ "$ready" -ne 1 ]; then
  echo "arm64-smoke: the 2 regions did not become ready" >&2
  cat "$log" >&2
  kill -KILL "$pid" 2>/dev/null || true
  exit 1
fi
kill -TERM "$pid"
code=0
wait "$pid" || code=$?
if [ "$code" -ne 0 ]; then
  echo "arm64-smoke: supervisor exited $code after SIGTERM" >&2
  cat "$log" >&2
  exit 1
fi
grep -q '"message":"stopped","exit_code":0' "$log"
echo "arm64-smoke: ok (aarch64 supervisor ran 2 regions under qemu and stopped with 0)"
