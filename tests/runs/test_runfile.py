"""The run file: values read back exactly, a reader in another connection sees each flush whole, a foreign,
closed or truncated file, and the size bound over 100k steps."""

from __future__ import annotations

import math
import sqlite3
import warnings
from pathlib import Path

import pytest

from workbench.errors import OutputPathError, RunFileError
from workbench.runs import Retention, RunEvent, RunFile, RunWriter

MODULES = [f"blocks.{i}.{p}" for i in range(4) for p in ("attn", "mlp")]


def _values(step: int) -> tuple[dict[str, float], dict[str, list[float]]]:
    return {"loss": 10.0 / (step + 1), "lr": 1e-3}, {"grad_norm/module": [step + j / 8 for j in range(len(MODULES))]}


def _writer(path: Path, **kwargs) -> RunWriter:
    w = RunWriter(path, {"model": "Test"}, **kwargs)
    w.declare("loss")
    w.declare("lr")
    w.declare("grad_norm/module", MODULES)
    return w


def test_values_read_back_exactly(tmp_path: Path) -> None:
    path = tmp_path / "run.wbrun"
    w = _writer(path, flush_every=4)
    for s in range(10):
        scalars, vectors = _values(s)
        w.add_step(s, {**scalars, "loss": math.nan} if s == 3 else scalars, vectors)
    w.add_event(RunEvent(3, "nonfinite", "loss", math.nan))
    w.close()
    with RunFile(path) as r:
        assert r.steps() == list(range(10))
        steps, loss = r.scalar("loss")
        assert steps == list(range(10)) and math.isnan(loss[3])
        assert [v for i, v in enumerate(loss) if i != 3] == [10.0 / (s + 1) for s in range(10) if s != 3]
        steps, keys, rows = r.vector("grad_norm/module")
        assert keys == MODULES and rows[7] == _values(7)[1]["grad_norm/module"]
        frame = r.to_dataframe("grad_norm/module")
        assert list(frame.columns) == MODULES and frame.loc[9, MODULES[2]] == 9.25
        assert r.to_dataframe()["lr"].tolist() == [1e-3] * 10
        assert [(e.step, e.kind) for e in r.events()] == [(3, "nonfinite")]
        assert r.meta["model"] == '"Test"' or r.meta["model"] == "Test"


def test_a_reader_sees_each_flush_whole_while_the_writer_appends(tmp_path: Path) -> None:
    path = tmp_path / "run.wbrun"
    w = _writer(path, flush_every=5, flush_seconds=3600.0)
    r = RunFile(path)
    for s in range(12):
        w.add_step(s, *_values(s))
        assert r.steps() == list(range(5 * ((s + 1) // 5)))  # nothing of a flush shows before its commit
    w.close()
    assert r.steps() == list(range(12))
    r.close()


def test_foreign_files_are_refused(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a run")
    with pytest.raises(RunFileError, match="not a run file"):
        RunFile(text)
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(RunFileError, match="not a run file"):
        RunFile(other)
    with pytest.raises(RunFileError, match="does not exist"):
        RunFile(tmp_path / "missing.wbrun")
    with pytest.raises(RunFileError, match="is not a run file; it is left alone"):
        RunWriter(text, {}, overwrite=True)
    assert text.read_text() == "not a run"
    with pytest.raises(OutputPathError, match="does not exist"):
        RunWriter(tmp_path / "no" / "run.wbrun", {})


def test_an_existing_run_is_replaced_only_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "run.wbrun"
    _writer(path).close()
    with pytest.raises(RunFileError, match="overwrite=True"):
        RunWriter(path, {})
    _writer(path, overwrite=True).close()


def test_a_closed_file_says_how_to_reopen(tmp_path: Path) -> None:
    path = tmp_path / "run.wbrun"
    w = _writer(path)
    w.close()
    r = RunFile(path)
    r.close()
    with pytest.raises(RunFileError, match=r"open it again with workbench.RunFile\(path\)"):
        r.steps()
    with pytest.raises(RunFileError, match="closed"):
        w.add_step(0, *_values(0))


def test_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run.wbrun"
    _writer(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = '99' WHERE key = 'version'")
    db.commit()
    db.close()
    with pytest.raises(RunFileError, match="version 99.*Upgrade workbench"):
        RunFile(path)


@pytest.mark.parametrize("keep", [0.35, 0.6, 0.85])
def test_a_truncated_file_opens_with_every_readable_step(tmp_path: Path, keep: float) -> None:
    path = tmp_path / "run.wbrun"
    w = _writer(path, flush_every=50, retention=Retention(recent=10**6, budget=10**6))
    for s in range(3000):
        w.add_step(s, *_values(s))
    w.close()
    size = path.stat().st_size
    cut = int(size * keep) // 4096 * 4096 + 1000  # mid-page, as a copy taken mid-write ends
    with path.open("r+b") as f:
        f.truncate(cut)
    with pytest.warns(UserWarning, match=f"{size - cut} bytes missing"):
        r = RunFile(path)
    assert r.recovered and r.dropped_bytes == size - cut
    steps = r.steps()
    assert 0 < len(steps) < 3000
    assert steps[: 100] == list(range(100))  # the oldest pages survive a cut at the end
    got_steps, loss = r.scalar("loss")
    assert set(got_steps) <= set(steps)
    assert all(v == 10.0 / (s + 1) for s, v in zip(got_steps, loss, strict=True))
    vs, _, rows = r.vector("grad_norm/module")
    assert all(row == _values(s)[1]["grad_norm/module"] for s, row in zip(vs, rows, strict=True))


def test_a_file_cut_inside_its_first_page_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run.wbrun"
    _writer(path).close()
    with path.open("r+b") as f:
        f.truncate(200)
    with warnings.catch_warnings(), pytest.raises(RunFileError, match="Record the run again|not a run file"):
        warnings.simplefilter("ignore")
        RunFile(path)


def test_size_is_bounded_over_100k_steps(tmp_path: Path) -> None:
    """100k steps of a 30-module run: the file keeps at most budget + recent steps, plus every event's."""
    path = tmp_path / "run.wbrun"
    modules = [f"m{i}" for i in range(30)]
    retention = Retention(recent=2000, budget=4000)
    w = RunWriter(path, {}, flush_every=1000, flush_seconds=3600.0, retention=retention)
    w.declare("loss")
    w.declare("grad_norm/module", modules)
    row = [0.5] * 30
    events = [12_345, 33_333, 77_777]
    for s in range(100_000):
        if s in events:
            w.add_event(RunEvent(s, "loss_spike", "loss", 9.0))
        w.add_step(s, {"loss": float(s)}, {"grad_norm/module": row})
    w.close()
    with RunFile(path) as r:
        steps = r.steps()
        assert len(steps) <= retention.budget + retention.recent + len(events)
        assert steps[-retention.recent:] == list(range(100_000 - retention.recent, 100_000))  # recent: every step
        assert set(events) <= set(steps)
        old = [s for s in steps if s < 99_999 - retention.recent and s not in events]  # the last flush's cutoff
        gaps = {b - a for a, b in zip(old, old[1:], strict=False)}
        assert len(gaps) == 1  # old steps evenly spaced
        assert r.scalar("loss")[1][-1] == 99_999.0
    size = path.stat().st_size
    # ~ (budget + recent) steps x (30 float64 + a scalar + the step) plus B-tree overhead: under 4 MB
    assert size < 4_000_000, size
