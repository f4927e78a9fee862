from __future__ import annotations

import threading

import pytest
from vllm.v1.engine.async_llm import AsyncLLM

from endorm_server.engine.transformers_engine import TransformersEngine
from endorm_server.engine.vllm_engine import VllmEngine
from tests.conftest import engine_settings, tiny_model

_engines: dict[tuple[str, float], VllmEngine] = {}
# the thread each AsyncLLM of the session was built on (tests/engine/test_start_off_loop.py)
ENGINE_BUILD_THREADS: list[threading.Thread] = []


@pytest.fixture(scope="session")
async def vllm_engines():
    """Start each (model, alpha) vLLM engine once per session, on demand."""
    build = AsyncLLM.from_engine_args.__func__  # type: ignore[attr-defined]

    def recording_build(cls, *args, **kwargs):
        ENGINE_BUILD_THREADS.append(threading.current_thread())
        return build(cls, *args, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(AsyncLLM, "from_engine_args", classmethod(recording_build))

    async def get(name: str, alpha: float = 1.0) -> VllmEngine:
        key = (name, alpha)
        if key not in _engines:
            engine = VllmEngine(engine_settings(tiny_model(name), alpha=alpha), str(tiny_model(name)))
            await engine.start()
            _engines[key] = engine
        return _engines[key]

    yield get
    mp.undo()
    for engine in _engines.values():
        await engine.shutdown()
    _engines.clear()


def reference_engine(name: str, alpha: float = 1.0) -> TransformersEngine:
    """The exact float64 transformers reference (loaded synchronously)."""
    engine = TransformersEngine(engine_settings(tiny_model(name), alpha=alpha, dtype="float64"), str(tiny_model(name)))
    engine._load()
    return engine
