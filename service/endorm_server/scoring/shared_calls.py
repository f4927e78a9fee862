"""Identical engine calls in flight at the same time run once (a single flight per key).

GRPO groups often hold identical answers, and trainers re-send what timed out: two requests asking
the engine for the same token sequence with the same options, while the first is still running,
share its result instead of computing it twice. The call runs in a task of its own and is cancelled
only when every caller waiting for it has gone, so one client hanging up never fails another.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class SharedCalls(Generic[T]):
    def __init__(self) -> None:
        self._running: dict[Hashable, tuple[asyncio.Task[T], list[int]]] = {}

    def running(self, key: Hashable) -> bool:
        return key in self._running

    async def run(self, key: Hashable, call: Callable[[], Awaitable[T]]) -> T:
        entry = self._running.get(key)
        if entry is None:
            task = asyncio.ensure_future(call())
            entry = (task, [0])
            self._running[key] = entry
            task.add_done_callback(functools.partial(self._forget, key, entry))
        task, waiters = entry
        waiters[0] += 1
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if waiters[0] == 1 and not task.done():  # the last one waiting: nobody wants it any more
                task.cancel()
            raise
        finally:
            waiters[0] -= 1

    def _forget(self, key: Hashable, entry: tuple[asyncio.Task[T], list[int]], _task: object) -> None:
        if self._running.get(key) is entry:
            del self._running[key]
