"""The names of the sequence scores, defined once (the HTTP schemas, the CLI and the math read them here)."""

from __future__ import annotations

from typing import Literal, get_args

# Sequence score R from the token rewards r_h (or log-probs, for the log-likelihood baselines).
TokenAggregation = Literal["sum", "mean", "discounted", "loglik_sum", "loglik_mean"]
# Sequence score from the step sums of r_h (scoring/steps.py).
StepAggregation = Literal["step_min", "step_last"]
Aggregation = Literal[TokenAggregation, StepAggregation]
# V(s_H): 0 (the paper's, for responses that ended) or v_{N-1} (bootstrap, for cut-off responses).
Terminal = Literal["zero", "bootstrap"]

TOKEN_AGGREGATIONS: tuple[str, ...] = get_args(TokenAggregation)
STEP_AGGREGATIONS: tuple[str, ...] = get_args(StepAggregation)
AGGREGATIONS: tuple[str, ...] = TOKEN_AGGREGATIONS + STEP_AGGREGATIONS
TERMINALS: tuple[str, ...] = get_args(Terminal)
