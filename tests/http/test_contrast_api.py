"""``"contrast": true`` on /score and /compare through a real server and the real SDK: the delta against
two plain requests, both contexts' fields, Bradley-Terry on the contrast, and the 422s."""

from __future__ import annotations

import numpy as np
import pytest

from endorm_client import RewardClient
from tests.conftest import API_KEY
from tests.http.conftest import assert_error

MSGS = [{"role": "user", "content": "What is two plus three?"}]
CRIT = "Answer with the number in words only."
RESPONSES = ["five", "5", "The answer is five."]


def _items(system: str | None = CRIT) -> list[dict]:
    base = {"messages": MSGS, **({"system": system} if system is not None else {})}
    return [{**base, "response": r} for r in RESPONSES]


def test_score_contrast_is_criteria_minus_baseline_per_token(client):
    got = client.post("/score", json={"items": _items(), "contrast": True, "return_tokens": True}).json()
    crit = client.post("/score", json={"items": _items(), "return_tokens": True}).json()
    base = client.post("/score", json={"items": _items(None), "return_tokens": True}).json()
    for d, c, b in zip(got["results"], crit["results"], base["results"]):
        assert d["criteria_score"] == pytest.approx(c["score"], abs=1e-4)
        assert d["baseline_score"] == pytest.approx(b["score"], abs=1e-4)
        assert d["score"] == pytest.approx(c["score"] - b["score"], abs=1e-4)
        assert d["prompt_tokens"] == c["prompt_tokens"]
        for t, tc, tb in zip(d["tokens"], c["tokens"], b["tokens"]):
            assert t["id"] == tc["id"] == tb["id"]
            assert t["criteria_reward"] == pytest.approx(tc["reward"], abs=1e-4)
            assert t["baseline_reward"] == pytest.approx(tb["reward"], abs=1e-4)
            assert t["reward"] == pytest.approx(tc["reward"] - tb["reward"], abs=1e-4)
            assert t["logprob"] == pytest.approx(tc["logprob"] - tb["logprob"], abs=1e-4)
    # usage counts what the engine scored: both contexts
    assert got["usage"]["total_tokens"] == crit["usage"]["total_tokens"] + base["usage"]["total_tokens"]
    plain = client.post("/score", json={"items": _items()}).json()["results"][0]
    assert plain.get("criteria_score") is None  # a plain request is unchanged


def test_compare_contrast_ranks_on_the_delta_and_sdk_agrees(server):
    with RewardClient(server.url, api_key=API_KEY) as sdk:
        res = sdk.compare(
            messages=MSGS,
            system=CRIT,
            responses=RESPONSES,
            contrast=True,
            aggregation="mean",
            baseline_system="Answer with digits only.",
        )
        crit = sdk.compare(messages=MSGS, system=CRIT, responses=RESPONSES, aggregation="mean")
        base = sdk.compare(messages=MSGS, system="Answer with digits only.", responses=RESPONSES, aggregation="mean")
        scores = np.array(res.scores)
        np.testing.assert_allclose(scores, np.array(crit.scores) - np.array(base.scores), atol=1e-4)
        assert res.ranking == [int(i) for i in np.argsort(-scores, kind="stable")]
        np.testing.assert_allclose(res.probabilities[0][1], 1 / (1 + np.exp(scores[1] - scores[0])), atol=1e-9)
        batch = sdk.score_batch(_items(), contrast=True, chunk_size=2)
        assert [r.baseline_score is not None for r in batch.results] == [True] * 3
        one = sdk.score(_items(), contrast=True)
        np.testing.assert_allclose([r.score for r in batch.results], [r.score for r in one.results], atol=1e-4)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"items": [{"prompt": "2+3=", "response": "5"}], "contrast": True}, "items.0.messages"),
        ({"items": [{"messages": MSGS, "response": "5"}], "contrast": True}, "items.0.system"),
        ({"items": [{"messages": MSGS, "system": CRIT, "response": "5"}], "baseline_system": "x"}, "baseline_system"),
    ],
)
def test_score_contrast_errors_name_the_field(client, body, param):
    assert_error(client.post("/score", json=body), 422, param)


def test_compare_contrast_errors_name_the_field(client):
    body = {"messages": MSGS, "responses": RESPONSES, "contrast": True}
    assert_error(client.post("/compare", json=body), 422, "system")
    assert_error(
        client.post("/compare", json={"prompt": "2+3=", "system": CRIT, "responses": RESPONSES, "contrast": True}),
        422,
        "messages",
    )
