"""Doctor speed: a full `diagnose` of the tiny workbench model and of SmolLM2 (real weights), per check.

Run: .venv/bin/python benchmarks/doctor.py [--threads 2] [--repeats 3]
Targets (issue 6): SmolLM2 under 60 s on 2 CPU cores, the tiny model under 5 s. The model load is not
counted; each diagnosis is timed whole (median of --repeats), and the slowest checks are listed.
"""

from __future__ import annotations

import statistics
import time

import torch
from common import cpu_run_args, environment

from workbench import ModelConfig, TransformerLM
from workbench.doctor import diagnose
from workbench.models import smollm2


def run(name: str, model, tokenizer, repeats: int) -> None:  # noqa: ANN001
    times, report = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        report = diagnose(model, tokenizer, progress=False)
        times.append(time.perf_counter() - t0)
    slow = sorted(report, key=lambda f: -f.seconds)[:5]
    print(f"{name}: median {statistics.median(times):.2f} s over {repeats} run(s) "
          f"(min {min(times):.2f}, max {max(times):.2f}); {report.counts()}")
    print("  slowest checks (last run): " + ", ".join(f"{f.check} {f.seconds:.2f}s" for f in slow))


def main() -> None:
    args = cpu_run_args(__doc__)
    print(f"{environment('cpu')}, torch threads={args.threads}")
    torch.manual_seed(0)
    run("tiny (ModelConfig.preset('tiny'))", TransformerLM(ModelConfig.preset("tiny")).eval(), None, args.repeats)
    model, tokenizer = smollm2()
    run("SmolLM2-135M-Instruct (Q4_1 dequantized, fp32)", model, tokenizer, args.repeats)


if __name__ == "__main__":
    main()
