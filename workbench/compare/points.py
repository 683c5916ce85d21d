"""Computation points of a causal LM found by role, and their pairing between two differently built models.

A point is a place where both implementations hold the same quantity, whatever their module names:
the embedding (what enters the first block), in each block its norms, its attention output, its MLP
output and the residual stream after it, the final norm and the logits. Roles come from structure:
the blocks are the adapter's block list, a block's attention and MLP are its children named so
(attn/attention/self_attn, mlp/ffn/feed_forward), else its first and second non-norm children with
weights; norms are found by type or class name. Points pair by (role, block, occurrence), so
`model.layers.3.self_attn` meets `blocks.3.attn` and `transformer.h.3.attn` without a map.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from torch import nn

from ..errors import CompareError
from ..lm.adapter import ModelAdapter, is_norm

_ATTN = re.compile(r"(^|_)(attn|attention)$", re.IGNORECASE)
_MLP = re.compile(r"(^|_)(mlp|ffn|feed_forward|feedforward|moe)$", re.IGNORECASE)


@dataclass(frozen=True, eq=False)
class Point:
    """One computation point of one model. key pairs it with the other model's point."""

    key: tuple[str, int, int]  # (role, block or -1, occurrence within the block)
    module_name: str  # the module whose call gives it ("" for the logits)
    module: nn.Module | None = field(repr=False)
    take: str = "output"  # "output" of the module, or its main "input" (the embedding enters block 0)

    @property
    def label(self) -> str:
        role, block, n = self.key
        if block < 0:
            return role
        if role == "norm":
            role = {0: "attention norm", 1: "MLP norm"}.get(n, f"norm {n}")
        return f"block {block} {'output' if role == 'block' else role}"

    @property
    def depth(self) -> float:
        """Position along the model (pre-norm order: norm, attention, norm, MLP, output)."""
        role, block, n = self.key
        if block < 0:
            return {"embedding": -1.0, "final norm": 1e6, "logits": 1e6 + 1}[role]
        return block * 10 + (1 + 2 * min(n, 3) if role == "norm" else {"attention": 2, "mlp": 4, "block": 9}[role])


def find_points(adapter: ModelAdapter) -> list[Point]:
    """Every point this model offers, in order along its depth."""
    found = adapter.blocks()
    if found is None:
        raise CompareError(f"{type(adapter.model).__name__} has no list of transformer blocks (an nn.ModuleList "
                           "or nn.Sequential of modules with weights), so its computation points cannot be found; "
                           "compare models built as a stack of blocks.")
    _, blocks = found
    points = [Point(("embedding", -1, 0), blocks[0][0], blocks[0][1], take="input")]
    inside: set[int] = set()
    for i, (name, block) in enumerate(blocks):
        inside.update(id(m) for m in block.modules())
        points += _block_points(i, name, block)
    outer_norms = [(n, m) for n, m in adapter.model.named_modules() if is_norm(m) and id(m) not in inside]
    if outer_norms:
        points.append(Point(("final norm", -1, 0), *outer_norms[-1]))
    points.append(Point(("logits", -1, 0), "", None))
    return sorted(points, key=lambda p: p.depth)


Child = tuple[str, nn.Module]


@dataclass(frozen=True)
class BlockParts:
    """A block's children with weights, by role: its norms (in definition order, with or without weights), its
    attention and its MLP."""

    norms: tuple[Child, ...]
    attention: Child | None
    mlp: Child | None


def block_parts(block: nn.Module) -> BlockParts:
    """Which child of a block is its attention and which its MLP (children named so, else the two non-norm
    children with weights, first attention), and its norms (a norm without affine parameters too: it is still
    a computation point, and a port that leaves out the reference's norm weight is fixed there)."""
    children = [(n, m) for n, m in block.named_children() if is_norm(m) or any(True for _ in m.parameters())]
    norms = [(n, m) for n, m in children if is_norm(m)]
    rest = [(n, m) for n, m in children if not is_norm(m)]
    attn = next(((n, m) for n, m in rest if _ATTN.search(n)), None)
    mlp = next(((n, m) for n, m in rest if _MLP.search(n)), None)
    if attn is None and mlp is None and len(rest) == 2:
        attn, mlp = rest
    return BlockParts(tuple(norms), attn, mlp)


def _block_points(i: int, prefix: str, block: nn.Module) -> list[Point]:
    parts = block_parts(block)
    norms, attn, mlp = parts.norms, parts.attention, parts.mlp
    out = [Point(("norm", i, k), f"{prefix}.{n}", m) for k, (n, m) in enumerate(norms)]
    out += [Point((role, i, 0), f"{prefix}.{n}", m) for role, nm in (("attention", attn), ("mlp", mlp))
            if nm is not None for n, m in [nm]]
    out.append(Point(("block", i, 0), prefix, block))
    return out


@dataclass(frozen=True)
class Alignment:
    """Paired points (reference, candidate) in depth order, and the points either side could not pair."""

    pairs: tuple[tuple[Point, Point], ...]
    unpaired_reference: tuple[str, ...]
    unpaired_candidate: tuple[str, ...]


def align(reference: list[Point], candidate: list[Point]) -> Alignment:
    mine = {p.key: p for p in candidate}
    theirs = {p.key for p in reference}
    pairs = tuple((p, mine[p.key]) for p in reference if p.key in mine)
    return Alignment(
        pairs,
        tuple(f"{p.label} ({p.module_name})" for p in reference if p.key not in mine),
        tuple(f"{p.label} ({p.module_name})" for p in candidate if p.key not in theirs),
    )
