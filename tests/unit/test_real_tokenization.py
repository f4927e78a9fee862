"""Prompt/response boundaries with a real byte-level BPE tokenizer and chat template (SmolLM2).

SmolLM2's generation prompt ends in "<|im_start|>assistant\\n"; a response starting with
"\\n" or "  " merges with that "\\n" when the conversation is tokenized as one string
("\\n\\n" and "\\n " are single tokens), which would move the split point into the prompt.
The three input forms must give the exact ids: the prompt exactly as the policy saw it
(``apply_chat_template(..., add_generation_prompt=True)``) and the response after it.
"""

from __future__ import annotations

import pytest

from endorm_server.inputs.tokenization import PairEncoder
from tests.models.real import smollm2_path

DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
# (response, merges with the generation prompt's trailing "\n" in naive concatenation)
RESPONSES = [
    ("The capital of France is Paris.", False),
    (" Paris.", False),  # leading space
    ("\nParis.", False),  # leading newline
    ("\n\nParis is the capital of France.", True),  # "\n" + "\n\n" -> "\n\n" + "\n"
    ("  Paris, of course.", True),  # "\n" + "  " -> "\n " + " "
    ("- Paris\n- Lyon", False),
]


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_path())


@pytest.fixture(scope="module")
def enc(tok):
    return PairEncoder(tok, vocab_size=len(tok))


def _generation_prompt(tok, messages) -> list[int]:
    return list(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))


@pytest.mark.parametrize("response, merges", RESPONSES)
def test_chat_without_system_keeps_the_templates_default_system_turn(tok, enc, response, merges):
    pair = enc.encode(messages=QUESTION, response=response)
    prompt_text = tok.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False)
    assert DEFAULT_SYSTEM in prompt_text  # what the reward sees when no `system` is given
    assert pair.prompt_ids == _generation_prompt(tok, QUESTION)
    naive = tok.encode(prompt_text + response, add_special_tokens=False)
    assert (naive[: len(pair.prompt_ids)] != pair.prompt_ids) == merges  # the case is what it claims
    # the response is the text exactly, then the end of turn; nothing moved across the boundary
    assert pair.response_ids[-1] == tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.decode(pair.response_ids[:-1]) == response
    conversation = tok.apply_chat_template([*QUESTION, {"role": "assistant", "content": response}], tokenize=False)
    assert tok.decode(pair.prompt_ids + pair.response_ids) + "\n" == conversation
    if not merges:  # tokenized in its conversation context, as in the rendered training text
        assert pair.prompt_ids + pair.response_ids[:-1] == naive


@pytest.mark.parametrize("response, merges", RESPONSES)
def test_chat_system_replaces_the_default_system_prompt(tok, enc, response, merges):
    criteria = "Judge the answer by factual accuracy only."
    pair = enc.encode(messages=QUESTION, system=criteria, response=response)
    with_system = [{"role": "system", "content": criteria}, *QUESTION]
    assert pair.prompt_ids == _generation_prompt(tok, with_system)
    prompt_text = tok.decode(pair.prompt_ids)
    assert prompt_text.startswith(f"<|im_start|>system\n{criteria}<|im_end|>\n") and DEFAULT_SYSTEM not in prompt_text
    assert tok.decode(pair.response_ids[:-1]) == response
    # a leading system message in `messages` is replaced too, not duplicated
    again = enc.encode(
        messages=[{"role": "system", "content": "You are a pirate."}, *QUESTION], system=criteria, response=response
    )
    assert again == pair


@pytest.mark.parametrize(
    "prompt, response, merges",
    [
        ("Question: What is the capital of France?\nAnswer:", " Paris.", False),
        ("The capital of France is Par", "is.", True),  # naive concatenation makes " Paris" one token
        ("Write one word:\n", "  Paris", True),  # "\n" + "  " -> "\n " + " "
    ],
)
def test_raw_prompt_and_response_are_tokenized_apart(tok, enc, prompt, response, merges):
    pair = enc.encode(prompt=prompt, response=response)
    assert pair.prompt_ids == tok.encode(prompt, add_special_tokens=True)
    assert pair.response_ids == tok.encode(response, add_special_tokens=False) + [tok.eos_token_id]
    assert tok.decode(pair.prompt_ids + pair.response_ids[:-1]) == prompt + response
    naive = tok.encode(prompt + response, add_special_tokens=True)
    assert (naive[: len(pair.prompt_ids)] != pair.prompt_ids) == merges  # the merge these cases guard against


@pytest.mark.parametrize("response, merges", RESPONSES)
def test_the_three_forms_agree(tok, enc, response, merges):
    """Token ids pass through untouched; the rendered prompt as raw text gives the chat form's ids."""
    chat = enc.encode(messages=QUESTION, response=response)
    ids = enc.encode(prompt_ids=chat.prompt_ids, response_ids=chat.response_ids)
    assert ids == chat
    raw = enc.encode(prompt=tok.decode(chat.prompt_ids), response=response)
    assert raw.prompt_ids == chat.prompt_ids  # special-token strings in raw text parse as special tokens
    if merges:  # the chat rule fell back to tokenizing the response alone: the raw rule's result
        assert raw.response_ids == chat.response_ids
    assert tok.decode(raw.response_ids[:-1]) == response
