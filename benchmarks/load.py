"""Load time of SmolLM2 from its GGUF, this checkout against an earlier revision: `wb.models.smollm2()` and
`open_gguf` alone, each in a fresh process (what a test worker or a notebook kernel pays), interleaved.

Run: .venv/bin/python benchmarks/load.py [REV] [--repeats N] [--threads T]
REV (default HEAD~1) is extracted with `git archive` and put first on PYTHONPATH of its processes. Each process
imports the workbench first and times only the call (wall and CPU seconds), so import time is left out; the
first-call costs inside the call (lazy imports, first touches of memory) are counted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
CALLS = {
    "smollm2": "wb.models.smollm2()",
    "open_gguf": "open_gguf(wb.models.smollm2_path())",
}
PROBE = """
import json, time
import workbench as wb
from workbench.io.gguf import open_gguf
wall, cpu = time.perf_counter(), time.process_time()
{call}
print(json.dumps([time.perf_counter() - wall, time.process_time() - cpu]))
"""


def extract(rev: str, into: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "workbench"], check=True,
                             capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def run(root: Path, call: str, threads: int) -> tuple[float, float]:
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, "-c", PROBE.format(call=call)], env=env, cwd=root, check=True,
                         capture_output=True, text=True).stdout  # cwd: `-c` puts it first on sys.path
    wall, cpu = json.loads(out.strip().splitlines()[-1])
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", nargs="?", default="HEAD~1")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    print(f"CPU {platform.machine()} ({os.cpu_count()} cores), torch {torch.__version__}, python "
          f"{platform.python_version()}; OMP_NUM_THREADS={args.threads} in each timed process")
    with tempfile.TemporaryDirectory() as tmp:
        roots = {args.rev: extract(args.rev, Path(tmp)), "this checkout": REPO}
        for name, call in CALLS.items():
            samples: dict[str, list[tuple[float, float]]] = {label: [] for label in roots}
            for _ in range(args.repeats):  # interleaved: drift on a shared machine hits both sides
                for label, root in roots.items():
                    samples[label].append(run(root, call, args.threads))
            for label, got in samples.items():
                wall = statistics.median(w for w, _ in got)
                cpu = statistics.median(c for _, c in got)
                print(f"{name:10s} {label:14s} wall {wall:6.2f} s  cpu {cpu:6.2f} s  (median of {len(got)})")


if __name__ == "__main__":
    main()
