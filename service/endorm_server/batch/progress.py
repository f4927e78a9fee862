"""Progress on stderr: a tqdm bar (rows, tokens/s, ETA) on a terminal, plain log lines otherwise
(a log file or a CI console gets one readable line per interval, not carriage returns)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

LOG_INTERVAL_S = 10.0


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    def __init__(
        self,
        total: int | None,
        *,
        done: int = 0,
        stream: TextIO | None = None,
        tty: bool | None = None,
        interval_s: float = LOG_INTERVAL_S,
    ) -> None:
        self.stream = stream or sys.stderr
        self.total = total
        self.rows = done  # rows already in the output count toward the total, not the rate
        self.tokens = 0
        self.errors = 0
        self._start_rows = done
        self._t0 = time.monotonic()
        self._last = self._t0
        self.interval_s = interval_s
        self._bar = None
        if self.stream.isatty() if tty is None else tty:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=done, file=self.stream, unit="row", dynamic_ncols=True)

    def update(self, rows: int, tokens: int, errors: int = 0) -> None:
        self.rows += rows
        self.tokens += tokens
        self.errors += errors
        now = time.monotonic()
        if self._bar is not None:
            self._bar.update(rows)
            self._bar.set_postfix_str(f"{self.tokens / max(now - self._t0, 1e-9):.0f} tok/s", refresh=False)
        elif now - self._last >= self.interval_s:
            self._last = now
            print(self.line(now), file=self.stream, flush=True)

    def line(self, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        elapsed = max(now - self._t0, 1e-9)
        new = self.rows - self._start_rows
        rate = new / elapsed
        of = f"/{self.total}" if self.total is not None else ""
        eta = ""
        if self.total is not None and rate > 0:
            eta = f", ETA {_duration(max(self.total - self.rows, 0) / rate)}"
        return (
            f"endorm batch: {self.rows}{of} rows, {rate:.1f} rows/s, {self.tokens / elapsed:.0f} tokens/s, "
            f"{self.errors} errors, {_duration(elapsed)} elapsed{eta}"
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        else:
            print(self.line(), file=self.stream, flush=True)
