"""system_fingerprint over HTTP: on /v1/models, every scoring route and endorm_model_info;
the value of (files, alpha, resolved dtype, engine, versions, device, ...), shown as fingerprint_inputs
on /v1/models; another one with another alpha or engine; a hub id served from its local snapshot."""

from __future__ import annotations

import hashlib
import json
import re

import httpx
import pytest

from endorm_server.models.fingerprint import fingerprint_inputs, model_fingerprint
from tests.conftest import API_KEY, COMMON, MODEL_CACHE, tiny_model
from tests.models.hub_cache import add_snapshot, commit_of
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


def _served(model, *, inputs: bool = False):
    """What a vLLM server of the tiny llama with --dtype float32 and the other settings at their defaults
    (batch-invariant auto among them) reports, computed without a server (core/scorer.py)."""
    from endorm_server.config import Settings
    from endorm_server.core.scorer import system_fingerprint, system_fingerprint_inputs

    settings = Settings(model=str(model), dtype="float32")
    return (system_fingerprint_inputs if inputs else system_fingerprint)(settings, str(model))


def test_every_response_carries_the_fingerprint(client):
    got = _fingerprints(client)
    assert client.get("/v1/models").json()["data"][0]["dtype"] == "float32"
    expected = _served(tiny_model("llama"))  # the shared server runs --dtype float32
    assert got == dict.fromkeys(got, expected)


def test_models_shows_what_the_fingerprint_hashes(client):
    """fingerprint_inputs on /v1/models: the served files with their SHA-256, the versions, parallelism,
    device, dtypes and engine; hashing it as documented (less the revision) gives system_fingerprint."""
    card = client.get("/v1/models").json()["data"][0]
    inputs = card["fingerprint_inputs"]
    payload = json.dumps({k: v for k, v in inputs.items() if k != "revision"}, sort_keys=True)
    assert card["system_fingerprint"] == "fp_" + hashlib.sha256(payload.encode()).hexdigest()[:16]
    model = tiny_model("llama")
    assert inputs["files"] and all(
        digest == hashlib.sha256((model / name).read_bytes()).hexdigest() for name, digest in inputs["files"].items()
    )
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(inputs["files"])
    assert inputs == _served(model, inputs=True)  # what this machine computes without a server
    assert inputs["revision"] is None  # a plain directory, not a hub snapshot
    assert set(inputs["versions"]) == {"vllm", "torch"} and all(inputs["versions"].values())
    assert (inputs["tensor_parallel_size"], inputs["device"], inputs["cpu_gemm"]) == (1, "cpu", "torch")
    assert (inputs["dtype"], inputs["head_dtype"], inputs["engine"]) == (card["dtype"], "float32", card["engine"])
    assert (inputs["alpha"], inputs["batch_invariant"]) == (card["alpha"], card["batch_invariant"])


@pytest.mark.parametrize("alpha, source", [("1.0", "directory"), ("0.5", "hub id")])
def test_another_server_fingerprint_names_alpha_dtype_and_engine(server, tmp_path, alpha, source):
    """A second server on the same model with the transformers engine (float32, as the shared vLLM server):
    every route gives the value computed from (files, alpha, dtype, engine, ...), which is not the vLLM
    server's (another engine computes other rewards at the float32 rounding level), and changes with alpha.
    The 0.5 one serves the model as a pinned hub id from an offline HF cache holding the same files: the
    same value as from the directory, with the snapshot's revision shown."""
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as c:
        first = c.get("/v1/models").json()["data"][0]["system_fingerprint"]
    model, env, revision = str(tiny_model("llama")), {}, None
    if source == "hub id":
        revision = commit_of("served")
        add_snapshot(tmp_path / "hub", "endorm-test/tiny-llama", tiny_model("llama"), revision)
        model, env = (
            f"endorm-test/tiny-llama@{revision}",
            {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"},
        )
    other = ServerProcess(
        ["--model", model, *COMMON, "--engine", "transformers", "--alpha", alpha, "--cache-dir", str(MODEL_CACHE)],
        log_path=tmp_path / "server.log",
        env=env,
    ).start()
    try:
        with httpx.Client(base_url=other.url, timeout=60) as c:
            got = _fingerprints(c)
            inputs = c.get("/v1/models").json()["data"][0]["fingerprint_inputs"]
    finally:
        other.stop()
    expected = model_fingerprint(tiny_model("llama"), float(alpha), dtype="float32", engine="transformers")
    assert got == dict.fromkeys(got, expected)
    assert inputs["revision"] == revision and inputs["engine"] == "transformers"
    assert inputs["files"] == fingerprint_inputs(tiny_model("llama"), 1.0)["files"]
    assert expected != first
    assert first == _served(tiny_model("llama"))
