"""Property tests: request models never fail except with a validation error, and
permuting a request's items permutes its results."""

from __future__ import annotations

import numpy as np
import pydantic
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from endorm_server.http.schemas import CompareRequest, ScoreRequest

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
FIELDS = [
    "items",
    "prompt",
    "messages",
    "prompt_ids",
    "response",
    "response_ids",
    "responses",
    "responses_ids",
    "system",
    "aggregation",
    "gamma",
    "beta",
    "terminal",
    "return_tokens",
    "truncate",
    "add_eos",
    "model",
]
bodies = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6) | json_values


@settings(max_examples=400, deadline=None)
@given(bodies)
def test_request_models_only_raise_validation_errors(body):
    for model in (ScoreRequest, CompareRequest):
        try:
            parsed = model.model_validate(body)
        except pydantic.ValidationError:
            continue
        if isinstance(parsed, ScoreRequest):
            for item in parsed.items:
                kwargs = item.encoder_kwargs()
                assert sum(k in kwargs for k in ("prompt", "messages", "prompt_ids")) == 1
                assert sum(k in kwargs for k in ("response", "response_ids")) == 1


items_strategy = st.lists(
    st.tuples(
        st.lists(st.integers(5, 500), min_size=1, max_size=12), st.lists(st.integers(5, 500), min_size=1, max_size=6)
    ),
    min_size=2,
    max_size=6,
)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(items_strategy, st.randoms(use_true_random=False))
def test_permuting_items_permutes_results(client, items, rnd):
    body = [{"prompt_ids": p, "response_ids": r} for p, r in items]
    order = list(range(len(body)))
    rnd.shuffle(order)
    a = client.post("/score", json={"items": body}).json()["results"]
    b = client.post("/score", json={"items": [body[i] for i in order]}).json()["results"]
    np.testing.assert_allclose([b[k]["score"] for k in range(len(order))], [a[i]["score"] for i in order], atol=1e-4)
