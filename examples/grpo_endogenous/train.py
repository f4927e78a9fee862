#!/usr/bin/env python
"""GRPO (TRL, CPU) on the demo arithmetic task, rewarded by a frozen model's endogenous reward.

Roles:
  policy        the bundled demo model (service/endorm_server/models/demo, 1.3M parameters), trained;
  reward model  the SAME demo model, frozen, served by ``endorm serve`` on 127.0.0.1;
                its endogenous reward reaches TRL through the SDK's reward function.
The paper's setting in miniature: the reward comes from the model the policy starts from.

    python examples/grpo_endogenous/train.py --out results/rl            # the committed run
    python examples/grpo_endogenous/train.py --server-url http://127.0.0.1:8000 --steps 2 ...

Without ``--server-url`` the script starts ``endorm serve`` with the demo model itself
(and stops it at the end). For each seed and arm (``arms.py``) it trains a fresh copy of
the policy for ``--steps`` GRPO steps, evaluates held-out accuracy every
``--eval-every`` steps (``evaluate.py``), and writes ``runs/<arm>-s<seed>.json`` (the
training log per step and the evaluations) under ``--out`` as each run ends; then the
report (``report.py``): ``summary.json``, ``README.md`` and the plots.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
for p in (str(HERE), str(ROOT)):
    if p not in sys.path:  # run from a checkout without installing
        sys.path.insert(0, p)

from arms import ARMS, reward_functions  # noqa: E402
from task import PROMPT_STYLES, questions  # noqa: E402

DEMO_MODEL = ROOT / "service" / "endorm_server" / "models" / "demo"
SERVER_FLAGS = [
    "--dtype",
    "float32",
    "--max-model-len",
    "512",
    "--max-num-batched-tokens",
    "512",
    "--kv-cache-gb",
    "1",
    "--gpu-memory-utilization",
    "0.05",
    "--enforce-eager",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "results" / "rl")
    p.add_argument(
        "--server-url", default=None, help="a running endorm server (default: start one with the demo model)"
    )
    p.add_argument("--api-key", default=os.environ.get("ENDORM_API_KEY"), help="default: ENDORM_API_KEY")
    p.add_argument(
        "--model", type=Path, default=DEMO_MODEL, help="the policy's starting point (and the served reward model)"
    )
    p.add_argument("--arms", nargs="+", default=["endorm-sum", "endorm-mean", "random", "exact-match"], choices=ARMS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument(
        "--train-styles",
        nargs="+",
        default=["digits", "words", "none"],
        choices=PROMPT_STYLES,
        help="prompt styles trained on (the working styles are near 100%% already and 4x longer)",
    )
    p.add_argument("--prompts-per-step", type=int, default=4)
    p.add_argument("--num-generations", type=int, default=8, help="GRPO group size (completions per prompt)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--max-completion-length", type=int, default=56, help="the longest demo answer is 47 tokens")
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--eval-per-style", type=int, default=16, help="held-out questions per prompt style (all five)")
    p.add_argument("--eval-samples", type=int, default=2, help="sampled responses per question (temperature 1)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 on a busy 2-core machine)")
    p.add_argument("--no-report", action="store_true", help="write the runs only")
    p.add_argument(
        "--before",
        type=Path,
        default=None,
        help="a before.json of the same starting model and evaluation settings (skips that evaluation)",
    )
    return p.parse_args(argv)


def train_one(
    args: argparse.Namespace,
    arm: str,
    seed: int,
    server_url: str,
    eval_set: list,
    before: dict,
    out_dir: Path,
    work_dir: Path,
) -> dict:
    """One GRPO run from a fresh copy of the policy; returns (and writes) its record."""
    import torch
    from datasets import Dataset
    from evaluate import evaluate
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    train = questions(
        args.steps * args.prompts_per_step // len(args.train_styles) + 1,
        seed=10_000 + seed,
        heldout=False,
        styles=tuple(args.train_styles),
    )
    random.Random(seed).shuffle(train)
    dataset = Dataset.from_dict(
        {
            "prompt": [q.messages for q in train],
            "answer": [q.problem.value for q in train],
            "style": [q.style for q in train],
        }
    )
    funcs, weights = reward_functions(arm, server_url=server_url, api_key=args.api_key, seed=seed)
    log: list[dict] = []
    evals: list[dict] = [{"step": 0, **before}]

    class Record(TrainerCallback):
        def on_log(self, _args, state, control, logs=None, **kwargs):
            if logs and "reward" in logs:
                log.append(
                    {"step": state.global_step, **{k: v for k, v in logs.items() if isinstance(v, (int, float))}}
                )

        def on_step_end(self, _args, state, control, **kwargs):
            if state.global_step % args.eval_every == 0 or state.global_step == args.steps:
                acc = evaluate(
                    model, tokenizer, eval_set, samples=args.eval_samples, max_new_tokens=args.max_completion_length
                )
                evals.append({"step": state.global_step, **acc.to_dict()})
                print(
                    f"[{arm} seed {seed}] step {state.global_step}: greedy {acc.greedy:.3f} "
                    f"sampled {acc.sampled:.3f} length {acc.sampled_length:.1f}",
                    flush=True,
                )

    n = args.prompts_per_step * args.num_generations
    config = GRPOConfig(
        output_dir=str(work_dir / f"{arm}-s{seed}"),
        max_steps=args.steps,
        per_device_train_batch_size=n,
        num_generations=args.num_generations,
        steps_per_generation=1,
        gradient_accumulation_steps=1,
        max_completion_length=args.max_completion_length,
        temperature=1.0,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        beta=0.0,
        reward_weights=weights,
        use_vllm=False,
        use_cpu=True,
        bf16=False,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
        shuffle_dataset=False,
    )
    t0 = time.monotonic()
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=funcs,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[Record()],
    )
    trainer.train()
    record = {
        "arm": arm,
        "seed": seed,
        "steps": args.steps,
        "wall_s": round(time.monotonic() - t0, 1),
        "log": log,
        "evals": evals,
    }
    (out_dir / "runs").mkdir(parents=True, exist_ok=True)
    (out_dir / "runs" / f"{arm}-s{seed}.json").write_text(json.dumps(record, indent=1))
    return record


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from evaluate import evaluate
    from transformers import AutoModelForCausalLM, AutoTokenizer

    args.out.mkdir(parents=True, exist_ok=True)
    work_dir = Path(tempfile.mkdtemp(prefix="grpo-endogenous-"))  # trainer output, server log: not results
    print(f"work directory: {work_dir}", flush=True)
    server = None
    if args.server_url is None:
        from loadtests.server import LocalServer

        server = LocalServer(["--model", str(args.model), *SERVER_FLAGS], log_path=work_dir / "server.log").start()
        server.wait_ready()
        args.server_url = server.url
    t0 = time.monotonic()
    try:
        eval_set = questions(args.eval_per_style, seed=1234, heldout=True)
        # the starting policy is the same in every run: evaluate it once
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        if args.before is not None:
            before = json.loads(args.before.read_text())
        else:
            before = evaluate(
                AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32),
                tokenizer,
                eval_set,
                samples=args.eval_samples,
                max_new_tokens=args.max_completion_length,
            ).to_dict()
        (args.out / "before.json").write_text(json.dumps(before, indent=1))
        print(f"before training: greedy {before['greedy']:.3f} sampled {before['sampled']:.3f}", flush=True)
        for seed in args.seeds:
            for arm in args.arms:
                train_one(args, arm, seed, args.server_url, eval_set, before, args.out, work_dir)
    finally:
        if server is not None:
            server.stop()
    meta = {
        "command": "python examples/grpo_endogenous/train.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "args": {
            k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k not in ("api_key", "server_url")
        },
        "total_wall_s": round(time.monotonic() - t0, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "eval_questions": len(eval_set),
    }
    (args.out / "meta.json").write_text(json.dumps(meta, indent=1))
    if not args.no_report:
        from report import write_report

        write_report(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
