"""``endorm`` command line: ``serve`` (HTTP service), ``score`` (offline file scoring), ``eval`` (accuracy reports),
``batch`` (OpenAI-format batch files, in-process, on a fleet or on Ray).

Every Settings field is a flag (``--max-model-len``) and an env var
(``ENDORM_MAX_MODEL_LEN``); flags win.
"""

from __future__ import annotations

import argparse
import sys

from endorm_server.config import Settings
from endorm_server.flags import add_settings_flags, configure_logging, settings_from_args


def _model_error(settings: Settings, command: str) -> int | None:
    """Resolve --model before anything starts (a GGUF file converts here, once): a missing,
    truncated or unsupported model is one clear line and exit status 2, not an engine traceback."""
    from endorm_server.models.sources import ModelSourceError, resolve_model_path

    try:
        resolve_model_path(settings.model, settings.cache_dir)
    except ModelSourceError as exc:
        print(f"endorm {command}: error: {exc}", file=sys.stderr)
        return 2
    return None


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from endorm_server.http.server import serve

    configure_logging(settings.log_level)
    if (status := _model_error(settings, "serve")) is not None:
        return status
    return serve(settings)


def cmd_score(args: argparse.Namespace, settings: Settings) -> int:
    from endorm_server.evaluation.offline import score_file

    configure_logging("warning" if settings.log_level == "info" else settings.log_level)
    if (status := _model_error(settings, "score")) is not None:
        return status
    try:
        from endorm_server.evaluation.command import step_separator

        if args.aggregation.startswith("step_") and not args.step_separator:
            raise ValueError("the step_min / step_last aggregations need --step-separator")
        summary = score_file(
            settings,
            args.input,
            args.output,
            aggregation=args.aggregation,
            batch_size=args.batch_size,
            gamma=args.gamma,
            beta=args.beta,
            step_separator=step_separator(args),
            contrast=args.contrast,
            baseline_system=args.baseline_system,
        )
    except (OSError, ValueError) as exc:  # bad file or bad row: a clear message, not a traceback
        print(f"endorm score: error: {exc}", file=sys.stderr)
        return 2
    print(summary.describe())
    return 0


def cmd_eval(args: argparse.Namespace, settings: Settings) -> int:
    from endorm_server.evaluation.command import run

    configure_logging("warning" if settings.log_level == "info" else settings.log_level)
    if getattr(args, "server", None) is None and (status := _model_error(settings, "eval")) is not None:
        return status
    return run(args, settings)


def cmd_batch(args: argparse.Namespace, settings: Settings) -> int:
    from endorm_server.batch.command import run

    configure_logging("warning" if settings.log_level == "info" else settings.log_level)
    if not args.endpoint and (status := _model_error(settings, "batch")) is not None:
        return status
    return run(args, settings)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="endorm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP reward service")
    add_settings_flags(serve)
    serve.set_defaults(func=cmd_serve, parser=serve)
    score = sub.add_parser("score", help="score a JSONL preference file offline (chosen/rejected pairs)")
    score.add_argument("input", help="JSONL: {prompt|messages, system?, chosen, rejected} per line")
    score.add_argument("-o", "--output", required=True, help="JSONL with scores per line")
    score.add_argument(
        "--aggregation",
        default="sum",
        choices=["sum", "mean", "discounted", "loglik_sum", "loglik_mean", "step_min", "step_last", "all"],
        help="'all': every aggregation per pair, from one forward pass per response",
    )
    score.add_argument("--gamma", type=float, default=1.0, help="discount of 'discounted': w_h = max(gamma^h, beta)")
    score.add_argument("--beta", type=float, default=0.0, help="floor on the discount weight")
    score.add_argument(
        "--step-separator",
        default=None,
        help="score text responses as steps split after this text "
        "(escapes like \\n allowed; no separator: one step); needed by step_min / step_last",
    )
    score.add_argument("--batch-size", type=int, default=64, help="pairs in flight at once")
    score.add_argument(
        "--contrast",
        action="store_true",
        help="criteria contrast: r(x, system, y) - r(x, baseline, y); rows need messages and a system",
    )
    score.add_argument(
        "--baseline-system",
        default=None,
        help="with --contrast: the baseline's system text (default: the row without system)",
    )
    add_settings_flags(score)
    score.set_defaults(func=cmd_score, parser=score)
    from endorm_server.evaluation.command import add_arguments as add_eval_arguments

    evaluate = sub.add_parser("eval", help="accuracy on a preference file (RM-Bench / RewardBench form), with reports")
    add_eval_arguments(evaluate)
    add_settings_flags(evaluate)
    evaluate.set_defaults(func=cmd_eval, parser=evaluate)
    from endorm_server.batch.command import add_arguments as add_batch_arguments

    batch = sub.add_parser("batch", help="score a JSONL file of OpenAI-format batch requests (/score, /compare, ...)")
    add_batch_arguments(batch)
    add_settings_flags(batch)
    batch.set_defaults(func=cmd_batch, parser=batch)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args, settings_from_args(args, args.parser))


if __name__ == "__main__":
    sys.exit(main())
