"""The CPU GEMM choice (service/endorm_server/engine/vllm_plugin/cpu_gemm.py): what ``auto`` picks, that the choice reaches
vLLM's linear layers in a real engine, and that both kernels score the same within float32 noise.

The engines here are vLLM's synchronous LLMEngine with the engine core in this process
(VLLM_ENABLE_V1_MULTIPROCESSING=0, tests/conftest.py), so the loaded model can be inspected.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from endorm_server.config import Settings
from endorm_server.engine.vllm_engine import VllmEngine
from endorm_server.engine.vllm_plugin import cpu_gemm
from endorm_server.engine.vllm_plugin.cpu_gemm import GEMM_KEY
from tests.conftest import engine_settings
from tests.inprocess_engine import inprocess_engine


def test_auto_is_torch_for_float32_and_onednn_for_16_bit():
    assert cpu_gemm.resolve("auto", torch.float32) == "torch"
    assert cpu_gemm.resolve("auto", torch.bfloat16) == "onednn"
    assert cpu_gemm.resolve("auto", torch.float16) == "onednn"
    assert cpu_gemm.resolve("onednn", torch.float32) == "onednn"  # an explicit choice wins
    assert cpu_gemm.resolve("torch", torch.bfloat16) == "torch"
    with pytest.raises(ValueError, match="cpu_gemm must be"):
        cpu_gemm.resolve("mkl", torch.float32)


def test_setting_from_flag_or_environment(monkeypatch, llama_path):
    assert Settings().cpu_gemm == "auto"
    monkeypatch.setenv("ENDORM_CPU_GEMM", "onednn")
    assert Settings().cpu_gemm == "onednn"
    with pytest.raises(ValidationError, match="cpu_gemm"):
        Settings(cpu_gemm="fast")
    args = VllmEngine(engine_settings(llama_path, cpu_gemm="torch"), str(llama_path)).engine_args()
    assert args.hf_overrides[GEMM_KEY] == "torch"


def _score_in_process(model_path, choice: str, ids: list[int]):
    """(a linear layer of the loaded model, c, v) from an in-process engine with this GEMM choice; the
    batch-invariant mode off, since it wraps every layer's GEMM (tests/engine/test_batch_invariance.py)."""
    settings = engine_settings(model_path, cpu_gemm=choice, batch_invariant=False)
    with inprocess_engine(settings, str(model_path)) as engine:
        c, v = engine.stats(ids)
        return engine.model.model.layers[0].mlp.gate_up_proj, c, v


def test_the_choice_reaches_the_engine_and_both_kernels_agree(llama_path):
    ids = [(7 * i + 3) % 256 for i in range(200)]  # over one 128-token step: chunked prefill too
    torch_layer, c_torch, v_torch = _score_in_process(llama_path, "auto", ids)  # float32 -> torch
    onednn_layer, c_onednn, v_onednn = _score_in_process(llama_path, "onednn", ids)

    # torch's GEMM keeps the weight and calls F.linear; oneDNN packs the weight and drops the original.
    assert torch_layer.cpu_linear is torch.nn.functional.linear and torch_layer.weight.numel() > 0
    assert onednn_layer.cpu_linear is not torch.nn.functional.linear and onednn_layer.weight.numel() == 0
    np.testing.assert_allclose(c_torch[:-1], c_onednn[:-1], atol=1e-4)
    np.testing.assert_allclose(v_torch, v_onednn, atol=1e-4)
    assert np.isnan(c_torch[-1]) and np.isnan(c_onednn[-1])
