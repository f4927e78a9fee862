"""endorm_server.inputs.tokenization: exact prompt/response token ids for the three input forms.

Two tiny tokenizers cover both conventions: llama (GPT-2 byte-level regex, prepends
BOS, chat template starts with BOS) and qwen2 (Qwen2 regex, digits split, no BOS).
"""

from __future__ import annotations

import numpy as np
import pytest

from endorm_server.errors import RequestError
from endorm_server.inputs.tokenization import EncodedPair, PairEncoder

ARCHS = ("llama", "qwen2")

Q = [{"role": "user", "content": "What is 2+2?"}]

# (prompt, response) pairs where "prompt + response" as one string may tokenize
# differently from the two parts tokenized separately.
RAW_CASES = [
    ("Q: What is 2+2? A: ", "4"),
    ("The ca", "t reads the book."),
    ("The teacher expl", "ains the problem."),
    ("Hello wor", "ld"),
]
# Responses whose first characters re-tokenize together with the generation prompt's
# trailing "\n" ("assistant\n") when the conversation is rendered as one string.
CHAT_MERGING_RESPONSES = ["\n\nThe answer is 4.", "  - the answer is 4", " \nThe answer is 4."]


@pytest.fixture(scope="module", params=ARCHS)
def arch(request):
    return request.param


@pytest.fixture(scope="module")
def tok(arch, tiny_tokenizer):
    return tiny_tokenizer(arch)


@pytest.fixture(scope="module")
def enc(tok):
    return PairEncoder(tok, vocab_size=len(tok))


def _template_prompt_ids(tok, msgs):
    return list(tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False))


def _template_full_ids(tok, msgs, response):
    conv = [*msgs, {"role": "assistant", "content": response}]
    return list(tok.apply_chat_template(conv, tokenize=True, return_dict=False))


def _text(tok, s):
    return tok.encode(s, add_special_tokens=False)


# ----------------------------------------------------------------------------- basics


def test_encoded_pair_properties():
    p = EncodedPair(prompt_ids=[1, 2, 3], response_ids=[4, 5])
    assert p.ids == [1, 2, 3, 4, 5]
    assert p.prompt_len == 3 and p.response_len == 2 and len(p) == 5
    with pytest.raises(AttributeError):
        p.prompt_ids = [9]  # frozen


def test_end_of_turn_is_im_end(enc, tok):
    assert enc.chat_eot_id == enc.eos_id == tok.convert_tokens_to_ids("<|im_end|>")


# ------------------------------------------------------------------------- raw text


def test_raw_prompt_and_response_tokenized_separately(enc, tok, arch):
    merged = 0
    for prompt, response in RAW_CASES:
        pair = enc.encode(prompt=prompt, response=response)
        assert pair.prompt_ids == tok.encode(prompt)  # model convention (BOS or not)
        assert pair.response_ids == _text(tok, response) + [tok.eos_token_id]
        if tok.encode(prompt + response) != pair.ids[:-1]:
            merged += 1
    # the cases prove something: naive concatenation re-tokenizes across the boundary
    assert merged >= 1, f"no RAW_CASES merges for {arch}; extend the list"


def test_raw_prompt_bos_convention(enc, tok, arch):
    pair = enc.encode(prompt="2+2=", response="4")
    if arch == "llama":
        assert pair.prompt_ids[0] == tok.bos_token_id
        assert pair.prompt_ids.count(tok.bos_token_id) == 1
        # a prompt that already carries the BOS text does not get a second one
        again = enc.encode(prompt="<|bos|>2+2=", response="4")
        assert again.prompt_ids == pair.prompt_ids
        # an empty prompt is just BOS: one token, a valid state s_0
        assert enc.encode(prompt="", response="4").prompt_ids == [tok.bos_token_id]
    else:
        assert tok.bos_token_id not in pair.prompt_ids
        with pytest.raises(RequestError) as e:
            enc.encode(prompt="", response="4")
        assert e.value.param == "prompt"


def test_raw_prerendered_chat_prompt_equals_template(enc, tok):
    text = tok.apply_chat_template(Q, add_generation_prompt=True, tokenize=False)
    pair = enc.encode(prompt=text, response="4")
    assert pair.prompt_ids == _template_prompt_ids(tok, Q)


# ---------------------------------------------------------------------------- chat


def test_chat_prompt_is_exactly_the_generation_prompt(enc, tok):
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "What is 2+2?"},
    ]
    pair = enc.encode(messages=msgs, response="The answer is 4.")
    assert pair.prompt_ids == _template_prompt_ids(tok, msgs)
    assert pair.prompt_ids[-3:] == _text(tok, "<|im_start|>assistant\n")


def test_chat_response_in_context_matches_rendered_conversation(enc, tok):
    response = "The answer is 4."
    pair = enc.encode(messages=Q, response=response)
    full = _template_full_ids(tok, Q, response)
    # prompt + response + <|im_end|> is a prefix of the rendered conversation; the rest
    # is the template's trailing newline after the end-of-turn token
    assert full[: len(pair.ids)] == pair.ids
    assert full[len(pair.ids) :] == _text(tok, "\n")
    assert pair.response_ids[-1] == tok.convert_tokens_to_ids("<|im_end|>")
    assert pair.response_ids[:-1] == _text(tok, response)


