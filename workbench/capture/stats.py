"""Activation statistics computed on the tensor's own device, synchronised once at trace exit.

On the CPU there is no device to wait for, so values are read at once and NaN/Inf counting runs
only when the abs-max shows a non-finite value. On an accelerator each tensor is copied into a
batch buffer and reduced with the rest of its batch (`devstats.DeviceStats`), and
`StatsBuffer.flush()` reads every result back at exit, one transfer per kind and device.
"""

from __future__ import annotations

import math
import weakref

import torch

from .devstats import DeviceStats
from .records import ActStats, ModuleRecord

BUDGET_BYTES = 128 * 2**20  # accelerator batch buffers per device (see devstats)

_WIDE = (torch.float32, torch.float64)  # dtypes whose own accumulation is already float32 or better


def _moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum and L2 norm in float32. torch.std_mean is ~50x slower on CPU (Welford), so the std is
    formed on the host from these two: var = (sum_sq - n mean^2) / (n - 1)."""
    if x.dtype in _WIDE:  # sum(dtype=float32) of a float32 tensor takes a slower path (measured ~2x)
        return x.sum(), torch.linalg.vector_norm(x)
    return x.sum(dtype=torch.float32), torch.linalg.vector_norm(x, dtype=torch.float32)


def _finish(n: int, total: float, sq: float) -> tuple[float, float]:
    """(mean, unbiased std) from the sum and the sum of squares, in float64 on the host."""
    mean = total / n
    var = (sq - n * mean * mean) / max(n - 1, 1)
    return mean, math.sqrt(max(var, 0.0)) if math.isfinite(var) else float("nan")


def _flat(x: torch.Tensor) -> torch.Tensor | None:
    """x's elements as one contiguous 1-D view (N,), in memory order, or None when they are not dense.

    Statistics do not depend on element order, so a permuted dense tensor (e.g. queries transposed
    to (B, H, T, D) from a (B, T, H, D) buffer) is reduced as the flat buffer it occupies."""
    if x.is_contiguous():
        return x.view(-1)
    size, stride, expected = x.shape, x.stride(), 1
    for st, n in sorted((st, n) for st, n in zip(stride, size) if n != 1):
        if st != expected:
            return None
        expected *= n
    return x.as_strided((x.numel(),), (1,))


def _cpu_stats(x: torch.Tensor) -> ActStats:
    """Three reductions: sum, sum of squares and a fused min/max (measured in a SmolLM2 forward:
    ~20% less than sum + vector_norm + amin + amax, ~35% less on the 1x128x49152 logits)."""
    v = _flat(x) if x.dtype in _WIDE else None
    if v is not None:
        total, sq = float(v.sum()), float(torch.dot(v, v))  # BLAS dot: faster than vector_norm
    else:
        t, nrm = _moments(x)
        total, sq = float(t), float(nrm) ** 2
    mn, mx = torch.aminmax(x if v is None else v)  # propagates NaN, like amin/amax
    lo, hi = float(mn), float(mx)
    nan = inf = neginf = 0
    if not (math.isfinite(lo) and math.isfinite(hi)):  # NaN or +-Inf somewhere: count them exactly
        nan, inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
        neginf = int(torch.isneginf(x).sum())
    n = x.numel()
    mean, std = _finish(n, total, sq)
    return ActStats(n, mean, std, max(abs(lo), abs(hi)), lo, hi, nan, inf, neginf)


class StatsBuffer:
    """Collects ActStats; device-side values are filled in by one `flush()` at exit.

    It also remembers which tensors it has already measured (by identity and version counter), so an
    input that is the previous module's output is not reduced twice.
    """

    def __init__(self, samples: int = 0, *, defer_cpu: bool = False, budget_bytes: int = BUDGET_BYTES) -> None:
        self.samples = samples
        self.defer_cpu = defer_cpu  # take the accelerator path for CPU tensors too (tests of that path)
        self.budget_bytes = budget_bytes
        self.devices: dict[torch.device, DeviceStats] = {}
        self._pending_samples: list[tuple[ModuleRecord, torch.Tensor]] = []
        self._seen: dict[int, tuple[weakref.ref, int, ActStats]] = {}

    def measure(self, x: torch.Tensor) -> ActStats | None:
        """Stats of a floating tensor (None for integer/empty tensors); a tensor measured before and
        not modified since (same object, same version counter) is not reduced again."""
        if not x.is_floating_point() or x.numel() == 0:
            return None
        hit = self._seen.get(id(x))
        version = None if x.is_inference() else x._version  # inference tensors keep no version counter
        if hit is not None and version is not None and hit[0]() is x and hit[1] == version:
            return hit[2]
        d = x.detach() if x.requires_grad else x  # reductions of a detached view record no graph
        if d.device.type == "cpu" and not self.defer_cpu:
            st = _cpu_stats(d)
        else:
            nan = float("nan")
            st = ActStats(numel=d.numel(), mean=nan, std=nan, absmax=nan, min=nan, max=nan, nan=0, inf=0)
            dev = self.devices.get(d.device)
            if dev is None:
                dev = self.devices[d.device] = DeviceStats(d.device, self.budget_bytes)
            dev.add(d, st)
        try:
            if version is not None:
                self._seen[id(x)] = (weakref.ref(x), version, st)
        except TypeError:  # some tensor subclasses refuse weak references
            pass
        return st

    def sample(self, record: ModuleRecord, x: torch.Tensor) -> None:
        """Keep `samples` evenly strided values of x for a histogram (`record.samples`)."""
        n = x.numel()
        if self.samples <= 0 or n == 0 or not x.is_floating_point():
            return
        k = min(self.samples, n)
        idx = torch.linspace(0, n - 1, k, device=x.device).long()
        vals = torch.take(x.detach(), idx).float()
        if x.device.type == "cpu":
            record.samples = vals.tolist()
        else:
            self._pending_samples.append((record, vals))

    def flush(self) -> None:
        """Reduce what is pending and copy every device value to the host: one transfer per kind and device."""
        for dev in self.devices.values():
            for st, (total, norm, mn, mx), counts in dev.host():
                st.mean, st.std = _finish(st.numel, total, norm * norm)
                st.min, st.max = mn, mx
                st.absmax = max(abs(mn), abs(mx))
                st.nan, st.inf, st.neginf = counts
        if self._pending_samples:
            flat = torch.cat([v.to(self._pending_samples[0][1].device) for _, v in self._pending_samples])
            host = flat.cpu().tolist()
            start = 0
            for rec, vals in self._pending_samples:
                rec.samples = host[start : start + vals.numel()]
                start += vals.numel()
        self._pending_samples.clear()
        self._seen.clear()
