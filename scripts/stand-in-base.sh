#!/usr/bin/env bash
# Test-only stand-in for the Dockerfiles' base image `python:3.11-slim-bookworm`, for machines that cannot
# pull from Docker Hub: a Debian bookworm root filesystem made with mmdebstrap from Debian's own mirror
# (Python 3.11 with venv and `python`, CA certificates, passwd for groupadd/useradd), imported into the local
# container storage under the official name, so the Dockerfiles build unchanged. Where the official image can
# be pulled, pull it instead: this script is never needed there.
#   scripts/stand-in-base.sh            nothing if the name is already in the storage; else pull the official
#                                       image, and make the stand-in only when that fails
#   scripts/stand-in-base.sh --force    make the stand-in again
# The machine's extra CA certificates (/usr/local/share/ca-certificates/*.crt, e.g. an egress proxy's) are
# copied in and trusted, and PIP_CERT / SSL_CERT_FILE point at the system bundle, so that pip inside a
# Dockerfile's RUN reaches the package index from behind such a proxy. About a minute (2 cores).
set -euo pipefail

name="docker.io/library/python:3.11-slim-bookworm"
command -v podman >/dev/null || { echo "stand-in-base: podman is missing; run scripts/test-tools.sh" >&2; exit 1; }
if [ "${1:-}" != "--force" ] && podman image exists "$name"; then
  echo "stand-in-base: $name is already in the local storage (--force to make it again)"
  exit 0
fi
if [ "${1:-}" != "--force" ] && podman pull --quiet "$name" >/dev/null 2>&1; then
  echo "stand-in-base: pulled the official $name: no stand-in needed"
  exit 0
fi
command -v mmdebstrap >/dev/null || {
  echo "stand-in-base: cannot pull $name and mmdebstrap is missing to make a stand-in; run scripts/test-tools.sh" >&2
  exit 1
}

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
certs=()
for crt in /usr/local/share/ca-certificates/*.crt; do [ -e "$crt" ] && certs+=("$crt"); done
hooks=()
if [ ${#certs[@]} -gt 0 ]; then
  cp "${certs[@]}" "$work/"
  hooks+=(--customize-hook="cp $work/*.crt \"\$1/usr/local/share/ca-certificates/\"")
  hooks+=(--customize-hook='chroot "$1" update-ca-certificates --fresh >/dev/null')
fi
# The image's own apt lists and caches are not wanted in a base image.
hooks+=(--customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*')

echo "stand-in-base: cannot pull $name; making a test-only stand-in with mmdebstrap (about a minute)"
# Like the official slim image: no manuals, documentation or translations.
mmdebstrap --quiet --variant=minbase \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  --include=python3,python3-venv,python-is-python3,ca-certificates,passwd \
  "${hooks[@]}" bookworm "$work/rootfs.tar"  # the host's apt sources for bookworm (mmdebstrap's default)
podman import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
  --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
  --change 'CMD ["python3"]' \
  --change 'LABEL org.readmission.stand-in="test-only stand-in for the official image (scripts/stand-in-base.sh)"' \
  "$work/rootfs.tar" "$name" >/dev/null
echo "stand-in-base: $name imported ($(podman image inspect --format '{{.Size}}' "$name") bytes)"
