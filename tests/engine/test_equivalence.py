"""The vLLM plugin's per-token c, v and r equal a float64 transformers forward.

Engines run with max_num_batched_tokens=128, so sequences past 128 tokens
arrive over several engine steps (chunked prefill).
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import psutil
import pytest

from endorm_server.scoring import rewards
from tests.conftest import MODEL_VARIANTS
from tests.engine.conftest import reference_engine
from tests.freeze import processes_frozen

TOL = 1e-4
LENGTHS = [2, 3, 17, 127, 128, 129, 300, 600]


def _sequences(vocab: int, lengths: list[int], seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, n).tolist() for n in lengths]


def _max_errors(got, ref, prompt_len: int, alpha: float) -> tuple[float, float, float]:
    assert got.c.shape == ref.c.shape == got.v.shape
    assert np.isnan(got.c[-1]), "c at the last position must be undefined"
    dc = np.max(np.abs(got.c[:-1] - ref.c[:-1])) if len(got.c) > 1 else 0.0
    dv = np.max(np.abs(got.v - ref.v))
    r_got = rewards.token_rewards(got.c, got.v, prompt_len, alpha=alpha).rewards
    r_ref = rewards.token_rewards(ref.c, ref.v, prompt_len, alpha=alpha).rewards
    return float(dc), float(dv), float(np.max(np.abs(r_got - r_ref)))


@pytest.mark.parametrize("name", list(MODEL_VARIANTS))
async def test_plugin_matches_float64_reference(vllm_engines, name, record_property):
    engine = await vllm_engines(name)
    ref = reference_engine(name)
    seqs = _sequences(engine.info.vocab_size, LENGTHS, seed=len(name))
    stats = await asyncio.gather(*(engine.token_stats(s) for s in seqs))
    worst = np.zeros(3)
    for seq, got in zip(seqs, stats):
        expected = ref.forward_stats(seq)
        # the logits have a real spread, so agreement is not trivially true
        assert np.std(expected.v) > 0.05 and np.ptp(expected.c[:-1]) > 1.0 if len(seq) > 16 else True
        errs = _max_errors(got, expected, prompt_len=max(1, len(seq) // 2), alpha=1.0)
        worst = np.maximum(worst, errs)
        assert max(errs) < TOL, f"{name} len={len(seq)}: max |dc|, |dv|, |dr| = {errs}"
    record_property("max_abs_err_c_v_r", worst.tolist())
    print(f"\n{name}: max abs error c={worst[0]:.2e} v={worst[1]:.2e} r={worst[2]:.2e}")


@pytest.mark.parametrize("name", ["llama", "gemma2-softcap"])
async def test_32_concurrent_mixed_lengths(vllm_engines, name):
    engine = await vllm_engines(name)
    ref = reference_engine(name)
    rng = np.random.default_rng(7)
    lengths = rng.integers(2, 400, size=32).tolist()
    seqs = _sequences(engine.info.vocab_size, lengths, seed=11)
    stats = await asyncio.gather(*(engine.token_stats(s) for s in seqs))
    for seq, got in zip(seqs, stats):
        errs = _max_errors(got, ref.forward_stats(seq), prompt_len=1, alpha=1.0)
        assert max(errs) < TOL, f"len={len(seq)}: {errs}"
    assert engine.num_unfinished() == 0


async def test_alpha_half(vllm_engines):
    engine = await vllm_engines("llama", alpha=0.5)
    ref = reference_engine("llama", alpha=0.5)
    base = await vllm_engines("llama")
    seqs = _sequences(engine.info.vocab_size, [5, 200, 450], seed=3)
    for seq in seqs:
        got = await engine.token_stats(seq)
        errs = _max_errors(got, ref.forward_stats(seq), prompt_len=2, alpha=0.5)
        assert max(errs) < TOL, errs
        # c is alpha-free; v = 0.5 * logsumexp(2 * logits) differs from alpha=1
        one = await base.token_stats(seq)
        np.testing.assert_allclose(got.c[:-1], one.c[:-1], atol=TOL)
        assert np.max(np.abs(got.v - one.v)) > 1e-2


def _engine_processes(engine) -> list[psutil.Process]:
    """This engine's EngineCore process(es) and their workers (not the other engines of the session)."""
    manager = engine._engine.engine_core.resources.engine_manager
    cores = [psutil.Process(p.pid) for p in manager.processes]
    return cores + [c for core in cores for c in core.children(recursive=True)]


def _frozen(engine):
    """SIGSTOP the engine's processes for the body: nothing it was given can finish meanwhile."""
    return processes_frozen(_engine_processes(engine))


async def _until(state, what: str, patience_s: float = 120) -> None:
    """Poll for a state that must come; the deadline only guards against a hang."""
    deadline = time.monotonic() + patience_s
    while not state():
        assert time.monotonic() < deadline, f"{what}: not within {patience_s} s"
        await asyncio.sleep(0.01)


async def test_cancelled_caller_aborts_engine_request(vllm_engines):
    engine = await vllm_engines("llama")
    seq = [2 + i % 500 for i in range(900)]
    # Frozen, the engine cannot finish the requests before they are cancelled (a fixed 0.05 s
    # sleep assumed a machine slow enough for them to be still running).
    with _frozen(engine):
        tasks = [asyncio.ensure_future(engine.token_stats(seq)) for _ in range(8)]
        await _until(lambda: engine.num_unfinished() == 8, "8 requests in the engine")
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert all(t.cancelled() for t in tasks)
    await _until(lambda: engine.num_unfinished() == 0, "requests aborted")
    # the engine still serves afterwards
    got = await engine.token_stats([1, 2, 3])
    assert got.v.shape == (3,)


async def test_out_of_vocabulary_ids_are_refused_before_the_engine(vllm_engines):
    """An id past the embedding table would crash the engine process: refuse it up front."""
    engine = await vllm_engines("llama")
    for bad in ([1, 2, engine.info.vocab_size], [-1, 2, 3]):
        with pytest.raises(ValueError, match="vocabulary"):
            await engine.token_stats(bad)
    assert engine.healthy
    assert (await engine.token_stats([1, 2, 3])).c.shape == (3,)
