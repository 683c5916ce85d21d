"""Where all-row attention capture spends its time, one SmolLM2-shaped layer at a time (issue 18, target 3).

Run: .venv/bin/python benchmarks/attention_parts.py [--shapes 1x128 4x256] [--calls 30] [--threads 2]

For one attention layer of SmolLM2's shape (9 query heads, 3 key/value heads, head dim 64) on random q, k, v,
it prints the median time of 30 calls of each part:
- what the capture replaces or competes with: SDPA, HF's eager attention (key/value heads repeated, matmul,
  scale, mask, softmax, matmul), and the capture's own probabilities and output computed in place of SDPA;
- what the capture adds: the per-head metrics (`_accumulate`), its entropy pass, its weight GEMM with the batch
  sum, and the float16 copy of the map;
- other ways to get the entropy: BLAS dots of p and log p, p log p over the causal triangle in 2 or 4 row
  blocks, and lse - sum(p s) from the scores (row maxima, or `logsumexp`).
Each entropy variant is checked against the library's before it is timed. Nothing here is used by the library.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
from common import environment, timer

from workbench.capture import attention as A
from workbench.lm import sdpa_call as S

H, K, D = 9, 3, 64  # SmolLM2-135M's query heads, key/value heads and head dim
TINY = torch.finfo(torch.float32).tiny


def median_us(fn: Callable[[], object], calls: int) -> float:
    """Median of `calls` back-to-back calls after 3 warm-up calls (the part's inputs stay as hot as they can)."""
    run = timer("cpu")
    for _ in range(3):
        fn()
    return statistics.median(run(fn) for _ in range(calls)) * 1e6


def parts(B: int, T: int) -> dict[str, Callable[[], object]]:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, T, H, D, generator=g).transpose(1, 2)  # (B, H, T, D) as a model's view of (B, T, H, D)
    k = torch.randn(B, T, K, D, generator=g).transpose(1, 2)
    v = torch.randn(B, T, K, D, generator=g).transpose(1, 2)
    scale = D**-0.5
    mask = torch.zeros(T, T).masked_fill_(torch.ones(T, T, dtype=torch.bool).triu_(1), float("-inf"))
    scores = S._causal_scores(q, k, scale)
    p = torch.softmax(scores, -1)
    finite = scores.nan_to_num(neginf=torch.finfo(torch.float32).min)  # masked keys as the dtype's minimum
    qpos = torch.arange(T)
    acc = torch.zeros(len(A.HEAD_METRICS), 2, H)

    def eager() -> object:
        kk, vv = k.repeat_interleave(H // K, 1), v.repeat_interleave(H // K, 1)
        return torch.softmax(q @ kk.transpose(2, 3) * scale + mask, -1) @ vv

    def in_place() -> object:
        return S.grouped_matmul(torch.softmax(S._causal_scores(q, k, scale), -1), v)

    def gemm() -> object:
        w, _ = A._weights(qpos, T)
        return (p[0] if B == 1 else p.sum(0)).reshape(H, T * T) @ w.T

    def entropy() -> torch.Tensor:
        return -A._plogp(p).sum((0, 2, 3))

    def dots() -> torch.Tensor:
        logp = p.clamp_min(TINY).log_()
        return -torch.bmm(p.reshape(B * H, 1, T * T), logp.reshape(B * H, T * T, 1)).view(B, H).sum(0)

    def blocks(n: int) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            out = torch.zeros(H)
            for i in range(n):
                r0, r1 = T * i // n, T * (i + 1) // n
                x = p[:, :, r0:r1, :r1]  # keys after r1 hold no weight for these rows
                out -= A._plogp(x).sum((0, 2, 3))
            return out
        return run

    def from_scores(lse_of: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            ps = torch.bmm(p.reshape(B * H * T, 1, T), finite.reshape(B * H * T, T, 1)).view(B, H, T)
            return (lse_of() - ps).sum((0, 2))
        return run

    return {
        "SDPA": lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
        "HF eager (repeat_kv, matmul, mask, softmax, matmul)": eager,
        "capture: probabilities and output in place of SDPA": in_place,
        "capture: per-head metrics (_accumulate)": lambda: A._accumulate(acc, p, qpos),
        "  its entropy pass (p log p, summed per head)": entropy,
        "  its weight GEMM with the batch sum": gemm,
        "capture: float16 copy of the map": lambda: A._shrink(p, 1),
        "entropy: BLAS dots of p and log p": dots,
        "entropy: causal triangle, 2 row blocks": blocks(2),
        "entropy: causal triangle, 4 row blocks": blocks(4),
        "entropy: lse - sum(p s), lse from row maxima": from_scores(lambda: finite.amax(-1) - p.amax(-1).log()),
        "entropy: lse - sum(p s), lse by logsumexp": from_scores(lambda: torch.logsumexp(scores, -1)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["1x128", "4x256"])
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(environment("cpu"))
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes]
    table = {}
    with torch.no_grad():
        for B, T in shapes:
            fns = parts(B, T)
            reference = fns["  its entropy pass (p log p, summed per head)"]()
            for name, fn in fns.items():
                if name.startswith("entropy:"):
                    got = fn()
                    assert isinstance(got, torch.Tensor)
                    torch.testing.assert_close(got, reference, rtol=1e-4, atol=1e-3 * T, msg=name)
            table[(B, T)] = {name: median_us(fn, args.calls) for name, fn in fns.items()}
    width = max(len(n) for n in table[shapes[0]])
    print(f"\nmedian of {args.calls} calls, one layer (H={H}, K={K}, D={D}), microseconds")
    print(f"{'part':{width}}  " + "  ".join(f"{f'{B}x{T}':>9}" for B, T in shapes))
    for name in table[shapes[0]]:
        print(f"{name:{width}}  " + "  ".join(f"{table[s][name]:9.0f}" for s in shapes))


if __name__ == "__main__":
    main()
