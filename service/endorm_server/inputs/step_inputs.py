"""A request item's step fields -> the step spans of its encoded pair.

``steps`` (list of strings: the response is their concatenation), ``step_separator`` (with a
text response) or ``step_ends`` (with ``response_ids``); the rules are in inputs/step_spans.py.
The text forms need the tokens' character spans (service/endorm_server/inputs/offsets.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from endorm_server.errors import RequestError
from endorm_server.inputs import step_spans as st
from endorm_server.inputs.offsets import response_offsets
from endorm_server.inputs.tokenization import EncodedPair, PairEncoder

STEP_FIELDS = ("steps", "step_separator", "step_ends")


def pop_step_fields(item: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """-> (the item without step fields, the step fields given)."""
    spec = {k: item[k] for k in STEP_FIELDS if item.get(k) is not None}
    return {k: v for k, v in item.items() if k not in STEP_FIELDS}, spec


def prepare(item: dict[str, Any], spec: dict[str, Any]) -> tuple[dict[str, Any], list[str] | None]:
    """Check the step fields against the response form; -> (encoder item, step texts or None)."""
    if len(spec) > 1:
        raise RequestError(
            f"give at most one of steps, step_separator, step_ends (got {', '.join(spec)})", list(spec)[1]
        )
    if "steps" in spec:
        if item.get("response_ids") is not None:
            raise RequestError("steps are text: give them with a text response (or use step_ends)", "steps")
        response = st.check_steps(spec["steps"], item.get("response"))
        return {**item, "response": response}, list(spec["steps"])
    if "step_separator" in spec:
        if not isinstance(item.get("response"), str):
            raise RequestError(
                "step_separator needs a text response (use step_ends with response_ids)", "step_separator"
            )
        return item, st.split_on_separator(item["response"], spec["step_separator"])
    if "step_ends" in spec and item.get("response_ids") is None:
        raise RequestError("step_ends index response_ids: give them with response_ids (or use steps)", "step_ends")
    return item, None


def encode_with_steps(
    encoder: PairEncoder, item: dict[str, Any], encode: Callable[[dict[str, Any]], EncodedPair]
) -> EncodedPair:
    """Encode the item (``encode``) and attach its step spans, if it has step fields."""
    item, spec = pop_step_fields(item)
    if not spec:
        return encode(item)
    item, texts = prepare(item, spec)
    pair = encode(item)
    if texts is None:
        spans = st.spans_from_ends(spec["step_ends"], len(pair.response_ids))
    else:
        offsets = response_offsets(encoder, pair)
        if offsets is None:
            raise RequestError(
                "the tokenizer gives no character offsets for this response: send response_ids with step_ends", "steps"
            )
        spans = st.spans_from_char_starts(offsets, st.step_char_starts(texts), len(pair.response_text or ""))
    return dataclasses.replace(pair, step_spans=tuple(spans), step_texts=tuple(texts) if texts else None)
