"""Ray Data: score a Dataset of batch requests with one EndoRM engine per actor.

    import ray
    from endorm_server.config import Settings
    from endorm_server.ray import score_dataset

    ds = ray.data.read_text("s3://bucket/requests.jsonl")        # one OpenAI batch request a line
    out = score_dataset(ds, Settings(model="Qwen/Qwen2.5-7B-Instruct"), concurrency=8, num_gpus=1)
    out.write_parquet("s3://bucket/answers/")                      # one row per request
    to_item_rows(out).write_parquet("s3://bucket/items/")          # one row per item (endorm batch's columns)

Each actor (``EndoRMActor``, a callable class for ``map_batches``) starts the server's app in-process,
so an answer is the one ``endorm serve`` would give; a batch's requests are all in flight at once,
so the engine batches across them. With ``endpoints`` the actors are HTTP clients of a deployed
fleet (the SDK, with prompt affinity) and start no engine.

``endorm batch --ray ADDRESS`` runs a file this way and writes the same output as without Ray
(resume included): the requests still to do go to a Parquet file beside the output (on a cluster,
put the output on storage every node reads), actors score them, the driver writes the answers.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from endorm_server.batch.records import Record
from endorm_server.batch.requests import BatchRequest, LineError, parse_line
from endorm_server.config import Settings

# what score_dataset's rows hold: the request's keys, its answer (JSON text) and where it was scored
RESULT_COLUMNS = ("custom_id", "line", "url", "status_code", "request_id", "response", "error", "tokens", "node_id")
DEFAULT_BATCH_SIZE = 64
ACTORS_START_S = 3600  # how long run_batch_file waits for every actor's engine to start
# env the actors inherit from the driver: the engine's and the settings' own
FORWARDED_ENV_PREFIXES = ("ENDORM_", "VLLM_", "OMP_")

__all__ = ["EndoRMActor", "RESULT_COLUMNS", "record_of_row", "run_batch_file", "score_dataset", "to_item_rows"]


class EndoRMActor:
    """One engine (or one fleet client) per actor; ``__call__`` answers a batch of request lines.

    A batch has a ``text`` column (OpenAI batch request lines, or their dicts) and optionally ``line``
    (the input's line numbers)."""

    def __init__(
        self,
        settings: Settings | None = None,
        endpoints: Sequence[str] | None = None,
        api_key: str | None = None,
        window: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        import ray

        from endorm_server.batch.backends import Fleet, InProcessApp

        self.node_id = ray.get_runtime_context().get_node_id()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="endorm-actor-loop", daemon=True)
        self._thread.start()
        if endpoints:
            self.backend: Any = Fleet(endpoints, api_key=api_key, max_in_flight=window)
        else:
            self.backend = InProcessApp(settings or Settings())
        self._call(self.backend.__aenter__())

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        texts = list(batch["text"])
        lines = list(batch["line"]) if "line" in batch else [None] * len(texts)
        records = self._call(self._answer_all(texts, lines))
        return _columns(records, self.node_id)

    async def _answer_all(self, texts: list[Any], lines: list[Any]) -> list[Record]:
        from endorm_server.batch.runner import answer

        parsed = [_parse(t, n) for t, n in zip(texts, lines)]

        async def one(p: BatchRequest | LineError) -> Record:
            return Record.of_error(p) if isinstance(p, LineError) else await answer(self.backend, p)

        return list(await asyncio.gather(*(one(p) for p in parsed)))

    def __del__(self) -> None:  # the actor's end: stop the engine cleanly where the process lives on
        try:
            if self._loop.is_running():
                self._call(self.backend.__aexit__(None, None, None))
                self._loop.call_soon_threadsafe(self._loop.stop)
        except Exception:  # noqa: BLE001  (interpreter shutdown)
            pass


def _parse(text: Any, line: Any) -> BatchRequest | LineError:
    number = int(line) if line is not None else 0
    return parse_line(text if isinstance(text, str) else json.dumps(text), number)


def _columns(records: list[Record], node_id: str) -> dict[str, list]:
    out: dict[str, list] = {c: [] for c in RESULT_COLUMNS}
    for r in records:
        err = r.error()
        out["custom_id"].append(r.custom_id)
        out["line"].append(r.line)
        out["url"].append(r.route)
        out["status_code"].append(r.status_code)
        out["request_id"].append(r.request_id)
        out["response"].append(json.dumps(r.body) if r.status_code is not None else None)
        out["error"].append(json.dumps(err) if err is not None else None)
        out["tokens"].append(r.tokens())
        out["node_id"].append(node_id)
    return out


def record_of_row(row: dict[str, Any]) -> Record:
    """A result row of ``score_dataset`` back as the Record ``endorm batch`` writes."""
    status = row.get("status_code")
    status = int(status) if status is not None and status == status else None  # pandas gives NaN for null
    line = int(row["line"]) if row.get("line") is not None else 0
    if status is None:
        err = json.loads(row["error"])
        return Record.of_error(LineError(line, row.get("custom_id"), err.get("code", ""), err.get("message", "")))
    body = json.loads(row["response"]) if row.get("response") is not None else None
    return Record(line, row.get("custom_id"), row.get("url"), status, row.get("request_id"), body)


def _actor_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIXES)}
    env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    return env


