"""Where a module's tensors live, asked the same way everywhere: its first parameter, else its first
buffer, else the CPU in float32 (a module without tensors, such as a wrapper around a function); and
`resolve_device`, the one check of a device argument against what this machine has."""

from __future__ import annotations

import itertools

import torch
from torch import nn

from ..errors import InputError


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


def materialize(module: nn.Module, device: torch.device) -> None:
    """Move the tensors still on the meta device to `device`, uninitialised; every other tensor stays as it is.

    For a model built on the meta device and then handed its weights: the buffers its modules compute at
    construction (`Rotary.inv_freq`, `ScaledEmbedding.scale`) come back computed, through their `_apply`.
    """
    # torch.empty, not empty_like: empty_like of a meta tensor runs a Python reference that imports sympy (seconds)
    module._apply(lambda t: torch.empty(t.shape, dtype=t.dtype, device=device) if t.is_meta else t)


def same_device(a: torch.device, b: torch.device) -> bool:
    """True when `a` and `b` name the same device; "cuda" without an index matches any CUDA device index."""
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def available_devices() -> list[str]:
    """The devices this machine offers: "cpu", then "cuda:i" and "mps" where present."""
    found = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    return found


def resolve_device(device: torch.device | str | None, *, default: torch.device | str = "cpu") -> torch.device:
    """A torch.device for a device argument, checked against this machine before anything moves there.

    Accepts a torch.device, a string such as "cpu", "cuda", "cuda:1" or "mps", or None (the `default`).
    Unknown names, devices this machine lacks and CUDA indices past the last GPU raise `InputError`
    that lists what is available, instead of a RuntimeError from deep inside `.to()`.
    """
    if device is None:
        device = default
    if isinstance(device, int) and not isinstance(device, bool):
        device = f"cuda:{device}"
    if not isinstance(device, (str, torch.device)):
        raise InputError(
            f"device must be a string such as 'cpu' or 'cuda:0', or a torch.device; got {type(device).__name__}."
        )
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError) as err:
        raise InputError(
            f"device={device!r} is not a device name; use one of {available_devices()}."
        ) from err
    if dev.type == "cpu" or dev.type == "meta":
        return dev
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InputError(f"device={device!r}, but this machine has no CUDA GPU; use one of {available_devices()}.")
        if dev.index is not None and dev.index >= count:
            raise InputError(
                f"device={device!r}, but this machine has {count} CUDA GPU(s); use one of {available_devices()}."
            )
        return dev
    if dev.type == "mps" and "mps" in available_devices():
        return dev
    raise InputError(f"device={device!r} is not available here; use one of {available_devices()}.")


def check_dtype(dtype: object) -> None:
    """A dtype argument must be None or a floating torch.dtype (torch.float32, torch.bfloat16, ...)."""
    if dtype is None:
        return
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise InputError(
            f"dtype={dtype!r} is not a floating torch dtype; pass e.g. torch.float32, torch.bfloat16 or torch.float16."
        )
