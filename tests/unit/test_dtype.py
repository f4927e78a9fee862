"""--dtype auto resolution (service/endorm_server/engine/dtype.py), from device facts given to it, not this machine's."""

from __future__ import annotations

import json

import pytest

from endorm_server.engine.dtype import checkpoint_dtype, cpu_flags, machine_dtype, resolve_dtype, resolve_head_dtype

# Real flag sets, trimmed: the AMD EPYC (AVX-512 + AVX512-BF16, no AMX), the Intel Xeon (AMX) and an AVX2-only machine.
EPYC = "fpu sse2 avx avx2 fma avx512f avx512dq avx512bw avx512vl avx512_bf16 avx512_vnni".split()
XEON_AMX = "avx2 avx512f avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8".split()
AVX2 = "fpu sse2 avx avx2 fma f16c".split()
AVX512_NO_BF16 = "avx2 avx512f avx512dq avx512bw avx512vl avx512_vnni".split()
AVX512_FP16_ONLY = "avx2 avx512f avx512_fp16".split()  # float16 arithmetic but no bf16: still float32
GRAVITON3 = "fp asimd asimdhp sve sve2 bf16 svebf16 i8mm".split()


@pytest.mark.parametrize(
    "flags, expected",
    [
        (EPYC, "bfloat16"),
        (XEON_AMX, "bfloat16"),
        (GRAVITON3, "bfloat16"),
        (AVX2, "float32"),
        (AVX512_NO_BF16, "float32"),
        (AVX512_FP16_ONLY, "float32"),
        ([], "float32"),
    ],
)
@pytest.mark.parametrize("ckpt", ["float32", "bfloat16", "float16", None])
def test_cpu_auto_is_bf16_exactly_where_bf16_is_native_and_never_float16(flags, expected, ckpt):
    choice = resolve_dtype("auto", device="cpu", cpu_flags=flags, checkpoint_dtype=ckpt)
    assert choice.dtype == expected
    assert choice.reason
    if expected == "bfloat16":
        assert any(f in choice.reason for f in ("amx_bf16", "avx512_bf16", "bf16"))


@pytest.mark.parametrize(
    "ckpt, bf16, expected",
    [
        ("float32", True, "bfloat16"),  # a GGUF conversion on an A100 / H100
        ("float32", False, "float32"),  # on a V100 / T4
        ("bfloat16", True, "bfloat16"),
        ("bfloat16", False, "float32"),
        ("float16", True, "float16"),
        ("float16", False, "float16"),
        (None, True, "bfloat16"),  # no dtype in config.json: float32 weights
    ],
)
def test_gpu_auto_keeps_the_checkpoints_dtype_and_turns_float32_into_bf16_where_supported(ckpt, bf16, expected):
    assert resolve_dtype("auto", device="cuda", checkpoint_dtype=ckpt, gpu_bf16=bf16).dtype == expected


def test_rocm_has_bf16():
    assert resolve_dtype("auto", device="rocm", checkpoint_dtype="float32").dtype == "bfloat16"


@pytest.mark.parametrize("requested", ["float32", "float16", "bfloat16"])
def test_an_explicit_dtype_always_wins(requested):
    for device, flags in (("cpu", XEON_AMX), ("cpu", AVX2), ("cuda", ())):
        choice = resolve_dtype(requested, device=device, cpu_flags=flags, checkpoint_dtype="float32", gpu_bf16=True)
        assert (choice.dtype, choice.requested) == (requested, requested)


def test_the_transformers_engine_auto_is_the_float64_reference():
    assert resolve_dtype("auto", device="cpu", cpu_flags=XEON_AMX, engine="transformers").dtype == "float64"
    assert resolve_dtype("float32", device="cpu", engine="transformers").dtype == "float32"


def test_cpu_flags_and_checkpoint_dtype_are_read_from_files(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: "
        + " ".join(EPYC)
        + "\n\nprocessor\t: 1\nflags\t\t: fpu\n"
    )
    assert cpu_flags(info) == set(EPYC)
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: " + " ".join(GRAVITON3) + "\n")
    assert "bf16" in cpu_flags(arm)
    assert cpu_flags(tmp_path / "missing") == set()
    (tmp_path / "config.json").write_text(json.dumps({"torch_dtype": "float32"}))
    assert checkpoint_dtype(tmp_path) == "float32"
    (tmp_path / "config.json").write_text(json.dumps({"dtype": "bfloat16"}))
    assert checkpoint_dtype(tmp_path) == "bfloat16"
    assert checkpoint_dtype(tmp_path / "nowhere") is None


def test_machine_dtype_passes_explicit_choices_through_without_looking(tmp_path):
    assert machine_dtype("float32", tmp_path).dtype == "float32"


@pytest.mark.parametrize("flags, expected", [(XEON_AMX, "bfloat16"), (AVX2, "float32")])
def test_the_vllm_engine_starts_in_the_resolved_dtype(monkeypatch, flags, expected):
    """The engine's arguments carry the resolved dtype, never vLLM's own 'auto' (float16 on CPU)."""
    from endorm_server.engine import dtype as dtype_module
    from endorm_server.engine.vllm_engine import VllmEngine
    from tests.conftest import engine_settings, tiny_model

    monkeypatch.setattr(dtype_module, "cpu_flags", lambda *a: set(flags))
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "nobind")  # engine_args applies the CPU binding default
    engine = VllmEngine(engine_settings(tiny_model("llama"), dtype="auto"), str(tiny_model("llama")))
    assert engine.dtype_choice.dtype == expected
    assert engine.engine_args().dtype == expected
    pinned = VllmEngine(engine_settings(tiny_model("llama"), dtype="float32"), str(tiny_model("llama")))
    assert pinned.engine_args().dtype == "float32"


# --- the LM head's dtype ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "requested,compute,device,expected",
    [
        ("auto", "bfloat16", "cpu", "model"),  # a float32 head on CPU: a weight cast and a float32 GEMM per step
        ("auto", "float16", "cpu", "model"),
        ("auto", "float32", "cpu", "float32"),
        ("auto", "bfloat16", "cuda", "float32"),  # GPUs accumulate straight into float32: vLLM's default kept
        ("auto", "bfloat16", "rocm", "float32"),
        ("float32", "bfloat16", "cpu", "float32"),  # explicit always wins
        ("model", "bfloat16", "cuda", "model"),
    ],
)
def test_head_dtype_resolution(requested, compute, device, expected):
    assert resolve_head_dtype(requested, compute, device) == expected
