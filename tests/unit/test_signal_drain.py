"""SIGTERM's handler only hands the signal to the event loop (issue 19): uvicorn installs it with
``signal.signal``, so it runs between two bytecodes of whatever the main thread was doing, and creating
a task there could run inside the loop's own bookkeeping."""

from __future__ import annotations

import asyncio
import signal

import uvicorn

from endorm_server.config import Settings
from endorm_server.core.admission import AdmissionController
from endorm_server.http.metrics import Metrics
from endorm_server.http.server import DrainingServer
from endorm_server.http.state import ServiceState


def _server() -> tuple[DrainingServer, ServiceState]:
    settings = Settings(drain_timeout_s=600)
    state = ServiceState(settings=settings, metrics=Metrics(), admission=AdmissionController(100, 1.0), api_keys=[])
    config = uvicorn.Config(app=lambda *a: None)
    return DrainingServer(config, settings, state), state


def test_signal_is_handed_to_the_loop_and_drains_there():
    server, state = _server()
    loop = asyncio.new_event_loop()
    try:
        server._loop = loop
        state.http_in_flight = 1  # one request in flight: the drain waits for it
        server.handle_exit(signal.SIGTERM, None)  # as from the signal handler: no loop running here
        assert server._drain_task is None and not state.draining and not server.should_exit

        async def until_draining() -> None:
            while not state.draining:
                await asyncio.sleep(0)

        loop.run_until_complete(asyncio.wait_for(until_draining(), 600))
        assert server._drain_task is not None and not server.should_exit  # waiting for the request
        state.http_in_flight = 0
        loop.run_until_complete(asyncio.wait_for(server._drain_task, 600))
        assert server.should_exit and not server.force_exit
    finally:
        loop.close()


def test_second_signal_exits_at_once():
    server, _ = _server()
    loop = asyncio.new_event_loop()
    try:
        server._loop = loop
        server.handle_exit(signal.SIGTERM, None)
        server.handle_exit(signal.SIGTERM, None)
        assert server.should_exit and server.force_exit
    finally:
        loop.close()


def test_signal_before_serving_just_exits():
    server, state = _server()
    server.handle_exit(signal.SIGTERM, None)
    assert server.should_exit and not state.draining
