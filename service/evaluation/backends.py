"""Where ``endorm eval`` gets its scores: an in-process Scorer or a running server.

Both take score items in the service's request form (``messages`` or ``prompt``,
optional ``system``, ``response``) and return, per aggregation, one score per item.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol, Sequence

from service import rewards, steps


class Backend(Protocol):
    model_name: str

    async def score(self, items: Sequence[dict[str, Any]], aggregations: Sequence[str]) -> dict[str, list[float]]: ...

    async def close(self) -> None: ...


class InProcessBackend:
    """A :class:`~service.scorer.Scorer` in this process: one forward pass per item,
    every aggregation computed from the same per-token rewards."""

    def __init__(self, scorer) -> None:
        self.scorer = scorer
        self.model_name = scorer.model_name

    @classmethod
    async def start(cls, settings) -> "InProcessBackend":
        from service.scorer import Scorer

        return cls(await Scorer.start(settings))

    async def score(self, items: Sequence[dict[str, Any]], aggregations: Sequence[str]) -> dict[str, list[float]]:
        from service.scorer import ScoreOptions

        scored = await self.scorer.score(list(items), ScoreOptions(aggregation=aggregations[0]))
        return {agg: [steps.aggregate_steps(s.steps or [], agg) if agg in steps.STEP_AGGREGATIONS
                      else rewards.aggregate(s.token_rewards, agg) for s in scored] for agg in aggregations}

    async def close(self) -> None:
        await self.scorer.shutdown()


class ServerError(RuntimeError):
    pass


class HttpBackend:
    """``POST /score`` on a running ``endorm serve`` (plain httpx; one request per
    aggregation and chunk; 429 / 503 are retried after their ``Retry-After``)."""

    def __init__(self, base_url: str, api_key: str | None = None, *, timeout_s: float = 300.0,
                 max_retries: int = 20, client=None) -> None:
        import httpx

        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self.client = client or httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=timeout_s)
        self.max_retries = max_retries
        self.model_name = base_url

    async def start(self) -> "HttpBackend":
        """Check the server answers and learn the model's name."""
        resp = await self.client.get("/v1/models")
        if resp.status_code != 200:
            raise ServerError(f"{self.base_url}/v1/models answered {resp.status_code}: {resp.text[:300]}")
        body = resp.json()
        data = body.get("data") if isinstance(body, dict) else None
        if isinstance(data, list) and data and isinstance(data[0], dict) and data[0].get("id"):
            self.model_name = str(data[0]["id"])
        return self

    async def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        for attempt in range(self.max_retries + 1):
            resp = await self.client.post("/score", json=body)
            if resp.status_code in (429, 503) and attempt < self.max_retries:
                try:
                    wait = float(resp.headers.get("retry-after", "1"))
                except ValueError:
                    wait = 1.0
                await asyncio.sleep(min(max(wait, 0.1), 30.0))
                continue
            if resp.status_code != 200:
                raise ServerError(f"POST {self.base_url}/score answered {resp.status_code}: {resp.text[:500]}")
            return resp.json()
        raise AssertionError("unreachable")

    async def score(self, items: Sequence[dict[str, Any]], aggregations: Sequence[str]) -> dict[str, list[float]]:
        out = {}
        for agg in aggregations:
            body = await self._post({"items": list(items), "aggregation": agg})
            results = body["results"]
            if len(results) != len(items):
                raise ServerError(f"asked for {len(items)} scores, got {len(results)}")
            out[agg] = [float(r["score"]) for r in results]
        return out

    async def close(self) -> None:
        await self.client.aclose()
