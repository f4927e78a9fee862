"""Fixtures for unit tests: tiny deterministic models built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_cache(tmp_path_factory) -> Path:
    """Where tiny models are built once: ENDORM_TINY_MODEL_CACHE, else the suite's shared
    per-machine cache (tests/conftest.py MODEL_CACHE), else a session temp dir.

    Sharing is safe: cache entries are named from the build arguments and the
    generator's FORMAT_VERSION, and are created by atomic rename.
    """
    env = os.environ.get("ENDORM_TINY_MODEL_CACHE")
    if env:
        return Path(env)
    try:
        from tests.conftest import MODEL_CACHE
    except ImportError:
        return tmp_path_factory.mktemp("tiny-models")
    return Path(MODEL_CACHE)


@pytest.fixture(scope="session")
def tiny_model(tiny_model_cache):
    """Factory: ``tiny_model("qwen2", **build_kwargs) -> Path`` (built once, then reused)."""
    from tests.tiny_models import ensure_tiny_model

    def make(arch: str = "llama", **kw) -> Path:
        return ensure_tiny_model(tiny_model_cache, arch, **kw)

    return make


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model):
    """Factory: ``tiny_tokenizer("llama")`` -> the model's AutoTokenizer (cached)."""
    from transformers import AutoTokenizer

    cache: dict = {}

    def make(arch: str = "llama", **kw):
        key = (arch, tuple(sorted(kw.items())))
        if key not in cache:
            cache[key] = AutoTokenizer.from_pretrained(tiny_model(arch, **kw))
        return cache[key]

    return make
