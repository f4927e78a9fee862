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

The spans come from the request (inputs/step_spans.py, the boundary rule); this module only sums
rewards over them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from endorm_server.errors import RequestError
from endorm_server.inputs.step_spans import Span
from endorm_server.scoring.aggregations import STEP_AGGREGATIONS


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
