"""The X-EndoRM-Affinity header: every SDK request with a prompt carries its prompt key, so a
proxy in front of one URL can keep a group on one replica (tests/replicas runs it through
HAProxy). Checked here on the headers a real HTTP server (the scripted stub) receives."""

from __future__ import annotations

import hashlib
import json

import pytest

from endorm_client import AsyncRewardClient, RewardClient
from endorm_client.affinity import AFFINITY_HEADER, prompt_key
from endorm_client.integrations.openrlhf import get_rewards
from tests.clients.conftest import API_KEY

CHAT = [{"role": "user", "content": "What is 2+3?"}]


@pytest.fixture(autouse=True)
def _fresh(stub):
    """The stub is shared by the session: start each test with no script and nothing seen."""
    stub.reply()


def documented_key(item: dict) -> str:
    """The recipe docs/deploy.md gives users without the SDK."""
    fields = {k: item[k] for k in ("prompt", "messages", "prompt_ids", "system") if item.get(k) is not None}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def header(seen) -> str | None:
    return seen.headers.get(AFFINITY_HEADER.lower())


@pytest.mark.parametrize(
    "item",
    [
        {"prompt": "2+3=", "response": "5"},
        {"messages": CHAT, "system": "Be terse.", "response": "5"},
        {"prompt_ids": [1, 2, 3], "response_ids": [4]},
    ],
    ids=["prompt", "chat", "ids"],
)
def test_score_sends_the_prompt_key(stub, item):
    with RewardClient(stub.url, api_key=API_KEY) as rm:
        rm.score([item])
    assert header(stub.seen[0]) == prompt_key(item) == documented_key(item)


def test_one_key_per_group_and_none_when_disabled(stub):
    group_a = [{"prompt": "Q: a", "response": r} for r in ("1", "2", "3")]
    group_b = [{"prompt": "Q: b", "response": r} for r in ("1", "2", "3")]
    stub.reply(
        *[
            (
                200,
                {},
                {
                    "model": "stub",
                    "alpha": 1.0,
                    "aggregation": "sum",
                    "results": [{"index": i, "score": 0.0, "num_tokens": 1, "prompt_tokens": 1} for i in range(3)],
                    "usage": {"prompt_tokens": 3, "total_tokens": 6},
                },
                0,
            )
        ]
        * 2
    )
    with RewardClient(stub.url, api_key=API_KEY, chunk_size=3, max_concurrency=1) as rm:
        rm.score_batch(group_a + group_b)
    assert [header(s) for s in stub.seen] == [prompt_key(group_a[0]), prompt_key(group_b[0])]
    stub.seen.clear()
    with RewardClient(stub.url, api_key=API_KEY, prompt_affinity=False) as rm:
        rm.score(group_a[:1])
    assert header(stub.seen[0]) is None


def test_header_is_kept_across_retries(stub):
    from tests.clients.conftest import err

    stub.reply(err(503, "unavailable", retry_after="0"))
    item = {"prompt": "2+3=", "response": "5"}
    with RewardClient(stub.url, api_key=API_KEY, backoff_base=0.01, backoff_max=0.02) as rm:
        rm.score([item])
    assert len(stub.seen) == 2 and {header(s) for s in stub.seen} == {prompt_key(item)}


async def test_async_client_sends_it(stub):
    item = {"messages": CHAT, "response": "5"}
    async with AsyncRewardClient(stub.url, api_key=API_KEY) as rm:
        await rm.score([item])
    assert header(stub.seen[0]) == prompt_key(item)


def test_openrlhf_adapter_sends_the_prompts_key(stub):
    stub.reply((200, {}, {"rewards": [1.0, 2.0], "scores": [1.0, 2.0]}, 0))
    with RewardClient(stub.url, api_key=API_KEY) as rm:
        get_rewards(rm, ["P R1", "P R2"], ["P", "P"])
    assert header(stub.seen[0]) == prompt_key({"prompt": "P"})
