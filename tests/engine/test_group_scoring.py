"""Group-aware scoring (service/endorm_server/scoring/grouping.py) on the real engine.

Every case is checked two ways: the per-token rewards, log-probs and V(s_0)
against the float64 transformers reference (within 1e-4), and against today's
unshared path (full rows, prefix cache not read) on the same engine. Counters
prove the sharing really happened (cache hits, rows taken from the leader) so a
case cannot pass by silently recomputing everything.

The session engine runs with block size 128 (CPU) and max_num_batched_tokens
128. Each test draws its own random prompts, so the prefix cache shared by the
session never connects two tests.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import psutil
import pytest

from endorm_server.engine.base import SequenceStats
from endorm_server.inputs.tokenization import EncodedPair
from endorm_server.scoring import rewards
from endorm_server.scoring.grouping import GroupScheduler, ReuseCounters, fill_from_leader
from tests.engine.conftest import reference_engine
from tests.freeze import processes_frozen

TOL = 1e-4
BLOCK = 128  # vLLM's CPU KV-cache block size: cache hits are multiples of it


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(1000 + seed)


def _ids(rng: np.random.Generator, n: int, vocab: int = 512) -> list[int]:
    return rng.integers(0, vocab, n).tolist()


def _rewards(st: SequenceStats, P: int, alpha: float) -> rewards.TokenRewards:
    return rewards.token_rewards(st.c, st.v, P - st.offset, alpha=alpha)


async def _check(engine, pairs: list[EncodedPair], *, alpha: float = 1.0, name: str = "llama") -> ReuseCounters:
    """Score pairs group-aware; compare with the float64 reference and with today's path."""
    groups = GroupScheduler(engine)
    await _verify(engine, pairs, await groups.stats(pairs), alpha=alpha, name=name)
    return groups.counters


async def _verify(
    engine, pairs: list[EncodedPair], got: list[SequenceStats], *, alpha: float = 1.0, name: str = "llama"
) -> None:
    """``got`` (the group-aware stats of ``pairs``) against the float64 reference and today's unshared path."""
    ref = reference_engine(name, alpha=alpha)
    for pair, st in zip(pairs, got):
        P, seq = len(pair.prompt_ids), pair.prompt_ids + pair.response_ids
        assert st.offset == P - 1 and len(st.c) == len(seq) - P + 1, "rows must cover exactly P-1 .. N-1"
        mine = _rewards(st, P, alpha)
        exact = _rewards(ref.forward_stats(seq), P, alpha)
        today = _rewards(await engine.token_stats(seq), P, alpha)
        for other in (exact, today):
            np.testing.assert_allclose(mine.rewards, other.rewards, atol=TOL, rtol=0)
            np.testing.assert_allclose(mine.logprobs, other.logprobs, atol=TOL, rtol=0)
            assert abs(mine.v0 - other.v0) < TOL
        assert np.ptp(exact.rewards) > 0.5  # a real spread: agreement is not trivially true
    assert engine.num_unfinished() == 0


def _group(rng, P: int, G: int, lengths: list[int] | None = None) -> list[EncodedPair]:
    prompt = _ids(rng, P)
    lengths = lengths or [int(n) for n in rng.integers(20, 90, G)]
    return [EncodedPair(prompt_ids=prompt, response_ids=_ids(rng, n)) for n in lengths]


async def test_prompt_length_a_multiple_of_the_block_size(vllm_engines):
    """P = 256: a sibling's cache hit covers position P-1; its row comes from the leader."""
    engine = await vllm_engines("llama")
    pairs = _group(_rng(1), 2 * BLOCK, 4)
    counters = await _check(engine, pairs)
    assert counters.cached_prompt_tokens >= 3 * 2 * BLOCK  # every sibling read the prompt from the cache
    assert counters.rows_from_leader == 3  # exactly row P-1 per sibling
    assert counters.resubmissions == 0
    # the LM head ran on the leader's P-1 .. N-1 (+ one extra target per sibling) and the siblings' P .. N-1
    assert counters.lm_head_rows_computed == sum(len(p.response_ids) for p in pairs) + 1 + 3


