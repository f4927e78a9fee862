"""``RewardClient`` (sync) and ``AsyncRewardClient`` (asyncio): the same API, typed results.

    from endorm_client import RewardClient

    with RewardClient(["http://rm-0:8000", "http://rm-1:8000"], api_key="...") as rm:
        res = rm.score([{"messages": [{"role": "user", "content": "2+3?"}], "response": "5"}])
        res.results[0].score

Every call sends ``X-Request-ID`` and, on a POST, ``Idempotency-Key`` (each the same on every
retry of one call, so a retry of an answered request is replayed by the server, not recomputed),
the API key as ``Authorization: Bearer`` (argument or ``ENDORM_API_KEY``), and is retried /
failed over within a total deadline as described in ``endorm_client._core``.

The batch helpers (``score_batch``) send ``item_errors="report"``: an item the server cannot
score comes back as an :class:`~endorm_client.types.ItemError` in its place (``score`` None,
``error.code`` why) and every other item is scored as if sent alone; ``score`` and ``compare``
keep the server's default (``"reject"``: a bad item fails the call) unless told.
"""

from __future__ import annotations

import asyncio
import threading
import time
import warnings
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any, Awaitable, Callable, Iterable, Sequence, TypeVar

import httpx

from endorm_client._core import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TOTAL_TIMEOUT,
    IDEMPOTENCY_HEADER,
    Balancer,
    Endpoint,
    RetryPolicy,
    _Call,
    auth_headers,
    chunks,
    make_timeout,
    new_idempotency_key,
    new_request_id,
    normalize_base_urls,
    resolve_api_key,
    score_body,
)
from endorm_client.affinity import AFFINITY_HEADER, group_chunks, prompt_key
from endorm_client.errors import EndoRMError, PayloadTooLargeError
from endorm_client.types import (
    Aggregation,
    CompareResponse,
    ItemErrors,
    ItemLike,
    ModelCard,
    Outcome,
    ScoreResponse,
    Terminal,
    Usage,
    item_json,
)

T = TypeVar("T")
R = TypeVar("R")

__all__ = ["RewardClient", "AsyncRewardClient"]


