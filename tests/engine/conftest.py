from __future__ import annotations

import pytest

from endorm_server.engine.reference import TransformersEngine
from endorm_server.engine.vllm_engine import VllmEngine
from tests.conftest import engine_settings, tiny_model

_engines: dict[tuple[str, float], VllmEngine] = {}


@pytest.fixture(scope="session")
async def vllm_engines():
    """Start each (model, alpha) vLLM engine once per session, on demand."""

    async def get(name: str, alpha: float = 1.0) -> VllmEngine:
        key = (name, alpha)
        if key not in _engines:
            engine = VllmEngine(engine_settings(tiny_model(name), alpha=alpha), str(tiny_model(name)))
            await engine.start()
            _engines[key] = engine
        return _engines[key]

    yield get
    for engine in _engines.values():
        await engine.shutdown()
    _engines.clear()


def reference_engine(name: str, alpha: float = 1.0) -> TransformersEngine:
    """The exact float64 transformers reference (loaded synchronously)."""
    engine = TransformersEngine(engine_settings(tiny_model(name), alpha=alpha, dtype="float64"), str(tiny_model(name)))
    engine._load()
    return engine
