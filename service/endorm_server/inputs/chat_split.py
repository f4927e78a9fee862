"""Split a full templated conversation into prompt and response, by the served model's chat template.

Trainers that send whole sequences (OpenRLHF's ``/get_reward`` without ``prompts``, verl's
``/classify``) need the split point: the response starts after the LAST assistant header
(the text the template adds for ``add_generation_prompt=True``), and a trailing
end-of-assistant-turn suffix (e.g. ``<|im_end|>\\n``) is cut to the end-of-turn token alone,
so a templated conversation scores exactly like ``/score`` with ``messages`` + ``response``.
A leading BOS that the template writes but the caller stripped (verl does) is restored.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

from endorm_server.errors import RequestError
from endorm_server.inputs.tokenization import PairEncoder

__all__ = ["ChatBoundaries", "chat_boundaries", "split_ids", "split_text"]


@dataclass(frozen=True)
class ChatBoundaries:
    header: str  # what the template writes before an assistant reply
    suffix: str  # what it writes after one
    eot_text: str  # the end-of-turn token's text ("" if none)
    eot_id: int | None
    bos: str  # the BOS text the template writes at the start ("" if none)
    header_ids: list[int]
    suffix_ids: list[int]


_TEMPLATES: weakref.WeakKeyDictionary[PairEncoder, ChatBoundaries | None] = weakref.WeakKeyDictionary()
_A, _B = "ENDORMPROBEUSER", "ENDORMPROBEREPLY"


def chat_boundaries(encoder: PairEncoder) -> ChatBoundaries | None:
    """The template's assistant header and suffix, probed once per encoder (``None``: no usable template)."""
    if encoder not in _TEMPLATES:
        _TEMPLATES[encoder] = _probe(encoder)
    return _TEMPLATES[encoder]


def _probe(encoder: PairEncoder) -> ChatBoundaries | None:
    tok = encoder.tokenizer
    if not encoder.has_chat_template:
        return None
    user = [{"role": "user", "content": _A}]
    try:
        gen = tok.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
        nogen = tok.apply_chat_template(user, add_generation_prompt=False, tokenize=False)
        full = tok.apply_chat_template([*user, {"role": "assistant", "content": _B}], tokenize=False)
    except Exception:
        return None
    if not (isinstance(gen, str) and isinstance(nogen, str) and isinstance(full, str)):
        return None
    if not gen.startswith(nogen) or len(gen) == len(nogen) or _B not in full:
        return None
    header = gen[len(nogen) :]
    suffix = full[full.rindex(_B) + len(_B) :]
    eot_id = encoder.chat_eot_id
    eot_text = tok.decode([eot_id], skip_special_tokens=False) if eot_id is not None else ""
    bos = encoder.bos_token if encoder.bos_token and gen.startswith(encoder.bos_token) else ""
    enc = lambda s: list(tok.encode(s, add_special_tokens=False)) if s else []  # noqa: E731
    return ChatBoundaries(
        header=header,
        suffix=suffix,
        eot_text=eot_text,
        eot_id=eot_id,
        bos=bos,
        header_ids=enc(header),
        suffix_ids=enc(suffix),
    )


def _no_turn(param: str, why: str) -> RequestError:
    return RequestError(f"cannot split {param} into prompt and response: {why}", param)


def split_text(t: ChatBoundaries | None, text: str, param: str) -> dict:
    """Full templated text -> {"prompt", "response"} (raw-text rules, response ends with the EOT token)."""
    if t is None:
        raise _no_turn(param, "the model has no usable chat template (give prompt and response separately)")
    at = text.rfind(t.header)
    if at < 0:
        raise _no_turn(param, f"no assistant turn (the chat template's {t.header!r}) in the text")
    prompt, response = text[: at + len(t.header)], text[at + len(t.header) :]
    if t.suffix and response.endswith(t.suffix):
        response = response[: -len(t.suffix)] + (t.eot_text if t.suffix.startswith(t.eot_text) else "")
    if t.bos and not prompt.startswith(t.bos):
        prompt = t.bos + prompt  # callers strip the BOS the template writes (verl does); put it back
    return {"prompt": prompt, "response": response}


def split_ids(t: ChatBoundaries | None, ids: list[int], param: str) -> dict:
    if t is None or not t.header_ids:
        raise _no_turn(param, "the model has no usable chat template (use /score with prompt_ids and response_ids)")
    h = t.header_ids
    at = next((i for i in range(len(ids) - len(h), -1, -1) if ids[i : i + len(h)] == h), -1)
    if at < 0:
        raise _no_turn(param, "no assistant header tokens of the chat template in the ids")
    prompt, response = ids[: at + len(h)], ids[at + len(h) :]
    s = t.suffix_ids
    if s and len(response) >= len(s) and response[-len(s) :] == s:
        response = response[: -len(s)] + ([t.eot_id] if t.eot_id is not None and s[0] == t.eot_id else [])
    return {"prompt_ids": prompt, "response_ids": response}
