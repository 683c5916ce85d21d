"""torch.distributed support: trace and diagnose models wrapped in DDP or sharded with FSDP2.

Run the same script on every rank (torchrun): `workbench.trace` records each rank's calls (tagged
with `rank`, names without DDP's "module." prefix), reduces FSDP2 gradient statistics over the
shards, and `tr.gather(dst=0)` brings all ranks' records to one rank (`workbench.capture.ranks`).
See examples/distributed_trace.py.
"""

from .env import backend_for, init_distributed, is_distributed, rank, reshard, run_on_main, unwrap, world_size
from .gather import global_grad_norm, rank_meta
from .shards import is_dtensor, local_nbytes, local_tensor

__all__ = [
    "backend_for",
    "global_grad_norm",
    "init_distributed",
    "is_distributed",
    "is_dtensor",
    "local_nbytes",
    "local_tensor",
    "rank",
    "rank_meta",
    "reshard",
    "run_on_main",
    "unwrap",
    "world_size",
]