class _Base:
    def __init__(
        self,
        base_url: str | Sequence[str] | None = None,
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout | None = None,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        total_timeout: float | None = DEFAULT_TOTAL_TIMEOUT,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        max_retry_after: float = 60.0,
        retry_statuses: Iterable[int] = (429, 503),
        retry_read_timeouts: bool = False,
        cooldown_base: float = 1.0,
        cooldown_max: float = 30.0,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        headers: dict[str, str] | None = None,
        prompt_affinity: bool = True,
        idempotency_keys: bool = True,
    ) -> None:
        """
        base_url: one URL, several (a list or a comma-separated string: client-side balancing
            and failover over replicas), or None for ``ENDORM_BASE_URL`` / http://127.0.0.1:8000.
        api_key: the server's key; None reads ``ENDORM_API_KEY``.
        timeout / connect_timeout / read_timeout: seconds (default connect 5, read 300), or an
            ``httpx.Timeout``.
        max_retries, backoff_base, backoff_max, max_retry_after, retry_statuses,
            retry_read_timeouts: see ``endorm_client._core`` (retries on connection errors,
            429 and 503 only; exponential backoff with jitter; Retry-After honoured).
        total_timeout: seconds one call may take, every attempt and wait included (None: no
            limit); each attempt's read timeout is cut to the time left.
        cooldown_base, cooldown_max: how long a failing replica is benched.
        chunk_size, max_concurrency: defaults of the batch helpers (``score_batch``).
        prompt_affinity: with several replicas, send a request to the replica chosen by a hash
            of its first prompt (the one that has the prompt cached), and send that hash in the
            ``X-EndoRM-Affinity`` header for a proxy that hashes on it; False balances by load
            and sends no header.
        idempotency_keys: send ``Idempotency-Key`` on every POST (a fresh uuid per call, the
            same across its retries), so the server replays a retried answer instead of
            recomputing it; False sends none (unless a call passes ``idempotency_key``).
        """
        if chunk_size < 1 or max_concurrency < 1 or max_retries < 0:
            raise ValueError("chunk_size and max_concurrency must be >= 1, max_retries >= 0")
        self.base_urls = normalize_base_urls(base_url)
        self.api_key = resolve_api_key(api_key)
        self.timeout = make_timeout(timeout, connect_timeout, read_timeout)
        self.retry = RetryPolicy(
            max_retries=max_retries,
            backoff_base=backoff_base,
            backoff_max=backoff_max,
            max_retry_after=max_retry_after,
            retry_statuses=frozenset(retry_statuses),
            retry_read_timeouts=retry_read_timeouts,
            total_timeout=total_timeout,
        )
        self._balancer = Balancer.of(self.base_urls, cooldown_base, cooldown_max)
        self.chunk_size = chunk_size
        self.max_concurrency = max_concurrency
        self._server_limit: int | None = None  # learnt from a 413 too_many_items
        self._headers = {**(headers or {}), **auth_headers(self.api_key)}
        self._probe_timeout = httpx.Timeout(10.0, connect=self.timeout.connect)  # /ready checks
        self.prompt_affinity = prompt_affinity
        self.idempotency_keys = idempotency_keys

    @property
    def endpoints(self) -> list[Endpoint]:
        """Replica state (requests sent, in flight, benched until)."""
        return self._balancer.endpoints

    def _chunk_size(self, chunk_size: int | None) -> int:
        size = chunk_size or self.chunk_size
        return min(size, self._server_limit) if self._server_limit else size

    def _ranges(self, n: int, chunk_size: int | None, keys: Sequence[str] | None) -> list[tuple[int, int]]:
        """Chunks within the server's limits; with ``keys`` (prompt hashes) a group stays in one chunk."""
        size = self._chunk_size(chunk_size)
        grouped = keys is not None and any(a == b for a, b in zip(keys, keys[1:]))
        return group_chunks(keys, size) if grouped and keys is not None else chunks(n, size)

    def _call_headers(self, method: str, rid: str, affinity: str | None, idempotency_key: str | None) -> dict:
        headers = {**self._headers, "X-Request-ID": rid, **({AFFINITY_HEADER: affinity} if affinity else {})}
        if method.upper() == "POST" and (idempotency_key or self.idempotency_keys):
            headers[IDEMPOTENCY_HEADER] = idempotency_key or new_idempotency_key()  # one per call, kept on retries
        return headers

    def _affinity(self, items: list[dict]) -> str | None:
        """The request's prompt key: picks the replica among several URLs and, as the
        X-EndoRM-Affinity header, lets a proxy in front of one URL hash on it."""
        return prompt_key(items[0]) if self.prompt_affinity and items else None

    def _learn(self, exc: PayloadTooLargeError, n: int) -> int | None:
        """Size to split a rejected chunk of n items into, or None to give up."""
        if n <= 1 or exc.type == "sequence_too_long":
            return None
        limit = exc.limit
        if limit:
            self._server_limit = min(self._server_limit or limit, limit)
            if limit < n:
                return limit
        return -(-n // 2)

    @staticmethod
    def _options(
        aggregation,
        gamma,
        beta,
        terminal,
        return_tokens,
        truncate,
        add_eos,
        model,
        contrast=None,
        baseline_system=None,
        item_errors=None,
        return_terms=None,
    ) -> dict:
        return {
            "item_errors": item_errors,
            "return_terms": return_terms,
            "aggregation": aggregation,
            "gamma": gamma,
            "beta": beta,
            "terminal": terminal,
            "return_tokens": return_tokens,
            "truncate": truncate,
            "add_eos": add_eos,
            "model": model,
            "contrast": contrast,
            "baseline_system": baseline_system,
        }

    @staticmethod
    def _compare_body(
        prompt,
        messages,
        prompt_ids,
        system,
        responses,
        responses_ids,
        options,
        step_separator=None,
        responses_step_ends=None,
    ) -> dict:
        body: dict[str, Any] = {}
        if step_separator is not None:
            body["step_separator"] = step_separator
        if responses_step_ends is not None:
            body["responses_step_ends"] = [[int(e) for e in ends] for ends in responses_step_ends]
        for k, v in (("prompt", prompt), ("prompt_ids", prompt_ids), ("system", system), ("responses", responses)):
            if v is not None:
                body[k] = list(v) if k in ("prompt_ids", "responses") else v
        if messages is not None:
            body["messages"] = item_json({"messages": messages})["messages"]
        if responses_ids is not None:
            body["responses_ids"] = [[int(t) for t in r] for r in responses_ids]
        return {**{k: v for k, v in options.items() if v is not None}, **body}

    @staticmethod
    def _merge(parts: list[ScoreResponse], results: list[Outcome], aggregation: str | None) -> ScoreResponse:
        for i, r in enumerate(results):
            r.index = i
        if not parts:
            return ScoreResponse(
                model="",
                alpha=float("nan"),
                aggregation=aggregation or "sum",
                results=[],
                usage=Usage(prompt_tokens=0, total_tokens=0),
            )
        first = parts[0]
        usage = Usage(
            prompt_tokens=sum(p.usage.prompt_tokens for p in parts),
            total_tokens=sum(p.usage.total_tokens for p in parts),
        )
        # chunks answered by replicas serving different rewards (another dtype, other weights) share none
        fingerprints = {p.system_fingerprint for p in parts}
        fingerprint = fingerprints.pop() if len(fingerprints) == 1 else None
        if fingerprint is None and len(parts) > 1 and any(p.system_fingerprint for p in parts):
            warnings.warn(
                f"score_batch: replicas answered with different system_fingerprints {sorted(map(str, fingerprints))}; "
                "their rewards are not comparable",
                RuntimeWarning,
                stacklevel=3,
            )
        return ScoreResponse(
            model=first.model,
            alpha=first.alpha,
            system_fingerprint=fingerprint,
            aggregation=first.aggregation,
            results=results,
            usage=usage,
            request_id=",".join(p.request_id or "" for p in parts),
        )


def _json(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except ValueError as exc:
        raise EndoRMError(
            f"{resp.request.url}: the server answered {resp.status_code} with a body that is not JSON"
        ) from exc


class RewardClient(_Base):
    """Synchronous client (thread-safe: one instance can serve many threads)."""

    def __init__(
        self, base_url: str | Sequence[str] | None = None, *, http_client: httpx.Client | None = None, **kwargs: Any
    ) -> None:
        super().__init__(base_url, **kwargs)
        self._http = http_client or httpx.Client(timeout=self.timeout)
        self._own_http = http_client is None

    # ---------------------------------------------------------------- plumbing

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict | None = None,
        request_id: str | None = None,
        affinity: str | None = None,
        idempotency_key: str | None = None,
    ) -> httpx.Response:
        """One logical call with retries and failover; returns the 2xx response or raises.
        ``affinity`` (a prompt hash) prefers the replica that has that prompt cached;
        ``idempotency_key`` replaces the fresh one a POST gets (the same on every retry)."""
        rid = request_id or new_request_id()
        call = _Call(self._balancer, self.retry, rid, affinity)
        headers = self._call_headers(method, rid, affinity, idempotency_key)
        while True:
            ep = call.acquire()
            try:
                resp = self._http.request(
                    method,
                    ep.url + path,
                    json=json,
                    params=params,
                    headers=headers,
                    timeout=call.timeout(self._http.timeout),
                )
            except httpx.TransportError as exc:
                delay = call.transport_failed(ep, exc)
            else:
                if call.ok(ep, resp):
                    return resp
                delay = call.status_failed(ep, resp)
            finally:
                call.release(ep)
            if delay > 0:
                time.sleep(delay)

    def map_chunks(
        self,
        items: Sequence[T],
        send: Callable[[list[T]], list[R]],
        *,
        chunk_size: int | None = None,
        max_concurrency: int | None = None,
        keys: Sequence[str] | None = None,
    ) -> list[R]:
        """Split ``items`` into chunks within the server's limits, ``send`` each (at most
        ``max_concurrency`` at once), and concatenate the results in order. A chunk refused
        with 413 (too many items or too many bytes) is split again (the item limit the server
        states is remembered)."""
        items = list(items)
        ranges = self._ranges(len(items), chunk_size, keys)
        if not ranges:
            return []
        out: list[list[R] | None] = [None] * len(ranges)

        def run(k: int, a: int, b: int) -> None:
            out[k] = self._adaptive(items[a:b], send)

        workers = min(max_concurrency or self.max_concurrency, len(ranges))
        if workers == 1:
            for k, (a, b) in enumerate(ranges):
                run(k, a, b)
        else:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="endorm-batch") as pool:
                futures = [pool.submit(run, k, a, b) for k, (a, b) in enumerate(ranges)]
                done, pending = wait(futures, return_when=FIRST_EXCEPTION)
                for f in pending:
                    f.cancel()
                for f in futures:
                    if f.done() and not f.cancelled() and (exc := f.exception()) is not None:
                        raise exc
        return [r for part in out for r in (part or [])]

    def _adaptive(self, part: list[T], send: Callable[[list[T]], list[R]]) -> list[R]:
        try:
            return send(part)
        except PayloadTooLargeError as exc:
            size = self._learn(exc, len(part))
            if size is None:
                raise
            return [r for a, b in chunks(len(part), size) for r in self._adaptive(part[a:b], send)]

    # ---------------------------------------------------------------- API

    def score(
        self,
        items: Sequence[ItemLike],
        *,
        aggregation: Aggregation | None = None,
        gamma: float | None = None,
        beta: float | None = None,
        terminal: Terminal | None = None,
        return_tokens: bool | None = None,
        truncate: bool | None = None,
        add_eos: bool | None = None,
        model: str | None = None,
        request_id: str | None = None,
        contrast: bool | None = None,
        baseline_system: str | None = None,
        item_errors: ItemErrors | None = None,
        return_terms: bool | None = None,
        idempotency_key: str | None = None,
    ) -> ScoreResponse:
        """One ``POST /score`` (at most the server's ``max_items_per_request`` items; see
        :meth:`score_batch` for more). Options left None take the server's defaults."""
        body = score_body(
            [item_json(i) for i in items],
            self._options(
                aggregation,
                gamma,
                beta,
                terminal,
                return_tokens,
                truncate,
                add_eos,
                model,
                contrast,
                baseline_system,
                item_errors,
                return_terms,
            ),
        )
        resp = self.request(
            "POST",
            "/score",
            json=body,
            request_id=request_id,
            affinity=self._affinity(body["items"]),
            idempotency_key=idempotency_key,
        )
        out = ScoreResponse.model_validate(_json(resp))
        out.request_id = resp.headers.get("x-request-id")
        return out

    def score_batch(
        self,
        items: Sequence[ItemLike],
        *,
        chunk_size: int | None = None,
        max_concurrency: int | None = None,
        aggregation: Aggregation | None = None,
        gamma: float | None = None,
        beta: float | None = None,
        terminal: Terminal | None = None,
        return_tokens: bool | None = None,
        truncate: bool | None = None,
        add_eos: bool | None = None,
        model: str | None = None,
        contrast: bool | None = None,
        baseline_system: str | None = None,
        item_errors: ItemErrors = "report",
        return_terms: bool | None = None,
    ) -> ScoreResponse:
        """Score any number of items: split to the server's limits, chunks in parallel
        (bounded), one merged response with results in input order (``index`` is global).
        With ``item_errors="report"`` (the default here) an item that cannot be scored is an
        ``ItemError`` in its place (``res.failures``; ``res.raise_for_failures()``) and the rest
        are scored; ``"reject"`` fails the chunk that holds it."""
        payload = [item_json(i) for i in items]
        parts: list[ScoreResponse] = []
        lock = threading.Lock()

        def send(part: list[dict]) -> list[Outcome]:
            res = self.score(
                part,
                aggregation=aggregation,
                gamma=gamma,
                beta=beta,
                terminal=terminal,
                return_tokens=return_tokens,
                truncate=truncate,
                add_eos=add_eos,
                model=model,
                contrast=contrast,
                baseline_system=baseline_system,
                item_errors=item_errors,
                return_terms=return_terms,
            )
            with lock:
                parts.append(res)
            return res.results

        results = self.map_chunks(
            payload, send, chunk_size=chunk_size, max_concurrency=max_concurrency, keys=[prompt_key(p) for p in payload]
        )
        return self._merge(parts, results, aggregation)

    def compare(
        self,
        *,
        prompt: str | None = None,
        messages: Sequence[Any] | None = None,
        prompt_ids: Sequence[int] | None = None,
        system: str | None = None,
        responses: Sequence[str] | None = None,
        responses_ids: Sequence[Sequence[int]] | None = None,
        aggregation: Aggregation | None = None,
        gamma: float | None = None,
        beta: float | None = None,
        terminal: Terminal | None = None,
        return_tokens: bool | None = None,
        truncate: bool | None = None,
        add_eos: bool | None = None,
        model: str | None = None,
        request_id: str | None = None,
        step_separator: str | None = None,
        responses_step_ends: Sequence[Sequence[int]] | None = None,
        contrast: bool | None = None,
        baseline_system: str | None = None,
        item_errors: ItemErrors | None = None,
        return_terms: bool | None = None,
        idempotency_key: str | None = None,
    ) -> CompareResponse:
        """``POST /compare``: rank N >= 2 responses to one prompt (scores, ranking, best, P[i][j]);
        with ``item_errors="report"`` a response that cannot be scored is in ``failed`` (score None)
        and the others are ranked."""
        body = self._compare_body(
            prompt,
            messages,
            prompt_ids,
            system,
            responses,
            responses_ids,
            self._options(
                aggregation,
                gamma,
                beta,
                terminal,
                return_tokens,
                truncate,
                add_eos,
                model,
                contrast,
                baseline_system,
                item_errors,
                return_terms,
            ),
            step_separator,
            responses_step_ends,
        )
        resp = self.request(
            "POST",
            "/compare",
            json=body,
            request_id=request_id,
            affinity=self._affinity([body]),
            idempotency_key=idempotency_key,
        )
        out = CompareResponse.model_validate(_json(resp))
        out.request_id = resp.headers.get("x-request-id")
        return out

    def models(self) -> list[ModelCard]:
        """``GET /v1/models``: the served model (id, max_model_len, alpha, engine)."""
        return [ModelCard.model_validate(m) for m in _json(self.request("GET", "/v1/models"))["data"]]

    def ready(self) -> bool:
        """True when at least one replica answers ``GET /ready`` with 200 (no retries)."""
        for url in self.base_urls:
            try:
                r = self._http.get(
                    url + "/ready", headers={"X-Request-ID": new_request_id()}, timeout=self._probe_timeout
                )
                if r.status_code == 200:
                    return True
            except httpx.TransportError:
                continue
        return False

    def wait_ready(self, timeout: float = 600.0, interval: float = 1.0) -> None:
        """Block until :meth:`ready` (e.g. a trainer started with its reward server)."""
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no replica of {self.base_urls} ready within {timeout} s")
            time.sleep(interval)

    def close(self) -> None:
        if self._own_http:
            self._http.close()

    def __enter__(self) -> RewardClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncRewardClient(_Base):
    """asyncio client. Use it from one event loop (httpx's connection pool is bound to it)."""

    def __init__(
        self,
        base_url: str | Sequence[str] | None = None,
        *,
        http_client: httpx.AsyncClient | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(base_url, **kwargs)
        self._http = http_client or httpx.AsyncClient(timeout=self.timeout)
        self._own_http = http_client is None

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict | None = None,
        request_id: str | None = None,
        affinity: str | None = None,
        idempotency_key: str | None = None,
    ) -> httpx.Response:
        rid = request_id or new_request_id()
        call = _Call(self._balancer, self.retry, rid, affinity)
        headers = self._call_headers(method, rid, affinity, idempotency_key)
        while True:
            ep = call.acquire()
            try:
                resp = await self._http.request(
                    method,
                    ep.url + path,
                    json=json,
                    params=params,
                    headers=headers,
                    timeout=call.timeout(self._http.timeout),
                )
            except httpx.TransportError as exc:
                delay = call.transport_failed(ep, exc)
            else:
                if call.ok(ep, resp):
                    return resp
                delay = call.status_failed(ep, resp)
            finally:
                call.release(ep)
            if delay > 0:
                await asyncio.sleep(delay)

    async def map_chunks(
        self,
        items: Sequence[T],
        send: Callable[[list[T]], Awaitable[list[R]]],
        *,
        chunk_size: int | None = None,
        max_concurrency: int | None = None,
        keys: Sequence[str] | None = None,
    ) -> list[R]:
        items = list(items)
        ranges = self._ranges(len(items), chunk_size, keys)
        sem = asyncio.Semaphore(max_concurrency or self.max_concurrency)

        async def bounded(part: list[T]) -> list[R]:
            async with sem:
                return await send(part)

        async def adaptive(part: list[T]) -> list[R]:
            try:
                return await bounded(part)
            except PayloadTooLargeError as exc:
                size = self._learn(exc, len(part))
                if size is None:
                    raise
                out: list[R] = []
                for a, b in chunks(len(part), size):
                    out += await adaptive(part[a:b])
                return out

        tasks = [asyncio.ensure_future(adaptive(items[a:b])) for a, b in ranges]
        try:
            parts = await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return [r for part in parts for r in part]

    async def score(
        self,
        items: Sequence[ItemLike],
        *,
        aggregation: Aggregation | None = None,
        gamma: float | None = None,
        beta: float | None = None,
        terminal: Terminal | None = None,
        return_tokens: bool | None = None,
        truncate: bool | None = None,
        add_eos: bool | None = None,
        model: str | None = None,
        request_id: str | None = None,
        contrast: bool | None = None,
        baseline_system: str | None = None,
        item_errors: ItemErrors | None = None,
        return_terms: bool | None = None,
        idempotency_key: str | None = None,
    ) -> ScoreResponse:
        body = score_body(
            [item_json(i) for i in items],
            self._options(
                aggregation,
                gamma,
                beta,
                terminal,
                return_tokens,
                truncate,
                add_eos,
                model,
                contrast,
                baseline_system,
                item_errors,
                return_terms,
            ),
        )
        resp = await self.request(
            "POST",
            "/score",
            json=body,
            request_id=request_id,
            affinity=self._affinity(body["items"]),
            idempotency_key=idempotency_key,
        )
        out = ScoreResponse.model_validate(_json(resp))
        out.request_id = resp.headers.get("x-request-id")
        return out

    async def score_batch(
        self,
        items: Sequence[ItemLike],
        *,
        chunk_size: int | None = None,
        max_concurrency: int | None = None,
        aggregation: Aggregation | None = None,
        gamma: float | None = None,
        beta: float | None = None,
        terminal: Terminal | None = None,
        return_tokens: bool | None = None,
        truncate: bool | None = None,
        add_eos: bool | None = None,
        model: str | None = None,
        contrast: bool | None = None,
        baseline_system: str | None = None,
        item_errors: ItemErrors = "report",
        return_terms: bool | None = None,
    ) -> ScoreResponse:
        payload = [item_json(i) for i in items]
        parts: list[ScoreResponse] = []

        async def send(part: list[dict]) -> list[Outcome]:
            res = await self.score(
                part,
                aggregation=aggregation,
                gamma=gamma,
                beta=beta,
                terminal=terminal,
                return_tokens=return_tokens,
                truncate=truncate,
                add_eos=add_eos,
                model=model,
                contrast=contrast,
                baseline_system=baseline_system,
                item_errors=item_errors,
                return_terms=return_terms,
            )
            parts.append(res)
            return res.results

        results = await self.map_chunks(
            payload, send, chunk_size=chunk_size, max_concurrency=max_concurrency, keys=[prompt_key(p) for p in payload]
        )
        return self._merge(parts, results, aggregation)

    async def compare(
        self,
        *,
        prompt: str | None = None,
        messages: Sequence[Any] | None = None,
        prompt_ids: Sequence[int] | None = None,
        system: str | None = None,
        responses: Sequence[str] | None = None,
        responses_ids: Sequence[Sequence[int]] | None = None,
        aggregation: Aggregation | None = None,
        gamma: float | None = None,
        beta: float | None = None,
        terminal: Terminal | None = None,
        return_tokens: bool | None = None,
        truncate: bool | None = None,
        add_eos: bool | None = None,
        model: str | None = None,
        request_id: str | None = None,
        step_separator: str | None = None,
        responses_step_ends: Sequence[Sequence[int]] | None = None,
        contrast: bool | None = None,
        baseline_system: str | None = None,
        item_errors: ItemErrors | None = None,
        return_terms: bool | None = None,
        idempotency_key: str | None = None,
    ) -> CompareResponse:
        body = self._compare_body(
            prompt,
            messages,
            prompt_ids,
            system,
            responses,
            responses_ids,
            self._options(
                aggregation,
                gamma,
                beta,
                terminal,
                return_tokens,
                truncate,
                add_eos,
                model,
                contrast,
                baseline_system,
                item_errors,
                return_terms,
            ),
            step_separator,
            responses_step_ends,
        )
        resp = await self.request(
            "POST",
            "/compare",
            json=body,
            request_id=request_id,
            affinity=self._affinity([body]),
            idempotency_key=idempotency_key,
        )
        out = CompareResponse.model_validate(_json(resp))
        out.request_id = resp.headers.get("x-request-id")
        return out

    async def models(self) -> list[ModelCard]:
        return [ModelCard.model_validate(m) for m in _json(await self.request("GET", "/v1/models"))["data"]]

    async def ready(self) -> bool:
        for url in self.base_urls:
            try:
                r = await self._http.get(
                    url + "/ready", headers={"X-Request-ID": new_request_id()}, timeout=self._probe_timeout
                )
                if r.status_code == 200:
                    return True
            except httpx.TransportError:
                continue
        return False

    async def wait_ready(self, timeout: float = 600.0, interval: float = 1.0) -> None:
        deadline = time.monotonic() + timeout
        while not await self.ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no replica of {self.base_urls} ready within {timeout} s")
            await asyncio.sleep(interval)

    async def aclose(self) -> None:
        if self._own_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncRewardClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
