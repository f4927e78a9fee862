"""Criteria-contrast rewards (service/endorm_server/scoring/contrast.py) on the real engine.

r^Delta_h = r_h(x, c, y) - r_h(x, b, y): checked per token and per aggregation against two plain
scorings and against the float64 transformers reference; the telescoping identity of the contrast;
and the group-aware cost as a count of computed tokens (GroupScheduler's ReuseCounters).
"""

from __future__ import annotations

import numpy as np
import pytest

from endorm_server.core.scorer import ScoreOptions, Scorer
from endorm_server.errors import RequestError
from endorm_server.inputs.tokenization import PairEncoder
from endorm_server.scoring import contrast, rewards, steps
from tests.conftest import tiny_model
from tests.engine.conftest import reference_engine

TOL = 1e-4
BLOCK = 128  # vLLM's CPU KV-cache block size: cache hits are multiples of it
WORDS = (
    "the",
    "sum",
    "of",
    "two",
    "and",
    "three",
    "is",
    "five",
    "answer",
    "with",
    "digits",
    "words",
    "only",
    "please",
    "numbers",
    "write",
    "short",
    "clear",
    "style",
    "formal",
)


@pytest.fixture()
async def scorer(vllm_engines) -> Scorer:
    from transformers import AutoTokenizer

    engine = await vllm_engines("llama")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model("llama"))
    return Scorer(engine, PairEncoder(tokenizer, vocab_size=engine.info.vocab_size), "llama")  # fresh counters


async def _contrast(scorer: Scorer, items: list[dict], options: ScoreOptions | None = None, baseline_system=None):
    return await scorer.score(items, options, contrast=True, baseline_system=baseline_system)


def _text(rng: np.random.Generator, n: int) -> str:
    return " ".join(rng.choice(WORDS, n))


def _items(seed: int, G: int, system_words: int = 8) -> list[dict]:
    rng = np.random.default_rng(2000 + seed)
    prompt = {"messages": [{"role": "user", "content": _text(rng, 12)}], "system": _text(rng, system_words)}
    return [{**prompt, "response": _text(rng, int(rng.integers(3, 12)))} for _ in range(G)]


def _ref(pair, alpha: float = 1.0) -> rewards.TokenRewards:
    st = reference_engine("llama").forward_stats(pair.ids)
    return rewards.token_rewards(st.c, st.v, len(pair.prompt_ids), alpha=alpha)


async def test_delta_per_token_matches_two_plain_scorings_and_the_float64_reference(scorer):
    items = _items(1, 3)
    got = await _contrast(scorer, items, ScoreOptions(return_tokens=True))
    plain_c = await scorer.score(items)
    plain_b = await scorer.score([contrast.baseline_item(it) for it in items])
    for d, c, b in zip(got, plain_c, plain_b):
        assert d.pair.prompt_ids == c.pair.prompt_ids and d.baseline.pair.prompt_ids == b.pair.prompt_ids
        assert d.pair.prompt_ids != b.pair.prompt_ids  # the criteria really changed the context
        np.testing.assert_allclose(d.token_rewards.rewards, c.token_rewards.rewards - b.token_rewards.rewards, atol=TOL)
        np.testing.assert_allclose(
            d.token_rewards.logprobs, c.token_rewards.logprobs - b.token_rewards.logprobs, atol=TOL
        )
        ref_c, ref_b = _ref(c.pair), _ref(b.pair)
        np.testing.assert_allclose(d.token_rewards.rewards, ref_c.rewards - ref_b.rewards, atol=TOL)
        assert np.ptp(ref_c.rewards - ref_b.rewards) > 0.05  # a real spread: agreement is not trivially true
        assert d.criteria.score == pytest.approx(c.score, abs=TOL) and d.baseline.score == pytest.approx(
            b.score, abs=TOL
        )
        assert len(d.token_texts) == d.num_tokens


@pytest.mark.parametrize(
    "aggregation", ["sum", "mean", "discounted", "loglik_sum", "loglik_mean", "step_min", "step_last"]
)
async def test_every_aggregation_is_the_aggregation_of_the_delta(scorer, aggregation):
    items = [{**it, "response": None, "steps": [it["response"] + " ", "so five", " ok"]} for it in _items(2, 2)]
    items = [{k: v for k, v in it.items() if v is not None} for it in items]
    options = ScoreOptions(aggregation=aggregation, gamma=0.9, beta=0.1)
    got = await _contrast(scorer, items, options)
    for d in got:
        ref_c, ref_b = _ref(d.criteria.pair), _ref(d.baseline.pair)
        delta = rewards.TokenRewards(
            ref_c.rewards - ref_b.rewards, ref_c.logprobs - ref_b.logprobs, ref_c.v0 - ref_b.v0
        )
        if aggregation.startswith("step_"):
            stp = steps.step_stats(delta.rewards, delta.logprobs, d.pair.step_spans, d.pair.step_texts)
            want = steps.aggregate_steps(stp, aggregation)
            assert len(d.steps) == 3
        else:
            want = rewards.aggregate(delta, aggregation, gamma=0.9, beta=0.1)
        assert d.score == pytest.approx(want, abs=TOL)
        if aggregation in ("sum", "loglik_sum", "discounted", "mean", "loglik_mean"):  # linear: difference of scores
            assert d.score == pytest.approx(d.criteria.score - d.baseline.score, abs=1e-9)


