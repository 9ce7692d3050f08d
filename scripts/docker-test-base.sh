#!/bin/sh
# Makes a local base image from Debian's busybox-static (no registry needed), for building and
# testing the Dockerfile offline: BASE_IMAGE=region-supervisor-test/busybox.
# Usage: scripts/docker-test-base.sh [TAG]   (DOCKER selects the client, default /usr/bin/docker)
set -eu
tag=${1:-region-supervisor-test/busybox:latest}
docker=${DOCKER:-/usr/bin/docker}
busybox=/bin/busybox # Debian's busybox-static: one static binary, all applets
if [ ! -x "$busybox" ]; then
  echo "docker-test-base: $busybox is missing (apt-get install busybox-static)" >&2
  exit 1
fi
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/bin" "$root/sbin" "$root/etc" "$root/tmp" "$root/usr/local/bin"
chmod 1777 "$root/tmp"
cp "$busybox" "$root/bin/busybox"
for app in $("$root/bin/busybox" --list); do
  [ "$app" = busybox ] || ln -s busybox "$root/bin/$app"
done
ln -s /bin/busybox "$root/sbin/nologin"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n' >"$root/etc/passwd"
printf 'root:x:0:\nnobody:x:65534:\n' >"$root/etc/group"
tar -C "$root" -c . | "$docker" import - "$tag" >/dev/null
echo "docker-test-base: $tag"
