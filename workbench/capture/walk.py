"""Walking nested module inputs/outputs: (path, tensor) lists, tensor metadata, first floating tensor."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from .records import TensorMeta

MAX_TENSORS = 32  # tensors listed per input/output structure (a KV cache can hold hundreds)


def flatten_tensors(obj: Any, path: str, out: list[tuple[str, torch.Tensor]], depth: int = 0) -> None:
    """Tensors inside tuples, lists and dicts (HF ModelOutput is a dict), in order, with their paths."""
    if len(out) >= MAX_TENSORS or depth > 6:
        return
    if isinstance(obj, torch.Tensor):
        out.append((path, obj))
    elif isinstance(obj, dict):
        for k, v in obj.items():
            flatten_tensors(v, f"{path}.{k}", out, depth + 1)
    elif isinstance(obj, (tuple, list)):
        for i, v in enumerate(obj):
            if isinstance(v, torch.Tensor) and len(out) < MAX_TENSORS:  # common case, no recursion
                out.append((f"{path}.{i}", v))
            else:
                flatten_tensors(v, f"{path}.{i}", out, depth + 1)


_NAMES: dict[Any, str] = {}  # torch.dtype / torch.device -> its text, e.g. "float32", "cuda:0"


def _name(key: Any, text: str) -> str:
    _NAMES[key] = text
    return text


def tensor_meta(path: str, t: torch.Tensor) -> TensorMeta:
    dt, dev = t.dtype, t.device
    return TensorMeta(path, list(t.shape), _NAMES.get(dt) or _name(dt, str(dt)[6:]),
                      _NAMES.get(dev) or _name(dev, str(dev)), t.nbytes)


def first_float_in(values: tuple) -> torch.Tensor | None:
    """First floating tensor among positional values, looking one level into tuples/lists."""
    for v in values:
        if isinstance(v, torch.Tensor):
            if v.is_floating_point():
                return v
        elif isinstance(v, (tuple, list)):
            for t in v:
                if isinstance(t, torch.Tensor) and t.is_floating_point():
                    return t
    return None


def first_float(tensors: list[tuple[str, torch.Tensor]]) -> torch.Tensor | None:
    for _, t in tensors:
        if t.is_floating_point():
            return t
    return None




def distinct_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the tensors, each storage counted once (outputs often alias one buffer)."""
    seen: set[int] = set()
    total = 0
    for t in tensors:
        ptr = t.data_ptr()
        if ptr not in seen:
            seen.add(ptr)
            total += t.numel() * t.element_size()
    return total
