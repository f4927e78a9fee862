"""Where a batch request goes: the server's own app in this process, or a deployed fleet over HTTP.

``InProcessApp`` builds the app ``endorm serve`` serves (``create_app`` with the same Settings), starts
its lifespan (the real engine) and sends each request through ``httpx.ASGITransport``: the answer is
the one the HTTP server would give, byte for byte. A 429 (the admission budget is full: the window
is ahead of the engine) is retried after a short backoff, which changes no result.

``Fleet`` sends each request to running servers with the SDK (retries, failover, and prompt
affinity: a request goes to the replica that has its prompt cached).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from endorm_server.batch.requests import BatchRequest
from endorm_server.config import Settings

BACKOFF_START_S = 0.02
BACKOFF_MAX_S = 0.5
READY_POLL_S = 0.1
FLEET_BUSY_S = 600.0  # a fleet answering 429/503 this long after the SDK's retries stops the run
UNAVAILABLE_RETRIES = 200  # 503s in a row (engine restarting) before the answer is written as it is


class EngineFailed(RuntimeError):
    """The engine did not start or died: the run stops, a rerun resumes where it stopped."""


@dataclass(frozen=True)
class Reply:
    status_code: int
    request_id: str | None
    body: Any


class Backend(Protocol):
    async def send(self, request: BatchRequest) -> Reply: ...


def _body(resp: httpx.Response) -> Any:
    try:
        return resp.json() if resp.content else None
    except ValueError:
        return {"error": {"type": "invalid_response", "code": "invalid_response", "message": resp.text[:500]}}


class InProcessApp:
    """``async with InProcessApp(settings) as app: await app.send(request)``."""

    def __init__(self, settings: Settings, *, ready_timeout_s: float = 3600.0) -> None:
        self.settings = settings
        self.ready_timeout_s = ready_timeout_s
        self._fatal: str | None = None
        self._lifespan: Any = None
        self._client: httpx.AsyncClient | None = None
        keys = settings.api_keys  # the app checks them as it would over HTTP: send the first
        self._auth = {"authorization": f"Bearer {keys[0].get_secret_value()}"} if keys else {}

    def _on_fatal(self, reason: str) -> None:
        self._fatal = reason

    async def __aenter__(self) -> InProcessApp:
        from endorm_server.http.app import create_app

        app = create_app(self.settings, on_fatal=self._on_fatal)
        self._lifespan = app.router.lifespan_context(app)
        await self._lifespan.__aenter__()
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)  # a crash is a 500 line, not ours
        self._client = httpx.AsyncClient(transport=transport, base_url="http://endorm-batch", timeout=None)
        try:
            await self._wait_ready()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def _wait_ready(self) -> None:
        assert self._client is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ready_timeout_s
        while (await self._client.get("/ready")).status_code != 200:
            if self._fatal is not None:
                raise EngineFailed(self._fatal)
            if loop.time() > deadline:
                raise EngineFailed(f"engine not ready within {self.ready_timeout_s:g} s")
            await asyncio.sleep(READY_POLL_S)

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        if self._lifespan is not None:
            lifespan, self._lifespan = self._lifespan, None
            await lifespan.__aexit__(None, None, None)

    async def get(self, path: str) -> Any:
        assert self._client is not None
        return _body(await self._client.get(path))

    async def send(self, request: BatchRequest) -> Reply:
        assert self._client is not None
        content = json.dumps(request.body).encode()
        headers = {"content-type": "application/json", **self._auth}
        delay, unavailable = BACKOFF_START_S, 0
        while True:
            resp = await self._client.post(request.target, content=content, headers=headers)
            if self._fatal is not None:
                raise EngineFailed(self._fatal)
            retry = resp.status_code == 429 or (resp.status_code == 503 and unavailable < UNAVAILABLE_RETRIES)
            if not retry:
                return Reply(resp.status_code, resp.headers.get("x-request-id"), _body(resp))
            unavailable += resp.status_code == 503
            await asyncio.sleep(delay)
            delay = min(BACKOFF_MAX_S, delay * 2)


def affinity_key(request: BatchRequest) -> str | None:
    """The SDK's prompt key of the request's first prompt (the replica that has it cached)."""
    from endorm_client.affinity import prompt_key

    body = request.body if isinstance(request.body, dict) else {}
    if request.route == "/score":
        items = body.get("items")
        first = items[0] if isinstance(items, list) and items and isinstance(items[0], dict) else None
        return prompt_key(first) if first else None
    if request.route == "/compare":
        return prompt_key(body)
    if request.route == "/get_reward":
        prompts = body.get("prompts")
        return prompt_key({"prompt": prompts[0]}) if isinstance(prompts, list) and prompts else None
    return None


class Fleet:
    """Deployed servers through the SDK (``--endpoint URL`` one or more times)."""

    def __init__(
        self, urls: Sequence[str], *, api_key: str | None = None, max_in_flight: int = 256, max_retries: int = 8
    ) -> None:
        from endorm_client import AsyncRewardClient

        limits = httpx.Limits(max_connections=max_in_flight, max_keepalive_connections=max_in_flight)
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(600.0, connect=10.0), limits=limits)
        self.client = AsyncRewardClient(list(urls), api_key=api_key, http_client=self._http, max_retries=max_retries)

    async def __aenter__(self) -> Fleet:
        await self.client.wait_ready()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    async def get(self, path: str) -> Any:
        return _body(await self.client.request("GET", path))

    async def send(self, request: BatchRequest) -> Reply:
        from endorm_client import APIStatusError

        key = affinity_key(request)
        loop = asyncio.get_running_loop()
        give_up = loop.time() + FLEET_BUSY_S
        delay = 1.0
        while True:
            try:
                resp = await self.client.request("POST", request.target, json=request.body, affinity=key)
            except APIStatusError as exc:
                # overloaded or unavailable past the SDK's own retries: wait, it is a batch; other errors
                # are the server's answer, kept as the line's
                if exc.status_code in (429, 503) and loop.time() < give_up:
                    await asyncio.sleep(delay)
                    delay = min(30.0, delay * 2)
                    continue
                if exc.status_code in (429, 503):
                    raise EngineFailed(f"the fleet stayed unavailable for {FLEET_BUSY_S:g} s: {exc}") from exc
                return Reply(exc.status_code, exc.request_id, exc.body)
            return Reply(resp.status_code, resp.headers.get("x-request-id"), _body(resp))
