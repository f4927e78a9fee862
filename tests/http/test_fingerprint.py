"""system_fingerprint over HTTP: on /v1/models, every scoring route and endorm_model_info;
the value of (files, alpha, resolved dtype, engine), another one with another alpha or engine."""

from __future__ import annotations

import re

import httpx
import pytest

from endorm_server.models.fingerprint import model_fingerprint
from tests.conftest import COMMON, MODEL_CACHE, tiny_model
from tests.server import ServerProcess

Q = [{"role": "user", "content": "2+2?"}]


def _fingerprints(client: httpx.Client) -> dict[str, str]:
    got = {"models": client.get("/v1/models").json()["data"][0]["system_fingerprint"]}
    got["score"] = client.post("/score", json={"items": [{"messages": Q, "response": "4"}]}).json()[
        "system_fingerprint"
    ]
    got["compare"] = client.post("/compare", json={"messages": Q, "responses": ["4", "5"]}).json()["system_fingerprint"]
    got["get_reward"] = client.post("/get_reward", json={"query": ["2+2=4"], "prompts": ["2+2="]}).json()[
        "system_fingerprint"
    ]
    got["classify"] = client.post("/classify", json={"messages": [*Q, {"role": "assistant", "content": "4"}]}).json()[
        "system_fingerprint"
    ]
    metrics = client.get("/metrics").text
    labels = re.search(r"^endorm_model_info\{([^}]*)\} 1\.0$", metrics, re.M)
    assert labels, metrics
    got["metric"] = re.search(r'system_fingerprint="([^"]*)"', labels.group(1)).group(1)
    return got


def test_every_response_carries_the_fingerprint(client):
    got = _fingerprints(client)
    assert client.get("/v1/models").json()["data"][0]["dtype"] == "float32"
    expected = model_fingerprint(tiny_model("llama"), 1.0, dtype="float32")  # the shared server runs --dtype float32
    assert got == dict.fromkeys(got, expected)


@pytest.mark.parametrize("alpha", ["1.0", "0.5"])
def test_another_server_fingerprint_names_alpha_dtype_and_engine(server, tmp_path, alpha):
    """A second server on the same model with the transformers engine (float32, as the shared vLLM server):
    every route gives the value computed from (files, alpha, dtype, engine), which is not the vLLM server's
    (another engine computes other rewards at the float32 rounding level), and changes with alpha."""
    with httpx.Client(base_url=server.url, headers={"Authorization": "Bearer test-key-0123456789"}, timeout=60) as c:
        first = c.get("/v1/models").json()["data"][0]["system_fingerprint"]
    other = ServerProcess(
        [
            "--model",
            str(tiny_model("llama")),
            *COMMON,
            "--engine",
            "transformers",
            "--alpha",
            alpha,
            "--cache-dir",
            str(MODEL_CACHE),
        ],
        log_path=tmp_path / "server.log",
    ).start()
    try:
        with httpx.Client(base_url=other.url, timeout=60) as c:
            got = _fingerprints(c)
    finally:
        other.stop()
    expected = model_fingerprint(tiny_model("llama"), float(alpha), dtype="float32", engine="transformers")
    assert got == dict.fromkeys(got, expected)
    assert expected != first
    assert first == model_fingerprint(tiny_model("llama"), 1.0, dtype="float32", engine="vllm")
