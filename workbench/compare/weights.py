"""Match two models' parameters by value, under the transformations that ports get wrong.

Every parameter is first put in one layout: a `Conv1D` weight (in, out) is transposed to the Linear
layout (out, in), a bias becomes a column (n, 1). Then each candidate tensor is related to a reference
tensor as exact, transposed, q/k rows permuted as a converter permutes them (each row permutation the
model families declare, and its inverse: llama.cpp's RoPE pair order), heads reordered, scaled or offset by
one; a fused tensor (q/k/v in one matrix, gate/up in one) is cut into row blocks that match the other
side's split tensors. Ties are compared last: a tensor that the reference shares between two names
(embedding and LM head) but the candidate copies is reported, and the other way round.

Pairs are found with permutation- and scale-invariant signatures first, so a real checkpoint (hundreds
of tensors a side) costs one full comparison per plausible pair, not per pair.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..families.registry import row_permutations
from .roles import UNKNOWN, Role, read_roles

Signature = tuple[float, float, float, float]  # (norm, sum/norm, max/norm, min/norm)
_NUMBER = re.compile(r"\.(\d+)\.")
# Besides these, f"{name}-permuted" and f"{name}-unpermuted" for each registered row permutation ("rope").
RELATIONS = ("exact", "transposed", "heads reordered", "scaled", "offset +1", "offset -1")
SAY = {  # how the candidate's tensor relates to the reference's, after "equals the reference's tensor"
    "exact": "exactly",
    "transposed": "transposed (a Conv1D (in, out) weight read as a Linear (out, in) one, or the reverse)",
    "heads reordered": "with its heads in another order",
    "scaled": "times a constant",
    "offset +1": "plus one (a norm stored as 1 + w, the scale Gemma's (1 + w) computes)",
    "offset -1": "minus one (a Gemma-style 1 + w offset taken off)",
}
_PERMUTED, _UNPERMUTED = "-permuted", "-unpermuted"


def permutation_relations() -> dict[str, tuple[Callable[[torch.Tensor, int], torch.Tensor], str]]:
    """relation -> (what turns the reference's rows into the candidate's, how to say it), per row permutation."""
    out = {}
    for perm in row_permutations():
        out[perm.name + _PERMUTED] = (perm.apply, perm.applied)
        out[perm.name + _UNPERMUTED] = (perm.undo, perm.undone)
    return out


def say(relation: str) -> str:
    """How a candidate tensor relates to the reference's, for a relation `relate` found."""
    return SAY[relation] if relation in SAY else permutation_relations()[relation][1]


@dataclass(frozen=True)
class Piece:
    """One parameter, or a row block of a fused one, in Linear layout (rows, cols)."""

    name: str  # parameter name, with "[a:b]" for a block of a fused tensor
    param: str  # the parameter's own name
    rows: tuple[int, int]  # the block's rows within the parameter
    value: torch.Tensor  # (rows, cols) float32 on the CPU
    conv1d: bool  # stored (in, out), as HF's Conv1D does
    index: float  # position among its model's parameters, 0..1 (breaks ties between equal tensors)
    role: Role = UNKNOWN  # the part it plays (`roles`): equal tensors pair by role first

    @property
    def block(self) -> int | None:
        """The first number in the name (the block index in every naming scheme we know)."""
        found = _NUMBER.search(self.param)
        return int(found.group(1)) if found else None


