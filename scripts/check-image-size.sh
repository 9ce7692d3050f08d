#!/bin/sh
# Warns (a GitHub Actions ::warning::, exit 0) when an image is above its size budget.
# Usage: check-image-size.sh IMAGE        size from `docker image inspect`
#        check-image-size.sh --bytes N    check a size given in bytes (tests, other tools)
# Environment: IMAGE_SIZE_LIMIT (bytes, default 2200000000 = 2.2 GB); DOCKER (default docker)
set -eu
limit=${IMAGE_SIZE_LIMIT:-2200000000}
case "${1-}" in
  --bytes)
    size=${2-}
    name="the image"
    ;;
  "")
    echo "usage: check-image-size.sh IMAGE | --bytes N" >&2
    exit 2
    ;;
  *)
    name=$1
    size=$("${DOCKER:-docker}" image inspect --format '{{.Size}}' "$1")
    ;;
esac
case "$size" in
  "" | *[!0-9]*)
    echo "check-image-size.sh: size '$size' is not a number of bytes" >&2
    exit 2
    ;;
esac
gb=$(awk -v s="$size" 'BEGIN { printf "%.2f", s / 1e9 }')
budget=$(awk -v s="$limit" 'BEGIN { printf "%.2f", s / 1e9 }')
if [ "$size" -gt "$limit" ]; then
  echo "::warning title=Image size::$name is $gb GB, above the $budget GB budget"
else
  echo "image size ok: $name is $gb GB (budget $budget GB)"
fi
