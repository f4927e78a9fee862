"""Step rewards through the real engine: step sums against the float64 reference, on two architectures."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import AutoTokenizer

from endorm_server.core.scorer import ScoreOptions, Scorer
from endorm_server.errors import RequestError
from endorm_server.inputs.tokenization import PairEncoder
from endorm_server.scoring import rewards
from tests.conftest import tiny_model
from tests.engine.conftest import reference_engine

TOL = 1e-4  # per token, float32 engine vs float64 reference (as tests/engine/test_equivalence.py)
CHAT = [{"role": "user", "content": "What is 2*(2+3)? Think step by step."}]
STEPS = ["First, 2+3 = 5.\n\n", "Then 2*5 = 10.\n\n", "The answer is 10."]


async def _scorer(vllm_engines, name: str) -> Scorer:
    engine = await vllm_engines(name)
    tok = AutoTokenizer.from_pretrained(tiny_model(name))
    return Scorer(engine, PairEncoder(tok, vocab_size=engine.info.vocab_size), name)


@pytest.mark.parametrize("name", ["llama", "gemma2-softcap"])
async def test_step_sums_match_the_float64_reference(vllm_engines, name):
    scorer = await _scorer(vllm_engines, name)
    ref = reference_engine(name)
    items = [
        {"messages": CHAT, "steps": STEPS},
        {"messages": CHAT, "response": "".join(STEPS), "step_separator": "\n\n"},
        {"prompt": "Q: 2*(2+3)? A:", "steps": STEPS},
        {"prompt_ids": [3, 17, 40, 41], "response_ids": list(range(50, 70)), "step_ends": [4, 11, 19]},
    ]
    for agg in ("sum", "step_min", "step_last"):
        scored = await scorer.score(items, ScoreOptions(aggregation=agg, return_tokens=True))
        for item in scored:
            st = ref.forward_stats(item.pair.ids)
            exact = rewards.token_rewards(st.c, st.v, len(item.pair.prompt_ids))  # float64
            spans = [(s.start, s.end) for s in item.steps]
            assert spans[0][0] == 0 and spans[-1][1] == item.num_tokens
            assert all(e == s for (_, e), (s, _) in zip(spans, spans[1:]))
            for s in item.steps:
                assert s.reward == pytest.approx(exact.rewards[s.start : s.end].sum(), abs=TOL * max(1, s.num_tokens))
                assert s.logprob == pytest.approx(exact.logprobs[s.start : s.end].sum(), abs=TOL * max(1, s.num_tokens))
            # the step sums tile the sequence sum (same float64 arithmetic on the engine's rewards)
            assert sum(s.reward for s in item.steps) == pytest.approx(item.token_rewards.rewards.sum(), abs=1e-9)
            held = [s.reward for s in item.steps if s.num_tokens]
            expected = {"sum": item.token_rewards.rewards.sum(), "step_min": min(held), "step_last": held[-1]}[agg]
            assert item.score == pytest.approx(expected, abs=1e-9)
        assert [len(s.steps) for s in scored] == [3, 3, 3, 3]
        assert scored[0].pair.response_ids == scored[1].pair.response_ids  # steps == the whole response's tokens
        assert scored[3].steps[-1].end == 20  # tokens after the last step end join the last step


async def test_step_aggregation_needs_steps(vllm_engines):
    scorer = await _scorer(vllm_engines, "llama")
    with pytest.raises(RequestError) as e:
        await scorer.score([{"prompt": "Q", "response": "a"}], ScoreOptions(aggregation="step_min"))
    assert e.value.param == "items.0.steps" and e.value.code == "steps_required"
    scored = await scorer.score([{"prompt": "Q", "response": "a"}], ScoreOptions(return_tokens=True))
    assert scored[0].steps is None and np.isfinite(scored[0].score)
