"""POST /classify with verl's request shape, answered in vLLM's ClassificationResponse shape.

verl (verl/experimental/reward_loop/reward_loop.py, RewardLoopWorker.compute_score_disrm):
    chat = list(raw_prompt); chat.append({"role": "assistant", "content": decoded_response_without_eos})
    rm_prompt = rm_tokenizer.apply_chat_template(chat, add_generation_prompt=False, tokenize=False)
    rm_prompt = rm_prompt[len(bos_token):] if rm_prompt.startswith(bos_token) else rm_prompt
    POST http://{router}/classify {"model": reward_model.model.path, "input": rm_prompt, "activation": False}
    reward = output["data"][-1]["probs"][-1]
"""

from __future__ import annotations

import asyncio
import math

import httpx
import pytest
from transformers import AutoTokenizer

from endorm_client.client import AsyncRewardClient
from endorm_client.integrations.verl import make_compute_score
from endorm_client.loop_clients import PerLoopClients
from tests.conftest import API_KEY, tiny_model
from tests.http.conftest import assert_error

CHAT = [{"role": "user", "content": "What is 2+3?"}]
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(tiny_model("llama"))


def verl_input(tok, chat, response: str) -> str:
    text = tok.apply_chat_template(
        [*chat, {"role": "assistant", "content": response}], add_generation_prompt=False, tokenize=False
    )
    return text[len(tok.bos_token) :] if tok.bos_token and text.startswith(tok.bos_token) else text


def classify(server, body, **kw):
    return httpx.post(server.url + "/classify", json=body, headers={**AUTH, **kw.pop("headers", {})}, timeout=60, **kw)


def score_of(client, chat, response, **opts) -> float:
    return client.post("/score", json={"items": [{"messages": chat, "response": response}], **opts}).json()["results"][
        0
    ]["score"]


