"""The HTTP contract's error paths on every route, against a stub engine (tests/http/stub_engine.py).

The served app, pipeline and tokenizer are real; the engine is a stub a test holds on an event, fails
or kills, so each 429/503/504 is decided by state, not by speed, and the whole module runs in seconds.
What needs real (c, v) values stays in test_api.py against a real vLLM server.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from transformers import AutoTokenizer

from endorm_server.engine.base import EngineError
from endorm_server.errors import InternalError
from tests.conftest import tiny_model
from tests.http.conftest import assert_error
from tests.http.stub_engine import STUB_MODEL, StubEngine, asgi_client, service, stub_app, stub_scorer, stub_settings

KEY = "stub-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHAT = [{"role": "user", "content": "What is 2+3?"}]
ITEM = {"prompt_ids": [5, 6, 7], "response_ids": [8, 9]}


@pytest.fixture(scope="module")
def model_dir() -> str:
    return str(tiny_model("llama"))


@pytest.fixture(scope="module")
def tokenizer(model_dir) -> Any:
    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture()
def make(model_dir, tokenizer) -> Iterator:
    """make(**settings) -> (app, engine): a ready app over a fresh stub engine."""

    def build(**overrides: Any):
        engine = StubEngine()
        app = stub_app(stub_settings(model_dir, **overrides), stub_scorer(tokenizer, engine))
        return app, engine

    yield build


def _chat_text(tokenizer, answer: str) -> str:
    return tokenizer.apply_chat_template(CHAT + [{"role": "assistant", "content": answer}], tokenize=False)


# ----------------------------------------------------------------- the happy path, once per route


async def test_every_route_answers_on_the_stub(make, tokenizer):
    app, engine = make()
    async with asgi_client(app) as c:
        r = await c.post("/score", json={"items": [ITEM, {"messages": CHAT, "response": "5"}]})
        assert r.status_code == 200, r.text
        assert r.json()["model"] == STUB_MODEL and len(r.json()["results"]) == 2
        r = await c.post("/compare", json={"prompt_ids": [5, 6], "responses_ids": [[8], [9, 10]]})
        assert r.status_code == 200 and len(r.json()["scores"]) == 2, r.text
        r = await c.post("/get_reward", json={"query": [_chat_text(tokenizer, "5")]})
        assert r.status_code == 200 and len(r.json()["rewards"]) == 1, r.text
        r = await c.post("/classify", json={"messages": CHAT + [{"role": "assistant", "content": "5"}]})
        assert r.status_code == 200 and r.json()["data"][0]["num_classes"] == 1, r.text
        assert (await c.get("/v1/models")).json()["data"][0]["id"] == STUB_MODEL
    assert engine.calls == 6 and engine.unfinished == 0


# ----------------------------------------------------------------- 401


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong-key"}, {"Authorization": f"Basic {KEY}"}, {"Authorization": KEY}]
)
async def test_401_with_www_authenticate_on_every_keyed_route(make, headers):
    app, engine = make(api_keys=[KEY])
    async with asgi_client(app, headers=headers) as c:
        for method, path, body in [
            ("POST", "/score", {"items": [ITEM]}),
            ("POST", "/compare", {}),
            ("POST", "/get_reward", {"query": []}),
            ("POST", "/classify", {}),
            ("GET", "/v1/models", None),
        ]:
            r = await c.request(method, path, json=body)
            err = assert_error(r, 401)
            assert err["type"] == "unauthorized"
            assert r.headers["www-authenticate"].lower().startswith("bearer"), path
        assert (await c.get("/health")).status_code == 200 and (await c.get("/ready")).status_code == 200
    assert engine.calls == 0


async def test_the_right_key_passes(make):
    app, _ = make(api_keys=[KEY, "another-key-0123456789"])
    async with asgi_client(app, headers=AUTH) as c:
        assert (await c.post("/score", json={"items": [ITEM]})).status_code == 200


# ----------------------------------------------------------------- 404


async def test_404_for_another_model_on_every_route(make, tokenizer):
    app, engine = make()
    async with asgi_client(app) as c:
        for path, body in [
            ("/score", {"items": [ITEM], "model": "other"}),
            ("/compare", {"prompt_ids": [5], "responses_ids": [[8], [9]], "model": "other"}),
            ("/classify", {"input": _chat_text(tokenizer, "5"), "model": "other"}),
        ]:
            err = assert_error(await c.post(path, json=body), 404, "model")
            assert err["code"] == "model_not_found"
        assert_error(await c.get("/no-such-route"), 404)
        assert_error(await c.get("/score"), 405)
    assert engine.calls == 0


# ----------------------------------------------------------------- 413


async def test_413_body_items_and_sequence_length(make):
    app, engine = make()  # max_body_bytes 20000, max_items_per_request 8, max_model_len 64
    async with asgi_client(app) as c:
        assert_error(await c.post("/score", json={"items": [{"prompt": "x" * 30_000, "response": "y"}]}), 413)
        assert_error(await c.post("/score", json={"items": [ITEM] * 9}), 413, "items")
        assert_error(
            await c.post("/compare", json={"prompt_ids": [5], "responses_ids": [[8]] * 9}), 413, "responses_ids"
        )
        assert_error(await c.post("/get_reward", json={"query": ["x"] * 9}), 413, "query")
        too_long = {"prompt_ids": [5] * 60, "response_ids": [8] * 5}
        err = assert_error(await c.post("/score", json={"items": [ITEM, too_long]}), 413, "items.1")
        assert err["code"] == "sequence_too_long"
        r = await c.post("/score", json={"items": [too_long], "truncate": True})  # drops the prompt's start
        assert r.status_code == 200 and r.json()["results"][0]["truncated_tokens"] == 1, r.text
        assert_error(
            await c.post("/score", json={"items": [{"prompt_ids": [5], "response_ids": [8] * 70}], "truncate": True}),
            413,
        )  # never the response
    assert engine.calls == 1


async def test_413_for_a_streamed_body_without_content_length(make):
    app, _ = make()

    async def chunks():
        yield b'{"items": [{"prompt": "'
        for _ in range(30):
            yield b"x" * 1000
        yield b'", "response": "y"}]}'

    async with asgi_client(app) as c:
        assert_error(await c.post("/score", content=chunks(), headers={"content-type": "application/json"}), 413)


# ----------------------------------------------------------------- 422, with param

SCORE_422 = [
    ({}, "items"),
    ({"items": []}, "items"),
    ({"items": [ITEM], "extra": 1}, "extra"),
    ({"items": [{"response_ids": [8]}]}, "items.0"),  # no prompt
    ({"items": [{"prompt": "a", "prompt_ids": [5], "response": "b"}]}, "items.0"),  # two prompts
    ({"items": [{"prompt": "a"}]}, "items.0"),  # no response
    ({"items": [{"prompt": "a", "response": "b", "response_ids": [8]}]}, "items.0"),
    ({"items": [{"prompt_ids": [5], "response_ids": [-1]}]}, "items.0.response_ids.0"),
    ({"items": [{"prompt_ids": [5], "response_ids": [512]}]}, "items.0.response_ids"),  # past the vocabulary
    ({"items": [{"prompt_ids": [5], "response_ids": [1.5]}]}, "items.0.response_ids.0"),
    ({"items": [{"prompt_ids": [5], "response_ids": []}]}, "items.0.response_ids"),
    ({"items": [{"messages": [], "response": "b"}]}, "items.0.messages"),
    ({"items": [{"messages": [{"role": "robot", "content": "x"}], "response": "b"}]}, "items.0.messages.0.role"),
    ({"items": [{"prompt": 5, "response": "b"}]}, "items.0.prompt"),
    ({"items": [ITEM], "aggregation": "median"}, "aggregation"),
    ({"items": [ITEM], "gamma": 0}, "gamma"),
    ({"items": [ITEM], "gamma": 1.5}, "gamma"),
    ({"items": [ITEM], "beta": -1.0}, "beta"),
    ({"items": [ITEM], "terminal": "one"}, "terminal"),
    ({"items": [ITEM], "return_tokens": "yes"}, "return_tokens"),
    ({"items": [ITEM], "truncate": 1}, "truncate"),
    ({"items": [{"prompt": "a", "steps": []}]}, "items.0.steps"),
    ({"items": [{"prompt": "a", "steps": [""]}]}, "items.0.steps.0"),
    ({"items": [ITEM], "aggregation": "step_min"}, "items.0.steps"),  # steps needed: that item's
]

COMPARE_422 = [
    ({"prompt": "a", "responses": ["x"]}, "responses"),
    ({"prompt": "a"}, None),
    ({"prompt": "a", "responses": ["x", "y"], "responses_ids": [[8], [9]]}, None),
    ({"responses": ["x", "y"]}, None),
    ({"prompt_ids": [5], "responses_ids": [[8], []]}, "responses_ids.1"),
    ({"prompt_ids": [5], "responses_ids": [[8], [9]], "responses_step_ends": [[1]] * 3}, "responses_step_ends"),
    ({"prompt": "a", "responses": ["x", "y"], "aggregation": "max"}, "aggregation"),
]


@pytest.mark.parametrize("body,param", SCORE_422, ids=[p or "none" for _, p in SCORE_422])
async def test_score_422_names_the_field(make, body, param):
    app, engine = make()
    async with asgi_client(app) as c:
        err = assert_error(await c.post("/score", json=body), 422, param)
    assert err["type"] in ("invalid_request", "invalid_input") or err["type"], err
    assert engine.calls == 0


@pytest.mark.parametrize("body,param", COMPARE_422, ids=[str(p) for _, p in COMPARE_422])
async def test_compare_422_names_the_field(make, body, param):
    app, engine = make()
    async with asgi_client(app) as c:
        assert_error(await c.post("/compare", json=body), 422, param)
    assert engine.calls == 0


GET_REWARD_QUERY_422 = [
    ("aggregation=median", "aggregation"),
    ("gamma=inf", "gamma"),
    ("gamma=1_0", "gamma"),
    ("gamma=0", "gamma"),
    ("beta=-1", "beta"),
    ("truncate=yes", "truncate"),
    ("add_eos=1", "add_eos"),
    ("terminal=one", "terminal"),
    ("aggregation=sum&aggregation=mean", "aggregation"),
    ("unknown=1", "unknown"),
]


@pytest.mark.parametrize("query,param", GET_REWARD_QUERY_422, ids=[q for q, _ in GET_REWARD_QUERY_422])
async def test_get_reward_query_string_422(make, tokenizer, query, param):
    app, engine = make()
    async with asgi_client(app) as c:
        assert_error(await c.post(f"/get_reward?{query}", json={"query": [_chat_text(tokenizer, "5")]}), 422, param)
    assert engine.calls == 0


async def test_get_reward_body_422(make, tokenizer):
    app, engine = make()
    text = _chat_text(tokenizer, "5")
    async with asgi_client(app) as c:
        assert_error(await c.post("/get_reward", json={}), 422, "query")
        assert_error(await c.post("/get_reward", json={"query": [5]}), 422, "query.0")
        assert_error(await c.post("/get_reward", json={"query": [text], "prompts": []}), 422, "prompts")
        assert_error(await c.post("/get_reward", json={"query": [text], "prompts": ["nope"]}), 422, "query.0")
        assert_error(await c.post("/get_reward", json={"query": ["no chat turn here"]}), 422, "query.0")
        r = await c.post("/get_reward", json={"query": []})  # an empty slice of a batch: fine, no engine call
        assert r.status_code == 200 and r.json()["rewards"] == []
    assert engine.calls == 0


async def test_classify_422(make, tokenizer):
    app, engine = make()
    text = _chat_text(tokenizer, "5")
    async with asgi_client(app) as c:
        for body, param in [
            ({}, "input"),
            ({"input": text, "messages": CHAT}, "input"),
            ({"input": []}, "input"),
            ({"messages": CHAT}, "messages"),  # does not end with the assistant
            ({"input": "no chat turn"}, "input"),
            ({"input": [text, "no chat turn"]}, "input.1"),
            ({"input": text, "activation": "false"}, "activation"),
            ({"input": text, "gamma": "0.5"}, "gamma"),
            ({"input": text, "aggregation": "median"}, "aggregation"),
        ]:
            assert_error(await c.post("/classify", json=body), 422, param)
    assert engine.calls == 0


@pytest.mark.parametrize("path", ["/score", "/compare", "/get_reward", "/classify"])
async def test_bytes_that_are_not_json_are_422(make, path):
    app, _ = make()
    async with asgi_client(app) as c:
        for raw in (b"{", b"\xff\xfe", b"null", b'"items"', b""):
            assert_error(await c.post(path, content=raw, headers={"content-type": "application/json"}), 422)


@pytest.mark.parametrize("path", ["/score", "/compare", "/get_reward", "/classify"])
async def test_a_body_that_is_not_json_by_its_content_type_is_415(make, path):
    """One status for a body FastAPI does not parse as JSON (another content type, or none: FastAPI's strict
    content type): 415, not a 422 that blames the JSON for not being an object."""
    app, _ = make()
    async with asgi_client(app) as c:
        for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
            headers = {"content-type": ctype} if ctype else {}
            err = assert_error(await c.post(path, content=b'{"items": []}', headers=headers), 415)
            assert err["code"] == "unsupported_media_type"
        for ctype in ("application/json; charset=utf-8", "application/vnd.api+json"):
            assert_error(
                await c.post("/score", content=b'{"items": []}', headers={"content-type": ctype}), 422, "items"
            )


# ----------------------------------------------------------------- 429


async def test_429_with_retry_after_while_the_budget_is_held(make):
    """The first request holds 50 of the 60-token budget inside a held engine; the second cannot fit and
    has no wait (queue_timeout_s 0): 429 at once, decided by the budget, not by timing."""
    app, engine = make(max_inflight_tokens=60)
    engine.hold()
    big = {"items": [{"prompt_ids": [5] * 45, "response_ids": [8] * 5}]}
    async with asgi_client(app) as c:
        first = asyncio.create_task(c.post("/score", json=big))
        await engine.wait_entered(1)
        assert service(app).admission.tokens == 50
        r = await c.post("/score", json={"items": [{"prompt_ids": [5] * 8, "response_ids": [8] * 3}]})
        err = assert_error(r, 429)
        assert err["type"] == "overloaded" and r.headers["retry-after"] == "7"
        engine.release()
        assert (await first).status_code == 200
        r = await c.post("/score", json={"items": [{"prompt_ids": [5] * 8, "response_ids": [8] * 3}]})
        assert r.status_code == 200  # the budget came back
    assert service(app).admission.tokens == 0 and engine.calls == 2


# ----------------------------------------------------------------- 503 and /ready


async def _all_routes_503(c: httpx.AsyncClient, tokenizer, type_: str) -> None:
    text = _chat_text(tokenizer, "5")
    for path, body in [
        ("/score", {"items": [ITEM]}),
        ("/compare", {"prompt_ids": [5], "responses_ids": [[8], [9]]}),
        ("/get_reward", {"query": [text]}),
        ("/classify", {"input": text}),
    ]:
        r = await c.post(path, json=body)
        err = assert_error(r, 503)
        assert err["code"] == type_, (path, err)
        assert r.headers["retry-after"] == "7", path


async def test_loading_503_and_ready(model_dir, tokenizer):
    app = stub_app(stub_settings(model_dir), None)
    async with asgi_client(app) as c:
        r = await c.get("/ready")
        assert r.status_code == 503 and r.json() == {"status": "loading"} and r.headers["retry-after"] == "7"
        await _all_routes_503(c, tokenizer, "not_ready")
        assert_error(await c.get("/v1/models"), 503)
        service(app).startup_error = RuntimeError("no weights")
        assert (await c.get("/ready")).json() == {"status": "failed"}
        assert (await c.get("/health")).status_code == 200


async def test_ready_then_engine_dead_503(make, tokenizer):
    app, engine = make()
    async with asgi_client(app) as c:
        r = await c.get("/ready")
        assert r.status_code == 200 and r.json() == {"status": "ready"}
        engine.die()
        r = await c.get("/ready")
        assert r.status_code == 503 and r.json() == {"status": "engine_dead"}
        await _all_routes_503(c, tokenizer, "not_ready")
    assert engine.calls == 0


async def test_engine_dying_under_a_request_is_503_not_500(make):
    app, engine = make()
    engine.hold()
    async with asgi_client(app) as c:
        pending = asyncio.create_task(c.post("/score", json={"items": [ITEM]}))
        await engine.wait_entered(1)
        engine.die()
        r = await pending
        assert assert_error(r, 503)["code"] == "engine_unavailable"
        assert r.headers["retry-after"] == "7"
    assert service(app).admission.tokens == 0


async def test_engine_errors_map_to_one_shape(make):
    app, engine = make()
    async with asgi_client(app, raise_app_exceptions=False) as c:
        engine.fail_with = EngineError("shutting down")
        assert assert_error(await c.post("/score", json={"items": [ITEM]}), 503)["code"] == "engine_unavailable"
        engine.fail_with = RuntimeError("a bug")
        err = assert_error(await c.post("/score", json={"items": [ITEM]}), 500)
        assert err["type"] == "internal_error" and "a bug" not in err["message"]  # no internals leak
        engine.fail_with = None
        assert (await c.post("/score", json={"items": [ITEM]})).status_code == 200
    assert service(app).admission.tokens == 0


async def test_a_failing_sequence_cancels_its_siblings_and_frees_the_budget(make):
    """Three sequences held in the engine; one fails at once (an invariant of ours: 500). Its siblings
    are cancelled with it (TaskGroup), not left running for a request that has already been answered."""
    app, engine = make()
    engine.hold()
    engine.fail_now = lambda ids: InternalError("malformed engine output") if ids[0] == 11 else None
    items = [ITEM, {**ITEM, "response_ids": [9, 9]}, {"prompt_ids": [11, 6], "response_ids": [8]}]
    async with asgi_client(app, raise_app_exceptions=False) as c:
        err = assert_error(await c.post("/score", json={"items": items}), 500)
        assert err["code"] == "internal_error"
    assert engine.calls == 3 and engine.unfinished == 0
    assert service(app).admission.tokens == 0 and service(app).admission.requests == 0


async def test_draining_503_for_new_requests_while_earlier_ones_finish(make, tokenizer):
    app, engine = make()
    state = service(app)
    engine.hold()
    async with asgi_client(app) as c:
        earlier = asyncio.create_task(c.post("/score", json={"items": [ITEM]}))
        await engine.wait_entered(1)
        state.draining, state.drain_started_at = True, time.monotonic()  # what DrainingServer.drain does
        await state.admission.start_draining()
        r = await c.get("/ready")
        assert r.status_code == 503 and r.json() == {"status": "draining"}
        await _all_routes_503(c, tokenizer, "draining")
        engine.release()
        assert (await earlier).status_code == 200  # arrived before the signal: it finishes
    assert engine.calls == 1


# ----------------------------------------------------------------- 504 and disconnects


async def test_504_at_the_deadline_and_the_engine_work_is_cancelled(make):
    """The engine never answers (held), so the only way out is the request deadline: 504, and the
    cancelled engine call leaves nothing unfinished and no budget held."""
    app, engine = make(request_timeout_s=0.05)
    engine.hold()
    async with asgi_client(app) as c:
        other = {**ITEM, "response_ids": [9]}
        err = assert_error(await c.post("/score", json={"items": [ITEM, other]}), 504)
        assert err["type"] == "timeout" and err["code"] == "deadline_exceeded"
        metrics = (await c.get("/metrics")).text
    assert engine.calls == 2 and engine.unfinished == 0
    assert service(app).admission.tokens == 0 and service(app).admission.requests == 0
    assert 'endorm_request_errors_total{code="deadline_exceeded"} 1.0' in metrics


def _score_scope(content_length: int) -> dict:
    """The ASGI scope of a POST /score with a JSON body of ``content_length`` bytes."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/score",
        "raw_path": b"/score",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(content_length).encode())],
        "client": ("127.0.0.1", 5000),
        "server": ("stub", 80),
    }


