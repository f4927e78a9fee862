"""Character spans of a text response's tokens, so rewards can be placed on other tokenizers' tokens.

The spans tile the response text: token h covers [start_h, end_h) with start_0 = 0,
start_{h+1} = end_h, and the last text token ends at len(response). They come from the fast
tokenizer's offset mapping of the very string the response was tokenized in (the chat
context or the response alone), shifted to the response. Offsets that skip characters
(byte-level BPE trims the space of ``" word"``) are closed by extending the token to the
previous token's end, so the space belongs to the token that follows it. A character that
byte-level BPE splits over several tokens is held by one of its pieces (the others are
zero-width). Tokens appended after the text (the end-of-turn token) are
zero-width at the end: ``[len, len)``.

Without a fast tokenizer, or when the offsets do not match the ids, the spans come from
incremental detokenisation (``PairEncoder.decode_tokens``), exact whenever the tokens decode
back to the response text; otherwise there are no spans (None).
"""

from __future__ import annotations

from endorm_server.inputs.step_spans import Span
from endorm_server.inputs.tokenization import EncodedPair, PairEncoder


def response_offsets(encoder: PairEncoder, pair: EncodedPair) -> list[Span] | None:
    """[start, end) of each response token in ``pair.response_text``; None for token-id responses."""
    text = pair.response_text
    if text is None:
        return None
    n = pair.text_tokens
    ends = _mapped_ends(encoder, pair) or _decoded_ends(encoder, pair)
    if ends is None:
        return None
    spans, at = [], 0
    for h, e in enumerate(ends):
        e = len(text) if h == n - 1 else min(max(e, at), len(text))  # tile; last text token ends the text
        spans.append((at, e))
        at = e
    spans += [(len(text), len(text))] * (len(pair.response_ids) - n)
    return spans


def _mapped_ends(encoder: PairEncoder, pair: EncodedPair) -> list[int] | None:
    tok, n = encoder.tokenizer, pair.text_tokens
    if not getattr(tok, "is_fast", False) or n == 0:
        return None
    try:
        enc = tok(pair.text_prefix + (pair.response_text or ""), add_special_tokens=False, return_offsets_mapping=True)
    except (NotImplementedError, ValueError, TypeError):
        return None
    ids, offs = list(enc["input_ids"]), list(enc["offset_mapping"])
    if len(ids) < n or ids[len(ids) - n :] != pair.response_ids[:n]:
        return None
    shift = len(pair.text_prefix)
    return [max(int(b) - shift, 0) for _, b in offs[len(offs) - n :]]


def _decoded_ends(encoder: PairEncoder, pair: EncodedPair) -> list[int] | None:
    n = pair.text_tokens
    pieces = encoder.decode_tokens(pair.response_ids[:n])
    if "".join(pieces) != pair.response_text:
        return None
    ends, at = [], 0
    for p in pieces:
        at += len(p)
        ends.append(at)
    return ends
