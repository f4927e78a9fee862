"""Steps and token offsets over HTTP: /score, /compare and the bad-input answers."""

from __future__ import annotations

import pytest

from tests.http.conftest import assert_error

CHAT = [{"role": "user", "content": "What is 2*(2+3)? Think step by step."}]
STEPS = ["First, 2+3 = 5.\n\n", "Then 2*5 = 10.\n\n", "The answer is 10."]


def test_score_with_steps_and_offsets(client):
    body = {
        "items": [
            {"messages": CHAT, "steps": STEPS},
            {"messages": CHAT, "response": "".join(STEPS), "step_separator": "\n\n"},
            {"prompt": "Q:", "response_ids": [20, 21, 22, 23, 24], "step_ends": [2, 4]},
        ],
        "return_tokens": True,
    }
    r = client.post("/score", json=body)
    assert r.status_code == 200, r.text
    a, b, c = r.json()["results"]
    assert a["steps"] == b["steps"] and a["score"] == b["score"]
    assert [s["text"] for s in a["steps"]] == STEPS
    assert sum(s["reward"] for s in a["steps"]) == pytest.approx(a["score"], abs=1e-6)  # sum over steps = sum
    assert sum(s["num_tokens"] for s in a["steps"]) == a["num_tokens"]
    text = "".join(STEPS)
    offs = [t["offset"] for t in a["tokens"]]
    assert "".join(text[x:y] for x, y in offs) == text and offs[-1] == [len(text), len(text)]
    assert [(s["start"], s["end"]) for s in c["steps"]] == [(0, 2), (2, 5)]  # token 4 joins the last step
    assert all(t["offset"] is None for t in c["tokens"])
    for agg, pick in (("step_min", min), ("step_last", lambda xs: xs[-1])):
        r = client.post("/score", json={**body, "aggregation": agg})
        assert r.status_code == 200, r.text
        for res in r.json()["results"]:
            assert res["score"] == pytest.approx(pick([s["reward"] for s in res["steps"]]), abs=1e-9)


def test_compare_with_steps(client):
    r = client.post(
        "/compare",
        json={
            "messages": CHAT,
            "responses": ["".join(STEPS), "10.\n\nDone."],
            "step_separator": "\n\n",
            "aggregation": "step_min",
        },
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert [len(x["steps"]) for x in out["results"]] == [3, 2]
    assert out["scores"] == [pytest.approx(min(s["reward"] for s in x["steps"])) for x in out["results"]]
    r = client.post(
        "/compare",
        json={
            "prompt": "Q:",
            "responses_ids": [[20, 21, 22], [23, 24]],
            "responses_step_ends": [[1, 3], [1]],
            "aggregation": "step_last",
        },
    )
    assert r.status_code == 200, r.text
    assert [len(x["steps"]) for x in r.json()["results"]] == [2, 1]


@pytest.mark.parametrize(
    "body, param",
    [
        ({"items": [{"prompt": "Q", "response": "abc", "steps": ["ab", "d"]}]}, "items.0.steps"),
        ({"items": [{"prompt": "Q", "response": "abc", "step_separator": "\n\n"}]}, "items.0.step_separator"),
        ({"items": [{"prompt": "Q", "response_ids": [5, 6], "step_ends": [3]}]}, "items.0.step_ends"),
        ({"items": [{"prompt": "Q", "response_ids": [5, 6, 7], "step_ends": [2, 2]}]}, "items.0.step_ends"),
        ({"items": [{"prompt": "Q", "response_ids": [5, 6, 7], "step_ends": [2, 1]}]}, "items.0.step_ends"),
        ({"items": [{"prompt": "Q", "response_ids": [5, 6, 7], "step_ends": [0]}]}, "items.0.step_ends.0"),
        ({"items": [{"prompt": "Q", "response": "abc", "step_ends": [1]}]}, "items.0.step_ends"),
        ({"items": [{"prompt": "Q", "steps": []}]}, "items.0.steps"),
        ({"items": [{"prompt": "Q", "steps": ["a", ""]}]}, "items.0.steps.1"),
        ({"items": [{"prompt": "Q", "response": "a"}], "aggregation": "step_min"}, "items.0.steps"),
        ({"prompt": "Q", "responses": ["a", "b"], "step_separator": "\n\n"}, "responses.0.step_separator"),
        ({"prompt": "Q", "responses_ids": [[5], [6]], "responses_step_ends": [[1]]}, "responses_step_ends"),
    ],
)
def test_bad_steps_are_422_naming_the_field(client, body, param):
    path = "/score" if "items" in body else "/compare"
    assert_error(client.post(path, json=body), 422, param)
