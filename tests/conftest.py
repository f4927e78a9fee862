"""Shared fixtures: tiny generated models (built once per machine) and settings.

Engines start slowly (tens of seconds on CPU), so engine fixtures are
session-scoped and shared; see tests/engine/conftest.py and tests/http/conftest.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.config import Settings
from service.models.tiny import ensure_tiny_model

MODEL_CACHE = Path(os.environ.get("ENDORM_TEST_MODEL_CACHE", Path(__file__).resolve().parents[1] / ".cache" / "test-models"))

# name -> build arguments; covers the families the plugin must support, tied
# input/output embeddings, and logit soft-capping.
MODEL_VARIANTS: dict[str, dict] = {
    "llama": {"arch": "llama"},
    "llama-tied": {"arch": "llama", "tie_word_embeddings": True},
    "qwen2": {"arch": "qwen2"},
    "qwen3": {"arch": "qwen3"},
    "mistral": {"arch": "mistral"},
    "gemma2-softcap": {"arch": "gemma2", "final_logit_softcapping": 30.0},
}


def tiny_model(name: str) -> Path:
    return ensure_tiny_model(MODEL_CACHE, **MODEL_VARIANTS[name])


def engine_settings(model: Path | str, **overrides) -> Settings:
    """Small, fast engine settings for tests: chunked prefill above 128 tokens."""
    base = dict(
        model=str(model),
        dtype="float32",
        max_model_len=1024,
        max_num_batched_tokens=128,
        max_num_seqs=64,
        kv_cache_gb=1,
        gpu_memory_utilization=0.05,
        enforce_eager=True,
        cache_dir=MODEL_CACHE,
    )
    base.update(overrides)
    return Settings(**base)


@pytest.fixture(scope="session")
def llama_path() -> Path:
    return tiny_model("llama")
