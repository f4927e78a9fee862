"""The FastAPI application: routes, error shape, middleware, engine lifecycle."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from endorm_server.config import Settings
from endorm_server.core.scorer import Scorer, admission_from
from endorm_server.http.auth import ApiKeyMiddleware
from endorm_server.http.errors import install_error_handlers
from endorm_server.http.idempotency import IdempotencyCollector, IdempotencyMiddleware, IdempotencyStore
from endorm_server.http.metrics import Metrics
from endorm_server.http.middleware import (
    AccessMiddleware,
    BodyLimitMiddleware,
    BodyTimeoutMiddleware,
    DrainCutoffMiddleware,
)
from endorm_server.http.reuse_metrics import ReuseCollector
from endorm_server.http.routes import ROUTERS
from endorm_server.http.state import ServiceState

log = logging.getLogger(__name__)

ENGINE_WATCH_INTERVAL_S = 0.5


def create_app(settings: Settings, *, on_fatal: Callable[[str], None] | None = None) -> FastAPI:
    """Build the app. ``on_fatal`` is called when the engine fails to start or dies
    (the CLI's server then exits non-zero so the orchestrator restarts the pod)."""
    state = ServiceState(
        settings=settings,
        metrics=Metrics(settings.max_inflight_tokens),
        admission=admission_from(settings),
        api_keys=[k.get_secret_value().encode() for k in settings.api_keys],
    )
    state.metrics.registry.register(ReuseCollector(lambda: state.scorer.groups.counters if state.scorer else None))

    def fatal(reason: str) -> None:
        log.error("fatal: %s", reason)
        if on_fatal is not None:
            on_fatal(reason)

    async def start_engine() -> None:
        try:
            state.scorer = await Scorer.start(settings, state.admission)
            state.metrics.model_info.info(
                {"model": state.scorer.model_name, "system_fingerprint": state.scorer.system_fingerprint or ""}
            )
        except Exception as exc:  # surfaced by /ready and the exit code
            state.startup_error = exc
            log.exception("engine failed to start")
            fatal(f"engine failed to start: {exc}")
            return
        while True:  # watchdog: the engine process can die under us
            await asyncio.sleep(ENGINE_WATCH_INTERVAL_S)
            if not state.scorer.engine.healthy:
                state.refresh_gauges()
                # keep answering (503, /ready 503) a while before exiting, so probes and
                # clients see a clear "unavailable" rather than a refused connection
                log.error("engine died; answering 503 for %.0f s, then exiting 1", settings.engine_death_grace_s)
                await asyncio.sleep(settings.engine_death_grace_s)
                fatal("engine died")
                return

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        task = asyncio.create_task(start_engine())  # held here until shutdown cancels it
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            if state.scorer is not None:
                await state.scorer.shutdown()

    app = FastAPI(
        title="EndoRM server",
        version="0.1.0",
        summary="Training-free rewards from any causal LM (endogenous reward, inverse soft Bellman operator).",
        lifespan=lifespan,
    )
    app.state.service = state
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    # Outermost last. Each request: request id and access log, CORS (so a 401 carries its headers), the key
    # (from the headers, before the body limit or deadline read a byte), the body deadline, the body limit.
    idempotency = IdempotencyStore(
        settings.idempotency_max_entries, settings.idempotency_max_bytes, settings.idempotency_ttl_s
    )
    state.metrics.registry.register(IdempotencyCollector(idempotency))
    app.add_middleware(IdempotencyMiddleware, store=idempotency)  # innermost: sees only whole, keyed bodies
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(BodyTimeoutMiddleware, timeout_s=settings.body_timeout_s)
    app.add_middleware(ApiKeyMiddleware, keys=state.api_keys, routes=app.router.routes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID", "Idempotency-Key"],
        )
    app.add_middleware(DrainCutoffMiddleware)  # inside the access log, so it logs and counts the 503
    app.add_middleware(AccessMiddleware, metrics=state.metrics)
    return app
