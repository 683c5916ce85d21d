"""examples/train_with_recorder.py, run briefly as a user runs it: a plain loop, and torchrun with 2 gloo ranks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import workbench as wb

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "train_with_recorder.py"


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def _check(path: Path, steps: int, spike_at: int) -> None:
    with wb.RunFile(path) as run:
        assert run.steps() == list(range(steps))
        assert spike_at + 1 in {e.step for e in run.events() if e.kind in ("loss_spike", "grad_spike")}
        assert [r.step for r in run.replays()] == [spike_at + 1]  # the first step after the spiked update
        assert run.trace_path(run.replays()[0]).exists()


def test_plain_loop_catches_the_planted_spike(tmp_path: Path) -> None:
    out = _run([sys.executable, str(SCRIPT), "--out", "run.wbrun", "--steps", "30", "--spike-at", "22"], tmp_path)
    _check(tmp_path / "run.wbrun", 30, 22)
    assert "step 23 replayed" in out.stdout


@pytest.mark.slow  # two ranks and a process group
def test_torchrun_with_two_gloo_ranks(tmp_path: Path) -> None:
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(SCRIPT),
          "--out", "run.wbrun", "--steps", "30", "--spike-at", "22"], tmp_path)
    _check(tmp_path / "run.wbrun", 30, 22)
    with wb.RunFile(tmp_path / "run.wbrun") as run:
        assert run.meta["world_size"] == "2"
