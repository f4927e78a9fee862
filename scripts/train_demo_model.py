#!/usr/bin/env python
"""Train the bundled demo model (``service/endorm_server/models/demo``) from scratch on a CPU.

A small Llama (head_dim 64) with a byte-level BPE tokenizer of its own and a ChatML
chat template learns the arithmetic task of ``service/endorm_server/evaluation/demo_task.py`` by
plain next-token prediction on the assistant turn: questions like "What is 23 + 48?",
answered in the style the system prompt asks for (digits or words, bare or with
working). The data are generated here, deterministically from the seed; a tenth of all
questions is held out (never trained on) for the evaluation sets.

    .venv/bin/python scripts/train_demo_model.py            # writes service/endorm_server/models/demo

Seeded: the same seed, steps and thread count give the same weights on the same
machine. Prints a progress bar; the committed model took 17 minutes wall (15 minutes of
CPU, one thread) on a 2-core machine shared with other jobs. At the end it
measures greedy accuracy on held-out questions per style and writes the weights
(float32 safetensors), tokenizer, ``training.json`` (arguments, loss curve, accuracy,
samples) and the model card ``README.md`` into the output directory.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from endorm_server.evaluation import demo_task  # noqa: E402
from endorm_server.evaluation.demo_task import STYLES, SYSTEM_PROMPTS, Problem, response  # noqa: E402

DEFAULT_OUT = ROOT / "service" / "models" / "demo"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (replaced)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--intermediate-size", type=int, default=512)
    p.add_argument("--num-layers", type=int, default=4)
    p.add_argument("--vocab-size", type=int, default=1024)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (1: on a busy machine 2 threads can be 10x slower; 2 on an idle one)",
    )
    p.add_argument("--eval-every", type=int, default=300)
    p.add_argument(
        "--card-only",
        action="store_true",
        help="no training: redo the greedy check and the model card of the model in --out",
    )
    p.add_argument(
        "--eval-per-cell",
        type=int,
        default=16,
        help="held-out questions per (style, operation, size) for the final greedy check",
    )
    return p.parse_args(argv)


# ----------------------------------------------------------------------- tokenizer


def chat_prompt(system: str | None, question: str) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": system}] if system else []
    return msgs + [{"role": "user", "content": question}]


def build_tokenizer(seed: int, vocab_size: int):
    """Byte-level BPE (Qwen2 pre-tokenizer: every digit its own token), ChatML with BOS."""
    from tests.tiny_models import _corpus, _make_hf_tokenizer

    examples = itertools.islice(demo_task.training_examples(seed + 1), 6000)
    texts = [
        (f"system\n{e['system']}\n" if e["system"] else "") + f"user\n{e['question']}\nassistant\n{e['response']}\n"
        for e in examples
    ]
    return _make_hf_tokenizer(vocab_size, add_bos=True, qwen_style=True, corpus=_corpus() + texts)


class Encoder:
    """Chat examples -> (ids, first response position), exactly as ``endorm`` encodes
    (checked against :class:`endorm_server.inputs.tokenization.PairEncoder` on a sample)."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.eot = tokenizer.convert_tokens_to_ids("<|im_end|>")

    def prompt_text(self, system, question) -> str:
        return self.tok.apply_chat_template(chat_prompt(system, question), add_generation_prompt=True, tokenize=False)

    def encode(self, examples: list[dict]) -> list[tuple[list[int], int]]:
        prompts = [self.prompt_text(e["system"], e["question"]) for e in examples]
        p_ids = self.tok(prompts, add_special_tokens=False)["input_ids"]
        f_ids = self.tok([p + e["response"] for p, e in zip(prompts, examples)], add_special_tokens=False)["input_ids"]
        out = []
        for p, f in zip(p_ids, f_ids):
            assert f[: len(p)] == p, "a token merges across the prompt/response boundary"
            out.append((f + [self.eot], len(p)))
        return out

    def check_against_service(self, examples: list[dict], vocab_size: int) -> None:
        from endorm_server.inputs.tokenization import PairEncoder

        enc = PairEncoder(self.tok, vocab_size=vocab_size)
        for e, (ids, start) in zip(examples, self.encode(examples)):
            kw = {"system": e["system"]} if e["system"] else {}
            pair = enc.encode(messages=[{"role": "user", "content": e["question"]}], response=e["response"], **kw)
            assert pair.prompt_ids == ids[:start] and pair.response_ids == ids[start:], e


