"""Patching across implementations: which aligned point, given the reference's activation, closes the logit gap.

`compare` names the first point where the candidate's activation leaves the reference's. Patching asks the
causal question next to it: run the candidate again with the reference's activation put in at one aligned
point (its module's output, or for the embedding the first block's input), let the candidate compute the rest
with its own code, and measure how much of the final logit gap is left. A port bug in block k's MLP is closed
by patching block k's MLP output, or any later point on the same residual path, and not by any point before
it; a bug that recurs in every block is closed only after its last occurrence.

The gap is the L2 norm of `logits_candidate - logits_reference` over the real tokens (padding and, in a cached
case, the prefix are left out), in float64. L2 rather than max-abs: it sums the whole gap, every position and
every vocabulary entry, so a patch that repairs some positions and not others closes a proportional share
instead of all or nothing, and it does not hang on one outlying logit. The closed fraction is
`1 - gap_patched / gap`; it is negative where a patch makes the candidate worse. A gap within the comparison's
noise (relative to the reference logits' own L2 norm) is no gap: nothing is run and nothing is divided.

Each patch is one forward of the candidate through `workbench.lm.intercept` (an editor client on the
candidate's aligned module), so nothing is left patched afterwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..lm.adapter import ModelAdapter
from ..lm.intercept import Client, ModuleCall
from .activations import CaseRun, lined_up, run_case, value_at
from .points import Alignment, Point
from .record import main_input

CLOSES = 0.99  # the default share of the gap a patch must close to localise the bug


@dataclass(frozen=True)
class PatchedPoint:
    """One aligned point patched with the reference's activation: the logit gap left and the share closed."""

    label: str
    depth: float
    module: str  # the candidate's module whose output (or, for the embedding, input) was replaced
    gap: float  # L2 logit gap after the patch; nan where the point could not be patched
    closed: float  # 1 - gap / the unpatched gap; nan where the point could not be patched
    note: str = ""  # why a point could not be patched


@dataclass(frozen=True)
class PatchSweep:
    """Every aligned point patched in turn, on one case of the comparison's inputs, in depth order."""

    case: str
    gap: float  # L2 logit gap of the unpatched candidate over the real tokens
    scale: float  # L2 norm of the reference's logits over the same tokens
    tolerance: float  # relative gap counted as noise
    points: tuple[PatchedPoint, ...]  # empty when there is no gap to close
    note: str = ""
    threshold: float = CLOSES  # the share of the gap a patch must close to localise the bug

    @property
    def has_gap(self) -> bool:
        return not self.gap <= self.tolerance * self.scale  # nan and inf are gaps

    def first_closing(self) -> PatchedPoint | None:
        """The earliest point whose patch closes at least `threshold` of the gap: where the bug is."""
        return next((p for p in self.points if p.closed >= self.threshold), None)

    def summary(self) -> str:
        if not self.has_gap:
            return f"patching: nothing to close: {self.note}"
        head = f"patching ({self.case} inputs, logit gap {self.gap:.1e} L2 over real tokens): "
        if not self.points:
            return head + self.note
        first = self.first_closing()
        if first is not None:
            return head + (f"{first.label} is the first point whose reference activation closes >= "
                           f"{self.threshold:.0%} of it")
        best = max((p for p in self.points if not math.isnan(p.closed)), key=lambda p: p.closed, default=None)
        rest = f" (the most, {best.closed:.0%}, at {best.label})" if best is not None else ""
        return head + f"no single point closes {self.threshold:.0%} of it{rest}"


def logit_gap(candidate: torch.Tensor, reference: torch.Tensor, valid: torch.Tensor) -> float:
    """L2 norm of candidate - reference (B, T', V) over the valid (B, T) positions, in float64; inf when the shapes
    differ (nan and inf in the candidate carry through)."""
    c, r = lined_up(candidate, valid), lined_up(reference, valid)
    if c.shape != r.shape or tuple(r.shape[:2]) != tuple(valid.shape):
        return math.inf
    keep = valid.to(r.device)
    return float((c.double()[keep.to(c.device)].to(r.device) - r.double()[keep]).norm())


