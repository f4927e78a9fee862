"""A stub TokenStatsEngine and an app served by it: the HTTP contract checked in seconds.

The tokenizer is the tiny llama's real one (tests/tiny_models.py) and the Scorer, pipeline,
admission, middleware and error handlers are the served ones; only the engine is replaced by
deterministic (c, v) arrays that a test can hold on an event, make fail, or kill.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx
import numpy as np
from fastapi import FastAPI

from endorm_server.config import Settings
from endorm_server.core.scorer import Scorer
from endorm_server.engine.base import EngineError, EngineInfo, SequenceStats, check_token_ids
from endorm_server.engine.dtype import DtypeChoice
from endorm_server.http.app import create_app
from endorm_server.http.state import ServiceState
from endorm_server.inputs.tokenization import PairEncoder

STUB_MODEL = "stub-llama"


class StubEngine:
    """Deterministic stats: c_i = (x_{i+1} mod 7) / 10 (NaN at N-1), v_i = 1 + i / 100.

    ``hold()`` makes calls wait on an event until ``release()``; ``entered`` counts calls that
    reached the engine (a test waits for it instead of sleeping); ``fail_with`` raises from every
    call; ``die()`` turns ``healthy`` false and fails what is in flight, as a dead engine does.
    """

    def __init__(self, *, vocab_size: int = 512, max_model_len: int = 64, alpha: float = 1.0) -> None:
        self.info = EngineInfo(
            name="stub", model=STUB_MODEL, max_model_len=max_model_len, alpha=alpha, vocab_size=vocab_size
        )
        self.dtype_choice = DtypeChoice("float32", "stub engine")
        self.calls = 0
        self.unfinished = 0
        self.fail_now: Callable[[Sequence[int]], BaseException | None] | None = None
        self.fail_with: BaseException | None = None
        self._alive = True
        self._gate = asyncio.Event()
        self._gate.set()
        self._entered = asyncio.Condition()

    async def start(self) -> None:
        return None

    def hold(self) -> None:
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    def die(self) -> None:
        self._alive = False
        self._gate.set()

    async def wait_entered(self, n: int, timeout_s: float = 60) -> None:
        """Until ``n`` calls in all have reached the engine (a guard against a hang, not a speed check)."""
        async with asyncio.timeout(timeout_s), self._entered:
            await self._entered.wait_for(lambda: self.calls >= n)

    async def token_stats(
        self,
        token_ids: Sequence[int],
        *,
        first: int = 0,
        read_cache: bool = False,
        extra_targets: Sequence[tuple[int, int]] = (),
    ) -> SequenceStats:
        check_token_ids(token_ids, self.info.vocab_size)
        async with self._entered:
            self.calls += 1
            self._entered.notify_all()
        self.unfinished += 1
        try:
            if self.fail_now is not None and (exc := self.fail_now(token_ids)) is not None:
                raise exc  # at once, while the other calls are held
            await self._gate.wait()
            if not self._alive:
                raise EngineError("stub engine died")
            if self.fail_with is not None:
                raise self.fail_with
            ids = np.asarray(token_ids, dtype=np.int64)
            c = np.append((ids[1:] % 7) / 10.0, np.nan)
            v = 1.0 + np.arange(len(ids)) / 100.0
            extra = (
                np.array([c[p] if p < len(ids) - 1 else np.nan for p, _ in extra_targets]) if extra_targets else None
            )
            return SequenceStats(c=c[first:], v=v[first:], offset=first, extra_c=extra)
        finally:
            self.unfinished -= 1

    def num_unfinished(self) -> int:
        return self.unfinished

    @property
    def healthy(self) -> bool:
        return self._alive

    async def shutdown(self) -> None:
        self._alive = False


def stub_settings(model: str, **overrides: Any) -> Settings:
    """Small limits the tests reach with small bodies; no admission wait, so a full budget is a 429 at once."""
    base: dict[str, Any] = {
        "model": model,
        "served_model_name": STUB_MODEL,
        "max_items_per_request": 8,
        "max_body_bytes": 20_000,
        "max_inflight_tokens": 1000,
        "queue_timeout_s": 0.0,
        "request_timeout_s": 600.0,
        "retry_after_s": 7,
    }
    base.update(overrides)
    return Settings(**base)


def stub_scorer(tokenizer: Any, engine: StubEngine) -> Scorer:
    return Scorer(engine, PairEncoder(tokenizer, vocab_size=engine.info.vocab_size), STUB_MODEL, "fp_stub")


def stub_app(settings: Settings, scorer: Scorer | None) -> FastAPI:
    """The served app without its lifespan (which would start a real engine): ``scorer`` is put in place
    as ``Scorer.start`` would; ``None`` leaves the app loading."""
    app = create_app(settings)
    if scorer is not None:  # the server's budget, as Scorer.start(settings, state.admission) takes it
        scorer.admission = app.state.service.admission
    app.state.service.scorer = scorer
    return app


def service(app: FastAPI) -> ServiceState:
    return app.state.service


@asynccontextmanager
async def asgi_client(
    app: FastAPI, *, raise_app_exceptions: bool = True, **kw: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """A client over ASGI; ``raise_app_exceptions=False`` returns the 500 Starlette sends for an unhandled
    exception (re-raised after the response, as under uvicorn) instead of raising it in the test."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
    async with httpx.AsyncClient(transport=transport, base_url="http://stub", timeout=60, **kw) as client:
        yield client
