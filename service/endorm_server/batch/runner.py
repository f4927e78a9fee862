"""The batch loop: read the input lazily, send up to ``window`` requests at once, write each answer
as it completes (so output order is completion order, keyed by custom_id).

Memory is bounded by the window (requests in flight and their answers); the custom_ids seen (to
find duplicates, and to skip what a killed run already wrote) are kept out of RAM (idset.py).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from endorm_server.batch.backends import Backend
from endorm_server.batch.idset import IdSet
from endorm_server.batch.progress import Progress
from endorm_server.batch.records import Record
from endorm_server.batch.requests import BatchRequest, LineError, duplicate, parse_line
from endorm_server.batch.sinks import Sink, Written

DEFAULT_WINDOW = 256


def read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) of each non-blank line, read lazily."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, text in enumerate(f, 1):
            if text.strip():
                yield number, text


def count_lines(path: Path) -> int | None:
    """The progress line's total; None for a pipe (it can be read once only)."""
    if not path.is_file():
        return None
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def plan(path: Path, written: Written) -> Iterator[BatchRequest | Record]:
    """What this run must do, line by line: a request to send, or a line's own error to write;
    lines whose output is already written are left out."""
    seen = IdSet()
    extra: Counter[str] = Counter()  # later lines per custom_id (each is a duplicate_custom_id line)
    try:
        for number, text in read_lines(path):
            parsed = parse_line(text, number)
            cid = parsed.custom_id
            if cid is None:  # refused before a custom_id was known: keyed by its line
                if number not in written.lines:
                    yield Record.of_error(parsed)  # type: ignore[arg-type]
                continue
            if not seen.add(cid):
                extra[cid] += 1
                if extra[cid] > written.duplicates[cid]:
                    yield Record.of_error(duplicate(number, cid))
                continue
            if cid in written.ids:
                continue
            yield Record.of_error(parsed) if isinstance(parsed, LineError) else parsed
    finally:
        seen.close()


@dataclass
class Summary:
    output: Path
    total: int | None  # input lines (None: read from a pipe)
    skipped: int  # already in the output
    written: int  # lines written by this run
    errors: int  # of which not 2xx (or never sent)
    tokens: int
    elapsed_s: float
    nodes: dict[str, int] = field(default_factory=dict)  # Ray: rows scored per node id
    first_s: float | None = None  # when the first answer came back (Ray: after every actor's engine started)
    first_tokens: int = 0  # tokens written with it (Ray: the first batch): the steady rate leaves them out

    def describe(self) -> str:
        rate = self.tokens / self.elapsed_s if self.elapsed_s else 0.0
        out = (
            f"{self.written} lines written ({self.errors} errors), {self.skipped} already in {self.output}; "
            f"{self.tokens} tokens in {self.elapsed_s:.1f} s ({rate:.0f} tokens/s)"
        )
        if self.first_s is not None:
            out += f"; first answer after {self.first_s:.1f} s with {self.first_tokens} tokens"
            if self.elapsed_s > self.first_s:
                out += f", then {(self.tokens - self.first_tokens) / (self.elapsed_s - self.first_s):.0f} tokens/s"
        per_node = ", ".join(f"{node}: {n}" for node, n in sorted(self.nodes.items()))
        return out + (f"; rows per Ray node: {per_node}" if per_node else "")


async def answer(backend: Backend, request: BatchRequest) -> Record:
    reply = await backend.send(request)
    return Record(request.line, request.custom_id, request.route, reply.status_code, reply.request_id, reply.body)


async def run(
    input_path: Path,
    output_path: Path,
    sink: Sink,
    backend: Backend,
    *,
    window: int = DEFAULT_WINDOW,
    tty: bool | None = None,
) -> Summary:
    """Score ``input_path`` into ``sink`` through ``backend``; the sink is opened (resume) and closed here."""
    written = sink.open()
    total = count_lines(input_path)
    progress = Progress(total, done=len(written), tty=tty)
    t0 = time.monotonic()
    count = errors = tokens = 0
    pending: set[asyncio.Task[Record]] = set()
    complete = False
    first_s: float | None = None
    first_tokens = 0

    def write(record: Record) -> None:
        nonlocal count, errors, tokens, first_s, first_tokens
        sink.write(record)
        count += 1
        errors += not record.ok
        tokens += record.tokens()
        progress.update(1, record.tokens(), int(not record.ok))
        if first_s is None and record.status_code is not None:
            first_s, first_tokens = time.monotonic() - t0, tokens

    async def drain() -> None:
        nonlocal pending
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        failed = [task.exception() for task in done if task.exception() is not None]
        for task in done:
            if task.exception() is None:
                write(task.result())
        if failed:  # the engine or the fleet is gone: stop; what is written stays, a rerun does the rest
            raise failed[0]  # type: ignore[misc]

    try:
        for item in plan(input_path, written):
            if isinstance(item, Record):
                write(item)
                continue
            while len(pending) >= window:
                await drain()
            pending.add(asyncio.create_task(answer(backend, item)))
        while pending:
            await drain()
        complete = True
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        sink.close(complete)
        progress.close()
    elapsed = time.monotonic() - t0
    return Summary(
        output_path, total, len(written), count, errors, tokens, elapsed, first_s=first_s, first_tokens=first_tokens
    )
