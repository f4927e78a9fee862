"""The SDK's request and response types agree with the server's schemas field by field: names,
whether a field is required, its default, and its type (None allowed or not, lists, literals, nested
models by name). Constraints (min_length, ge, strictness) are the server's to enforce and are not
compared. Fields only a client has (``request_id``, set from the X-Request-ID header) are listed."""

from __future__ import annotations

import inspect
import types
import typing
from typing import Any

import pytest
from pydantic import BaseModel

import endorm_client.types as sdk
from endorm_client import AsyncRewardClient, RewardClient
from endorm_server.http import schemas as server

PAIRS = [
    (sdk.Message, server.Message),
    (sdk.ScoreItem, server.ScoreItem),
    (sdk.TokenReward, server.TokenReward),
    (sdk.StepResult, server.StepResult),
    (sdk.Terms, server.Terms),
    (sdk.ErrorBody, server.ErrorBody),
    (sdk.ItemError, server.ItemError),
    (sdk.ScoreResult, server.ScoreResult),
    (sdk.Usage, server.Usage),
    (sdk.ScoreResponse, server.ScoreResponse),
    (sdk.CompareResponse, server.CompareResponse),
    (sdk.ModelCard, server.ModelCard),
]
CLIENT_ONLY = {"ScoreResponse": {"request_id"}, "CompareResponse": {"request_id"}}
# the client leaves a request option out (None) to take the server's default
SCORE_KWARGS_NOT_OPTIONS = {"items", "request_id", "idempotency_key"}


def shape(t: Any) -> Any:
    """A comparable form of a type annotation: constraints and strictness dropped."""
    origin = typing.get_origin(t)
    if origin is typing.Annotated:
        return shape(typing.get_args(t)[0])
    if origin is typing.Literal:
        return ("literal", frozenset(typing.get_args(t)))
    if origin in (typing.Union, types.UnionType):
        return ("union", frozenset(shape(a) for a in typing.get_args(t)))
    if origin in (list, tuple, dict):
        return (origin.__name__, tuple(shape(a) for a in typing.get_args(t)))
    if t is type(None) or t is None:
        return "None"
    if isinstance(t, type) and issubclass(t, BaseModel):
        return ("model", t.__name__)
    if isinstance(t, type):
        for base in (bool, int, float, str):  # StrictInt etc. are Annotated; plain subclasses too
            if issubclass(t, base):
                return base.__name__
    return repr(t)


def describe(model: type[BaseModel]) -> dict[str, tuple]:
    out = {}
    for name, f in model.model_fields.items():
        default = None if f.is_required() else f.get_default(call_default_factory=True)
        out[name] = (f.is_required(), default, shape(f.annotation))
    return out


@pytest.mark.parametrize("ours,theirs", PAIRS, ids=[p[0].__name__ for p in PAIRS])
def test_fields_agree(ours: type[BaseModel], theirs: type[BaseModel]):
    mine, truth = describe(ours), describe(theirs)
    extra = set(mine) - set(truth) - CLIENT_ONLY.get(ours.__name__, set())
    missing = set(truth) - set(mine)
    assert not missing and not extra, f"{ours.__name__}: missing {sorted(missing)}, not on the server {sorted(extra)}"
    for name in truth:
        assert mine[name] == truth[name], f"{ours.__name__}.{name}: SDK {mine[name]} != server {truth[name]}"


def test_literals_agree():
    from endorm_server.core.job import ItemErrors
    from endorm_server.scoring.aggregations import Aggregation, Terminal

    assert shape(sdk.Aggregation) == shape(Aggregation)
    assert shape(sdk.Terminal) == shape(Terminal)
    assert shape(sdk.ItemErrors) == shape(ItemErrors)


@pytest.mark.parametrize("cls", [RewardClient, AsyncRewardClient])
@pytest.mark.parametrize("method,request_model", [("score", server.ScoreRequest), ("compare", server.CompareRequest)])
def test_every_request_field_is_a_keyword(cls, method, request_model):
    """Each field of the request body can be given; each keyword that is not a body field is listed."""
    params = inspect.signature(getattr(cls, method)).parameters
    kwargs = {n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    body = set(request_model.model_fields)
    if method == "score":
        kwargs |= {"items"}  # positional
    assert body - kwargs == set(), f"{cls.__name__}.{method} cannot send {sorted(body - kwargs)}"
    assert kwargs - body <= SCORE_KWARGS_NOT_OPTIONS, sorted(kwargs - body)
    for name in body & kwargs - {"items"}:  # None: the server's default
        assert params[name].default is None, (name, params[name].default)


@pytest.mark.parametrize("cls", [RewardClient, AsyncRewardClient])
def test_score_batch_reports_item_errors(cls):
    params = inspect.signature(cls.score_batch).parameters
    assert params["item_errors"].default == "report"
    assert set(server.ScoreRequest.model_fields) - {"items"} <= set(params)
