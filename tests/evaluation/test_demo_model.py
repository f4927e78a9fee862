"""The bundled demo model: what it is, that it is the default, that it ships, that its reward makes sense."""

from __future__ import annotations

import fnmatch
import json
import random
import tomllib
from pathlib import Path

import httpx
import pytest

from endorm_server.config import Settings
from endorm_server.core.scorer import ScoreOptions, Scorer
from endorm_server.evaluation import demo_task
from endorm_server.evaluation.demo_task import SYSTEM_PROMPTS, Problem, response
from endorm_server.models.errors import ModelSourceError
from endorm_server.models.sources import DEMO_MODEL, DEMO_MODEL_DIR, resolve_model_path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_model_is_named_endorm_demo(tmp_path):
    """The default is the real SmolLM2 (tests/models/test_sources.py); the toy answers to its short name."""
    assert (DEMO_MODEL_DIR / "config.json").is_file(), "run scripts/train_demo_model.py"
    assert resolve_model_path(DEMO_MODEL, tmp_path) == str(DEMO_MODEL_DIR)
    # any other name is a hub id, resolved to local files or refused (tests/models/test_hub_fingerprint.py)
    with pytest.raises(ModelSourceError, match="not in the local Hugging Face cache"):
        resolve_model_path("some/model", tmp_path)


def test_demo_model_files():
    cfg = json.loads((DEMO_MODEL_DIR / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["model_type"] == "llama"
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    assert head_dim >= 64
    size = sum(f.stat().st_size for f in DEMO_MODEL_DIR.iterdir())
    assert size <= 20 * 1024 * 1024, f"{size / 1e6:.1f} MB"
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(DEMO_MODEL_DIR)
    rendered = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert rendered.endswith("<|im_start|>assistant\n") and tok.eos_token == "<|im_end|>"
    assert cfg["vocab_size"] == len(tok)
    card = (DEMO_MODEL_DIR / "README.md").read_text()
    assert "train_demo_model.py" in card and "## How it was made" in card and "## What it is for" in card
    training = json.loads((DEMO_MODEL_DIR / "training.json").read_text())
    assert training["final_eval_loss"] < training["initial_eval_loss"] / 5


def test_demo_model_ships_in_the_wheel():
    """Every file of the model directory matches the package-data patterns of pyproject.toml."""
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = conf["tool"]["setuptools"]["package-data"]["endorm_server"]
    for f in DEMO_MODEL_DIR.iterdir():
        rel = f.relative_to(ROOT / "service" / "endorm_server").as_posix()
        assert any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(f.name, p.split("/")[-1]) for p in patterns), rel


@pytest.fixture(scope="module")
async def demo_scorer():
    # the demo model by its short name, on the fast transformers engine
    scorer = await Scorer.start(Settings(model=DEMO_MODEL, engine="transformers", dtype="float32"))
    yield scorer
    await scorer.shutdown()


def easy_problems(n=12):
    rng = random.Random(5)
    return [
        demo_task.sample_problem(rng, heldout=True, size="1-digit", op=op) for op in ("+", "-") for _ in range(n // 2)
    ]


async def test_demo_reward_prefers_right_answers(demo_scorer):
    """Held-out 1-digit questions, the style asked for: right beats wildly wrong and off-by-one answers."""
    wins = total = 0
    for p in easy_problems():
        for style, wrong in (("digits", p.value + 7), ("digits_working", p.value + 1), ("words", p.value - 5)):
            prompt = {"messages": [{"role": "user", "content": p.question}], "system": SYSTEM_PROMPTS[style]}
            right, bad = await demo_scorer.score(
                [{**prompt, "response": response(p, style)}, {**prompt, "response": response(p, style, wrong)}]
            )
            wins += right.score > bad.score
            total += 1
    assert wins / total >= 0.9, f"{wins}/{total}"


async def test_demo_reward_follows_the_system_prompt(demo_scorer):
    """The same right answer in digits or in words: the system prompt decides which wins."""
    p = Problem(3, "+", 4)
    for system, winner, loser in (("digits", "7", "seven"), ("words", "seven", "7")):
        prompt = {"messages": [{"role": "user", "content": p.question}], "system": SYSTEM_PROMPTS[system]}
        a, b = await demo_scorer.score([{**prompt, "response": winner}, {**prompt, "response": loser}])
        assert a.score > b.score, system
    opts = ScoreOptions(aggregation="mean")
    prompt = {"messages": [{"role": "user", "content": "What is 23 + 48?"}], "system": SYSTEM_PROMPTS["digits_working"]}
    worked, bare = await demo_scorer.score(
        [{**prompt, "response": response(Problem(23, "+", 48), "digits_working")}, {**prompt, "response": "71"}], opts
    )
    assert worked.score > bare.score


@pytest.mark.slow
def test_endorm_serve_demo_model(tmp_path):
    """`endorm serve --model endorm-demo`: the vLLM engine on the demo model, sensible rewards over HTTP."""
    from tests.conftest import COMMON
    from tests.server import ServerProcess

    server = ServerProcess(["--model", DEMO_MODEL, *COMMON], log_path=tmp_path / "server.log").start()
    try:
        models = httpx.get(server.url + "/v1/models", timeout=30).json()
        assert models["data"][0]["id"] == "endorm-demo"
        body = {
            "items": [
                {
                    "messages": [{"role": "user", "content": "What is 2 + 5?"}],
                    "system": SYSTEM_PROMPTS["digits"],
                    "response": r,
                }
                for r in ("7", "8", "seven")
            ]
        }
        scores = [r["score"] for r in httpx.post(server.url + "/score", json=body, timeout=60).json()["results"]]
        assert scores[0] > scores[1] and scores[0] > scores[2]
    finally:
        server.stop()
