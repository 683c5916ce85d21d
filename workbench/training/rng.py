"""Every random stream a training step may draw from, saved and put back, so a replayed step draws what the
step drew and the run goes on drawing what it would have drawn."""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class RngState:
    """torch's CPU generator, every initialised CUDA device's, Python's `random` and NumPy's global one (when
    NumPy is loaded): what dropout, data augmentation and sampling in a step's closure draw from."""

    cpu: torch.Tensor
    cuda: tuple[torch.Tensor, ...]
    python: Any
    numpy: Any

    @classmethod
    def capture(cls) -> RngState:
        cuda = tuple(torch.cuda.get_rng_state_all()) if torch.cuda.is_initialized() else ()
        np = sys.modules.get("numpy")
        return cls(torch.get_rng_state(), cuda, random.getstate(),
                   np.random.get_state() if np is not None else None)

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda:
            torch.cuda.set_rng_state_all(list(self.cuda))
        random.setstate(self.python)
        np = sys.modules.get("numpy")
        if np is not None and self.numpy is not None:
            np.random.set_state(self.numpy)
