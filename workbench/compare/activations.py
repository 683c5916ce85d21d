"""Run both models on the same inputs and measure, at each paired point, how far the candidate is from the reference.

Three cases by default: a plain batch, the same batch left-padded (a padding bug shows only there), and a
cached continuation (the last tokens fed after a prefix through the model's own cache). The error at a
point is max |candidate - reference| / max |reference| over real tokens (padding is never compared), and
the noise tolerance comes from the lower-precision dtype of the two models.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import CompareError
from ..lm.adapter import ModelAdapter
from ..lm.intercept import Client, intercept
from .points import Alignment, Point
from .record import Call, record

# relative error two correct implementations reach in this dtype (a few ulps, grown over a deep model)
NOISE = {torch.float32: 1e-5, torch.float64: 1e-9, torch.bfloat16: 3e-2, torch.float16: 8e-3}


def noise_tolerance(*dtypes: torch.dtype) -> float:
    """The tolerance for the least precise of `dtypes`."""
    return max(NOISE.get(d, 1e-4) for d in dtypes)


@dataclass(frozen=True)
class Case:
    """One set of inputs. prefix > 0: feed ids[:, :prefix] to the cache first, compare the continuation."""

    name: str
    ids: torch.Tensor  # (B, T)
    mask: torch.Tensor | None = None  # (B, T) 1 = token, left padding as 0
    prefix: int = 0

    @property
    def valid(self) -> torch.Tensor:
        """(B, T') bool: the positions compared (the continuation's only, for a cached case)."""
        mask = self.mask if self.mask is not None else torch.ones_like(self.ids)
        return mask[:, self.prefix:].bool()


def default_cases(vocab: int, ids: torch.Tensor | None = None, seed: int = 0) -> list[Case]:
    """A batch, the same batch left-padded, and a cached continuation of its last two tokens."""
    if ids is None:
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(min(32, vocab // 4), vocab, (2, 8), generator=g)
    if (not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype not in (torch.long, torch.int32)
            or ids.shape[0] < 1 or ids.shape[1] < 3):
        got = f"{tuple(ids.shape)} {ids.dtype}" if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise CompareError(f"inputs must be token ids shaped (B, T) with B >= 1 and T >= 3, got {got}; pass a "
                           "LongTensor such as torch.randint(0, vocab, (2, 8)).")
    if int(ids.max()) >= vocab or int(ids.min()) < 0:
        raise CompareError(f"token id {int(ids.max())} is outside the vocabulary [0, {vocab}) that both models "
                           "share; pass ids below the smaller vocabulary.")
    B, T = ids.shape
    mask = torch.ones_like(ids)
    mask[-1, : T // 3] = 0  # the last row left-padded by a third
    return [Case("batch", ids), Case("padded", ids, mask), Case("cached", ids, None, T - 2)]


def positions(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) positions that restart after left padding, as generation counts them."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def run_case(adapter: ModelAdapter, points: list[Point], case: Case, snapshot: bool = False,
             edit: Client | None = None) -> tuple[dict[str, Call], torch.Tensor]:
    """The calls at `points` and the logits (B, T', V) of one case (snapshot: see `record`).

    edit: an interception client active during the compared forward only (in a cached case, the continuation
    step, not the prefix that fills the cache), as the points are recorded there."""
    ids = case.ids.to(adapter.device)
    mask = None if case.mask is None else case.mask.to(adapter.device)
    editing = intercept(adapter.model, edit) if edit is not None else contextlib.nullcontext()
    with torch.no_grad():
        if case.prefix == 0:
            pos = positions(mask) if mask is not None and adapter.supports_positions else None
            with record(adapter.model, points, snapshot) as calls, editing:
                logits = adapter.logits(ids, mask, pos, allow_nonfinite=True)
            return calls, logits
        cache = adapter.new_cache(ids.shape[0], ids.shape[1], mode="growing")
        adapter.step(ids[:, : case.prefix], cache, None if mask is None else mask[:, : case.prefix])
        with record(adapter.model, points, snapshot) as calls, editing:
            logits = adapter.step(ids[:, case.prefix:], cache, mask)
        return calls, logits


def rel_error(candidate: torch.Tensor | None, reference: torch.Tensor | None, valid: torch.Tensor) -> float:
    """max |candidate - reference| / max |reference| over the valid (B, T) positions; inf if shapes differ or the
    candidate holds NaN/Inf where the reference does not (an overflow), nan where a value is missing."""
    if candidate is None or reference is None:
        return math.nan
    candidate, reference = lined_up(candidate, valid), lined_up(reference, valid)
    if candidate.shape != reference.shape or tuple(reference.shape[:2]) != tuple(valid.shape):
        return math.inf
    keep = valid.to(reference.device)
    c, r = candidate.float()[keep], reference.float()[keep.to(candidate.device)].to(candidate.device)
    if not c.numel():
        return 0.0
    if not bool(torch.isfinite(c[torch.isfinite(r)]).all()):
        return math.inf
    return float((c - r).abs().max()) / max(float(r.abs().max()), 1e-6)


def lined_up(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """An activation or logits as compared with the valid (B, T) positions: (B, T, ...), unfolded and cut to the
    last T positions (see below)."""
    B, T = valid.shape
    return _last(_unfold(x, B), T)


def _unfold(x: torch.Tensor, B: int) -> torch.Tensor:
    """(B, T', ...) from an activation whose batch and positions are flattened into its first dim (B*T', ...), as
    OPT's blocks flatten them around the MLP; others as they are."""
    if x.dim() >= 1 and x.shape[0] != B and x.shape[0] % B == 0:
        return x.reshape(B, x.shape[0] // B, *x.shape[1:])
    return x


def _last(x: torch.Tensor, T: int) -> torch.Tensor:
    """The last T positions of (B, T', ...): a model without a cache recomputes the prefix of a continuation."""
    return x[:, -T:] if x.dim() >= 2 and x.shape[1] > T else x


@dataclass(frozen=True)
class PointError:
    """The candidate's error at one point of one case, and the error of that point's main input."""

    label: str
    case: str
    depth: float
    error: float
    input_error: float  # nan where the input was not recorded (embedding, logits)
    tolerance: float

    @property
    def above(self) -> bool:
        return not self.error <= self.tolerance  # nan and inf count as above

    @property
    def inputs_agree(self) -> bool:
        return math.isnan(self.input_error) or self.input_error <= self.tolerance


@dataclass(frozen=True)
class CaseRun:
    """Both models' calls in one case, kept for the diagnosis."""

    case: Case
    reference: dict[str, Call]
    candidate: dict[str, Call]
    logits: tuple[torch.Tensor, torch.Tensor]  # (reference, candidate)


def measure(alignment: Alignment, run: CaseRun, tol: float) -> list[PointError]:
    """The error at every paired point of one case, in depth order."""
    valid = run.case.valid
    out: list[PointError] = []
    for ref, cand in alignment.pairs:
        r, c = value_at(ref, run.reference, run.logits[0]), value_at(cand, run.candidate, run.logits[1])
        if ref.key[0] == "logits":  # the head's input is the final norm's output, when there is one
            before = [e.error for e in out if e.label == "final norm"]
            input_error = before[0] if before else math.nan
        else:
            input_error = rel_error(input_at(cand, run.candidate), input_at(ref, run.reference), valid)
        out.append(PointError(ref.label, run.case.name, ref.depth, rel_error(c, r, valid), input_error, tol))
    return out


def value_at(point: Point, calls: dict[str, Call], logits: torch.Tensor) -> torch.Tensor | None:
    if point.key[0] == "logits":
        return logits
    call = calls.get(point.module_name)
    if call is None:
        return None
    return call.input if point.take == "input" else call.output


def input_at(point: Point, calls: dict[str, Call]) -> Any:
    if point.take == "input" or point.key[0] == "logits":
        return None
    call = calls.get(point.module_name)
    return None if call is None else call.input
