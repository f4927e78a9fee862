"""system_fingerprint changes exactly when what produces the reward changes."""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest

from endorm_server.models import hashing
from endorm_server.models.fingerprint import model_fingerprint
from tests.conftest import tiny_model


@pytest.fixture()
def model(tmp_path):
    path = tmp_path / "model"
    shutil.copytree(tiny_model("llama"), path)
    return path


def test_same_files_and_alpha_same_value_across_restarts(model, tmp_path):
    first = model_fingerprint(model, 1.0, tmp_path / "cache-a")
    assert re.fullmatch(r"fp_[0-9a-f]{16}", first)
    assert model_fingerprint(model, 1.0, tmp_path / "cache-a") == first
    assert model_fingerprint(model, 1.0, tmp_path / "cache-b") == first  # a fresh cache (another machine)
    copy = tmp_path / "elsewhere"
    shutil.copytree(model, copy)
    assert model_fingerprint(copy, 1.0) == first  # content, not location
    (model / "generation_config.json").write_text("{}")  # sampling settings do not change the reward
    os.utime(model / "model.safetensors")  # nor does a touched file
    assert model_fingerprint(model, 1.0, tmp_path / "cache-a") == first


def test_alpha_weights_config_tokenizer_and_template_change_it(model, tmp_path):
    base = model_fingerprint(model, 1.0, tmp_path)
    assert model_fingerprint(model, 0.5, tmp_path) != base
    assert model_fingerprint(model, 1.0, tmp_path, dtype="bfloat16") != base  # the compute dtype changes rewards
    assert model_fingerprint(model, 1.0, tmp_path, engine="transformers") != base  # so does the engine
    with pytest.raises(ValueError, match="resolved dtype"):  # 'auto' means different dtypes on different machines
        model_fingerprint(model, 1.0, tmp_path, dtype="auto")
    seen = {base, model_fingerprint(model, 0.5, tmp_path)}
    weights = bytearray((model / "model.safetensors").read_bytes())
    weights[-1] ^= 1  # one bit of one weight
    (model / "model.safetensors").write_bytes(bytes(weights))
    seen.add(model_fingerprint(model, 1.0, tmp_path))
    config = json.loads((model / "config.json").read_text())
    config["rms_norm_eps"] = 1e-5
    (model / "config.json").write_text(json.dumps(config))
    seen.add(model_fingerprint(model, 1.0, tmp_path))
    tok_config = json.loads((model / "tokenizer_config.json").read_text())
    tok_config["chat_template"] = "{{ messages[0]['content'] }}"
    (model / "tokenizer_config.json").write_text(json.dumps(tok_config))
    seen.add(model_fingerprint(model, 1.0, tmp_path))
    assert len(seen) == 5


def test_a_16_bit_lm_head_changes_it_and_a_float32_one_does_not(model, tmp_path):
    """Logits rounded to bfloat16 are other rewards; a float32 head is what every earlier value meant,
    and with a float32 body 'model' is float32 too, so those values stay."""
    bf16 = model_fingerprint(model, 1.0, tmp_path, dtype="bfloat16")
    assert model_fingerprint(model, 1.0, tmp_path, dtype="bfloat16", head_dtype="float32") == bf16
    assert model_fingerprint(model, 1.0, tmp_path, dtype="bfloat16", head_dtype="model") != bf16
    fp32 = model_fingerprint(model, 1.0, tmp_path, dtype="float32")
    assert model_fingerprint(model, 1.0, tmp_path, dtype="float32", head_dtype="model") == fp32


def test_cached_weight_hash_is_refreshed_when_the_file_changes(model, tmp_path, monkeypatch):
    """The cache (path, size, mtime) -> sha256 spares re-reading big weights; a rewrite invalidates it."""
    monkeypatch.setattr(hashing, "_CACHE_MIN_BYTES", 0)  # cache every file of the tiny model
    cache = tmp_path / "cache"
    before = model_fingerprint(model, 1.0, cache)
    assert len(list((cache / "file-hashes").glob("*.json"))) >= 2
    weights = bytearray((model / "model.safetensors").read_bytes())
    weights[-1] ^= 1
    (model / "model.safetensors").write_bytes(bytes(weights))  # same size, new mtime
    after = model_fingerprint(model, 1.0, cache)
    assert after != before
    assert model_fingerprint(model, 1.0, tmp_path / "fresh") == after
