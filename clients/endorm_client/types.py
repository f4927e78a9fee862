"""Typed requests and results (mirrors of the server's ``service/endorm_server/http/schemas.py``).

Results ignore unknown fields, so a newer server does not break an older client.
"""

from __future__ import annotations

from typing import Any, Literal, Mapping, Union

from pydantic import BaseModel, ConfigDict, Field

Aggregation = Literal["sum", "mean", "discounted", "loglik_sum", "loglik_mean", "step_min", "step_last"]
Terminal = Literal["zero", "bootstrap"]

_RESULT = ConfigDict(extra="ignore")


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant", "tool"]
    content: str


class ScoreItem(BaseModel):
    """One prompt/response pair: exactly one of ``prompt`` / ``messages`` / ``prompt_ids`` and
    one of ``response`` / ``response_ids`` (the server validates; see its README)."""

    model_config = ConfigDict(extra="forbid")
    prompt: str | None = None
    messages: list[Message] | None = None
    prompt_ids: list[int] | None = None
    system: str | None = None
    response: str | None = None
    response_ids: list[int] | None = None
    steps: list[str] | None = None  # the response as steps (their concatenation); results gain ``steps``
    step_separator: str | None = None  # or split the text response after each occurrence
    step_ends: list[int] | None = None  # or, for response_ids, exclusive step end indices

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


ItemLike = Union[ScoreItem, Mapping[str, Any]]


def item_json(item: ItemLike) -> dict[str, Any]:
    if isinstance(item, ScoreItem):
        return item.to_json()
    if isinstance(item, Mapping):
        out = {}
        for k, v in item.items():
            if v is None:
                continue
            if k == "messages":
                v = [m.model_dump() if isinstance(m, Message) else dict(m) for m in v]
            elif k in ("prompt_ids", "response_ids", "step_ends"):
                v = [int(t) for t in (v.tolist() if hasattr(v, "tolist") else v)]
            out[k] = v
        return out
    raise TypeError(f"a score item must be a ScoreItem or a mapping, got {type(item).__name__}")


class TokenReward(BaseModel):
    model_config = _RESULT
    id: int
    text: str
    reward: float
    logprob: float
    offset: tuple[int, int] | None = Field(None, description="[start, end) in the response text (text responses)")
    criteria_reward: float | None = Field(
        None, description="contrast: r_h under the criteria (reward = this - baseline)"
    )
    baseline_reward: float | None = Field(None, description="contrast: r_h under the baseline context")


class StepResult(BaseModel):
    model_config = _RESULT
    start: int
    end: int
    num_tokens: int
    reward: float
    logprob: float
    text: str | None = None


class ScoreResult(BaseModel):
    model_config = _RESULT
    index: int
    score: float
    num_tokens: int = Field(description="Response tokens H")
    prompt_tokens: int
    truncated_tokens: int = 0
    tokens: list[TokenReward] | None = None
    steps: list[StepResult] | None = None
    criteria_score: float | None = Field(None, description="contrast: the aggregation under the criteria")
    baseline_score: float | None = Field(None, description="contrast: the aggregation under the baseline context")


class Usage(BaseModel):
    model_config = _RESULT
    prompt_tokens: int = 0
    total_tokens: int = 0


class ScoreResponse(BaseModel):
    model_config = _RESULT
    model: str
    alpha: float
    system_fingerprint: str | None = Field(
        None,
        description="The served model's weights, alpha, compute dtype and engine: "
        "equal fingerprints give equal rewards",
    )
    aggregation: Aggregation
    results: list[ScoreResult]
    usage: Usage
    request_id: str | None = Field(None, description="X-Request-ID of the call (set by the client)")

    @property
    def scores(self) -> list[float]:
        return [r.score for r in self.results]


class CompareResponse(BaseModel):
    model_config = _RESULT
    model: str
    alpha: float
    system_fingerprint: str | None = Field(
        None,
        description="The served model's weights, alpha, compute dtype and engine: "
        "equal fingerprints give equal rewards",
    )
    aggregation: Aggregation
    scores: list[float]
    ranking: list[int]
    best: int
    probabilities: list[list[float]]
    results: list[ScoreResult]
    usage: Usage
    request_id: str | None = Field(None, description="X-Request-ID of the call (set by the client)")


class ModelCard(BaseModel):
    model_config = _RESULT
    id: str
    max_model_len: int
    alpha: float
    engine: str
    vocab_size: int | None = None
    dtype: str | None = Field(None, description="The dtype the engine computes in")
    system_fingerprint: str | None = Field(
        None,
        description="The served model's weights, alpha, compute dtype and engine: "
        "equal fingerprints give equal rewards",
    )
