"""How much of the defaults' statistics cost a one-pass reduction would save, measured inside the forward.

Run: .venv/bin/python benchmarks/stats_onepass.py --hf-dir DIR [--rounds 12] [--threads 2] [--shape 1x128] [--breakdown]

The workbench reduces every activation three times (sum, BLAS dot for the sum of squares, aminmax): no ATen op
computes all four in one pass on the CPU. This experiment compiles a small C function that does (sum and sum of
squares accumulated in double, min and max; needs `cc` on PATH), swaps it in for float32 dense tensors, and times
`trace()` defaults with either reduction, `stats=False` and HF hooks keeping every output, as paired ratios to
the plain forward of SmolLM2 as an HF model (`--hf-dir`, written by `benchmarks/peers.py`). It also prints how
far the two reductions' statistics differ. With --breakdown it also times the defaults with the bookkeeping
alone (every reduction replaced by a constant), with each reduction alone, and with the sum as a BLAS dot against
a vector of ones, which splits the statistics' cost into its parts, and times an activation's first read inside
the forward against the same reduction repeated at once. Nothing here is used by the library.
"""

from __future__ import annotations

import argparse
import ctypes
import math
import statistics
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import torch
from common import environment

import workbench
from workbench.capture import stats
from workbench.capture.records import ActStats

SOURCE = r"""
#include <stddef.h>
#include <math.h>
void stats_f32(const float *x, size_t n, double *out) {
    float mn[16], mx[16];
    for (int k = 0; k < 16; k++) { mn[k] = INFINITY; mx[k] = -INFINITY; }
    double s = 0, q = 0;
    size_t i = 0;
    while (i + 16 <= n) {  /* float lanes over blocks of 4096, folded into double per block */
        size_t end = i + 4096 > n ? n - (n - i) % 16 : i + 4096;
        float bs[16] = {0}, bq[16] = {0};
        for (; i + 16 <= end; i += 16)
            for (int k = 0; k < 16; k++) {
                float v = x[i + k];
                bs[k] += v; bq[k] += v * v;
                mn[k] = v < mn[k] ? v : mn[k]; mx[k] = v > mx[k] ? v : mx[k];
            }
        for (int k = 0; k < 16; k++) { s += bs[k]; q += bq[k]; }
    }
    float lo = INFINITY, hi = -INFINITY;
    for (int k = 0; k < 16; k++) { lo = mn[k] < lo ? mn[k] : lo; hi = mx[k] > hi ? mx[k] : hi; }
    for (; i < n; i++) { float v = x[i]; s += v; q += (double)v * v; lo = v < lo ? v : lo; hi = v > hi ? v : hi; }
    out[0] = s; out[1] = q; out[2] = lo; out[3] = hi;
}
"""


def compile_kernel(folder: Path) -> ctypes.CDLL:
    (folder / "stats.c").write_text(SOURCE)
    subprocess.run(["cc", "-O3", "-march=native", "-shared", "-fPIC", str(folder / "stats.c"), "-o",
                    str(folder / "stats.so")], check=True)
    return ctypes.CDLL(str(folder / "stats.so"))


THREE = stats._cpu_stats  # the library's reduction, kept before any is swapped in
BLANK = ActStats(1, 0.0, 0.0, 0.0, 0.0, 0.0, 0, 0, 0)  # what the stand-in reductions return


def traced(hf: torch.nn.Module, ids: torch.Tensor, reduce, **kwargs):  # noqa: ANN001, ANN201
    """One traced forward with `reduce` in place of the library's reduction (put back after the forward)."""
    def run() -> None:
        stats._cpu_stats = reduce
        try:
            with warnings.catch_warnings(), workbench.trace(hf, **kwargs):
                warnings.simplefilter("ignore")
                hf(ids)
        finally:
            stats._cpu_stats = THREE
    return run


def finished(x: torch.Tensor, n: int, total: float, sq: float, lo: float, hi: float) -> ActStats:
    """A candidate reduction's record; non-finite values go to the library's three passes, which count them."""
    if not all(map(math.isfinite, (total, sq, lo, hi))):
        return THREE(x)
    mean, std = stats._finish(n, total, sq)
    return ActStats(n, mean, std, max(abs(lo), abs(hi)), lo, hi, 0, 0, 0)


def one_pass(lib: ctypes.CDLL):  # noqa: ANN201
    out = (ctypes.c_double * 4)()

    def reduce(x: torch.Tensor) -> ActStats:
        v = stats._flat(x) if x.dtype == torch.float32 else None
        if v is None:
            return THREE(x)
        lib.stats_f32(ctypes.c_void_p(v.data_ptr()), ctypes.c_size_t(v.numel()), out)
        return finished(x, v.numel(), out[0], out[1], out[2], out[3])

    return reduce