def test_chat_boundary_merge_falls_back_to_separate_tokenization(enc, tok, arch):
    prompt_ids = _template_prompt_ids(tok, Q)
    merged = 0
    for response in CHAT_MERGING_RESPONSES:
        pair = enc.encode(messages=Q, response=response)
        # prompt ids are always exactly the generation prompt
        assert pair.prompt_ids == prompt_ids
        full = _template_full_ids(tok, Q, response)
        if full[: len(prompt_ids)] != prompt_ids:
            merged += 1  # rendering the whole conversation moves the boundary ...
            # ... so the response is tokenized on its own and appended
            assert pair.response_ids == _text(tok, response) + [tok.eos_token_id]
        else:
            assert full[: len(pair.ids)] == pair.ids
    assert merged >= 1, f"no CHAT_MERGING_RESPONSES merge for {arch}; extend the list"


def test_chat_system_replaces_or_prepends(enc, tok):
    crit = "Prefer academic writing."
    with_sys = enc.encode(messages=Q, system=crit, response="4")
    expected = _template_prompt_ids(tok, [{"role": "system", "content": crit}, *Q])
    assert with_sys.prompt_ids == expected
    # an existing leading system turn is replaced, not duplicated
    msgs = [{"role": "system", "content": "You are a helpful assistant."}, *Q]
    replaced = enc.encode(messages=msgs, system=crit, response="4")
    assert replaced.prompt_ids == expected
    # the caller's list is not modified
    assert msgs[0]["content"] == "You are a helpful assistant."


def test_chat_with_response_ids_and_ids_with_text(enc, tok):
    ids = _text(tok, "The answer is 4.")
    pair = enc.encode(messages=Q, response_ids=ids)
    assert pair.prompt_ids == _template_prompt_ids(tok, Q)
    assert pair.response_ids == ids  # exact, no EOS appended
    pair2 = enc.encode(prompt_ids=pair.prompt_ids, response="The answer is 4.")
    assert pair2.ids == pair.ids + [tok.eos_token_id]


# ------------------------------------------------------------------------------ ids


def test_ids_are_used_exactly(enc, tok, arch):
    prompt_ids = tok.encode("Q: What is 2+2? A: ")
    response_ids = _text(tok, "4")
    pair = enc.encode(prompt_ids=prompt_ids, response_ids=response_ids)
    assert pair.prompt_ids == prompt_ids and pair.response_ids == response_ids
    if arch == "llama":
        # decoding and re-tokenizing as one string would merge " " + "4" into " 4"
        naive = tok.encode(tok.decode(prompt_ids, skip_special_tokens=True) + "4")
        assert naive != pair.ids
        assert len(naive) == len(pair.ids) - 1
    # any sequence of ints works, numpy included; ids at the vocab edges are allowed
    arr = enc.encode(prompt_ids=np.array([0, 511]), response_ids=(np.int64(5),))
    assert arr.prompt_ids == [0, 511] and arr.response_ids == [5]
    assert all(type(i) is int for i in arr.ids)


def test_response_ids_never_get_eos(enc, tok):
    pair = enc.encode(prompt="2+2=", response_ids=[30, 31], add_eos=True)
    assert pair.response_ids == [30, 31]


# ------------------------------------------------------------------------------ eos


def test_add_eos_false(enc, tok):
    assert enc.encode(prompt="2+2=", response="4", add_eos=False).response_ids == _text(tok, "4")
    chat = enc.encode(messages=Q, response="The answer is 4.", add_eos=False)
    assert chat.response_ids == _text(tok, "The answer is 4.")


def test_eos_not_doubled_when_text_already_ends_with_it(enc, tok):
    eot = tok.eos_token_id
    raw = enc.encode(prompt="2+2=", response="4<|im_end|>")
    assert raw.response_ids == _text(tok, "4") + [eot]
    chat = enc.encode(messages=Q, response="It is 4.<|im_end|>")
    assert chat.response_ids == _text(tok, "It is 4.") + [eot]


def test_empty_response_text(enc, tok):
    # "" + EOS is one token: the policy stopped at once, a valid response
    assert enc.encode(prompt="2+2=", response="").response_ids == [tok.eos_token_id]
    with pytest.raises(RequestError) as e:
        enc.encode(prompt="2+2=", response="", add_eos=False)
    assert e.value.param == "response"


