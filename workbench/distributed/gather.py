"""Per-rank tagging, per-rank memory, global gradient norms and `Trace.gather` over torch.distributed.

Each rank traces its own process; `gather_trace` sends every rank's trace to one rank with
`torch.distributed.gather_object`: records travel as the same JSON document `Trace.save` writes,
attention maps as CPU float16 tensors. The result is one `Trace` whose records carry `rank`; use
`ranks` and `for_rank(r)` to look at one rank (a rank's own tree of calls), and `rank_memory` for a
table with one row per rank.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import CaptureError
from .env import is_distributed, rank, world_size
from .shards import local_nbytes, local_tensor, reduce_rows, shard_groups

if TYPE_CHECKING:
    from ..capture.trace import Trace


def rank_meta(params: Iterable[torch.Tensor], saved_bytes: int | None, wrapper: str | None) -> dict[str, Any]:
    """Trace.meta fields describing this rank: rank, world_size, backend, wrapper and `rank_memory`
    (bytes this rank holds: its parameter shards, its gradient shards, activations saved for backward)."""
    import torch.distributed as dist

    params = list(params)
    backend = dist.get_backend() if dist.is_available() and dist.is_initialized() else None
    return {
        "rank": rank(),
        "world_size": world_size(),
        "backend": backend,
        "wrapper": wrapper,
        "rank_memory": {
            "param_bytes": sum(local_nbytes(p) for p in params),  # this rank's shards (FSDP2) or replica
            "grad_bytes": sum(local_nbytes(p.grad) for p in params if p.grad is not None),
            "activation_bytes": saved_bytes,  # saved for backward (memory=True), else None
            "param_bytes_full": sum(p.numel() * p.element_size() for p in params),  # unsharded model
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


# --- gather -------------------------------------------------------------------------------------
def gather_trace(tr: Trace, dst: int = 0, group: Any = None) -> Trace | None:
    """Collect every rank's trace on rank `dst` (a collective: call it on every rank).

    Returns the merged Trace on `dst` and None on the other ranks. Outside torch.distributed it
    returns `tr` itself. Under NCCL, set the CUDA device first (init_distributed does)."""
    import torch.distributed as dist

    if not tr.meta:
        raise CaptureError("gather() needs a finished trace: call it after the with block has exited.")
    if not is_distributed():
        return tr
    doc = json.dumps(tr._to_doc(), allow_nan=True, default=repr)
    maps = [a.map for a in tr.attention]
    payload = {"doc": doc, "maps": maps}
    here = dist.get_rank()
    out: list[Any] | None = [None] * dist.get_world_size(group) if here == dst else None
    dist.gather_object(payload, out, dst=dst, group=group)
    if out is None:
        return None
    from ..capture.trace import Trace

    parts = [Trace._from_doc(json.loads(p["doc"]), dict(enumerate(p["maps"]))) for p in out]
    return merge_traces(parts)


def merge_traces(parts: list[Trace]) -> Trace:
    """One Trace holding several ranks' traces: records, attention and gradients concatenated in rank
    order (each tagged with its rank); meta is the lowest rank's, plus `ranks` and `by_rank`."""
    from ..capture.trace import Trace

    parts = sorted(parts, key=lambda t: t.meta.get("rank", 0))
    merged = Trace()
    for part in parts:
        r = part.meta.get("rank", 0)
        merged.records += [dataclasses.replace(x, rank=r) for x in part.records]
        merged.gradients += [dataclasses.replace(g, rank=r) for g in part.gradients]
        merged.attention += [dataclasses.replace(a, rank=r) for a in part.attention]
    for i, a in enumerate(merged.attention):  # unique across ranks, so save() keys do not collide
        a.index = i
    merged.meta = {**parts[0].meta, "ranks": [p.meta.get("rank", 0) for p in parts],
                   "by_rank": [p.meta for p in parts]}
    merged.meta["attention_bytes"] = sum(a.map_bytes for a in merged.attention)
    return merged


def trace_ranks(tr: Trace) -> list[int]:
    """Ranks present in a trace: all gathered ranks, or this trace's own rank."""
    return list(tr.meta.get("ranks") or [tr.meta.get("rank", 0)])


def trace_for_rank(tr: Trace, r: int) -> Trace:
    """The part of a (gathered) trace that rank `r` recorded, as a single-rank Trace."""
    from ..capture.trace import Trace

    ranks = trace_ranks(tr)
    if r not in ranks:
        raise CaptureError(f"rank {r} is not in this trace (ranks {ranks}); gather with tr.gather() first.")
    if "by_rank" not in tr.meta:
        return tr
    one = Trace()
    one.meta = tr.meta["by_rank"][ranks.index(r)]
    one.records = [x for x in tr.records if x.rank == r]
    one.gradients = [g for g in tr.gradients if g.rank == r]
    one.attention = [dataclasses.replace(a, index=i) for i, a in enumerate(x for x in tr.attention if x.rank == r)]
    return one


def rank_memory(tr: Trace) -> Any:
    """pandas DataFrame, one row per rank: param_bytes (its shards), grad_bytes, activation_bytes,
    param_bytes_full (the unsharded model), plus wrapper and world_size."""
    import pandas as pd

    metas = tr.meta.get("by_rank") or [tr.meta]
    rows = [{"rank": m.get("rank", 0), "world_size": m.get("world_size", 1), "wrapper": m.get("wrapper"),
             **(m.get("rank_memory") or {})} for m in metas]
    return pd.DataFrame(rows).set_index("rank")
