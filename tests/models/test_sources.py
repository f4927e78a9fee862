"""--model sources: GGUF files (converted once, atomically, under a lock), bundled short
names, and clear start-up errors for missing, truncated or unsupported models.

The GGUF files are made from the bundled SmolLM2 GGUF (tests/models/gguf_files.py): a
1-layer copy converts in seconds and keeps the real tokenizer, template and Q4_1 weights.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from endorm_server.models.gguf import CONVERSION_VERSION
from endorm_server.models.hashing import file_sha256
from endorm_server.models.sources import DEMO_MODEL, ModelSourceError, resolve_model_path, smollm2_gguf
from tests.conftest import tiny_model
from tests.models.gguf_files import shrink_gguf, tiny_gguf, truncated_copy

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def small_gguf(tmp_path_factory) -> Path:
    return shrink_gguf(smollm2_gguf(), tmp_path_factory.mktemp("gguf") / "smol-1layer.gguf", layers=1)


def _cache_entries(cache: Path) -> list[str]:
    """What a conversion left under the cache (lock files aside)."""
    root = cache / "gguf"
    return sorted(p.name for p in root.iterdir() if not p.name.endswith(".lock")) if root.exists() else []


@pytest.fixture(scope="module")
def concurrent_build(small_gguf, tmp_path_factory):
    """Two processes convert ``small_gguf`` into one empty cache at once (one conversion for the
    module: it takes ~30 s). Both block on the conversion lock, held here until both wait, then one
    builds and both get it. Returns (cache, entry name, [(stdout, stderr, returncode)] per process)."""
    cache = tmp_path_factory.mktemp("concurrent") / "cache"
    name = f"{small_gguf.stem}-{file_sha256(small_gguf)[:16]}-c{CONVERSION_VERSION}"
    lock = cache / "gguf" / f"{name}.lock"
    lock.parent.mkdir(parents=True)
    code = (
        "import sys; from pathlib import Path; from endorm_server.models.sources import resolve_model_path; "
        "print(resolve_model_path(sys.argv[1], Path(sys.argv[2])))"
    )
    with lock.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", code, str(small_gguf), str(cache)],
                env=ENV,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        deadline = time.monotonic() + 300
        while not all(_has_open(p.pid, lock) for p in procs):  # both are at the lock
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            assert time.monotonic() < deadline, "the converters never reached the lock"
            time.sleep(0.1)
        assert not (cache / "gguf" / name).exists()
        fcntl.flock(held, fcntl.LOCK_UN)
    return cache, name, [(*p.communicate(timeout=600), p.returncode) for p in procs]


def test_two_processes_converting_at_once_share_one_build(small_gguf, concurrent_build):
    cache, name, outs = concurrent_build
    assert [rc for _, _, rc in outs] == [0, 0], outs
    paths = {out.strip().splitlines()[-1] for out, _, _ in outs}
    assert paths == {str(cache / "gguf" / name)}
    assert _cache_entries(cache) == [name]  # no temporary build left behind
    assert sum(f"converting {small_gguf.name}" in err for _, err, _ in outs) == 1  # the second used the first's build


def test_gguf_converts_once_into_a_content_keyed_checkpoint(small_gguf, concurrent_build, caplog):
    import safetensors.numpy
    from gguf import GGUFReader, dequantize
    from transformers import AutoTokenizer

    cache, name, outs = concurrent_build
    assert any("DEQUANTIZED from Q4_1" in err for _, err, _ in outs)  # said by the converting process
    path = cache / "gguf" / name
    assert path.name == f"smol-1layer-{file_sha256(small_gguf)[:16]}-c{CONVERSION_VERSION}"
    assert _cache_entries(cache) == [path.name]
    source = json.loads((path / "ENDORM_SOURCE.json").read_text())
    assert source["quantization"] == "Q4_1" and source["dequantized"] is True
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["num_hidden_layers"] == 1
    assert "quantization_config" not in config
    # the saved float32 weights are exactly the GGUF's Q4_1 blocks dequantized
    weights = safetensors.numpy.load_file(path / "model.safetensors")
    embd = next(t for t in GGUFReader(small_gguf).tensors if t.name == "token_embd.weight")
    np.testing.assert_array_equal(weights["model.embed_tokens.weight"], dequantize(embd.data, embd.tensor_type))
    # tokenizer and chat template come from the GGUF metadata (SmolLM2's default system turn)
    tok = AutoTokenizer.from_pretrained(path)
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert text.endswith("<|im_start|>assistant\n")
    # a later use: the cached checkpoint, not rebuilt (and the log still says what the weights are)
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    with caplog.at_level("INFO"):
        assert resolve_model_path(str(small_gguf), cache) == str(path)
    assert "DEQUANTIZED from Q4_1" in caplog.text
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp


def _has_open(pid: int, target: Path) -> bool:
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}") == str(target) for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return False


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "does not exist"),
        ("truncated", "truncated"),
        ("header-only", "truncated"),
        ("not-gguf", "not a GGUF file"),
        ("unsupported-arch", "architecture 'endormfake' is not supported"),
    ],
)
def test_bad_gguf_is_a_clear_error_with_nothing_cached(small_gguf, tmp_path, case, message):
    bad = tmp_path / f"{case}.gguf"
    if case == "truncated":
        truncated_copy(small_gguf, bad, 0.6)  # cut inside the tensor data
    elif case == "header-only":
        truncated_copy(small_gguf, bad, 0.0005)  # cut inside the metadata
    elif case == "not-gguf":
        bad.write_text("<html>404 Not Found</html>\n")
    elif case == "unsupported-arch":
        tiny_gguf(bad, arch="endormfake")
    cache = tmp_path / "cache"
    with pytest.raises(ModelSourceError, match=message):
        resolve_model_path(str(bad), cache)
    assert _cache_entries(cache) == []


def test_bad_checkpoint_directories(tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model("llama"), model)
    assert resolve_model_path(str(model), tmp_path) == str(model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelSourceError, match="truncated"):
        resolve_model_path(str(model), tmp_path)
    (model / "config.json").unlink()
    with pytest.raises(ModelSourceError, match="no config.json"):
        resolve_model_path(str(model), tmp_path)
    with pytest.raises(ModelSourceError, match="not a .gguf file"):
        resolve_model_path(str(weights), tmp_path)
    with pytest.raises(ModelSourceError, match="does not exist"):
        resolve_model_path(str(tmp_path / "nowhere"), tmp_path)


def test_short_names():
    from endorm_server.config import Settings

    assert Settings().model_name == "smollm2-135m-instruct"
    assert Settings(model=DEMO_MODEL).model_name == DEMO_MODEL
    assert smollm2_gguf().name == "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_missing_demo_weights_are_a_start_error_not_a_stand_in(tmp_path, monkeypatch):
    """A tree without the bundled demo weights must not serve some other model under the demo's name."""
    from endorm_server.models import sources

    monkeypatch.setattr(sources, "DEMO_MODEL_DIR", tmp_path / "demo")
    with pytest.raises(ModelSourceError, match="demo weights are missing"):
        resolve_model_path(DEMO_MODEL, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()  # nothing was built in its place
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "config.json").write_text("{}")
    (tmp_path / "demo" / "model.safetensors").write_bytes(b"\x08")  # cut off
    with pytest.raises(ModelSourceError, match="not a valid safetensors"):
        resolve_model_path(DEMO_MODEL, tmp_path / "cache")


@pytest.mark.parametrize("command", ["serve", "score", "eval"])
def test_cli_refuses_a_truncated_model_at_start(small_gguf, tmp_path, command):
    bad = truncated_copy(small_gguf, tmp_path / "cut.gguf", 0.6)
    cache = tmp_path / "cache"
    args = {
        "serve": ["--port", "0"],
        "score": [str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl")],
        "eval": [str(tmp_path / "in.jsonl")],
    }[command]
    proc = subprocess.run(
        [sys.executable, "-m", "endorm_server.cli", command, *args, "--model", str(bad), "--cache-dir", str(cache)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert f"endorm {command}: error: model file" in proc.stderr and "truncated" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert _cache_entries(cache) == []
