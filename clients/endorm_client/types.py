"""Typed requests and results (mirrors of the server's ``service/endorm_server/http/schemas.py``).

Results ignore unknown fields, so a newer server does not break an older client.
"""

from __future__ import annotations

from typing import Any, Literal, Mapping, Union

from pydantic import BaseModel, ConfigDict, Field

Aggregation = Literal["sum", "mean", "discounted", "loglik_sum", "loglik_mean", "step_min", "step_last"]
Terminal = Literal["zero", "bootstrap"]
ItemErrors = Literal["reject", "report"]

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
    terminal: Terminal | None = None  # this item's V(s_H) (default: the request's); bootstrap: cut off by length
    add_eos: bool | None = None  # this item's add_eos (default: the request's); false: cut off by length

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


class Terms(BaseModel):
    """``return_terms``: the ``sum`` score = ``loglik + v_start - v_end`` (docs/rl.md)."""

    model_config = _RESULT
    loglik: float = Field(description="alpha x the response's summed log-probability")
    v_start: float = Field(description="V(s_0): the prompt's value, a per-prompt offset")
    v_end: float = Field(description="V(s_H) used: 0 (terminal zero) or v_{N-1} (bootstrap)")


class ErrorBody(BaseModel):
    """Why an item (or a request) failed: ``code`` is the stable reason."""

    model_config = _RESULT
    type: str
    code: str = Field(description="Why, stably: sequence_too_long, token_out_of_vocabulary, overloaded, ...")
    message: str
    param: str | None = None


class ItemError(BaseModel):
    """An item the server could not score (``item_errors="report"``), in its place: ``score`` is None."""

    model_config = _RESULT
    index: int
    score: None = None
    error: ErrorBody

    @property
    def failed(self) -> bool:
        return True


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
    terms: Terms | None = Field(None, description="return_terms: the score's telescoping terms")

    @property
    def failed(self) -> bool:
        return False


Outcome = Union[ScoreResult, ItemError]  # one item's answer: scored, or its error (item_errors="report")


class ItemsFailed(Exception):
    """Raised by ``raise_for_failures()``: some items of a call could not be scored."""

    def __init__(self, failures: list[ItemError]) -> None:
        first = failures[0]
        super().__init__(
            f"{len(failures)} item(s) failed; first: item {first.index}: {first.error.code}: {first.error.message}"
        )
        self.failures = failures


class Usage(BaseModel):
    model_config = _RESULT
    prompt_tokens: int
    total_tokens: int


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
    results: list[Outcome]
    usage: Usage
    request_id: str | None = Field(None, description="X-Request-ID of the call (set by the client)")

    @property
    def scores(self) -> list[float | None]:
        """One score per item, None where the item failed (``item_errors="report"``)."""
        return [r.score for r in self.results]

    @property
    def failures(self) -> list[ItemError]:
        """The items that could not be scored, each with its index and error."""
        return [r for r in self.results if isinstance(r, ItemError)]

    def raise_for_failures(self) -> ScoreResponse:
        """Raise :class:`ItemsFailed` if any item failed; else return self."""
        if self.failures:
            raise ItemsFailed(self.failures)
        return self


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
    scores: list[float | None] = Field(description="None: the response could not be scored (item_errors: report)")
    ranking: list[int] = Field(description="Indices of the responses that scored, best first")
    best: int | None = Field(description="The best response; None when none scored")
    failed: list[int] = Field(default_factory=list, description="Indices of the responses that could not be scored")
    probabilities: list[list[float | None]]
    results: list[Outcome]
    usage: Usage
    request_id: str | None = Field(None, description="X-Request-ID of the call (set by the client)")

    @property
    def failures(self) -> list[ItemError]:
        return [r for r in self.results if isinstance(r, ItemError)]


class ModelCard(BaseModel):
    model_config = _RESULT
    id: str
    object: Literal["model"] = "model"
    max_model_len: int
    alpha: float
    engine: str
    vocab_size: int
    dtype: str | None = Field(None, description="The dtype the engine computes in")
    system_fingerprint: str | None = Field(
        None,
        description="The served model's weights, alpha, compute dtype and engine: "
        "equal fingerprints give equal rewards",
    )
    batch_invariant: bool = Field(False, description="Every reward is bit-identical whatever it was batched with")
    determinism: dict[str, str | bool] | None = Field(None, description="What the rewards' bits rest on")
    fingerprint_inputs: dict[str, Any] | None = Field(
        None, description="What system_fingerprint hashes: files and their SHA-256, revision, versions, device, ..."
    )
