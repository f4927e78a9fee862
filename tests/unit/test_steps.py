"""Steps (service/endorm_server/scoring/steps.py) and character offsets (service/endorm_server/inputs/offsets.py): the boundary rules."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import AutoTokenizer

from endorm_server.errors import RequestError
from endorm_server.inputs import step_spans as spans
from endorm_server.inputs.offsets import response_offsets
from endorm_server.inputs.step_inputs import encode_with_steps
from endorm_server.inputs.tokenization import PairEncoder
from endorm_server.models.sources import DEMO_MODEL_DIR
from endorm_server.scoring import steps as st
from tests.conftest import tiny_model

ANSWER = "Step 1: 2+3 = 5.\n\nStep 2: é so 5×2=10.\n\nAnswer: 10"


@pytest.fixture(scope="module", params=["tiny", "demo"])
def encoder(request) -> PairEncoder:
    path = tiny_model("llama") if request.param == "tiny" else DEMO_MODEL_DIR
    tok = AutoTokenizer.from_pretrained(path)
    return PairEncoder(tok, vocab_size=len(tok))


# ----------------------------------------------------------------------------- pure rules


def test_separator_stays_with_the_step_it_ends():
    assert spans.split_on_separator("a\n\nb\n\nc", "\n\n") == ["a\n\n", "b\n\n", "c"]
    assert spans.split_on_separator("a\n\nb\n\n", "\n\n") == ["a\n\n", "b\n\n"]  # no empty trailing step
    assert spans.split_on_separator("abc", "\n\n", required=False) == ["abc"]
    with pytest.raises(RequestError) as e:
        spans.split_on_separator("abc", "\n\n")
    assert e.value.param == "step_separator"


def test_straddling_token_goes_to_the_later_step_and_zero_width_to_the_step_it_sits_in():
    # text "ab.\n\ncd" -> steps "ab.\n\n" (0..5) and "cd" (5..7); tokens: "ab" [0,2), ".\n\nc" [2,6) straddles,
    # "d" [6,7), an appended end-of-turn token [7,7)
    offsets = [(0, 2), (2, 6), (6, 7), (7, 7)]
    assert spans.spans_from_char_starts(offsets, [0, 5], 7) == [(0, 1), (1, 4)]
    # a token ending exactly at the boundary stays in its step
    assert spans.spans_from_char_starts([(0, 5), (5, 7), (7, 7)], [0, 5], 7) == [(0, 1), (1, 3)]
    # a step inside one token gets no token
    assert spans.spans_from_char_starts([(0, 7), (7, 7)], [0, 3, 5], 7) == [(0, 0), (0, 0), (0, 2)]
    # zero-width piece of a split character at position 2 belongs to the step holding character 2
    assert spans.spans_from_char_starts([(0, 2), (2, 2), (2, 3)], [0, 2], 3) == [(0, 1), (1, 3)]


def test_step_ends_rules():
    assert spans.spans_from_ends([2, 5], 7) == [(0, 2), (2, 7)]  # tokens after the last end join the last step
    assert spans.spans_from_ends([3, 7], 7) == [(0, 3), (3, 7)]
    for bad in ([0], [8], [3, 3], [4, 2], [], [1.5]):
        with pytest.raises(RequestError) as e:
            spans.spans_from_ends(bad, 7)
        assert e.value.param == "step_ends"


def test_step_sums_tile_the_sequence_and_aggregations():
    rng = np.random.default_rng(0)
    r, lp = rng.normal(size=9), -rng.random(9)
    steps = st.step_stats(r, lp, [(0, 3), (3, 3), (3, 9)], ["a", "b", "c"])
    assert sum(s.reward for s in steps) == pytest.approx(r.sum(), abs=1e-12)
    assert sum(s.logprob for s in steps) == pytest.approx(lp.sum(), abs=1e-12)
    assert [s.num_tokens for s in steps] == [3, 0, 6]
    held = [steps[0].reward, steps[2].reward]  # the empty step is skipped
    assert st.aggregate_steps(steps, "step_min") == min(held)
    assert st.aggregate_steps(steps, "step_last") == steps[2].reward
    with pytest.raises(ValueError):
        st.step_stats(r, lp, [(0, 3), (4, 9)])  # a gap: spans must tile


def test_steps_must_concatenate_to_the_response():
    assert spans.check_steps(["a", "b"], "ab") == "ab"
    for steps, response in ((["a", "b"], "abc"), ([], None), (["a", ""], None), ("ab", None)):
        with pytest.raises(RequestError) as e:
            spans.check_steps(steps, response)
        assert e.value.param == "steps"


# ----------------------------------------------------------------------------- with real tokenizers


@pytest.mark.parametrize("form", ["chat", "raw"])
def test_offsets_tile_the_response_text(encoder, form):
    prompt = {"messages": [{"role": "user", "content": "Compute 2*(2+3)."}]} if form == "chat" else {"prompt": "Q: "}
    if form == "chat" and not encoder.has_chat_template:
        pytest.skip("no chat template")
    pair = encoder.encode(**prompt, response=ANSWER)
    offs = response_offsets(encoder, pair)
    assert len(offs) == len(pair.response_ids)
    assert offs[0][0] == 0 and offs[pair.text_tokens - 1][1] == len(ANSWER)
    assert all(a <= b for a, b in offs) and all(b == a2 for (_, b), (a2, _) in zip(offs, offs[1:]))
    assert offs[-1] == (len(ANSWER), len(ANSWER))  # the appended end-of-turn token
    # each token's text lies inside its span's text (whitespace moved onto the following token)
    pieces = encoder.decode_tokens(pair.response_ids[: pair.text_tokens])
    assert "".join(ANSWER[a:b] for a, b in offs) == ANSWER
    for piece, (a, b) in zip(pieces, offs):
        assert piece.strip() in ANSWER[a:b] or not ANSWER[a:b]


def test_text_steps_use_exactly_the_whole_response_tokens(encoder):
    prompt = {"prompt": "Q: compute. A: "}
    whole = encoder.encode(**prompt, response=ANSWER)
    texts = spans.split_on_separator(ANSWER, "\n\n")
    for spec in (
        {"steps": texts},
        {"response": ANSWER, "step_separator": "\n\n"},
        {"response": ANSWER, "steps": texts},
    ):
        pair = encode_with_steps(encoder, {**prompt, **spec}, lambda it: encoder.encode(**it))
        assert pair.response_ids == whole.response_ids
        assert len(pair.step_spans) == 3 and pair.step_texts == tuple(texts)
        assert pair.step_spans[0][0] == 0 and pair.step_spans[-1][1] == len(whole.response_ids)
        # the end-of-turn token is in the last step; every step starts on a token holding its first text
        offs = response_offsets(encoder, pair)
        for (s, e), start in zip(pair.step_spans, spans.step_char_starts(texts)):
            assert e > s and offs[s][1] > start


@pytest.mark.parametrize(
    "item, param",
    [
        ({"prompt": "Q", "steps": ["a", "b"], "response": "abc"}, "steps"),
        ({"prompt": "Q", "response": "abc", "step_separator": "\n\n"}, "step_separator"),
        ({"prompt": "Q", "response_ids": [5, 6], "step_ends": [3]}, "step_ends"),
        ({"prompt": "Q", "response_ids": [5, 6, 7], "step_ends": [2, 2]}, "step_ends"),
        ({"prompt": "Q", "response": "abc", "step_ends": [1]}, "step_ends"),
        ({"prompt": "Q", "response_ids": [5, 6], "step_separator": "x"}, "step_separator"),
        ({"prompt": "Q", "response": "a\n\nb", "step_separator": "\n\n", "step_ends": [1]}, "step_ends"),
    ],
)
def test_bad_step_input(encoder, item, param):
    with pytest.raises(RequestError) as e:
        encode_with_steps(encoder, item, lambda it: encoder.encode(**it))
    assert e.value.param == param