async def test_telescoping_identity_of_the_contrast(scorer):
    """terminal zero, sum: sum_h r^Delta_h = alpha [log pi(y|x,c) - log pi(y|x,b)] + V_c(s_0) - V_b(s_0)."""
    for d in await _contrast(scorer, _items(3, 3)):
        c, b = d.criteria.token_rewards, d.baseline.token_rewards
        assert d.score == pytest.approx((c.logprobs.sum() - b.logprobs.sum()) + c.v0 - b.v0, abs=1e-6)
        ref_c, ref_b = _ref(d.criteria.pair), _ref(d.baseline.pair)
        pmi = ref_c.logprobs.sum() - ref_b.logprobs.sum()
        assert d.score == pytest.approx(pmi + ref_c.v0 - ref_b.v0, abs=TOL)
    # within one prompt V_c(s_0) - V_b(s_0) is one constant: the contrast ranks like the log-likelihood ratio
    got = await _contrast(scorer, _items(4, 4))
    gaps = [d.score - (d.criteria.token_rewards.logprobs.sum() - d.baseline.token_rewards.logprobs.sum()) for d in got]
    assert np.ptp(gaps) < 1e-6


async def test_baseline_system_replaces_the_criteria(scorer):
    items = _items(5, 2)
    got = await _contrast(scorer, items, baseline_system="answer with digits only")
    plain_b = await scorer.score([{**it, "system": "answer with digits only"} for it in items])
    for d, b in zip(got, plain_b):
        assert d.baseline.pair.prompt_ids == b.pair.prompt_ids
        assert d.baseline.score == pytest.approx(b.score, abs=TOL)


async def test_contrast_needs_chat_items_with_a_system(scorer):
    with pytest.raises(RequestError) as exc:
        await _contrast(scorer, [{"prompt": "2+3=", "response": "5"}])
    assert exc.value.param == "items.0.messages"
    with pytest.raises(RequestError) as exc:
        await _contrast(scorer, [{"messages": [{"role": "user", "content": "hi"}], "response": "5"}])
    assert exc.value.param == "items.0.system"


async def test_group_aware_cost_one_prompt_per_context(scorer):
    """G = 8 responses, long shared prompt: contrast computes each context's prompt once (plus what whole-block
    cache hits leave to recompute), never 2G prompts; and about twice a plain request of the same shape."""
    G = 8
    counters = scorer.groups.counters

    def computed(pairs, before: int) -> int:
        return sum(len(p.ids) for p in pairs) - (counters.cached_prompt_tokens - before)

    plain_items = _items(6, G, system_words=120)
    before = counters.cached_prompt_tokens
    plain = await scorer.score(plain_items)
    plain_cost = computed([s.pair for s in plain], before)

    items = _items(7, G, system_words=120)
    resub = counters.resubmissions
    before = counters.cached_prompt_tokens
    got = await _contrast(scorer, items)
    pairs = [*(d.pair for d in got), *(d.baseline.pair for d in got)]
    cost = computed(pairs, before)
    assert counters.resubmissions == resub
    P_c, P_b = len(got[0].pair.prompt_ids), len(got[0].baseline.pair.prompt_ids)
    H = sum(d.num_tokens for d in got)
    assert P_c > 2 * BLOCK and P_b < P_c  # the criteria are long; the baseline prompt is short
    bound = P_c + P_b + 2 * H + (G - 1) * (P_c % BLOCK + P_b % BLOCK)  # siblings recompute only a partial block
    assert cost <= bound
    assert cost < 0.5 * (G * (P_c + P_b) + 2 * H)  # far from scoring 2G prompts
    P_plain = len(plain[0].pair.prompt_ids)
    plain_bound = P_plain + sum(s.num_tokens for s in plain) + (G - 1) * (P_plain % BLOCK)
    assert plain_cost <= plain_bound
    print(f"computed tokens: contrast {cost}, plain {plain_cost}, 2G-prompt cost {G * (P_c + P_b) + 2 * H}")
