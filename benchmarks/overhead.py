"""Capture overhead: instrumented / plain forward time, measured interleaved in one run.

Settings: shapes only; full (shapes + timing + memory + stats); all-layer attention capture.
--breakdown adds timing, memory and stats each alone, full capture of layer-level modules only
(`blocks.N` / `model.layers.N`), and every module recorded with statistics for the layer-level
ones only (`stats=<filter>`), to show where the time goes.
The timed unit is the whole `with workbench.capture.trace(...)` block (attach, forward, detach,
one sync), so the ratio is what a notebook user pays. Each ratio is the median over rounds of
instrumented/plain from the same round (paired); the ratio of the fastest runs is shown beside it.

CPU:  python benchmarks/overhead.py                       (SmolLM2 1x128, workbench + HF Llama)
CUDA: python benchmarks/overhead.py --device cuda         (8x512 bf16; attention at 4x2048)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, interleaved_samples, paired_ratio, smollm2_shaped_pair  # noqa: E402

from workbench.capture import trace  # noqa: E402

SETTINGS = {
    "shapes": dict(shapes=True, timing=False, memory=False, stats=False),
    "full": dict(shapes=True, timing=True, memory=True, stats=True),
    "attention": dict(shapes=False, timing=False, memory=False, stats=False, attention=True),
}
LAYERS = r"^(blocks|model\.layers)\.\d+$"  # layer-level modules of the workbench model and of HF Llama
BREAKDOWN = {  # each part of "full" on its own (--breakdown)
    "timing": dict(shapes=False, timing=True, memory=False, stats=False),
    "memory": dict(shapes=False, timing=False, memory=True, stats=False),
    "stats": dict(shapes=False, timing=False, memory=False, stats=True),
    "full-layers": dict(shapes=True, timing=True, memory=True, stats=True, modules=LAYERS),
    "full-stats-layers": dict(shapes=True, timing=True, memory=True, stats=LAYERS),
}
SETTINGS_ALL = {**SETTINGS, **BREAKDOWN}


def models(device: str, dtype: torch.dtype, real: bool) -> dict[str, torch.nn.Module]:
    out = {}
    if real:
        try:
            from workbench.models import smollm2

            out["workbench SmolLM2 (real weights)"] = smollm2(device=device, dtype=dtype)[0].eval()
        except Exception as err:  # the weights package may be absent: fall back to random weights
            print(f"(real SmolLM2 unavailable: {err})")
    ours, hf = smollm2_shaped_pair(device, dtype)
    if not out:
        out["workbench SmolLM2-shaped (random)"] = ours.eval()
    out["HF Llama SmolLM2-shaped (random, sdpa)"] = hf.eval()
    return out


def measure(model: torch.nn.Module, ids: torch.Tensor, device: str, settings: list[str],
            warmup: int, repeats: int, budget: int, clock: str) -> dict[str, list[float]]:
    def plain() -> None:
        with torch.no_grad():
            model(ids)

    def instrumented(kw: dict) -> callable:
        def run() -> None:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with trace(model, attention_budget_bytes=budget, **kw):
                    model(ids)
        return run

    fns = {"plain": plain, **{s: instrumented(SETTINGS_ALL[s]) for s in settings}}
    return interleaved_samples(fns, device, warmup, repeats, clock="wall" if device == "cuda" else clock)


def extra_memory(model: torch.nn.Module, ids: torch.Tensor, budget: int) -> tuple[int, int]:
    """CUDA peak bytes of a plain forward and of an all-layer attention trace."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        model(ids)
    plain = torch.cuda.max_memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    with torch.no_grad(), warnings.catch_warnings(), trace(model, attention=True, shapes=False, stats=False,
                                                          timing=False, attention_budget_bytes=budget):
        warnings.simplefilter("ignore")
        model(ids)
    return plain, torch.cuda.max_memory_allocated()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--no-real", action="store_true", help="skip the real SmolLM2 weights")
    ap.add_argument("--budget", type=int, default=256 * 2**20, help="attention_budget_bytes")
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu", help="CPU runs: process CPU time or wall")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    ap.add_argument("--breakdown", action="store_true",
                    help="also time timing, memory and stats alone, and full capture of layer-level modules only")
    args = ap.parse_args()
    device = args.device
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    print(environment(device))
    for name, model in models(device, dtype, not args.no_real).items():
        vocab = model.config.vocab_size
        extra = list(BREAKDOWN) if args.breakdown else []
        if device == "cuda":
            shapes = [((8, 512), ["shapes", "full", *extra]), ((4, 2048), ["attention"])]
        else:
            shapes = [((1, 128), ["shapes", "full", "attention", *extra])]
        for (B, T), settings in shapes:
            ids = torch.randint(0, vocab, (B, T), device=device)
            samples = measure(model, ids, device, settings, args.warmup, args.repeats, args.budget, args.clock)
            plain = statistics.median(samples["plain"])
            ratios = ", ".join(
                f"{s} {paired_ratio(samples, s, 'plain'):.3f}x (min {min(samples[s]) / min(samples['plain']):.3f}x)"
                for s in settings
            )
            clock = "CUDA events" if device == "cuda" else f"{args.clock} clock"
            print(f"{name} | {B}x{T} {str(dtype)[6:]} | plain {plain * 1e3:.2f} ms ({clock}) | {ratios}")
            if device == "cuda" and "attention" in settings:
                plain, traced = extra_memory(model, ids, args.budget)
                print(f"  attention peak extra GPU memory: {(traced - plain) / 2**20:.1f} MiB "
                      f"(plain peak {plain / 2**20:.0f} MiB)")


if __name__ == "__main__":
    main()
