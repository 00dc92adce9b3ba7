#!/bin/sh
# Put Debian's static busybox into the image's file tree, rootfs/bin (the Dockerfile copies it).
# The repository the pipeline builds from commits this copy, since a build
# from git sees only committed files.
set -e
here=$(cd "$(dirname "$0")" && pwd)
src=${BUSYBOX:-/bin/busybox}
if ! "$src" --help 2>&1 | head -1 | grep -q BusyBox; then
  echo "prepare: $src is not busybox; on Debian: apt-get install busybox-static" >&2
  exit 1
fi
if ldd "$src" >/dev/null 2>&1; then
  echo "prepare: $src is dynamically linked; a scratch image needs busybox-static" >&2
  exit 1
fi
mkdir -p "$here/rootfs/bin"
cp "$src" "$here/rootfs/bin/busybox"
chmod 755 "$here/rootfs/bin/busybox"
echo "prepare: copied $src into $here/rootfs/bin/busybox"