# --------------------------------------------------------------------------- model


def build_model(args, tokenizer):
    import torch
    import transformers

    heads = args.hidden_size // 64
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_hidden_layers=args.num_layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=64,
        max_position_embeddings=1024,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config.architectures = ["LlamaForCausalLM"]
    torch.manual_seed(args.seed)
    return transformers.LlamaForCausalLM(config).float()


def collate(batch, pad_id):
    import torch

    n = max(len(ids) for ids, _ in batch)
    x = torch.full((len(batch), n), pad_id, dtype=torch.long)
    y = torch.full((len(batch), n), -100, dtype=torch.long)
    for i, (ids, start) in enumerate(batch):
        x[i, : len(ids)] = torch.tensor(ids)
        y[i, start : len(ids)] = torch.tensor(ids[start:])  # loss on the response + <|im_end|>
    return x, y


def pack(batch, pad_id, row_len: int = 160):
    """Pack a batch's examples into as few rows of ``row_len`` tokens as fit (first fit,
    longest first; rows grow to the longest example if needed); a block-diagonal causal mask and per-example positions
    keep the examples apart (same logits as one example per row, less padding)."""
    import torch

    n = max(row_len, max(len(ids) for ids, _ in batch))
    rows: list[list] = []
    for ex in sorted(batch, key=lambda e: -len(e[0])):
        for row in rows:
            if sum(len(ids) for ids, _ in row) + len(ex[0]) <= n:
                row.append(ex)
                break
        else:
            rows.append([ex])
    x = torch.full((len(rows), n), pad_id, dtype=torch.long)
    y = torch.full((len(rows), n), -100, dtype=torch.long)
    pos = torch.zeros((len(rows), n), dtype=torch.long)
    doc = torch.full((len(rows), n), -1, dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for d, (ids, start) in enumerate(row):
            k = len(ids)
            x[r, at : at + k] = torch.tensor(ids)
            y[r, at + start : at + k] = torch.tensor(ids[start:])  # loss on the response + <|im_end|>
            pos[r, at : at + k] = torch.arange(k)
            doc[r, at : at + k] = d
            at += k
        pos[r, at:] = torch.arange(n - at)
    used = max(sum(len(ids) for ids, _ in row) for row in rows)
    x, y, pos, doc, n = x[:, :used], y[:, :used], pos[:, :used], doc[:, :used], used
    causal = torch.tril(torch.ones(n, n, dtype=torch.bool))
    mask = causal[None] & (doc[:, :, None] == doc[:, None, :])
    return x, y, pos, mask[:, None]


def lr_at(step: int, args) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    t = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))


def eval_loss(model, batches) -> float:
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in batches:
            logits = model(input_ids=x).logits[:, :-1].float()
            tgt = y[:, 1:]
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), ignore_index=-100, reduction="sum"
            )
            total += float(loss)
            count += int((tgt != -100).sum())
    return total / count


# ------------------------------------------------------------------ greedy check


def greedy(model, encoder: Encoder, prompts: list[str], max_new_tokens: int = 64) -> list[str]:
    """Greedy continuation of each rendered prompt up to <|im_end|> (batched, left-padded)."""
    import torch

    tok = encoder.tok
    ids = tok(prompts, add_special_tokens=False)["input_ids"]
    n = max(map(len, ids))
    x = torch.full((len(ids), n), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(ids), n), dtype=torch.long)
    for i, row in enumerate(ids):
        x[i, n - len(row) :] = torch.tensor(row)
        mask[i, n - len(row) :] = 1
    with torch.no_grad():
        out = model.generate(
            input_ids=x,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=encoder.eot,
            pad_token_id=tok.pad_token_id,
        )
    return [tok.decode(row[n:], skip_special_tokens=True) for row in out]


