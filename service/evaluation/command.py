"""``endorm eval``: accuracy of the reward on a preference file (RM-Bench or RewardBench form).

Scores in process (the model of ``--model``, default SmolLM2-135M-Instruct; every
``endorm serve`` setting applies) or through a running server (``--server URL``,
``--api-key KEY``), then writes ``<name>.md``, ``<name>.json`` and ``<name>.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

AGGREGATIONS = ("sum", "mean", "discounted", "loglik_sum", "loglik_mean", "step_min", "step_last")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="preference file: JSONL or a JSON array; RM-Bench form {prompt, chosen: [k], "
                                 "rejected: [k], domain} or RewardBench form {prompt, chosen, rejected, subset}")
    p.add_argument("-o", "--output-dir", default="eval-results", help="where the reports go (default: eval-results)")
    p.add_argument("--name", default=None, help="report file name stem (default: the input file's)")
    p.add_argument("--format", default="auto", choices=["auto", "rm-bench", "rewardbench"])
    p.add_argument("--aggregation", action="append", choices=AGGREGATIONS, default=None,
                   help="score(s) to evaluate, repeatable (default: sum, the endogenous reward)")
    p.add_argument("--system", default=None,
                   help="system text (the reward's criteria) for every row, replacing the rows' own")
    p.add_argument("--prompt-format", default="chat", choices=["chat", "raw"],
                   help="chat: the prompt is a user turn in the model's chat template (default); raw: text as is")
    p.add_argument("--step-separator", default=None,
                   help="score responses as steps split after this text (escapes like \\n allowed; a response "
                        "without it is one step); needed by the step_min / step_last aggregations")
    p.add_argument("--server", default=None, help="score through a running endorm server at this URL "
                                                  "(with --api-key KEY if it needs one) instead of in process")
    p.add_argument("--batch-size", type=int, default=32, help="responses per scoring call")
    p.add_argument("--concurrency", type=int, default=4, help="scoring calls in flight")
    p.add_argument("--limit", type=int, default=None, help="only the first N rows")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


async def _run(args, settings, dataset, aggregations):
    from service.evaluation.backends import HttpBackend, InProcessBackend
    from service.evaluation.runner import evaluate_dataset

    if args.server:
        keys = [k.get_secret_value() for k in settings.api_keys]
        backend = await HttpBackend(args.server, keys[0] if keys else None).start()
    else:
        backend = await InProcessBackend.start(settings)
    try:
        return backend.model_name, await evaluate_dataset(
            backend, dataset, aggregations, system=args.system, prompt_mode=args.prompt_format,
            step_separator=step_separator(args), batch_size=args.batch_size, concurrency=args.concurrency,
            progress=not args.no_progress,
            desc=f"scoring {Path(args.input).name}")
    finally:
        await backend.close()


def step_separator(args: argparse.Namespace) -> str | None:
    """--step-separator with backslash escapes decoded (``'\\n\\n'`` on a command line is two newlines)."""
    sep = getattr(args, "step_separator", None)
    return sep.encode("latin-1", "backslashreplace").decode("unicode_escape") if sep else None


def run(args: argparse.Namespace, settings) -> int:
    from service.evaluation.harness import read_preferences
    from service.evaluation.report import pct, write_reports

    errors: tuple[type[BaseException], ...] = (OSError, ValueError, RuntimeError)
    if args.server:  # httpx is only needed (and maybe only installed) for --server
        try:
            import httpx
        except ImportError:
            print("endorm eval: error: --server needs httpx (pip install httpx)", file=sys.stderr)
            return 2

        errors += (httpx.HTTPError,)
    try:
        if args.batch_size < 1 or args.concurrency < 1 or (args.limit is not None and args.limit < 1):
            raise ValueError("--batch-size, --concurrency and --limit must be >= 1")
        dataset = read_preferences(args.input, args.format)
        if args.limit:
            dataset.rows = dataset.rows[: args.limit]
        aggregations = list(dict.fromkeys(args.aggregation or ["sum"]))
        if any(a.startswith("step_") for a in aggregations) and not args.step_separator:
            raise ValueError("the step_min / step_last aggregations need --step-separator")
        model, (results, scores) = asyncio.run(_run(args, settings, dataset, aggregations))
    except errors as exc:
        print(f"endorm eval: error: {exc}", file=sys.stderr)
        return 2
    name = args.name or Path(args.input).stem
    meta = {
        "model": model,
        "input": str(args.input),
        "format": dataset.format,
        "k": dataset.k,
        "rows": len(dataset.rows),
        "system": args.system,
        "prompt_mode": args.prompt_format,
        "step_separator": step_separator(args),
        "backend": f"server {args.server}" if args.server else f"in-process ({settings.engine})",
        "alpha": settings.alpha if not args.server else None,
    }
    paths = write_reports(results, meta, args.output_dir, name, scores)
    for agg, r in results.items():
        line = f"{agg}: accuracy {pct(r.overall.accuracy)}% over {len(dataset.rows)} rows"
        if r.overall.summary:
            s = r.overall.summary
            line += f" (easy {pct(s['easy'])}, normal {pct(s['normal'])}, hard {pct(s['hard'])})"
        print(line)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
