"""TRL and OpenRLHF adapters stay scalar; with a step separator they score step_min / step_last."""

from __future__ import annotations

import httpx
import pytest

from endorm_client.integrations.openrlhf import make_reward_func
from endorm_client.integrations.trl import make_reward_function, to_items
from endorm_client.steps import split_steps
from tests.conftest import API_KEY

CHAT = [{"role": "user", "content": "What is 2*(2+3)?"}]
COMPLETIONS = ["2+3 = 5.\n\n2*5 = 10.\n\nAnswer: 10", "10"]  # the second has no separator: one step


def test_split_steps_matches_the_server_rule():
    assert split_steps("a\n\nb\n\n", "\n\n") == ["a\n\n", "b\n\n"]
    assert split_steps("abc", "\n\n") == ["abc"]
    items = to_items([CHAT, CHAT], [[{"role": "assistant", "content": c}] for c in COMPLETIONS], step_separator="\n\n")
    assert items[0]["steps"] == ["2+3 = 5.\n\n", "2*5 = 10.\n\n", "Answer: 10"] and items[1]["steps"] == ["10"]
    with pytest.raises(ValueError):
        make_reward_function("http://127.0.0.1:1", aggregation="step_min")  # needs step_separator
    with pytest.raises(ValueError):
        make_reward_func("http://127.0.0.1:1", aggregation="step_last")


def _step_scores(server, agg: str) -> list[float]:
    items = [{"messages": CHAT, "steps": split_steps(c, "\n\n")} for c in COMPLETIONS]
    r = httpx.post(
        server.url + "/score",
        json={"items": items, "aggregation": agg},
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return [x["score"] for x in r.json()["results"]]


def test_trl_reward_function_step_min(server):
    reward = make_reward_function(server.url, api_key=API_KEY, aggregation="step_min", step_separator="\n\n")
    got = reward(prompts=[CHAT, CHAT], completions=[[{"role": "assistant", "content": c}] for c in COMPLETIONS])
    assert got == pytest.approx(_step_scores(server, "step_min"), abs=1e-9)


def test_openrlhf_reward_func_step_last(server):
    prompt = "Q: 2*(2+3)?\nA: "
    func = make_reward_func(
        server.url, api_key=API_KEY, aggregation="step_last", step_separator="\n\n", return_tensors=False
    )
    out = func([prompt + c for c in COMPLETIONS], [prompt] * 2, None)
    items = [{"prompt": prompt, "steps": split_steps(c, "\n\n")} for c in COMPLETIONS]
    r = httpx.post(
        server.url + "/score",
        json={"items": items, "aggregation": "step_last", "add_eos": False},
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=60,
    )
    assert out["rewards"] == pytest.approx([x["score"] for x in r.json()["results"]], abs=1e-9)
