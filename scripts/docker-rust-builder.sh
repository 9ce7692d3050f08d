#!/bin/sh
# Makes a local Rust builder image from this machine's own toolchain (no registry needed), for
# building the Dockerfile's SUPERVISOR_SOURCE=build path offline:
#   --build-arg RUST_IMAGE=region-supervisor-test/rust:latest
# It holds: rustup's default toolchain with its installed targets (without share/doc),
# rust-src when installed (for -Zbuild-std), the host C toolchain for build scripts (gcc,
# binutils, libc6-dev and what they depend on, taken from dpkg), busybox for the shell, CA
# certificates (cargo fetches from crates.io), and zig plus cargo-zigbuild when installed: the
# Dockerfile builds a target's std from source with them where rustup has no std for it.
# Usage: scripts/docker-rust-builder.sh [--force] [TAG]   (skips the work when TAG exists)
# Environment: DOCKER (default /usr/bin/docker)
set -eu
force=0
if [ "${1-}" = --force ]; then
  force=1
  shift
fi
tag=${1:-region-supervisor-test/rust:latest}
docker=${DOCKER:-/usr/bin/docker}
if [ "$force" -eq 0 ] && "$docker" image inspect "$tag" >/dev/null 2>&1; then
  echo "docker-rust-builder: $tag (exists; --force to make it again)"
  exit 0
fi
busybox=/bin/busybox # Debian's busybox-static
for need in "$busybox" "$(command -v rustup || true)" "$(command -v dpkg-query || true)"; do
  if [ ! -x "$need" ]; then
    echo "docker-rust-builder: needs rustup, dpkg and $busybox (apt-get install busybox-static)" >&2
    exit 1
  fi
done
rustup_home=${RUSTUP_HOME:-$HOME/.rustup}
sysroot=$(rustc --print sysroot)
toolchain=$(basename "$sysroot")
case "$sysroot" in
  "$rustup_home/toolchains/"*) ;;
  *)
    echo "docker-rust-builder: $sysroot is not a rustup toolchain under $rustup_home" >&2
    exit 1
    ;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
stage=$work/stage

# The C toolchain and every installed package it depends on; files and symlinks only (parent
# directories come with them), with the merged-/usr aliases (/lib, /bin, ...) resolved.
closure=""
todo="gcc gcc-12 binutils libc6-dev libgcc-12-dev"
while [ -n "$todo" ]; do
  # shellcheck disable=SC2086 # a list of package names
  set -- $todo
  pkg=$1
  shift
  todo="$*"
  case " $closure " in *" $pkg "*) continue ;; esac
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || continue
  closure="$closure $pkg"
  todo="$todo $(dpkg-query -W -f='${Depends},${Pre-Depends}' "$pkg" |
    tr ',' '\n' | sed 's/|.*//; s/(.*)//; s/:any//; s/ //g' | grep -v '^$' | tr '\n' ' ')"
done
# shellcheck disable=SC2086 # the package names, one word each
dpkg-query -L $closure | sed -e 's,^/lib/,/usr/lib/,' -e 's,^/lib64/,/usr/lib64/,' \
  -e 's,^/bin/,/usr/bin/,' -e 's,^/sbin/,/usr/sbin/,' | grep -v '^/usr/share/\(doc\|man\|info\|locale\)/' |
  grep -vx '/lib\|/lib64\|/bin\|/sbin' |
  sort -u | while IFS= read -r f; do
  if [ -L "$f" ] || [ -f "$f" ]; then printf '%s\n' "${f#/}"; fi
done >"$work/dpkg-files"

# Small files: users, certificates, the shell, the cc alias, rustup's settings and proxies.
mkdir -p "$stage/etc/ssl/certs" "$stage/tmp" "$stage/root" "$stage/usr/bin" \
  "$stage/usr/local/cargo/bin" "$stage/usr/local/bin" "$stage/usr/local/rustup/toolchains"
