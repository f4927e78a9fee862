"""The RL contract on the real engine: per-item outcomes, duplicates computed once, idempotent retries,
group truncation, per-item terminal options and the score's terms.

Costs are counted in LM-head rows (``endorm_lm_head_rows_total{state="computed"}``), never in time;
concurrency is decided by freezing the engine until every request is in flight.
"""

from __future__ import annotations

import concurrent.futures
import re

import httpx
import numpy as np
import pytest

from tests.conftest import tiny_model
from tests.freeze import processes_frozen, server_engine
from tests.reliability.conftest import metric, wait_for

VOCAB = 512  # the tiny llama's
MAX_LEN = 512  # tests/conftest.py COMMON --max-model-len
ROWS = 'endorm_lm_head_rows_total{state="computed"}'


def _ids(rng: np.random.Generator, n: int) -> list[int]:
    return [int(x) for x in rng.integers(5, VOCAB, size=n)]


def _rows(url: str) -> float:
    return metric(url, ROWS)


def _labelled(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics", timeout=60).text
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def _score(client: httpx.Client, items: list[dict], **options) -> httpx.Response:
    return client.post("/score", json={"items": items, **options})


def test_report_mode_scores_61_of_64_as_if_sent_alone(client, server):
    """64 rollouts with 3 bad ones (an out-of-vocabulary id, a sequence over max_model_len, step ends past
    the response): the request is 200, the 3 get their error in place, the 61 equal single-item requests."""
    rng = np.random.default_rng(28)
    prompt = _ids(rng, 40)
    items = [{"prompt_ids": prompt, "response_ids": _ids(rng, int(rng.integers(3, 12)))} for _ in range(64)]
    bad = {
        7: ({"prompt_ids": prompt, "response_ids": [3, VOCAB + 5]}, "token_out_of_vocabulary", 422),
        30: ({"prompt_ids": prompt, "response_ids": _ids(rng, MAX_LEN)}, "sequence_too_long", 413),
        51: ({"prompt_ids": prompt, "response_ids": [9, 10], "step_ends": [5]}, "invalid_input", 422),
    }
    for i, (item, _, _) in bad.items():
        items[i] = item
    errors_before = {
        code: _labelled(server.url, f'endorm_item_errors_total{{code="{code}"}}') for _, code, _ in bad.values()
    }

    rejected = _score(client, items)
    assert rejected.status_code == 422 and rejected.json()["error"]["param"].startswith("items.7"), rejected.text

    r = _score(client, items, item_errors="report")
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [res["index"] for res in results] == list(range(64))
    for i, (_, code, _) in bad.items():
        res = results[i]
        assert res["score"] is None and set(res) == {"index", "score", "error"}, res
        assert res["error"]["code"] == code and res["error"]["param"].startswith(f"items.{i}"), res
        assert {"type", "code", "message", "param"} == set(res["error"])
    good = [i for i in range(64) if i not in bad]
    assert len(good) == 61
    alone = [_score(client, [items[i]]).json()["results"][0]["score"] for i in good]
    np.testing.assert_allclose([results[i]["score"] for i in good], alone, rtol=1e-5, atol=1e-4)
    for _, code, _ in bad.values():
        after = _labelled(server.url, f'endorm_item_errors_total{{code="{code}"}}')
        assert after - errors_before[code] >= 1, code


def test_report_mode_on_compare_get_reward_and_classify(client):
    rng = np.random.default_rng(5)
    prompt = _ids(rng, 20)
    r = client.post(
        "/compare",
        json={
            "prompt_ids": prompt,
            "responses_ids": [_ids(rng, 4), [VOCAB + 1], _ids(rng, 6)],
            "item_errors": "report",
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["failed"] == [1] and body["scores"][1] is None
    assert sorted(body["ranking"]) == [0, 2] and body["best"] in (0, 2)
    assert body["probabilities"][1] == [None, None, None] and body["probabilities"][0][1] is None
    assert body["probabilities"][0][2] + body["probabilities"][2][0] == pytest.approx(1.0)

    texts = ["Q: 2+3=\nA: 5", "no prompt split here"]
    r = client.post("/get_reward?item_errors=report", json={"query": texts, "prompts": ["Q: 2+3=\nA:", "xyz"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["rewards"][1] is None and isinstance(body["rewards"][0], float)
    assert [e["index"] for e in body["errors"]] == [1] and body["errors"][0]["param"] == "query.1"
    assert client.post("/get_reward", json={"query": texts, "prompts": ["Q: 2+3=\nA:", "xyz"]}).status_code == 422

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model("llama"))
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "2+3?"}, {"role": "assistant", "content": "5"}], tokenize=False
    )
    inputs = [chat, "no assistant turn in this text", chat]
    r = client.post("/classify", json={"input": inputs, "item_errors": "report", "activation": False})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert data[1]["probs"] == [] and data[1]["error"]["param"] == "input.1"
    assert data[0]["probs"] == data[2]["probs"] and len(data[0]["probs"]) == 1
    assert client.post("/classify", json={"input": inputs}).status_code == 422


def test_eight_identical_items_cost_one_items_rows(client, server):
    rng = np.random.default_rng(8)
    one = {"prompt_ids": _ids(rng, 30), "response_ids": _ids(rng, 9)}
    before = _rows(server.url)
    single = _score(client, [one]).json()["results"][0]
    rows_one = _rows(server.url) - before
    assert rows_one > 0

    same = {"prompt_ids": _ids(rng, 30), "response_ids": _ids(rng, 9)}  # same shape, not yet computed
    before = _rows(server.url)
    eight = _score(client, [same] * 8).json()["results"]
    assert _rows(server.url) - before == rows_one  # computed once, fanned out
    assert len({res["score"] for res in eight}) == 1 and single["num_tokens"] == eight[0]["num_tokens"]


def test_identical_requests_in_flight_are_computed_once(client, server):
    """Two requests for the same item while the engine is frozen: one engine call, two answers."""
    rng = np.random.default_rng(9)
    item = {"prompt_ids": _ids(rng, 25), "response_ids": _ids(rng, 7)}
    shared_before = _labelled(server.url, "endorm_shared_engine_calls_total")
    rows_before = _rows(server.url)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        with processes_frozen(server_engine(server)):
            futures = [pool.submit(_score, client, [item]) for _ in range(2)]
            wait_for(lambda: metric(server.url, "endorm_in_flight_requests") == 2, "both requests admitted")
        answers = [f.result() for f in futures]
    assert [a.status_code for a in answers] == [200, 200]
    assert answers[0].json()["results"] == answers[1].json()["results"]
    assert _labelled(server.url, "endorm_shared_engine_calls_total") - shared_before == 1
    single_rows = _rows(server.url) - rows_before
    before = _rows(server.url)
    _score(client, [{**item, "response_ids": item["response_ids"][::-1]}])  # same shape, computed alone
    assert single_rows == _rows(server.url) - before


def test_idempotency_key_replays_byte_for_byte_and_computes_nothing(client, server):
    rng = np.random.default_rng(11)
    body = {"items": [{"prompt_ids": _ids(rng, 20), "response_ids": _ids(rng, 5)}], "return_tokens": True}
    key = {"Idempotency-Key": "grpo-step-7-batch-3"}
    first = client.post("/score", json=body, headers=key)
    assert first.status_code == 200 and "idempotent-replayed" not in first.headers
    rows = _rows(server.url)
    again = client.post("/score", json=body, headers=key)
    assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    assert _rows(server.url) == rows  # nothing computed
    other = client.post("/score", json={**body, "aggregation": "mean"}, headers=key)
    assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_key_reused", other.text
    bad = client.post("/score", json=body, headers={"Idempotency-Key": "has a space"})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_idempotency_key"
    assert _labelled(server.url, "endorm_idempotent_replays_total") >= 1


def test_idempotent_repeat_in_flight_waits_for_the_first(client, server):
    rng = np.random.default_rng(12)
    body = {"items": [{"prompt_ids": _ids(rng, 22), "response_ids": _ids(rng, 6)}]}
    key = {"Idempotency-Key": "retry-while-running"}
    waits = _labelled(server.url, "endorm_idempotent_waits_total")
    rows = _rows(server.url)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        with processes_frozen(server_engine(server)):
            first = pool.submit(client.post, "/score", json=body, headers=key)
            wait_for(lambda: metric(server.url, "endorm_in_flight_requests") == 1, "the first admitted")
            second = pool.submit(client.post, "/score", json=body, headers=key)
            wait_for(lambda: _labelled(server.url, "endorm_idempotent_waits_total") == waits + 1, "the repeat waits")
        a, b = first.result(), second.result()
    assert a.status_code == b.status_code == 200 and a.content == b.content
    assert b.headers.get("idempotent-replayed") == "true"
    single = _rows(server.url) - rows
    before = _rows(server.url)
    _score(client, [{**body["items"][0], "response_ids": body["items"][0]["response_ids"][::-1]}])
    assert single == _rows(server.url) - before  # the repeat computed nothing


def test_truncation_cuts_a_group_alike(client):
    """Items sharing a prompt are cut by the group's longest response: same prompt_tokens and
    truncated_tokens, so V(s_0) cancels; each equals scoring the pre-cut prompt without truncation."""
    rng = np.random.default_rng(4)
    prompt = _ids(rng, MAX_LEN - 20)
    responses = [_ids(rng, n) for n in (10, 30, 50)]
    r = _score(client, [{"prompt_ids": prompt, "response_ids": y} for y in responses], truncate=True)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert {res["truncated_tokens"] for res in results} == {30}  # 492 + 50 - 512
    assert {res["prompt_tokens"] for res in results} == {len(prompt) - 30}
    cut = prompt[30:]
    alone = _score(client, [{"prompt_ids": cut, "response_ids": y} for y in responses]).json()["results"]
    np.testing.assert_allclose([x["score"] for x in results], [x["score"] for x in alone], rtol=1e-5, atol=1e-4)


def test_terms_telescope_and_item_options_override(client):
    rng = np.random.default_rng(6)
    prompt, response = _ids(rng, 15), _ids(rng, 8)
    for terminal in ("zero", "bootstrap"):
        r = _score(client, [{"prompt_ids": prompt, "response_ids": response}], terminal=terminal, return_terms=True)
        res = r.json()["results"][0]
        t = res["terms"]
        assert res["score"] == pytest.approx(t["loglik"] + t["v_start"] - t["v_end"], abs=1e-6)
        assert (t["v_end"] == 0.0) == (terminal == "zero")
    cut_off = {"prompt_ids": prompt, "response_ids": response, "terminal": "bootstrap", "add_eos": False}
    mixed = _score(client, [cut_off, {"prompt_ids": prompt, "response_ids": response}]).json()["results"]
    request_level = _score(client, [{"prompt_ids": prompt, "response_ids": response}], terminal="bootstrap").json()
    assert mixed[0]["score"] == pytest.approx(request_level["results"][0]["score"], abs=1e-5)
    assert mixed[0]["score"] != pytest.approx(mixed[1]["score"], abs=1e-6)


def test_idempotency_is_behind_auth(anon):
    r = anon.post("/score", json={"items": []}, headers={"Idempotency-Key": "k"})
    assert r.status_code == 401