def test_verl_request_reads_the_reward(server, client, tok):
    body = {"model": str(tiny_model("llama")), "input": verl_input(tok, CHAT, "5"), "activation": False}
    r = classify(server, body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["data"][-1]["probs"][-1] == pytest.approx(score_of(client, CHAT, "5"), abs=1e-4)
    # vLLM's ClassificationResponse shape
    assert set(out) >= {"id", "object", "created", "model", "data", "usage"}
    assert out["id"].startswith("classify-") and out["object"] == "list" and isinstance(out["created"], int)
    assert out["model"] == tiny_model("llama").name
    assert out["data"] == [{"index": 0, "label": None, "probs": out["data"][0]["probs"], "num_classes": 1}]
    assert out["usage"]["total_tokens"] == out["usage"]["prompt_tokens"] > 0


def test_activation_and_vllm_parameter_names(server, client, tok):
    raw = score_of(client, CHAT, "five")
    text = verl_input(tok, CHAT, "five")
    sig = 1 / (1 + math.exp(-raw))
    for extra, want in (
        ({"use_activation": False}, raw),
        ({"use_activation": True}, sig),
        ({}, sig),
        ({"activation": True}, sig),
        ({"activation": True, "use_activation": False}, raw),
    ):
        got = classify(server, {"input": text, **extra}).json()["data"][0]["probs"][0]
        assert got == pytest.approx(want, rel=1e-4, abs=1e-9), extra
    # other vLLM request fields are accepted (and ignored), like vLLM's own server does
    r = classify(server, {"input": text, "activation": False, "user": "u", "truncate_prompt_tokens": -1, "priority": 0})
    assert r.status_code == 200
    assert classify(server, {"input": text, "activation": False}).json()["data"][0]["probs"][0] == pytest.approx(
        raw, abs=1e-4
    )


def test_input_forms(server, client, tok):
    chats = [(CHAT, "5"), ([{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}], "Hello!")]
    want = [score_of(client, c, r) for c, r in chats]
    texts = [verl_input(tok, c, r) for c, r in chats]
    got = classify(server, {"input": texts, "activation": False}).json()["data"]
    assert [d["index"] for d in got] == [0, 1] and [d["probs"][0] for d in got] == pytest.approx(want, abs=1e-4)
    # with the BOS kept, and via /v1/classify
    full = tok.bos_token + texts[0]
    r = httpx.post(server.url + "/v1/classify", json={"input": full, "activation": False}, headers=AUTH, timeout=60)
    assert r.json()["data"][0]["probs"][0] == pytest.approx(want[0], abs=1e-4)
    # token ids of the whole conversation
    ids = tok.encode(full, add_special_tokens=False)
    got = classify(server, {"input": ids, "activation": False}).json()["data"][0]["probs"][0]
    assert got == pytest.approx(want[0], abs=1e-4)
    got = classify(server, {"input": [ids, ids], "activation": False}).json()["data"]
    assert len(got) == 2
    # a conversation: vLLM's chat form (messages) or a message list as input
    conv = [*chats[1][0], {"role": "assistant", "content": chats[1][1]}]
    for body in ({"messages": conv}, {"input": conv}):
        got = classify(server, {**body, "activation": False}).json()["data"][0]["probs"][0]
        assert got == pytest.approx(want[1], abs=1e-4)
    # scoring options of this service
    got = classify(server, {"input": texts[0], "activation": False, "aggregation": "mean"}).json()["data"][0]["probs"][
        0
    ]
    assert got == pytest.approx(score_of(client, CHAT, "5", aggregation="mean"), abs=1e-4)


def test_classify_errors(server, tok):
    assert_error(classify(server, {"input": "plain text, no chat turns", "activation": False}), 422, "input")
    assert_error(classify(server, {"input": ["x", verl_input(tok, CHAT, "5")]}), 422, "input.0")
    assert_error(classify(server, {"messages": CHAT}), 422, "messages")  # no assistant turn to score
    assert_error(classify(server, {"input": [1, 2, 3]}), 422, "input")
    assert_error(classify(server, {}), 422, "input")
    assert_error(classify(server, {"input": verl_input(tok, CHAT, "5"), "messages": CHAT}), 422, "input")
    assert_error(classify(server, {"model": "other-model", "input": verl_input(tok, CHAT, "5")}), 404, "model")
    assert_error(classify(server, {"input": [verl_input(tok, CHAT, "5")] * 65}), 413, "input")
    assert_error(classify(server, {"input": "x"}, headers={"Authorization": "Bearer nope"}), 401)


def test_sdk_compute_score_for_verl(server, client):
    compute_score = make_compute_score(server.url, api_key=API_KEY, prompt_key="question")

    async def main():
        return await asyncio.gather(
            *(
                compute_score("gsm8k", r, "5", {"question": "What is 2+3?"}, reward_router_address=None)
                for r in ("5", "6")
            )
        )

    got = asyncio.run(main())
    assert got == pytest.approx([score_of(client, CHAT, "5"), score_of(client, CHAT, "6")], abs=1e-4)
    sync = make_compute_score(server.url, api_key=API_KEY, asynchronous=False)
    assert sync("gsm8k", "5", "5", {"question": "What is 2+3?"}) == pytest.approx(got[0], abs=1e-4)


def test_one_client_per_event_loop_closed_with_its_loop(server):
    """verl awaits compute_score from several loops (and asyncio.run per batch): each loop gets its own
    client, and that client's connections close when its loop shuts down instead of leaking."""
    made: list[AsyncRewardClient] = []

    def factory() -> AsyncRewardClient:
        made.append(AsyncRewardClient(server.url, api_key=API_KEY))
        return made[-1]

    clients = PerLoopClients(factory)

    async def twice():
        first, again = await clients.get(), await clients.get()
        assert first is again  # one per loop, not one per call
        return (await first.score([{"prompt": "What is 2+3?", "response": "5"}])).results[0].score

    scores = [asyncio.run(twice()), asyncio.run(twice())]
    assert len(made) == 2 and made[0] is not made[1]
    assert all(c._http.is_closed for c in made)  # closed by each loop's shutdown_asyncgens
    assert scores[0] == pytest.approx(scores[1], abs=1e-6)
    # the adapter itself keeps working across loops (its first loop's client is gone by then)
    compute_score = make_compute_score(server.url, api_key=API_KEY, prompt_key="question")
    runs = [asyncio.run(compute_score("gsm8k", "5", "5", {"question": "What is 2+3?"})) for _ in range(2)]
    assert runs[0] == pytest.approx(runs[1], abs=1e-6)


def test_sdk_compute_score_with_the_criteria_contrast(server, client):
    """contrast=True: the reward is r(x, criteria, y) - r(x, baseline, y), as /score's contrast returns it."""
    criteria = "Answer with the number in words only."
    compute_score = make_compute_score(
        server.url, api_key=API_KEY, prompt_key="question", system=criteria, contrast=True, asynchronous=False
    )
    got = compute_score("gsm8k", "five", "5", {"question": "What is 2+3?"})
    body = {"items": [{"messages": CHAT, "system": criteria, "response": "five"}], "contrast": True}
    want = client.post("/score", json=body).json()["results"][0]
    assert got == pytest.approx(want["score"], abs=1e-5)
    assert want["score"] == pytest.approx(want["criteria_score"] - want["baseline_score"], abs=1e-4)
    with pytest.raises(ValueError, match="system"):
        make_compute_score(server.url, contrast=True)
    with pytest.raises(ValueError, match="baseline_system"):
        make_compute_score(server.url, system=criteria, baseline_system="Be brief.")
