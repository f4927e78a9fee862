"""Build a model directory once, atomically: concurrent starts share one build."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def build_into_place(final: Path, build: Callable[[Path], object]) -> Path:
    """``final`` if it holds a model, else ``build`` one in a temporary sibling and rename it there.

    The rename is atomic, so concurrent processes are safe: the loser of a race
    discards its copy and uses the winner's.
    """
    if (final / "config.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        build(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "config.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
