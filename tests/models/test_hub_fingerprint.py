"""A hub id is its local snapshot's files: resolved offline from an HF cache (pinned revision or the
cache's main), hashed like a directory, refused at start when the snapshot is not there whole; and
the fingerprint covers the software and hardware that compute the reward."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys

import pytest

from endorm_server.models.fingerprint import fingerprint_inputs, fingerprint_of, model_fingerprint
from endorm_server.models.sources import ModelSourceError, resolve_model_path
from tests.conftest import MODEL_CACHE, tiny_model
from tests.models.hub_cache import add_snapshot, commit_of

REPO = "endorm-test/tiny-llama"
V1, V2 = commit_of("v1"), commit_of("v2")


@pytest.fixture()
def hub(tmp_path):
    """An HF cache holding two revisions of the tiny llama: V1 (its files; main points here) and V2 (one
    config value changed)."""
    cache = tmp_path / "hub"
    add_snapshot(cache, REPO, tiny_model("llama"), V1)
    edited = tmp_path / "v2"
    shutil.copytree(tiny_model("llama"), edited)
    config = json.loads((edited / "config.json").read_text())
    config["rms_norm_eps"] = config.get("rms_norm_eps", 1e-6) * 10
    (edited / "config.json").write_text(json.dumps(config))
    add_snapshot(cache, REPO, edited, V2, ref="v2-branch")
    return cache


def test_a_hub_id_is_hashed_like_its_directory(hub, tmp_path):
    path = resolve_model_path(REPO, tmp_path, hub_cache=hub)
    assert path == str(hub / f"models--{REPO.replace('/', '--')}" / "snapshots" / V1)  # main -> V1
    assert resolve_model_path(f"{REPO}@{V1}", tmp_path, hub_cache=hub) == path
    from_hub = fingerprint_inputs(path, 1.0)
    from_dir = fingerprint_inputs(tiny_model("llama"), 1.0)
    assert from_hub["files"] == from_dir["files"]  # the blobs' bytes, through the snapshot's links
    assert set(from_hub["files"]) >= {"config.json", "model.safetensors", "tokenizer.json"}
    for name, digest in from_hub["files"].items():
        assert digest == hashlib.sha256((tiny_model("llama") / name).read_bytes()).hexdigest()
    assert from_hub["revision"] == V1 and from_dir["revision"] is None
    # the same bytes are the same reward: the revision is shown, not hashed
    assert model_fingerprint(path, 1.0) == model_fingerprint(tiny_model("llama"), 1.0)


def test_two_revisions_two_fingerprints(hub, tmp_path):
    v1 = resolve_model_path(f"{REPO}@{V1}", tmp_path, hub_cache=hub)
    v2 = resolve_model_path(f"{REPO}@{V2}", tmp_path, hub_cache=hub)
    assert v1.endswith(V1) and v2.endswith(V2)
    assert resolve_model_path(f"{REPO}@v2-branch", tmp_path, hub_cache=hub) == v2  # a branch resolves by its ref
    assert fingerprint_inputs(v2, 1.0)["revision"] == V2
    assert model_fingerprint(v1, 1.0) != model_fingerprint(v2, 1.0)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("endorm-test/absent", "'endorm-test/absent' (revision main) is not in"),
        (f"{REPO}@{commit_of('never')}", f"(revision {commit_of('never')}) is not in"),
        (f"{REPO}@no-such-branch", "(revision no-such-branch) is not in"),
        (f"{REPO}@", "empty revision"),
    ],
)
def test_a_hub_id_without_a_local_snapshot_is_refused(hub, tmp_path, spec, message):
    with pytest.raises(ModelSourceError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve_model_path(spec, tmp_path, hub_cache=hub)


def test_an_incomplete_snapshot_is_refused(hub, tmp_path):
    snapshot = hub / f"models--{REPO.replace('/', '--')}" / "snapshots" / V1
    blob = (snapshot / "model.safetensors").resolve()
    blob.rename(blob.with_suffix(".incomplete"))  # the link stays, its blob never arrived
    with pytest.raises(ModelSourceError, match="never downloaded: model.safetensors"):
        resolve_model_path(REPO, tmp_path, hub_cache=hub)
    (snapshot / "model.safetensors").unlink()  # only the config and tokenizer were fetched
    with pytest.raises(ModelSourceError, match="has no weights"):
        resolve_model_path(REPO, tmp_path, hub_cache=hub)
    (snapshot / "model.safetensors").symlink_to(blob.with_suffix(".incomplete"))
    (snapshot / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model.safetensors", "b": "model-00002-of-00002.safetensors"}})
    )
    with pytest.raises(ModelSourceError, match="lacks shards .*model-00002-of-00002.safetensors"):
        resolve_model_path(REPO, tmp_path, hub_cache=hub)


def test_serve_refuses_an_unresolvable_hub_id_before_the_engine(hub, tmp_path):
    """`endorm serve` on a hub id the cache lacks: one line on stderr, exit status 2, no traceback, no engine."""
    env = {**os.environ, "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1"}
    env.pop("ENDORM_MODEL", None)
    missing = f"{REPO}@{commit_of('never')}"
    proc = subprocess.run(
        [sys.executable, "-m", "endorm_server.cli", "serve", "--model", missing, "--cache-dir", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith(f"endorm serve: error: hub model {missing!r} (revision {commit_of('never')}) is not in")
    assert "Traceback" not in proc.stderr and "engine ready" not in proc.stderr + proc.stdout


def test_inputs_cover_versions_parallelism_device_and_gemm(tmp_path):
    model = tiny_model("llama")
    inputs = fingerprint_inputs(model, 1.0, MODEL_CACHE)
    assert inputs["versions"] == {"vllm": _version("vllm"), "torch": _version("torch")}
    assert inputs["device"] == "cpu" and inputs["tensor_parallel_size"] == 1
    assert inputs["cpu_gemm"] == "torch"  # auto in float32 (engine/vllm_plugin/cpu_gemm.py)
    assert fingerprint_inputs(model, 1.0, dtype="bfloat16")["cpu_gemm"] == "onednn"
    payload = json.dumps({k: v for k, v in inputs.items() if k != "revision"}, sort_keys=True)
    assert fingerprint_of(inputs) == "fp_" + hashlib.sha256(payload.encode()).hexdigest()[:16]
    base = fingerprint_of(inputs)
    others = {
        "tensor_parallel_size": model_fingerprint(model, 1.0, tensor_parallel_size=2),
        "cpu_gemm": model_fingerprint(model, 1.0, cpu_gemm="onednn"),
        "device": model_fingerprint(model, 1.0, device="cuda:NVIDIA H100 80GB HBM3"),
        "vllm": model_fingerprint(model, 1.0, versions={**inputs["versions"], "vllm": "0.0.1"}),
        "torch": model_fingerprint(model, 1.0, versions={**inputs["versions"], "torch": "0.0.1"}),
        "batch_invariant": model_fingerprint(model, 1.0, batch_invariant=True),
    }
    assert base not in others.values() and len(set(others.values())) == len(others)
    assert model_fingerprint(model, 1.0, cpu_gemm="torch") == base  # what auto resolves to: the same kernel
    # off CPU there is no CPU GEMM to choose; the transformers engine has its own versions and no parallelism
    assert fingerprint_inputs(model, 1.0, device="cuda:X")["cpu_gemm"] is None
    reference = fingerprint_inputs(model, 1.0, engine="transformers", tensor_parallel_size=4)
    assert reference["versions"] == {"transformers": _version("transformers"), "torch": _version("torch")}
    assert reference["tensor_parallel_size"] == 1 and reference["cpu_gemm"] is None
    with pytest.raises(ValueError, match="local checkpoint directory"):
        fingerprint_inputs(REPO, 1.0)  # never a name


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return __import__(name).__version__
