"""Throughput drivers: the same workload through each route, timed side by side.

A workload is a list of token sequences grouped into requests of ``items`` sequences
with ``concurrency`` requests in flight (a new one starts as soon as one ends), the
way a trainer's scoring client keeps the service saturated. Every driver gets the
same grouping:

- ``http``:    POST /score to a real ``endorm serve`` (prompt_ids / response_ids)
- ``inproc``:  the same plugin engine (``VllmEngine``) driven in-process, no HTTP
- ``stock0``:  stock vLLM (``runner="generate"``), ``prompt_logprobs=0``: chosen-token
               log-probs only (no value terms)
- ``stockfull``: stock vLLM, ``prompt_logprobs=-1`` with ``max_logprobs=-1``: the whole
               vocabulary per position, the only stock way to the exact logsumexp
- ``naive``:   transformers forward, full [T, V] logits, log_softmax (sequential, batch 1),
               as paper re-implementations do
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import random
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Sequence

import numpy as np

RESERVED_IDS = 16


@dataclass(frozen=True)
class Workload:
    seqs: tuple[tuple[int, ...], ...]
    prompt_len: int  # the HTTP driver splits each sequence here into prompt_ids / response_ids
    items: int  # sequences per request
    concurrency: int  # requests in flight

    @classmethod
    def random(
        cls, *, n: int, prompt_len: int, response_len: int, vocab_size: int, items: int, concurrency: int, seed: int = 0
    ) -> Workload:
        rng = random.Random(seed)
        seqs = tuple(
            tuple(rng.randrange(RESERVED_IDS, vocab_size) for _ in range(prompt_len + response_len)) for _ in range(n)
        )
        return cls(seqs, prompt_len, items, concurrency)

    @property
    def tokens(self) -> int:
        return sum(len(s) for s in self.seqs)

    def requests(self) -> list[tuple[tuple[int, ...], ...]]:
        return [self.seqs[i : i + self.items] for i in range(0, len(self.seqs), self.items)]

    def describe(self) -> str:
        return (
            f"{len(self.seqs)} sequences x {len(self.seqs[0])} tokens (prompt {self.prompt_len}), "
            f"{self.items} per request, {self.concurrency} requests in flight"
        )


async def run_requests(workload: Workload, send: Callable[[tuple], Awaitable[None]]) -> float:
    """Send every request, ``concurrency`` at a time; return the wall time in seconds."""
    queue = list(workload.requests())
    it = iter(queue)
    lock = asyncio.Lock()

    async def worker():
        while True:
            async with lock:
                req = next(it, None)
            if req is None:
                return
            await send(req)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(workload.concurrency, len(queue)))))
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------- drivers


class Driver:
    name = "driver"

    async def start(self) -> None: ...

    async def run(self, workload: Workload) -> float:
        raise NotImplementedError

    async def close(self) -> None: ...


class InprocDriver(Driver):
    """The plugin engine in-process: ``VllmEngine.token_stats`` per sequence, no HTTP."""

    name = "inproc"

    def __init__(self, settings, model_path: str) -> None:
        self.settings, self.model_path = settings, model_path
        self.engine = None

    async def start(self) -> None:
        from endorm_server.engine.vllm_engine import VllmEngine

        self.engine = VllmEngine(self.settings, self.model_path)
        await self.engine.start()

    async def stats(self, seq: Sequence[int]):
        return await self.engine.token_stats(list(seq))

    async def run(self, workload: Workload) -> float:
        async def send(req):
            await asyncio.gather(*(self.engine.token_stats(list(s)) for s in req))

        return await run_requests(workload, send)

    async def close(self) -> None:
        if self.engine is not None:
            await self.engine.shutdown()
            self.engine = None


class HttpDriver(Driver):
    """POST /score to a running server, prompt_ids / response_ids, optional per-token output."""

    def __init__(self, url: str, api_key: str = "", *, return_tokens: bool = False) -> None:
        self.url, self.api_key, self.return_tokens = url, api_key, return_tokens
        self.name = "http+tokens" if return_tokens else "http"
        self.client = None

    async def start(self) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self.client = httpx.AsyncClient(
            base_url=self.url,
            headers=headers,
            timeout=600,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
        )

    async def run(self, workload: Workload) -> float:
        p = workload.prompt_len

        async def send(req):
            body = {
                "items": [{"prompt_ids": list(s[:p]), "response_ids": list(s[p:])} for s in req],
                "return_tokens": self.return_tokens,
            }
            resp = await self.client.post("/score", json=body)
            if resp.status_code != 200:
                raise RuntimeError(f"/score answered {resp.status_code}: {resp.text[:300]}")
            if len(resp.json()["results"]) != len(req):
                raise RuntimeError("wrong number of results")

        return await run_requests(workload, send)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None


def stock_engine_args(plugin_args, *, max_logprobs: int = -1):
    """Stock vLLM engine args with the plugin engine's scheduler/cache settings, sampling runner."""
    return dataclasses.replace(
        plugin_args,
        runner="generate",
        hf_overrides={},  # the model's own *ForCausalLM
        max_logprobs=max_logprobs,
        enable_prefix_caching=False,  # pooling requests bypass the prefix cache: compare like with like
    )


