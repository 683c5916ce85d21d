"""Reading what survives of a damaged run file: the bytes a truncation dropped, and every readable row copied
into an in-memory run file.

SQLite never tears a committed transaction, but a file copied while written, cut by a full disk or a
truncation loses pages. A query that meets a missing or zeroed page fails, so rows are read in key order
up to the damage and the read resumes past it (`_Scan`).
A step is kept when its `steps` row is readable: rows of other steps are dropped with it.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from ..errors import RunFileError
from .schema import DDL

_KEY_END = 2**62  # beyond any step or event id


def dropped_bytes(path: Path) -> int:
    """Bytes missing from the end of the database file: the page count its header declares times the page
    size, less the file's size (0 for a whole file)."""
    with path.open("rb") as f:
        head = f.read(100)
    if len(head) < 100:
        return max(0, 100 - len(head))
    page_size = int.from_bytes(head[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(head[28:32], "big")
    if int.from_bytes(head[24:28], "big") != int.from_bytes(head[92:96], "big"):
        return 0  # the header's page count is stale (SQLite then goes by the file's size)
    return max(0, pages * page_size - path.stat().st_size)


class _Scan:
    """Rows of one query `sql` (ending in `key >= ? ORDER BY key`), read in key order past damaged pages.

    A scan stops at the first page it cannot read; it resumes past the damage by galloping: probing from the
    last key read + 1, 2, 4, ... until a query starts again (at most 63 probes per damaged stretch)."""

    def __init__(self, db: sqlite3.Connection, sql: str, params: tuple = (), key: int = 0) -> None:
        self.db, self.sql, self.params, self.key = db, sql, params, key

    def rows(self, start: int) -> list[Any]:
        out: list[Any] = []
        while True:
            last = self._read(start, out)
            if last is None:
                return out
            resumed = self._resume(last)
            if resumed is None:
                return out
            start = resumed

    def _read(self, start: int, out: list[Any]) -> int | None:
        """Append rows from `start` on; None when the scan ended, else the last key read before damage."""
        last = start - 1
        try:
            for row in self.db.execute(self.sql, (*self.params, start)):
                out.append(row)
                last = row[self.key]
        except sqlite3.DatabaseError:
            return last
        return None

    def _resume(self, last: int) -> int | None:
        step = 1
        while last + step < _KEY_END:
            try:
                self.db.execute(self.sql, (*self.params, last + step)).fetchone()
                return last + step
            except sqlite3.DatabaseError:
                step *= 2
        return None


def _padded(path: Path) -> sqlite3.Connection:
    """The damaged file, in memory, zero-filled from its last whole page back to the size its header declares
    (SQLite refuses a file shorter than that; a zeroed page fails alone, as a damaged page, when a read
    reaches it), and marked as a rollback-journal database (an in-memory copy has no WAL; the WAL of a cut
    file is not read)."""
    data = bytearray(path.read_bytes())
    full = len(data) + dropped_bytes(path)
    if len(data) >= 100:
        page = int.from_bytes(data[16:18], "big")
        page = 65536 if page == 1 else page
        del data[len(data) // page * page:]  # a page cut part-way holds rows cut part-way: drop it whole
    data.extend(bytes(full - len(data)))
    if len(data) >= 100:
        data[18:20] = b"\x01\x01"
    db = sqlite3.connect(":memory:")
    try:
        db.deserialize(bytes(data))
    except sqlite3.DatabaseError as err:
        db.close()
        raise RunFileError(f"{path} is damaged past its first pages ({err}); nothing of the run can be read. "
                           "Record the run again.") from None
    return db


def salvage(path: Path) -> sqlite3.Connection:
    """An in-memory run file holding every readable row of the damaged file at `path`."""
    src = _padded(path)
    try:
        try:
            empty = src.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 0
        except sqlite3.DatabaseError:
            empty = False
        if empty:  # a writer killed before its first commit (its WAL, if any, holds no commit)
            raise RunFileError(f"{path} holds no run yet: its writer has not committed (or was stopped before "
                               "its first commit). Open it again once the job has started writing.")
        try:
            meta = src.execute("SELECT key, value FROM meta").fetchall()
            series = src.execute("SELECT name, kind, keys FROM series").fetchall()
        except sqlite3.DatabaseError as err:
            raise RunFileError(f"{path} is damaged past its first pages ({err}); nothing of the run can be "
                               "read. Record the run again.") from None
        steps = _Scan(src, "SELECT step, time FROM steps WHERE step >= ? ORDER BY step").rows(0)
        kept = {s for s, _ in steps}
        scalars: list[Any] = []
        vectors: list[Any] = []
        for name, kind, _ in series:
            table, col = ("scalars", "value") if kind == "scalar" else ("vectors", "data")
            sql = f"SELECT name, step, {col} FROM {table} WHERE name = ? AND step >= ? ORDER BY step"
            rows = _Scan(src, sql, (name,), key=1).rows(0)
            (scalars if kind == "scalar" else vectors).extend(r for r in rows if r[1] in kept)
        events = _Scan(src, "SELECT id, step, kind, detail, value FROM events WHERE id >= ? ORDER BY id").rows(0)
        replays = _Scan(src, "SELECT step, trace, first_module, findings FROM replays WHERE step >= ? "
                        "ORDER BY step").rows(0)
    finally:
        src.close()
    db = sqlite3.connect(":memory:", isolation_level=None)
    db.executescript(DDL)
    db.executemany("INSERT OR IGNORE INTO meta VALUES (?, ?)", meta)
    db.executemany("INSERT OR IGNORE INTO series VALUES (?, ?, ?)", series)
    db.executemany("INSERT OR IGNORE INTO steps VALUES (?, ?)", steps)
    db.executemany("INSERT OR IGNORE INTO scalars VALUES (?, ?, ?)", scalars)
    db.executemany("INSERT OR IGNORE INTO vectors VALUES (?, ?, ?)", vectors)
    db.executemany("INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?)", events)
    db.executemany("INSERT OR IGNORE INTO replays VALUES (?, ?, ?, ?)", replays)
    return db