def score_dataset(
    ds: Any,
    settings: Settings | None = None,
    *,
    concurrency: int = 1,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    endpoints: Sequence[str] | None = None,
    api_key: str | None = None,
    **ray_remote_args: Any,
) -> Any:
    """``ds`` (a ``text`` column of request lines, optionally ``line``) -> a Dataset of RESULT_COLUMNS rows.

    ``concurrency`` actors, each reserving ``num_cpus`` / ``num_gpus`` (one engine per actor; a GPU
    actor with ``settings.tensor_parallel_size > 1`` needs that many GPUs). Two batches overlap on
    an actor (``max_concurrency=2``), so its engine is not idle while the next batch arrives."""
    ray_remote_args.setdefault("max_concurrency", 2)
    ray_remote_args.setdefault("runtime_env", {"env_vars": _actor_env()})
    return ds.map_batches(
        EndoRMActor,
        fn_constructor_kwargs={
            "settings": settings,
            "endpoints": list(endpoints) if endpoints else None,
            "api_key": api_key,
            "window": batch_size,
        },
        batch_size=batch_size,
        batch_format="numpy",
        concurrency=concurrency,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        **ray_remote_args,
    )


def to_item_rows(results: Any) -> Any:
    """One row per item, the columns of ``endorm batch``'s Parquet output."""
    return results.flat_map(lambda row: record_of_row(row).rows())


def _write_todo(input_path: Path, todo: Path, written: Any, sink: Any, progress: Any) -> tuple[int, int]:
    """The requests still to do -> ``todo`` (Parquet: line, text); lines refused on sight -> ``sink``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from endorm_server.batch.runner import plan

    schema = pa.schema([("line", pa.int64()), ("text", pa.string())])
    count = refused = 0
    lines: list[int] = []
    texts: list[str] = []
    with pq.ParquetWriter(todo, schema) as writer:
        for item in plan(input_path, written):
            if isinstance(item, Record):
                sink.write(item)
                progress.update(1, 0, 1)
                refused += 1
                continue
            request = {"custom_id": item.custom_id, "method": "POST", "url": item.url, "body": item.body}
            lines.append(item.line)
            texts.append(json.dumps(request))
            count += 1
            if len(lines) >= 4096:
                writer.write_table(pa.table({"line": lines, "text": texts}, schema=schema))
                lines, texts = [], []
        if lines:
            writer.write_table(pa.table({"line": lines, "text": texts}, schema=schema))
    return count, refused


def run_batch_file(
    input_path: Path,
    output_path: Path,
    settings: Settings,
    *,
    address: str = "auto",
    actors: int = 1,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    batch_size: int | None = None,
    endpoints: Sequence[str] | None = None,
    api_key: str | None = None,
) -> Any:
    """``endorm batch --ray ADDRESS``: the same output file as without Ray (``address``: a cluster's, auto,
    or local for a cluster of this process). Returns the run's Summary; its ``nodes`` counts the rows per node."""
    import ray

    from endorm_server.batch.progress import Progress
    from endorm_server.batch.runner import Summary, count_lines
    from endorm_server.batch.sinks import sink_for

    sink = sink_for(output_path)
    written = sink.open()
    total = count_lines(input_path)
    progress = Progress(total, done=len(written))
    t0 = time.monotonic()
    todo = output_path.with_name(output_path.name + ".todo.parquet")
    nodes: Counter[str] = Counter()
    count = errors = tokens = 0
    complete = False
    first_s: float | None = None
    first_tokens = 0
    try:
        pending, refused = _write_todo(input_path, todo, written, sink, progress)
        count = errors = refused
        if pending:
            ray.init(address=None if address == "local" else address, log_to_driver=True)
            from ray.data import DataContext

            ctx = DataContext.get_current()
            ctx.enable_progress_bars = False  # ours is on stderr
            ctx.wait_for_min_actors_s = ACTORS_START_S  # every engine up before the first batch: work is spread
            ctx.max_tasks_in_flight_per_actor = 2  # the two batches an actor overlaps; the rest go to idle actors
            ctx.execution_options.actor_locality_enabled = False  # rows are small, engines are the cost
            size = batch_size or DEFAULT_BATCH_SIZE
            ds = ray.data.read_parquet(str(todo)).repartition(target_num_rows_per_block=size)  # a block per batch
            results = score_dataset(
                ds,
                settings,
                concurrency=actors,
                num_cpus=num_cpus,
                num_gpus=num_gpus,
                batch_size=size,
                endpoints=endpoints,
                api_key=api_key,
            )
            for batch in results.iter_batches(batch_format="pandas", batch_size=None):
                first = first_s is None
                first_s = time.monotonic() - t0 if first_s is None else first_s
                for row in batch.to_dict("records"):
                    record = record_of_row(row)
                    sink.write(record)
                    nodes[row["node_id"]] += 1
                    count += 1
                    errors += not record.ok
                    tokens += record.tokens()
                    progress.update(1, record.tokens(), int(not record.ok))
                if first:
                    first_tokens = tokens
        complete = True
    finally:
        sink.close(complete)
        progress.close()
        if complete:
            todo.unlink(missing_ok=True)
    elapsed = time.monotonic() - t0
    return Summary(output_path, total, len(written), count, errors, tokens, elapsed, dict(nodes), first_s, first_tokens)
