#!/usr/bin/env bash
# Builds a container image of the sample service from a local binary, without a
# registry or a Dockerfile: a tar of the binary, the shared libraries `ldd` lists
# and the dynamic loader, imported with `podman import` (or `docker import`).
#
# usage: scripts/sample-image.sh BINARY TAG [CHANGE...]
#   BINARY  the baton-sample executable (cargo build -p baton-sample)
#   TAG     the image reference to create, e.g. localhost/baton-sample:v1
#   CHANGE  extra Dockerfile instructions applied on import, e.g. 'ENV SAMPLE_VERSION=v2'
#
# The engine command is $PODMAN (default `podman`), split on spaces, so a test can
# point it at its own service: PODMAN="podman --url unix:///tmp/x/podman.sock".
# Prints the new image's id on stdout.
#
# The image runs `/baton-sample --host 0.0.0.0`: it listens on $PORT (8080 when unset)
# on every interface, so a published port reaches it.
set -euo pipefail

if [ $# -lt 2 ]; then
  sed -n '5,9p' "$0" >&2
  exit 2
fi
binary=$1
tag=$2
shift 2
read -r -a engine <<<"${PODMAN:-podman}"

[ -x "$binary" ] || { echo "sample-image: $binary is not an executable file" >&2; exit 1; }

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT

cp "$binary" "$root/baton-sample"
# Debug info makes a debug build ~4x larger; the image needs none of it.
if command -v strip >/dev/null; then strip --strip-debug "$root/baton-sample"; fi
# Every shared library with a path (`lib => /path (addr)` and the loader's
# `/lib64/ld-linux-x86-64.so.2 (addr)`), copied to the same path in the image.
# The vDSO has no file and is skipped.
ldd "$binary" | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }' | sort -u |
  while read -r lib; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
# Scratch directories some programs expect to exist.
mkdir -p "$root/tmp" "$root/etc"
chmod 1777 "$root/tmp"
echo 'nobody:x:65534:65534:nobody:/:/nonexistent' >"$root/etc/passwd"
echo 'nogroup:x:65534:' >"$root/etc/group"

changes=(
  --change 'ENTRYPOINT ["/baton-sample", "--host", "0.0.0.0"]'
  --change 'EXPOSE 8080/tcp'
  --change 'STOPSIGNAL SIGTERM'
)
for change in "$@"; do
  changes+=(--change "$change")
done

tar -C "$root" -cf "$root.tar" .
trap 'rm -rf "$root" "$root.tar"' EXIT
"${engine[@]}" import --quiet "${changes[@]}" "$root.tar" "$tag"
