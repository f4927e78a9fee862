"""The Python SDK (clients/endorm_client) against the live server and a scripted HTTP server."""

from __future__ import annotations

import asyncio
import email.utils
import threading
import time
import types

import httpx
import pytest

from endorm_client import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AsyncRewardClient,
    AuthenticationError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitError,
    RewardClient,
    ScoreItem,
    ServiceUnavailableError,
)
from endorm_client._core import chunks, parse_retry_after
from tests.clients.conftest import API_KEY, HOLD, err, metric

CHAT = [{"role": "user", "content": "What is 2+3?"}]
ITEMS = [
    {"messages": CHAT, "response": "5"},
    {"prompt": "2+3=", "response": "5"},
    ScoreItem(prompt_ids=[1, 30, 31, 32], response_ids=[40, 41, 4]),
]


def fast(url, **kw) -> RewardClient:
    """Short backoffs so retry tests stay quick."""
    return RewardClient(url, **{"api_key": API_KEY, "backoff_base": 0.05, "backoff_max": 0.2, **kw})


@pytest.fixture()
def sleeps(monkeypatch) -> list[float]:
    """The delays the sync client decides to wait (it still sleeps them): retry tests assert these
    decisions, not wall-clock gaps, whose upper bounds hold only on a machine fast enough."""
    import endorm_client.client as client_module

    asked: list[float] = []
    caller = threading.current_thread()

    def sleep(seconds: float) -> None:
        if threading.current_thread() is caller:
            asked.append(seconds)
        time.sleep(seconds)

    monkeypatch.setattr(
        client_module, "time", types.SimpleNamespace(sleep=sleep, monotonic=time.monotonic, time=time.time)
    )
    return asked


# ------------------------------------------------------------------ live server


def test_score_compare_models_ready(server, client):
    with RewardClient(server.url, api_key=API_KEY) as rm:
        assert rm.ready()
        [card] = rm.models()
        assert card.max_model_len == 512 and card.engine == "vllm" and card.alpha == 1.0
        res = rm.score(ITEMS, return_tokens=True)
        raw = client.post(
            "/score", json={"items": [ITEMS[0], ITEMS[1], ITEMS[2].to_json()], "return_tokens": True}
        ).json()
        assert res.scores == pytest.approx([r["score"] for r in raw["results"]], abs=1e-5)
        assert res.model == raw["model"] and res.usage.total_tokens == raw["usage"]["total_tokens"]
        # the fingerprint reaches the SDK's results (and is the one /v1/models reports)
        assert res.system_fingerprint == raw["system_fingerprint"] == card.system_fingerprint
        assert res.system_fingerprint.startswith("fp_") and card.dtype == "float32"
        assert rm.score_batch(ITEMS, chunk_size=1).system_fingerprint == res.system_fingerprint
        assert [t.id for t in res.results[2].tokens] == [40, 41, 4]
        cmp = rm.compare(messages=CHAT, responses=["5", "five", "6"])
        assert sorted(cmp.ranking) == [0, 1, 2] and cmp.best == cmp.ranking[0]
        assert cmp.system_fingerprint == res.system_fingerprint
        assert cmp.scores == pytest.approx(
            [
                r["score"]
                for r in client.post(
                    "/score", json={"items": [{"messages": CHAT, "response": r} for r in ["5", "five", "6"]]}
                ).json()["results"]
            ],
            abs=1e-4,
        )
        assert rm.score(ITEMS[:1], aggregation="mean").aggregation == "mean"


def test_async_client(server):
    async def main():
        async with AsyncRewardClient(server.url, api_key=API_KEY) as rm:
            assert await rm.ready()
            [card] = await rm.models()
            res, cmp = await asyncio.gather(rm.score(ITEMS), rm.compare(prompt="2+3=", responses=["5", "6"]))
            return card, res, cmp

    card, res, cmp = asyncio.run(main())
    with RewardClient(server.url, api_key=API_KEY) as rm:
        assert res.scores == pytest.approx(rm.score(ITEMS).scores, abs=1e-5)
    assert card.id == res.model and len(cmp.scores) == 2


def test_api_key_from_environment(server, monkeypatch):
    monkeypatch.setenv("ENDORM_API_KEY", API_KEY)
    with RewardClient(server.url) as rm:
        assert rm.score(ITEMS[:1]).results[0].num_tokens >= 1
    monkeypatch.setenv("ENDORM_API_KEY", "wrong")
    with RewardClient(server.url) as rm, pytest.raises(AuthenticationError):
        rm.score(ITEMS[:1])
    monkeypatch.delenv("ENDORM_API_KEY")
    with RewardClient(server.url) as rm, pytest.raises(AuthenticationError):
        rm.models()


