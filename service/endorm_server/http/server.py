"""Run the app under uvicorn with a graceful drain on SIGTERM.

SIGTERM: /ready turns 503 and new scoring requests get 503 (so the load
balancer moves away), in-flight requests finish within ``drain_timeout_s``,
then the server exits. That is one budget: uvicorn's graceful shutdown (which
waits for open connections, then cancels what is left) gets what the drain left
of it, so SIGTERM to exit takes at most ``exit_bound_s(settings)``. A second
signal exits at once. An engine failure exits with status 1 so the orchestrator
restarts the pod: after the engine-death grace, or at once on SIGTERM during it
(nothing is left to drain)."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

import uvicorn

from endorm_server.config import Settings
from endorm_server.http.app import create_app
from endorm_server.http.state import ServiceState

log = logging.getLogger(__name__)

DRAIN_POLL_S = 0.05
# SIGTERM to exit beyond the drain budget: uvicorn's shutdown (its 0.1 s main-loop tick and the
# 0.1 s it sleeps after closing connections), the lifespan's engine shutdown
# (vllm_engine.ENGINE_EXIT_GRACE_S, then vLLM kills the engine core) and the interpreter's exit.
# An allowance, checked against a real uvicorn (tests/http/test_uvicorn_limits.py); the manifests'
# terminationGracePeriodSeconds must cover preStop + exit_bound_s (tests/deploy/test_manifests.py).
EXIT_ALLOWANCE_S = 4.0
# The request line and headers of one request, at most (a larger head is answered 400 and the
# connection closed). Enforced by h11 only: uvicorn's httptools parser has no such limit (a 2 MB
# header was answered 200), hence http="h11". Above Envoy's own default (60 KiB of headers), so
# whatever the Gateway passes on is read. A header *timeout* exists in neither: docs/security.md.
MAX_REQUEST_HEAD_BYTES = 64 * 1024


def exit_bound_s(settings: Settings) -> float:
    """The longest SIGTERM to exit: one drain budget (the drain's wait and uvicorn's graceful
    shutdown share it), then the allowance for the rest of the shutdown."""
    return settings.drain_timeout_s + EXIT_ALLOWANCE_S


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, settings: Settings, state: ServiceState) -> None:
        super().__init__(config)
        self.settings = settings
        self.state = state  # the app's: drain turns it to draining and waits on its in-flight count
        self.exit_code = 0
        self._drain_task: asyncio.Task | None = None  # kept so the task is not garbage-collected mid-drain
        self._drain_requested = False
        self._drain_deadline: float | None = None  # time.monotonic() at which the drain budget ends
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets=None) -> None:  # type: ignore[no-untyped-def]
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig, frame) -> None:  # type: ignore[no-untyped-def]
        """uvicorn installs this with ``signal.signal``: Python runs it between two bytecodes of whatever
        the main thread was doing, the event loop's own code included. So it only sets flags, or hands
        the signal to the loop (``call_soon_threadsafe``); the drain task is created there, not here."""
        if self._loop is None:  # the server is not serving yet: nothing to drain
            self.should_exit = True
            return
        if self._drain_requested or self.should_exit:  # second signal: stop now
            self.should_exit = self.force_exit = True
            return
        self._drain_requested = True
        self._loop.call_soon_threadsafe(self._on_signal)

    def _on_signal(self) -> None:
        if self.state.engine_dead:  # every request already failed with 503
            log.error("signal during the engine-death grace: exiting 1 now")
            self.fail("engine died")
            return
        self._drain_task = asyncio.get_running_loop().create_task(self.drain())

    async def drain(self) -> None:
        state = self.state
        state.draining = True
        state.drain_started_at = time.monotonic()
        await state.admission.start_draining()
        state.refresh_gauges()
        log.info(
            "draining: waiting up to %.0f s for %d in-flight requests",
            self.settings.drain_timeout_s,
            state.http_in_flight,
        )
        deadline = self._drain_deadline = state.drain_started_at + self.settings.drain_timeout_s
        # Requests that arrived before the signal finish, including those still being
        # read or parsed; later ones are answered 503 meanwhile.
        while state.http_in_flight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(DRAIN_POLL_S)
        if state.http_in_flight:
            log.warning("drain timeout: %d requests still in flight", state.http_in_flight)
        self.should_exit = True

    async def shutdown(self, sockets=None) -> None:  # type: ignore[no-untyped-def]
        """uvicorn's shutdown, its graceful wait given what is left of the drain budget: the drain has
        already waited for the in-flight requests, so a fresh ``drain_timeout_s`` here would let the
        pod outlive terminationGracePeriodSeconds (and be killed mid-request by then anyway)."""
        if self._drain_deadline is not None:
            left = max(0.0, self._drain_deadline - time.monotonic())
            # asyncio.timeout takes float seconds; uvicorn's Config annotates the field int
            self.config.timeout_graceful_shutdown = left  # type: ignore[assignment]
        await super().shutdown(sockets)

    def fail(self, reason: str) -> None:
        self.exit_code = 1
        self.should_exit = True


def build_server(settings: Settings, app: Any, **config: Any) -> DrainingServer:
    """The uvicorn server ``serve`` runs (``config``: uvicorn.Config overrides, for tests)."""
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "access_log": False,
        "http": "h11",
        "h11_max_incomplete_event_size": MAX_REQUEST_HEAD_BYTES,
        # Without a drain (engine failure, a signal before serving) the graceful wait has the
        # drain's budget; after a drain, shutdown() cuts it to what is left.
        "timeout_graceful_shutdown": math.ceil(settings.drain_timeout_s),
    }
    return DrainingServer(uvicorn.Config(app, **{**options, **config}), settings, app.state.service)


def serve(settings: Settings) -> int:
    holder: dict[str, DrainingServer] = {}
    app = create_app(settings, on_fatal=lambda reason: holder["server"].fail(reason))
    server = holder["server"] = build_server(settings, app)
    server.run()
    return server.exit_code
