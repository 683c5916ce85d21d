"""Trace a model sharded with FSDP2 on 2 ranks and view the gathered trace on rank 0.

    torchrun --standalone --nproc-per-node 2 examples/distributed_trace.py

Runs on the CPU with gloo, or on GPUs with NCCL (one per rank); only the backend differs. Every rank
runs this same script: each traces its own half of the batch, `tr.gather(dst=0)` sends the records to
rank 0, and rank 0 prints per-rank memory, the global gradient norm and a doctor report.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.fsdp import fully_shard

import workbench
from workbench.distributed import global_grad_norm, init_distributed
from workbench.model import ModelConfig, TransformerLM


def main() -> None:
    torch.set_num_threads(1)
    device = init_distributed()  # gloo on the CPU, NCCL on cuda:LOCAL_RANK; MASTER_ADDR 127.0.0.1
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # the same initial weights on every rank
    model = TransformerLM(ModelConfig.preset("tiny")).to(device)
    for block in model.blocks:
        fully_shard(block)  # each block's parameters become DTensor shards, all-gathered per forward
    fully_shard(model)

    ids = torch.randint(0, 256, (2 * world, 16), generator=torch.Generator().manual_seed(1)).to(device)
    mine = ids.chunk(world)[rank]  # (B/world, T): each rank its slice of the batch
    with workbench.trace(model, memory=True, gradients=True, attention=True) as tr:
        logits = model(mine)  # (b, T, V)
        F.cross_entropy(logits[:, :-1].flatten(0, 1), mine[:, 1:].flatten()).backward()

    gathered = tr.gather(dst=0)  # every rank must call it; None except on rank 0
    report = workbench.doctor.diagnose(model, checks=["causal_leak", "padding_mask", "nonfinite"],
                                       progress=False)  # runs on all ranks (FSDP2), returned on rank 0
    if gathered is not None:
        print(f"ranks {gathered.ranks}: {[len(gathered.for_rank(r)) for r in gathered.ranks]} calls each")
        print(gathered.rank_memory().to_string())
        print(f"global gradient norm: {global_grad_norm(gathered):.6f}")
        df = gathered.to_dataframe()
        print(df[df.name.str.fullmatch(r"blocks\.\d+")][["rank", "name", "time_ms", "saved_bytes_total"]])
        print(f"attention maps: {[(a.rank, a.module, tuple(a.map.shape)) for a in gathered.attention]}")
        print(gathered.for_rank(1).summary(max_depth=1))
        print(report)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
