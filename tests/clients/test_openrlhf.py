"""POST /get_reward: OpenRLHF's remote reward-model protocol, with the bodies OpenRLHF sends.

OpenRLHF (openrlhf/trainer/ppo_utils/experience_maker.py, openrlhf/utils/remote_rm_utils.py):
    queries = tokenizer.batch_decode(prompt_ids + output_ids, skip_special_tokens=False)
    requests.post(url, json={"query": queries, "prompts": prompts, "labels": labels},
                  headers={"Content-Type": "application/json"})
    -> response["rewards"], ["scores"], ["extra_logs"][key] (one value per query)
where ``prompts`` are the chat-templated prompt texts and ``prompt_ids`` their tokens
(``add_special_tokens=False``).
"""

from __future__ import annotations

import httpx
import pytest
from transformers import AutoTokenizer

from endorm_client import RewardClient
from endorm_client.integrations.openrlhf import get_rewards, make_reward_func
from tests.conftest import API_KEY, tiny_model
from tests.http.conftest import assert_error

CASES = [
    ([{"role": "user", "content": "What is 2+3?"}], "5", True),
    ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}], "blue", True),
    ([{"role": "user", "content": "Count to three."}], "one two", False),  # cut off at max length: no EOS
]


@pytest.fixture(scope="module")
def rollouts():
    """(queries, prompts, labels, prompt_ids, output_ids) built the way OpenRLHF builds them."""
    tok = AutoTokenizer.from_pretrained(tiny_model("llama"))
    prompts = [tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m, _, _ in CASES]
    prompt_ids = tok(prompts, add_special_tokens=False)["input_ids"]
    output_ids = [
        tok.encode(r, add_special_tokens=False) + ([tok.eos_token_id] if done else []) for _, r, done in CASES
    ]
    queries = tok.batch_decode([p + o for p, o in zip(prompt_ids, output_ids)], skip_special_tokens=False)
    labels = ["5", "", ""]
    return queries, prompts, labels, prompt_ids, output_ids


def _post(server, body, params=None, key=API_KEY):
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    return httpx.post(server.url + "/get_reward", json=body, headers=headers, params=params, timeout=60)


def _exact(client, prompt_ids, output_ids, **opts):
    items = [{"prompt_ids": p, "response_ids": o} for p, o in zip(prompt_ids, output_ids)]
    return [r["score"] for r in client.post("/score", json={"items": items, **opts}).json()["results"]]


def test_openrlhf_body_gives_the_rewards_of_the_exact_tokens(server, client, rollouts):
    queries, prompts, labels, prompt_ids, output_ids = rollouts
    r = _post(server, {"query": queries, "prompts": prompts, "labels": labels})
    assert r.status_code == 200, r.text
    body = r.json()
    # OpenRLHF reads rewards / scores / extra_logs; system_fingerprint says which reward produced them
    assert set(body) == {"rewards", "scores", "extra_logs", "system_fingerprint", "errors"} and body["errors"] == []
    assert body["system_fingerprint"].startswith("fp_")
    assert body["rewards"] == body["scores"] and len(body["rewards"]) == len(queries)
    # the split at the prompt + separate tokenization reproduce the generated tokens exactly
    assert body["rewards"] == pytest.approx(_exact(client, prompt_ids, output_ids), abs=1e-4)
    logs = body["extra_logs"]
    assert logs["endorm_response_tokens"] == [float(len(o)) for o in output_ids]
    assert all(len(v) == len(queries) for v in logs.values())


def test_without_prompts_the_chat_template_splits(server, client, rollouts):
    queries, _, _, prompt_ids, output_ids = rollouts
    body = _post(server, {"query": queries}).json()  # the older protocol: query only
    # a finished turn scores like the exact tokens; the cut-off one too (no EOS added)
    assert body["rewards"] == pytest.approx(_exact(client, prompt_ids, output_ids), abs=1e-4)


def test_options_from_the_query_string(server, client, rollouts):
    queries, prompts, labels, prompt_ids, output_ids = rollouts
    body = {"query": queries, "prompts": prompts, "labels": labels}
    mean = _post(server, body, params={"aggregation": "mean"}).json()["rewards"]
    assert mean == pytest.approx(_exact(client, prompt_ids, output_ids, aggregation="mean"), abs=1e-4)
    disc = _post(server, body, params={"aggregation": "discounted", "gamma": "0.9", "terminal": "bootstrap"}).json()
    assert disc["rewards"] == pytest.approx(
        _exact(client, prompt_ids, output_ids, aggregation="discounted", gamma=0.9, terminal="bootstrap"), abs=1e-4
    )
    assert_error(_post(server, body, params={"aggregation": "median"}), 422, "aggregation")
    assert_error(_post(server, body, params={"unknown": "1"}), 422, "unknown")


def test_extra_fields_empty_batches_and_errors(server, rollouts):
    queries, prompts, labels, _, _ = rollouts
    r = _post(server, {"query": queries[:1], "prompts": prompts[:1], "labels": labels[:1], "metadata": [{"a": 1}]})
    assert r.status_code == 200 and len(r.json()["rewards"]) == 1
    empty = _post(server, {"query": [], "prompts": [], "labels": []}).json()
    assert {k: empty[k] for k in ("rewards", "scores", "extra_logs")} == {"rewards": [], "scores": [], "extra_logs": {}}
    assert_error(_post(server, {"query": queries, "prompts": prompts[:1]}), 422, "prompts")
    assert_error(_post(server, {"query": ["something else"], "prompts": prompts[:1]}), 422, "query.0")
    assert_error(_post(server, {"query": ["no chat turn here"]}), 422, "query.0")
    assert_error(_post(server, {"prompts": prompts}), 422, "query")
    assert_error(_post(server, {"query": queries * 30}), 413)  # 90 > --max-items-per-request 64
    assert_error(_post(server, {"query": queries}, key=None), 401)


def test_sdk_reward_func_for_openrlhf(server, client, rollouts):
    queries, prompts, labels, prompt_ids, output_ids = rollouts
    reward_func = make_reward_func(server.url, api_key=API_KEY)  # what a --remote_rm_url .py file exports
    out = reward_func(queries * 30, prompts * 30, labels * 30)  # 90 queries: split to the 64 limit
    import torch

    assert isinstance(out["rewards"], torch.Tensor) and out["rewards"].shape == (90,)
    expected = _exact(client, prompt_ids, output_ids) * 30
    assert out["rewards"].tolist() == pytest.approx(expected, abs=1e-4)
    assert out["extra_logs"]["endorm_response_tokens"].shape == (90,)
    with RewardClient(server.url, api_key=API_KEY) as rm:
        lists = get_rewards(rm, queries, prompts, labels, aggregation="mean")
    assert lists["rewards"] == pytest.approx(_exact(client, prompt_ids, output_ids, aggregation="mean"), abs=1e-4)
