"""Admission control: bound the tokens in flight, and the wait for room.

A request asks for the tokens it will put into the engine. It is admitted
when they fit under ``max_tokens`` (a request larger than the whole budget is
admitted alone, when nothing else runs) and nobody is waiting ahead of it.
Otherwise it waits, at most ``max_wait_s`` and behind at most ``max_waiting``
others; past either bound it is rejected at once, so the queue never grows
without bound and admitted requests keep a bounded latency.

Admission is first come, first served: a small request that would fit does not
pass a large one already waiting, so a GRPO batch cannot be starved into a 429
by a stream of small requests.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class Overloaded(Exception):
    """No room within the bounded wait (HTTP 429)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"server overloaded ({reason}); retry later")
        self.reason = reason


class Draining(Exception):
    """The server is shutting down (HTTP 503)."""


class AdmissionController:
    def __init__(self, max_tokens: int, max_wait_s: float, max_waiting: int = 256) -> None:
        self.max_tokens = max_tokens
        self.max_wait_s = max_wait_s
        self.max_waiting = max_waiting
        self.tokens = 0
        self.requests = 0
        self.waiting = 0
        self.draining = False
        self._changed = asyncio.Condition()
        self._queue: deque[object] = deque()  # one ticket per waiting request, in arrival order

    def _fits(self, tokens: int) -> bool:
        return self.tokens + tokens <= self.max_tokens or self.requests == 0

    @asynccontextmanager
    async def admit(self, tokens: int, *, exempt_from_drain: bool = False) -> AsyncIterator[float]:
        """Hold ``tokens`` of the budget for the body of the ``async with``; yields the wait in seconds.

        ``exempt_from_drain``: the request arrived before draining began, so it still runs.
        """
        if self.draining and not exempt_from_drain:
            raise Draining("server is draining")
        start = time.monotonic()
        async with self._changed:
            if self._queue or not self._fits(tokens):
                if self.max_wait_s <= 0 or self.waiting >= self.max_waiting:
                    raise Overloaded("queue_full" if self.max_wait_s > 0 else "tokens")
                ticket = object()
                self._queue.append(ticket)
                self.waiting += 1
                try:
                    # asyncio.timeout, not wait_for: wait_for runs the wait in a task of its own, and a
                    # request cancelled (disconnect, deadline) while wait_for cancels that task on the
                    # timeout left it to re-take the lock after we let go: held for good, every later
                    # admission hung (issue 11). Here the wait re-takes the lock in this task.
                    async with asyncio.timeout(self.max_wait_s):
                        await self._changed.wait_for(lambda: self._queue[0] is ticket and self._fits(tokens))
                except TimeoutError:
                    raise Overloaded("wait_timeout") from None
                finally:  # admitted, timed out or cancelled: the next in line may go now
                    self._queue.remove(ticket)
                    self.waiting -= 1
                    self._changed.notify_all()
            self.tokens += tokens
            self.requests += 1
        try:
            yield time.monotonic() - start
        finally:
            async with self._changed:
                self.tokens -= tokens
                self.requests -= 1
                self._changed.notify_all()

    async def start_draining(self) -> None:
        """Turn away new requests; those already waiting keep their place."""
        self.draining = True
        async with self._changed:
            self._changed.notify_all()
