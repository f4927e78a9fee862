"""What a scoring request asks for (ScoreOptions) and what one item gets back (ScoredItem, ItemFailure)."""

from __future__ import annotations

from dataclasses import dataclass, field

from endorm_server.errors import RequestError
from endorm_server.inputs.tokenization import EncodedPair
from endorm_server.scoring import rewards, steps
from endorm_server.scoring.aggregations import Aggregation, Terminal


@dataclass(frozen=True)
class ScoreOptions:
    aggregation: Aggregation = "sum"
    gamma: float = 1.0
    beta: float = 0.0
    terminal: Terminal = "zero"
    return_tokens: bool = False
    truncate: bool = False  # drop the start of the prompt (never the response) to fit
    return_terms: bool = False  # loglik, V(s_0), V(s_H) of each item: sum = loglik + v_start - v_end


@dataclass(frozen=True)
class Terms:
    """The telescoping identity's parts: ``sum_h r_h = loglik + v_start - v_end``."""

    loglik: float  # alpha * sum_h log pi(a_h | s_h)
    v_start: float  # V(s_0): the prompt's value, a per-prompt offset
    v_end: float  # V(s_H): 0 (terminal zero) or v_{N-1} (bootstrap)

    @classmethod
    def of(cls, tr: rewards.TokenRewards, alpha: float) -> Terms:
        return cls(loglik=float(alpha * tr.logprobs.sum()), v_start=tr.v0, v_end=tr.v_end)


@dataclass
class ScoredItem:
    score: float
    pair: EncodedPair
    token_rewards: rewards.TokenRewards
    truncated_tokens: int = 0
    token_texts: list[str] | None = field(default=None)
    token_offsets: list[tuple[int, int]] | None = field(default=None)  # char spans in the response text
    steps: list[steps.Step] | None = field(default=None)
    terms: Terms | None = field(default=None)

    @property
    def num_tokens(self) -> int:
        return len(self.pair.response_ids)


@dataclass
class ItemFailure:
    """An item that could not be scored (``"item_errors": "report"``): its error in its place."""

    index: int
    error: RequestError
    score: None = None


Outcome = ScoredItem | ItemFailure
