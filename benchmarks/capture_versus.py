"""Capture cost of this checkout against an earlier revision, on the same HF model in one process.

Run: python benchmarks/capture_versus.py REV --hf-dir DIR [--shape 1x128] [--repeats 7] [--threads 1] [--clock cpu]

REV's `workbench/` is imported as `workbench_rev` (see versus.py). DIR is an HF checkpoint, e.g. SmolLM2
written by `workbench.save_pretrained(workbench.models.smollm2()[0], DIR, format="hf")`. Prints (1) the fixed cost of a
trace: process CPU time of enter + exit around an empty block, median of 15 x 20; (2) paired ratios to the
plain HF SDPA forward of HF hooks keeping every output, HF eager + output_attentions and each trace setting
on both sides, after checking logits (and, for attention, records) against each other.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
from common import environment, interleaved_samples, paired_ratio
from versus import import_revision

import workbench

LAYERS = r"^model\.layers\.\d+$"
SETTINGS = {
    "defaults": {},
    "layers": dict(modules=LAYERS),
    "attention": dict(attention=True, attention_batch=None),
    "attention only": dict(attention=True, attention_batch=None, shapes=False, timing=False, stats=False),
}


def fixed_cost(pkg, model: torch.nn.Module, kwargs: dict) -> float:
    """Median ms of process CPU time per empty trace."""
    for _ in range(5):
        with pkg.trace(model, **kwargs):
            pass
    samples = []
    for _ in range(15):
        t = time.process_time()
        for _ in range(20):
            with pkg.trace(model, **kwargs):
                pass
        samples.append((time.process_time() - t) / 20 * 1e3)
    return statistics.median(samples)


def main() -> None:
    import transformers

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("rev")
    ap.add_argument("--hf-dir", type=Path, required=True)
    ap.add_argument("--shape", default="1x128")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load = transformers.AutoModelForCausalLM.from_pretrained
    hf = load(args.hf_dir, dtype=torch.float32, attn_implementation="sdpa").eval()
    eager = load(args.hf_dir, dtype=torch.float32, attn_implementation="eager").eval()
    b, t = map(int, args.shape.split("x"))
    ids = torch.randint(0, hf.config.vocab_size, (b, t), generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as tmp:
        old = import_revision(args.rev, Path(tmp))
        print(f"{environment('cpu')}; this checkout vs {args.rev}; {args.hf_dir.name}, {args.shape}, "
              f"{args.clock} clock")
        for name, kwargs in SETTINGS.items():
            now, rev = fixed_cost(workbench, hf, kwargs), fixed_cost(old, hf, kwargs)
            print(f"empty trace, {name}: now {now:.2f} ms, rev {rev:.2f} ms (CPU time)")

        def traced(pkg, kwargs):
            def run():
                with warnings.catch_warnings(), pkg.trace(hf, **kwargs) as tr:
                    warnings.simplefilter("ignore")
                    logits = hf(ids).logits
                return logits, tr
            return run

        def hooks_all():
            kept = []
            handles = [m.register_forward_hook(lambda _m, _a, o: kept.append(o)) for m in hf.modules()]
            try:
                return hf(ids).logits
            finally:
                for h in handles:
                    h.remove()

        fns = {"plain": lambda: hf(ids).logits, "HF hooks, keep all": hooks_all,
               "HF eager + output_attentions": lambda: eager(ids, output_attentions=True).logits}
        with torch.no_grad():
            ref = hf(ids).logits
            for name, kwargs in SETTINGS.items():
                fns[f"{name} now"], fns[f"{name} rev"] = traced(workbench, kwargs), traced(old, kwargs)
                (a, ta), (c, tc) = fns[f"{name} now"](), fns[f"{name} rev"]()
                diff = max((a - ref).abs().max().item(), (c - ref).abs().max().item())
                for x, y in zip(ta.attention, tc.attention, strict=True):
                    worst = max(abs(u - v) for k in x.metrics for u, v in zip(x.metrics[k], y.metrics[k]))
                    assert worst < 1e-3 and (x.map.float() - y.map.float()).abs().max() < 2e-3, x.module
                print(f"{name}: logits within {diff:.1e} of plain HF, {len(ta.attention)} attention records agree")
            samples = interleaved_samples(fns, "cpu", 1, args.repeats, clock=args.clock)
        plain = statistics.median(samples["plain"]) * 1e3
        print(f"plain {plain:.0f} ms; paired ratios to plain, {args.repeats} rounds:")
        for name in fns:
            print(f"{name:>30} {paired_ratio(samples, name, 'plain'):.3f}")


if __name__ == "__main__":
    main()
