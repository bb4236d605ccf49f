#!/usr/bin/env bash
# Test scaffolding, not what users build: stands in for the Dockerfile's base
# image (python:3.11-slim) where Docker Hub is out of reach. A Debian bookworm
# root from debootstrap (minbase + Debian's Python 3.11), with the paths the
# official image has (/usr/local/bin/python3.11, python, pip), pip allowed to
# install system-wide, and this machine's CA bundle (package traffic goes
# through a TLS proxy), imported into podman's storage under the official
# name, so `podman build --pull=never` builds the Dockerfile unchanged.
#
# The root is cached as a tarball in $BASE_CACHE (default
# /var/cache/beatplatform/python-3.11-slim.tar), so only the first run on a
# machine pays for debootstrap (about a minute).
set -euo pipefail

IMAGE="docker.io/library/python:3.11-slim"
CACHE="${BASE_CACHE:-/var/cache/beatplatform/python-3.11-slim.tar}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PODMAN=(podman --storage-driver vfs)

if "${PODMAN[@]}" image exists "$IMAGE"; then
    echo "base image $IMAGE already in podman's storage"
    exit 0
fi

if [ ! -s "$CACHE" ]; then
    work="$(mktemp -d /var/tmp/beatplatform-base.XXXXXX)"
    trap 'rm -rf "$work"' EXIT
    root="$work/root"
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
        bookworm "$root" "$MIRROR" >"$work/debootstrap.log" 2>&1 \
        || { tail -n 40 "$work/debootstrap.log"; exit 1; }
    ln -sf /usr/bin/python3.11 "$root/usr/local/bin/python3.11"
    ln -sf /usr/bin/python3.11 "$root/usr/local/bin/python3"
    ln -sf /usr/bin/python3.11 "$root/usr/local/bin/python"
    ln -sf /usr/bin/pip3 "$root/usr/local/bin/pip"
    rm -f "$root"/usr/lib/python3.11/EXTERNALLY-MANAGED
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    mkdir -p "$(dirname "$CACHE")"
    tar -C "$root" --numeric-owner -cf "$CACHE.partial" .
    mv "$CACHE.partial" "$CACHE"
fi

"${PODMAN[@]}" import \
    --change "ENV=PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change "ENV=LANG=C.UTF-8" \
    --change "ENV=SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt" \
    --change 'CMD=["python3"]' \
    "$CACHE" "$IMAGE" >/dev/null
echo "base image $IMAGE imported from $CACHE"
