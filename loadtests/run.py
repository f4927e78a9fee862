"""One command: start a local server, run a bounded headless locust test against it, print the summary.

    python -m loadtests.run                                  # tiny model, 8 users, 30 s
    python -m loadtests.run --model bench -u 16 -t 60s      # the 32k-vocabulary benchmark model
    python -m loadtests.run --shape step --steps 1,2,4,8 --step-s 15
    python -m loadtests.run --url http://127.0.0.1:8000 --api-key KEY   # an already running server

Payload mix and thresholds come from ``ENDORM_LT_*`` variables (loadtests/config.py);
the flags below set the common ones. Reports go to ``--out`` (default
``loadtests/out/<timestamp>/``): locust CSVs (``run_stats.csv``, ...), ``run.html``,
``requests.jsonl`` (one line per request), ``summary.json``, and ``server.log``.
Exit status: locust's, i.e. 1 when a threshold is breached.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from loadtests.config import PREFIX, LoadConfig
from loadtests.server import LocalServer

ROOT = Path(__file__).resolve().parents[1]
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
DEFAULT_SERVER_ARGS = (
    "--dtype float32 --enforce-eager --kv-cache-gb 1 --gpu-memory-utilization 0.1 "
    "--max-num-batched-tokens 2048 --max-inflight-tokens 32768 --queue-timeout-s 2"
)


def parse_duration(text: str) -> float:
    """locust-style durations: 90, 90s, 2m, 1h30m."""
    text = text.strip().lower()
    if text.replace(".", "", 1).isdigit():
        return float(text)
    total, num = 0.0, ""
    for ch in text:
        if ch.isdigit() or ch == ".":
            num += ch
        elif ch in "hms" and num:
            total += float(num) * {"h": 3600, "m": 60, "s": 1}[ch]
            num = ""
        else:
            raise argparse.ArgumentTypeError(f"bad duration {text!r}")
    if num:
        raise argparse.ArgumentTypeError(f"bad duration {text!r}")
    return total


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.run",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 2)[2],
    )
    p.add_argument(
        "--model",
        default="tiny",
        help="preset (tiny, small, bench: generated, no download) or a model directory [tiny]",
    )
    p.add_argument("--url", help="test this running server instead of starting one")
    p.add_argument(
        "--api-key", default=os.environ.get(PREFIX + "API_KEY", ""), help="Bearer key (also sets the server's)"
    )
    p.add_argument(
        "--server-args", default=DEFAULT_SERVER_ARGS, help=f"extra `endorm serve` flags [{DEFAULT_SERVER_ARGS}]"
    )
    p.add_argument("-u", "--users", type=int, default=8, help="concurrent users (shape none) [8]")
    p.add_argument("-r", "--spawn-rate", type=float, default=4, help="users started per second [4]")
    p.add_argument("-t", "--run-time", type=parse_duration, default=30.0, help="duration, e.g. 60s, 2m [30s]")
    p.add_argument("--shape", choices=["none", "ramp", "step", "spike"], help="load shape (overrides -u/-r/-t)")
    p.add_argument("--steps", help="step shape: user counts, e.g. 1,2,4,8")
    p.add_argument("--step-s", type=float, help="step shape: seconds per step")
    p.add_argument("--wait", help="user wait: none, constant:S, pacing:S, between:A:B")
    p.add_argument("--max-fail-ratio", help="threshold on failures / requests (none: off)")
    p.add_argument("--max-p95-ms", help="threshold on accepted requests' p95 (none: off)")
    p.add_argument("--max-p99-ms", help="threshold on accepted requests' p99 (none: off)")
    p.add_argument("--max-reject-ratio", help="threshold on 429/503 / all requests (none: off)")
    p.add_argument("--out", type=Path, help="report folder [loadtests/out/<timestamp>]")
    p.add_argument("--locust-args", default="", help="extra locust flags")
    p.add_argument("--ready-timeout-s", type=float, default=600)
    return p


def lt_env(args: argparse.Namespace, out: Path) -> dict[str, str]:
    env = {PREFIX + "REQUEST_LOG": str(out / "requests.jsonl"), PREFIX + "SUMMARY_JSON": str(out / "summary.json")}
    if args.api_key:
        env[PREFIX + "API_KEY"] = args.api_key
    for name in ("shape", "steps", "step_s", "wait", "max_fail_ratio", "max_p95_ms", "max_p99_ms", "max_reject_ratio"):
        value = getattr(args, name)
        if value is not None:
            env[PREFIX + name.upper()] = str(value)
    return env


def locust_command(args: argparse.Namespace, host: str, out: Path, cfg: LoadConfig) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--host",
        host,
        "--headless",
        "--csv",
        str(out / "run"),
        "--html",
        str(out / "run.html"),
        "--stop-timeout",
        "30",
        "--only-summary",
        "--loglevel",
        "WARNING",
    ]
    if cfg.shape == "none":
        cmd += ["-u", str(args.users), "-r", str(args.spawn_rate), "-t", f"{max(1, round(args.run_time))}s"]
    return cmd + shlex.split(args.locust_args)


def expected_duration(args: argparse.Namespace, cfg: LoadConfig) -> float:
    from loadtests.config import schedule

    segs = schedule(cfg)
    return segs[-1][1] if segs else args.run_time


def run(args: argparse.Namespace) -> int:
    out = args.out or ROOT / "loadtests" / "out" / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        **lt_env(args, out),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    cfg = LoadConfig.from_env(env)  # validates the configuration before a server starts

    server = None
    host = args.url
    if host is None:
        from loadtests.bench.model import resolve

        model_path, _ = resolve(args.model)
        server_args = ["--model", str(model_path), *shlex.split(args.server_args)]
        if args.api_key:
            server_args += ["--api-key", args.api_key]
        print(f"starting: endorm serve {' '.join(server_args)}", file=sys.stderr, flush=True)
        server = LocalServer(server_args, log_path=out / "server.log", ready_timeout_s=args.ready_timeout_s)
        t0 = time.monotonic()
        server.start().wait_ready()
        print(f"server ready at {server.url} in {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
        host = server.url
    try:
        cmd = locust_command(args, host, out, cfg)
        print("running: " + shlex.join(cmd), file=sys.stderr, flush=True)
        hard_limit = expected_duration(args, cfg) + 90  # bounded even if locust hangs
        try:
            # stdin: locust polls it for keyboard commands, and a shared pipe there can block it for good
            rc = subprocess.run(cmd, env=env, timeout=hard_limit, stdin=subprocess.DEVNULL).returncode
        except subprocess.TimeoutExpired:
            print(f"locust did not finish in {hard_limit:.0f} s", file=sys.stderr)
            rc = 2
    finally:
        if server is not None:
            server.stop()
    summary = out / "summary.json"
    if summary.is_file():
        data = json.loads(summary.read_text())
        print(
            json.dumps(
                {
                    k: data[k]
                    for k in (
                        "requests",
                        "failures",
                        "rejected",
                        "rps",
                        "tokens_per_s",
                        "p50_ms",
                        "p95_ms",
                        "p99_ms",
                        "violations",
                    )
                },
                indent=None,
            )
        )
    print(f"reports: {out}", file=sys.stderr)
    return rc


def _exit_on_sigterm(signum, frame):  # so `finally` stops the server
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
