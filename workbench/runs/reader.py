"""`RunFile`: a run file opened for reading, by the job's own process or by a notebook while the job appends.

Every query reads the newest commit (WAL readers never block the writer and never see half a flush).
A file whose end was cut off (a copy taken mid-write, a full disk) opens with every readable step, copied
into memory: `recovered` is True and `dropped_bytes` says how many bytes the cut took.
"""

from __future__ import annotations

import json
import math
import sqlite3
import warnings
from pathlib import Path
from typing import Any

from ..errors import RunFileError
from .records import ReplayRecord, RunEvent, decode
from .recover import dropped_bytes, salvage
from .schema import check_header, check_schema


class RunFile:
    """A run file's steps, metrics, trigger events and replayed steps.

    Scalars (loss, lr, grad_norm, max_logit, ...) come back as (steps, values); vectors (grad_norm per
    module, act_rms per block, attn_entropy per block and head, ...) as (steps, keys, rows), one row of
    len(keys) values per step; NaN stays NaN. `to_dataframe` gives the same as pandas frames."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        check_header(self.path)
        self.dropped_bytes, self.recovered = 0, False
        db: sqlite3.Connection | None = None
        try:
            db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None)
            self.meta = check_schema(db, self.path)
            self._probe(db)
        except (sqlite3.DatabaseError, RunFileError) as err:
            if db is not None:
                db.close()
            db = None
            if isinstance(err, RunFileError) and "damaged" not in str(err):
                raise
        if db is None:  # damaged: a killed writer's file never is (its WAL completes it), a cut copy may be
            self.dropped_bytes = dropped_bytes(self.path)
            db = salvage(self.path)
            self.meta = check_schema(db, self.path)
            self.recovered = True
            warnings.warn(f"{self.path} is damaged ({self.dropped_bytes} bytes missing from its end); opened "
                          f"with the {self._count(db)} complete steps that could be read.", stacklevel=2)
        self._db: sqlite3.Connection | None = db

    @staticmethod
    def _probe(db: sqlite3.Connection) -> None:
        """Read every table once, so a damaged page is found on open rather than by a later query."""
        for table in ("steps", "scalars", "vectors", "events", "replays"):
            for _ in db.execute(f"SELECT * FROM {table}"):  # noqa: S608 - table names are ours
                pass

    @staticmethod
    def _count(db: sqlite3.Connection) -> int:
        return int(db.execute("SELECT COUNT(*) FROM steps").fetchone()[0])

    # --- reading --------------------------------------------------------------------------------
    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RunFileError(f"the run file {self.path} was closed; open it again with workbench.RunFile(path).")
        return self._db

    def steps(self) -> list[int]:
        """The complete steps the file holds, in order (old steps thinned: see `Retention`)."""
        return [r[0] for r in self.db.execute("SELECT step FROM steps ORDER BY step")]

    @property
    def last_step(self) -> int | None:
        return self.db.execute("SELECT MAX(step) FROM steps").fetchone()[0]

    def metrics(self) -> dict[str, list[str]]:
        """Every metric recorded: a scalar maps to [], a vector to its column names."""
        return {n: json.loads(k) if kind == "vector" else []
                for n, kind, k in self.db.execute("SELECT name, kind, keys FROM series ORDER BY name")}

    def scalar(self, name: str) -> tuple[list[int], list[float]]:
        """(steps, values) of one scalar metric, over the complete steps."""
        self._known(name, "scalar")
        rows = self.db.execute("SELECT s.step, s.value FROM scalars s JOIN steps USING (step) WHERE s.name = ? "
                               "ORDER BY s.step", (name,)).fetchall()
        return [r[0] for r in rows], [math.nan if r[1] is None else float(r[1]) for r in rows]

    def vector(self, name: str) -> tuple[list[int], list[str], list[list[float]]]:
        """(steps, keys, rows) of one vector metric: rows[i][j] is keys[j] at steps[i]."""
        keys = self._known(name, "vector")
        rows = self.db.execute("SELECT v.step, v.data FROM vectors v JOIN steps USING (step) WHERE v.name = ? "
                               "ORDER BY v.step", (name,)).fetchall()
        return [r[0] for r in rows], keys, [decode(r[1]) for r in rows]

    def events(self) -> list[RunEvent]:
        """The triggers that fired, in order."""
        return [RunEvent(s, k, d, math.nan if v is None else float(v))
                for s, k, d, v in self.db.execute("SELECT step, kind, detail, value FROM events ORDER BY id")]

    def replays(self) -> list[ReplayRecord]:
        """The replayed steps, in order; `trace_path(r)` locates each one's trace."""
        return [ReplayRecord.from_row(*r) for r in self.db.execute(
            "SELECT step, trace, first_module, findings FROM replays ORDER BY step")]

    def trace_path(self, replay: ReplayRecord) -> Path:
        """The saved trace of a replayed step (read it with `workbench.Trace.load`)."""
        return self.path.parent / replay.trace

    def to_dataframe(self, metric: str | None = None) -> Any:
        """pandas frames: None gives every scalar, one column each, indexed by step; a vector metric's name
        gives one column per key; "events" gives the events table."""
        import pandas as pd

        if metric == "events":
            return pd.DataFrame([e.__dict__ for e in self.events()], columns=["step", "kind", "detail", "value"])
        if metric is None:
            names = [n for n, keys in self.metrics().items() if not keys]
            cols = {n: pd.Series(*reversed(self.scalar(n)), dtype="float64") for n in names}
            frame = pd.DataFrame(cols, index=pd.Index(self.steps(), name="step"))
            return frame
        steps, keys, rows = self.vector(metric)
        return pd.DataFrame(rows, index=pd.Index(steps, name="step"), columns=keys, dtype="float64")

    def _known(self, name: str, kind: str) -> list[str]:
        row = self.db.execute("SELECT kind, keys FROM series WHERE name = ?", (name,)).fetchone()
        if row is None or row[0] != kind:
            have = sorted(n for n, k in self.db.execute("SELECT name, kind FROM series") if k == kind)
            raise RunFileError(f"{self.path} has no {kind} metric {name!r}; it has {have}.")
        return json.loads(row[1])

    # --- closing --------------------------------------------------------------------------------
    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> RunFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._db is None:
            return f"RunFile({str(self.path)!r}, closed)"
        return (f"RunFile({str(self.path)!r}, {self._count(self._db)} steps, last {self.last_step}, "
                f"{len(self.events())} events, {len(self.replays())} replays)")
