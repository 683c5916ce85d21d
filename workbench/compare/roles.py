"""The role of each parameter of a causal LM: its block and the part it plays there (q, k, v, gate, up, down,
attention norm, ...), read from its name in every common spelling and, where the name says nothing, from structure.

Matching weights by value alone cannot tell a port that loads the key weight into the value projection from a
correct one: every tensor still finds its twin. Roles can: a candidate tensor equal to a reference tensor of
another role (k <-> v, q <-> k, gate <-> up, two layers swapped, attention norm <-> MLP norm) is a finding.

Names are read where they sit. Inside a block (the adapter's block list) the block's attention and MLP children
are found by `points.block_parts`, so `dense` or `c_proj` means the attention's output under the attention and
the MLP's output under the MLP; a norm child is named by its spelling (HF `input_layernorm`, nanoGPT `ln_1`,
gpt-fast `attention_norm`, ...) or else by its order among the block's norms. Outside blocks: the token
embedding, a learned position table, the final norm and the LM head. A name that fits nothing is an unknown
role, and an unknown role is never a finding. A fused tensor's row blocks take their roles from their order:
q, k, v for a fused qkv (GQA widths included), gate, up for a fused gate/up.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from ..lm.adapter import ModelAdapter, is_norm
from .points import block_parts

PARTS = ("token embedding", "position table", "embedding norm", "q", "k", "v", "qkv", "attention output",
         "q norm", "k norm", "gate", "up", "gate/up", "down", "attention norm", "MLP norm", "attention output norm",
         "MLP output norm", "final norm", "LM head")
_SAME = {"gate/up": "up"}  # a fused gate/up and an MLP input read as `up` (the workbench's [gate; up]) agree
_FUSED = {"qkv": ("q", "k", "v"), "gate/up": ("gate", "up"), "up": ("gate", "up")}


def _spellings(*pairs: tuple[str, str]) -> tuple[tuple[str, re.Pattern[str]], ...]:
    return tuple((part, re.compile(f"(?:{names})", re.IGNORECASE)) for part, names in pairs)


ATTENTION = _spellings(
    ("q", r"q_proj|wq|q|query|to_q|q_lin|attn_q|query_proj"),
    ("k", r"k_proj|wk|k|key|to_k|k_lin|attn_k|key_proj"),
    ("v", r"v_proj|wv|v|value|to_v|v_lin|attn_v|value_proj"),
    ("qkv", r"c_attn|qkv_proj|qkv|wqkv|query_key_value|in_proj|attn_qkv|w_qkv|qkv_lin"),
    ("attention output", r"o_proj|wo|out_proj|o|attn_out|attn_output|c_proj|proj|out|dense|output|out_lin|to_out"),
    ("q norm", r"q_norm|q_layernorm|q_ln|query_norm|q_layer_norm"),
    ("k norm", r"k_norm|k_layernorm|k_ln|key_norm|k_layer_norm"),
)
MLP = _spellings(
    ("gate/up", r"gate_up_proj|gate_up|w13|fc_gate_up"),
    ("gate", r"gate_proj|w1|gate|wg|ff_gate|fc_gate"),
    ("up", r"up_proj|w3|up|c_fc|fc1|fc_in|dense_h_to_4h|fc|wi|ff_in|lin1|w_in"),
    ("down", r"down_proj|w2|down|c_proj|fc2|fc_out|dense_4h_to_h|proj|wo|out|ff_out|lin2|dense|out_proj|w_out"),
)
NORMS = _spellings(  # norms that are children of a block (`post_attention_layernorm` is read in context below)
    ("attention norm", r"input_layernorm|ln_1|ln1|attention_norm|attn_norm|ln_attn|self_attn_layer_norm|norm_1|"
                       r"norm1|attention_layernorm|attn_ln|pre_attention_norm|ln_attention"),
    ("MLP norm", r"ln_2|ln2|ffn_norm|mlp_norm|ln_mlp|final_layer_norm|norm_2|norm2|pre_feedforward_layernorm|"
                 r"pre_mlp_norm|mlp_ln|ffn_ln|ln_ffn"),
    ("MLP output norm", r"post_feedforward_layernorm|post_mlp_norm|post_ffn_norm|post_mlp_layernorm"),
    ("attention output norm", r"post_attn_norm|post_attention_norm|post_self_attn_layernorm"),
)
OUTSIDE = _spellings(
    ("token embedding", r"embed_tokens|wte|tok_embeddings|word_embeddings|embed_in|tok_emb|token_embedding|"
                        r"token_embeddings|word_embedding|embed|embedding|embeddings|emb"),
    ("position table", r"wpe|embed_positions|pos_emb|position_embeddings|pos_embedding|pos_embed|"
                       r"position_embedding|pos_embeddings"),
    ("embedding norm", r"word_embeddings_layernorm|emb_ln|embed_norm|ln_emb|embedding_norm|emb_norm"),
    ("final norm", r"norm|ln_f|final_layer_norm|norm_f|final_layernorm|final_norm|layer_norm|ln_out|ln_final"),
    ("LM head", r"lm_head|output|head|output_projection|embed_out|out_head|unembed"),
)


@dataclass(frozen=True)
class Role:
    """Where a tensor sits: block index (-1 outside the blocks, None unknown), part ("" unknown) and kind
    ("weight", "bias", "" unknown)."""

    block: int | None = None
    part: str = ""
    kind: str = ""

    @property
    def known(self) -> bool:
        return bool(self.part)

    @property
    def label(self) -> str:
        if not self.part:
            return "unknown"
        where = f"block {self.block} " if self.block is not None and self.block >= 0 else ""
        return f"{where}{self.part}{' ' + self.kind if self.kind else ''}"

    def conflicts(self, other: Role) -> bool:
        """Both roles known and different: the tensor plays another part, in another block, or is the other of
        weight and bias."""
        if not self.part or not other.part:
            return False
        if _SAME.get(self.part, self.part) != _SAME.get(other.part, other.part):
            return True
        if self.block is not None and other.block is not None and self.block != other.block:
            return True
        return bool(self.kind and other.kind and self.kind != other.kind)

    def row_block(self, index: int, count: int) -> Role:
        """The role of row block `index` of `count` when this tensor is cut as a fused one (q, k, v in order)."""
        if count == 1:
            return self
        parts = _FUSED.get(self.part, ())
        if len(parts) != count or not 0 <= index < count:
            return Role(self.block, "", self.kind)
        return Role(self.block, parts[index], self.kind)


UNKNOWN = Role()


def _kind(param: str) -> tuple[str, str]:
    """(kind, leaf name when the parameter carries it itself: `experts.gate_up_proj`, `c_attn_weight`)."""
    if param in ("weight", "bias"):
        return param, ""
    for kind in ("weight", "bias"):
        if param.endswith("_" + kind):
            return kind, param[: -len(kind) - 1]
    return "weight", param


def _read(spellings: tuple[tuple[str, re.Pattern[str]], ...], leaf: str) -> str:
    return next((part for part, names in spellings if names.fullmatch(leaf)), "")


class RoleReader:
    """Roles of one model's parameters: the block list found once, each name read in its place."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        found = ModelAdapter(model).blocks()
        self.blocks = found[1] if found is not None else []
        self.modules = dict(model.named_modules(remove_duplicate=False))

    def roles(self) -> dict[str, Role]:
        """Every parameter name (tied names too) -> its role."""
        out: dict[str, Role] = {}
        for i, (prefix, block) in enumerate(self.blocks):
            out.update(self._block(i, prefix, block))
        inside = {id(m) for _, b in self.blocks for m in b.modules()}
        outer_norms = [n for n, m in self.model.named_modules() if is_norm(m) and id(m) not in inside]
        for name, module in self.modules.items():
            if id(module) in inside:
                continue
            for p, _ in module.named_parameters(recurse=False):
                full = f"{name}.{p}" if name else p
                if full in out:
                    continue
                kind, own = _kind(p)
                part = _read(OUTSIDE, own or name.rsplit(".", 1)[-1]) if self.blocks else ""
                if not part and is_norm(module) and outer_norms and name == outer_norms[-1]:
                    part = "final norm"
                out[full] = Role(-1, part, kind) if part else Role(-1 if self.blocks else None, "", kind)
        return out

    def norms(self) -> dict[str, Role]:
        """Every norm module's name -> its role (kind ""), whether it has parameters or not: a norm built without
        its affine weight has no parameter to carry a role."""
        out: dict[str, Role] = {}
        inside: set[int] = set()
        for i, (prefix, block) in enumerate(self.blocks):
            names = [n for n, _ in block_parts(block).norms]
            out.update({f"{prefix}.{n}": Role(i, _norm_part(n, names)) for n in names})
            inside.update(id(m) for m in block.modules())
        outer = [n for n, m in self.model.named_modules() if is_norm(m) and id(m) not in inside]
        if outer and self.blocks:
            out[outer[-1]] = Role(-1, "final norm")
        return out

    def _block(self, i: int, prefix: str, block: nn.Module) -> dict[str, Role]:
        parts = block_parts(block)
        norm_names = [n for n, _ in parts.norms]
        places = {n: "norm" for n in norm_names}
        if parts.attention is not None:
            places[parts.attention[0]] = "attention"
        if parts.mlp is not None:
            places[parts.mlp[0]] = "mlp"
        out = {}
        for name, module in block.named_modules(remove_duplicate=False):
            if not name:
                continue
            place = places.get(name.split(".")[0], "")
            if not place and "." not in name and parts.mlp is None:
                place = "mlp"  # OPT's fc1 and fc2 sit on the block itself
            siblings = self._siblings(block, name)
            for p, _ in module.named_parameters(recurse=False):
                kind, own = _kind(p)
                leaf = own or name.rsplit(".", 1)[-1]
                part = self._part(place, leaf, name, norm_names, siblings)
                out[f"{prefix}.{name}.{p}"] = Role(i, part, kind)
        return out

    @staticmethod
    def _siblings(block: nn.Module, name: str) -> set[str]:
        """The names of the modules beside `name` (children of its parent), lower case."""
        parent_name = name.rsplit(".", 1)[0] if "." in name else ""
        parent = block.get_submodule(parent_name) if parent_name else block
        return {n.lower() for n, _ in parent.named_children()}

    @staticmethod
    def _part(place: str, leaf: str, name: str, norm_names: list[str], siblings: set[str]) -> str:
        if place == "attention":
            return _read(ATTENTION, leaf)
        if place == "mlp":
            return _mlp_part(_read(MLP, leaf), leaf, siblings)
        if place == "norm" and "." not in name:
            return _norm_part(leaf, norm_names)
        return ""


