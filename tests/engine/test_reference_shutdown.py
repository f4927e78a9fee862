"""The transformers engine's shutdown cannot race a forward into a 500 (issue 19): a forward in flight
finishes, and one that starts after shutdown is the engine-down error (503), never None called."""

from __future__ import annotations

import asyncio
import threading

import pytest

from endorm_server.engine.base import EngineError
from tests.engine.conftest import reference_engine


async def _until(state) -> None:
    for _ in range(100_000):
        if state():
            return
        await asyncio.sleep(0)
    raise AssertionError("state never reached")


async def test_shutdown_waits_for_the_forward_in_flight_and_later_ones_are_engine_errors():
    engine = reference_engine("llama")
    model = engine._model
    entered, release = threading.Event(), threading.Event()

    def held_forward(*args, **kwargs):  # the real model, held at its start until the test lets it go
        entered.set()
        assert release.wait(600)
        return model(*args, **kwargs)

    engine._model = held_forward
    seq = [1, 5, 9, 13, 17]
    forward = asyncio.ensure_future(engine.token_stats(seq))
    assert await asyncio.to_thread(entered.wait, 600)
    queued = asyncio.ensure_future(engine.token_stats(seq))  # behind the held one, on the engine's lock
    await _until(lambda: engine.num_unfinished() == 2)
    shutdown = asyncio.ensure_future(engine.shutdown())
    release.set()
    stats = await forward
    assert len(stats.c) == len(seq)  # the forward in flight finished
    await shutdown
    try:  # the queued one ran before the shutdown took the lock, or found the engine down: never None called
        assert len((await queued).c) == len(seq)
    except EngineError:
        pass
    with pytest.raises(EngineError):
        await engine.token_stats(seq)
