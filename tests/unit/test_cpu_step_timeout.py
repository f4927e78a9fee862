"""vLLM's per-step RPC timeout on CPU: long enough for a first (compiling) step on a busy machine."""

from __future__ import annotations

from endorm_server.engine import vllm_engine
from endorm_server.engine.vllm_engine import CPU_STEP_TIMEOUT_ENV, CPU_STEP_TIMEOUT_S, VllmEngine
from tests.conftest import engine_settings


def test_engine_args_set_the_cpu_step_timeout_unless_the_user_did(monkeypatch, llama_path):
    monkeypatch.delenv(CPU_STEP_TIMEOUT_ENV, raising=False)
    VllmEngine(engine_settings(llama_path), str(llama_path)).engine_args()
    assert vllm_engine.os.environ[CPU_STEP_TIMEOUT_ENV] == str(CPU_STEP_TIMEOUT_S)
    assert CPU_STEP_TIMEOUT_S > 300  # vLLM's own default, which a warm-up under load outlasted
    monkeypatch.setenv(CPU_STEP_TIMEOUT_ENV, "42")
    VllmEngine(engine_settings(llama_path), str(llama_path)).engine_args()
    assert vllm_engine.os.environ[CPU_STEP_TIMEOUT_ENV] == "42"
