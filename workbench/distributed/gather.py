"""Per-rank tagging, per-rank memory and global gradient norms over torch.distributed.

Joining several ranks' traces is trace work and lives with the trace (`workbench.capture.ranks`,
`Trace.gather`); this module knows only tensors, modules and the process group.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import CaptureError
from .env import rank, world_size
from .shards import local_nbytes, local_tensor, reduce_rows, shard_groups

if TYPE_CHECKING:
    from ..capture.trace import Trace


def rank_meta(params: Iterable[torch.Tensor], saved_bytes: int | None, wrapper: str | None,
              param_bytes_full: int | None = None) -> dict[str, Any]:
    """Trace.meta fields describing this rank: rank, world_size, backend, wrapper and `rank_memory`
    (bytes this rank holds: its parameter shards, its gradient shards, activations saved for backward).
    `param_bytes_full` may pass the unsharded parameter bytes when the caller already knows them."""
    import torch.distributed as dist

    params = list(params)
    grouped = dist.is_available() and dist.is_initialized()
    backend = dist.get_backend() if grouped else None
    if param_bytes_full is None:
        param_bytes_full = sum(p.numel() * p.element_size() for p in params)
    # Outside a process group no parameter is sharded (workbench.distributed.unwrap looks for DTensors
    # only inside one), so this rank holds every byte.
    local = sum(local_nbytes(p) for p in params) if grouped else param_bytes_full
    return {
        "rank": rank(),
        "world_size": world_size(),
        "backend": backend,
        "wrapper": wrapper,
        "rank_memory": {
            "param_bytes": local,  # this rank's shards (FSDP2) or replica
            "grad_bytes": sum(local_nbytes(p.grad) if grouped else p.grad.nbytes
                              for p in params if p.grad is not None),
            "activation_bytes": saved_bytes,  # saved for backward (memory=True), else None
            "param_bytes_full": param_bytes_full,  # unsharded model
        },
    }


def global_grad_norm(source: nn.Module | Trace) -> float:
    """L2 norm of the whole model's gradient, identical on every rank.

    From a model: squared norms of this rank's gradient shards, summed over each parameter's shard
    group (one all_reduce per group; replicated DDP gradients are not summed again), so call it on
    every rank. From a Trace taken with gradients=True: its per-parameter norms are already whole, so
    no collective is needed (a gathered trace uses its lowest rank's records)."""
    if isinstance(source, nn.Module):
        pairs = [(p, p.grad) for p in source.parameters() if p.grad is not None]
        if not pairs:
            return 0.0
        rows = [torch.linalg.vector_norm(local_tensor(g).detach(), dtype=torch.float32).pow(2).reshape(1)
                for _, g in pairs]
        reduce_rows(rows, [shard_groups(p) for p, _ in pairs])
        return math.sqrt(float(torch.cat([r.cpu() for r in rows]).sum()))
    recs = source.gradients
    if not recs:
        raise CaptureError("This trace has no gradient records; trace with gradients=True and run backward inside.")
    first = min(getattr(g, "rank", 0) for g in recs)
    return math.sqrt(sum(g.grad_norm**2 for g in recs if g.rank == first and g.grad_norm is not None))
