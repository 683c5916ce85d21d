"""The one writer of a run file: buffered steps committed in batches, events and replays committed at once,
and old steps thinned so that the file stays bounded however long the run.

A flush is one SQLite transaction: a SIGKILL loses at most the steps buffered since the last one, and a
reader in another process never sees part of a flush. Durability is `synchronous=NORMAL` in WAL mode: every
commit survives the process being killed (only a power cut may lose the last ones).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import OutputPathError, RunFileError
from .records import ReplayRecord, RunEvent, encode
from .schema import DDL, FORMAT, VERSION, check_header, check_schema


@dataclass(frozen=True)
class Retention:
    """How a long run is kept bounded: steps older than the newest `recent` steps are thinned (every second
    kept step dropped, steps with an event never) whenever more than `budget` of them remain. A file then
    holds at most `budget + recent` steps plus the steps with events, whatever the run's length."""

    recent: int = 2000  # steps kept at full resolution, counted back from the newest
    budget: int = 4000  # older steps kept at most (thinned by halves, so old steps are evenly spaced)

    def __post_init__(self) -> None:
        for name in ("recent", "budget"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise RunFileError(f"Retention.{name} must be an integer >= 1 (steps), got {value!r}.")


@dataclass
class _Pending:
    step: int
    time: float
    scalars: Mapping[str, float]
    vectors: Mapping[str, Sequence[float]]


class RunWriter:
    """Appends steps to a new run file at `path`; `meta` (JSON-able values) describes the run.

    `flush_every` steps or `flush_seconds` seconds, whichever comes first, commit the buffered steps. A
    file already at `path` is refused unless it is a run file and `overwrite` is True."""

    def __init__(self, path: str | Path, meta: Mapping[str, Any], *, flush_every: int = 50,
                 flush_seconds: float = 5.0, retention: Retention | None = None, overwrite: bool = False) -> None:
        self.path = Path(path)
        self.flush_every, self.flush_seconds = flush_every, flush_seconds
        self.retention = retention or Retention()
        _clear(self.path, overwrite)
        try:
            self.db: sqlite3.Connection | None = sqlite3.connect(self.path, isolation_level=None)
        except sqlite3.Error as err:
            raise OutputPathError(f"cannot create the run file {self.path} ({err}); pass a path in a writable "
                                  "folder.") from None
        db = self.db
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        with db:  # the tables and the meta in one commit: a file killed now holds a whole run file or none
            db.execute("BEGIN")
            for statement in DDL.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", list({
                "format": FORMAT, "version": str(VERSION), "stride": "1", "created": str(time.time()),
                **{k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}}.items()))
        self._series: dict[str, tuple[str, tuple[str, ...]]] = {}
        self._pending: list[_Pending] = []
        self._last_flush = time.monotonic()
        self._stride = 1
        self._events: set[int] = set()
        self.last_step: int | None = None  # the last step added
        self.committed: int | None = None  # the last step on disk (a kill now loses only the steps after it)

    @property
    def replay_dir(self) -> Path:
        """The folder beside the run file that holds its replayed steps' traces."""
        return self.path.with_name(self.path.name + ".replays")

    # --- appending ------------------------------------------------------------------------------
    def declare(self, name: str, keys: Sequence[str] | None = None) -> None:
        """Name a metric before its first value: a scalar (`keys` None) or a vector with these column names."""
        kind, cols = ("scalar", ()) if keys is None else ("vector", tuple(keys))
        if self._series.get(name) == (kind, cols):
            return
        if name in self._series:
            raise RunFileError(f"metric {name!r} was declared as a {self._series[name][0]} of "
                               f"{len(self._series[name][1])} columns; declare it once.")
        self._series[name] = (kind, cols)
        self._open().execute("INSERT OR REPLACE INTO series VALUES (?, ?, ?)", (name, kind, json.dumps(cols)))

    def add_step(self, step: int, scalars: Mapping[str, float], vectors: Mapping[str, Sequence[float]]) -> None:
        """Buffer one step's values (each metric declared first); commits when the batch is due."""
        self._open()
        if self.last_step is not None and step <= self.last_step:
            raise RunFileError(f"step {step} follows step {self.last_step}; steps must increase.")
        for name, values in vectors.items():
            n = len(self._series.get(name, ("", ()))[1])
            if len(values) != n:
                raise RunFileError(f"metric {name!r} got {len(values)} values for {n} declared columns.")
        self.last_step = step
        self._pending.append(_Pending(step, time.time(), scalars, vectors))
        if len(self._pending) >= self.flush_every or time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def add_event(self, event: RunEvent) -> None:
        """Commit a trigger that fired (with every step buffered before it)."""
        self._events.add(event.step)
        self.flush()
        self._open().execute("INSERT INTO events (step, kind, detail, value) VALUES (?, ?, ?, ?)",
                             (event.step, event.kind, event.detail, event.value))

    def add_replay(self, replay: ReplayRecord) -> None:
        """Commit a replayed step's record (its trace file already written under `replay_dir`)."""
        self.flush()
        self._open().execute("INSERT OR REPLACE INTO replays VALUES (?, ?, ?, ?)",
                             (replay.step, replay.trace, replay.first_module, json.dumps(replay.findings)))

    def flush(self) -> None:
        """Commit every buffered step in one transaction, then thin old steps if the file is past its budget."""
        db = self._open()
        pending, self._pending = self._pending, []
        self._last_flush = time.monotonic()
        if not pending:
            return
        scalars = [(n, p.step, _real(v)) for p in pending for n, v in p.scalars.items()]
        vectors = [(n, p.step, encode(v)) for p in pending for n, v in p.vectors.items()]
        with db:
            db.execute("BEGIN")
            db.executemany("INSERT INTO scalars VALUES (?, ?, ?)", scalars)
            db.executemany("INSERT INTO vectors VALUES (?, ?, ?)", vectors)
            db.executemany("INSERT INTO steps VALUES (?, ?)", [(p.step, p.time) for p in pending])
        self.committed = pending[-1].step
        self._thin(pending[-1].step)

    def close(self) -> None:
        """Commit what is buffered and close the file (a second close does nothing)."""
        if self.db is None:
            return
        try:
            self.flush()
        finally:
            self.db.close()
            self.db = None

    # --- internals ------------------------------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        if self.db is None:
            raise RunFileError(f"the run file {self.path} is closed; start a new RunRecorder to record again.")
        return self.db

    def _thin(self, newest: int) -> None:
        """Drop the old steps (older than the newest `recent`) that are not multiples of the stride, keeping
        steps with events; double the stride while more than `budget` old steps remain. The stride then
        tracks the run's length (old steps / stride <= budget), so the old steps stay evenly spaced."""
        db = self._open()
        cutoff = newest - self.retention.recent
        if cutoff <= 0:
            return
        self._delete_off_stride(db, cutoff)
        while db.execute("SELECT COUNT(*) FROM steps WHERE step < ?", (cutoff,)).fetchone()[0] > self.retention.budget:
            self._stride *= 2
            self._delete_off_stride(db, cutoff)

    def _delete_off_stride(self, db: sqlite3.Connection, cutoff: int) -> None:
        if self._stride == 1:
            return
        keep_events = "step NOT IN (SELECT step FROM events)"
        with db:
            db.execute("BEGIN")
            for table in ("steps", "scalars", "vectors"):
                db.execute(f"DELETE FROM {table} WHERE step < ? AND step % ? != 0 AND {keep_events}",  # noqa: S608
                           (cutoff, self._stride))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('stride', ?)", (str(self._stride),))


def _real(v: float) -> float | None:
    return None if v != v else v  # NaN is stored as NULL (SQLite does so anyway); the reader reads it back as NaN


def _clear(path: Path, overwrite: bool) -> None:
    """Refuse to replace anything but a run file, and that only with `overwrite`; then remove it."""
    if path.is_dir():
        raise OutputPathError(f"{path} is a folder; pass a file path for the run (e.g. 'run.wbrun').")
    if not path.parent.exists():
        raise OutputPathError(f"the folder {path.parent} does not exist; create it or pass another path.")
    if not path.exists():
        return
    try:
        check_header(path)
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            check_schema(db, path)
        finally:
            db.close()
    except RunFileError:
        raise RunFileError(f"{path} exists and is not a run file; it is left alone. Pass another path.") from None
    if not overwrite:
        raise RunFileError(f"{path} already holds a run; pass overwrite=True to replace it, or another path.")
    for extra in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        extra.unlink(missing_ok=True)
