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
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from endorm_server.errors import RequestError

RETRY_AFTER_S = 1


class Overloaded(RequestError):
    """No room within the bounded wait (HTTP 429); ``reason`` is tokens, queue_full or wait_timeout."""

    def __init__(self, reason: str, retry_after_s: int = RETRY_AFTER_S) -> None:
        super().__init__(
            f"server overloaded ({reason}); retry later",
            status=429,
            code="overloaded",
            headers={"Retry-After": str(retry_after_s)},
        )
        self.reason = reason


class Draining(RequestError):
    """The server is shutting down (HTTP 503): retry on another replica."""

    reason = "draining"

    def __init__(
        self, message: str = "server is shutting down; retry on another replica", retry_after_s: int = RETRY_AFTER_S
    ) -> None:
        super().__init__(message, status=503, code="draining", headers={"Retry-After": str(retry_after_s)})


class AdmissionController:
    def __init__(
        self, max_tokens: int, max_wait_s: float, max_waiting: int = 256, retry_after_s: int = RETRY_AFTER_S
    ) -> None:
        self.retry_after_s = retry_after_s
        self.max_tokens = max_tokens
        self.max_wait_s = max_wait_s
        self.max_waiting = max_waiting
        self.tokens = 0
        self.requests = 0
        self.waiting = 0
        self.draining = False
        self.on_change: Callable[[], None] | None = None  # e.g. the HTTP front's gauges
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
            raise Draining(retry_after_s=self.retry_after_s)
        start = time.monotonic()
        async with self._changed:
            if self._queue or not self._fits(tokens):
                if self.max_wait_s <= 0 or self.waiting >= self.max_waiting:
                    raise Overloaded("queue_full" if self.max_wait_s > 0 else "tokens", self.retry_after_s)
                ticket = object()
                self._queue.append(ticket)
                self.waiting += 1
                try:
                    # asyncio.timeout, not wait_for: wait_for runs the wait in a task of its own, and a
                    # request cancelled (disconnect, deadline) while wait_for cancels that task on the
                    # timeout left it to re-take the lock after we let go: held for good, every later
                    # admission hung. Here the wait re-takes the lock in this task.
                    async with asyncio.timeout(self.max_wait_s):
                        await self._changed.wait_for(lambda: self._queue[0] is ticket and self._fits(tokens))
                except TimeoutError:
                    raise Overloaded("wait_timeout", self.retry_after_s) from None
                finally:  # admitted, timed out or cancelled: the next in line may go now
                    self._queue.remove(ticket)
                    self.waiting -= 1
                    self._changed.notify_all()
            self.tokens += tokens
            self.requests += 1
        self._notify()
        try:
            yield time.monotonic() - start
        finally:
            async with self._changed:
                self.tokens -= tokens
                self.requests -= 1
                self._changed.notify_all()
            self._notify()

    def _notify(self) -> None:
        if self.on_change is not None:
            self.on_change()

    async def start_draining(self) -> None:
        """Turn away new requests; those already waiting keep their place."""
        self.draining = True
        async with self._changed:
            self._changed.notify_all()
