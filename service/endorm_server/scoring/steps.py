"""Steps of a response: which response tokens make up each step, and step-level scores.

Pure offset and reward arithmetic: no tokenizer, no engine. A response x_P .. x_{N-1}
(H tokens, response token h = x_{P+h}) is cut into S contiguous steps; step k covers the
token span [start_k, end_k) with start_0 = 0, end_{S-1} = H, end_k = start_{k+1}. Its
statistics, from the per-token rewards r_h and log-probs log pi(a_h|s_h):

    R_k      = sum_{h in [start_k, end_k)} r_h                   (step reward)
    L_k      = sum_{h in [start_k, end_k)} log pi(a_h | s_h)      (step log-likelihood)
    sum_k R_k = sum_h r_h                                         (steps tile the response)

Step aggregations of the sequence score: ``step_min`` = min_k R_k (a chain of reasoning is
as good as its weakest step, the usual process-reward-model reading), ``step_last`` =
R_{S-1}. Steps that received no token (see below) are skipped by both.

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

Errors raise :class:`~endorm_server.inputs.tokenization.RequestError` with ``param`` naming the field
(``steps``, ``step_separator``, ``step_ends``).
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from endorm_server.errors import RequestError
from endorm_server.scoring.aggregations import STEP_AGGREGATIONS

Span = tuple[int, int]


@dataclass(frozen=True)
class Step:
    """One step: its response-token span [start, end), R_k, L_k and token count."""

    start: int
    end: int
    reward: float  # R_k = sum of r_h over the span
    logprob: float  # L_k = sum of log pi(a_h|s_h) over the span
    text: str | None = None  # the step's text (text steps only)

    @property
    def num_tokens(self) -> int:
        return self.end - self.start


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


# ----------------------------------------------------------------------------- rewards


def step_stats(
    rewards: np.ndarray, logprobs: np.ndarray, spans: Sequence[Span], texts: Sequence[str] | None = None
) -> list[Step]:
    """R_k and L_k for each span (float64 sums of the per-token values)."""
    r = np.asarray(rewards, dtype=np.float64)
    lp = np.asarray(logprobs, dtype=np.float64)
    if spans and (
        spans[0][0] != 0 or spans[-1][1] != len(r) or any(e != s2 for (_, e), (s2, _) in zip(spans, spans[1:]))
    ):
        raise ValueError(f"step spans must tile [0, {len(r)}), got {list(spans)}")
    return [
        Step(
            start=s,
            end=e,
            reward=float(np.sum(r[s:e])),
            logprob=float(np.sum(lp[s:e])),
            text=texts[k] if texts is not None else None,
        )
        for k, (s, e) in enumerate(spans)
    ]


def aggregate_steps(steps: Sequence[Step], aggregation: str) -> float:
    """step_min = min_k R_k, step_last = R_{S-1}, over steps that hold at least one token."""
    held = [s.reward for s in steps if s.num_tokens > 0]
    if not held:
        raise RequestError("no step holds a response token", "steps")
    if aggregation == "step_min":
        return float(min(held))
    if aggregation == "step_last":
        return float(held[-1])
    raise RequestError(f"aggregation must be one of {STEP_AGGREGATIONS}, got {aggregation!r}", "aggregation")
