"""The determinism receipt and the cross-server check of ``--batch-invariant``, over HTTP.

Two servers with the same settings (``--batch-invariant``, 61-token engine steps: chunked prefill cuts
a needle at odd points, between multiples of the attention tile) must report the same fingerprint and
give the same bits for the same items, alone and amid companions; ``GET /v1/models`` says the mode is on
and what it rests on, and the suite's shared server (mode off) says it is off.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import tiny_server
from tests.server import ServerProcess

FLAGS = ("--batch-invariant", "--max-num-batched-tokens", "61", "--max-model-len", "1024")


@pytest.fixture(scope="module")
def invariant_servers(tmp_path_factory) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    with (
        tiny_server(tmp_path_factory, "invariant-a", *FLAGS) as a,
        tiny_server(tmp_path_factory, "invariant-b", *FLAGS) as b,
    ):
        yield a, b


def _card(url: str, headers: dict | None = None) -> dict:
    resp = httpx.get(f"{url}/v1/models", headers=headers or {}, timeout=60)
    assert resp.status_code == 200, resp.text
    return resp.json()["data"][0]


def _score(url: str, items: list[dict]) -> list[dict]:
    resp = httpx.post(f"{url}/score", json={"items": items, "return_tokens": True}, timeout=600)
    assert resp.status_code == 200, resp.text
    return resp.json()["results"]


def _bits(result: dict) -> tuple:
    """The score and every token's reward and log-prob, exactly (JSON floats round-trip float64)."""
    return (result["score"], [t["reward"] for t in result["tokens"]], [t["logprob"] for t in result["tokens"]])


def _ids(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(512) for _ in range(n)]


def test_receipt_says_on_and_what_it_rests_on(invariant_servers):
    a, b = invariant_servers
    card_a, card_b = _card(a.url), _card(b.url)
    assert card_a["batch_invariant"] is True
    receipt = card_a["determinism"]
    assert receipt["batch_invariant"] is True
    assert set(receipt) >= {"threads", "gemm", "attention", "lm_head", "scheduling"}
    assert "VLLM_CPU_OMP_THREADS_BIND" in receipt["threads"]
    assert "at least 16 rows" in receipt["gemm"] or "one call per layer" in receipt["gemm"]
    assert "vLLM CPU attention" in receipt["attention"]
    assert card_a["system_fingerprint"] == card_b["system_fingerprint"]
    assert card_a["determinism"] == card_b["determinism"]


def test_receipt_default_is_auto_and_off_says_off(server, limited_server, invariant_servers):
    """Unset, the mode is on where the CPU kernels path applies (engine/batch_invariant.py: resolve); the
    ``--no-batch-invariant`` server says off, and the fingerprint tells the two apart."""
    from endorm_server.config import Settings
    from endorm_server.engine import batch_invariant
    from tests.conftest import API_KEY, tiny_model

    default = _card(server.url, {"Authorization": f"Bearer {API_KEY}"})
    model = str(tiny_model("llama"))
    expected = batch_invariant.resolve_settings(Settings(model=model, dtype="float32"), model, "float32")
    assert default["batch_invariant"] is expected and default["determinism"]["batch_invariant"] is expected
    off = _card(limited_server.url)
    assert off["batch_invariant"] is False and off["determinism"]["batch_invariant"] is False
    assert "work split over the step's requests" in off["determinism"]["attention"]
    on = _card(invariant_servers[0].url)
    assert off["system_fingerprint"] != on["system_fingerprint"], "the fingerprint must cover the mode"
    if expected:
        assert "fixed" in default["determinism"]["attention"]


def test_two_servers_same_settings_same_bits(invariant_servers):
    a, b = invariant_servers
    rng = random.Random(2929)
    needles = [
        {"prompt_ids": _ids(rng, 561), "response_ids": _ids(rng, 80)},
        {"prompt_ids": _ids(rng, 9), "response_ids": _ids(rng, 14)},
        {"prompt_ids": _ids(rng, 131), "response_ids": _ids(rng, 29)},
    ]
    alone = {i: _bits(_score(a.url, [n])[0]) for i, n in enumerate(needles)}
    for i, n in enumerate(needles):
        assert _bits(_score(b.url, [n])[0]) == alone[i], f"needle {i}: the two servers differ"
    for k in (1, 7, 40):  # amid companions, shuffled: the 61-token steps cut the needles elsewhere
        items = [
            {"prompt_ids": _ids(rng, rng.randrange(1, 120)), "response_ids": _ids(rng, rng.randrange(1, 60))}
            for _ in range(k)
        ]
        items += needles
        rng.shuffle(items)
        for url in (a.url, b.url):
            results = _score(url, items)
            for i, n in enumerate(needles):
                assert _bits(results[items.index(n)]) == alone[i], f"needle {i} amid {k} companions at {url}"