@dataclass(frozen=True)
class WeightMatch:
    """A candidate tensor and the reference tensor it equals under `relation`."""

    candidate: str
    reference: str
    relation: str  # one of RELATIONS, or a row permutation's (see `permutation_relations`)
    detail: str = ""  # the scale factor, the head order, "fused", "copied where the reference ties"
    error: float = 0.0  # max |difference| / max |reference| after undoing the relation
    candidate_role: Role = UNKNOWN  # the part the candidate's tensor plays in the candidate (`roles`)
    reference_role: Role = UNKNOWN  # the part the reference's tensor it equals plays in the reference

    @property
    def role_swapped(self) -> bool:
        """The candidate's tensor holds the values of a reference tensor of another role (k <-> v, two layers)."""
        return self.candidate_role.conflicts(self.reference_role)

    @property
    def explanation(self) -> str:
        extra = f" ({self.detail})" if self.detail else ""
        return f"equals the reference's tensor {say(self.relation)}{extra}"

    @property
    def role_sentence(self) -> str:
        return (f"`{self.candidate}` ({self.candidate_role.label}) holds the reference's `{self.reference}` "
                f"({self.reference_role.label})")

    @property
    def sentence(self) -> str:
        return f"`{self.candidate}` equals `{self.reference}` {say(self.relation)}"


@dataclass(frozen=True)
class WeightTable:
    matches: tuple[WeightMatch, ...]
    unmatched_candidate: tuple[str, ...]
    unmatched_reference: tuple[str, ...]
    ties: tuple[str, ...]  # notes on tied vs copied tensors

    @property
    def exact(self) -> bool:
        return (all(m.relation == "exact" and not m.role_swapped for m in self.matches)
                and not self.unmatched_candidate and not self.unmatched_reference and not self.ties)

    def role_findings(self) -> tuple[WeightMatch, ...]:
        """Matches whose candidate tensor plays another role than the reference tensor it equals."""
        return tuple(m for m in self.matches if m.role_swapped)

    def transformed(self) -> tuple[WeightMatch, ...]:
        return tuple(m for m in self.matches if m.relation != "exact")

    def for_candidate(self, param: str) -> list[WeightMatch]:
        return [m for m in self.matches if m.candidate.split("[")[0] == param]


def split_rows(name: str) -> tuple[str, tuple[int, int] | None]:
    """"w[3:9]" -> ("w", (3, 9)); "w" -> ("w", None): a piece of the weight table and the rows it covers."""
    if name.endswith("]") and "[" in name:
        base, rows = name[:-1].split("[")
        a, b = rows.split(":")
        return base, (int(a), int(b))
    return name, None


def pieces(model: nn.Module) -> tuple[list[Piece], dict[str, list[str]]]:
    """Every parameter of `model` in Linear layout, and the groups of names that share one storage."""
    named = [(f"{mod}.{p}" if mod else p, param, type(m).__name__ == "Conv1D" and p == "weight")
             for mod, m in model.named_modules(remove_duplicate=False)
             for p, param in m.named_parameters(recurse=False)]
    roles = read_roles(model)
    storages: dict[int, list[str]] = {}
    values: dict[tuple[int, bool], torch.Tensor] = {}  # one float32 copy per storage, however many names
    out = []
    for i, (name, param, conv) in enumerate(named):
        storages.setdefault(id(param), []).append(name)
        value = values.get((id(param), conv))
        if value is None:
            value = param.detach().float().cpu()
            value = value.t() if conv and value.dim() == 2 else value
            value = value.reshape(value.shape[0], -1) if value.dim() >= 1 else value.reshape(1, 1)
            value = values[id(param), conv] = value.contiguous()
        out.append(Piece(name, name, (0, value.shape[0]), value, conv, i / max(1, len(named) - 1),
                         roles.get(name, UNKNOWN)))
    return out, {names[0]: names for names in storages.values() if len(names) > 1}


def _signature(x: torch.Tensor) -> Signature:
    """(norm, sum/norm, max/norm, min/norm): the last three do not change under permutation or scale."""
    norm = float(x.norm()) or 1e-30
    low, high = x.aminmax()
    return norm, float(x.sum()) / norm, float(high) / norm, float(low) / norm


def _plausible(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """Could two tensors with these signatures hold the same values, permuted or scaled? (scale-free parts agree)"""
    return all(_close(x, y, 1e-2) for x, y in zip(a[1:], b[1:]))


def _close(a: float, b: float, rel: float = 1e-3) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-6)


def _err(c: torch.Tensor, r: torch.Tensor) -> float:
    if c.shape == r.shape and torch.equal(c, r):
        return 0.0
    low, high = r.aminmax()
    return float((c - r).abs_().max()) / (max(-float(low), float(high)) or 1.0)


