"""Turn a reward request's prompt and response into exact token ids.

A request gives the prompt in ONE of three forms and the response in ONE of two; any
prompt form combines with any response form:

prompt:   ``messages`` (chat turns, rendered with the model's chat template),
          ``prompt`` (raw text), or ``prompt_ids`` (exact token ids);
response: ``response`` (text) or ``response_ids`` (exact token ids).

The engine scores ``prompt_ids + response_ids``; the reward of section 1 of the design
needs the split point exactly, so the rules below are deterministic and documented.

Prompt rules
------------
* ``messages`` (+ optional ``system``): ``prompt_ids`` are exactly what
  ``tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)``
  gives, i.e. the prompt the policy sees when it generates (the template is rendered to
  text and tokenized with ``add_special_tokens=False``; BOS only if the template writes
  it). ``system`` (the criteria text of a promptable reward) becomes the leading system
  turn: it REPLACES the content of an existing leading system message, or is prepended
  as a new one. Roles: ``system`` (first turn only), ``user``, ``assistant``, ``tool``;
  contents must be strings; the last turn must not be ``assistant`` (the response is
  given separately).
* ``prompt`` text: ``tokenizer.encode(prompt, add_special_tokens=True)``, so the model
  family's own convention applies (BOS for Llama/Mistral/Gemma, nothing for Qwen);
  if the text already starts with the BOS token string, no second BOS is added.
  Special-token strings in the text (e.g. a pre-rendered chat prompt) are parsed as
  special tokens, as everywhere in Hugging Face / vLLM.
* ``prompt_ids``: used exactly as given (validated to be ints in ``[0, vocab_size)``).

Response rules
--------------
* ``response_ids``: used exactly as given (validated); nothing is appended, whatever
  ``add_eos`` says.
* ``response`` text after ``messages`` (chat rule). Let ``P`` be the rendered
  generation prompt (text) and ``prompt_ids`` its tokens. If the template renders the
  conversation with the assistant turn appended as ``P + response + <suffix>`` (the
  response verbatim, right after the generation prompt) AND the tokens of
  ``P + response`` start with exactly ``prompt_ids``, the response tokens are the rest:
  ``encode(P + response)[len(prompt_ids):]`` -- the response tokenized in its
  conversation context, as in the rendered training text. Otherwise (a token merges
  across the boundary, or the template rewrites assistant content, e.g. thinking
  blocks) the response is tokenized on its own: ``encode(response,
  add_special_tokens=False)``. Either way ``prompt_ids`` stay the generation prompt
  exactly. Then, if ``add_eos``, the end-of-turn token is appended: the first token the
  template writes after an assistant message when that is a special token
  (``<|im_end|>`` for ChatML, ``<end_of_turn>`` for Gemma, ``<|eot_id|>`` for Llama 3),
  else the tokenizer's EOS.
* ``response`` text after ``prompt`` or ``prompt_ids`` (raw rule): ``encode(response,
  add_special_tokens=False)``, tokenized separately from the prompt so no token merges
  across the boundary (``"Q: 2+2? A: " + "4"`` would otherwise tokenize ``" 4"`` as one
  token and move the split), then the tokenizer's EOS if ``add_eos``.
* ``add_eos`` never doubles the token: it is appended only if the encoded response does
  not already end with it (e.g. text decoded with special tokens kept).

Errors raise :class:`RequestError` (a ``ValueError``) with ``param`` naming the field:
no prompt form or several (``prompt``), no response or both (``response`` /
``response_ids``), a prompt or response that encodes to zero tokens (the reward needs
``V(s_0)`` from at least one prompt token, and at least one response token), out of
range ids, malformed messages (``messages`` or ``messages.<i>.role`` /
``messages.<i>.content``), ``system`` without ``messages``.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from endorm_server.errors import RequestError

__all__ = ["ALLOWED_ROLES", "EncodedPair", "PairEncoder"]

ALLOWED_ROLES = frozenset({"system", "user", "assistant", "tool"})

_SENTINEL = "ENDORMRESPONSESENTINEL"


@dataclass(frozen=True)
class EncodedPair:
    """Token ids of one (prompt, response) pair; the response starts at ``prompt_len``."""

    prompt_ids: list[int]
    response_ids: list[int]
    # Text responses only (character offsets, service/endorm_server/inputs/offsets.py): the response text, the
    # text tokenized before it in the same string ("" when tokenized on its own), and how
    # many leading response_ids came from that text (the rest were appended: end of turn).
    response_text: str | None = field(default=None, compare=False)
    text_prefix: str = field(default="", compare=False)
    text_tokens: int = field(default=0, compare=False)
    # Steps (service/endorm_server/scoring/steps.py): token spans [start, end) tiling the response, and step texts.
    step_spans: tuple[tuple[int, int], ...] | None = field(default=None, compare=False)
    step_texts: tuple[str, ...] | None = field(default=None, compare=False)

    @property
    def ids(self) -> list[int]:
        return [*self.prompt_ids, *self.response_ids]

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_ids)

    @property
    def response_len(self) -> int:
        return len(self.response_ids)

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.response_ids)


class PairEncoder:
    """Encodes (prompt, response) pairs for one tokenizer; see the module docstring.

    ``vocab_size`` is the model's (``config.vocab_size``), the bound for explicit ids.
    ``end_of_turn_id`` overrides the token that ``add_eos`` appends after a chat
    response (default: detected from the chat template, else the tokenizer's EOS); the
    raw-text rule always appends the tokenizer's EOS. The encoder keeps no mutable
    state after ``__init__``.
    """

    def __init__(self, tokenizer: Any, *, vocab_size: int, end_of_turn_id: int | None = None):
        if not isinstance(vocab_size, int) or vocab_size <= 0:
            raise ValueError("vocab_size must be a positive int")
        largest = max(tokenizer.get_vocab().values(), default=-1)
        if largest >= vocab_size:  # an id past the embedding table would fail some request, deep in the engine
            raise ValueError(
                f"the tokenizer has token ids up to {largest}, beyond the model's vocabulary of "
                f"{vocab_size} (config.vocab_size): tokenizer and weights do not belong together"
            )
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.eos_id: int | None = tokenizer.eos_token_id
        self.bos_token: str | None = getattr(tokenizer, "bos_token", None)
        self.has_chat_template = bool(getattr(tokenizer, "chat_template", None))
        self.chat_eot_id: int | None = end_of_turn_id if end_of_turn_id is not None else self._detect_chat_eot()

    # ------------------------------------------------------------------ helpers

    def _encode_text(self, text: str, *, add_special_tokens: bool) -> list[int]:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # JSON "\ud800" decodes to a lone surrogate: not text
            raise RequestError("text is not valid Unicode (it contains a lone surrogate)") from None
        return list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens))

    def _render(self, messages: list[dict], *, add_generation_prompt: bool) -> str:
        try:
            out = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=add_generation_prompt, tokenize=False
            )
        except Exception as exc:  # jinja2 TemplateError, ValueError, ...
            raise RequestError(
                f"the chat template rejected the messages: {exc}", "messages", code="template_error"
            ) from exc
        if not isinstance(out, str):
            raise RequestError("the chat template did not render to text", "messages", code="template_error")
        return out

    def _detect_chat_eot(self) -> int | None:
        """The special token the template writes right after an assistant message."""
        if not self.has_chat_template:
            return self.eos_id
        try:
            text = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _SENTINEL}],
                add_generation_prompt=False,
                tokenize=False,
            )
        except Exception:
            return self.eos_id
        at = text.rfind(_SENTINEL) if isinstance(text, str) else -1
        if at < 0:
            return self.eos_id
        suffix_ids = self._encode_text(text[at + len(_SENTINEL) :], add_special_tokens=False)
        if not suffix_ids:
            return self.eos_id
        first = suffix_ids[0]
        special = set(getattr(self.tokenizer, "all_special_ids", []) or [])
        try:
            special |= set(self.tokenizer.get_added_vocab().values())
        except Exception:
            pass
        return first if first in special else self.eos_id

    def _check_ids(self, ids: Any, param: str) -> list[int]:
        if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
            # numpy arrays / torch tensors expose tolist()
            if hasattr(ids, "tolist") and not isinstance(ids, (str, bytes)):
                ids = ids.tolist()
            if not isinstance(ids, list):
                raise RequestError(f"{param} must be a list of token ids", param)
        out: list[int] = []
        for i, t in enumerate(ids):
            if isinstance(t, bool) or not isinstance(t, numbers.Integral):
                raise RequestError(f"{param}[{i}] is not an integer token id: {t!r}", param)
            t = int(t)
            if not 0 <= t < self.vocab_size:
                raise RequestError(
                    f"{param}[{i}] = {t} is out of range [0, {self.vocab_size})", param, code="token_out_of_vocabulary"
                )
            out.append(t)
        if not out:
            raise RequestError(f"{param} is empty", param)
        return out

    def _check_messages(self, messages: Any, system: str | None) -> list[dict]:
        if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
            raise RequestError("messages must be a list of {role, content} objects", "messages")
        msgs: list[dict] = []
        for i, m in enumerate(messages):
            if not isinstance(m, Mapping):
                raise RequestError(f"messages[{i}] must be an object with role and content", "messages")
            role, content = m.get("role"), m.get("content")
            if not isinstance(role, str) or role not in ALLOWED_ROLES:
                raise RequestError(
                    f"messages[{i}].role must be one of {sorted(ALLOWED_ROLES)}, got {role!r}",
                    f"messages.{i}.role",
                )
            if not isinstance(content, str):
                raise RequestError(f"messages[{i}].content must be a string", f"messages.{i}.content")
            msgs.append(dict(m))
        if system is not None:
            if not isinstance(system, str):
                raise RequestError("system must be a string", "system")
            if msgs and msgs[0]["role"] == "system":
                msgs[0]["content"] = system
            else:
                msgs.insert(0, {"role": "system", "content": system})
        if not msgs:
            raise RequestError("messages is empty", "messages")
        for i, m in enumerate(msgs):
            if m["role"] == "system" and i != 0:
                raise RequestError("a system message is only allowed as the first turn", "messages")
        if msgs[-1]["role"] == "assistant":
            raise RequestError(
                "the last message is an assistant turn: give the response separately (response or response_ids)",
                "messages",
            )
        if msgs[-1]["role"] == "system":
            raise RequestError("messages has no user turn", "messages")
        return msgs

    def _finish(self, ids: list[int], eot: int | None, add_eos: bool) -> list[int]:
        if add_eos:
            if eot is None:
                raise RequestError("the model has no end-of-sequence token; pass add_eos=false", "add_eos")
            if not ids or ids[-1] != eot:
                ids = [*ids, eot]
        return ids

    # ---------------------------------------------------------------------- API

    def encode(
        self,
        *,
        messages: list[dict] | None = None,
        prompt: str | None = None,
        prompt_ids: list[int] | None = None,
        response: str | None = None,
        response_ids: list[int] | None = None,
        system: str | None = None,
        add_eos: bool = True,
    ) -> EncodedPair:
        """Encode one pair; see the module docstring for the exact rules."""
        given = [
            n for n, v in (("messages", messages), ("prompt", prompt), ("prompt_ids", prompt_ids)) if v is not None
        ]
        if not given:
            raise RequestError("one of messages, prompt or prompt_ids is required", "prompt")
        if len(given) > 1:
            raise RequestError(
                f"give exactly one of messages, prompt or prompt_ids (got {', '.join(given)})",
                given[1],
            )
        if response is None and response_ids is None:
            raise RequestError("one of response or response_ids is required", "response")
        if response is not None and response_ids is not None:
            raise RequestError("give either response or response_ids, not both", "response_ids")
        if system is not None and messages is None:
            raise RequestError("system is only supported with messages (it becomes the system turn)", "system")
        if response is not None and not isinstance(response, str):
            raise RequestError("response must be a string", "response")

        # ---- prompt
        msgs: list[dict] | None = None
        prompt_text: str | None = None
        if messages is not None:
            if not self.has_chat_template:
                raise RequestError("this model has no chat template: give prompt or prompt_ids", "messages")
            msgs = self._check_messages(messages, system)
            prompt_text = self._render(msgs, add_generation_prompt=True)
            p_ids = self._encode_text(prompt_text, add_special_tokens=False)
            p_param = "messages"
        elif prompt is not None:
            if not isinstance(prompt, str):
                raise RequestError("prompt must be a string", "prompt")
            skip_bos = bool(self.bos_token) and prompt.startswith(self.bos_token or "")
            p_ids = self._encode_text(prompt, add_special_tokens=not skip_bos)
            p_param = "prompt"
        else:
            p_ids = self._check_ids(prompt_ids, "prompt_ids")
            p_param = "prompt_ids"
        if not p_ids:
            raise RequestError("the prompt encodes to zero tokens", p_param)

        # ---- response
        prefix, n_text = "", 0
        if response_ids is not None:
            r_ids = self._check_ids(response_ids, "response_ids")
        elif msgs is not None:
            assert prompt_text is not None and response is not None  # response: checked above
            r_ids, in_context = self._chat_response_ids(msgs, prompt_text, p_ids, response)
            prefix, n_text = (prompt_text if in_context else ""), len(r_ids)
            r_ids = self._finish(r_ids, self.chat_eot_id, add_eos)
        else:
            assert response is not None  # checked above
            r_ids = self._encode_text(response, add_special_tokens=False)
            n_text = len(r_ids)
            r_ids = self._finish(r_ids, self.eos_id, add_eos)
        if not r_ids:
            raise RequestError("the response encodes to zero tokens", "response")
        return EncodedPair(
            prompt_ids=p_ids,
            response_ids=r_ids,
            response_text=response,
            text_prefix=prefix,
            text_tokens=min(n_text, len(r_ids)),
        )

    def _chat_response_ids(
        self, msgs: list[dict], prompt_text: str, p_ids: list[int], response: str
    ) -> tuple[list[int], bool]:
        """-> (response ids, whether they were tokenized after prompt_text in one string)."""
        full = self._render([*msgs, {"role": "assistant", "content": response}], add_generation_prompt=False)
        head = prompt_text + response
        if full.startswith(head):
            head_ids = self._encode_text(head, add_special_tokens=False)
            if head_ids[: len(p_ids)] == p_ids:
                return head_ids[len(p_ids) :], True
        return self._encode_text(response, add_special_tokens=False), False

    def decode_tokens(self, ids: Sequence[int]) -> list[str]:
        """Per-token text: ``"".join(decode_tokens(ids)) == tokenizer.decode(ids)``.

        Incremental (vLLM-style) detokenisation: each token's text is what it adds to
        the decoded string, so leading spaces survive (SentencePiece) and a character
        split over several byte tokens is attributed to the token that completes it
        (the earlier ones get ``""``). Special tokens are kept.
        """
        ids = [int(i) for i in ids]
        out: list[str] = []
        prefix = read = 0
        for k in range(len(ids)):
            prefix_text = self._decode(ids[prefix:read])
            new_text = self._decode(ids[prefix : k + 1])
            if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
                out.append(new_text[len(prefix_text) :])
                prefix, read = read, k + 1
            else:
                out.append("")
        if read < len(ids):  # trailing bytes that never form a complete character
            prefix_text = self._decode(ids[prefix:read])
            out[-1] = self._decode(ids[prefix:])[len(prefix_text) :]
        return out

    def _decode(self, ids: list[int]) -> str:
        if not ids:
            return ""
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
