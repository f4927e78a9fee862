#!/usr/bin/env bash
# Build the Debian base image for Dockerfile.cpu where no container registry is reachable:
# mmdebstrap makes a minimal bookworm root filesystem from the Debian mirror apt already uses,
# with Debian's Python 3.11 (the version of the default base, python:3.11-slim-bookworm), and
# `podman import` turns it into an image. Reused when it exists. Prints the image name.
#   scripts/build_base_image.sh [image]     (default localhost/endorm-base:bookworm-py311)
#   podman build --build-arg BASE_IMAGE=localhost/endorm-base:bookworm-py311 -f Dockerfile.cpu .
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
IMAGE="${1:-localhost/endorm-base:bookworm-py311}"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"
if podman image exists "$IMAGE"; then echo "$IMAGE"; exit 0; fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates \
  bookworm "$tmp/rootfs.tar" >&2
podman import --quiet --change 'CMD ["/bin/bash"]' "$tmp/rootfs.tar" "$IMAGE" >/dev/null
version="$(podman run --rm "$IMAGE" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [ "$version" != "3.11" ]; then
  podman rmi "$IMAGE" >/dev/null
  echo "error: the base has Python $version, Dockerfile.cpu expects 3.11" >&2
  exit 1
fi
echo "$IMAGE"
