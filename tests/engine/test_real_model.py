"""Exactness on real weights: the vLLM plugin (float32) vs the float64 transformers
reference on SmolLM2-135M-Instruct (30 layers, vocabulary 49152, tied embeddings), for
real chat-templated text scored the way the service scores it.

One engine for the module (max_num_batched_tokens=128, so the long conversation
arrives over several steps: chunked prefill); short sequences, one long one, and 16
concurrent requests. Per-token c, v and r agree within 1e-4 (see TOL). The module's engine runs
eagerly; one more test starts a compiled engine, the way ``endorm serve`` runs by default.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from endorm_server.engine.transformers_engine import TransformersEngine
from endorm_server.engine.vllm_engine import VllmEngine
from endorm_server.inputs.tokenization import PairEncoder
from endorm_server.scoring import rewards
from tests.conftest import engine_settings
from tests.models.real import smollm2_path

TOL = 1e-4  # absolute, on c, v and r (issue 12). Measured on these texts: c 5.9e-5, v 4.9e-5, r 6.1e-5 at
# most (also with 2 threads and with AVX2 only); a plain float32 transformers forward: 4.9e-5, 4.0e-5, 5.8e-5
# (scripts/fp32_floor.py). This holds because the engine's float32 default runs the body's matrix products
# with torch's GEMM (service/endorm_server/engine/vllm_plugin/cpu_gemm.py): with vLLM's oneDNN, c and v reached 1.008e-4 here.
# On long random-token sequences no float32 engine stays within 1e-4: docs/exactness.md.
STEP_TOKENS = 128

FACTS = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("What is the capital of France?", "The capital of France is Berlin."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("Who wrote Romeo and Juliet?", "William Shakespeare wrote Romeo and Juliet."),
    ("What is the boiling point of water at sea level?", "Water boils at 100 degrees Celsius at sea level."),
    ("Name a primary colour.", " Red."),
    ("Translate 'thank you' into French.", "\n\nMerci."),
    ("Give me a synonym for 'happy'.", "  Joyful."),
]
INSTRUCTIONS = [
    ("Write a haiku about the sea.", "Waves fold into foam,\nsalt wind carries gull voices,\nthe tide keeps its time."),
    ("List three fruits, one per line.", "- Apple\n- Banana\n- Cherry"),
    (
        "Explain photosynthesis in one sentence.",
        "Photosynthesis is the process by which plants use sunlight, water and carbon dioxide to make sugar and oxygen.",
    ),
    ("Reply with only the word yes.", "yes"),
    (
        "Summarise: The meeting moved to Tuesday because the room was booked.",
        "The meeting was moved to Tuesday since the room was unavailable.",
    ),
    ("What should I pack for a day hike?", "Water, snacks, a map, sunscreen, a rain jacket and a first-aid kit."),
    ("Correct the grammar: 'She don't like apples.'", "She doesn't like apples."),
    ("Is 17 a prime number?", "Yes, 17 is a prime number: its only divisors are 1 and 17."),
]
LONG_ANSWER = (
    "Paris is the capital and largest city of France. It sits on the Seine river in the north of the country, "
    "at the heart of the Ile-de-France region. The city has been a major centre of finance, diplomacy, commerce, "
    "fashion, science and the arts since the seventeenth century. Its landmarks include the Eiffel Tower, built "
    "for the 1889 World's Fair, the Louvre, which is the most visited art museum in the world, the cathedral of "
    "Notre-Dame, and the Arc de Triomphe at the western end of the Champs-Elysees. Paris is divided into twenty "
    "districts, called arrondissements, which spiral outwards from the centre. The city is served by a dense "
    "metro network, two major airports and several international railway stations, and it hosted the Summer "
    "Olympic Games in 1900, 1924 and 2024."
)


@pytest.fixture(scope="module")
async def smollm2():
    """(vLLM engine, float64 reference, encoder) on the real model; one engine for the module."""
    from transformers import AutoTokenizer

    path = smollm2_path()
    settings = engine_settings(path, max_num_batched_tokens=STEP_TOKENS, max_num_seqs=32)
    engine = VllmEngine(settings, str(path))
    await engine.start()
    ref = TransformersEngine(engine_settings(path, dtype="float64"), str(path))
    ref._load()
    encoder = PairEncoder(AutoTokenizer.from_pretrained(path), vocab_size=engine.info.vocab_size)
    yield engine, ref, encoder
    await engine.shutdown()


def _errors(got, ref, prompt_len: int) -> np.ndarray:
    """max |dc|, |dv|, |dr| over the sequence (c at the last position is undefined on both sides);
    asserts each within TOL."""
    assert got.c.shape == ref.c.shape and np.isnan(got.c[-1])
    np.testing.assert_allclose(got.c[:-1], ref.c[:-1], rtol=0, atol=TOL)
    np.testing.assert_allclose(got.v, ref.v, rtol=0, atol=TOL)
    dc = np.max(np.abs(got.c[:-1] - ref.c[:-1]))
    dv = np.max(np.abs(got.v - ref.v))
    r_got = rewards.token_rewards(got.c, got.v, prompt_len, alpha=1.0).rewards
    r_ref = rewards.token_rewards(ref.c, ref.v, prompt_len, alpha=1.0).rewards
    dr = np.max(np.abs(r_got - r_ref))
    assert dr < TOL, f"max |dr| = {dr}"
    return np.array([dc, dv, dr])


def _pairs(encoder, cases, system=None):
    return [encoder.encode(messages=[{"role": "user", "content": q}], response=a, system=system) for q, a in cases]


async def test_real_chat_text_short_and_long(smollm2, record_property):
    engine, ref, encoder = smollm2
    pairs = _pairs(encoder, FACTS[:3], system="Judge the answer by factual accuracy.")
    pairs += _pairs(encoder, [("Tell me about Paris.", LONG_ANSWER)])
    long_len = len(pairs[-1].ids)
    assert long_len > STEP_TOKENS, long_len  # the long one (227 tokens) arrives over two engine steps
    worst = np.zeros(3)
    for pair in pairs:
        got = await engine.token_stats(pair.ids)
        expected = ref.forward_stats(pair.ids)
        worst = np.maximum(worst, _errors(got, expected, len(pair.prompt_ids)))
    record_property("max_abs_err_c_v_r", worst.tolist())
    print(
        f"\nSmolLM2 sequential ({long_len}-token long one): max abs error c={worst[0]:.2e} v={worst[1]:.2e} "
        f"r={worst[2]:.2e}"
    )


async def test_16_concurrent_real_requests(smollm2, record_property):
    engine, ref, encoder = smollm2
    pairs = _pairs(encoder, FACTS) + _pairs(encoder, INSTRUCTIONS)
    assert len(pairs) == 16
    stats = await asyncio.gather(*(engine.token_stats(p.ids) for p in pairs))
    worst = np.zeros(3)
    for pair, got in zip(pairs, stats):
        worst = np.maximum(worst, _errors(got, ref.forward_stats(pair.ids), len(pair.prompt_ids)))
    assert engine.num_unfinished() == 0
    record_property("max_abs_err_c_v_r", worst.tolist())
    print(f"\nSmolLM2 16 concurrent: max abs error c={worst[0]:.2e} v={worst[1]:.2e} r={worst[2]:.2e}")


async def test_real_model_prefers_the_true_fact(smollm2):
    """A sanity check that the weights are the real model's: Paris beats Berlin by a wide margin."""
    engine, _, encoder = smollm2
    right, wrong = _pairs(encoder, FACTS[:2])
    scores = []
    for pair in (right, wrong):
        st = await engine.token_stats(pair.ids)
        scores.append(rewards.aggregate(rewards.token_rewards(st.c, st.v, len(pair.prompt_ids), alpha=1.0), "sum"))
    assert scores[0] > scores[1] + 2.0, scores


