"""Compare speed: `wb.compare` of SmolLM2 loaded by the workbench from its GGUF against HF's own load of it.

Run: .venv/bin/python benchmarks/compare.py [--threads 2] [--repeats 3]
Target (issue 19): under 30 s on the CPU. The two model loads are not counted; each comparison is timed whole
(weights, the three input cases, and a diagnosis when something diverges), median of --repeats.
"""

from __future__ import annotations

import statistics
import time

import torch
from common import cpu_run_args, environment

from workbench.compare import compare
from workbench.models import smollm2, smollm2_path


def main() -> None:
    args = cpu_run_args(__doc__)
    from transformers import AutoModelForCausalLM

    path = smollm2_path()
    ours, _ = smollm2(dtype=torch.float32)
    hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    print(f"{environment('cpu')}, torch threads={args.threads}")
    times, result = [], None
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        result = compare(hf, ours)
        times.append(time.perf_counter() - t0)
    assert result is not None
    print(f"SmolLM2, HF (GGUF via transformers) vs workbench (GGUF): median {statistics.median(times):.1f} s over "
          f"{args.repeats} run(s) (min {min(times):.1f}, max {max(times):.1f}); "
          f"{'equivalent' if result.equivalent else 'DIVERGES'}, {len(result.weights.matches)} weights matched, "
          f"{len(result.alignment.pairs)} points paired")


if __name__ == "__main__":
    main()
