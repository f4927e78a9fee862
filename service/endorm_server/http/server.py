"""Run the app under uvicorn with a graceful drain on SIGTERM.

SIGTERM: /ready turns 503 and new scoring requests get 503 (so the load
balancer moves away), in-flight requests finish within ``drain_timeout_s``,
then the server exits. A second signal exits at once. An engine failure
exits with status 1 so the orchestrator restarts the pod: after the engine-death
grace, or at once on SIGTERM during it (nothing is left to drain).
"""

from __future__ import annotations

import asyncio
import logging
import time

import uvicorn

from endorm_server.config import Settings
from endorm_server.http.app import create_app
from endorm_server.http.state import ServiceState

log = logging.getLogger(__name__)

DRAIN_POLL_S = 0.05


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, settings: Settings, state: ServiceState) -> None:
        super().__init__(config)
        self.settings = settings
        self.state = state  # the app's: drain turns it to draining and waits on its in-flight count
        self.exit_code = 0
        self._drain_task: asyncio.Task | None = None  # kept so the task is not garbage-collected mid-drain
        self._drain_requested = False
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
        deadline = state.drain_started_at + self.settings.drain_timeout_s
        # Requests that arrived before the signal finish, including those still being
        # read or parsed; later ones are answered 503 meanwhile.
        while state.http_in_flight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(DRAIN_POLL_S)
        if state.http_in_flight:
            log.warning("drain timeout: %d requests still in flight", state.http_in_flight)
        self.should_exit = True

    def fail(self, reason: str) -> None:
        self.exit_code = 1
        self.should_exit = True


def serve(settings: Settings) -> int:
    holder: dict[str, DrainingServer] = {}
    app = create_app(settings, on_fatal=lambda reason: holder["server"].fail(reason))
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=int(settings.drain_timeout_s) + 5,
    )
    server = DrainingServer(config, settings, app.state.service)
    holder["server"] = server
    server.run()
    return server.exit_code
