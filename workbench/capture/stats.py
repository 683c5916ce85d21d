"""Activation statistics computed on the tensor's own device, synchronised once at trace exit.

On the CPU there is no device to wait for, so values are read at once and NaN/Inf counting runs
only when the abs-max shows a non-finite value. On an accelerator the results are written into
preallocated device rows (`_DeviceRows`) and `StatsBuffer.flush()` reads them back at exit, with
one transfer per buffer and device.
"""

from __future__ import annotations

import math
import weakref

import torch

from .records import ActStats

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


class _DeviceRows:
    """Preallocated result rows on one device, filled with `out=` reductions and read back at once.

    Per tensor: sum and L2 norm (float32 accumulation), min and max (one fused kernel), and the NaN,
    Inf and -Inf counts (int64, exact at any size): 9 kernels and no host synchronisation."""

    CHUNK = 256

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.floats: list[torch.Tensor] = []  # (CHUNK, 4): sum, norm, min, max
        self.counts: list[torch.Tensor] = []  # (CHUNK, 3): nan, inf, neginf
        self.n = 0

    def add(self, x: torch.Tensor) -> int:
        i = self.n % self.CHUNK
        if i == 0:
            self.floats.append(torch.empty(self.CHUNK, 4, device=self.device, dtype=torch.float32))
            self.counts.append(torch.empty(self.CHUNK, 3, device=self.device, dtype=torch.int64))
        f, c = self.floats[-1][i], self.counts[-1][i]
        acc = None if x.dtype == torch.float32 else torch.float32  # float32 sums itself faster without dtype=
        torch.sum(x, dim=None, dtype=acc, out=f[0])
        torch.linalg.vector_norm(x if x.dtype != torch.float64 else x.float(), dtype=acc, out=f[1])
        if x.dtype == torch.float32:
            torch.aminmax(x, out=(f[2], f[3]))  # propagates NaN, like amin/amax
        else:
            mn, mx = torch.aminmax(x)
            f[2].copy_(mn)
            f[3].copy_(mx)
        torch.sum(torch.isnan(x), dim=None, out=c[0])
        torch.sum(torch.isinf(x), dim=None, out=c[1])
        torch.sum(torch.isneginf(x), dim=None, out=c[2])
        self.n += 1
        return self.n - 1

    def host(self) -> tuple[list[list[float]], list[list[int]]]:
        """Every filled row on the host: one transfer per buffer kind (the first one synchronises)."""
        floats = torch.cat(self.floats)[: self.n].cpu().tolist()
        counts = torch.cat(self.counts)[: self.n].cpu().tolist()
        return floats, counts


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

    def __init__(self, samples: int = 0, *, defer_cpu: bool = False) -> None:
        self.samples = samples
        self.defer_cpu = defer_cpu  # take the accelerator path for CPU tensors too (tests of that path)
        self._rows: dict[torch.device, _DeviceRows] = {}
        self._pending: list[tuple[ActStats, _DeviceRows, int]] = []
        self._pending_samples: list[tuple[object, torch.Tensor]] = []
        self._seen: dict[int, tuple[weakref.ref, int, ActStats]] = {}

    def measure(self, x: torch.Tensor) -> ActStats | None:
        """Stats of a floating tensor (None for integer/empty tensors); a tensor measured before and
        not modified since (same object, same version counter) is not reduced again."""
        if not x.is_floating_point() or x.numel() == 0:
            return None
        hit = self._seen.get(id(x))
        if hit is not None and hit[0]() is x and hit[1] == x._version:
            return hit[2]
        d = x.detach() if x.requires_grad else x  # reductions of a detached view record no graph
        if d.device.type == "cpu" and not self.defer_cpu:
            st = _cpu_stats(d)
        else:
            nan = float("nan")
            st = ActStats(numel=d.numel(), mean=nan, std=nan, absmax=nan, min=nan, max=nan, nan=0, inf=0)
            rows = self._rows.get(d.device)
            if rows is None:
                rows = self._rows[d.device] = _DeviceRows(d.device)
            self._pending.append((st, rows, rows.add(d)))
        try:
            self._seen[id(x)] = (weakref.ref(x), x._version, st)
        except TypeError:  # some tensor subclasses refuse weak references
            pass
        return st

    def sample(self, record: object, x: torch.Tensor) -> None:
        """Keep `samples` evenly strided values of x for a histogram (`record.samples`)."""
        n = x.numel()
        if self.samples <= 0 or n == 0 or not x.is_floating_point():
            return
        k = min(self.samples, n)
        idx = torch.linspace(0, n - 1, k, device=x.device).long()
        vals = torch.take(x.detach(), idx).float()
        if x.device.type == "cpu":
            record.samples = vals.tolist()  # type: ignore[attr-defined]
        else:
            self._pending_samples.append((record, vals))

    def flush(self) -> None:
        """Copy every pending device value to the host: one transfer per device."""
        host = {id(rows): rows.host() for rows in self._rows.values()}
        for st, rows, i in self._pending:
            floats, counts = host[id(rows)]
            total, norm, mn, mx = floats[i]
            st.mean, st.std = _finish(st.numel, total, norm * norm)
            st.min, st.max = mn, mx
            st.absmax = max(abs(mn), abs(mx))
            st.nan, st.inf, st.neginf = counts[i]
        if self._pending_samples:
            flat = torch.cat([v.to(self._pending_samples[0][1].device) for _, v in self._pending_samples])
            host = flat.cpu().tolist()
            start = 0
            for rec, vals in self._pending_samples:
                rec.samples = host[start : start + vals.numel()]  # type: ignore[attr-defined]
                start += vals.numel()
        self._pending.clear()
        self._rows.clear()
        self._pending_samples.clear()
        self._seen.clear()
