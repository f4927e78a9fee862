"""SHA-256 of model files, with an on-disk cache so a restart does not re-read big weights.

The cache (``cache_dir/file-hashes``) is keyed by the file's absolute path, size and
mtime; a rewritten file (new mtime) is hashed again.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

_HASH_CHUNK = 1 << 22
_CACHE_MIN_BYTES = 16 << 20  # smaller files are hashed every time
_PROGRESS_MIN_BYTES = 64 << 20


def file_sha256(path: Path, *, progress: bool = True) -> str:
    """Content hash of ``path`` (read in 4 MiB chunks, with a progress bar for big files)."""
    from tqdm.auto import tqdm

    digest = hashlib.sha256()
    size = path.stat().st_size
    with (
        path.open("rb") as f,
        tqdm(
            total=size,
            unit="B",
            unit_scale=True,
            desc=f"hashing {path.name}",
            disable=not progress or size < _PROGRESS_MIN_BYTES,
        ) as bar,
    ):
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def cached_file_sha256(path: Path, cache_dir: Path | None) -> str:
    """``file_sha256``, remembered under ``cache_dir`` for files of 16 MiB and more."""
    st = path.stat()
    if cache_dir is None or st.st_size < _CACHE_MIN_BYTES:
        return file_sha256(path)
    key = hashlib.sha1(str(path.resolve()).encode()).hexdigest()
    entry = Path(cache_dir) / "file-hashes" / f"{key}.json"
    stamp = {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    try:
        cached = json.loads(entry.read_text())
        if all(cached.get(k) == v for k, v in stamp.items()):
            return str(cached["sha256"])
    except (OSError, ValueError, KeyError):
        pass
    digest = file_sha256(path)
    try:  # write-then-rename: concurrent starts never read a half-written entry
        entry.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=entry.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump({**stamp, "sha256": digest}, f)
        os.replace(tmp, entry)
    except OSError:
        pass  # a read-only cache only costs a re-hash next time
    return digest