async def test_compiled_engine_as_serve_runs_it(smollm2, record_property):
    """``endorm serve`` compiles the model (no --enforce-eager): the same bound on that path, 16 concurrent
    chats and the long one, in 128-token steps (measured: c 4.9e-5, v 4.7e-5, r 5.0e-5)."""
    from vllm.config import CompilationMode

    _, ref, encoder = smollm2
    path = smollm2_path()
    engine = VllmEngine(
        engine_settings(path, max_num_batched_tokens=STEP_TOKENS, max_num_seqs=32, enforce_eager=False), str(path)
    )
    pairs = _pairs(encoder, FACTS) + _pairs(encoder, INSTRUCTIONS)
    pairs += _pairs(encoder, [("Tell me about Paris.", LONG_ANSWER)])
    assert len(pairs) == 17 and len(pairs[-1].ids) > STEP_TOKENS  # the long one spans several engine steps
    await engine.start()
    try:
        assert engine._engine is not None
        compilation = engine._engine.vllm_config.compilation_config
        # the path under test is the compiled one: vLLM turns compilation off silently for some settings
        assert compilation.mode != CompilationMode.NONE, compilation
        stats = await asyncio.gather(*(engine.token_stats(p.ids) for p in pairs))
        assert engine.num_unfinished() == 0
    finally:
        await engine.shutdown()
    worst = np.zeros(3)
    for pair, got in zip(pairs, stats):
        worst = np.maximum(worst, _errors(got, ref.forward_stats(pair.ids), len(pair.prompt_ids)))
    record_property("max_abs_err_c_v_r", worst.tolist())
    assert np.all(worst < TOL), f"compiled engine: max abs error c, v, r = {worst} over the bound {TOL}"
    print(f"\nSmolLM2 compiled, 17 concurrent: max abs error c={worst[0]:.2e} v={worst[1]:.2e} r={worst[2]:.2e}")