async def test_a_body_that_stops_half_way_gets_408_and_reaches_nothing(make):
    """Slowloris: half a body, then nothing (the client keeps the connection open). Past the body
    deadline the server answers 408 in the error shape and lets go; nothing was admitted or scored."""
    app, engine = make(body_timeout_s=0.1)
    body = b'{"items": [{"prompt_ids": [5, 6], "response_ids": [8]}]}'
    first_half = [{"type": "http.request", "body": body[:10], "more_body": True}]
    never = asyncio.Event()
    sent: list[dict] = []

    async def receive() -> dict:
        if first_half:
            return first_half.pop()
        await never.wait()  # the client neither sends the rest nor hangs up
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    await asyncio.wait_for(app(_score_scope(len(body)), receive, send), 60)  # a guard: without the deadline, a hang
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 408
    assert (b"connection", b"close") in sent[0]["headers"]
    error = json.loads(b"".join(m.get("body", b"") for m in sent[1:]))["error"]
    assert error["code"] == "body_timeout" and "body" in error["message"]
    assert engine.calls == 0 and service(app).admission.requests == 0


async def test_the_body_deadline_does_not_bound_the_scoring(make):
    """The deadline covers the body's arrival only: a request whose body came whole and whose engine
    work outlasts the deadline still gets its 200."""
    app, engine = make(body_timeout_s=0.1)
    engine.hold()
    async with asgi_client(app) as c:
        call = asyncio.create_task(c.post("/score", json={"items": [ITEM]}))
        await engine.wait_entered(1)
        await asyncio.sleep(0.3)  # past the body deadline while the engine holds the request
        engine.release()
        r = await asyncio.wait_for(call, 60)
    assert r.status_code == 200, r.text


async def test_a_client_disconnect_cancels_the_engine_work(make):
    """An ASGI http.disconnect while the engine holds the request: the work is cancelled (no engine call
    left unfinished, budget back) and counted, whatever the machine's speed."""
    app, engine = make()
    engine.hold()
    hung_up = asyncio.Event()
    body = b'{"items": [{"prompt_ids": [5, 6], "response_ids": [8]}]}'
    sent: list[dict] = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict:
        if messages:
            return messages.pop()
        await hung_up.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    call = asyncio.create_task(app(_score_scope(len(body)), receive, send))
    await engine.wait_entered(1)
    assert service(app).admission.requests == 1
    hung_up.set()
    await asyncio.wait_for(call, 60)  # a guard against a hang
    assert engine.unfinished == 0 and service(app).admission.tokens == 0
    assert service(app).metrics.errors.labels("client_disconnected")._value.get() == 1
    assert sent[0]["status"] == 499
