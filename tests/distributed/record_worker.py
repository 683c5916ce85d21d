"""The body each of the 2 ranks runs (gloo, CPU, 127.0.0.1) for the run recorder under DDP and FSDP2: each
rank trains on its half of every batch and records into the same path (rank 0 alone writes it); what each
rank saw goes to rank<r>.json, and the test compares the run files with one process on the whole batch."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

STEPS, B, T, SEED = 3, 4, 8, 0
REPLAY_AT = 1


def make_model() -> nn.Module:
    from workbench.model import ModelConfig, TransformerLM

    torch.manual_seed(SEED)
    return TransformerLM(ModelConfig.preset("tiny"))


def batches() -> torch.Tensor:
    return torch.randint(0, 256, (STEPS, B, T), generator=torch.Generator().manual_seed(1))


def config():  # noqa: ANN201 - a RecorderConfig (imported late: the spawned worker imports this module first)
    from workbench.training import RecorderConfig

    return RecorderConfig(attention_every=1, update_ratio_every=1, tied_every=1, doctor_checks=())


def train(model: nn.Module, path: Path, rank: int = 0, world: int = 1) -> dict:
    """SGD on this rank's share of each batch, recorded into `path`, replaying step REPLAY_AT."""
    from workbench.training import RunRecorder

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = RunRecorder(model, path, optimizer=opt, config=config(), predicate=lambda s, _: s == REPLAY_AT)
    share = B // world
    for batch in batches():
        ids = batch[rank * share:(rank + 1) * share]

        def closure(ids: torch.Tensor = ids) -> torch.Tensor:
            opt.zero_grad()
            logits = model(ids)  # (B, T, V)
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
            loss.backward()
            return loss
        rec.step(closure)
        opt.step()
    rec.close()
    return {"writes": rec.writer is not None, "replayed": rec.replayed, "events": [e.kind for e in rec.events]}


def run(rank: int, world: int, port: int, outdir: str) -> None:
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    try:
        res = {"ddp": train(DDP(make_model()), Path(outdir, "ddp.wbrun"), rank, world)}
        fsdp = make_model()
        for block in fsdp.blocks:
            fully_shard(block)
        fully_shard(fsdp)
        res["fsdp"] = train(fsdp, Path(outdir, "fsdp.wbrun"), rank, world)
        dist.barrier()  # no rank tears its connections down while another still runs a collective
    finally:
        dist.destroy_process_group()
    Path(outdir, f"rank{rank}.json").write_text(json.dumps(res))