def test_request_id_is_echoed(server):
    with RewardClient(server.url, api_key=API_KEY) as rm:
        assert rm.score(ITEMS[:1], request_id="trainer-step-7.0").request_id == "trainer-step-7.0"
        a, b = rm.score(ITEMS[:1]).request_id, rm.score(ITEMS[:1]).request_id
        assert a and b and a != b


def test_no_retry_on_422_live(server):
    before = metric(server.url, "endorm_requests_total", endpoint="/score", status="422")
    with fast(server.url) as rm, pytest.raises(InvalidRequestError) as exc:
        rm.score([{"prompt_ids": [1], "response_ids": [999999]}])
    assert exc.value.status_code == 422 and exc.value.param == "items.0.response_ids"
    assert metric(server.url, "endorm_requests_total", endpoint="/score", status="422") == before + 1
    with fast(server.url) as rm, pytest.raises(NotFoundError):
        rm.score(ITEMS[:1], model="not-served")


def test_score_batch_splits_150_items_to_the_limit(server):
    items = [{"prompt": f"Q{i}: {i}+1=", "response": str(i + 1)} for i in range(150)]
    count = lambda: metric(server.url, "endorm_request_items_count")  # noqa: E731
    over = lambda: metric(server.url, "endorm_requests_total", endpoint="/score", status="413")  # noqa: E731
    n0, o0 = count(), over()
    with RewardClient(server.url, api_key=API_KEY, max_concurrency=2) as rm:
        res = rm.score_batch(items)
        assert [r.index for r in res.results] == list(range(150))
        assert count() - n0 == 3 and over() == o0  # 50 + 50 + 50, each <= 64, no 413
        single = rm.score([items[0], items[77], items[149]]).scores
        assert [res.results[i].score for i in (0, 77, 149)] == pytest.approx(single, abs=1e-5)
        assert res.usage.total_tokens == sum(r.num_tokens + r.prompt_tokens for r in res.results)
        assert len(res.request_id.split(",")) == 3


def test_score_batch_learns_the_server_limit(server):
    items = [{"prompt": f"{i}+2=", "response": str(i + 2)} for i in range(150)]
    over = lambda: metric(server.url, "endorm_requests_total", endpoint="/score", status="413")  # noqa: E731
    o0 = over()
    with RewardClient(server.url, api_key=API_KEY, chunk_size=150) as rm:
        with pytest.raises(PayloadTooLargeError) as exc:
            rm.score(items)
        assert exc.value.type == "too_many_items" and exc.value.limit == 64
        res = rm.score_batch(items)  # 150 refused once (limit 64 learnt), then 50 + 50 + 50
        assert [r.index for r in res.results] == list(range(150)) and rm._server_limit == 64
        assert over() == o0 + 2
        rm.score_batch(items)  # now split right away
        assert over() == o0 + 2


def test_async_score_batch(server):
    items = [{"messages": [{"role": "user", "content": f"Say {i}"}], "response": str(i)} for i in range(150)]

    async def main():
        async with AsyncRewardClient(server.url, api_key=API_KEY, max_concurrency=3) as rm:
            return await rm.score_batch(items, aggregation="mean")

    res = asyncio.run(main())
    assert [r.index for r in res.results] == list(range(150)) and res.aggregation == "mean"
    with RewardClient(server.url, api_key=API_KEY) as rm:
        assert res.results[123].score == pytest.approx(rm.score([items[123]], aggregation="mean").scores[0], abs=1e-5)


def test_failover_to_the_live_replica(server, dead_url):
    for urls in ([dead_url, server.url], [server.url, dead_url]):
        # a 600 s bench: the dead replica is not retried within the test however slow the machine is
        with RewardClient(urls, api_key=API_KEY, cooldown_base=600, cooldown_max=600) as rm:
            for _ in range(6):
                assert rm.score(ITEMS[:1]).results[0].num_tokens >= 1
            dead, live = sorted(rm.endpoints, key=lambda e: e.url != dead_url)
            assert dead.requests <= 1 and live.requests == 6  # the dead one was tried at most once, then benched
            assert rm.ready()


def test_async_failover(server, dead_url):
    async def main():
        async with AsyncRewardClient(
            [dead_url, server.url], api_key=API_KEY, cooldown_base=600, cooldown_max=600
        ) as rm:
            scores = await asyncio.gather(*(rm.score(ITEMS[:1]) for _ in range(4)))
            return scores, rm.endpoints

    scores, endpoints = asyncio.run(main())
    assert len(scores) == 4 and {e.url: e.requests for e in endpoints}[server.url] == 4


def test_balancing_over_two_replicas(server):
    port = server.url.rsplit(":", 1)[1]
    urls = [server.url, f"http://localhost:{port}"]  # two names of the live server: two replicas to the client
    with RewardClient(urls, api_key=API_KEY, prompt_affinity=False) as rm:
        for _ in range(6):
            rm.score(ITEMS[:1])
        assert sorted(e.requests for e in rm.endpoints) == [3, 3]


