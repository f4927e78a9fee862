"""What the sync and async clients share: settings, replica balancing, the retry decisions.

One logical call (``_Call``) picks a replica, sends, and on failure decides: raise, or
retry after a delay. The two clients only differ in how they send and sleep.

Retry rules
-----------
* retried: connection errors (refused, reset, DNS, connect timeout, broken connection),
  429 and 503 (``retry_statuses``); read timeouts only if ``retry_read_timeouts``;
* never retried: every other status (other 4xx in particular: 400, 401, 404, 413, 422;
  and 500/504);
* the delay: another healthy replica not yet tried in this round is tried at once;
  otherwise ``Retry-After`` when the server sent it (capped at ``max_retry_after``, plus
  up to 10 % jitter), else exponential backoff with jitter:
  ``d = min(backoff_max, backoff_base * 2**n)``, sleep uniform in ``[d/2, d]``;
* at most ``max_retries`` retries (``max_retries + 1`` attempts) per call, and all of them
  within ``total_timeout`` seconds of the call's start (the deadline across attempts): a retry
  whose delay would end past it is not made, and each attempt's read timeout is cut to the time
  left. Behind a gateway that retries too (deploy/overlays/envoy-gateway), a call reaches the
  replicas at most ``(max_retries + 1) x (gateway retries + 1)`` times (docs/rl.md).
* a 500 (an internal invariant failure) is neither retried nor held against the replica: it says
  nothing about the replica's health, only 503 (draining, not ready, engine down) and refused
  connections bench it.

Every POST of one logical call carries the same ``Idempotency-Key`` (a fresh uuid per call unless
given): a retry of a request the server already answered is replayed from its store, not
recomputed (service/endorm_server/http/idempotency.py).

Balancing: each call goes to the healthy replica with the fewest requests in flight from
this client (ties: round-robin). A replica that refuses connections, or answers 503
(draining / loading), is benched for a cooldown that doubles with consecutive failures
(``cooldown_base`` .. ``cooldown_max``, at least its Retry-After); a success clears it.
When every replica is benched, the one that comes back first is tried.
"""

from __future__ import annotations

import email.utils
import itertools
import os
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Sequence

import httpx

from endorm_client.affinity import rank
from endorm_client.errors import APIConnectionError, APIStatusError, APITimeoutError, error_class

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_READ_TIMEOUT = 300.0
DEFAULT_CHUNK_SIZE = 64
DEFAULT_MAX_CONCURRENCY = 4
DEFAULT_MAX_RETRIES = 3
DEFAULT_TOTAL_TIMEOUT = 600.0
IDEMPOTENCY_HEADER = "Idempotency-Key"


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = DEFAULT_MAX_RETRIES
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    max_retry_after: float = 60.0
    retry_statuses: frozenset[int] = frozenset({429, 503})
    retry_read_timeouts: bool = False
    total_timeout: float | None = DEFAULT_TOTAL_TIMEOUT  # seconds for a call, all attempts and waits

    @property
    def max_attempts(self) -> int:
        return self.max_retries + 1

    def backoff(self, retry: int) -> float:
        d = min(self.backoff_max, self.backoff_base * (2**retry))
        return random.uniform(d / 2, d)

    def honour(self, retry_after: float) -> float:
        wait = min(max(retry_after, 0.0), self.max_retry_after)
        return wait + random.uniform(0, 0.1 * wait)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def normalize_base_urls(base_url: str | Sequence[str] | None) -> list[str]:
    if base_url is None:
        base_url = os.environ.get("ENDORM_BASE_URL", DEFAULT_BASE_URL)
    urls = base_url.split(",") if isinstance(base_url, str) else list(base_url)
    urls = [u.strip().rstrip("/") for u in urls if u and u.strip()]
    if not urls:
        raise ValueError("give at least one base URL")
    for u in urls:
        if not u.startswith(("http://", "https://")):
            raise ValueError(f"base URL must start with http:// or https://: {u!r}")
    return urls


