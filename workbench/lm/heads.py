"""Where each layer's attention heads are, on any causal LM: the attention module inside each block and its
output projection, whose input (B, T, H*D) holds the H heads' outputs side by side (head h in columns
h*D:(h+1)*D). Editing that input edits one head before the heads are mixed, on SDPA and eager models alike,
without knowing how the attention itself is computed.

Blocks come from the adapter (`ModelAdapter.blocks()`); the attention module is the first module of a block
named `attn`, `self_attn`, `attention` or `self_attention` (or whose class name ends in "Attention"), and its
projection the first module inside it named `o_proj`, `c_proj` (GPT-2's Conv1D), `out_proj`, `dense`, `wo`,
`out` (the workbench model) or `proj`. The head count comes from the model's config (`num_attention_heads`,
`n_head`, `n_heads`, `num_heads`) or the attention module; the head dim from the projection's input width.
With grouped or multi-query attention these are the query heads, which is what the projection sees.
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass

from torch import nn

from ..errors import InterventionError
from .adapter import ModelAdapter, config_value

__all__ = ["AttentionLayer", "attention_layers"]

_ATTENTION = re.compile(r"^(self_)?att(n|ention)$")
_PROJECTIONS = ("o_proj", "c_proj", "out_proj", "dense", "wo", "out", "proj")
_HEAD_COUNT = ("num_attention_heads", "n_head", "n_heads", "num_heads")


@dataclass(frozen=True)
class AttentionLayer:
    """One block's attention: its module names and the shape of its projection's input (H heads of D)."""

    layer: int  # index of the block
    block: str  # module name of the block
    attention: str  # module name of the attention inside it
    projection: str  # module name of the output projection, whose input is (B, T, H*D)
    n_heads: int  # H, query heads
    head_dim: int  # D, the width of one head's output

    def check_head(self, head: int) -> None:
        if not isinstance(head, int) or isinstance(head, bool) or not 0 <= head < self.n_heads:
            raise InterventionError(f"head {head!r} is past layer {self.layer}'s {self.n_heads} heads; name a head "
                                    f"in 0..{self.n_heads - 1}.")


def attention_layers(model: nn.Module) -> list[AttentionLayer]:
    """Every block's attention, in block order. Raises InterventionError when the model has no blocks or a
    block has no attention module or projection this can find.

    Finding them scans every module (milliseconds on a model of hundreds), which an edit opened around each
    forward would pay each time: the answer is kept per model and reused while the model still holds the same
    block list, blocks, attention modules and projections under those names (checked by name, not by scan)."""
    heads = _config_heads(model)
    kept = _FOUND.get(model)
    if kept is not None and kept.still_in(model, heads):
        return list(kept.layers)
    found = ModelAdapter(model).blocks()
    if found is None:
        raise InterventionError(f"{type(model).__name__} has no list of transformer blocks (an nn.ModuleList of "
                                "layers), so its attention heads cannot be found; edit module outputs by name.")
    container, blocks = found
    layers = [_layer(i, name, block, heads) for i, (name, block) in enumerate(blocks)]
    _FOUND[model] = _Found(tuple(layers), container, len(blocks), heads, tuple(
        model.get_submodule(name) for layer in layers for name in (layer.block, layer.attention, layer.projection)))
    return layers


@dataclass(frozen=True)
class _Found:
    """The attention layers found in a model, and what must still hold for them to be the answer again."""

    layers: tuple[AttentionLayer, ...]
    container: str  # module name of the block list
    count: int  # its length
    heads: int | None  # the config's head count
    modules: tuple[nn.Module, ...]  # each layer's block, attention and projection, in order

    def still_in(self, model: nn.Module, heads: int | None) -> bool:
        try:
            blocks = model.get_submodule(self.container)
            if heads != self.heads or not isinstance(blocks, (nn.ModuleList, nn.Sequential)) or \
                    len(blocks) != self.count:
                return False
            names = (name for layer in self.layers for name in (layer.block, layer.attention, layer.projection))
            if any(model.get_submodule(name) is not m for name, m in zip(names, self.modules, strict=True)):
                return False
        except (AttributeError, TypeError):  # a name no longer resolves, or the block list is no list
            return False
        return all(_input_width(self.modules[3 * i + 2]) == layer.n_heads * layer.head_dim
                   for i, layer in enumerate(self.layers))


_FOUND: weakref.WeakKeyDictionary[nn.Module, _Found] = weakref.WeakKeyDictionary()


def layer_at(layers: list[AttentionLayer], layer: int) -> AttentionLayer:
    """The layer `layer` (an index), refused with the layer count when there is no such layer."""
    if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < len(layers):
        raise InterventionError(f"layer {layer!r} is past the model's {len(layers)} layers; name a layer in "
                                f"0..{len(layers) - 1}.")
    return layers[layer]


def _config_heads(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    value = config_value(config, *_HEAD_COUNT)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _layer(index: int, block_name: str, block: nn.Module, heads: int | None) -> AttentionLayer:
    attention = _find_attention(block)
    if attention is None:
        raise InterventionError(f"block {block_name!r} has no attention module named attn, self_attn, attention or "
                                "self_attention; its heads cannot be edited.")
    attn_name, attn = attention
    projection = next(((n, m) for n, m in attn.named_modules() if n.rsplit(".", 1)[-1] in _PROJECTIONS), None)
    if projection is None:
        raise InterventionError(f"the attention module {block_name}.{attn_name} has no output projection named one "
                                f"of {', '.join(_PROJECTIONS)}; its heads cannot be edited.")
    proj_name, proj = projection
    width = _input_width(proj)
    H = heads or _module_heads(attn)
    if width is None or H is None or width % H:
        raise InterventionError(f"cannot tell the heads of {block_name}.{attn_name}: {H} heads and a projection "
                                f"input of width {width}; give the model's config `num_attention_heads`.")
    return AttentionLayer(index, block_name, f"{block_name}.{attn_name}", f"{block_name}.{attn_name}.{proj_name}",
                          H, width // H)


def _find_attention(block: nn.Module) -> tuple[str, nn.Module] | None:
    named = [(n, m) for n, m in block.named_modules() if n]
    by_name = next(((n, m) for n, m in named if _ATTENTION.match(n.rsplit(".", 1)[-1])), None)
    return by_name or next(((n, m) for n, m in named if type(m).__name__.endswith("Attention")), None)


def _input_width(proj: nn.Module) -> int | None:
    """Input features of a Linear, or of GPT-2's Conv1D (weight (in, out), `nx` in)."""
    if isinstance(proj, nn.Linear):
        return proj.in_features
    nx = getattr(proj, "nx", None)
    return nx if isinstance(nx, int) else None


def _module_heads(attn: nn.Module) -> int | None:
    for name in _HEAD_COUNT:
        value = getattr(attn, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None
