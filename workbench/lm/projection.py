"""An attention module's output projection and head count: where one head's output can be read or replaced.

Every multi-head attention ends in one projection whose input (B, T, H*D) is the heads' outputs side by side,
head h in columns h*D:(h+1)*D (the `z` of TransformerLens), so a head is patched or ablated by editing those
columns of that module's input, on SDPA and eager models alike. Families name the projection differently
(`o_proj`, `out_proj`, `dense`, `c_proj`, the workbench's `out`); it is found among the attention's direct
children by those names, then as its only child projection whose input is as wide as its output.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import InterventionError
from .adapter import config_value

__all__ = ["head_count", "output_projection"]

_NAMES = ("o_proj", "out_proj", "dense", "c_proj", "out", "wo", "proj")
_HEADS = ("num_heads", "num_attention_heads", "n_heads", "n_head", "num_attn_heads")


def _width(module: nn.Module) -> tuple[int, int] | None:
    """(in, out) of a projection: an `nn.Linear`, or anything with a 2-D weight (GPT-2's Conv1D stores it (in, out))."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    weight = getattr(module, "weight", None)
    if weight is not None and getattr(weight, "ndim", 0) == 2:
        nx = getattr(module, "nx", None)  # transformers' Conv1D: weight (in, out), `nx` its input width
        return (weight.shape[0], weight.shape[1]) if nx == weight.shape[0] else (weight.shape[1], weight.shape[0])
    return None


def output_projection(attention: nn.Module) -> tuple[str, nn.Module]:
    """(child name, module) of the attention's output projection: the module whose input is the heads' outputs
    (B, T, H*D). Raises InterventionError naming the attention's children when none can be told apart."""
    children = dict(attention.named_children())
    for name in _NAMES:
        if name in children and _width(children[name]) is not None:
            return name, children[name]
    square = [(n, m) for n, m in children.items() if (w := _width(m)) is not None and w[0] == w[1]]
    if len(square) == 1:
        return square[0]
    raise InterventionError(
        f"cannot tell which child of {type(attention).__name__} is its output projection (children: "
        f"{', '.join(children) or 'none'}); name the attention module itself, whose child projection is called "
        f"one of {', '.join(_NAMES)}.")


def head_count(model: nn.Module, attention: nn.Module) -> int:
    """H, the query heads of `attention`: its own attribute, else the model's config."""
    for name in _HEADS:
        value: Any = getattr(attention, name, None)
        if isinstance(value, int) and value > 0:
            return value
    config = getattr(attention, "config", None) or getattr(model, "config", None)
    value = config_value(config, "num_attention_heads", "n_heads", "n_head", "num_heads")
    if isinstance(value, int) and value > 0:
        return value
    raise InterventionError(f"cannot find the head count of {type(attention).__name__}: give it a `num_heads` "
                            "attribute, or the model a config with `num_attention_heads`.")
