"""Where this process sits in a torch.distributed job, and how to look through DDP/FSDP2 wrappers.

Nothing here starts a collective except `init_distributed` and `run_on_main` (a barrier).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import torch
from torch import nn

from .shards import is_dtensor

T = TypeVar("T")


def is_distributed() -> bool:
    """True inside an initialised process group with more than one rank."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's global rank (0 outside torch.distributed)."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Number of ranks (1 outside torch.distributed)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def backend_for(device: torch.device | str) -> str:
    """The collective backend for tensors on `device`: NCCL for CUDA, gloo for the CPU."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def init_distributed(device: torch.device | str | None = None, timeout_s: float = 120.0) -> torch.device:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_PORT in the environment).

    Picks the backend from the device (CUDA -> NCCL and `cuda:LOCAL_RANK`, else gloo on the CPU), binds
    to 127.0.0.1 unless MASTER_ADDR is set, and uses a finite timeout so a rank that never arrives
    raises instead of hanging. Returns this rank's device. Idempotent."""
    import torch.distributed as dist

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL and gather_object use the current device
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        dist.init_process_group(backend_for(device), timeout=timedelta(seconds=timeout_s))
    return device


def unwrap(model: nn.Module) -> tuple[nn.Module, str | None]:
    """(module to trace, wrapper kind). DDP is replaced by its `.module`, so record names are the
    model's own paths ("blocks.0.attn", not "module.blocks.0.attn"). FSDP2 (`fully_shard`) keeps
    the module tree and names; it is reported as "fsdp2" when any parameter is a DTensor."""
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(model, DistributedDataParallel):
        return model.module, "ddp"
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):  # fully_shard needs a process group
        return model, None
    if any(is_dtensor(p) for p in model.parameters()):
        return model, "fsdp2"
    return model, None


def reshard(model: nn.Module) -> None:
    """Put FSDP2's sharded parameters back after a forward without a backward (a probe): the root keeps its
    parameters unsharded after a forward, and a tensor taken from the module then is a view of a buffer that
    the next forward frees. Does nothing to a model without FSDP2 modules."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch built without distributed support
        return
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def run_on_main(fn: Callable[[bool], T], *, every_rank: bool) -> T | None:
    """Run fn(is_main) so that its result appears once, on rank 0; other ranks get None.

    every_rank=False: only rank 0 runs fn (the model needs no collectives, e.g. DDP's inner module).
    every_rank=True: every rank runs fn (an FSDP2 forward all-gathers, so all ranks must take part).
    All ranks leave together through a barrier; call this on every rank."""
    import torch.distributed as dist

    main = rank() == 0
    result: Any = None
    try:
        if main or every_rank:
            result = fn(main)
    finally:
        if is_distributed():
            dist.barrier()
    return result if main else None
