"""`Naming`: how one family names its tensors in a foreign format (HF or GGUF), both ways.

A family declares the names; the renaming itself is done once, here. Fused workbench projections
([q; k; v] rows in `attn.qkv`, [gate; up] rows in `mlp.up`) are concatenated from the foreign
parts on the way in and split again on the way out; GPT-2's Conv1D (in, out) weights are transposed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from ..model.config import ModelConfig

_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)\.(weight|bias)")


def fused_sizes(sub: str, config: ModelConfig) -> tuple[int, ...]:
    """Rows of each part of a fused workbench projection: `attn.qkv` (H*D, K*D, K*D), `mlp.up` (F, F)."""
    H, K, D, F = config.n_heads, config.kv_heads, config.head_dim, config.d_ff
    return {"attn.qkv": (H * D, K * D, K * D), "mlp.up": (F, F)}[sub]


@dataclass(frozen=True)
class Naming:
    """Foreign tensor names and the workbench names they hold.

    layer: the foreign name of block i without the prefix, with "{i}" ("layers.{i}.", "blk.{i}.").
    block: foreign -> workbench name inside a block, without the .weight/.bias suffix.
    top: foreign -> workbench full name outside the blocks (foreign names without the prefix).
    fused: workbench name -> the foreign parts whose rows it stacks, in order.
    transposed: foreign block names stored as (in, out), transposed both ways (GPT-2's Conv1D).
    prefix: put before every foreign name except `unprefixed` ones; optional on the way in, since
        checkpoints of the bare model (GPT2Model, LlamaModel) lack it.
    """

    layer: str
    block: Mapping[str, str]
    top: Mapping[str, str]
    fused: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    transposed: tuple[str, ...] = ()
    prefix: str = ""
    unprefixed: tuple[str, ...] = ("lm_head.weight",)

    @property
    def _layer_pattern(self) -> re.Pattern[str]:
        return re.compile(re.escape(self.layer).replace(r"\{i\}", r"(\d+)") + r"(.+)\.(weight|bias)")

    def block_index(self, name: str) -> int | None:
        """The block number in a foreign tensor name (prefix optional), or None outside the blocks."""
        m = self._layer_pattern.fullmatch(name.removeprefix(self.prefix))
        return int(m.group(1)) if m else None

    def to_workbench(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Foreign-named tensors -> workbench names; unknown names are kept (the load report lists them).

        A fused group with a part missing cannot be stacked: its parts keep their foreign names.
        """
        pattern = self._layer_pattern
        fused_from = {part: (ours, i) for ours, parts in self.fused.items() for i, part in enumerate(parts)}
        out: dict[str, torch.Tensor] = {}
        groups: dict[str, dict[int, tuple[str, torch.Tensor]]] = {}
        for key, value in state.items():
            name = key.removeprefix(self.prefix)
            if m := pattern.fullmatch(name):
                layer, sub, kind = m.groups()
                if sub in self.block:
                    if sub in self.transposed and kind == "weight":
                        value = value.t()  # Conv1D (in, out) -> Linear (out, in)
                    out[f"blocks.{layer}.{self.block[sub]}.{kind}"] = value
                    continue
                if sub in fused_from:
                    ours, i = fused_from[sub]
                    groups.setdefault(f"blocks.{layer}.{ours}.{kind}", {})[i] = (key, value)
                    continue
            out[self.top.get(name, key)] = value
        for ours, parts in groups.items():
            sub = ours.split(".", 2)[2].rsplit(".", 1)[0]  # "blocks.{i}.attn.qkv.weight" -> "attn.qkv"
            if len(parts) == len(self.fused[sub]):
                out[ours] = torch.cat([parts[i][1] for i in range(len(parts))], dim=0)  # rows [q; k; v] / [gate; up]
            else:
                out.update(dict(parts.values()))
        return out

    def from_workbench(self, state: Mapping[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
        """Workbench-named tensors -> foreign names, fused projections split into their parts."""
        block_back = {ours: theirs for theirs, ours in self.block.items()}
        top_back = {ours: theirs for theirs, ours in self.top.items()}
        out: dict[str, torch.Tensor] = {}
        for key, value in state.items():
            if m := _BLOCK.fullmatch(key):
                layer, sub, kind = m.groups()
                stem = self.layer.format(i=layer)
                if sub in self.fused:
                    for part, piece in zip(self.fused[sub], value.split(fused_sizes(sub, config), dim=0)):
                        out[self._named(f"{stem}{part}.{kind}")] = piece
                    continue
                theirs = block_back[sub]
                if theirs in self.transposed and kind == "weight":
                    value = value.t()  # Linear (out, in) -> Conv1D (in, out)
                out[self._named(f"{stem}{theirs}.{kind}")] = value
            else:
                out[self._named(top_back.get(key, key))] = value
        return out

    def _named(self, name: str) -> str:
        return name if name in self.unprefixed else self.prefix + name
