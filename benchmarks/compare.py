"""Compare speed: `wb.compare` of SmolLM2 loaded by the workbench from its GGUF against HF's own load of it.

Run: .venv/bin/python benchmarks/compare.py [--threads 2] [--repeats 3]
Target (issue 19): under 30 s on the CPU. The two model loads are not counted; each comparison is timed whole
(weights, the three input cases, and a diagnosis when something diverges), median of --repeats.

Then the cost of patching across implementations (`compare(..., patching=True)`, issue 29): a copy of the
workbench's model with block 15's MLP output projection scaled by 1.05, compared with and without patching in
alternation (paired per round), and where each localises the mistake.
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
    patching_cost(hf, ours, args.repeats)


def patching_cost(hf: torch.nn.Module, ours: torch.nn.Module, repeats: int) -> None:
    with torch.no_grad():
        ours.blocks[15].mlp.down.weight.mul_(1.05)  # a mistake in one block's MLP
    plain, patched, result = [], [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        compare(hf, ours)
        t1 = time.perf_counter()
        result = compare(hf, ours, patching=True)
        plain.append(t1 - t0)
        patched.append(time.perf_counter() - t1)
    assert result is not None and result.patching is not None and result.first_divergence is not None
    first = result.patching.first_closing()
    ratio = statistics.median(p / q for p, q in zip(patched, plain))
    print(f"SmolLM2 with block 15's MLP scaled: compare {statistics.median(plain):.1f} s, with patching "
          f"{statistics.median(patched):.1f} s ({ratio:.2f}x, {len(result.patching.points)} points patched); first "
          f"divergence {result.first_divergence.label}, first point closing >= 99%: "
          f"{first.label if first else 'none'}")


if __name__ == "__main__":
    main()
