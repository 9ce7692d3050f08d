#!/bin/sh
# A stand-in for an upstream finfocus-plugin-aws-public release, laid out and served the way
# GitHub serves one, so the image's download path (docker/fetch-plugins, PLUGINS_SOURCE=download)
# can be built and tested without network:
#
#   DIR/VERSION/finfocus-plugin-aws-public_<version without v>_Linux_<x86_64|arm64>_<region>.tar.gz
#   DIR/VERSION/checksums.txt        "<sha256>  <asset>" per line, as `sha256sum *.tar.gz` writes
#
# Each tarball holds, as goreleaser packs them, the binary finfocus-plugin-aws-public-<region>
# plus README.md and LICENSE. Several versions can share DIR (one `make` each), so one server
# serves a good release and a broken one side by side.
#
# Usage:
#   scripts/fake-release.sh make [options] DIR
#     --version V       release tag (default v0.0.0-test)
#     --arch LIST       amd64,arm64 or one of them (default amd64,arm64, as upstream publishes)
#     --regions LIST    regions released (default the 10 upstream publishes: the table less
#                       us-gov-west-1 and us-gov-east-1)
#     --omit LIST       regions left out: neither tarball nor checksum line
#     --corrupt REGION  that region's checksum line is wrong (its tarball is intact)
#     --binary PATH     the program every tarball holds (the same file for every region and
#                       architecture); --binary ARCH=PATH: that architecture's only (give one
#                       per architecture, the tarballs of each hold its own). Default: the
#                       SDK test plugin, built from
#                       tests/fixtures/sdk-plugin for each architecture (needs Go), when that
#                       module exists; else the finfocus-standin of scripts/stage-dist.sh
#                       (dist/amd64/plugins), with a note on stderr.
#   scripts/fake-release.sh serve DIR PORT
#     serves DIR on 127.0.0.1:PORT (python3 -m http.server; exec, so its pid is this one's)
#     until it is signalled. RELEASE_URL is then http://127.0.0.1:PORT.
set -eu
caller=$(pwd)
cd "$(dirname "$0")/.."
root=$(pwd)
me=fake-release

TABLE="us-east-1 us-west-2 eu-west-1 ap-southeast-1 ap-southeast-2 ap-northeast-1 ap-south-1 ca-central-1 sa-east-1 us-gov-west-1 us-gov-east-1 us-west-1"
PUBLISHED="us-east-1,us-west-2,eu-west-1,ap-southeast-1,ap-southeast-2,ap-northeast-1,ap-south-1,ca-central-1,sa-east-1,us-west-1"

usage() {
  sed -n 's/^# \{0,1\}//; /^Usage:/,/^set -eu/p' "$0" | sed '$d' >&2
  exit 2
}