class StockVllm:
    """One stock AsyncLLM (runner=generate, max_logprobs=-1) shared by the two stock routes."""

    def __init__(self, engine_args) -> None:
        self.engine_args = engine_args
        self.engine = None
        self._ids = itertools.count()

    async def start(self) -> None:
        from vllm.v1.engine.async_llm import AsyncLLM

        self.engine = AsyncLLM.from_engine_args(self.engine_args)

    async def prompt_logprobs(self, seq: Sequence[int], k: int):
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(max_tokens=1, prompt_logprobs=k, detokenize=False, temperature=0.0)
        final = None
        async for out in self.engine.generate(
            TokensPrompt(prompt_token_ids=list(seq)), params, request_id=f"stock-{next(self._ids)}"
        ):
            final = out
        return final

    def close(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None


class StockDriver(Driver):
    def __init__(self, stock: StockVllm, k: int) -> None:
        self.stock, self.k = stock, k
        self.name = "stock0" if k == 0 else "stockfull"

    async def run(self, workload: Workload) -> float:
        async def send(req):
            outs = await asyncio.gather(*(self.stock.prompt_logprobs(s, self.k) for s in req))
            for s, out in zip(req, outs):  # the route produced what it promises
                if out is None or len(out.prompt_logprobs) != len(s):
                    raise RuntimeError("stock vLLM returned no prompt logprobs")

        return await run_requests(workload, send)


class NaiveDriver(Driver):
    """transformers forward, full logits, log_softmax, logsumexp: one sequence at a time."""

    name = "naive"

    def __init__(self, model_path: str, dtype: str = "float32") -> None:
        self.model_path, self.dtype = model_path, dtype
        self.model = None

    async def start(self) -> None:
        self.model = load_naive_model(self.model_path, self.dtype)

    def stats(self, seq: Sequence[int]):
        return naive_token_stats(self.model, seq)

    async def run(self, workload: Workload) -> float:
        async def send(req):
            for s in req:  # sequential, as a plain re-implementation does
                self.stats(s)

        old = workload.concurrency
        return await run_requests(dataclasses.replace(workload, concurrency=1) if old != 1 else workload, send)

    async def close(self) -> None:
        self.model = None


def load_naive_model(model_path: str, dtype: str = "float32"):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype))
    return model.eval()


def naive_token_stats(model, seq: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(c, v, logprobs) the naive way: [T, V] logits, log_softmax over the vocabulary."""
    import torch

    with torch.inference_mode():
        ids = torch.tensor([list(seq)], dtype=torch.long)
        logits = model(input_ids=ids).logits[0].float()  # [T, V], materialised
        logp = torch.log_softmax(logits, dim=-1)  # another [T, V]
        nxt = ids[0, 1:].unsqueeze(-1)
        chosen_logp = logp[:-1].gather(-1, nxt).squeeze(-1)
        c = logits[:-1].gather(-1, nxt).squeeze(-1)
        v = torch.logsumexp(logits, dim=-1)
        return c.numpy(), v.numpy(), chosen_logp.numpy()
