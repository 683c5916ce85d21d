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


def checked_device(device: torch.device | str | int) -> torch.device:
    """`device` as a torch.device, refused with a clear `InputError` when it names no device type or one this
    machine does not have (CUDA without a GPU, cuda:3 on a one-GPU machine, MPS off a Mac) — before any
    tensor moves, instead of a raw RuntimeError or AssertionError from `.to()`."""
    from ..errors import InputError

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as err:
        raise InputError(f"device={device!r} is not a torch device ({err}); use 'cpu', 'cuda', 'cuda:0' or "
                         "'mps'.") from None
    if dev.type == "meta":
        raise InputError("device='meta' holds no values, so nothing can run there; use 'cpu' or a GPU.")
    backend = getattr(torch, dev.type, None) if dev.type != "cpu" else None
    available = getattr(backend, "is_available", None)
    if callable(available) and not available():
        raise InputError(f"device={str(dev)!r} was asked for, but this machine has no {dev.type} device "
                         f"(torch.{dev.type}.is_available() is False); use 'cpu'.")
    count = getattr(backend, "device_count", None)
    if dev.index is not None and callable(count) and dev.index >= count():
        raise InputError(f"device={str(dev)!r} was asked for, but this machine has {count()} {dev.type} "
                         f"device(s), numbered from 0.")
    return dev
