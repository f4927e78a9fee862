# The two commands of the README.
.PHONY: install serve test test-slow

# Tools the tests start as subprocesses (schemathesis, locust, hadolint) live in the venv.
export PATH := $(CURDIR)/.venv/bin:$(PATH)

install:
	bash scripts/install.sh

# Serve the bundled default model on 127.0.0.1:8000 (vLLM on CPU here; see README for GPU).
serve: install
	.venv/bin/endorm serve $(ARGS)

# Install everything, then run the test suite (real vLLM engine, real servers).
test: install
	.venv/bin/python -m pytest -q -rs $(ARGS)

test-slow: install
	.venv/bin/python -m pytest -q -rs -m slow $(ARGS)
