"""Train a tiny language model with the run recorder on, and plant a learning-rate spike that it catches.

    python examples/train_with_recorder.py --out run.wbrun                      # a plain loop
    torchrun --standalone --nproc-per-node 2 examples/train_with_recorder.py    # DDP, 2 gloo ranks on the CPU

Watch it from a notebook while it runs: `wb.RunView("run.wbrun")`. At step `--spike-at` the learning rate is
multiplied by `--spike`: the next steps' loss and gradient norm jump, a trigger fires, and the recorder
replays that step under a full trace (`run.wbrun.replays/`). Under torchrun every rank trains on its half of
each batch and rank 0 alone writes the file.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F

import workbench as wb
from workbench.training import RecorderConfig, RunRecorder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="run.wbrun", help="the run file (replaced if it holds a run)")
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--spike-at", type=int, default=80, help="step whose learning rate is spiked (-1: none)")
    p.add_argument("--spike", type=float, default=300.0, help="factor of the learning-rate spike")
    p.add_argument("--sleep", type=float, default=0.0, help="seconds to wait per step (to watch it live)")
    args = p.parse_args()
    torch.set_num_threads(1)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank, world = 0, 1
    if distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        from workbench.distributed import init_distributed

        init_distributed("cpu")
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    torch.manual_seed(0)  # the same initial weights on every rank
    model: torch.nn.Module = wb.TransformerLM(wb.ModelConfig.preset("tiny"))
    if distributed:
        model = DDP(model)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    config = RecorderConfig(flush_every=5, flush_seconds=1.0, attention_every=10, min_history=10, window=50,
                            replay_cooldown=20, doctor_checks=("nonfinite", "gradients"))
    data = torch.randint(0, 64, (args.steps, 8, 17), generator=torch.Generator().manual_seed(1))  # (S, B, T+1)
    share = data.shape[1] // world
    with RunRecorder(model, args.out, optimizer=opt, config=config, overwrite=True) as rec:
        for step, batch in enumerate(data[:, rank * share:(rank + 1) * share]):
            for group in opt.param_groups:
                group["lr"] = 3e-3 * (args.spike if step == args.spike_at else 1.0)

            def closure(batch: torch.Tensor = batch) -> torch.Tensor:
                opt.zero_grad()
                logits = model(batch[:, :-1])  # (B, T, V)
                loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
                loss.backward()
                return loss
            rec.step(closure)
            opt.step()
            time.sleep(args.sleep)
    if rank == 0:
        with wb.RunFile(args.out) as run:
            for event in run.events():
                print(f"step {event.step}: {event.kind} ({event.detail})")
            for replay in run.replays():
                print(f"step {replay.step} replayed; first module out of range: {replay.first_module}")
    if distributed:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
