#!/bin/sh
# Alerts (a GitHub Actions ::error::, exit 1) when a regional plugin binary is above its size
# budget: each embeds its region's pricing data, and a jump usually means a bad release.
# Usage: check-plugin-sizes.sh DIR   (DIR holds finfocus-plugin-aws-public-<region> files)
# Environment: PLUGIN_SIZE_LIMIT (bytes, default 240000000 = 240 MB)
set -eu
limit=${PLUGIN_SIZE_LIMIT:-240000000}
dir=${1-}
if [ -z "$dir" ] || [ ! -d "$dir" ]; then
  echo "usage: check-plugin-sizes.sh DIR (a directory of finfocus-plugin-aws-public-<region> binaries)" >&2
  exit 2
fi
count=0
over=0
for file in "$dir"/finfocus-plugin-aws-public-*; do
  [ -f "$file" ] || continue
  count=$((count + 1))
  size=$(wc -c <"$file" | tr -d ' ')
  mb=$(awk -v s="$size" 'BEGIN { printf "%.1f", s / 1e6 }')
  if [ "$size" -gt "$limit" ]; then
    over=$((over + 1))
    echo "::error title=Plugin size::$(basename "$file") is $mb MB, above the $((limit / 1000000)) MB budget"
  else
    echo "ok: $(basename "$file") $mb MB"
  fi
done
if [ "$count" -eq 0 ]; then
  echo "check-plugin-sizes.sh: no finfocus-plugin-aws-public-* files in $dir" >&2
  exit 2
fi
if [ "$over" -gt 0 ]; then
  echo "check-plugin-sizes.sh: $over of $count plugins above the budget" >&2
  exit 1
fi
echo "check-plugin-sizes.sh: all $count plugins within the budget"
