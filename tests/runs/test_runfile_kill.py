"""SIGKILL at random moments: a process writing a run is killed mid-write, again and again, and after each kill
the file opens and holds every step up to the last flush the writer reported, with its values."""

from __future__ import annotations

import os
import random
import signal
import sys
import time
from pathlib import Path

import pytest

from workbench.errors import RunFileError
from workbench.runs import Retention, RunEvent, RunFile, RunWriter

MODULES = [f"m{i}" for i in range(16)]


def _row(step: int) -> list[float]:
    return [step * 0.5 + j for j in range(len(MODULES))]


def _write_until_killed(path: Path, report: int) -> None:
    """The child: append steps forever, telling the parent each step whose flush committed."""
    # thinning off: a fast child writes past the default budget within the wait, and this test's claim is about
    # whole flushes surviving, not about which old steps a thinned file keeps
    w = RunWriter(path, {"model": "Killed"}, flush_every=7, flush_seconds=3600.0,
                  retention=Retention(recent=10**8, budget=10**8))
    w.declare("loss")
    w.declare("grad_norm/module", MODULES)
    step, told = 0, None
    while True:
        w.add_step(step, {"loss": 1.0 / (step + 1)}, {"grad_norm/module": _row(step)})
        if step % 97 == 50:
            w.add_event(RunEvent(step, "loss_spike", "loss", 1.0))
        if w.committed != told:  # a flush's commit returned
            told = w.committed
            os.write(report, f"{told}\n".encode())
        step += 1


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "darwin", reason="needs os.fork (Linux)")
def test_sigkill_at_20_random_points_loses_only_unflushed_steps(tmp_path: Path) -> None:
    rng = random.Random(28)
    for kill in range(20):
        path = tmp_path / f"run{kill}.wbrun"
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child never returns
            os.close(read)
            try:
                _write_until_killed(path, write)
            finally:
                os._exit(1)
        os.close(write)
        time.sleep(rng.uniform(0.02, 0.25))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        reported = b""
        while chunk := os.read(read, 65536):
            reported += chunk
        os.close(read)
        flushed = [int(x) for x in reported.split()]
        if not path.exists():
            continue  # killed before the file was created
        if not flushed:  # killed before the file's first commit: it holds a whole empty run, or says it has none
            try:
                RunFile(path).close()
            except RunFileError as err:
                assert "holds no run yet" in str(err)
            continue
        with RunFile(path) as r:
            steps = r.steps()
            last = flushed[-1] if flushed else -1
            assert steps[: last + 1] == list(range(last + 1)), (kill, last, steps[-3:])
            assert steps == list(range(len(steps)))  # whole flushes only: never a gap
            vs, _, rows = r.vector("grad_norm/module")
            assert vs == steps and all(row == _row(s) for s, row in zip(vs, rows, strict=True))
            assert r.scalar("loss")[1] == [1.0 / (s + 1) for s in steps]
            assert all(e.step % 97 == 50 for e in r.events())
