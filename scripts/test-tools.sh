#!/usr/bin/env bash
# The system tools the test suite drives, installed where this machine allows it; shared by `make test` and
# .ci/run. Debian/Ubuntu as root (or with sudo): installed with apt. Elsewhere: stops at once with the exact
# command to run. Python packages are not handled here: the Makefile installs them into .venv*.
#   chromium        the page's browser test (Playwright drives /usr/bin/chromium)
#   prometheus      promtool and Prometheus for the monitoring tests
#   docker-compose  validates the Airflow VM's compose file (no Docker engine needed)
# kubectl (>= 1.21, for `kubectl kustomize`) is not in Debian's own archive at a usable version: without it
# the manifest tests are skipped with that reason (and fail where REQUIRE_TEST_SERVICES=1, as in CI).
set -euo pipefail

missing=()
[ -x "${CHROMIUM:-/usr/bin/chromium}" ] || missing+=(chromium)
command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
{ docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null 2>&1; } || missing+=(docker-compose)

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
  $sudo apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 ||
    { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q "${missing[@]}" >/dev/null; }
fi

minor="$(kubectl version --client -o json 2>/dev/null | python3 -c 'import json,sys; print(int(json.load(sys.stdin)["clientVersion"]["minor"].rstrip("+")))' 2>/dev/null || echo 0)"
if [ "$minor" -lt 21 ]; then
  echo "test-tools: kubectl >= 1.21 is missing (Debian's kubernetes-client 1.20 is too old for these kustomizations)," \
    "so the manifest tests will be skipped; install kubectl from https://kubernetes.io/docs/tasks/tools/ to run them" >&2
fi
