"""Where ``endorm eval`` gets its scores: an in-process Scorer or a running server.

Both take score items in the service's request form (``messages`` or ``prompt``,
optional ``system``, ``response``) and return, per aggregation, one score per item.
Both score each response ONCE whatever the number of aggregations: every aggregation is
computed from the same per-token rewards r_h and log-probs log pi(a_h|s_h).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol, Sequence, cast

import numpy as np

from endorm_server.scoring import rewards, steps
from endorm_server.scoring.aggregations import Aggregation, Terminal


@dataclass(frozen=True)
class Discount:
    """The options of the ``discounted`` aggregation (w_h = max(gamma^h, beta)) and V(s_H)."""

    gamma: float = 1.0
    beta: float = 0.0
    terminal: str = "zero"
    contrast: bool = False  # score r(criteria) - r(baseline) (scoring/contrast.py); items need messages + system
    baseline_system: str | None = None


def all_aggregations(
    tr: rewards.TokenRewards, aggregations: Sequence[str], d: Discount, item_steps: Sequence[steps.Step] | None = None
) -> dict[str, float]:
    """Every asked aggregation from one response's per-token rewards (and its steps, if given as steps)."""
    return {
        agg: steps.aggregate_steps(item_steps or [], agg)
        if agg in steps.STEP_AGGREGATIONS
        else rewards.aggregate(tr, agg, gamma=d.gamma, beta=d.beta)
        for agg in aggregations
    }


class Backend(Protocol):
    model_name: str
    system_fingerprint: str | None  # keys the score cache: the same model, alpha, dtype and engine

    async def score(self, items: Sequence[dict[str, Any]], aggregations: Sequence[str]) -> dict[str, list[float]]: ...

    async def close(self) -> None: ...


class InProcessBackend:
    """A :class:`~endorm_server.core.scorer.Scorer` in this process: one forward pass per item,
    every aggregation computed from the same per-token rewards."""

    def __init__(self, scorer, discount: Discount = Discount()) -> None:
        self.scorer = scorer
        self.discount = discount
        self.model_name = scorer.model_name
        self.system_fingerprint: str | None = scorer.system_fingerprint

    @classmethod
    async def start(cls, settings, discount: Discount = Discount()) -> InProcessBackend:
        from endorm_server.core.scorer import Scorer

        return cls(await Scorer.start(settings), discount)

    async def score(self, items: Sequence[dict[str, Any]], aggregations: Sequence[str]) -> dict[str, list[float]]:
        from endorm_server.core.scorer import ScoreOptions

        d = self.discount
        options = ScoreOptions(
            aggregation=cast(Aggregation, aggregations[0]),
            gamma=d.gamma,
            beta=d.beta,
            terminal=cast(Terminal, d.terminal),
        )
        scored = await self.scorer.score(list(items), options, contrast=d.contrast, baseline_system=d.baseline_system)
        per_item = [all_aggregations(s.token_rewards, aggregations, d, s.steps) for s in scored]
        return {agg: [p[agg] for p in per_item] for agg in aggregations}

    async def close(self) -> None:
        await self.scorer.shutdown()


class ServerError(RuntimeError):
    pass


class HttpBackend:
    """``POST /score`` on a running ``endorm serve`` (plain httpx; one request per chunk;
    429 / 503 are retried after their ``Retry-After``). With several aggregations the
    request asks for the per-token rewards and log-probs and every aggregation is computed
    here from them, so each response is still scored once."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout_s: float = 300.0,
        max_retries: int = 20,
        client=None,
        discount: Discount = Discount(),
    ) -> None:
        self.discount = discount
        import httpx

        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self.client = client or httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=timeout_s)
        self.max_retries = max_retries
        self.model_name = base_url
        self.system_fingerprint: str | None = None  # from /v1/models at start()

    async def start(self) -> HttpBackend:
        """Check the server answers and learn the model's name."""
        resp = await self.client.get("/v1/models")
        if resp.status_code != 200:
            raise ServerError(f"{self.base_url}/v1/models answered {resp.status_code}: {resp.text[:300]}")
        body = resp.json()
        data = body.get("data") if isinstance(body, dict) else None
        if isinstance(data, list) and data and isinstance(data[0], dict) and data[0].get("id"):
            self.model_name = str(data[0]["id"])
            self.system_fingerprint = data[0].get("system_fingerprint") or None
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
        d = self.discount
        body = await self._post(
            {
                "items": list(items),
                "aggregation": aggregations[0],
                "gamma": d.gamma,
                "beta": d.beta,
                "terminal": d.terminal,
                "return_tokens": len(aggregations) > 1,
                **({"contrast": True, "baseline_system": d.baseline_system} if d.contrast else {}),
            }
        )
        results = body["results"]
        if len(results) != len(items):
            raise ServerError(f"asked for {len(items)} scores, got {len(results)}")
        if len(aggregations) == 1:
            return {aggregations[0]: [float(r["score"]) for r in results]}
        per_item = []
        for r in results:
            toks = r.get("tokens") or []
            tr = rewards.TokenRewards(
                rewards=np.array([t["reward"] for t in toks], dtype=np.float64),
                logprobs=np.array([t["logprob"] for t in toks], dtype=np.float64),
                v0=float("nan"),
            )  # V(s_0) is not needed by any aggregation
            item_steps = [
                steps.Step(start=st["start"], end=st["end"], reward=float(st["reward"]), logprob=float(st["logprob"]))
                for st in (r.get("steps") or [])
            ]
            per_item.append(all_aggregations(tr, aggregations, d, item_steps or None))
        return {agg: [p[agg] for p in per_item] for agg in aggregations}

    async def close(self) -> None:
        await self.client.aclose()