chmod 1777 "$stage/tmp"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$stage/etc/passwd"
printf 'root:x:0:\n' >"$stage/etc/group"
cp /etc/ssl/certs/ca-certificates.crt "$stage/etc/ssl/certs/"
for alias in bin lib lib64 sbin; do ln -s "usr/$alias" "$stage/$alias"; done
cp "$busybox" "$stage/usr/bin/busybox"
for app in $("$busybox" --list); do
  # the C toolchain's own programs (ar, strings, ...) win over busybox's applets
  if [ "$app" != busybox ] && ! grep -Fqx "usr/bin/$app" "$work/dpkg-files" && [ ! -e "$stage/usr/bin/$app" ]; then
    ln -s busybox "$stage/usr/bin/$app"
  fi
done
[ -e "$stage/usr/bin/cc" ] || ln -s gcc "$stage/usr/bin/cc"
printf 'version = "12"\ndefault_toolchain = "%s"\nprofile = "minimal"\nauto_self_update = "disable"\n' \
  "$toolchain" >"$stage/usr/local/rustup/settings.toml"
cp "$(command -v rustup)" "$stage/usr/local/cargo/bin/rustup"
for proxy in cargo rustc rustdoc cargo-clippy clippy-driver cargo-fmt rustfmt; do
  ln -s rustup "$stage/usr/local/cargo/bin/$proxy"
done

# zig and cargo-zigbuild, when installed (PyPI ziglang and cargo-zigbuild, or any other way).
zig_dir=""
if zig_py=$(python3 -c 'import os, ziglang; print(os.path.dirname(ziglang.__file__))' 2>/dev/null); then
  zig_dir=$zig_py
elif command -v zig >/dev/null; then
  zig_dir=$(dirname "$(readlink -f "$(command -v zig)")")
fi
zigbuild=$(command -v cargo-zigbuild || true)
if [ -n "$zigbuild" ] && [ -n "$zig_dir" ]; then
  # pyenv and friends put shims on PATH; copy the program itself
  case "$(head -c 2 "$zigbuild")" in "#!") zigbuild=$(pyenv which cargo-zigbuild 2>/dev/null || echo "$zigbuild") ;; esac
  cp "$zigbuild" "$stage/usr/local/cargo/bin/cargo-zigbuild"
  ln -s /opt/zig/zig "$stage/usr/local/bin/zig"
else
  zig_dir=""
  echo "docker-rust-builder: no zig or cargo-zigbuild here; targets without rustup std will not build" >&2
fi

# One tar stream (each -C applies to the names after it; the transforms only match their part).
set -- -C "$stage" . -C / -T "$work/dpkg-files" \
  -C "$rustup_home/toolchains" --exclude="$toolchain/share/doc" "$toolchain"
if [ -n "$zig_dir" ]; then
  # zig with its libc headers for Linux only (the other systems' are most of its size)
  set -- "$@" -C "$(dirname "$zig_dir")" --exclude=__pycache__ --exclude=lib/libc/mingw --exclude=lib/libc/wasi \
    --exclude=lib/libc/darwin --exclude=lib/libc/freebsd --exclude=lib/libc/netbsd \
    --exclude='lib/libc/include/*-windows-*' --exclude='lib/libc/include/*-macos-*' \
    --exclude='lib/libc/include/*-darwin-*' --exclude='lib/libc/include/*-freebsd-*' \
    --exclude='lib/libc/include/*-netbsd-*' --exclude='lib/libc/include/*-openbsd-*' \
    --exclude='lib/libc/include/wasm-*' "$(basename "$zig_dir")"
fi
tar -c -f - --transform="s,^$toolchain,usr/local/rustup/toolchains/$toolchain," \
  --transform="s,^$(basename "${zig_dir:-/-}")\\(/\\|\$\\),opt/zig\\1," "$@" |
  "$docker" import \
  --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo HOME=/root' \
  --change 'WORKDIR /root' \
  - "$tag" >/dev/null
size=$("$docker" image inspect --format '{{.Size}}' "$tag")
echo "docker-rust-builder: $tag ($toolchain$([ -z "$zig_dir" ] || echo ", zig"); $((size / 1000000)) MB)"
