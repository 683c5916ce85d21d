"""Where a patch goes in each block: the module whose output (or, for heads, whose input) is replaced.

A site is found once per sweep from the blocks the adapter finds (`ModelAdapter.blocks()`):
- "resid": the block's own output, the residual stream after the block;
- "attn" / "mlp": the block's attention or MLP submodule's output (the first tensor of a tuple output);
- a dotted name relative to each block ("self_attn.o_proj", "mlp.down_proj"): that module's output;
- "heads": the input of the attention's output projection (B, T, H*D), head h in columns h*D:(h+1)*D.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from ..errors import InterventionError
from ..lm.adapter import ModelAdapter
from ..lm.projection import head_count, output_projection

__all__ = ["KINDS", "Site", "find_site"]

KINDS = ("resid", "attn", "mlp", "heads")
_ATTN = re.compile(r"^(self_?)?att(n|ention)$|^attn$", re.IGNORECASE)
_MLP = re.compile(r"^(mlp|ffn|feed_?forward|block_sparse_moe|moe)$", re.IGNORECASE)


@dataclass(frozen=True)
class Site:
    """The patched module of each block, and how its activation is read: its output, or (heads) its input."""

    kind: str  # "resid", "attn", "mlp", "heads" or a dotted name relative to each block
    blocks: tuple[str, ...]  # every block's module name, in order (the sweep resumes from these)
    modules: tuple[str, ...]  # the patched module of each block
    on_input: bool = False  # heads: the module's first input (B, T, H*D), else its output
    heads: int = 0  # H, for kind "heads"

    @property
    def layers(self) -> int:
        return len(self.blocks)


def _params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _child(block: nn.Module, pattern: re.Pattern[str]) -> str | None:
    """The shallowest submodule of `block` whose own name matches and that holds parameters."""
    found = [(n.count("."), n) for n, m in block.named_modules()
             if n and pattern.search(n.rsplit(".", 1)[-1]) and _params(m)]
    return min(found)[1] if found else None


def _projection(block: nn.Module) -> str | None:
    """The output projection (relative name) of the block's attention: of the attention or of a module inside it
    (GPT-Neo wraps its attention in another)."""
    attention = _child(block, _ATTN)
    if attention is None:
        return None
    for name, module in block.get_submodule(attention).named_modules():
        try:
            child, _ = output_projection(module)
        except InterventionError:
            continue
        return ".".join(p for p in (attention, name, child) if p)
    return None


def _relative(block: nn.Module, kind: str) -> str | None:
    if kind == "resid":
        return ""
    if kind == "attn":
        return _child(block, _ATTN)
    if kind == "mlp":
        return _child(block, _MLP)
    if kind == "heads":
        return _projection(block)
    try:
        block.get_submodule(kind)
    except AttributeError:
        return None
    return kind


def find_site(adapter: ModelAdapter, kind: str) -> Site:
    """The site `kind` in every block of the adapter's model; an InterventionError names the fix when a block
    has none."""
    found = adapter.blocks()
    if found is None:
        raise InterventionError("cannot find the model's transformer blocks (an nn.ModuleList of layers); "
                                "patching sweeps need them.")
    _, blocks = found
    if not isinstance(kind, str) or not kind:
        raise InterventionError(f"the site must be one of {', '.join(KINDS)} or a module name inside each block, "
                                f"got {kind!r}.")
    modules = []
    for name, block in blocks:
        rel = _relative(block, kind)
        if rel is None:
            children = ", ".join(n for n, _ in block.named_children())
            what = f"site {kind!r}" if kind in KINDS else f"module {kind!r}"
            raise InterventionError(
                f"block {name} ({type(block).__name__}) has no {what}; its children are: {children}. Name one of "
                f"them (a dotted name relative to the block, e.g. {next(iter(dict(block.named_children())), 'x')!r})"
                f", or use one of {', '.join(KINDS)}.")
        modules.append(f"{name}.{rel}" if rel else name)
    heads = 0
    if kind == "heads":
        heads = _heads(adapter.model, blocks[0][1], modules[0][len(blocks[0][0]) + 1:])
    return Site(kind, tuple(n for n, _ in blocks), tuple(modules), on_input=kind == "heads", heads=heads)


def _heads(model: nn.Module, block: nn.Module, projection: str) -> int:
    """H of the attention that owns `projection` (relative to `block`)."""
    owner = block.get_submodule(projection.rsplit(".", 1)[0]) if "." in projection else block
    return head_count(model, owner)