def greedy_check(model, encoder: Encoder, per_cell: int, seed: int) -> dict:
    """Exact-match accuracy of greedy answers on held-out questions, per style / op / size."""
    rng = random.Random(seed)
    cases = []
    for style in STYLES:
        for op in demo_task.OPS:
            for size in ("1-digit", "2-digit"):
                for _ in range(per_cell):
                    p = demo_task.sample_problem(rng, heldout=True, size=size, op=op)
                    cases.append((style, op, size, p))
    prompts = [encoder.prompt_text(SYSTEM_PROMPTS[s], p.question) for s, _, _, p in cases]
    outs = []
    for i in range(0, len(prompts), 64):
        outs += greedy(model, encoder, prompts[i : i + 64])
    table: dict = {}
    samples = []
    for (style, op, size, p), got in zip(cases, outs):
        ok = got == response(p, style)
        cell = table.setdefault(style, {}).setdefault(f"{op} {size}", [0, 0])
        cell[0] += ok
        cell[1] += 1
        if cell[1] == 1 and (size == "1-digit" or op == "+"):  # 4 samples per style
            samples.append(
                {
                    "system": SYSTEM_PROMPTS[style],
                    "question": p.question,
                    "answer": got,
                    "expected": response(p, style),
                    "correct": ok,
                }
            )
    acc = {s: {k: c / n for k, (c, n) in cells.items()} for s, cells in table.items()}
    overall = {s: sum(c for c, _ in cells.values()) / sum(n for _, n in cells.values()) for s, cells in table.items()}
    return {"per_cell": per_cell, "accuracy": acc, "overall": overall, "samples": samples}


# ---------------------------------------------------------------------- model card


def model_card(args, summary: dict, size_mb: float) -> str:
    g = summary["greedy"]
    rows = "\n".join(
        f"| `{s}` | "
        + " | ".join(f"{g['accuracy'][s][f'{op} {sz}']:.0%}" for op in demo_task.OPS for sz in ("1-digit", "2-digit"))
        + f" | {g['overall'][s]:.0%} |"
        for s in STYLES
    )
    head = " | ".join(f"{op} {sz}" for op in demo_task.OPS for sz in ("1-digit", "2-digit"))
    sample_lines = "\n".join(
        f"| {s['system']} | {s['question']} | {s['answer']} | {'yes' if s['correct'] else 'no'} |"
        for s in summary["greedy"]["samples"]
    )
    systems = "\n".join(f'- `{s}`: "{t}"' for s, t in SYSTEM_PROMPTS.items())
    return f"""# endorm demo model

A {summary["parameters"] / 1e6:.1f}M-parameter Llama ({args.num_layers} layers, hidden {args.hidden_size},
{args.hidden_size // 64} heads of head_dim 64, vocabulary {summary["vocab_size"]}), trained from scratch on a CPU by
`scripts/train_demo_model.py` so that `endorm serve --model endorm-demo` serves rewards that visibly make
sense, with no download and no GPU. It is **not** a general language model: it knows one task.

## What it is for

Trying the service and the evaluation harness (`endorm eval`, `docs/evaluation.md`) out of the box. Its
endogenous reward prefers right answers to wrong ones on arithmetic questions and follows the style asked
for in the system prompt (the reward's criteria). The measured numbers are in `results/demo/`.

## Task

Chat questions such as "What is 23 + 48?" (`a + b`, `a - b` with 0 <= a, b <= 99; `a * b` with
2 <= a <= 9, 0 <= b <= 99), answered in the style the system prompt sets:

{systems}

With no system prompt the style is random (uniform over the four). Examples of each style:
`71`, `seventy-one`, `20 + 40 = 60 and 3 + 8 = 11, so 23 + 48 = 60 + 11 = 71.`,
`20 + 40 = 60 and 3 + 8 = 11, so 23 + 48 = 60 + 11, which is seventy-one.`
A fixed tenth of all (a, op, b) triples (by CRC32) is held out from training; every evaluation uses
only those. The generator is `service/endorm_server/evaluation/demo_task.py`.

## How it was made

- Tokenizer: byte-level BPE trained on the task's text plus the small English corpus of
  `tests/tiny_models.py` (Qwen2-style pre-tokenizer, so every digit is its own token); ChatML chat
  template with BOS; `<|im_end|>` ends a turn (EOS).
- Training: plain next-token prediction (cross-entropy) on the assistant turn (response + `<|im_end|>`),
  {args.steps} steps of {args.batch_size} freshly generated examples ({args.steps * args.batch_size:,} examples,
  {summary["train_tokens"]:,} tokens), AdamW (lr {args.lr}, {args.warmup} warm-up steps, cosine decay, weight
  decay {args.weight_decay}), seed {args.seed}, {args.threads} CPU thread(s), float32; examples packed into rows
  with a block-diagonal causal mask.
- Time: {summary["wall_time_s"] / 60:.1f} min wall ({summary["cpu_time_s"] / 60:.1f} min CPU) on a 2-core CPU shared with
  other jobs (tokenizer and data included). Final training
  loss {summary["final_train_loss"]:.3f}, held-out loss {summary["final_eval_loss"]:.3f} nats/token
  (at step 0: {summary["initial_eval_loss"]:.2f}).
- Reproduce: `.venv/bin/python scripts/train_demo_model.py` (same seed, steps and threads give the same
  weights on the same machine). Details, loss curve and samples: `training.json`.
- Weights: float32 safetensors, {size_mb:.1f} MB.

## Greedy accuracy on held-out questions (exact match, {g["per_cell"]} questions per cell)

The task is learned best where the working is written out (the model then copies the operands next to
each step); bare answers to 2-digit questions are often a little off.

| style | {head} | all |
|---|{"---|" * (len(demo_task.OPS) * 2 + 1)}
{rows}

Samples (greedy):

| system | question | answer | right |
|---|---|---|---|
{sample_lines}

## Limits

Arithmetic in this narrow format only; anything else gets low, meaningless rewards. Numbers outside the
ranges above were never seen. Use a real model (`endorm serve --model ...`) for anything real.
"""


