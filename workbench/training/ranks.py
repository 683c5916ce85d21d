"""How a process takes part in a recorded run: alone, or as one rank of a torch.distributed job (DDP, FSDP2).

Under torchrun every rank records its own forward and backward; the per-step values are reduced to the whole
batch's before any trigger judges them, so that every rank fires the same triggers on the same step (a replay
runs the step's forward and backward again, and DDP's gradient all-reduce or FSDP2's all-gathers need every
rank in it), and only rank 0 writes the run file. Each rank holds an equal share of the batch (as
DistributedSampler gives), so a mean over the batch is the mean of the ranks' means.
"""

from __future__ import annotations

import torch

from ..distributed import is_distributed, rank, world_size


class Ranks:
    """This process's part: `main` (it writes the run file) and the reductions over ranks. Outside a process
    group of more than one rank every reduction returns its input."""

    def __init__(self) -> None:
        self.distributed = is_distributed()
        self.main = rank() == 0
        self.world = world_size()

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        """The mean over ranks of a per-rank mean (the loss)."""
        if not self.distributed:
            return t
        import torch.distributed as dist

        out = t.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out / self.world

    def max(self, t: torch.Tensor) -> torch.Tensor:
        """The largest value over ranks (max |logit|, max attention score)."""
        if not self.distributed:
            return t
        import torch.distributed as dist

        out = t.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.MAX)
        return out

    def activations(self, stats: torch.Tensor) -> torch.Tensor:
        """(L, 3) block statistics (rms, max |x|, non-finite count) of this rank's share, made the whole
        batch's: the RMS from the mean of the ranks' mean squares, the max over ranks, the count summed."""
        if not self.distributed:
            return stats
        import torch.distributed as dist

        sq = stats[:, 0].square()
        parts = torch.stack([sq, stats[:, 2]])  # (2, L): mean squares and counts, summed over ranks
        dist.all_reduce(parts, op=dist.ReduceOp.SUM)
        top = self.max(stats[:, 1])
        return torch.stack([(parts[0] / self.world).sqrt(), top, parts[1]], dim=1)  # (L, 3)
