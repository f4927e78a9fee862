"""Steps of a response, as the request gives them -> the response-token span of each step.

A response x_P .. x_{N-1} (H tokens) is cut into S contiguous steps; step k covers the token span
[start_k, end_k) with start_0 = 0, end_{S-1} = H, end_k = start_{k+1} (the step rewards over these
spans are scoring/steps.py). No tokenizer here: the tokens' character spans come from inputs/offsets.py.

Where the cut falls (the boundary rule). Steps are given three ways:

* text steps (a list of strings, or ``step_separator``): step k starts at character c_k of
  the response text. A response token with character span [a, b) belongs to the step that
  holds its LAST character, b - 1 (the step in which it ends); a zero-width token (a < b
  fails: an appended end-of-turn token, a byte piece of a split character) belongs to the
  step holding character a, and one at the very end of the text to the last step. So a
  token that straddles a boundary (e.g. ``".\\n\\nStep"`` merged into one token) goes to the
  LATER step, and the end-of-turn token goes to the last step. A step that lies entirely
  inside one token receives no token (``num_tokens`` 0, reward 0).
* ``step_separator``: the response is split after each occurrence of the separator; the
  separator stays with the step it ends (``"a\\n\\nb"`` -> ``["a\\n\\n", "b"]``); a trailing
  separator does not open an empty step.
* ``step_ends`` (token-id responses): exclusive end indices into the response tokens,
  strictly increasing, each in [1, H]; the tokens after the last end join the last step
  (as the end-of-turn token does for text), so ``len(step_ends)`` steps result.

Errors raise :class:`~endorm_server.errors.RequestError` with ``param`` naming the field
(``steps``, ``step_separator``, ``step_ends``).
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Sequence

import numpy as np

from endorm_server.errors import RequestError

Span = tuple[int, int]


# ----------------------------------------------------------------------------- step texts


def split_on_separator(response: str, separator: str, *, required: bool = True) -> list[str]:
    """Split after each separator (kept with the step it ends); no empty trailing step.

    ``required``: an absent separator is an error (the caller asked for steps and got one);
    trainers' adapters pass False, so an answer without the separator is one step.
    """
    if not isinstance(separator, str) or not separator:
        raise RequestError("step_separator must be a non-empty string", "step_separator")
    parts = response.split(separator)
    if len(parts) == 1:
        if required:
            raise RequestError(f"step_separator {separator!r} does not occur in the response", "step_separator")
        return [response]
    steps = [p + separator for p in parts[:-1]]
    if parts[-1]:
        steps.append(parts[-1])
    return steps


def check_steps(steps: Sequence[str], response: str | None) -> str:
    """The response the steps make: their concatenation (it must equal ``response`` if given)."""
    if isinstance(steps, str) or not isinstance(steps, Sequence) or not steps:
        raise RequestError("steps must be a non-empty list of strings", "steps")
    for k, s in enumerate(steps):
        if not isinstance(s, str) or not s:
            raise RequestError(f"steps[{k}] must be a non-empty string", "steps")
    joined = "".join(steps)
    if response is not None and joined != response:
        raise RequestError("the steps do not concatenate to the response", "steps")
    return joined


def step_char_starts(steps: Sequence[str]) -> list[int]:
    """c_k: the character where step k starts, k = 0 .. S-1 (c_0 = 0)."""
    out, at = [], 0
    for s in steps:
        out.append(at)
        at += len(s)
    return out


# ----------------------------------------------------------------------------- token spans


def spans_from_char_starts(offsets: Sequence[Span], char_starts: Sequence[int], text_len: int) -> list[Span]:
    """Token spans of the steps from token character spans (the boundary rule above)."""
    S, H = len(char_starts), len(offsets)
    owner = []
    for a, b in offsets:
        c = b - 1 if b > a else a  # the token's last character, or where a zero-width token sits
        c = min(c, max(text_len - 1, 0))  # at the very end of the text: the last step
        owner.append(bisect_right(char_starts, c) - 1)
    if any(x > y for x, y in zip(owner, owner[1:])):
        raise RequestError("token character offsets are not monotone")  # the tokenizer's offsets: not the caller's
    spans, h = [], 0
    for k in range(S):
        start = h
        while h < H and owner[h] <= k:
            h += 1
        spans.append((start, h))
    return spans


def spans_from_ends(step_ends: Sequence[int], H: int) -> list[Span]:
    """Token spans from exclusive ends; tokens after the last end join the last step."""
    if isinstance(step_ends, (str, bytes)) or not isinstance(step_ends, Sequence) or not step_ends:
        raise RequestError("step_ends must be a non-empty list of token indices", "step_ends")
    prev = 0
    for k, e in enumerate(step_ends):
        if isinstance(e, bool) or not isinstance(e, (int, np.integer)):
            raise RequestError(f"step_ends[{k}] must be an integer, got {e!r}", "step_ends")
        if not 1 <= e <= H:
            raise RequestError(f"step_ends[{k}] = {e} is out of range [1, {H}] (H = {H} response tokens)", "step_ends")
        if e <= prev:
            raise RequestError(
                f"step_ends must be strictly increasing (step_ends[{k}] = {e} after {prev})", "step_ends"
            )
        prev = int(e)
    starts = [0, *[int(e) for e in step_ends[:-1]]]
    return [(s, e) for s, e in zip(starts, [*[int(e) for e in step_ends[:-1]], H])]