# --------------------------------------------------------------------------- main


def card_only(args) -> int:
    """Re-run the greedy check on a trained model and rewrite training.json and README.md."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.out)
    model = AutoModelForCausalLM.from_pretrained(args.out, dtype=torch.float32).eval()
    summary = json.loads((args.out / "training.json").read_text())
    summary["greedy"] = greedy_check(model, Encoder(tokenizer), args.eval_per_cell, summary["args"]["seed"] + 11)
    summary["args"]["eval_per_cell"] = args.eval_per_cell
    train_args = argparse.Namespace(**{**summary["args"], "out": args.out})
    (args.out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    size_mb = sum(f.stat().st_size for f in args.out.iterdir() if f.name != "README.md") / 1e6
    (args.out / "README.md").write_text(model_card(train_args, summary, size_mb))
    for s, acc in summary["greedy"]["overall"].items():
        print(f"greedy exact match, held-out, {s}: {acc:.1%}", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.card_only:
        return card_only(args)
    import torch
    from tqdm import tqdm

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    t0, cpu0 = time.time(), time.process_time()

    tokenizer = build_tokenizer(args.seed, args.vocab_size)
    encoder = Encoder(tokenizer)
    stream = demo_task.training_examples(args.seed)
    train = list(itertools.islice(stream, args.steps * args.batch_size))
    encoder.check_against_service(train[:200], len(tokenizer))
    enc = encoder.encode(train)
    batches = [enc[i : i + args.batch_size] for i in range(0, len(enc), args.batch_size)]
    held_rng = random.Random(args.seed + 7)
    held = []
    for _ in range(384):
        p = demo_task.sample_problem(held_rng, heldout=True)
        style = held_rng.choice(STYLES)
        held.append({"system": SYSTEM_PROMPTS[style], "question": p.question, "response": response(p, style)})
    held_enc = encoder.encode(held)
    held_batches = [collate(held_enc[i : i + 64], tokenizer.pad_token_id) for i in range(0, len(held_enc), 64)]
    train_tokens = sum(len(ids) for b in batches for ids, _ in b)
    print(
        f"tokenizer: {len(tokenizer)} tokens; {len(train):,} training examples ({train_tokens:,} tokens); "
        f"data ready in {time.time() - t0:.0f}s",
        file=sys.stderr,
    )

    model = build_model(args, tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.98),
    )
    model.eval()
    initial_eval = eval_loss(model, held_batches)
    curve = [{"step": 0, "eval_loss": initial_eval}]
    ema = None
    bar = tqdm(range(args.steps), desc="training demo model", unit="step", dynamic_ncols=True)
    for step in bar:
        model.train()
        x, y, pos, mask = pack(batches[step], tokenizer.pad_token_id)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args)
        loss = model(input_ids=x, labels=y, position_ids=pos, attention_mask=mask).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        lv = loss.item()
        ema = lv if ema is None else 0.95 * ema + 0.05 * lv
        bar.set_postfix(loss=f"{ema:.3f}")
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            model.eval()
            ev = eval_loss(model, held_batches)
            curve.append(
                {"step": step + 1, "train_loss_ema": ema, "eval_loss": ev, "elapsed_s": round(time.time() - t0, 1)}
            )
            bar.write(f"step {step + 1}: train loss {ema:.4f}, held-out loss {ev:.4f}, {time.time() - t0:.0f}s")
    train_time, cpu_time = time.time() - t0, time.process_time() - cpu0
    model.eval()
    check = greedy_check(model, encoder, args.eval_per_cell, args.seed + 11)
    for s, acc in check["overall"].items():
        print(f"greedy exact match, held-out, {s}: {acc:.1%}", file=sys.stderr)

    summary = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"},
        "parameters": n_params,
        "vocab_size": len(tokenizer),
        "train_examples": len(train),
        "train_tokens": train_tokens,
        "wall_time_s": round(train_time, 1),
        "cpu_time_s": round(cpu_time, 1),
        "initial_eval_loss": initial_eval,
        "final_train_loss": ema,
        "final_eval_loss": curve[-1]["eval_loss"],
        "curve": curve,
        "greedy": check,
        "torch": torch.__version__,
    }
    save(model, tokenizer, args, summary)
    print(f"wrote {args.out} in {time.time() - t0:.0f}s", file=sys.stderr)
    return 0


def check_reload(path: Path, tokenizer) -> None:
    """The saved tokenizer, as the service loads it, encodes exactly as the trained one."""
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(path)
    enc = Encoder(tokenizer)
    texts = [enc.prompt_text(SYSTEM_PROMPTS[s], "What is 23 + 48?") + response(Problem(23, "+", 48), s) for s in STYLES]
    texts.append("The capital of France is Paris. café 東京 <|im_end|>")
    for t in texts:
        assert loaded.encode(t, add_special_tokens=False) == tokenizer.encode(t, add_special_tokens=False), t
    assert loaded.apply_chat_template(
        chat_prompt("s", "q"), add_generation_prompt=True, tokenize=False
    ) == enc.prompt_text("s", "q")


def save(model, tokenizer, args, summary) -> None:
    import transformers

    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".demo-", dir=out.parent))
    try:
        model.generation_config = transformers.GenerationConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        cfg = json.loads((tmp / "config.json").read_text())
        cfg["torch_dtype"] = "float32"
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        tc = json.loads((tmp / "tokenizer_config.json").read_text())
        tc["tokenizer_class"] = "PreTrainedTokenizerFast"  # portable: loads with any transformers
        (tmp / "tokenizer_config.json").write_text(json.dumps(tc, indent=2, sort_keys=True) + "\n")
        check_reload(tmp, tokenizer)
        (tmp / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
        size_mb = sum(f.stat().st_size for f in tmp.iterdir()) / 1e6
        (tmp / "README.md").write_text(model_card(args, summary, size_mb))
        tmp.chmod(0o755)
        for f in tmp.iterdir():
            f.chmod(0o644)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