def single(kind: str):  # noqa: ANN201
    """A stand-in reduction for the breakdown: none at all (the bookkeeping around it), or one of the three."""

    def reduce(x: torch.Tensor) -> ActStats:
        v = stats._flat(x)
        if v is not None and kind == "sum":
            float(v.sum())
        elif v is not None and kind == "dot":
            float(torch.dot(v, v)) if v.dtype == torch.float32 else float(torch.linalg.vector_norm(v))
        elif v is not None and kind == "aminmax":
            float(torch.aminmax(v)[0])
        return BLANK

    return reduce


def dot_with_ones():  # noqa: ANN201
    """The library's three reductions with the sum taken as a BLAS dot against a cached vector of ones."""
    ones = torch.ones(1 << 16)

    def reduce(x: torch.Tensor) -> ActStats:
        v = stats._flat(x) if x.dtype == torch.float32 else None
        if v is None or v.numel() > ones.numel():
            return THREE(x)
        lo, hi = (float(t) for t in torch.aminmax(v))
        return finished(x, v.numel(), float(torch.dot(v, ones[: v.numel()])), float(torch.dot(v, v)), lo, hi)

    return reduce


def first_read(hf: torch.nn.Module, ids: torch.Tensor, traces: int = 5) -> None:
    """Inside traced forwards: an activation's first aminmax right after the module wrote it, against the
    same call repeated at once (median per activation size)."""
    seen: dict[int, list[tuple[float, float]]] = {}

    def reduce(x: torch.Tensor) -> ActStats:
        v = stats._flat(x)
        if v is not None:
            t0 = time.perf_counter()
            torch.aminmax(v)
            t1 = time.perf_counter()
            torch.aminmax(v)
            seen.setdefault(v.numel(), []).append((t1 - t0, time.perf_counter() - t1))
        return BLANK

    run = traced(hf, ids, reduce)
    for _ in range(traces):
        run()
    print("  aminmax inside the forward, first read / repeated at once (median):")
    for n, pairs in sorted(seen.items()):
        first, again = (statistics.median(p[i] for p in pairs) * 1e6 for i in (0, 1))
        print(f"    {n:>9,} elements x {len(pairs) // traces:>3}: {first:7.0f} us / {again:7.0f} us")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--hf-dir", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shape", default="1x128")
    ap.add_argument("--breakdown", action="store_true",
                    help="also time the defaults with no reduction, with each of the three alone, and with the sum "
                         "as a BLAS dot; then time an activation's first read against a repeated one")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(args.hf_dir, dtype=torch.float32).eval()
    b, t = map(int, args.shape.split("x"))
    ids = torch.randint(0, hf.config.vocab_size, (b, t), generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as tmp:
        fused = one_pass(compile_kernel(Path(tmp)))

        def timed(reduce, **kwargs):  # noqa: ANN001, ANN202
            return traced(hf, ids, reduce, **kwargs)

        def hooks_all() -> None:
            kept: list = []
            handles = [m.register_forward_hook(lambda _m, _a, o: kept.append(o)) for m in hf.modules()]
            hf(ids)
            for h in handles:
                h.remove()

        fns = {"plain HF SDPA forward": lambda: hf(ids), "HF hooks, keep every output": hooks_all,
               "trace() defaults, three passes": timed(THREE), "trace() defaults, one pass": timed(fused),
               "trace(stats=False)": timed(THREE, stats=False)}
        if args.breakdown:
            fns.update({f"defaults, {label}": timed(single(kind)) for kind, label in (
                ("none", "bookkeeping only"), ("sum", "sum only"), ("dot", "dot only"), ("aminmax", "aminmax only"))})
            fns["defaults, sum as a dot with ones"] = timed(dot_with_ones())
        times: dict[str, list[float]] = {k: [] for k in fns}
        with torch.no_grad():
            for fn in fns.values():
                fn()
            for r in range(args.rounds):
                order = list(fns.items())
                for name, fn in order[r % len(order):] + order[: r % len(order)]:
                    start = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - start)
            with workbench.trace(hf) as a:
                hf(ids)
            stats._cpu_stats = fused
            try:
                with workbench.trace(hf) as c:
                    hf(ids)
            finally:
                stats._cpu_stats = THREE
    base = times["plain HF SDPA forward"]
    print(f"{environment('cpu')}; {args.shape}, {args.rounds} rounds, plain {statistics.median(base) * 1e3:.0f} ms")
    for name, ts in times.items():
        print(f"  {name:34s} {statistics.median([x / y for x, y in zip(ts, base)]):.3f}")
    if args.breakdown:
        with torch.no_grad():
            first_read(hf, ids)
    pairs = [(x.out_stats, y.out_stats) for x, y in zip(a.records, c.records) if x.out_stats and y.out_stats]
    mean = max(abs(x.mean - y.mean) / max(x.std, 1e-12) for x, y in pairs)
    std = max(abs(x.std - y.std) / max(x.std, 1e-12) for x, y in pairs)
    same = all((x.min, x.max) == (y.min, y.max) for x, y in pairs)
    print(f"  statistics of {len(pairs)} outputs: means differ by <= {mean:.1e} std, stds by <= {std:.1e} "
          f"relative, min and max {'identical' if same else 'DIFFER'}")


if __name__ == "__main__":
    main()
