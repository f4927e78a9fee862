"""Two real GRPO steps with TRL on CPU (tiny policy, no vLLM) whose rewards come from the live server."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from endorm_client import AsyncRewardClient, RewardClient
from endorm_client.integrations.trl import make_reward_function, to_items
from tests.clients.conftest import metric
from tests.conftest import API_KEY, tiny_model

trl = pytest.importorskip("trl")

PROMPTS = ["What is 2+3?", "Name a colour.", "Say hello.", "Count to three."]


def test_reward_function_mapping(server, client):
    """Conversational and standard inputs, sync and async, exact completion ids."""
    conv_prompts = [[{"role": "user", "content": p}] for p in PROMPTS[:2]]
    conv_completions = [[{"role": "assistant", "content": "5"}], [{"role": "assistant", "content": "blue"}]]
    want = [
        r["score"]
        for r in client.post(
            "/score",
            json={
                "items": [
                    {"messages": conv_prompts[0], "response": "5"},
                    {"messages": conv_prompts[1], "response": "blue"},
                ]
            },
        ).json()["results"]
    ]
    sync_fn = make_reward_function(server.url, api_key=API_KEY)
    assert sync_fn(
        prompts=conv_prompts, completions=conv_completions, completion_ids=None, trainer_state=None
    ) == pytest.approx(want, abs=1e-4)
    async_fn = make_reward_function(server.url, api_key=API_KEY, asynchronous=True, name="endorm_async")
    assert trl.trainer.utils.is_async_callable(async_fn) and not trl.trainer.utils.is_async_callable(sync_fn)
    assert trl.trainer.utils.get_callable_name(async_fn) == "endorm_async"
    assert asyncio.run(async_fn(prompts=conv_prompts, completions=conv_completions)) == pytest.approx(want, abs=1e-4)
    # standard format and a shared client
    with RewardClient(server.url, api_key=API_KEY) as rm:
        fn = make_reward_function(rm, aggregation="mean")
        got = fn(prompts=["2+3="], completions=["5"])
    assert got == pytest.approx(
        [
            client.post("/score", json={"items": [{"prompt": "2+3=", "response": "5"}], "aggregation": "mean"}).json()[
                "results"
            ][0]["score"]
        ],
        abs=1e-4,
    )
    # exact tokens
    ids_fn = make_reward_function(server.url, api_key=API_KEY, use_completion_ids=True)
    got = ids_fn(prompts=conv_prompts[:1], completions=conv_completions[:1], completion_ids=[[40, 41, 4]])
    assert got == pytest.approx(
        [
            client.post("/score", json={"items": [{"messages": conv_prompts[0], "response_ids": [40, 41, 4]}]}).json()[
                "results"
            ][0]["score"]
        ],
        abs=1e-4,
    )
    assert to_items(conv_prompts[:1], conv_completions[:1], system="Be brief.")[0]["system"] == "Be brief."
    with pytest.raises(ValueError):
        to_items(["raw"], ["x"], system="criteria need chat prompts")
    with pytest.raises(TypeError):
        make_reward_function(AsyncRewardClient(server.url), asynchronous=False)


def test_grpo_two_steps_rewards_reach_the_trainer(server, tmp_path):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    path = tiny_model("llama")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    dataset = Dataset.from_dict({"prompt": [[{"role": "user", "content": p}] for p in PROMPTS]})

    scorer = make_reward_function(server.url, api_key=API_KEY, name="endorm_sync")
    calls: list[tuple[list, list, list[float]]] = []

    def endorm(prompts, completions, completion_ids=None, **kwargs):  # records what TRL got from the server
        rewards = scorer(prompts, completions, completion_ids, **kwargs)
        calls.append((prompts, completions, rewards))
        return rewards

    endorm_async = make_reward_function(server.url, api_key=API_KEY, asynchronous=True, name="endorm_async")

    captured: list[dict] = []

    class Capture(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "reward" in logs:
                logs = {**logs, "step": state.global_step}
                print("TRL log:", json.dumps({k: logs[k] for k in sorted(logs) if "reward" in k or k == "step"}))
                captured.append(logs)

    config = GRPOConfig(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=8,
        learning_rate=1e-5,
        beta=0.0,
        use_vllm=False,
        use_cpu=True,
        bf16=False,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        seed=0,
        reward_weights=[0.5, 0.5],
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    ok_before = metric(server.url, "endorm_requests_total", endpoint="/score", status="200")
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[endorm, endorm_async],
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[Capture()],
    )
    trainer.train()

    assert [entry["step"] for entry in captured] == [1, 2] and len(calls) == 2
    # every reward call went to the server (2 steps x 2 functions, one request each: 4 <= 64 items)
    assert metric(server.url, "endorm_requests_total", endpoint="/score", status="200") - ok_before == 4
    assert scorer.calls == 2 and endorm_async.calls == 2
    for entry, (prompts, completions, rewards) in zip(captured, calls):
        assert len(rewards) == 4
        # what the trainer logged is what the server returned ...
        assert entry["rewards/endorm/mean"] == pytest.approx(sum(rewards) / 4, abs=1e-4)
        assert entry["rewards/endorm_async/mean"] == pytest.approx(entry["rewards/endorm/mean"], abs=1e-4)
        assert entry["reward"] == pytest.approx(sum(rewards) / 4, abs=1e-4)  # weights 0.5 + 0.5 of equal rewards
        # ... and the server gives the same rewards for those completions when asked directly
        items = [{"messages": p, "response": c[0]["content"]} for p, c in zip(prompts, completions)]
        direct = httpx.post(
            server.url + "/score", json={"items": items}, timeout=60, headers={"Authorization": f"Bearer {API_KEY}"}
        ).json()["results"]
        assert [d["score"] for d in direct] == pytest.approx(rewards, abs=1e-4)
