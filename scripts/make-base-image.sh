#!/usr/bin/env bash
# The base image for docker/Dockerfile, made from Debian's own packages, for a machine that can
# reach a Debian mirror but no image registry (CI). Prints the tag to build with:
#   docker build --network host --build-arg BASE="$(scripts/make-base-image.sh)" -f docker/Dockerfile .
# If the default base (python:3.11-slim) is already present or can be pulled, prints that
# instead. Idempotent: an existing local base image is reused. Needs root and debootstrap.
#   LABELER_BASE_TAG     tag to make (default labeler-base:bookworm)
#   LABELER_DEBIAN_MIRROR  mirror for debootstrap (default: the one in /etc/apt, else deb.debian.org)
#   LABELER_BASE_NO_PULL=1 do not try to pull python:3.11-slim
#   LABELER_BASE_NO_HOST_CA=1 do not copy this machine's extra CA certificates into it
set -euo pipefail
DEFAULT=python:3.11-slim
TAG=${LABELER_BASE_TAG:-labeler-base:bookworm}
SUITE=bookworm

if docker image inspect "$TAG" >/dev/null 2>&1; then echo "$TAG"; exit 0; fi
if docker image inspect "$DEFAULT" >/dev/null 2>&1; then echo "$DEFAULT"; exit 0; fi
if [ "${LABELER_BASE_NO_PULL:-}" != 1 ] && timeout 60 docker pull -q "$DEFAULT" >/dev/null 2>&1; then
    echo "$DEFAULT"; exit 0
fi

mirror=${LABELER_DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
    # The Debian archive this machine's apt uses (not -security, not third-party repositories).
    mirror=$(grep -rhoE '(URIs:|deb) +https?://[^ ]+' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
        | awk '{print $2}' | grep -E '/debian/?$' | head -n1 || true)
    mirror=${mirror:-http://deb.debian.org/debian}
fi
command -v debootstrap >/dev/null || {
    echo "make-base-image: debootstrap is missing (apt-get install debootstrap)" >&2; exit 1; }
root=$(mktemp -d /tmp/labeler-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
# mktemp makes the folder 0700, and it becomes the image's "/": a non-root user could then
# execute nothing at all.
chmod 0755 "$root"
echo "make-base-image: $DEFAULT not available; debootstrap $SUITE from $mirror into $root" >&2
# python3-venv brings ensurepip's own pip; Debian's python3-pip (and the setuptools, wheel and
# build tools it pulls in) would only make the base larger.
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$SUITE" "$root" "$mirror" >&2
# A machine behind a TLS-inspecting proxy trusts extra CAs (/usr/local/share/ca-certificates);
# the base trusts them too, or pip could not reach PyPI during the build. Only this locally made
# base gets them: a shelter's image, built from python:3.11-slim, does not.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null \
        && [ "${LABELER_BASE_NO_HOST_CA:-}" != 1 ]; then
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
    chroot "$root" update-ca-certificates >&2
    # pip trusts its own certifi bundle, not the system store: point it at the system store.
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$root/etc/pip.conf"
fi
# Smaller: no apt lists, caches, docs or man pages in the image.
chroot "$root" apt-get clean >&2
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/usr/share/doc/* \
    "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/var/log/*.log
tar -C "$root" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    - "$TAG" >&2
echo "$TAG"