def test_prompt_affinity_over_two_replicas(server):
    """Each prompt always goes to the replica its hash ranks first (where it is cached); prompts spread."""
    from endorm_client.affinity import group_chunks, prompt_key, rank

    port = server.url.rsplit(":", 1)[1]
    urls = [server.url, f"http://localhost:{port}"]
    prompts = [f"Question {i}: what is {i} + {i}?" for i in range(12)]
    expected = {u: 0 for u in urls}
    for p in prompts:
        expected[rank(prompt_key({"prompt": p}), urls)[0]] += 2
    assert min(expected.values()) > 0  # the 12 prompts spread over both replicas
    with RewardClient(urls, api_key=API_KEY) as rm:
        for p in prompts:
            for r in ("one answer", "another answer"):
                rm.score([{"prompt": p, "response": r}])
        assert {e.url: e.requests for e in rm.endpoints} == expected
    # a batch keeps runs of one prompt in one request (split only past the chunk size)
    assert group_chunks(["a", "a", "a", "b", "b", "c"], 4) == [(0, 3), (3, 6)]
    assert group_chunks(["a"] * 5 + ["b"], 2) == [(0, 2), (2, 4), (4, 6)]


def test_all_replicas_dead(dead_url, sleeps):
    with fast([dead_url], max_retries=2) as rm:
        with pytest.raises(APIConnectionError) as exc:
            rm.score(ITEMS[:1])
        assert rm.endpoints[0].requests == 3
        assert len(sleeps) == 2 and all(0 < s <= 0.2 for s in sleeps), sleeps  # the short backoffs, capped
        assert "3 attempts" in str(exc.value)
        assert not rm.ready()


# ------------------------------------------------------------------ scripted server


def test_retry_after_is_honoured_on_429_and_503(stub, sleeps):
    stub.reply(err(429, "overloaded", retry_after="1"), err(503, "draining", retry_after="1"))
    with fast(stub.url) as rm:
        res = rm.score(ITEMS[:1])
    assert res.results[0].score == 1.5 and len(stub.seen) == 3
    # Retry-After: 1 (plus at most 10 % jitter), not the 0.05 s backoff; and really waited
    assert len(sleeps) == 2 and all(1.0 <= s <= 1.1 for s in sleeps), sleeps
    assert all(g >= 1.0 for g in stub.gaps()), stub.gaps()


def test_exponential_backoff_with_jitter(stub, sleeps):
    stub.reply(err(503, "unavailable"), err(503, "unavailable"), err(429, "overloaded"))
    with RewardClient(stub.url, backoff_base=0.2, backoff_max=10) as rm:
        rm.score(ITEMS[:1])
    # d = base * 2**n, waited uniformly in [d/2, d]
    assert len(sleeps) == 3 and 0.1 <= sleeps[0] <= 0.2 and 0.2 <= sleeps[1] <= 0.4 and 0.4 <= sleeps[2] <= 0.8, sleeps
    assert len(set(sleeps)) == 3  # jittered, not fixed
    g = stub.gaps()
    assert len(g) == 3 and all(gap >= s for gap, s in zip(g, sleeps)), (g, sleeps)


def test_gives_up_after_max_retries(stub):
    stub.reply(*[err(429, "overloaded", retry_after="0")] * 5)
    with fast(stub.url, max_retries=2) as rm, pytest.raises(RateLimitError) as exc:
        rm.score(ITEMS[:1])
    assert len(stub.seen) == 3 and exc.value.retry_after == 0
    stub.reply(*[err(503, "draining", retry_after="0")] * 5)
    with fast(stub.url, max_retries=0) as rm, pytest.raises(ServiceUnavailableError):
        rm.score(ITEMS[:1])
    assert len(stub.seen) == 1


@pytest.mark.parametrize(
    "status,type_",
    [
        (400, "bad_request"),
        (401, "unauthorized"),
        (404, "not_found"),
        (413, "payload_too_large"),
        (422, "invalid_request"),
        (500, "internal_error"),
        (504, "timeout"),
    ],
)
def test_never_retries_other_errors(stub, status, type_):
    stub.reply(err(status, type_, retry_after="0"), err(status, type_))
    with fast(stub.url) as rm, pytest.raises(APIStatusError) as exc:
        rm.score(ITEMS[:1])
    assert exc.value.status_code == status and exc.value.type == type_ and len(stub.seen) == 1