def _mlp_part(part: str, leaf: str, siblings: set[str]) -> str:
    """A gate is a gate only beside an up projection: gpt-fast's w1 next to w3; a lone `w1` is the MLP's input,
    and a lone `gate` (a mixture-of-experts router) is no part of these."""
    if part != "gate":
        return part
    ups = {s for s in siblings if _read(MLP, s) == "up"}
    if ups:
        return "gate"
    return "up" if leaf.lower() == "w1" else ""


def _norm_part(leaf: str, norm_names: list[str]) -> str:
    lowered = [n.lower() for n in norm_names]
    if leaf.lower() == "post_attention_layernorm":  # Llama: the MLP's norm; Gemma 2/3, OLMo 2: the attention's output
        has_pre = any(_read(NORMS, n) == "attention norm" for n in lowered)
        return "MLP norm" if has_pre and "pre_feedforward_layernorm" not in lowered else "attention output norm"
    part = _read(NORMS, leaf)
    if part or any(_read(NORMS, n) for n in lowered):
        return part
    if len(norm_names) <= 2:  # names say nothing: the first norm is the attention's, the second the MLP's
        return ("attention norm", "MLP norm")[norm_names.index(leaf)]
    return ""


def read_roles(model: nn.Module) -> dict[str, Role]:
    """Every parameter name of `model` -> its `Role` (`UNKNOWN` parts where names and structure say nothing)."""
    return RoleReader(model).roles()