absolute() { # PATH -> PATH made absolute against the directory the caller ran us from
  case "$1" in
    /*) echo "$1" ;;
    *) echo "$caller/$1" ;;
  esac
}

in_table() {
  case " $TABLE " in
    *" $1 "*) return 0 ;;
    *)
      echo "$me: unknown region '$1' (valid: $TABLE)" >&2
      exit 2
      ;;
  esac
}

# The SDK test plugin for ARCH, built once per architecture into target/fake-release/.
sdk_plugin() {
  out=$root/target/fake-release/sdk-plugin-$1
  mkdir -p "$root/target/fake-release"
  (cd "$root/tests/fixtures/sdk-plugin" && CGO_ENABLED=0 GOOS=linux GOARCH=$1 go build -o "$out" .) >&2
  echo "$out"
}

make_release() {
  version=v0.0.0-test
  arches=amd64,arm64
  regions=$PUBLISHED
  omit=""
  corrupt=""
  binary=""
  binary_amd64=""
  binary_arm64=""
  while [ "$#" -gt 1 ]; do
    case "$1" in
      --version) version=$2 ;;
      --arch) arches=$2 ;;
      --regions) regions=$2 ;;
      --omit) omit=$2 ;;
      --corrupt) corrupt=$2 ;;
      --binary)
        case "$2" in
          amd64=*) binary_amd64=$(absolute "${2#*=}") ;;
          arm64=*) binary_arm64=$(absolute "${2#*=}") ;;
          *) binary=$(absolute "$2") ;;
        esac
        ;;
      *) usage ;;
    esac
    shift 2
  done
  [ "$#" -eq 1 ] || usage
  dir=$(absolute "$1")
  for region in $(echo "$regions $omit $corrupt" | tr ',' ' '); do in_table "$region"; done

  source="the program $binary"
  if [ -n "$binary_amd64$binary_arm64" ]; then
    source="the programs ${binary_amd64:+$binary_amd64 (amd64)} ${binary_arm64:+$binary_arm64 (arm64)}"
  elif [ -z "$binary" ]; then
    if [ -f "$root/tests/fixtures/sdk-plugin/go.mod" ]; then
      source="the SDK test plugin (tests/fixtures/sdk-plugin)"
    else
      binary=$root/dist/amd64/plugins/finfocus-plugin-aws-public-us-east-1
      source="the stand-in $binary (no tests/fixtures/sdk-plugin module)"
      echo "$me: note: no SDK test plugin module, the tarballs hold $binary" >&2
      [ -x "$binary" ] || {
        echo "$me: $binary is missing: run scripts/stage-dist.sh amd64 first" >&2
        exit 1
      }
    fi
  fi

  rel=$dir/$version
  rm -rf "$rel"
  mkdir -p "$rel"
  stage=$(mktemp -d)
  trap 'rm -rf "$stage"' EXIT
  printf '# finfocus-plugin-aws-public %s (test release)\n' "$version" >"$stage/README.md"
  printf 'Apache License, Version 2.0 (test release)\n' >"$stage/LICENSE"
  for arch in $(echo "$arches" | tr ',' ' '); do
    case "$arch" in
      amd64) release_arch=x86_64 program=${binary_amd64:-$binary} ;;
      arm64) release_arch=arm64 program=${binary_arm64:-$binary} ;;
      *)
        echo "$me: unknown architecture '$arch' (amd64, arm64)" >&2
        exit 2
        ;;
    esac
    [ -n "$program" ] || program=$(sdk_plugin "$arch")
    [ -x "$program" ] || {
      echo "$me: $program ($arch) is not an executable file" >&2
      exit 1
    }
    for region in $(echo "$regions" | tr ',' ' '); do
      case ",$omit," in *",$region,"*) continue ;; esac
      asset="finfocus-plugin-aws-public_${version#v}_Linux_${release_arch}_${region}.tar.gz"
      cp "$program" "$stage/finfocus-plugin-aws-public-$region"
      chmod 0755 "$stage/finfocus-plugin-aws-public-$region"
      tar -czf "$rel/$asset" -C "$stage" "finfocus-plugin-aws-public-$region" README.md LICENSE
      rm -f "$stage/finfocus-plugin-aws-public-$region"
    done
  done
  # goreleaser's checksums.txt, then one line made wrong: the tarball stays intact, so only the
  # comparison can catch it.
  (cd "$rel" && sha256sum -- *.tar.gz >checksums.txt)
  if [ -n "$corrupt" ]; then
    awk -v r="_${corrupt}.tar.gz" 'index($2, r) == length($2) - length(r) + 1 { $1 = "0000000000000000000000000000000000000000000000000000000000000000" } { print $1 "  " $2 }' \
      "$rel/checksums.txt" >"$stage/checksums.txt"
    cp "$stage/checksums.txt" "$rel/checksums.txt"
  fi
  echo "$me: $rel: $(($(wc -l <"$rel/checksums.txt"))) tarballs ($arches) of $source$([ -z "$omit" ] || echo ", without $omit")$([ -z "$corrupt" ] || echo ", $corrupt's checksum wrong")"
}

case "${1-}" in
  make)
    shift
    make_release "$@"
    ;;
  serve)
    [ "$#" -eq 3 ] || usage
    dir=$(absolute "$2")
    case "$3" in
      "" | *[!0-9]*) usage ;;
    esac
    [ "$3" -lt 31000 ] || {
      echo "$me: port $3: use one below 31000 (the kernel's ephemeral ports start above)" >&2
      exit 2
    }
    exec python3 -m http.server "$3" --bind 127.0.0.1 --directory "$dir"
    ;;
  *) usage ;;
esac
