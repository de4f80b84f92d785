#!/usr/bin/env bash
# Make the base image that every Dockerfile of deploy/ starts FROM, without a container registry:
# debootstrap a Debian 12 (bookworm) root from the Debian mirror that apt uses on this machine,
# `docker import` it and tag it with the name the FROM lines ask for (default `debian:bookworm`),
# so that `docker build` / `docker-compose build` use it without pulling. Python, Redis,
# PostgreSQL and Orthanc are then installed from Debian's packages by the Dockerfiles themselves.
#
# Nothing is done when Docker already has an image of that name (pulled from a registry or made
# here before). The root is assembled under build/ (ignored by git) and removed once imported.
# Needs root, debootstrap and a running Docker engine.
#
#   scripts/make-base-images.sh [IMAGE]        IMAGE defaults to $MEDREGA_BASE_IMAGE or debian:bookworm
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${1:-${MEDREGA_BASE_IMAGE:-debian:bookworm}}
SUITE=bookworm

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "make-base-images: $IMAGE is already in Docker"
  exit 0
fi

# The mirror apt uses here (a hospital network often has its own); deb.debian.org otherwise.
mirror_of() {
  local uris
  uris=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 2>/dev/null \
         | awk -v s="$1" '$2 == s {print $1; exit}')
  echo "${uris%/}"
}
MIRROR=${MEDREGA_DEBIAN_MIRROR:-$(mirror_of "$SUITE")}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY=${MEDREGA_DEBIAN_SECURITY_MIRROR:-$(mirror_of "$SUITE-security")}
SECURITY=${SECURITY:-http://deb.debian.org/debian-security}

ROOT=build/rootfs/$SUITE
rm -rf "$ROOT"
mkdir -p "$ROOT"
trap 'rm -rf "$ROOT"' EXIT
echo "make-base-images: debootstrap $SUITE from $MIRROR"
start=$(date +%s)
debootstrap --variant=minbase "$SUITE" "$ROOT" "$MIRROR" > build/debootstrap.log 2>&1 \
  || { tail -20 build/debootstrap.log >&2; exit 1; }
cat > "$ROOT/etc/apt/sources.list" <<SOURCES
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY $SUITE-security main
SOURCES
# As in Debian's own container images: no recommended packages, no apt caches kept in layers.
cat > "$ROOT/etc/apt/apt.conf.d/docker-clean" <<'APT'
APT::Install-Recommends "false";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT
rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/*
tar --numeric-owner -C "$ROOT" -c . \
  | docker import --change 'ENV LANG=C.UTF-8' --change 'CMD ["bash"]' \
      --message "debootstrap --variant=minbase $SUITE $MIRROR" - "$IMAGE" >/dev/null
echo "make-base-images: $IMAGE made in $(( $(date +%s) - start )) s"
