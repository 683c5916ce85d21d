"""Where a module's tensors live, asked the same way everywhere: its first parameter, else its first
buffer, else the CPU in float32 (a module without tensors, such as a wrapper around a function)."""

from __future__ import annotations

import itertools

import torch
from torch import nn


def _first_tensor(module: nn.Module) -> torch.Tensor | None:
    return next(itertools.chain(module.parameters(), module.buffers()), None)


def module_device(module: nn.Module) -> torch.device:
    """The device of the module's first parameter or buffer; the CPU when it holds none."""
    first = _first_tensor(module)
    return first.device if first is not None else torch.device("cpu")


def module_dtype(module: nn.Module) -> torch.dtype:
    """The dtype of the module's first floating parameter or buffer; float32 when it holds none."""
    first = next((t for t in itertools.chain(module.parameters(), module.buffers()) if t.is_floating_point()), None)
    return first.dtype if first is not None else torch.float32
