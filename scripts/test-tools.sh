#!/usr/bin/env bash
# The system tools the test suite drives, installed where this machine allows it; shared by `make test` and
# .ci/run. Debian as root (or with sudo): installed with apt, without recommended packages. Elsewhere: stops at
# once with the exact command to run. Python packages are not handled here: the Makefile installs them into
# .venv* (after this script: `make test` runs it first).
#   chromium        the page's browser test (Playwright drives /usr/bin/chromium)
#   prometheus      promtool and Prometheus for the monitoring tests
#   docker-compose  validates the Airflow VM's compose file (no Docker engine needed)
#   python3-venv    the virtual environments the Makefile creates
#   buildah podman runc uidmap fuse-overlayfs catatonit
#                   build the service images without a Docker engine and run them (tests/test_images.py)
#   mmdebstrap      the test-only stand-in for python:3.11-slim-bookworm (scripts/stand-in-base.sh)
# kubectl (>= 1.21, for `kubectl kustomize`) is not in Debian's own archive at a usable version: without it
# the manifest tests are skipped with that reason (and fail where REQUIRE_TEST_SERVICES=1, as in CI).
set -euo pipefail

missing_tools() {
  missing=()
  [ -x "${CHROMIUM:-/usr/bin/chromium}" ] || missing+=(chromium)
  command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
  { docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null 2>&1; } || missing+=(docker-compose)
  # Debian's python3 lacks venv's pip until python3-venv is installed; the Makefile creates three venvs.
  python3 -c "import ensurepip" >/dev/null 2>&1 || missing+=(python3-venv)
  for tool in buildah podman runc mmdebstrap; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
  # podman's helpers on Debian: user namespaces, overlay storage, an init for `podman kube play`'s pods.
  command -v newuidmap >/dev/null 2>&1 || missing+=(uidmap)
  command -v fuse-overlayfs >/dev/null 2>&1 || missing+=(fuse-overlayfs)
  command -v catatonit >/dev/null 2>&1 || [ -x /usr/libexec/podman/catatonit ] || missing+=(catatonit)
}
missing_tools

if [ ${#missing[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "test-tools: the tests need ${missing[*]} (Debian package names); install them with your system's" \
      "package manager, then run make test again" >&2
    exit 1
  fi
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if sudo -n true 2>/dev/null; then sudo="sudo"; else
      echo "test-tools: the tests need ${missing[*]}; run: sudo apt-get install -y ${missing[*]}" >&2
      exit 1
    fi
  fi
  echo "test-tools: installing ${missing[*]} with apt-get (once; about a minute)"
  # No prompts (sudo drops the environment, so the variable goes through env), no recommended extras.
  apt=($sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends)
  "${apt[@]}" "${missing[@]}" >/dev/null 2>&1 ||
    { $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null && "${apt[@]}" "${missing[@]}" >/dev/null; }
  wanted=("${missing[@]}")
  missing_tools
  if [ ${#missing[@]} -gt 0 ]; then  # e.g. Ubuntu's chromium package installs a snap, not /usr/bin/chromium
    echo "test-tools: apt-get installed ${wanted[*]} but ${missing[*]} is still not usable (chromium must be" \
      "/usr/bin/chromium, as on Debian); install it by hand, then run make test again" >&2
    exit 1
  fi
fi

minor="$(kubectl version --client -o json 2>/dev/null | python3 -c 'import json,sys; print(int(json.load(sys.stdin)["clientVersion"]["minor"].rstrip("+")))' 2>/dev/null || echo 0)"
if [ "$minor" -lt 21 ]; then
  echo "test-tools: kubectl >= 1.21 is missing (Debian's kubernetes-client 1.20 is too old for these kustomizations)," \
    "so the manifest tests will be skipped; install kubectl from https://kubernetes.io/docs/tasks/tools/ to run them" >&2
fi
