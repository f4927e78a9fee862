"""``endorm eval``: accuracy of the reward on a preference file (RM-Bench or RewardBench form).

Scores in process (the model of ``--model``, default SmolLM2-135M-Instruct; every
``endorm serve`` setting applies) or through a running server (``--server URL``,
``--api-key KEY``), then writes ``<name>.md``, ``<name>.json`` and ``<name>.png``.

``--aggregation all`` reports every aggregation from one forward pass per response. Every
scored batch is appended to ``<name>.scores.jsonl`` (``--cache``) as it finishes, so an
interrupted run started again with the same arguments scores only what is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from endorm_server.scoring.aggregations import AGGREGATIONS


def expand_aggregations(chosen: list[str] | None, *, with_steps: bool = False) -> list[str]:
    """``all`` stands for every aggregation (the step ones only when responses are split into
    steps); order kept, duplicates dropped; default ``sum``."""
    every = [a for a in AGGREGATIONS if with_steps or not a.startswith("step_")]
    out: list[str] = []
    for a in chosen or ["sum"]:
        out += every if a == "all" else [a]
    return list(dict.fromkeys(out))


def add_scoring_arguments(p: argparse.ArgumentParser) -> None:
    """What decides the scores besides the model: the aggregation(s), the discount, V(s_H)."""
    p.add_argument(
        "--aggregation",
        action="append",
        choices=(*AGGREGATIONS, "all"),
        default=None,
        help="score(s) to evaluate, repeatable; 'all' = every one, from the same forward pass "
        "(default: sum, the endogenous reward)",
    )
    p.add_argument(
        "--gamma",
        type=float,
        default=1.0,
        help="discount of aggregation 'discounted': w_h = max(gamma^h, beta) (default 1.0 as the API; "
        "a published re-implementation uses 0.93-0.95)",
    )
    p.add_argument("--beta", type=float, default=0.0, help="floor on the discount weight (default 0)")
    p.add_argument(
        "--terminal", default="zero", choices=["zero", "bootstrap"], help="V(s_H): zero (the paper) or bootstrap"
    )
    p.add_argument(
        "--contrast",
        action="store_true",
        help="criteria contrast: score r(x, system, y) - r(x, baseline, y) per token (needs chat prompts "
        "with a system text; see docs/dense-rewards.md)",
    )
    p.add_argument(
        "--baseline-system",
        default=None,
        help="with --contrast: the baseline's system text (default: none, the chat template's own)",
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "input",
        help="preference file: JSONL or a JSON array; RM-Bench form {prompt, chosen: [k], "
        "rejected: [k], domain} or RewardBench form {prompt, chosen, rejected, subset}",
    )
    p.add_argument("-o", "--output-dir", default="eval-results", help="where the reports go (default: eval-results)")
    p.add_argument("--name", default=None, help="report file name stem (default: the input file's)")
    p.add_argument("--format", default="auto", choices=["auto", "rm-bench", "rewardbench"])
    add_scoring_arguments(p)
    p.add_argument(
        "--system", default=None, help="system text (the reward's criteria) for every row, replacing the rows' own"
    )
    p.add_argument(
        "--prompt-format",
        default="chat",
        choices=["chat", "raw"],
        help="chat: the prompt is a user turn in the model's chat template (default); raw: text as is",
    )
    p.add_argument(
        "--step-separator",
        default=None,
        help="score responses as steps split after this text (escapes like \\n allowed; a response "
        "without it is one step); needed by the step_min / step_last aggregations",
    )
    p.add_argument(
        "--server",
        default=None,
        help="score through a running endorm server at this URL "
        "(with --api-key KEY if it needs one) instead of in process",
    )
    p.add_argument("--batch-size", type=int, default=32, help="responses per scoring call")
    p.add_argument("--concurrency", type=int, default=4, help="scoring calls in flight")
    p.add_argument("--limit", type=int, default=None, help="only the first N rows")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--cache",
        default=None,
        help="per-response score file to resume from and append to (default: <output-dir>/<name>.scores.jsonl)",
    )
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the score cache")
    p.add_argument(
        "--cached-only",
        action="store_true",
        help="start no engine: report from the cache alone (an error if a score is missing); "
        "e.g. the first --limit N rows of a run still going on",
    )


def discount_of(args: argparse.Namespace):
    from endorm_server.evaluation.backends import Discount
    from endorm_server.scoring import rewards

    rewards.discount_weights(0, args.gamma, args.beta)  # RewardInputError (a ValueError) names a bad one
    contrast = bool(getattr(args, "contrast", False))
    if getattr(args, "baseline_system", None) is not None and not contrast:
        raise ValueError("--baseline-system is only used with --contrast")
    return Discount(
        gamma=args.gamma,
        beta=args.beta,
        terminal=args.terminal,
        contrast=contrast,
        baseline_system=getattr(args, "baseline_system", None),
    )


def cache_config(args: argparse.Namespace, model: str, fingerprint: str | None) -> dict:
    """Everything besides the request item that changes a response's score: the server's system_fingerprint
    (weights, alpha, the resolved compute dtype, the engine: the same key in-process and through a server
    running the same model) and the request's options. A server that reports no fingerprint is keyed by
    its URL instead."""
    served = {"system_fingerprint": fingerprint} if fingerprint else {"server": args.server}
    return {
        "model": model,
        **served,
        "gamma": args.gamma,
        "beta": args.beta,
        "terminal": args.terminal,
        **({"contrast": True, "baseline_system": args.baseline_system} if getattr(args, "contrast", False) else {}),
    }


def open_cache(args: argparse.Namespace, backend, name: str):
    from endorm_server.evaluation.cache import ScoreCache

    if args.no_cache:
        return None
    path = Path(args.cache) if args.cache else Path(args.output_dir) / f"{name}.scores.jsonl"
    cache = ScoreCache(path, cache_config(args, backend.model_name, backend.system_fingerprint))
    if len(cache) and not args.no_progress:
        print(f"resuming: {len(cache)} scored responses in {path}", file=sys.stderr)
    return cache


class CachedOnlyBackend:
    """Scores nothing: with ``--cached-only`` every score must come from the cache."""

    def __init__(self, model_name: str, system_fingerprint: str) -> None:
        self.model_name = model_name
        self.system_fingerprint = system_fingerprint

    async def score(self, items, aggregations):
        raise RuntimeError(f"--cached-only: {len(items)} responses are not in the cache yet")

    async def close(self) -> None:
        pass


def cached_backend(args: argparse.Namespace, settings) -> CachedOnlyBackend:
    if args.no_cache or args.server:
        raise ValueError("--cached-only reads an in-process run's cache (no --no-cache, no --server)")
    from endorm_server.core.scorer import system_fingerprint
    from endorm_server.models.sources import resolve_model_path

    path = resolve_model_path(settings.model, settings.cache_dir)
    return CachedOnlyBackend(settings.model_name, system_fingerprint(settings, path))


async def start_backend(args: argparse.Namespace, settings):
    from endorm_server.evaluation.backends import HttpBackend, InProcessBackend

    discount = discount_of(args)
    if args.server:
        keys = [k.get_secret_value() for k in settings.api_keys]
        return await HttpBackend(args.server, keys[0] if keys else None, discount=discount).start()
    return await InProcessBackend.start(settings, discount)


async def _run(args, settings, dataset, aggregations, name):
    from endorm_server.evaluation.runner import evaluate_dataset

    backend = cached_backend(args, settings) if args.cached_only else await start_backend(args, settings)
    try:
        return backend.model_name, await evaluate_dataset(
            backend,
            dataset,
            aggregations,
            system=args.system,
            prompt_mode=args.prompt_format,
            step_separator=step_separator(args),
            batch_size=args.batch_size,
            concurrency=args.concurrency,
            progress=not args.no_progress,
            desc=f"scoring {Path(args.input).name}",
            cache=open_cache(args, backend, name),
        )
    finally:
        await backend.close()


def step_separator(args: argparse.Namespace) -> str | None:
    """--step-separator with backslash escapes decoded (``'\\n\\n'`` on a command line is two newlines)."""
    sep = getattr(args, "step_separator", None)
    return sep.encode("latin-1", "backslashreplace").decode("unicode_escape") if sep else None


def run(args: argparse.Namespace, settings) -> int:
    from endorm_server.evaluation.harness import read_preferences
    from endorm_server.evaluation.report import pct, write_reports

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
        aggregations = expand_aggregations(args.aggregation, with_steps=bool(args.step_separator))
        if any(a.startswith("step_") for a in aggregations) and not args.step_separator:
            raise ValueError("the step_min / step_last aggregations need --step-separator")
        discount_of(args)  # a bad --gamma / --beta fails before the engine starts
        name = args.name or Path(args.input).stem
        model, (results, scores) = asyncio.run(_run(args, settings, dataset, aggregations, name))
    except errors as exc:
        print(f"endorm eval: error: {exc}", file=sys.stderr)
        return 2
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
        "gamma": args.gamma,
        "beta": args.beta,
        "terminal": args.terminal,
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
