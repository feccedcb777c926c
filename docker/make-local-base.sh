#!/usr/bin/env bash
# Build a minimal Debian bookworm base image with python3 + venv from a Debian mirror (no image
# registry needed) and load it into docker or podman as localhost/medcl-base:bookworm-python.
# Needs root and debootstrap (apt-get install debootstrap). Usage:
#   docker/make-local-base.sh [docker|podman] [TAG]
set -euo pipefail
ENGINE=${1:-podman}
TAG=${2:-localhost/medcl-base:bookworm-python}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
WORK=${MEDCL_BASE_WORKDIR:-/var/tmp/medcl-base}

if "$ENGINE" image exists "$TAG" 2>/dev/null || "$ENGINE" image inspect "$TAG" >/dev/null 2>&1; then
    echo "make-local-base: $TAG already present"
    exit 0
fi
command -v debootstrap >/dev/null || { echo "make-local-base: needs debootstrap (apt-get install debootstrap)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "make-local-base: debootstrap needs root" >&2; exit 2; }
rm -rf "$WORK/rootfs"
mkdir -p "$WORK"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$WORK/rootfs" "$MIRROR"
rm -rf "$WORK/rootfs/var/cache/apt/archives/"*.deb "$WORK/rootfs/var/lib/apt/lists/"*
tar -C "$WORK/rootfs" -c . | "$ENGINE" import --change 'CMD ["/bin/bash"]' - "$TAG"
echo "make-local-base: built $TAG from $MIRROR"
