"""The engine is built off the event loop, so /health and /ready answer while a model loads.

Building vLLM's AsyncLLM starts the engine-core process, loads the weights and profiles the KV cache:
seconds to minutes. On the loop it froze the service for that long (a kubelet's liveness probe
would time out and restart the pod before the model finished loading).
"""

from __future__ import annotations

import asyncio
import threading

from tests.engine.conftest import ENGINE_BUILD_THREADS


async def test_asyncllm_is_built_in_a_worker_thread_and_serves_from_the_loop(vllm_engines):
    engine = await vllm_engines("llama")
    assert ENGINE_BUILD_THREADS, "no AsyncLLM was built through the session's engine fixture"
    assert all(t is not threading.main_thread() for t in ENGINE_BUILD_THREADS), ENGINE_BUILD_THREADS
    # built in a thread, it still answers requests awaited on this loop (its output handler starts lazily)
    stats = await asyncio.wait_for(engine.token_stats([1, 2, 3, 4]), timeout=300)
    assert len(stats.c) == 4


async def test_scorer_start_keeps_the_loop_free(monkeypatch, tmp_path):
    """Scorer.start runs create_engine (config reads, dtype resolution) in a thread: held at a gate there,
    the loop still runs other tasks; on the loop, the gate's release below could never run."""
    from endorm_server.config import Settings
    from endorm_server.core import scorer as scorer_module
    from tests.conftest import tiny_model

    entered, release = threading.Event(), threading.Event()
    real_create = scorer_module.create_engine

    def gated_create(settings, path):
        entered.set()
        if not release.wait(timeout=120):
            raise AssertionError("create_engine blocked the event loop: the release never came")
        return real_create(settings, path)

    monkeypatch.setattr(scorer_module, "create_engine", gated_create)
    start = asyncio.create_task(
        scorer_module.Scorer.start(Settings(model=str(tiny_model("llama")), engine="transformers", dtype="float32"))
    )
    assert await asyncio.to_thread(entered.wait, 120)
    assert not start.done()
    release.set()  # this line runs only if the loop is free while create_engine waits
    scorer = await asyncio.wait_for(start, timeout=300)
    await scorer.shutdown()
