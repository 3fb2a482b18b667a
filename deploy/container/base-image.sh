#!/bin/sh
# Build a minimal Debian base image with Python from Debian's own packages (debootstrap) and import
# it as a local image, for hosts that reach no container registry. Reuses the image if it exists.
#   deploy/container/base-image.sh [IMAGE]     (default localhost/nnship-debian:bookworm)
# DEBIAN_MIRROR overrides the mirror (default: the first one apt uses here); ENGINE picks the
# engine (default: podman, else docker). Needs root and debootstrap.
set -eu
image=${1:-localhost/nnship-debian:bookworm}
engine=${ENGINE:-$(command -v podman || command -v docker)}
if "$engine" image inspect "$image" >/dev/null 2>&1; then
    echo "$image"
    exit 0
fi
mirror=${DEBIAN_MIRROR:-$(grep -hsoE '(URIs:|^deb) +https?://[^ ]+/debian/?( |$)' \
    /etc/apt/sources.list.d/*.sources /etc/apt/sources.list | head -n1 | awk '{print $2}')}
mirror=${mirror:-http://deb.debian.org/debian}
rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$rootfs" "$mirror" >/dev/null
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
tar -C "$rootfs" -c . | "$engine" import - "$image" >/dev/null
echo "$image"
