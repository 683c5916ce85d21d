"""The run file's layout: one SQLite database in WAL mode, its tables, its version, and the checks made on open.

Why SQLite in WAL mode, not Arrow IPC or Parquet:
- a reader in another process (a notebook attached to a job) sees every committed transaction while the writer
  appends, with no lock held against the writer (WAL readers and one writer run concurrently);
- a transaction is atomic on disk: a SIGKILL at any moment leaves the file at its last commit (the WAL's
  checksummed frames past it are ignored on the next open), so a flush is a commit and nothing half-written is
  ever read. An Arrow IPC stream killed mid-batch ends in a torn message that every reader must learn to skip,
  and a Parquet file has no footer until it is closed (row groups written before a kill are unreadable);
- old steps can be thinned in place (DELETE, the freed pages reused), which bounds the file over 100k steps;
  append-only formats would have to rewrite the file;
- it is in the standard library (sqlite3), so the job needs no new dependency and any tool can read the file.

Tables (version 1):
  meta(key, value)                     format, version, model, blocks, config, created (text; JSON where noted)
  series(name, kind, keys)             every metric: kind "scalar" or "vector", and a vector's column names
                                       (JSON list, e.g. module paths)
  steps(step, time)                    the complete steps: written last in each flush's transaction
  scalars(name, step, value)           one number per step and metric; NULL stands for NaN (SQLite stores NaN so)
  vectors(name, step, data)            one float64 little-endian array per step and metric, in `series` order
  events(id, step, kind, detail, value)  a trigger that fired
  replays(step, trace, first_module, findings)  a replayed step: its trace file (relative to the run file's
                                       folder), the first module gone wrong, the doctor's findings (JSON)
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from ..errors import RunFileError

FORMAT, VERSION = "workbench.run", 1
SQLITE_MAGIC = b"SQLite format 3\x00"
REQUIRED_TABLES = ("meta", "series", "steps", "scalars", "vectors", "events", "replays")

DDL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS series (name TEXT PRIMARY KEY, kind TEXT NOT NULL, keys TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS steps (step INTEGER PRIMARY KEY, time REAL NOT NULL);
CREATE TABLE IF NOT EXISTS scalars (name TEXT NOT NULL, step INTEGER NOT NULL, value REAL,
                                    PRIMARY KEY (name, step)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS vectors (name TEXT NOT NULL, step INTEGER NOT NULL, data BLOB NOT NULL,
                                    PRIMARY KEY (name, step)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, step INTEGER NOT NULL, kind TEXT NOT NULL,
                                   detail TEXT NOT NULL, value REAL);
CREATE TABLE IF NOT EXISTS replays (step INTEGER PRIMARY KEY, trace TEXT NOT NULL, first_module TEXT,
                                    findings TEXT NOT NULL);
"""


def check_header(path: Path) -> None:
    """Refuse a path that is missing, a folder, or a file that is not SQLite, before SQLite touches it."""
    if not path.exists():
        raise RunFileError(f"{path} does not exist; pass the path a RunRecorder writes to (e.g. 'run.wbrun').")
    if path.is_dir():
        raise RunFileError(f"{path} is a folder; pass the run file inside it (the path given to RunRecorder).")
    with path.open("rb") as f:
        head = f.read(len(SQLITE_MAGIC))
    if not head:  # SQLite writes the header with the first commit
        raise RunFileError(f"{path} holds no run yet: it is empty (its writer has not committed, or was stopped "
                           "before its first commit). Open it again once the job has started writing.")
    if head != SQLITE_MAGIC:
        raise RunFileError(f"{path} is not a run file (it is not an SQLite database); pass a file written by "
                           "workbench.RunRecorder.")


def check_schema(db: sqlite3.Connection, path: Path) -> dict[str, str]:
    """The file's meta table, after checking that it is a run file of a version this workbench reads."""
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        meta = dict(db.execute("SELECT key, value FROM meta")) if "meta" in tables else {}
    except sqlite3.DatabaseError as err:
        raise RunFileError(f"{path} cannot be read as a run file ({err}); it is damaged beyond its header or not "
                           "a run file. Pass a file written by workbench.RunRecorder.") from None
    if not tables:
        raise RunFileError(f"{path} holds no run yet: its writer has not committed (or was stopped before "
                           "its first commit). Open it again once the job has started writing.")
    if meta.get("format") != FORMAT:
        raise RunFileError(f"{path} is an SQLite database but not a run file (no format={FORMAT!r} in a meta "
                           "table); pass a file written by workbench.RunRecorder.")
    missing = [t for t in REQUIRED_TABLES if t not in tables]
    if missing:
        raise RunFileError(f"{path} is a run file without the tables {missing}; it was not written by "
                           "workbench.RunRecorder or was edited by hand. Record the run again.")
    try:
        version = int(meta.get("version", ""))
    except ValueError:
        raise RunFileError(f"{path} has a malformed version {meta.get('version')!r}; record the run again.") from None
    if version > VERSION:
        raise RunFileError(f"{path} is a run file of version {version}; this workbench reads up to {VERSION}. "
                           "Upgrade workbench to read it.")
    return meta
