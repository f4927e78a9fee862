"""The trainer adapters' side of the RL contract, against the live server: a batch with bad items
(each adapter maps a failed item to its trainer's convention: TRL None, OpenRLHF and verl a fallback,
logged and counted) and a batch of mixed finished and cut-off rollouts (decided per item from the
trainer's own data: a cut-off one is scored with terminal bootstrap and no appended end-of-turn)."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest
from transformers import AutoTokenizer

from endorm_client import RewardClient
from endorm_client.integrations.openrlhf import get_rewards, make_reward_func
from endorm_client.integrations.trl import make_reward_function
from endorm_client.integrations.verl import make_compute_score
from tests.conftest import API_KEY, tiny_model

VOCAB, MAX_LEN = 512, 512
CHAT = [[{"role": "user", "content": "What is 2+3?"}], [{"role": "user", "content": "Name a colour."}]]


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(tiny_model("llama"))


def scores(client: httpx.Client, items: list[dict], **opts) -> list[float]:
    r = client.post("/score", json={"items": items, **opts})
    assert r.status_code == 200, r.text
    return [x["score"] for x in r.json()["results"]]


# ------------------------------------------------------------------ TRL


def test_trl_failed_completion_is_none_and_counted(server, client, tok, caplog):
    eos = tok.eos_token_id
    ids = [tok.encode("5", add_special_tokens=False) + [eos], [40, VOCAB + 7, eos], [41] * MAX_LEN + [eos], [42, eos]]
    prompts = [CHAT[0], CHAT[1], CHAT[0], CHAT[1]]
    completions = [[{"role": "assistant", "content": "x"}]] * 4
    metrics: dict[str, float] = {}
    fn = make_reward_function(server.url, api_key=API_KEY, use_completion_ids=True, eos_token_id=eos)
    with caplog.at_level(logging.WARNING, logger="endorm_client.integrations"):
        got = fn(prompts=prompts, completions=completions, completion_ids=ids, log_metric=metrics.__setitem__)
    assert got[1] is None and got[2] is None  # TRL: not applicable
    want = scores(client, [{"messages": prompts[i], "response_ids": ids[i]} for i in (0, 3)])
    assert [got[0], got[3]] == pytest.approx(want, abs=1e-4)
    assert fn.failed.total == 2 and dict(fn.failed.by_code) == {"token_out_of_vocabulary": 1, "sequence_too_long": 1}
    assert metrics["endorm/failed_items"] == 2.0
    assert sum("could not be scored" in r.message for r in caplog.records) == 2


@pytest.mark.parametrize("use_ids", [False, True], ids=["text", "completion_ids"])
def test_trl_cut_off_completions_bootstrap(server, client, tok, use_ids):
    eos = tok.eos_token_id
    texts = ["5", "blue and", "red", "green or"]
    ids = [tok.encode(t, add_special_tokens=False) + ([eos] if i % 2 == 0 else []) for i, t in enumerate(texts)]
    prompts = [CHAT[i % 2] for i in range(4)]
    completions = [[{"role": "assistant", "content": t}] for t in texts]
    fn = make_reward_function(server.url, api_key=API_KEY, use_completion_ids=use_ids, eos_token_id=eos)
    got = fn(prompts=prompts, completions=completions, completion_ids=ids)

    def item(i: int) -> dict:
        resp = {"response_ids": ids[i]} if use_ids else {"response": texts[i]}
        return {"messages": prompts[i], **resp}

    finished = scores(client, [item(0), item(2)])
    cut = scores(client, [item(1), item(3)], terminal="bootstrap", add_eos=False)
    cut_as_finished = scores(client, [item(1), item(3)])
    assert [got[0], got[2]] == pytest.approx(finished, abs=1e-4)
    assert [got[1], got[3]] == pytest.approx(cut, abs=1e-4)
    assert all(abs(a - b) > 1e-3 for a, b in zip(cut, cut_as_finished))  # the decision changes the reward
    # told otherwise: the request's terminal for every completion
    keep = make_reward_function(
        server.url, api_key=API_KEY, use_completion_ids=use_ids, eos_token_id=eos, unfinished_terminal=None
    )
    got = keep(prompts=prompts, completions=completions, completion_ids=ids)
    if use_ids:  # exact tokens: no end-of-turn is appended either way
        assert [got[1], got[3]] == pytest.approx(cut_as_finished, abs=1e-4)
    else:
        assert [got[1], got[3]] == pytest.approx(scores(client, [item(1), item(3)], add_eos=False), abs=1e-4)


# ------------------------------------------------------------------ OpenRLHF


def _rollouts(tok, responses: list[tuple[str, bool]]):
    prompts = [
        tok.apply_chat_template(CHAT[i % 2], add_generation_prompt=True, tokenize=False) for i in range(len(responses))
    ]
    prompt_ids = tok(prompts, add_special_tokens=False)["input_ids"]
    output_ids = [
        tok.encode(r, add_special_tokens=False) + ([tok.eos_token_id] if done else []) for r, done in responses
    ]
    queries = tok.batch_decode([p + o for p, o in zip(prompt_ids, output_ids)], skip_special_tokens=False)
    return queries, prompts, prompt_ids, output_ids


def test_openrlhf_failed_query_gets_the_fallback_logged_and_counted(server, client, tok, caplog):
    queries, prompts, prompt_ids, output_ids = _rollouts(tok, [("5", True), ("blue", True), ("red", True)])
    queries[1] = "this query does not start with its prompt"
    reward_func = make_reward_func(server.url, api_key=API_KEY, fallback=-7.0)
    with caplog.at_level(logging.WARNING, logger="endorm_client.integrations"):
        out = reward_func(queries, prompts, ["", "", ""])
    rewards = out["rewards"].tolist()
    assert rewards[1] == -7.0 and out["scores"].tolist()[1] == -7.0
    want = scores(client, [{"prompt_ids": prompt_ids[i], "response_ids": output_ids[i]} for i in (0, 2)])
    assert [rewards[0], rewards[2]] == pytest.approx(want, abs=1e-4)
    assert out["extra_logs"]["endorm_item_failed"].tolist() == [0.0, 1.0, 0.0]
    assert reward_func.failed.total == 1 and reward_func.failed.by_code["invalid_input"] == 1  # type: ignore[attr-defined]
    assert any("item 1 could not be scored" in r.message for r in caplog.records)


def test_openrlhf_cut_off_queries_bootstrap(server, client, tok):
    queries, prompts, prompt_ids, output_ids = _rollouts(
        tok, [("5", True), ("blue and", False), ("red", True), ("green or", False)]
    )
    with RewardClient(server.url, api_key=API_KEY) as rm:
        out = get_rewards(rm, queries, prompts, eos_text=tok.eos_token)
        plain = get_rewards(rm, queries, prompts)  # no eos_text: every query as the request's terminal
    exact = [{"prompt_ids": p, "response_ids": o} for p, o in zip(prompt_ids, output_ids)]
    finished = scores(client, [exact[0], exact[2]])
    cut = scores(client, [exact[1], exact[3]], terminal="bootstrap")
    assert [out["rewards"][0], out["rewards"][2]] == pytest.approx(finished, abs=1e-4)
    assert [out["rewards"][1], out["rewards"][3]] == pytest.approx(cut, abs=1e-4)
    assert [plain["rewards"][1], plain["rewards"][3]] == pytest.approx(scores(client, [exact[1], exact[3]]), abs=1e-4)
    assert all(abs(a - b) > 1e-3 for a, b in zip(cut, [plain["rewards"][1], plain["rewards"][3]]))


# ------------------------------------------------------------------ verl


def test_verl_compute_score_fallback(server):
    compute = make_compute_score(server.url, api_key=API_KEY, asynchronous=False, fallback=-3.0)
    ok = compute("d", "5", None, {"question": "What is 2+3?"})
    bad = compute("d", "word " * (MAX_LEN + 10), None, {"question": "What is 2+3?"})
    assert isinstance(ok, float) and ok != -3.0 and bad == -3.0
    assert compute.failed.total == 1 and compute.failed.by_code["sequence_too_long"] == 1  # type: ignore[attr-defined]

    acompute = make_compute_score(server.url, api_key=API_KEY, fallback=-3.0)
    cut = asyncio.run(acompute("d", "5", None, {"question": "What is 2+3?", "endorm_truncated": True}))
    with RewardClient(server.url, api_key=API_KEY) as rm:
        want = rm.score(
            [{"messages": [{"role": "user", "content": "What is 2+3?"}], "response": "5"}],
            terminal="bootstrap",
            add_eos=False,
        ).scores[0]
    assert cut == pytest.approx(want, abs=1e-4)
