#!/bin/sh
# Builds the supervisor and the stand-in for an ARM musl target and smoke-tests them under QEMU
# user mode: --version, regions, and a short supervision of 2 regions that becomes ready and
# stops with exit 0 on SIGTERM.
#   arm64: aarch64-unknown-linux-musl, linked with rust-lld (.cargo/config.toml), qemu-aarch64-static
#   armv7: armv7-unknown-linux-musleabihf, qemu-arm-static; with rustup's std for the target
#          (rustup target add) it links with rust-lld, and where rustup has no std for it, std
#          is built from source (-Zbuild-std, needs rust-src) and linked with zig through
#          cargo-zigbuild (PyPI: ziglang, cargo-zigbuild)
# Usage: scripts/qemu-smoke.sh arm64|armv7 [PORT_BASE]
#        (default 23001 for arm64, 23101 for armv7; two ports, metrics at base+20)
set -eu
cd "$(dirname "$0")/.."
arch=${1-}
case "$arch" in
  arm64)
    target=aarch64-unknown-linux-musl qemu=qemu-aarch64-static machine=b700 # EM_AARCH64 0xB7
    base=${2:-23001}
    ;;
  armv7)
    target=armv7-unknown-linux-musleabihf qemu=qemu-arm-static machine=2800 # EM_ARM 0x28
    base=${2:-23101}
    ;;
  *)
    echo "usage: scripts/qemu-smoke.sh arm64|armv7 [PORT_BASE]" >&2
    exit 2
    ;;
esac
say() { echo "qemu-smoke ($arch): $*" >&2; }
qemu_path=$(command -v "$qemu" || true)
if [ -z "$qemu_path" ]; then
  say "$qemu is missing (apt-get install qemu-user-static)"
  exit 1
fi

if [ "$arch" = arm64 ]; then
  cargo build --release --locked --bins --target "$target"
elif rustup target add "$target" >/dev/null 2>&1; then
  CARGO_TARGET_ARMV7_UNKNOWN_LINUX_MUSLEABIHF_LINKER=rust-lld \
    cargo build --release --locked --bins --target "$target"
else
  say "rustup has no std for $target here: building std from source, linked with zig"
  if ! command -v cargo-zigbuild >/dev/null || ! { command -v zig >/dev/null || python3 -m ziglang version >/dev/null 2>&1; }; then
    say "needs cargo-zigbuild and zig (python3 -m pip install ziglang cargo-zigbuild)"
    exit 1
  fi
  if [ ! -d "$(rustc --print sysroot)/lib/rustlib/src/rust/library" ]; then
    rustup component add rust-src
  fi
  # zig provides musl's C library and start files, so not rustc's self-contained ones (which
  # come with rustup's std only); RUSTC_BOOTSTRAP for -Zbuild-std on a stable toolchain.
  env -u CARGO_TARGET_ARMV7_UNKNOWN_LINUX_MUSLEABIHF_LINKER RUSTC_BOOTSTRAP=1 \
    RUSTFLAGS="-C link-self-contained=no" \
    cargo zigbuild --release --locked --bins --target "$target" -Zbuild-std=std,panic_abort
fi
bin=target/$target/release
for program in region-supervisor finfocus-standin; do
  if [ "$(od -An -tx1 -j18 -N2 "$bin/$program" | tr -d ' ')" != "$machine" ]; then
    say "$bin/$program is not a $arch binary"
    exit 1
  fi
  if grep -q "ld-linux\|ld-musl" "$bin/$program"; then
    say "$bin/$program is not static"
    exit 1
  fi
done

"$qemu_path" "$bin/region-supervisor" --version
"$qemu_path" "$bin/region-supervisor" regions --regions us-east-1,eu-west-1 >/dev/null

log=$(mktemp)
trap 'rm -f "$log"' EXIT
# The children are ARM binaries too; the command template runs them through qemu as well.
SUPERVISOR_COMMAND="$qemu_path $PWD/$bin/finfocus-standin" \
  SUPERVISOR_REGIONS=us-east-1,eu-west-1 \
  SUPERVISOR_PORT_BASE=$base \
  SUPERVISOR_METRICS_ADDR=127.0.0.1:$((base + 20)) \
  SUPERVISOR_STARTUP_TIMEOUT=60s \
  "$qemu_path" "$bin/region-supervisor" >"$log" 2>&1 &
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
  say "the 2 regions did not become ready"
  cat "$log" >&2
  kill -KILL "$pid" 2>/dev/null || true
  exit 1
fi
kill -TERM "$pid"
code=0
wait "$pid" || code=$?
if [ "$code" -ne 0 ]; then
  say "supervisor exited $code after SIGTERM"
  cat "$log" >&2
  exit 1
fi
grep -q '"message":"stopped","exit_code":0' "$log"
echo "qemu-smoke ($arch): ok ($target supervisor ran 2 regions under $qemu and stopped with 0; $(wc -c <"$bin/region-supervisor") bytes)"
