#!/usr/bin/env bash
# Resolve the GPU image's install step (`.[gpu]`: vllm==0.32.0, CUDA build, with the project's
# pins) for real, in a clean venv of Python 3.11, against PyPI only (no local wheel dirs or
# constraints): a pin conflict shows here, not on the user's GPU node. Nothing is installed.
#   scripts/check_gpu_extra.sh [report.json]     (PYTHON=python3.11, INDEX=https://pypi.org/simple)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
report="${1:-$(mktemp --suffix=.json)}"
venv="$(mktemp -d)"
trap 'rm -rf "$venv"' EXIT
"${PYTHON:-python3.11}" -m venv "$venv"
cert=()
[ -n "${PIP_CERT:-}" ] && cert=(--cert "$PIP_CERT")
env -u PIP_FIND_LINKS -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null \
  "$venv/bin/pip" install --dry-run --ignore-installed --quiet --report "$report" \
  --index-url "${INDEX:-https://pypi.org/simple}" "${cert[@]}" "$root[gpu]"
"$venv/bin/python" - "$report" <<'PY'
import json, sys
inst = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in json.load(open(sys.argv[1]))["install"]}
assert inst.get("vllm") == "0.32.0", inst.get("vllm")
print(f"resolved {len(inst)} packages: vllm {inst['vllm']}, torch {inst.get('torch')}")
PY
