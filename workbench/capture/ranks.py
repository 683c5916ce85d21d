"""Traces of several ranks: `gather_trace` brings every rank's trace to one rank, `merge_traces` joins
them (each record tagged with its rank), `trace_for_rank` takes one rank's part back out, and
`rank_memory` tabulates what each rank held.

Records travel as the text `serialize.dumps` writes (the same as `Trace.save`), attention maps as
CPU float16 tensors, through `torch.distributed.gather_object`.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from ..distributed.env import is_distributed
from ..errors import CaptureError
from . import serialize

if TYPE_CHECKING:
    from .trace import Trace


def gather_trace(tr: Trace, dst: int = 0, group: Any = None) -> Trace | None:
    """Collect every rank's trace on rank `dst` (a collective: call it on every rank).

    Returns the merged Trace on `dst` and None on the other ranks. Outside torch.distributed it
    returns `tr` itself. Under NCCL, set the CUDA device first (init_distributed does)."""
    import torch.distributed as dist

    if not tr.meta:
        raise CaptureError("gather() needs a finished trace: call it after the with block has exited.")
    if not is_distributed():
        return tr
    payload = {"doc": serialize.dumps(tr), "maps": serialize.maps(tr)}
    here = dist.get_rank()
    out: list[Any] | None = [None] * dist.get_world_size(group) if here == dst else None
    dist.gather_object(payload, out, dst=dst, group=group)
    if out is None:
        return None
    return merge_traces([serialize.loads(p["doc"], p["maps"], type(tr)) for p in out])


def merge_traces(parts: list[Trace]) -> Trace:
    """One Trace holding several ranks' traces: records, attention and gradients concatenated in rank
    order (each tagged with its rank); meta is the lowest rank's, plus `ranks` and `by_rank`."""
    parts = sorted(parts, key=lambda t: t.meta.get("rank", 0))
    merged = type(parts[0])()
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
    ranks = trace_ranks(tr)
    if r not in ranks:
        raise CaptureError(f"rank {r} is not in this trace (ranks {ranks}); gather with tr.gather() first.")
    if "by_rank" not in tr.meta:
        return tr
    one = type(tr)()
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