def to_layout(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor | None:
    """The reference's `value` (B, T, ...) in the layout of the candidate's `like`, as `compare` lines them up to
    measure: flattened to (B*T, ...) where the candidate flattens, its last positions where the candidate computes
    fewer, spliced into the candidate's last positions where a cache-less candidate recomputes the prefix; None
    when no such mapping fits."""
    if value.shape != like.shape and value.numel() == like.numel() and abs(value.dim() - like.dim()) == 1 \
            and value.shape[-1] == like.shape[-1]:
        value = value.reshape(like.shape)  # (B, T, C) <-> (B*T, C), as OPT's blocks flatten around the MLP
    if value.dim() == like.dim() >= 2 and value.shape[0] == like.shape[0] and value.shape[2:] == like.shape[2:]:
        if value.shape[1] > like.shape[1]:
            value = value[:, -like.shape[1]:]
        elif value.shape[1] < like.shape[1]:
            value = torch.cat((like[:, : like.shape[1] - value.shape[1]], value.to(like.device, like.dtype)), 1)
    if value.shape != like.shape:
        return None
    return value.to(like.device, like.dtype)


class Substitute(Client):
    """An editor on one module of the candidate: its first call in the scope gives the reference's activation
    instead of its own. take="output": the first floating tensor of the output is replaced (the rest of a tuple,
    a KV cache for one, is kept); take="input": the main input is (the embedding enters the first block)."""

    def __init__(self, module: str, value: torch.Tensor, take: str = "output") -> None:
        self.modules = (module,)
        self.value, self.take = value, take
        self.failure = ""  # why the value could not be put in, when it could not

    def module_input(self, call: ModuleCall) -> tuple[tuple, dict[str, Any]] | None:
        if self.take != "input" or call.call != 0:
            return None
        where = main_input(call.args, call.kwargs)
        mapped = to_layout(self.value, where[1]) if where is not None else None
        if where is None or mapped is None:
            self.failure = _failure(self.value, where[1] if where else None, "input")
            return None
        args, kwargs = list(call.args), dict(call.kwargs)
        if isinstance(where[0], int):
            args[where[0]] = mapped
        else:
            kwargs[where[0]] = mapped
        return tuple(args), kwargs

    def module_output(self, call: ModuleCall) -> Any:
        if self.take != "output" or call.call != 0:
            return None
        out = call.output
        if isinstance(out, torch.Tensor):
            mapped = to_layout(self.value, out)
            self.failure = "" if mapped is not None else _failure(self.value, out, "output")
            return mapped
        if isinstance(out, (tuple, list)):
            at = next((i for i, o in enumerate(out) if isinstance(o, torch.Tensor) and o.is_floating_point()), None)
            mapped = to_layout(self.value, out[at]) if at is not None else None
            if at is None or mapped is None:
                self.failure = _failure(self.value, out[at] if at is not None else None, "output")
                return None
            items = list(out)
            items[at] = mapped
            return type(out)(items) if isinstance(out, list) else tuple(items)
        self.failure = f"the module returns {type(out).__name__}, not a tensor or a tuple of tensors"
        return None


def _failure(value: torch.Tensor, like: torch.Tensor | None, what: str) -> str:
    if like is None:
        return f"the module's {what} holds no floating tensor"
    return f"the reference's {tuple(value.shape)} does not map onto the candidate's {what} {tuple(like.shape)}"


class CrossPatcher:
    """The candidate rerun on one case of a comparison, with one reference activation patched in per run."""

    def __init__(self, candidate: ModelAdapter, run: CaseRun) -> None:
        self.candidate, self.run = candidate, run
        self.valid = run.case.valid
        self.reference_logits = run.logits[0]

    def logits(self, point: Point, value: torch.Tensor) -> tuple[torch.Tensor | None, str]:
        """The candidate's logits (B, T', V) with `value` at its `point`, or None and why not."""
        if point.key[0] == "logits":
            mapped = to_layout(value, self.run.logits[1])
            return mapped, "" if mapped is not None else _failure(value, self.run.logits[1], "logits")
        if point.module is None:
            return None, "the candidate has no module at this point"
        edit = Substitute(point.module_name, value, point.take)
        _, logits = run_case(self.candidate, [], self.run.case, edit=edit)
        return (None, edit.failure) if edit.failure else (logits, "")

    def gap(self, logits: torch.Tensor) -> float:
        return logit_gap(logits, self.reference_logits, self.valid)


def patch_sweep(alignment: Alignment, candidate: ModelAdapter, run: CaseRun, tolerance: float) -> PatchSweep:
    """Patch every aligned point of `run` in turn: the reference's recorded activation put into the candidate.

    run: both models' recorded calls on one case (the case of the first divergence); tolerance: the relative logit
    gap counted as noise."""
    patcher = CrossPatcher(candidate, run)
    ref_logits = run.logits[0]
    gap = patcher.gap(run.logits[1])
    scale = logit_gap(torch.zeros_like(ref_logits), ref_logits, patcher.valid)
    sweep = PatchSweep(run.case.name, gap, scale, tolerance, ())
    if not sweep.has_gap:
        return PatchSweep(run.case.name, gap, scale, tolerance, (),
                          f"the logits agree within noise ({tolerance:.0e} of their L2 norm)")
    if not math.isfinite(gap):
        return PatchSweep(run.case.name, gap, scale, tolerance, (),
                          "the candidate's logits are not finite (or not shaped as the reference's): no share of "
                          "an unbounded gap can be measured")
    points = []
    for ref, cand in alignment.pairs:
        value = value_at(ref, run.reference, ref_logits)
        if value is None:
            points.append(PatchedPoint(ref.label, ref.depth, cand.module_name, math.nan, math.nan,
                                       "the reference did not record this point"))
            continue
        logits, why = patcher.logits(cand, value)
        left = patcher.gap(logits) if logits is not None else math.nan
        points.append(PatchedPoint(ref.label, ref.depth, cand.module_name or "logits", left, 1 - left / gap, why))
    return PatchSweep(run.case.name, gap, scale, tolerance, tuple(points))
