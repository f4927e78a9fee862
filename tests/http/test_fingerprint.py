"""system_fingerprint over HTTP: on /v1/models, every scoring route and endorm_model_info;
the same after a restart with the same settings, another one with another alpha."""

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
    got["score"] = client.post("/score", json={"items": [{"messages": Q, "response": "4"}]}).json()["system_fingerprint"]
    got["compare"] = client.post("/compare", json={"messages": Q, "responses": ["4", "5"]}).json()["system_fingerprint"]
    got["get_reward"] = client.post("/get_reward", json={"query": ["2+2=4"], "prompts": ["2+2="]}).json()[
        "system_fingerprint"]
    got["classify"] = client.post("/classify", json={"messages": [*Q, {"role": "assistant", "content": "4"}]}).json()[
        "system_fingerprint"]
    metrics = client.get("/metrics").text
    labels = re.search(r'^endorm_model_info\{([^}]*)\} 1\.0$', metrics, re.M)
    assert labels, metrics
    got["metric"] = re.search(r'system_fingerprint="([^"]*)"', labels.group(1)).group(1)
    return got


def test_every_response_carries_the_fingerprint(client):
    got = _fingerprints(client)
    expected = model_fingerprint(tiny_model("llama"), 1.0, dtype="float32")  # the shared server runs --dtype float32
    assert got == dict.fromkeys(got, expected)


@pytest.mark.parametrize("alpha, same", [("1.0", True), ("0.5", False)])
def test_restart_same_settings_same_fingerprint(server, tmp_path, alpha, same):
    """A second server on the same model (transformers engine: the fingerprint names the reward,
    not the engine) has the shared server's value with the same alpha, another with alpha 0.5."""
    with httpx.Client(base_url=server.url, headers={"Authorization": "Bearer test-key-0123456789"}, timeout=60) as c:
        first = c.get("/v1/models").json()["data"][0]["system_fingerprint"]
    other = ServerProcess(["--model", str(tiny_model("llama")), *COMMON, "--engine", "transformers", "--alpha", alpha,
                           "--cache-dir", str(MODEL_CACHE)], log_path=tmp_path / "server.log").start()
    try:
        with httpx.Client(base_url=other.url, timeout=60) as c:
            got = _fingerprints(c)
    finally:
        other.stop()
    assert len(set(got.values())) == 1
    assert (got["models"] == first) is same
