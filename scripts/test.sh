#!/usr/bin/env bash
# The test command (README, Contributing; .ci/run calls it). Installs what the tests need
# where it can: Debian packages when run as root, the Go modules of the SDK test plugin
# through the Go module proxy. Where it cannot, it stops at once and names what
# is missing: no test is skipped for a missing tool. Then it runs every test: the SDK test
# plugin's own Go tests, and `cargo test` (arguments are passed on to it).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'test.sh: %s\n' "$*" >&2; }

# Commands the tests run, and the Debian package of each.
tools=(
  curl:curl wrk:wrk h2load:nghttp2-client promtool:prometheus prometheus:prometheus
  ss:iproute2 unshare:util-linux setpriv:util-linux python3:python3
)
packages=()
for entry in "${tools[@]}"; do
  command -v "${entry%%:*}" >/dev/null || packages+=("${entry#*:}")
done
if ((${#packages[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing ${packages[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
  else
    say "missing: Debian packages ${packages[*]} (run this as root to install them, or install them)"
    exit 1
  fi
fi

# The SDK test plugin needs Go 1.26 or later (its modules require it); Debian's is older.
go_minor=$(go env GOVERSION 2>/dev/null | sed -n 's/^go1\.\([0-9]*\).*/\1/p')
if [ -z "$go_minor" ] || [ "$go_minor" -lt 26 ]; then
  say "missing: Go 1.26 or later (found: $(go env GOVERSION 2>/dev/null || echo none)); the SDK test plugin is built with it"
  exit 1
fi

command -v cargo >/dev/null || {
  say "missing: a Rust toolchain (cargo)"
  exit 1
}

say "the SDK test plugin's own tests (tests/fixtures/sdk-plugin)"
(
  cd tests/fixtures/sdk-plugin
  go mod download
  go vet ./...
  go test -count=1 ./...
)

say "cargo test $*"
cargo test "$@"