def relate(c: torch.Tensor, r: torch.Tensor, head_dims: tuple[int, ...], tol: float) -> tuple[str, str, float] | None:
    """How candidate `c` relates to reference `r` (both (rows, cols)), or None."""
    if c.shape == r.shape:
        e = _err(c, r)
        if e <= tol:
            return "exact", "", e
    if c.shape == r.t().shape and c.shape[0] > 1 and c.shape[1] > 1:
        e = _err(c, r.t())
        if e <= tol:
            return "transposed", "", e
    if c.shape != r.shape:
        return None
    rows = r.shape[0]
    permutations = permutation_relations()
    for D in head_dims:
        if D % 2 or rows % D or rows == D and D == 1:
            continue
        for name, (fn, _) in permutations.items():
            e = _err(c, fn(r, rows // D))
            if e <= tol:
                return name, f"{rows // D} heads of {D}", e
        order = _head_order(c, r, D)
        if order is not None:
            return "heads reordered", f"candidate head i = reference head {list(order)}", _err(c, r)
    if r.shape[1] == 1:
        for shift in (1.0, -1.0):
            e = _err(c, r + shift)
            if e <= tol:
                return f"offset {'+' if shift > 0 else '-'}1", "", e
    denom = float((r * r).sum())
    if denom > 0:
        scale = float((c * r).sum()) / denom
        if scale != 0 and not _close(scale, 1.0, 1e-4):
            e = _err(c, scale * r)
            if e <= tol:
                return "scaled", f"x {scale:.6g}", e
    return None


def _head_order(c: torch.Tensor, r: torch.Tensor, D: int) -> tuple[int, ...] | None:
    n = c.shape[0] // D
    if n < 2:
        return None
    ch, rh = c.reshape(n, -1), r.reshape(n, -1)  # (H, D*C) one head a row
    dist = torch.cdist(ch, rh)  # (H, H)
    order = tuple(int(i) for i in dist.argmin(-1))
    if sorted(order) != list(range(n)) or order == tuple(range(n)):
        return None
    return order if _err(c, rh[list(order)].reshape(c.shape)) <= 1e-3 else None


def match_weights(reference: nn.Module, candidate: nn.Module, head_dims: tuple[int, ...] = (),
                  tol: float | None = None) -> WeightTable:
    """The weight table: each candidate tensor (or fused row block) paired with the reference tensor it equals.

    head_dims: widths of one attention head to try for the q/k row permutations (from the configs).
    tol: max |difference| / max |reference| that still counts as equal; default from the two dtypes.
    """
    ref, ref_ties = pieces(reference)
    cand, cand_ties = pieces(candidate)
    tol = tol if tol is not None else _weight_tol(reference, candidate)
    matches: list[WeightMatch] = []
    used_r: set[str] = set()
    left_c: list[Piece] = []
    sigs: dict[int, Signature] = {}

    def signature(p: Piece) -> Signature:  # once per storage
        if id(p.value) not in sigs:
            sigs[id(p.value)] = _signature(p.value)
        return sigs[id(p.value)]

    sig_r = [(p, signature(p)) for p in ref]
    pending = list(cand)
    for exact_only in (True, False):  # equal tensors first, so a zero bias never pairs as "ones minus one"
        left_c = []
        for c in pending:
            found = _best(c, signature(c), sig_r, used_r, head_dims, tol, exact_only)
            if found is None:
                left_c.append(c)
                continue
            r, (rel, detail, e) = found
            used_r.add(r.name)
            matches.append(WeightMatch(c.name, r.name, rel, detail, e, c.role, r.role))
        pending = left_c
    matches = _across_roles(matches, {p.name: p for p in cand}, {p.name: p for p in ref}, tol)
    left_r = [p for p in ref if p.name not in used_r]
    fused, left_c, left_r = _split_fused(left_c, left_r, head_dims, tol, signature)
    matches += fused
    ties = _ties(matches, ref_ties, cand_ties)
    return WeightTable(tuple(matches), _unmatched(left_c, cand_ties, {m.candidate for m in matches}),
                       _unmatched(left_r, ref_ties, {m.reference for m in matches}), tuple(ties))


def _across_roles(matches: list[WeightMatch], cand: dict[str, Piece], ref: dict[str, Piece],
                  tol: float) -> list[WeightMatch]:
    """Two fused tensors (q, k, v; gate, up) of equal-width parts related by "heads reordered", where the order
    moves rows from one part into another, re-read part by part: a loader that writes k's rows where q's belong
    has swapped roles, not reordered heads, and each part is matched to the reference part it equals."""
    out: list[WeightMatch] = []
    for m in matches:
        c, r = cand.get(m.candidate), ref.get(m.reference)
        parts = len(_FUSED_PARTS.get(c.role.part, ())) if c is not None else 0
        if m.relation != "heads reordered" or c is None or r is None or parts < 2 or c.value.shape[0] % parts:
            out.append(m)
            continue
        n = c.value.shape[0] // parts
        found = []
        for j in range(parts):
            block = c.value[j * n:(j + 1) * n]
            k = next((k for k in range(parts) if _err(block, r.value[k * n:(k + 1) * n]) <= tol), None)
            if k is None:
                break
            found.append(WeightMatch(f"{c.name}[{j * n}:{(j + 1) * n}]", f"{r.name}[{k * n}:{(k + 1) * n}]",
                                     "exact", "fused", _err(block, r.value[k * n:(k + 1) * n]),
                                     c.role.row_block(j, parts), r.role.row_block(k, parts)))
        moved = len(found) == parts and len({f.reference for f in found}) == parts and any(
            f.role_swapped for f in found)
        out += found if moved else [m]
    return out


_FUSED_PARTS = {"qkv": ("q", "k", "v"), "gate/up": ("gate", "up")}


def _unmatched(left: list[Piece], ties: dict[str, list[str]], matched: set[str]) -> tuple[str, ...]:
    """Names left over, less those sharing storage with a matched name (a tied head is not missing)."""
    shared = {n for group in ties.values() if matched & set(group) for n in group}
    return tuple(p.name for p in left if p.name not in shared)


def _weight_tol(*models: nn.Module) -> float:
    eps = max(torch.finfo(p.dtype).eps if p.is_floating_point() else 0.0
              for m in models for p in m.parameters())
    return max(4 * eps, 1e-6)


def _best(c: Piece, sig_c: Signature, sig_r: Sequence[tuple[Piece, Signature]], used: set[str],
          head_dims: tuple[int, ...],
          tol: float, exact_only: bool) -> tuple[Piece, tuple[str, str, float]] | None:
    """The reference piece `c` relates to: unused ones first, then the same block, then the nearest."""
    plausible = [r for r, sig in sig_r if r.value.numel() == c.value.numel()
                 and (r.value.shape[1] == 1 or _plausible(sig_c, sig))]
    plausible.sort(key=lambda r: (r.name in used, c.role.conflicts(r.role), r.block != c.block,
                                  abs(r.index - c.index)))
    for r in plausible:
        if exact_only:
            found = ("exact", "", _err(c.value, r.value)) if r.value.shape == c.value.shape else None
            found = found if found and found[2] <= tol else None
        else:
            found = relate(c.value, r.value, head_dims, tol)
        if found is not None:
            return r, found
    return None


def _split_fused(cand: list[Piece], ref: list[Piece], head_dims: tuple[int, ...], tol: float,
                 signature: Callable[[Piece], Signature]) -> tuple[list[WeightMatch], list[Piece], list[Piece]]:
    """Cut each unmatched tensor on one side into row blocks equal (under a relation) to tensors of the other."""
    out: list[WeightMatch] = []
    for big_side_is_cand in (True, False):
        bigs, smalls = (cand, ref) if big_side_is_cand else (ref, cand)
        done_big, used_small = set(), set()
        for big in bigs:
            blocks = list(_blocks(big, [s for s in smalls if s.name not in used_small], head_dims, tol, signature))
            if not blocks or sum(s.value.shape[0] for s, _ in blocks) != big.value.shape[0]:
                continue
            done_big.add(big.name)
            offset = 0
            for j, (small, (rel, detail, e)) in enumerate(blocks):
                used_small.add(small.name)
                n = small.value.shape[0]
                part = f"{big.name}[{offset}:{offset + n}]"
                offset += n
                note = ", ".join(x for x in (detail, "fused") if x)
                pair = (part, small.name) if big_side_is_cand else (small.name, part)
                roles = (big.role.row_block(j, len(blocks)), small.role)
                roles = roles if big_side_is_cand else (roles[1], roles[0])
                out.append(WeightMatch(pair[0], pair[1], _flip(rel, big_side_is_cand), note, e, *roles))
        bigs = [b for b in bigs if b.name not in done_big]
        smalls = [s for s in smalls if s.name not in used_small]
        cand, ref = (bigs, smalls) if big_side_is_cand else (smalls, bigs)
    return out, cand, ref


def _flip(rel: str, cand_is_big: bool) -> str:
    """Relations are found as big-block vs small; say them as candidate vs reference."""
    if cand_is_big:
        return rel
    if rel.endswith(_UNPERMUTED):
        return rel.removesuffix(_UNPERMUTED) + _PERMUTED
    if rel.endswith(_PERMUTED):
        return rel.removesuffix(_PERMUTED) + _UNPERMUTED
    return {"offset +1": "offset -1", "offset -1": "offset +1"}.get(rel, rel)


def _blocks(big: Piece, smalls: list[Piece], head_dims: tuple[int, ...], tol: float,
            signature: Callable[[Piece], Signature]) -> Iterator[tuple[Piece, tuple[str, str, float]]]:
    """Consecutive row blocks of `big`, each related to one of `smalls` (same width), from row 0 on; among equal
    ones, the small tensor whose role is the block's place in a fused tensor (q, k, v in order) first."""
    R, C = big.value.shape
    cands = sorted((s for s in smalls if s.value.shape[1] == C and s.value.shape[0] < R),
                   key=lambda s: abs(s.index - big.index))
    offset = 0
    taken: set[str] = set()
    while offset < R:
        expected = [big.role.row_block(len(taken), n) for n in (2, 3)]
        for s in sorted(cands, key=lambda s: not any(r.known and not r.conflicts(s.role) for r in expected)):
            n = s.value.shape[0]
            if s.name in taken or offset + n > R:
                continue
            block = big.value[offset:offset + n]
            if C > 1 and not _plausible(_signature(block), signature(s)):
                continue
            found = relate(block, s.value, head_dims, tol)
            if found is None:
                continue
            yield s, found
            taken.add(s.name)
            offset += n
            break
        else:
            return


def _ties(matches: list[WeightMatch], ref_ties: dict[str, list[str]], cand_ties: dict[str, list[str]]) -> list[str]:
    """Tensors that one model shares between names and the other keeps as separate copies."""
    to_cand = {m.reference: m.candidate for m in matches}
    cand_group = {n: tuple(g) for g in cand_ties.values() for n in g}
    notes = []
    for group in ref_ties.values():
        mine = [to_cand.get(n) for n in group]
        if all(mine) and len({cand_group.get(m or "", (m,)) for m in mine}) > 1:
            notes.append(f"the reference ties {' = '.join(group)}; the candidate keeps copies "
                         f"({', '.join(str(m) for m in mine)})")
    to_ref = {m.candidate: m.reference for m in matches}
    ref_group = {n: tuple(g) for g in ref_ties.values() for n in g}
    for group in cand_ties.values():
        theirs = [to_ref.get(n) for n in group]
        if all(theirs) and len({ref_group.get(t or "", (t,)) for t in theirs}) > 1:
            notes.append(f"the candidate ties {' = '.join(group)}; the reference keeps separate tensors "
                         f"({', '.join(str(t) for t in theirs)})")
    return notes
