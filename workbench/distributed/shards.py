"""Sharded tensors: this rank's piece of an FSDP2 (DTensor) parameter, and the reductions that turn
per-shard statistics into whole-tensor ones. Imports only torch, so capture can use it.

A DTensor parameter of `fully_shard` keeps its full shape (`p.shape`) while this rank holds
`p.to_local()`, a slice along dim 0. A norm computed on the slice is not the parameter's norm:
squared norms and NaN counts are summed over the mesh dimensions the tensor is sharded on, absolute
maxima are max-reduced. Replicated dimensions (DDP, the replicate dim of HSDP) are not reduced,
since every rank already holds the same values there (summing them would count them twice).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeGuard

import torch

if TYPE_CHECKING:
    from torch.distributed.tensor import DTensor

_DTENSOR: list[type | None] = []  # the DTensor class, looked up once (None without torch.distributed)


def _dtensor_type() -> type | None:
    if not _DTENSOR:
        cls: type | None
        try:
            from torch.distributed.tensor import DTensor as cls
        except ImportError:  # torch built without distributed support
            cls = None
        _DTENSOR.append(cls)
    return _DTENSOR[0]


def is_dtensor(t: object) -> TypeGuard[DTensor]:
    """True for a torch.distributed DTensor (FSDP2 parameters and their gradients)."""
    cls = _dtensor_type()
    return cls is not None and isinstance(t, cls)


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor; a plain tensor is returned as is."""
    return t.to_local() if is_dtensor(t) else t


def local_nbytes(t: torch.Tensor) -> int:
    """Bytes this rank holds for `t` (its shard for a DTensor)."""
    loc = local_tensor(t)
    return loc.numel() * loc.element_size()


def shard_groups(t: torch.Tensor) -> list[Any]:
    """Process groups over which `t` is sharded (empty for plain or fully replicated tensors)."""
    if not is_dtensor(t):
        return []
    mesh = t.device_mesh
    return [mesh.get_group(dim) for dim, pl in enumerate(t.placements) if pl.is_shard()]


def reduce_rows(rows: list[torch.Tensor], groups: list[list[Any]], max_cols: tuple[int, ...] = ()) -> None:
    """All-reduce per-shard statistics in place, batching rows that share the same groups.

    rows[i]: a 1-D float tensor of statistics of tensor i on this rank; groups[i] from `shard_groups`.
    Columns in max_cols are max-reduced, the others summed. Every rank must call this with the same
    tensors in the same order (true when each rank traces the same model), or the collectives hang.
    """
    import torch.distributed as dist

    batches: dict[tuple[int, ...], list[int]] = {}
    for i, gs in enumerate(groups):
        if gs:
            batches.setdefault(tuple(id(g) for g in gs), []).append(i)
    for idx in batches.values():
        block = torch.stack([rows[i] for i in idx])  # (N, K)
        sums = block.clone()
        sums[:, list(max_cols)] = 0
        maxes = block[:, list(max_cols)].clone() if max_cols else None
        for g in groups[idx[0]]:
            dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=g)
            if maxes is not None:
                dist.all_reduce(maxes, op=dist.ReduceOp.MAX, group=g)
        if maxes is not None:
            sums[:, list(max_cols)] = maxes
        for j, i in enumerate(idx):
            rows[i].copy_(sums[j])