def test_request_id_header_on_every_call_and_kept_across_retries(stub):
    stub.reply(err(429, "overloaded", retry_after="0"), err(503, "unavailable", retry_after="0"))
    with fast(stub.url) as rm:
        rm.score(ITEMS[:1])
        stub.seen.clear()
        stub.reply(
            (200, {}, {"data": [{"id": "stub", "max_model_len": 8, "alpha": 1.0, "engine": "x", "vocab_size": 8}]}, 0)
        )
        rm.models()
        rm.ready()
    ids = [s.headers.get("x-request-id") for s in stub.seen]
    assert all(ids) and len(set(ids)) == 2  # models + ready, distinct
    stub.reply(err(429, "overloaded", retry_after="0"), err(503, "unavailable", retry_after="0"))
    with fast(stub.url) as rm:
        rm.score(ITEMS[:1])
    ids = {s.headers["x-request-id"] for s in stub.seen}
    assert len(stub.seen) == 3 and len(ids) == 1  # one call, one id over its retries
    assert stub.seen[0].headers["authorization"] == f"Bearer {API_KEY}"


def item_preferring(url: str, urls: list[str]) -> dict:
    """An item whose prompt hash ranks ``url`` first among ``urls`` (so prompt affinity sends it there
    whatever ports the servers got: each candidate has even odds, 64 tries leave 2**-64 to chance)."""
    from endorm_client.affinity import prompt_key, rank

    for i in range(64):
        item = {"prompt": f"Question {i}: what is {i} + {i}?", "response": "An answer."}
        if rank(prompt_key(item), urls)[0] == url:
            return item
    raise AssertionError(f"no prompt ranks {url} first")


@pytest.mark.parametrize("affinity", [False, True], ids=["round-robin", "prompt-affinity"])
def test_503_moves_to_another_replica_at_once(stub, server, sleeps, affinity):
    # Retry-After 600: the stub stays benched for the whole test however slow the machine is
    stub.reply(*[err(503, "draining", retry_after="600")] * 3)
    urls = [stub.url, server.url]
    # both ways the stub is the first choice: round-robin starts at the first URL; with affinity
    # the item's prompt hashes to the stub (ports are random, so the item is picked to match)
    item = item_preferring(stub.url, urls) if affinity else ITEMS[0]
    with RewardClient(urls, api_key=API_KEY, prompt_affinity=affinity) as rm:
        for _ in range(4):
            assert rm.score([item]).model != "stub"
        assert sleeps == []  # no Retry-After wait: the other replica answered at once
        assert {e.url: e.requests for e in rm.endpoints}[stub.url] == 1  # benched after its 503


def test_read_timeout(stub):
    # Held replies never come in time, on any machine; connecting gets a generous bound of its own.
    stub.reply((200, {}, {}, HOLD), (200, {}, {}, HOLD))
    with fast(stub.url, read_timeout=0.3, connect_timeout=30) as rm, pytest.raises(APITimeoutError):
        rm.score(ITEMS[:1])
    assert len(stub.seen) == 1  # not retried by default: the server may still be working on it
    # the retry's prompt reply must come within the read timeout: a generous one (it costs one wait)
    stub.reply((200, {}, {}, HOLD))
    with fast(stub.url, read_timeout=5, connect_timeout=30, retry_read_timeouts=True) as rm:
        assert rm.score(ITEMS[:1]).results[0].score == 1.5
    assert len(stub.seen) == 2
    stub.release()


def test_async_retries(stub):
    stub.reply(err(429, "overloaded", retry_after="1"), err(422, "invalid_request"))

    async def main():
        async with AsyncRewardClient(stub.url, backoff_base=0.05) as rm:
            with pytest.raises(InvalidRequestError):
                await rm.score(ITEMS[:1])
            return await rm.score(ITEMS[:1])

    assert asyncio.run(main()).results[0].score == 1.5
    assert len(stub.seen) == 3 and stub.gaps()[0] >= 1.0


def test_helpers():
    assert chunks(150, 64) == [(0, 50), (50, 100), (100, 150)]
    assert chunks(64, 64) == [(0, 64)] and chunks(0, 64) == [] and chunks(65, 64) == [(0, 33), (33, 65)]
    assert parse_retry_after("3") == 3 and parse_retry_after("0.5") == 0.5 and parse_retry_after("x") is None
    # an HTTP date: seconds from now (whole seconds in the header; 100 s of slack for a stalled test)
    assert 900 < parse_retry_after(email.utils.formatdate(time.time() + 1000, usegmt=True)) <= 1000
    with pytest.raises(ValueError):
        RewardClient("localhost:8000")
    assert RewardClient("http://a:1/, http://b:2").base_urls == ["http://a:1", "http://b:2"]
    rm = RewardClient("http://a:1", timeout=httpx.Timeout(2.0, connect=0.5))
    assert rm.timeout.connect == 0.5 and rm.timeout.read == 2.0
    rm = RewardClient("http://a:1", connect_timeout=1, read_timeout=9)
    assert (rm.timeout.connect, rm.timeout.read) == (1, 9)