def make_timeout(
    timeout: float | httpx.Timeout | None, connect_timeout: float | None, read_timeout: float | None
) -> httpx.Timeout:
    if isinstance(timeout, httpx.Timeout):
        return timeout
    read = read_timeout if read_timeout is not None else (timeout if timeout is not None else DEFAULT_READ_TIMEOUT)
    connect = connect_timeout if connect_timeout is not None else min(DEFAULT_CONNECT_TIMEOUT, read)
    return httpx.Timeout(connect=connect, read=read, write=read, pool=read)


@dataclass
class Endpoint:
    url: str
    in_flight: int = 0
    failures: int = 0
    down_until: float = 0.0
    requests: int = 0  # sent to it, for observability/tests

    def healthy(self, now: float) -> bool:
        return self.down_until <= now


@dataclass
class Balancer:
    endpoints: list[Endpoint]
    cooldown_base: float = 1.0
    cooldown_max: float = 30.0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _rr: itertools.count = field(default_factory=itertools.count)

    @classmethod
    def of(cls, urls: list[str], cooldown_base: float, cooldown_max: float) -> Balancer:
        return cls([Endpoint(u) for u in urls], cooldown_base, cooldown_max)

    def acquire(self, exclude: set[str], affinity: str | None = None) -> Endpoint:
        with self._lock:
            now = time.monotonic()
            turn = next(self._rr)
            n = len(self.endpoints)
            order = [self.endpoints[(turn + i) % n] for i in range(n)]  # round-robin start
            if affinity is not None:  # the replica that has this prompt cached first (affinity.py)
                by_url = {e.url: e for e in self.endpoints}
                order = [by_url[u] for u in rank(affinity, list(by_url))]
            pool = [e for e in order if e.healthy(now) and e.url not in exclude]
            if pool and affinity is not None:
                ep = pool[0]
            elif pool:
                ep = min(pool, key=lambda e: e.in_flight)  # stable: first minimum in rotated order
            else:
                rest = [e for e in order if e.url not in exclude] or order
                ep = min(rest, key=lambda e: e.down_until)
            ep.in_flight += 1
            ep.requests += 1
            return ep

    def release(self, ep: Endpoint) -> None:
        with self._lock:
            ep.in_flight -= 1

    def succeeded(self, ep: Endpoint) -> None:
        with self._lock:
            ep.failures = 0
            ep.down_until = 0.0

    def bench(self, ep: Endpoint, at_least: float = 0.0) -> None:
        with self._lock:
            ep.failures += 1
            cool = min(self.cooldown_max, self.cooldown_base * (2 ** (ep.failures - 1)))
            ep.down_until = time.monotonic() + max(cool, at_least)

    def has_untried_healthy(self, tried: set[str]) -> bool:
        now = time.monotonic()
        with self._lock:
            return any(e.healthy(now) and e.url not in tried for e in self.endpoints)


def _connect_failure(exc: httpx.TransportError) -> bool:
    """The request surely did not reach the application (safe to send elsewhere at once)."""
    return isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))


