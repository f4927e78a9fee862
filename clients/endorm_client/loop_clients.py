"""One AsyncRewardClient per event loop, closed when that loop shuts down.

httpx binds an async client's connection pool to the loop it was first used on, so adapters that
trainers call from several loops (verl's reward loop workers, or ``asyncio.run`` per batch) need a
client per loop; each is closed when its loop ends (``asyncio.run`` and ``loop.shutdown_asyncgens()``
finalize the async generator that holds it), so no connection outlives its loop.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Callable

from endorm_client.client import AsyncRewardClient


async def _lifetime(client: AsyncRewardClient) -> AsyncIterator[None]:
    try:
        yield
    finally:  # run by the loop's shutdown_asyncgens (or its async-generator finalizer)
        await client.aclose()


class PerLoopClients:
    """``await clients.get()``: the client of the running loop, made on first use by ``factory``."""

    def __init__(self, factory: Callable[[], AsyncRewardClient]) -> None:
        self._factory = factory
        self._by_loop: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[AsyncRewardClient, AsyncIterator[None]]
        ]
        self._by_loop = weakref.WeakKeyDictionary()

    async def get(self) -> AsyncRewardClient:
        loop = asyncio.get_running_loop()
        if loop not in self._by_loop:
            client = self._factory()
            lifetime = _lifetime(client)
            await lifetime.__anext__()  # started: the loop now finalizes it when it shuts down
            self._by_loop[loop] = (client, lifetime)
        return self._by_loop[loop][0]
