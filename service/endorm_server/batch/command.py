"""``endorm batch INPUT -o OUTPUT``: the flags and the three ways to run a batch file.

- in-process (default): one engine here, the server's app in-process (``--model`` and the other
  settings flags, as ``endorm serve`` takes them);
- ``--endpoint URL`` (repeatable): a deployed fleet over HTTP with the SDK, no engine here;
- ``--ray ADDRESS|auto``: Ray Data, one engine per actor (``endorm_server.ray``); with ``--endpoint``
  too, the actors are HTTP clients of the fleet instead.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from endorm_server.config import Settings


def input_file(text: str) -> Path:
    """The input, checked while the arguments are parsed: a missing file is one line before the model
    is resolved (which may mean a download) or an engine starts."""
    path = Path(text)
    if not path.exists() or path.is_dir():
        raise argparse.ArgumentTypeError(f"no input file {path}")
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "input", type=input_file, help="JSONL, one OpenAI batch request a line: {custom_id, method, url, body}"
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        help="JSONL (OpenAI batch output lines) or, ending in .parquet, one row per item; "
        "an existing output is resumed: its custom_ids are skipped",
    )
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=None,
        help="requests in flight at once (default 256; with --ray, per actor: the batch size)",
    )
    parser.add_argument(
        "--endpoint",
        action="append",
        default=None,
        metavar="URL",
        help="score on running servers over HTTP (the SDK: retries, failover, prompt affinity); repeat for a fleet",
    )
    parser.add_argument("--endpoint-api-key", default=None, help="the fleet's API key (default: ENDORM_API_KEY)")
    ray = parser.add_argument_group("Ray Data (endorm_server.ray)")
    ray.add_argument("--ray", default=None, metavar="ADDRESS", help="run on a Ray cluster: its address, or auto")
    ray.add_argument("--ray-actors", type=int, default=1, help="actors, one engine each (default 1)")
    ray.add_argument("--ray-num-cpus", type=float, default=1.0, help="CPUs reserved per actor (default 1)")
    ray.add_argument("--ray-num-gpus", type=float, default=0.0, help="GPUs per actor (default 0; 1 on a GPU node)")


def _check(args: argparse.Namespace) -> str | None:
    if not args.input.exists() or args.input.is_dir():
        return f"no input file {args.input}"
    if args.max_in_flight is not None and args.max_in_flight < 1:
        return "--max-in-flight must be >= 1"
    if args.ray_actors < 1:
        return "--ray-actors must be >= 1"
    if args.output.resolve() == args.input.resolve():
        return "the output must not be the input"
    return None


def run(args: argparse.Namespace, settings: Settings) -> int:
    from endorm_server.batch.backends import EngineFailed
    from endorm_server.batch.sinks import OutputError

    if (problem := _check(args)) is not None:
        print(f"endorm batch: error: {problem}", file=sys.stderr)
        return 2
    # vLLM's per-step INFO lines would bury the progress line (set before vLLM is imported; the user's wins)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # stdout is the summary's (vLLM's default)
    try:
        if args.ray is not None:
            from endorm_server.ray import run_batch_file

            summary = run_batch_file(
                args.input,
                args.output,
                settings,
                address=args.ray,
                actors=args.ray_actors,
                num_cpus=args.ray_num_cpus,
                num_gpus=args.ray_num_gpus,
                batch_size=args.max_in_flight,
                endpoints=args.endpoint,
                api_key=args.endpoint_api_key,
            )
        else:
            summary = asyncio.run(_local(args, settings))
    except OutputError as exc:
        print(f"endorm batch: error: {exc}", file=sys.stderr)
        return 2
    except (EngineFailed, OSError) as exc:
        print(f"endorm batch: stopped: {exc} (rerun the same command to resume)", file=sys.stderr)
        return 1
    print(summary.describe())
    return 0


async def _local(args: argparse.Namespace, settings: Settings):
    from endorm_server.batch.backends import Fleet, InProcessApp
    from endorm_server.batch.runner import DEFAULT_WINDOW, run
    from endorm_server.batch.sinks import sink_for

    window = args.max_in_flight or DEFAULT_WINDOW
    backend = (
        Fleet(args.endpoint, api_key=args.endpoint_api_key, max_in_flight=window)
        if args.endpoint
        else InProcessApp(settings)
    )
    async with backend:
        return await run(args.input, args.output, sink_for(args.output), backend, window=window)
