# The two commands of the README.
.PHONY: install serve test test-slow lint

# Tools the tests start as subprocesses (schemathesis, locust, hadolint) live in the venv.
export PATH := $(CURDIR)/.venv/bin:$(PATH)

install:
	bash scripts/install.sh

# Serve the bundled default model on 127.0.0.1:8000 (vLLM on CPU here; see README for GPU).
serve: install
	.venv/bin/endorm serve $(ARGS)

# Python the checks read: the server, the SDK and everything that imports them.
PY_DIRS := service clients tests loadtests scripts examples

# Install everything, lint and type-check, then run the test suite (real vLLM engine, real servers).
test: install lint
	.venv/bin/python -m pytest -q -rs $(ARGS)

# ruff lint and format check (pyproject's [tool.ruff]) on all Python; mypy on the two packages users import.
lint: install
	.venv/bin/ruff check $(PY_DIRS)
	.venv/bin/ruff format --check $(PY_DIRS)
	.venv/bin/mypy service/endorm_server clients/endorm_client

test-slow: install
	.venv/bin/python -m pytest -q -rs -m slow $(ARGS)
