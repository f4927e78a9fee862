"""/get_reward and /classify validate their options as strictly as /score: no bool or number coercion
(issue 19: "1", "yes" and "0.5" passed as a boolean or a float on those routes, and a 422 on /score)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from endorm_server.http.routes.classify import ClassifyRequest
from endorm_server.http.routes.openrlhf import GetRewardOptions
from endorm_server.http.schemas import ScoreRequest
from endorm_server.scoring.aggregations import AGGREGATIONS, Aggregation

ITEM = {"prompt": "2+3=", "response": "5"}


@pytest.mark.parametrize(
    "field, value",
    [
        ("truncate", 1),
        ("truncate", "true"),
        ("gamma", "0.5"),
        ("beta", "0"),
        ("add_eos", 0),
        ("return_tokens", "yes"),
    ],
)
def test_score_body_rejects_coercion(field, value):
    with pytest.raises(ValidationError):
        ScoreRequest.model_validate({"items": [ITEM], field: value})


@pytest.mark.parametrize(
    "field, value",
    [
        ("truncate", 1),
        ("truncate", "true"),
        ("gamma", "0.5"),
        ("beta", "0"),
        ("activation", 0),
        ("use_activation", "false"),
    ],
)
def test_classify_body_rejects_coercion_like_score(field, value):
    with pytest.raises(ValidationError):
        ClassifyRequest.model_validate({"input": "x", field: value})


def test_classify_body_takes_json_numbers_and_booleans():
    body = ClassifyRequest.model_validate(
        {"input": "x", "gamma": 1, "beta": 0.5, "truncate": True, "activation": False}
    )
    assert (body.gamma, body.beta, body.truncate, body.activation) == (1.0, 0.5, True, False)


@pytest.mark.parametrize(
    "query",
    [
        {"truncate": "1"},
        {"truncate": "yes"},
        {"truncate": "True"},
        {"add_eos": "on"},
        {"gamma": "inf"},
        {"gamma": "nan"},
        {"gamma": " 0.5"},
        {"gamma": "1_0"},
        {"beta": "0x1"},
        {"gamma": "2"},
        {"aggregation": "max"},
    ],
)
def test_get_reward_query_string_is_as_strict_as_json(query):
    with pytest.raises(ValidationError):
        GetRewardOptions.model_validate(query)


def test_get_reward_query_string_reads_json_spellings():
    opts = GetRewardOptions.model_validate(
        {
            "gamma": "0.9",
            "beta": "1e-2",
            "truncate": "true",
            "add_eos": "false",
            "aggregation": "step_min",
            "terminal": "bootstrap",
        }
    )
    assert (opts.gamma, opts.beta, opts.truncate, opts.add_eos) == (0.9, 0.01, True, False)
    assert GetRewardOptions.model_validate({"gamma": ".5"}).gamma == 0.5


def test_every_route_takes_the_same_aggregation_names():
    from typing import get_args

    names = set(AGGREGATIONS)
    assert set(get_args(Aggregation)) == names  # nested Literals flatten
    for model in (ScoreRequest, ClassifyRequest, GetRewardOptions):
        schema = model.model_json_schema()
        agg = schema["properties"]["aggregation"]
        assert set(agg.get("enum") or [x["const"] for x in agg.get("anyOf", [])]) == names, model


def test_sdk_aggregations_mirror_the_server():
    from typing import get_args

    from endorm_client.types import Aggregation as ClientAggregation

    assert set(get_args(ClientAggregation)) == set(AGGREGATIONS)
