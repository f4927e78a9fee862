"""A local Hugging Face cache built in a test's tmp dir, in huggingface_hub's own layout
(``models--org--name/blobs/<sha256>``, ``snapshots/<commit>/<file>`` linking to its blob,
``refs/<branch>`` holding the commit), so hub ids resolve offline from it."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path


def commit_of(text: str) -> str:
    """A 40-hex commit id (a hub revision) named by ``text``."""
    return hashlib.sha1(text.encode()).hexdigest()


def add_snapshot(cache: Path, repo_id: str, source: Path, commit: str, *, ref: str | None = "main") -> Path:
    """Copy ``source``'s files into ``cache`` as the snapshot ``commit`` of ``repo_id`` (``ref`` points at it)."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for f in sorted(source.iterdir()):
        if not f.is_file():
            continue
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        if not blob.exists():
            shutil.copyfile(f, blob)
        (snapshot / f.name).symlink_to(Path("..", "..", "blobs", blob.name))
    if ref is not None:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snapshot
