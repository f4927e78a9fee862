"""Endogenous reward math (docs/architecture.md, the math). Pure numpy: no engine, no HTTP.

A causal LM's raw logits are a soft Q-function. With alpha the entropy coefficient,
    V(s)       = alpha * logsumexp(Q(s, .) / alpha)
    pi(a | s)  = softmax(Q(s, .) / alpha)
    r(s_h,a_h) = Q(s_h, a_h) - V(s_{h+1})          (inverse soft Bellman operator)
               = alpha * log pi(a_h|s_h) + V(s_h) - V(s_{h+1})

The engine gives two floats per position i of the sequence x_0 .. x_{N-1}:
    c[i] = raw logit at position i of the token x_{i+1}   (c[N-1] is undefined, NaN)
    v[i] = alpha * logsumexp(logits_i / alpha)
The prompt is x_0 .. x_{P-1}, the response x_P .. x_{N-1} (H = N - P tokens); response
token h has state s_h = x_{<P+h} and action a_h = x_{P+h}.

Bad inputs raise RequestError (endorm_server/errors.py) with `param` naming the offending input:
"prompt" (empty prompt), "response" (empty response), "alpha", "terminal",
"aggregation", "gamma", "beta", "scores"; malformed engine output (shape, length
mismatch, non-finite values) raises InternalError: it is ours, not the caller's.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from endorm_server.errors import InternalError, RequestError
from endorm_server.scoring.aggregations import TERMINALS, TOKEN_AGGREGATIONS, Terminal, TokenAggregation


@dataclass(frozen=True, eq=False)  # eq=False: identity equality/hash (fields are arrays)
class TokenRewards:
    rewards: np.ndarray  # r_h, float64 [H]
    logprobs: np.ndarray  # log pi(a_h | s_h), float64 [H]
    v0: float  # V(s_0), depends only on the prompt
    v_end: float = 0.0  # V(s_H): 0 (terminal zero) or v_{N-1} (bootstrap)

    @property
    def H(self) -> int:
        return len(self.rewards)


# -----------------------------------------------------------------------------
# validation helpers


def _check_positive_finite(x: float, name: str) -> float:
    try:
        x = float(x)
    except (TypeError, ValueError):
        raise RequestError(f"{name} must be a number, got {x!r}", name) from None
    if not (math.isfinite(x) and x > 0):
        raise RequestError(f"{name} must be finite and > 0, got {x!r}", name)
    return x


def _check_discount(gamma: float, beta: float) -> tuple[float, float]:
    try:
        gamma = float(gamma)
    except (TypeError, ValueError):
        raise RequestError(f"gamma must be a number, got {gamma!r}", "gamma") from None
    try:
        beta = float(beta)
    except (TypeError, ValueError):
        raise RequestError(f"beta must be a number, got {beta!r}", "beta") from None
    if not (0.0 < gamma <= 1.0):  # also rejects NaN
        raise RequestError(f"gamma must be in (0, 1], got {gamma!r}", "gamma")
    if not (math.isfinite(beta) and beta >= 0.0):
        raise RequestError(f"beta must be finite and >= 0, got {beta!r}", "beta")
    return gamma, beta


def _as_scores(scores: Sequence[float] | np.ndarray) -> np.ndarray:
    R = np.asarray(scores, dtype=np.float64)
    if R.ndim != 1:
        raise RequestError(f"scores must be 1-D, got shape {R.shape}", "scores")
    if not np.all(np.isfinite(R)):
        raise RequestError("scores must be finite", "scores")
    return R


def _check_finite(x: np.ndarray, name: str, offset: int) -> None:
    bad = np.flatnonzero(~np.isfinite(x))
    if bad.size:
        raise InternalError(f"engine output {name} is not finite at position {offset + bad[0]}")


# -----------------------------------------------------------------------------
# per-token rewards


def token_rewards(
    c: np.ndarray, v: np.ndarray, prompt_len: int, *, alpha: float = 1.0, terminal: Terminal = "zero"
) -> TokenRewards:
    """Per-token rewards r_h and log-probs log pi(a_h|s_h) of the response x_P .. x_{N-1}."""
    c = np.asarray(c, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    if c.ndim != 1 or v.ndim != 1 or len(c) != len(v):
        raise InternalError(f"c and v must be 1-D of equal length, got shapes {c.shape} and {v.shape}")
    alpha = _check_positive_finite(alpha, "alpha")
    if terminal not in TERMINALS:
        raise RequestError(f"terminal must be one of {TERMINALS}, got {terminal!r}", "terminal")
    try:
        if isinstance(prompt_len, bool):
            raise TypeError
        P = operator.index(prompt_len)
    except TypeError:
        raise RequestError(f"prompt_len must be an integer, got {prompt_len!r}", "prompt") from None
    N = len(c)
    H = N - P
    if P < 1:
        raise RequestError("the prompt is empty: at least one prompt token is needed (s_0 = x_<P)", "prompt")
    if H < 1:
        raise RequestError(f"the response is empty (sequence length {N}, prompt length {P})", "response")

    q = c[P - 1 : N - 1]  # Q(s_h, a_h) = c[P+h-1],  h = 0 .. H-1
    v_h = v[P - 1 : N - 1]  # V(s_h)      = v[P+h-1]
    v_H = v[N - 1] if terminal == "bootstrap" else 0.0  # V(s_H): 0 (paper) or bootstrap
    _check_finite(q, "c", P - 1)
    _check_finite(v[P - 1 : N] if terminal == "bootstrap" else v_h, "v", P - 1)

    v_next = np.append(v_h[1:], v_H)  # V(s_{h+1}) = v[P+h] for h < H-1, then V(s_H)
    r = q - v_next  # r_h = Q(s_h, a_h) - V(s_{h+1})
    logp = (q - v_h) / alpha  # log pi(a_h|s_h) = (Q(s_h, a_h) - V(s_h)) / alpha
    return TokenRewards(rewards=r, logprobs=logp, v0=float(v_h[0]), v_end=float(v_H))


# -----------------------------------------------------------------------------
# sequence scores


def discount_weights(H: int, gamma: float, beta: float) -> np.ndarray:
    """w_h = max(gamma^h, beta), h = 0 .. H-1 (beta is a floor on the weight)."""
    gamma, beta = _check_discount(gamma, beta)
    H = operator.index(H)
    if H < 0:
        raise InternalError(f"H must be >= 0, got {H}")
    return np.maximum(np.power(gamma, np.arange(H, dtype=np.float64)), beta)


def aggregate(
    tr: TokenRewards, aggregation: TokenAggregation | str = "sum", *, gamma: float = 1.0, beta: float = 0.0
) -> float:
    """Sequence score R from per-token rewards (or log-probs for the loglik baselines)."""
    gamma, beta = _check_discount(gamma, beta)  # validated whatever the aggregation
    r, logp = tr.rewards, tr.logprobs
    if aggregation == "sum":
        return float(np.sum(r))  # sum_h r_h
    if aggregation == "mean":
        return float(np.mean(r))  # sum_h r_h / H
    if aggregation == "discounted":
        w = discount_weights(len(r), gamma, beta)
        return float(np.dot(w, r))  # sum_h w_h r_h
    if aggregation == "loglik_sum":
        return float(np.sum(logp))  # sum_h log pi(a_h|s_h)
    if aggregation == "loglik_mean":
        return float(np.mean(logp))  # sum_h log pi(a_h|s_h) / H
    raise RequestError(f"aggregation must be one of {TOKEN_AGGREGATIONS}, got {aggregation!r}", "aggregation")


# -----------------------------------------------------------------------------
# preferences between responses to the same prompt


def preference_probabilities(scores: Sequence[float] | np.ndarray) -> np.ndarray:
    """Bradley-Terry matrix P[i, j] = P(i > j) = sigmoid(R_i - R_j); diagonal 0.5."""
    R = _as_scores(scores)
    with np.errstate(over="ignore"):  # R_i - R_j may overflow to +-inf: fine below
        d = R[:, None] - R[None, :]
    small = np.exp(-np.logaddexp(0.0, np.abs(d)))  # sigmoid(-|d|) in [0, 0.5], no overflow
    P = np.where(d >= 0, 1.0 - small, small)
    np.fill_diagonal(P, 0.5)
    return P


def ranking(scores: Sequence[float] | np.ndarray) -> list[int]:
    """Indices of the scores, best first; ties keep their input order."""
    R = _as_scores(scores)
    return [int(i) for i in np.argsort(-R, kind="stable")]
