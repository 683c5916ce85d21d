"""Activation statistics on an accelerator, in batches: one copy kernel per tensor, ~13 per batch.

A forward of a 30-layer model yields ~400 distinct activations. Reducing each where it appears takes
9 small kernels per tensor, ~3,500 launches whose host cost lands on the wall clock whenever the
forward is launch-bound (a bf16 forward of a small model on a large GPU is). Instead each activation
is copied, as it appears, into a row of a preallocated (rows, numel) buffer for its dtype and size,
and a full buffer is reduced along its rows once, whatever the number of rows.

The copy is taken at once, so an in-place edit made after the module returned (a downstream
`ReLU(inplace=True)`, a `+=` in the parent's forward) cannot change the statistics. Buffers stay
within `budget_bytes`: reaching it reduces and frees every buffer first, and a tensor larger than
the whole budget is reduced where it is, without a copy. Results stay on the device until `host()`
reads them back with one transfer per kind (floats, counts).
"""

from __future__ import annotations

import torch

from .records import ActStats

ROWS = 64  # at most this many activations per buffer


def batch_stats(x: torch.Tensor, dim: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (dim=1 of a (n, numel) buffer) or whole-tensor (dim=None) statistics, on x's device:
    floats (n, 4) float64 = sum, L2 norm, min, max (float32 accumulation, float64 for float64 input)
    and counts (n, 3) int64 = NaN, Inf, -Inf. min/max propagate NaN, like amin/amax."""
    acc = None if x.dtype in (torch.float32, torch.float64) else torch.float32
    total = x.sum(dim=dim, dtype=acc)
    norm = torch.linalg.vector_norm(x, dim=dim, dtype=acc)
    mn, mx = torch.aminmax(x, dim=dim)
    floats = torch.stack([total.double(), norm.double(), mn.double(), mx.double()], dim=-1)
    counts = torch.stack([torch.isnan(x).sum(dim=dim), torch.isinf(x).sum(dim=dim),
                          torch.isneginf(x).sum(dim=dim)], dim=-1)
    return floats.reshape(-1, 4), counts.reshape(-1, 3)


class _Group:
    """A (rows, numel) buffer of one dtype and size, filled from row 0."""

    __slots__ = ("buf", "n", "owners")

    def __init__(self, buf: torch.Tensor) -> None:
        self.buf, self.n = buf, 0
        self.owners: list[ActStats] = []


class DeviceStats:
    """Pending statistics of one device; `add` copies, `host` reduces what is left and reads back."""

    def __init__(self, device: torch.device, budget_bytes: int) -> None:
        self.device, self.budget = device, budget_bytes
        self._groups: dict[tuple[torch.dtype, int], _Group] = {}
        self._allocated = 0  # bytes of buffers held now
        self._done: list[tuple[list[ActStats], torch.Tensor, torch.Tensor]] = []
        self.peak_bytes = 0  # most buffer bytes held at once (<= budget)
        self.batches = 0  # reductions launched (one per full buffer, per flush, per oversized tensor)

    def add(self, x: torch.Tensor, st: ActStats) -> None:
        """Queue x's statistics into `st` (filled in by `host`)."""
        row_bytes = x.numel() * x.element_size()
        if row_bytes > self.budget:  # larger than every buffer may be: reduce it in place, no copy
            self._done.append(([st], *batch_stats(x, None)))
            self.batches += 1
            return
        key = (x.dtype, x.numel())
        group = self._groups.get(key)
        if group is None:
            rows = max(1, min(ROWS, self.budget // (4 * row_bytes)))  # a quarter of the budget at most
            if self._allocated + rows * row_bytes > self.budget:
                self._reduce_all(free=True)
            group = self._groups[key] = _Group(torch.empty(rows, x.numel(), dtype=x.dtype, device=self.device))
            self._allocated += rows * row_bytes
            self.peak_bytes = max(self.peak_bytes, self._allocated)
        group.buf[group.n].view(x.shape).copy_(x)  # one kernel, whatever x's strides
        group.owners.append(st)
        group.n += 1
        if group.n == group.buf.shape[0]:
            self._reduce(group)

    def _reduce(self, group: _Group) -> None:
        self._done.append((group.owners, *batch_stats(group.buf[: group.n], 1)))
        group.n, group.owners = 0, []
        self.batches += 1

    def _reduce_all(self, free: bool) -> None:
        for group in self._groups.values():
            if group.n:
                self._reduce(group)
        if free:
            self._groups.clear()
            self._allocated = 0

    def host(self) -> list[tuple[ActStats, list[float], list[int]]]:
        """(stats, [sum, norm, min, max], [nan, inf, neginf]) for every tensor added, in one read-back
        per kind (the first one waits for the device); buffers are freed."""
        self._reduce_all(free=True)
        if not self._done:
            return []
        floats = torch.cat([f for _, f, _ in self._done]).cpu().tolist()
        counts = torch.cat([c for _, _, c in self._done]).cpu().tolist()
        owners = [st for batch, _, _ in self._done for st in batch]
        self._done.clear()
        return list(zip(owners, floats, counts))