class _Call:
    """Retry/failover decisions for one logical request."""

    def __init__(self, balancer: Balancer, policy: RetryPolicy, request_id: str, affinity: str | None = None) -> None:
        self.balancer = balancer
        self.affinity = affinity
        self.policy = policy
        self.request_id = request_id
        self.retries = 0
        self.tried: set[str] = set()
        self.attempts: list[str] = []  # url per attempt
        total = policy.total_timeout
        self.deadline = time.monotonic() + total if total is not None else None

    def timeout(self, base: httpx.Timeout) -> httpx.Timeout:
        """This attempt's timeouts: ``base``, each cut to the time left before the call's deadline."""
        if self.deadline is None:
            return base
        left = max(self.deadline - time.monotonic(), 0.001)

        def cut(t: float | None) -> float:
            return left if t is None else min(t, left)

        return httpx.Timeout(connect=cut(base.connect), read=cut(base.read), write=cut(base.write), pool=cut(base.pool))

    def _give_up(self, err: Exception, delay: float) -> None:
        """Raise ``err`` when waiting ``delay`` more would end past the call's deadline."""
        if self.deadline is not None and time.monotonic() + delay >= self.deadline:
            note = f" (total_timeout of {self.policy.total_timeout:g} s reached after {len(self.attempts)} attempts)"
            if isinstance(err, (APIStatusError, APIConnectionError)):
                err.message += note
                err.args = (str(err.args[0]) + note,) if err.args else (note,)
            raise err

    def acquire(self) -> Endpoint:
        ep = self.balancer.acquire(self.tried, self.affinity)
        self.attempts.append(ep.url)
        return ep

    def release(self, ep: Endpoint) -> None:
        self.balancer.release(ep)

    def ok(self, ep: Endpoint, resp: httpx.Response) -> bool:
        if resp.status_code < 400:
            self.balancer.succeeded(ep)
            return True
        return False

    def _next_delay(self, ep: Endpoint, retry_after: float | None, err: Exception) -> float:
        self.tried.add(ep.url)
        retry = self.retries
        self.retries += 1
        if self.balancer.has_untried_healthy(self.tried):
            delay = 0.0
        else:
            self.tried.clear()  # a new round over the replicas
            delay = self.policy.honour(retry_after) if retry_after is not None else self.policy.backoff(retry)
        self._give_up(err, delay)
        return delay

    def transport_failed(self, ep: Endpoint, exc: httpx.TransportError) -> float:
        """Delay before the next attempt, or raise."""
        timeout = isinstance(exc, httpx.TimeoutException) and not isinstance(
            exc, (httpx.ConnectTimeout, httpx.PoolTimeout)
        )
        if _connect_failure(exc):
            self.balancer.bench(ep)
        err_cls = APITimeoutError if timeout else APIConnectionError
        err = err_cls(f"{type(exc).__name__} on {ep.url}: {exc}", request_id=self.request_id, url=ep.url)
        if (timeout and not self.policy.retry_read_timeouts) or self.retries >= self.policy.max_retries:
            if self.retries:
                err.message += f" (after {self.retries + 1} attempts: {', '.join(self.attempts)})"
                err.args = (err.message,)
            raise err from exc
        try:
            return self._next_delay(ep, None, err)
        except APIConnectionError as e:
            raise e from exc

    def status_failed(self, ep: Endpoint, resp: httpx.Response) -> float:
        err = api_error(resp, self.request_id, ep.url)
        if resp.status_code not in self.policy.retry_statuses or self.retries >= self.policy.max_retries:
            raise err
        if resp.status_code == 503:  # draining, loading, engine down: prefer the other replicas
            self.balancer.bench(ep, at_least=err.retry_after or 0.0)
        return self._next_delay(ep, err.retry_after, err)


def api_error(resp: httpx.Response, request_id: str | None, url: str | None = None) -> APIStatusError:
    try:
        body = resp.json()
    except ValueError:
        body = None
    err: dict[str, Any] = body["error"] if isinstance(body, dict) and isinstance(body.get("error"), dict) else {}
    message = err.get("message") or (resp.text[:500] if not body else str(body)[:500]) or resp.reason_phrase
    return error_class(resp.status_code)(
        resp.status_code,
        message,
        type=err.get("code") or err.get("type"),  # the stable reason (code), else the family
        param=err.get("param"),
        request_id=resp.headers.get("x-request-id") or request_id,
        retry_after=parse_retry_after(resp.headers.get("retry-after")),
        body=body,
        url=url,
    )


def new_request_id() -> str:
    return uuid.uuid4().hex


def new_idempotency_key() -> str:
    return uuid.uuid4().hex


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def resolve_api_key(api_key: str | None) -> str | None:
    return api_key if api_key is not None else (os.environ.get("ENDORM_API_KEY") or None)


def score_body(items: list[dict], options: dict) -> dict:
    return {"items": items, **{k: v for k, v in options.items() if v is not None}}


def chunks(n: int, size: int) -> list[tuple[int, int]]:
    """[start, end) ranges of at most ``size``, as even as possible (150 by 64 -> 50, 50, 50)."""
    if n == 0:
        return []
    k = -(-n // size)
    base, extra = divmod(n, k)
    out, start = [], 0
    for i in range(k):
        end = start + base + (1 if i < extra else 0)
        out.append((start, end))
        start = end
    return out
