"""Run a request's work until it finishes, the client disconnects, or the deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request

from endorm_server.errors import RequestError

T = TypeVar("T")


class ClientDisconnected(Exception):
    pass


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def run_bounded(request: Request, work: Awaitable[T], timeout_s: float) -> T:
    """Await ``work``; cancel it (which aborts its engine requests) on disconnect or timeout."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    if watcher in done:
        raise ClientDisconnected
    raise RequestError(f"request did not finish within {timeout_s:g} s", status=504, code="deadline_exceeded")
