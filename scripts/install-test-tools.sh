#!/usr/bin/env bash
# The tools the tests start, beyond the Python ones in .venv (`make test` runs this after
# scripts/install.sh cpu,dev; serving needs none of them):
# - promtool and a Prometheus server (Debian's prometheus): tests/deploy/test_dashboard.py;
# - kubectl: Debian's kubernetes-client (kubectl 1.20, kustomize v2, the oldest renderer deploy/
#   supports) unpacked into .cache/ rather than installed, so it sits beside any newer kubectl on
#   PATH (whose package would conflict) and tests/deploy checks that old and new render the same;
# - podman run with runc (scripts/containers.conf) and mmdebstrap for a base image without a
#   registry (tests/deploy/test_container.py), HAProxy (tests/replicas), Debian's Chromium with its
#   driver for Selenium (tests/browser; no browser is downloaded).
# With apt-get as root; each step is skipped when its tools are already there, so a rerun is quick.
# Best effort: a tool that cannot be installed is named, and its tests skip (locally) or fail
# (under CI=true, tests/tools.py).
set -euo pipefail
cd "$(dirname "$0")/.."
have() { for tool in "$@"; do command -v "$tool" >/dev/null 2>&1 || return 1; done; }
can_apt() { command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; }
# apt-get install, with one `apt-get update` when the package lists are stale or empty.
apt_install() {
  apt-get install -y -q --no-install-recommends "$@" >/dev/null 2>&1 \
    || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends "$@" >/dev/null 2>&1)
}

if ! have promtool prometheus; then
  if can_apt && apt_install prometheus; then :; else
    echo "note: promtool/prometheus not installed; their tests will skip (fail under CI=true)" >&2
  fi
fi

if [ ! -x .cache/kubernetes-client/usr/bin/kubectl ] && command -v apt-get >/dev/null 2>&1; then
  (mkdir -p .cache/kubernetes-client && cd .cache \
    && (apt-get download -q kubernetes-client >/dev/null 2>&1 \
        || (apt-get update -q >/dev/null 2>&1 && apt-get download -q kubernetes-client >/dev/null 2>&1)) \
    && dpkg -x kubernetes-client_*.deb kubernetes-client && rm -f kubernetes-client_*.deb) \
    || echo "note: Debian's kubectl not unpacked; deploy tests use a kubectl on PATH or skip" >&2
fi

if ! have podman runc mmdebstrap haproxy chromium chromedriver; then
  pkgs="podman buildah runc fuse-overlayfs slirp4netns uidmap mmdebstrap haproxy chromium chromium-driver fonts-dejavu-core"
  # shellcheck disable=SC2086
  if can_apt && apt_install $pkgs; then :; else
    echo "note: podman/mmdebstrap/haproxy/chromium not installed; the container, replica and browser tests will skip (fail under CI=true)" >&2
  fi
fi
