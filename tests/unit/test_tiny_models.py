"""The tiny test-model generator: determinism, loading, logit spread (no vLLM here)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
import torch

from tests.tiny_models import (
    ARCHS,
    BOS_ARCHS,
    build_tiny_model,
    ensure_tiny_model,
    main,
    tiny_model_dirname,
)

EXPECTED_CLASS = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "mistral": "MistralForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
}

TEXT = (
    "The teacher explains the problem with great care. 12+7=19, 3 * 4 = 12.\n\n"
    "Q: What is the capital of France? A: Paris. café 東京"
)


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_build_is_byte_for_byte_deterministic(tmp_path, arch):
    kw = {"final_logit_softcapping": 30.0} if arch == "gemma2" else {}
    a = build_tiny_model(tmp_path / "a", arch, **kw)
    b = build_tiny_model(tmp_path / "b", arch, **kw)
    fa, fb = _files(a), _files(b)
    assert set(fa) >= {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    }
    assert fa == fb
    c = build_tiny_model(tmp_path / "c", arch, seed=1, **kw)
    fc = _files(c)
    assert fc["model.safetensors"] != fa["model.safetensors"]  # the seed matters
    assert fc["tokenizer.json"] == fa["tokenizer.json"]  # the tokenizer does not


def test_build_refuses_non_empty_dir_unless_overwrite(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "junk.txt").write_text("x")
    with pytest.raises(FileExistsError):
        build_tiny_model(d, num_layers=1)
    build_tiny_model(d, num_layers=1, overwrite=True)
    assert not (d / "junk.txt").exists()
    assert (d / "config.json").is_file()


@pytest.mark.parametrize(
    "arch,kw",
    [
        ("llama", {"final_logit_softcapping": 30.0}),  # softcap is gemma2-only
        ("gemma2", {"tie_word_embeddings": False}),  # gemma2 always ties
        ("llama", {"hidden_size": 96}),  # head_dim 64
        ("llama", {"vocab_size": 100}),
        ("gpt2", {}),
    ],
)
def test_bad_arguments(tmp_path, arch, kw):
    with pytest.raises(ValueError):
        build_tiny_model(tmp_path / "m", arch, **kw)


def test_vocab_size_beyond_the_corpus_pads_the_model_vocab(tmp_path):
    from transformers import AutoTokenizer

    path = build_tiny_model(tmp_path / "m", "qwen3", vocab_size=2048, num_layers=1)
    tok = AutoTokenizer.from_pretrained(path)
    assert json.loads((path / "config.json").read_text())["vocab_size"] == 2048
    assert 512 < len(tok) < 2048


def test_ensure_reuses_and_names_deterministically(tmp_path, tiny_model):
    p1 = ensure_tiny_model(tmp_path, "qwen3", num_layers=1)
    mtime = (p1 / "model.safetensors").stat().st_mtime_ns
    p2 = ensure_tiny_model(tmp_path, "qwen3", num_layers=1)
    assert p1 == p2 and (p2 / "model.safetensors").stat().st_mtime_ns == mtime
    assert p1.name == tiny_model_dirname("qwen3", num_layers=1)
    assert [x.name for x in tmp_path.iterdir()] == [p1.name]  # no temp dirs left behind
    names = {
        tiny_model_dirname("llama"),
        tiny_model_dirname("llama", seed=1),
        tiny_model_dirname("llama", tie_word_embeddings=True),
        tiny_model_dirname("llama", num_layers=3),
        tiny_model_dirname("gemma2"),
        tiny_model_dirname("gemma2", final_logit_softcapping=30.0),
    }
    assert len(names) == 6
    # None means the family default: same directory as the explicit default
    assert tiny_model_dirname("gemma2") == tiny_model_dirname("gemma2", tie_word_embeddings=True)


def test_ensure_is_safe_concurrently(tmp_path):
    results, errors = [], []

    def work():
        try:
            results.append(ensure_tiny_model(tmp_path, "mistral", num_layers=1))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(results)) == 1
    assert sorted(os.listdir(tmp_path)) == [results[0].name]


@pytest.mark.parametrize("arch", ARCHS)
def test_arch_loads_in_transformers(arch, tiny_model, tiny_tokenizer):
    from tokenizers import Tokenizer
    from transformers import AutoConfig, AutoModelForCausalLM

    path = tiny_model(arch)
    raw_cfg = json.loads((path / "config.json").read_text())
    assert raw_cfg["architectures"] == [EXPECTED_CLASS[arch]]
    assert raw_cfg["torch_dtype"] == "float32"
    assert raw_cfg["head_dim"] == 64
    assert raw_cfg["max_position_embeddings"] == 2048
    assert raw_cfg["intermediate_size"] == 256
    assert raw_cfg["tie_word_embeddings"] is (arch == "gemma2")

    tok = tiny_tokenizer(arch)
    cfg = AutoConfig.from_pretrained(path)
    assert cfg.vocab_size == len(tok) == 512
    assert tok.eos_token == "<|im_end|>"
    assert tok.bos_token == "<|bos|>" and tok.pad_token == "<|pad|>"
    gen = json.loads((path / "generation_config.json").read_text())
    for name in ("bos", "eos", "pad"):
        tid = getattr(tok, f"{name}_token_id")
        assert getattr(cfg, f"{name}_token_id") == tid
        assert gen[f"{name}_token_id"] == tid

    # AutoTokenizer (which vLLM also uses) must behave exactly like the saved
    # tokenizer.json: transformers 5 rebuilds some families' pipelines (qwen2).
    raw = Tokenizer.from_file(str(path / "tokenizer.json"))
    assert tok.encode(TEXT) == raw.encode(TEXT).ids
    assert (tok.encode("hi")[0] == tok.bos_token_id) is (arch in BOS_ARCHS)

    model = AutoModelForCausalLM.from_pretrained(path)
    assert type(model).__name__ == EXPECTED_CLASS[arch]
    assert next(model.parameters()).dtype == torch.float32
    with torch.no_grad():
        logits = model(torch.tensor([tok.encode(TEXT)])).logits
    assert logits.shape[-1] == 512 and torch.isfinite(logits).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_chat_template(arch, tiny_tokenizer):
    tok = tiny_tokenizer(arch)
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "2+2?"},
    ]
    text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    bos = "<|bos|>" if arch in BOS_ARCHS else ""
    assert text == (
        bos + "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n"
        "<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    no_gen = tok.apply_chat_template(msgs, add_generation_prompt=False, tokenize=False)
    assert text == no_gen + "<|im_start|>assistant\n"
    ids = tok.encode(text, add_special_tokens=False)
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 5
    assert ids.count(tok.eos_token_id) == 4


def _logit_stats(model, ids):
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    gap = logits.logsumexp(-1) - logits.max(-1).values  # >= 0; 0 = one-hot
    logp = logits.log_softmax(-1)[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    self_pred = (logits.argmax(-1) == torch.tensor(ids)).float().mean().item()
    return logits, gap, logp, self_pred


@pytest.mark.parametrize(
    "arch,kw",
    [
        ("llama", {}),
        ("llama", {"tie_word_embeddings": True}),
        ("qwen2", {}),
        ("qwen3", {}),
        ("mistral", {}),
        ("gemma2", {}),
        ("gemma2", {"final_logit_softcapping": 30.0}),
    ],
)
def test_logits_have_a_real_spread(arch, kw, tiny_model, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model(arch, **kw))
    ids = tiny_tokenizer(arch, **kw).encode(TEXT)
    logits, gap, logp, self_pred = _logit_stats(model, ids)
    assert logits.std() > 2.0  # not all near zero
    assert gap.min() >= 0 and gap.std() > 0.2  # logsumexp - max varies by position
    assert 0.2 < gap.mean() < 5.0  # neither one-hot nor uniform (log 512 = 6.2)
    assert logp.max() - logp.min() > 5.0  # token log-probs span several nats
    assert logp.max() > -10.0
    assert self_pred < 0.5  # the model does not just echo the current token
    # the context matters: same last token, different history, different logits
    a = tiny_tokenizer(arch, **kw).encode("The cat reads the book.")
    b = tiny_tokenizer(arch, **kw).encode("A dog finds the book.")
    with torch.no_grad():
        la = model(torch.tensor([a])).logits[0, -1]
        lb = model(torch.tensor([b])).logits[0, -1]
    assert a[-1] == b[-1] and (la - lb).abs().max() > 0.5


def test_gemma2_final_logit_softcapping(tiny_model):
    from transformers import AutoModelForCausalLM

    path = tiny_model("gemma2", final_logit_softcapping=30.0)
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["final_logit_softcapping"] == 30.0
    assert cfg["attn_logit_softcapping"] is None
    assert json.loads((tiny_model("gemma2") / "config.json").read_text())["final_logit_softcapping"] is None
    model = AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():
        logits = model(torch.arange(5, 300)[None]).logits
    assert logits.abs().max() < 30.0


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main([str(out), "--arch", "gemma2", "--softcap", "30", "--num-layers", "1"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["Gemma2ForCausalLM"]
    assert cfg["final_logit_softcapping"] == 30.0 and cfg["num_hidden_layers"] == 1
    out2 = tmp_path / "cli2"
    assert main([str(out2), "--arch", "qwen2", "--tie", "--num-layers", "1"]) == 0
    assert json.loads((out2 / "config.json").read_text())["tie_word_embeddings"] is True