async def test_siblings_sharing_their_first_200_response_tokens(vllm_engines):
    rng = _rng(2)
    prompt, shared = _ids(rng, 60), _ids(rng, 220)
    pairs = [EncodedPair(prompt_ids=prompt, response_ids=shared + _ids(rng, n)) for n in (30, 45, 12)]
    pairs.append(EncodedPair(prompt_ids=prompt, response_ids=shared[:100] + _ids(rng, 50)))  # diverges earlier
    engine = await vllm_engines("llama")
    counters = await _check(engine, pairs)
    # siblings 1, 2 hit 256 tokens (2 blocks: prompt + 196 shared response tokens): rows 59..255 from the leader
    assert counters.rows_from_leader >= 2 * (2 * BLOCK - 59)
    assert counters.resubmissions == 0


async def test_group_whose_prompt_alone_was_scored_before(vllm_engines):
    """The leader itself hits the cache past P-1: it is resubmitted without the cache, counted."""
    engine = await vllm_engines("llama")
    rng = _rng(3)
    prompt = _ids(rng, 2 * BLOCK)
    await engine.token_stats(prompt + _ids(rng, 5), read_cache=True)  # puts the prompt's blocks in the cache
    counters = await _check(engine, [EncodedPair(prompt_ids=prompt, response_ids=_ids(rng, n)) for n in (40, 50, 60)])
    assert counters.resubmissions >= 1
    assert counters.cached_prompt_tokens >= 2 * BLOCK


