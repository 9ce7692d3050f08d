#!/usr/bin/env bash
# The long chaos run: the tests of tests/chaos.rs on a release build (the binary as shipped,
# panic = "abort"), with 600 s of random kills, stops and signal bursts instead of the 60 s
# of `cargo test`, and proportionally more SIGTERM rounds.
#
#   scripts/chaos.sh [SECONDS]          # default 600, or $CHAOS_SECS
#   CHAOS_SEED=<n> scripts/chaos.sh     # replay the random choices of a run (its seed is printed)
set -euo pipefail
cd "$(dirname "$0")/.."
CHAOS_SECS="${1:-${CHAOS_SECS:-600}}"
export CHAOS_SECS
exec cargo test --release --test chaos -- --nocapture
