"""``Idempotency-Key``: a trainer's retry of a scoring request is answered from the first answer.

Trainers time out and re-send as a matter of course. A POST carrying ``Idempotency-Key`` is keyed by
it: a repeat with the same method, path, query and body within the TTL gets the stored 200 answer
byte for byte (``Idempotent-Replayed: true``) and computes nothing; a repeat that arrives while the
first is still running waits for it instead of running twice; the same key with another request is a
422 ``idempotency_key_reused``. Only 200 answers are stored: an error is recomputed on retry. The
store is per replica, bounded in entries and bytes (least recently used goes first) and by a TTL.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from endorm_server.http.errors import error_response

HEADER = b"idempotency-key"
_KEY = re.compile(rb"[\x21-\x7e]{1,255}")  # visible ASCII


@dataclass
class Stored:
    fingerprint: bytes  # sha256 of method, path, query and body
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    expires_at: float


class IdempotencyStore:
    def __init__(
        self, max_entries: int, max_bytes: int, ttl_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_entries, self.max_bytes, self.ttl_s, self.clock = max_entries, max_bytes, ttl_s, clock
        self._entries: OrderedDict[bytes, Stored] = OrderedDict()
        self._running: dict[bytes, tuple[bytes, asyncio.Future[None]]] = {}
        self.bytes = 0
        self._next_sweep = 0.0
        self.hits = 0  # answers replayed
        self.waits = 0  # repeats that waited for the first
        self.evictions = 0  # entries dropped for room (not for age)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> Stored | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires_at <= self.clock():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry

    def put(self, key: bytes, entry: Stored) -> None:
        self._sweep()
        if key in self._entries:
            self._drop(key)
        if len(entry.body) > self.max_bytes or self.max_entries <= 0:
            return  # larger than the whole store: not kept
        self._entries[key] = entry
        self.bytes += len(entry.body)
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))
            self.evictions += 1

    def _sweep(self) -> None:
        """Drop expired answers, at most once a tenth of the TTL (a pass over the store)."""
        now = self.clock()
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.ttl_s / 10
        for key in [k for k, e in self._entries.items() if e.expires_at <= now]:
            self._drop(key)

    def _drop(self, key: bytes) -> None:
        self.bytes -= len(self._entries.pop(key).body)


class IdempotencyMiddleware:
    def __init__(self, app: ASGIApp, store: IdempotencyStore) -> None:
        self.app = app
        self.store = store

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = dict(scope.get("headers", ())).get(HEADER) if scope["type"] == "http" else None
        if key is None or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        if not _KEY.fullmatch(key):
            bad = error_response(
                422, "Idempotency-Key must be 1 to 255 visible ASCII characters", code="invalid_idempotency_key"
            )
            return await bad(scope, receive, send)
        body = await _read_body(receive)
        if body is None:
            return  # the client went away before sending its body
        fingerprint = _fingerprint(scope, body)
        store = self.store
        while True:
            stored = store.get(key)
            if stored is not None:
                if stored.fingerprint != fingerprint:
                    return await _reused(scope, receive, send)
                store.hits += 1
                return await _replay(stored, send)
            running = store._running.get(key)
            if running is None:
                break
            if running[0] != fingerprint:
                return await _reused(scope, receive, send)
            store.waits += 1
            await asyncio.shield(running[1])  # then replay it, or run it ourselves if it was not stored
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        store._running[key] = (fingerprint, done)
        try:
            await self._run_and_keep(scope, _replaying(body, receive), send, key, fingerprint)
        finally:
            del store._running[key]
            done.set_result(None)

    async def _run_and_keep(self, scope: Scope, receive: Receive, send: Send, key: bytes, fingerprint: bytes) -> None:
        status, headers, chunks = 0, [], []

        async def keep(message: Message) -> None:
            nonlocal status, headers
            if message["type"] == "http.response.start":
                status, headers = message["status"], list(message.get("headers", []))
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False) and status == 200:
                    stored = Stored(
                        fingerprint, status, headers, b"".join(chunks), self.store.clock() + self.store.ttl_s
                    )
                    self.store.put(key, stored)
            await send(message)

        await self.app(scope, receive, keep)


async def _read_body(receive: Receive) -> bytes | None:
    """The whole body (the body-size limit and deadline run before this); None if the client left."""
    parts = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)


def _replaying(body: bytes, receive: Receive) -> Receive:
    """The body once, then the client's own messages (so a disconnect still reaches the app)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _fingerprint(scope: Scope, body: bytes) -> bytes:
    h = hashlib.sha256()
    for part in (scope["method"].encode(), scope["path"].encode(), scope.get("query_string", b""), body):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.digest()


async def _replay(stored: Stored, send: Send) -> None:
    headers = [(k, v) for k, v in stored.headers if k.lower() != b"x-request-id"]
    headers.append((b"idempotent-replayed", b"true"))
    await send({"type": "http.response.start", "status": stored.status, "headers": headers})
    await send({"type": "http.response.body", "body": stored.body, "more_body": False})


async def _reused(scope: Scope, receive: Receive, send: Send) -> None:
    reused = error_response(
        422,
        "this Idempotency-Key was used for another request: send a new key for a new request",
        param="Idempotency-Key",
        code="idempotency_key_reused",
    )
    await reused(scope, receive, send)


class IdempotencyCollector(Collector):
    """The store's counters at scrape time (the store itself stays free of prometheus_client state)."""

    def __init__(self, store: IdempotencyStore) -> None:
        self.store = store

    def collect(self):
        s = self.store
        yield CounterMetricFamily(
            "endorm_idempotent_replays", "Answers replayed for a repeated Idempotency-Key", value=s.hits
        )
        yield CounterMetricFamily(
            "endorm_idempotent_waits", "Repeats that waited for the first request with their key", value=s.waits
        )
        yield CounterMetricFamily(
            "endorm_idempotency_evictions", "Stored answers dropped for room (entries or bytes)", value=s.evictions
        )
        yield GaugeMetricFamily("endorm_idempotency_entries", "Answers in the idempotency store", value=len(s))
        yield GaugeMetricFamily("endorm_idempotency_bytes", "Bytes of answers in the idempotency store", value=s.bytes)
