#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for SECONDS each (default 30), seeded with its stored
# corpus under tests/corpus/. Needs a nightly toolchain and cargo-fuzz:
#   rustup toolchain install nightly --profile minimal && cargo install cargo-fuzz
# New inputs go to a temporary folder (removed at the end); a crash stops the run, and its
# input is saved under fuzz/artifacts/<target>/: add it to the stored corpus as a test.
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-30}
shift || true
case $seconds in '' | *[!0-9]*) echo "usage: scripts/fuzz.sh [SECONDS] [TARGET...]" >&2; exit 2 ;; esac
if [ $# -gt 0 ]; then targets=("$@"); else mapfile -t targets < <(cargo +nightly fuzz list); fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for target in "${targets[@]}"; do
  case $target in
    observe_*) seeds=../tests/corpus/observe ;;
    *) seeds=../tests/corpus/$target ;;
  esac
  [ -d "$seeds" ] || { echo "fuzz: no stored corpus $seeds for $target" >&2; exit 1; }
  mkdir -p "$work/$target"
  echo "fuzz: $target for ${seconds}s (seeds: ${seeds#../})"
  status=0
  cargo +nightly fuzz run "$target" "$work/$target" "$seeds" -- \
    -max_total_time="$seconds" -max_len=4096 -print_final_stats=1 >"$work/$target.log" 2>&1 || status=$?
  grep -E "^stat::(number_of_executed_units|peak_rss_mb)" "$work/$target.log" || true
  if [ "$status" -ne 0 ]; then
    tail -n 40 "$work/$target.log" >&2
    echo "fuzz: $target failed (exit $status; input under fuzz/artifacts/$target/)" >&2
    exit 1
  fi
done
