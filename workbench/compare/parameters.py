"""Refuse models whose weights are not tensors compare can read, before anything runs.

`compare` reads weights from `model.named_parameters()`, and fixes write into them. For an `nn.Module`, "its
parameters are not tensors" takes three forms, each refused with the fix:
- no parameters at all (the weights kept as plain Python lists, numpy arrays or tensors set as attributes);
- weights kept beside the parameters as numpy arrays or nested lists of numbers (never registered, so never
  matched, moved or fixed);
- parameters on the meta device (built without storage: shapes but no values).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ..errors import CompareError


def _weight_like(value: object) -> str | None:
    """What a module attribute holds when it looks like a weight that is not a registered tensor."""
    if isinstance(value, np.ndarray) and value.size > 1 and np.issubdtype(value.dtype, np.number):
        return f"a numpy array {value.shape}"
    if isinstance(value, (list, tuple)) and len(value) > 1:
        first = value[0]
        if isinstance(first, (list, tuple)) and first and all(isinstance(x, numbers.Real) for x in first):
            return f"a list of {len(value)} lists of numbers"
        if all(isinstance(x, numbers.Real) and not isinstance(x, bool) for x in value) and any(
                isinstance(x, float) for x in value):
            return f"a list of {len(value)} numbers"
    return None


def stray_weights(model: nn.Module, limit: int = 3) -> list[str]:
    """Module attributes that hold weights outside torch's parameters: "`name` (what)", at most `limit`."""
    found = []
    for prefix, module in model.named_modules():
        for attr, value in vars(module).items():
            if attr.startswith("_"):
                continue
            what = _weight_like(value)
            if what is None and isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter) \
                    and value.is_floating_point() and value.dim() >= 2 and not any(True for _ in model.parameters()):
                what = f"a plain tensor {tuple(value.shape)}"
            if what is not None:
                found.append(f"`{prefix + '.' if prefix else ''}{attr}` ({what})")
                if len(found) >= limit:
                    return found
    return found


def check_parameters(model: nn.Module, which: str, partial: Callable[[], object]) -> None:
    """Raise CompareError (holding `partial()`) when `model`'s weights are not tensors compare can read."""
    params = list(model.named_parameters())
    stray = stray_weights(model)
    name = type(model).__name__
    if not params:
        held = f"; its weights sit in {', '.join(stray)}" if stray else ""
        raise CompareError(f"the {which} ({name}) has no parameters{held}: compare reads and fixes weights through "
                           "model.named_parameters(); register each weight as a tensor parameter "
                           "(self.w = nn.Parameter(torch.as_tensor(w, dtype=torch.float32))).", partial())
    if stray:
        raise CompareError(f"the {which} ({name}) keeps weights outside its parameters: {', '.join(stray)}; compare "
                           "can neither match nor fix them. Register each as an nn.Parameter (or a buffer) "
                           "holding a tensor.", partial())
    meta = [n for n, p in params if p.is_meta]
    if meta:
        raise CompareError(f"the {which} ({name}) has {len(meta)} parameters on the meta device (shapes without "
                           f"values, e.g. `{meta[0]}`): load its weights first (model.to_empty(device='cpu'), then "
                           "load_state_dict) and compare the loaded model.", partial())
