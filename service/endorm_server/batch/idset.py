"""An exact set of custom_ids whose memory does not grow with the file.

A batch run must know every custom_id it has seen (a later line reusing one is a duplicate) and,
on a resume, every one already in the output. A Python set of them costs about a hundred bytes a
row, so a file of millions of rows would hold its ids in RAM. ``IdSet`` keeps them in SQLite's
private temporary database (``sqlite3.connect("")``): pages stay in a bounded cache and spill to a
temporary file that SQLite deletes when the connection closes. Lookups and inserts are exact
(no hashing that could call two ids one).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Set

CACHE_KIB = 8192  # SQLite's page cache for the ids; beyond it pages go to the temporary file


class IdSet(Set[str]):
    def __init__(self, ids: Iterable[str] = ()) -> None:
        self._db = sqlite3.connect("", isolation_level=None, check_same_thread=False)
        for pragma in ("journal_mode=OFF", "synchronous=OFF", f"cache_size=-{CACHE_KIB}"):
            self._db.execute(f"PRAGMA {pragma}")
        self._db.execute("CREATE TABLE ids (id TEXT PRIMARY KEY) WITHOUT ROWID")
        self._len = 0
        for i in ids:
            self.add(i)

    def add(self, custom_id: str) -> bool:
        """Add ``custom_id``; True if it was not there."""
        new = self._db.execute("INSERT OR IGNORE INTO ids VALUES (?)", (custom_id,)).rowcount == 1
        self._len += new
        return new

    def __contains__(self, custom_id: object) -> bool:
        if not isinstance(custom_id, str):
            return False
        return self._db.execute("SELECT 1 FROM ids WHERE id = ?", (custom_id,)).fetchone() is not None

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[str]:
        return (row[0] for row in self._db.execute("SELECT id FROM ids"))

    def close(self) -> None:
        self._db.close()