def test_end_of_turn_override(tok):
    enc = PairEncoder(tok, vocab_size=len(tok), end_of_turn_id=2)
    assert enc.encode(messages=Q, response="4").response_ids[-1] == 2


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs,param",
    [
        ({"response": "4"}, "prompt"),
        ({"prompt": "a", "prompt_ids": [1], "response": "4"}, "prompt_ids"),
        ({"messages": Q, "prompt": "a", "response": "4"}, "prompt"),
        ({"prompt": "a"}, "response"),
        ({"prompt": "a", "response": "4", "response_ids": [5]}, "response_ids"),
        ({"prompt": "a", "response": "4", "system": "x"}, "system"),
        ({"prompt_ids": [1, 2], "response": "4", "system": "x"}, "system"),
        ({"prompt": 5, "response": "4"}, "prompt"),
        ({"prompt": "a", "response": 4}, "response"),
        ({"prompt_ids": [], "response": "4"}, "prompt_ids"),
        ({"prompt_ids": [1, 512], "response": "4"}, "prompt_ids"),
        ({"prompt_ids": [-1], "response": "4"}, "prompt_ids"),
        ({"prompt_ids": [1, True], "response": "4"}, "prompt_ids"),
        ({"prompt_ids": [1.0], "response": "4"}, "prompt_ids"),
        ({"prompt_ids": "12", "response": "4"}, "prompt_ids"),
        ({"prompt_ids": [1, "2"], "response": "4"}, "prompt_ids"),
        ({"prompt": "a", "response_ids": []}, "response_ids"),
        ({"prompt": "a", "response_ids": [600]}, "response_ids"),
        ({"prompt": "a", "response_ids": 5}, "response_ids"),
        ({"messages": [], "response": "4"}, "messages"),
        ({"messages": "hi", "response": "4"}, "messages"),
        ({"messages": {"role": "user", "content": "hi"}, "response": "4"}, "messages"),
        ({"messages": ["hi"], "response": "4"}, "messages"),
        ({"messages": [{"role": "bot", "content": "hi"}], "response": "4"}, "messages.0.role"),
        ({"messages": [{"content": "hi"}], "response": "4"}, "messages.0.role"),
        ({"messages": [{"role": "user"}], "response": "4"}, "messages.0.content"),
        (
            {"messages": [*Q, {"role": "user", "content": ["x"]}], "response": "4"},
            "messages.1.content",
        ),
        (
            {"messages": [*Q, {"role": "assistant", "content": "4"}], "response": "4"},
            "messages",
        ),
        (
            {"messages": [*Q, {"role": "assistant", "content": "4"}], "response_ids": [5]},
            "messages",
        ),
        ({"messages": [*Q, {"role": "system", "content": "x"}], "response": "4"}, "messages"),
        ({"messages": [{"role": "system", "content": "x"}], "response": "4"}, "messages"),
        ({"messages": Q, "system": 3, "response": "4"}, "system"),
    ],
)
def test_input_errors(enc, kwargs, param):
    with pytest.raises(RequestError) as e:
        enc.encode(**kwargs)
    assert e.value.param == param
    assert isinstance(e.value, ValueError) and e.value.message


def test_no_chat_template(tok):
    import copy

    bare = copy.deepcopy(tok)
    bare.chat_template = None
    enc = PairEncoder(bare, vocab_size=len(bare))
    with pytest.raises(RequestError) as e:
        enc.encode(messages=Q, response="4")
    assert e.value.param == "messages"
    assert enc.encode(prompt="2+2=", response="4").response_ids[-1] == bare.eos_token_id


# --------------------------------------------------------------------- decode_tokens


def test_decode_tokens_per_token_text(enc, tok):
    text = "The café costs 12€ – 東京 🎉 ok.\n\nDone"
    ids = tok.encode(text, add_special_tokens=False)
    pieces = enc.decode_tokens(ids)
    assert len(pieces) == len(ids)
    assert "".join(pieces) == text
    assert "" in pieces  # multi-byte characters span several byte tokens
    assert "\ufffd" not in "".join(pieces)


def test_decode_tokens_keeps_special_tokens(enc, tok):
    pair = enc.encode(messages=Q, response="It is 4.")
    pieces = enc.decode_tokens(pair.ids)
    assert "".join(pieces) == tok.decode(pair.ids, skip_special_tokens=False)
    assert pieces[-1] == "<|im_end|>"
    assert pieces[pair.prompt_len - 3 : pair.prompt_len] == ["<|im_start|>", "assistant", "\n"]
    assert enc.decode_tokens([]) == []


def test_decode_tokens_incomplete_trailing_bytes(enc, tok):
    ids = tok.encode("ok 🎉", add_special_tokens=False)
    pieces = enc.decode_tokens(ids[:-1])  # cut inside the emoji's bytes
    assert len(pieces) == len(ids) - 1
    assert "".join(pieces) == tok.decode(ids[:-1])


def test_tokenizer_with_ids_past_the_vocabulary_is_refused_at_start(tiny_tokenizer):
    """Caught when the server starts, not as an engine failure on the first request that hits the id (issue 19)."""
    import copy

    tok = copy.deepcopy(tiny_tokenizer("llama"))
    vocab = len(tok)
    PairEncoder(tok, vocab_size=vocab)  # as shipped: fits
    tok.add_tokens(["<|tool_call|>"], special_tokens=True)  # id == vocab: one past the embedding table
    with pytest.raises(ValueError, match=f"token ids up to {vocab}, beyond the model's vocabulary of {vocab}"):
        PairEncoder(tok, vocab_size=vocab)
    PairEncoder(tok, vocab_size=vocab + 64)  # a padded embedding table has room for it
