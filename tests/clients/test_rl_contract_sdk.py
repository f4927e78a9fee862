"""The SDK's side of the RL contract: typed per-item failures from the batch helpers, an
Idempotency-Key per logical call (a retried answer is replayed by the server, not recomputed), a 500
neither retried nor held against the replica, and one total deadline across attempts.

Costs are counted in the server's LM-head rows and its replay counter, never in time."""

from __future__ import annotations

import re

import httpx
import numpy as np
import pytest

from endorm_client import (
    APITimeoutError,
    InternalServerError,
    InvalidRequestError,
    ItemError,
    ItemsFailed,
    RewardClient,
    ServiceUnavailableError,
)
from tests.clients.conftest import API_KEY, HOLD, err
from tests.clients.proxy import DROP, UNAVAILABLE, LossyProxy

VOCAB, MAX_LEN = 512, 512  # the tiny llama, tests/conftest.py COMMON
ROWS = 'endorm_lm_head_rows_total{state="computed"}'
REPLAYS = "endorm_idempotent_replays_total"


def _counter(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics", timeout=120).text
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def _ids(rng: np.random.Generator, n: int) -> list[int]:
    return [int(x) for x in rng.integers(5, VOCAB, size=n)]


def fast(url, **kw) -> RewardClient:
    return RewardClient(url, **{"api_key": API_KEY, "backoff_base": 0.05, "backoff_max": 0.2, **kw})


# ------------------------------------------------------------------ per-item outcomes


def test_score_batch_reports_bad_items_typed_and_scores_the_rest(server, client):
    rng = np.random.default_rng(281)
    prompt = _ids(rng, 30)
    items = [{"prompt_ids": prompt, "response_ids": _ids(rng, 5 + i % 4)} for i in range(10)]
    items[2] = {"prompt_ids": prompt, "response_ids": [7, VOCAB + 3]}
    items[7] = {"prompt_ids": prompt, "response_ids": _ids(rng, MAX_LEN)}
    with RewardClient(server.url, api_key=API_KEY) as rm:
        res = rm.score_batch(items, chunk_size=4)  # three chunks; failures keep their global index
        with pytest.raises(InvalidRequestError):  # score() keeps the server's default: reject
            rm.score(items[:4])
    assert [r.index for r in res.results] == list(range(10))
    assert [f.index for f in res.failures] == [2, 7]
    assert isinstance(res.results[2], ItemError) and res.results[2].score is None
    assert res.results[2].error.code == "token_out_of_vocabulary" and res.results[7].error.code == "sequence_too_long"
    assert res.scores[2] is None and res.scores[7] is None
    good = [i for i in range(10) if i not in (2, 7)]
    alone = [client.post("/score", json={"items": [items[i]]}).json()["results"][0]["score"] for i in good]
    np.testing.assert_allclose([res.scores[i] for i in good], alone, rtol=1e-5, atol=1e-4)
    with pytest.raises(ItemsFailed) as exc:
        res.raise_for_failures()
    assert [f.index for f in exc.value.failures] == [2, 7]


def test_compare_reports_a_bad_response(server):
    rng = np.random.default_rng(282)
    with RewardClient(server.url, api_key=API_KEY) as rm:
        res = rm.compare(
            prompt_ids=_ids(rng, 12),
            responses_ids=[_ids(rng, 4), [VOCAB + 9], _ids(rng, 5)],
            item_errors="report",
            return_terms=True,
        )
    assert res.failed == [1] and res.scores[1] is None and sorted(res.ranking) == [0, 2]
    assert [f.index for f in res.failures] == [1]
    terms = res.results[0].terms  # type: ignore[union-attr]
    assert terms is not None and res.scores[0] == pytest.approx(terms.loglik + terms.v_start - terms.v_end, abs=1e-3)


# ------------------------------------------------------------------ idempotency keys


def test_one_idempotency_key_per_call_kept_across_retries(stub):
    stub.reply(err(429, "overloaded", retry_after="0"), err(503, "unavailable", retry_after="0"))
    with fast(stub.url) as rm:
        rm.score([{"prompt": "a", "response": "b"}])
        rm.score([{"prompt": "a", "response": "b"}])
        rm.score([{"prompt": "a", "response": "b"}], idempotency_key="step-7-batch-3")
        rm.ready()
    keys = [s.headers.get("idempotency-key") for s in stub.seen]
    assert len(keys) == 6 and keys[0] == keys[1] == keys[2] and keys[3] not in (None, keys[0])
    assert keys[4] == "step-7-batch-3" and keys[5] is None  # GET /ready carries none
    stub.reply()
    with fast(stub.url, idempotency_keys=False) as rm:
        rm.score([{"prompt": "a", "response": "b"}])
    assert "idempotency-key" not in stub.seen[0].headers


@pytest.mark.parametrize("loss", [DROP, UNAVAILABLE], ids=["dropped-connection", "503"])
def test_a_retried_call_is_replayed_not_recomputed(server, loss):
    """The first attempt reaches the server, which computes and answers; the answer is lost on the way
    back (the connection drops / a 503 in its place). The SDK's retry carries the same key: the server
    replays its stored answer and computes no LM-head row."""
    rng = np.random.default_rng(283 if loss == DROP else 284)
    items = [{"prompt_ids": _ids(rng, 24), "response_ids": _ids(rng, 6)} for _ in range(3)]
    proxy = LossyProxy(server.url, plan=[loss])
    try:
        rows, replays = _counter(server.url, ROWS), _counter(server.url, REPLAYS)
        with fast(proxy.url, max_retries=2) as rm:
            res = rm.score(items)
        rows_retried = _counter(server.url, ROWS) - rows
        assert len(proxy.seen) == 2, proxy.seen  # one retry
        key = proxy.seen[0]["idempotency-key"]
        assert key and proxy.seen[1]["idempotency-key"] == key
        assert "idempotent-replayed" not in proxy.answered[0] and proxy.answered[1]["idempotent-replayed"] == "true"
        assert _counter(server.url, REPLAYS) - replays == 1
        # the same shapes computed once, with nothing lost: the retry cost no row
        fresh = [{"prompt_ids": _ids(rng, 24), "response_ids": _ids(rng, 6)} for _ in range(3)]
        before = _counter(server.url, ROWS)
        with fast(server.url) as rm:
            rm.score(fresh)
        assert rows_retried == _counter(server.url, ROWS) - before > 0
        assert len(res.results) == 3 and all(r.score is not None for r in res.results)
    finally:
        proxy.close()


# ------------------------------------------------------------------ 500 vs 503


def test_500_is_not_retried_and_does_not_bench_the_replica(stub, server):
    urls = [stub.url, server.url]
    with RewardClient(urls, api_key=API_KEY, prompt_affinity=False, backoff_base=0.05) as rm:
        stub.reply(err(500, "internal_error", retry_after="0"))
        with pytest.raises(InternalServerError):
            rm.score([{"prompt": "a", "response": "b"}])  # round-robin starts at the stub
        by_url = {e.url: e for e in rm.endpoints}
        assert len(stub.seen) == 1 and by_url[server.url].requests == 0  # not retried elsewhere
        assert by_url[stub.url].failures == 0 and by_url[stub.url].down_until == 0.0  # not benched
        # the next calls still reach the stub (healthy), round-robin
        stub.reply()
        for _ in range(2):
            rm.score([{"prompt": "a", "response": "b"}])
        assert len(stub.seen) == 1 and by_url[stub.url].requests == 2
        # a 503 benches it (Retry-After 600: for the whole test) and the call moves to the server
        stub.reply(err(503, "draining", retry_after="600"))
        calls = [rm.score([{"prompt": "a", "response": "b"}]) for _ in range(3)]
        assert by_url[stub.url].failures == 1 and by_url[stub.url].down_until > 0
        assert len(stub.seen) <= 1 and all(c.model != "stub" for c in calls[-2:])


# ------------------------------------------------------------------ the total deadline


def test_total_timeout_bounds_the_call_across_attempts(stub):
    # a Retry-After longer than what is left of the deadline: no retry is made
    stub.reply(*[err(503, "loading", retry_after="30")] * 3)
    with fast(stub.url, max_retries=5, total_timeout=10) as rm, pytest.raises(ServiceUnavailableError) as exc:
        rm.score([{"prompt": "a", "response": "b"}])
    assert len(stub.seen) == 1 and "total_timeout of 10 s" in str(exc.value)
    # an attempt's read timeout is cut to the time left: a held answer ends at the deadline, not after 300 s
    stub.reply((200, {}, {}, HOLD))
    with fast(stub.url, read_timeout=300, connect_timeout=30, total_timeout=1.0) as rm, pytest.raises(APITimeoutError):
        rm.score([{"prompt": "a", "response": "b"}])
    assert len(stub.seen) == 1
    stub.release()
