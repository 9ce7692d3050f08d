#!/bin/sh
# The arm64 smoke test under qemu-aarch64-static: scripts/qemu-smoke.sh arm64 (see there).
# Usage: scripts/arm64-smoke.sh [PORT_BASE]   (default 23001; two ports + metrics at base+20)
exec "$(dirname "$0")/qemu-smoke.sh" arm64 "$@"