async def test_32_concurrent_requests_from_8_interleaved_groups(vllm_engines):
    engine = await vllm_engines("llama")
    rng = _rng(4)
    groups = [_group(rng, P, 4) for P in (BLOCK, 2 * BLOCK, 3 * BLOCK, 20, 130, 200, 255, 257)]
    pairs = [g[i] for i in range(4) for g in groups]  # interleaved: g0[0], g1[0], ..., g0[1], ...
    counters = await _check(engine, pairs)
    assert counters.cached_prompt_tokens >= 3 * sum(len(g[0].prompt_ids) // BLOCK * BLOCK for g in groups)
    assert counters.resubmissions == 0


async def test_alpha_half(vllm_engines):
    engine = await vllm_engines("llama", alpha=0.5)
    counters = await _check(engine, _group(_rng(5), BLOCK, 3), alpha=0.5)
    assert counters.rows_from_leader == 2


async def test_scorer_scores_a_group_like_the_reference(vllm_engines):
    """The Scorer path (used by /score and /compare) goes through the group scheduler."""
    from transformers import AutoTokenizer

    from endorm_server.core.scorer import Scorer
    from endorm_server.inputs.tokenization import PairEncoder
    from tests.conftest import tiny_model

    engine = await vllm_engines("llama")
    pairs = _group(_rng(6), BLOCK, 4)
    encoder = PairEncoder(AutoTokenizer.from_pretrained(tiny_model("llama")), vocab_size=engine.info.vocab_size)
    scorer = Scorer(engine, encoder, model_name="t")
    items = await scorer.score([{"prompt_ids": p.prompt_ids, "response_ids": p.response_ids} for p in pairs])
    ref = reference_engine("llama")
    for pair, item in zip(pairs, items):
        exact = rewards.token_rewards(
            *_cv(ref.forward_stats(pair.prompt_ids + pair.response_ids)), len(pair.prompt_ids)
        )
        assert abs(item.score - float(np.sum(exact.rewards))) < TOL * len(pair.response_ids)
    assert scorer.groups.counters.rows_from_leader == 3


def _cv(st: SequenceStats) -> tuple[np.ndarray, np.ndarray]:
    return st.c, st.v


def test_fill_refuses_rows_the_leader_does_not_have():
    """A hit past the point where the sibling leaves the leader cannot be filled (-> resubmission)."""
    leader, seq = [1, 2, 3, 4, 5, 6], [1, 2, 3, 9, 9, 9]
    lead = SequenceStats(c=np.arange(5.0), v=np.arange(5.0), offset=1)
    short = SequenceStats(c=np.zeros(1), v=np.zeros(1), offset=5)  # hit of 5 > divergence 3
    assert fill_from_leader(seq, short, 1, leader, lead, {}) is None
    at_d = SequenceStats(c=np.zeros(3), v=np.zeros(3), offset=3)  # hit ends at the divergence: needs c_2 for token 9
    assert fill_from_leader(seq, at_d, 1, leader, lead, {}) is None
    filled = fill_from_leader(seq, at_d, 1, leader, lead, {(2, 9): 7.5})
    assert filled is not None and filled.offset == 1
    np.testing.assert_array_equal(filled.c[:2], [0.0, 7.5])  # c_1 from the leader, c_2 the extra target
    np.testing.assert_array_equal(filled.v[:2], [0.0, 1.0])


# ----------------------------------------------------------------- preemption

KV_BLOCKS = 6  # 768 tokens of KV cache: a few requests of ~450 tokens cannot all stay resident


def _preemptions() -> float:
    """vLLM's own counter (vllm:num_preemptions), summed over the engines of this process."""
    import prometheus_client

    return sum(
        s.value
        for m in prometheus_client.REGISTRY.collect()
        for s in m.samples
        if s.name == "vllm:num_preemptions_total"
    )


@pytest.fixture(scope="module")
async def tiny_kv_engine():
    """An engine whose KV cache holds 6 blocks; up to 4 prefills advance together (64 tokens each
    per step), so running requests run out of blocks and vLLM preempts them."""
    from endorm_server.engine.vllm_engine import VllmEngine
    from tests.conftest import engine_settings, tiny_model

    class TinyKv(VllmEngine):
        def engine_args(self):
            args = super().engine_args()
            args.long_prefill_token_threshold = 64
            return args

    path = tiny_model("llama")
    kv_bytes = KV_BLOCKS * BLOCK * 2 * 2 * 1 * 64 * 4  # blocks x tokens x layers x (k, v) x kv heads x head_dim x fp32
    engine = TinyKv(
        engine_settings(path, max_model_len=512, max_num_batched_tokens=256, kv_cache_gb=kv_bytes / 2**30), str(path)
    )
    await engine.start()
    yield engine
    await engine.shutdown()


def _engine_processes(engine) -> list[psutil.Process]:
    """This engine's EngineCore process(es) and their workers (not the other engines of the session)."""
    manager = engine._engine.engine_core.resources.engine_manager
    cores = [psutil.Process(p.pid) for p in manager.processes]
    return cores + [c for core in cores for c in core.children(recursive=True)]


async def _until(state, what: str, patience_s: float = 120) -> None:
    """Poll for a state that must come; the deadline only guards against a hang."""
    deadline = time.monotonic() + patience_s
    while not state():
        assert time.monotonic() < deadline, f"{what}: not within {patience_s} s"
        await asyncio.sleep(0.01)


async def test_preemption_keeps_results_exact(tiny_kv_engine):
    """Rows computed before a preemption are never concatenated with the recomputed ones.

    The preemption is forced, not hoped for: the engine is frozen (SIGSTOP) until the three group
    leaders (330-460 tokens, 3-4 blocks each, 10 blocks together) are all queued, so they prefill side
    by side, 64 tokens each per step, and the 6-block cache runs out before any of them can finish.
    Free-running, whether they overlapped depended on how fast the engine got through the first one."""
    engine = tiny_kv_engine
    before = _preemptions()
    rng = _rng(7)
    groups = [_group(rng, P, 3, lengths=[int(n) for n in rng.integers(200, 260, 3)]) for P in (BLOCK, 150, 200)]
    pairs = [g[i] for i in range(3) for g in groups]
    leaders = [g[0] for g in groups]
    assert sum(-(-(len(p.prompt_ids) + len(p.response_ids)) // BLOCK) for p in leaders) > KV_BLOCKS
    scheduler = GroupScheduler(engine)
    with processes_frozen(_engine_processes(engine)):
        scoring = asyncio.ensure_future(scheduler.stats(pairs))
        await _until(lambda: engine.num_unfinished() == len(leaders), "the 3 group leaders queued in the frozen engine")
    got = await scoring
    # vLLM counts a preemption when the preempted request's output reaches the front end, before its
    # caller resumes: the counter has moved by now; the poll only guards against a changed vLLM
    await _until(lambda: _preemptions() > before, "vllm:num_preemptions_total to count the forced preemption")
    await _verify(engine, pairs, got)
    assert scheduler.counters.cached_prompt_tokens > 0
