"""benchmarks/gpu_check.sh keeps within BUDGET: steps are clipped to the time left, and what is left out is named."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                       reason="needs bash and coreutils' timeout"),
    pytest.mark.slow,  # the budget tests wait out real time limits (about 6 s each)
]


def _run(tmp_path: Path, budget: int, *steps: str) -> tuple[int, str, Path]:
    stub = tmp_path / "python"  # stands in for the image's python3: every step takes 3 s and succeeds
    stub.write_text("#!/bin/sh\nsleep 3\necho \"stub $*\"\n")
    stub.chmod(0o755)
    out = tmp_path / "out"
    # a step needs 8 s left (the script's own default is 30): the same decisions at half the wait
    env = {**os.environ, "BUDGET": str(budget), "MIN_STEP": "8", "PYTHON": str(stub), "OUT": str(out), "TAIL": "1"}
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", *steps], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout, out


def test_budget_clips_each_step_and_names_the_steps_left_out(tmp_path):
    rc, stdout, out = _run(tmp_path, 13, "env", "fast", "overhead")
    assert "=== env (limit 13 s)" in stdout  # its own limit is 60 s: the budget is smaller
    assert "=== env: exit 0" in stdout and "=== fast: exit 0" in stdout
    assert "=== overhead: skipped" in stdout  # under 8 s were left after two 3 s steps
    assert sorted(p.name for p in out.iterdir()) == ["env.log", "fast.log", "summary.txt"]
    summary = (out / "summary.txt").read_text()
    assert "not run (budget): bash benchmarks/gpu_check.sh overhead" in summary
    assert rc == 1  # a skipped step is not a pass


def test_without_a_budget_every_step_runs_under_its_own_limit(tmp_path):
    rc, stdout, out = _run(tmp_path, 0, "env", "fast")
    assert "=== env (limit 60 s)" in stdout and "=== fast (limit 240 s)" in stdout
    assert ": skipped" not in stdout and "not run" not in (out / "summary.txt").read_text()
    assert "stub benchmarks/fast.py --no-compile" in (out / "fast.log").read_text()
    assert rc == 0
