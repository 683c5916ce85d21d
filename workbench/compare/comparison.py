"""`compare(reference, candidate)`: where an implementation diverges from its reference, and why.

Weights first (a table of how each tensor relates), then the activations at every paired point on the same
inputs, then the cause at the first divergence. The result is a `Comparison`: its text is the summary, its
`_repr_html_` and `save_html` the offline report (views in `workbench.viz.compare`, reached through
`workbench.display`), `wb.widgets.CompareView` the interactive view.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from ..display import export_html, notebook_html
from ..errors import CompareError
from ..lm.adapter import ModelAdapter, config_value
from .activations import Case, CaseRun, PointError, default_cases, measure, noise_tolerance, run_case
from .diagnose import Diagnosis, Replayer, diagnose
from .parameters import check_parameters
from .patching import PatchSweep, patch_sweep
from .points import Alignment, align, find_points
from .weights import WeightTable, match_weights

CASES = ("batch", "padded", "cached")
T = TypeVar("T")


@dataclass(frozen=True, eq=False)
class PartialComparison:
    """What `compare` had measured when bad input stopped it (a `CompareError`'s `partial`): the weight table and
    alignment once found, and every point of each case run before the one that failed."""

    reference_name: str
    candidate_name: str
    stopped: str  # where: "parameters", "vocabulary", "batch case", ...
    weights: WeightTable | None = None
    alignment: Alignment | None = None
    errors: tuple[PointError, ...] = ()

    @property
    def cases(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(e.case for e in self.errors))


@dataclass(frozen=True, eq=False)
class Comparison:
    """Everything `compare` found. `equivalent` is True when no point rises above the noise tolerance."""

    reference_name: str
    candidate_name: str
    dtypes: tuple[str, str]
    weights: WeightTable
    alignment: Alignment
    errors: tuple[PointError, ...]  # every paired point of every case, in depth order per case
    tolerance: float
    first_divergence: PointError | None
    diagnosis: Diagnosis | None
    notes: tuple[str, ...] = ()  # cases skipped and why
    patching: PatchSweep | None = None  # each aligned point patched into the candidate (compare(patching=True))

    @property
    def equivalent(self) -> bool:
        return self.first_divergence is None

    @property
    def cases(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(e.case for e in self.errors))

    def errors_for(self, case: str) -> list[PointError]:
        return [e for e in self.errors if e.case == case]

    def verdict(self) -> str:
        if self.equivalent:
            return f"equivalent within noise (every point below {self.tolerance:.0e} relative)"
        d = self.first_divergence
        assert d is not None
        where = f"first divergence at {d.label} ({d.case} inputs): error {_num(d.error)} > noise {self.tolerance:.0e}"
        if not d.inputs_agree:
            where += f"; its input already differs by {_num(d.input_error)}"
        return where

    def summary(self) -> str:
        lines = [f"compare {self.candidate_name} ({self.dtypes[1]}) against {self.reference_name} ({self.dtypes[0]})",
                 f"weights: {_weights_line(self.weights)}"]
        lines += [f"  {m.candidate} {m.explanation}" for m in self.weights.transformed()[:8]]
        lines += [f"  role: {m.role_sentence}" for m in self.weights.role_findings()[:8]]
        lines += [f"  unmatched in the candidate: {n}" for n in self.weights.unmatched_candidate[:5]]
        lines += [f"  unmatched in the reference: {n}" for n in self.weights.unmatched_reference[:5]]
        lines += [f"  {note}" for note in self.weights.ties]
        a = self.alignment
        unpaired = a.unpaired_reference + a.unpaired_candidate
        lines.append(f"points: {len(a.pairs)} paired" + (f"; unpaired: {', '.join(unpaired)}" if unpaired else ""))
        lines += [f"note: {n}" for n in self.notes]
        lines.append(self.verdict())
        if self.diagnosis is not None:
            lines += _diagnosis_lines(self.diagnosis)
        if self.patching is not None:
            lines.append(self.patching.summary())
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.summary()

    def _repr_html_(self) -> str:
        """The verdict, the divergence figure and both tables, by the view registered in `workbench.display`."""
        return notebook_html(self)

    def save_html(self, path: str | Path) -> Path:
        """The report as one offline HTML file (plotly.js inline), by the export registered in `workbench.display`."""
        return export_html(self, path)


def _num(x: float, tol: float | None = None) -> str:
    """An error as text: a bound when it is within noise (noise differs between CPUs), else two digits."""
    if math.isnan(x):
        return "not applicable"
    if math.isinf(x):
        return "inf (shapes differ or values not finite)"
    return f"< {tol:.0e}" if tol is not None and x <= tol else f"{x:.1e}"


def _weights_line(w: WeightTable) -> str:
    swapped = len(w.role_findings())
    exact = sum(m.relation == "exact" and not m.role_swapped for m in w.matches)
    other = sum(m.relation != "exact" for m in w.matches)
    roles = f", {swapped} in the place of another role" if swapped else ""
    return (f"{exact} exact, {other} matched under a transformation{roles}, {len(w.unmatched_candidate)} + "
            f"{len(w.unmatched_reference)} unmatched (candidate + reference)")


def _diagnosis_lines(d: Diagnosis) -> list[str]:
    lines = [f"diagnosis at {d.point}: replayed on the reference's input, the candidate's module is off by "
             f"{_num(d.replay_error, d.tolerance)}"]
    if d.cause is not None:
        lines.append(f"  cause: {d.cause.cause} (fix '{d.cause.name}' leaves {_num(d.cause.error, d.tolerance)})")
    else:
        lines.append(f"  {d.note}")
    lines += [f"  tried {t.name}: {_num(t.error, d.tolerance)}" for t in d.trials if t is not d.cause][:12]
    return lines


def _head_dims(*models: nn.Module) -> tuple[int, ...]:
    dims: list[int] = []
    for m in models:
        cfg = getattr(m, "config", None)
        D = config_value(cfg, "head_dim", "attn_head_dim")
        if not isinstance(D, int):
            width = config_value(cfg, "hidden_size", "d_model", "n_embd")
            heads = config_value(cfg, "num_attention_heads", "n_heads", "n_head")
            D = width // heads if isinstance(width, int) and isinstance(heads, int) and heads else None
        if isinstance(D, int) and D not in dims:
            dims.append(D)
    return tuple(dims)


def first_divergence(errors: Sequence[PointError]) -> PointError | None:
    """The earliest point above noise whose input still agrees; else the earliest above noise."""
    above = sorted((e for e in errors if e.above), key=lambda e: (e.depth, CASES.index(e.case)))
    return next((e for e in above if e.inputs_agree), above[0] if above else None)


def _cases(ref_a: ModelAdapter, cand_a: ModelAdapter, cases: Sequence[str], inputs: torch.Tensor | None,
           seed: int) -> tuple[list[Case], list[str]]:
    """The cases asked for that both models can run, and a note for each one left out."""
    wanted = [c for c in default_cases(ref_a.vocab_size, inputs, seed) if c.name in cases]
    notes = []
    no_mask = [a for a in (ref_a, cand_a) if not a.supports_mask]
    if "padded" in cases and no_mask:
        wanted = [c for c in wanted if c.name != "padded"]
        notes.append(f"padded case skipped: {_name(no_mask[0].model)}'s forward takes no attention_mask")
    if not wanted:
        raise CompareError("no case left to run: the padded case needs models whose forward takes "
                           "attention_mask; add the batch or cached case.")
    return wanted, notes


def compare(reference: nn.Module, candidate: nn.Module, inputs: torch.Tensor | None = None, *,
            cases: Sequence[str] = CASES, tolerance: float | None = None, diagnose_cause: bool = True,
            patching: bool = False, seed: int = 0) -> Comparison:
    """Compare `candidate` with `reference` (any two causal LMs over the same vocabulary).

    inputs: token ids (B, T), T >= 3 (default: a seeded random (2, 8) batch); the padded case left-pads its
    last row by a third, the cached case feeds all but the last two tokens to the cache first.
    tolerance: relative error counted as noise (default: from the less precise dtype of the two models).
    patching: also patch each aligned point's reference activation into the candidate and measure the share of
    the logit gap it closes (`workbench.compare.patching`; one candidate forward per point, on the case of the
    first divergence).
    """
    ref_a, cand_a = ModelAdapter(reference), ModelAdapter(candidate)
    names = (_name(reference), _name(candidate))
    for model, which in ((reference, "reference"), (candidate, "candidate")):
        check_parameters(model, which, lambda: PartialComparison(*names, "parameters"))
    ref_points, cand_points = find_points(ref_a), find_points(cand_a)
    unknown = [c for c in cases if c not in CASES]
    if unknown or not cases:
        raise CompareError(f"unknown cases {unknown or list(cases)}; choose among {list(CASES)}.")
    head_dims = _head_dims(reference, candidate)
    table = match_weights(reference, candidate, head_dims)
    alignment = align(ref_points, cand_points)
    partial = Partial(PartialComparison(*names, "vocabulary", table, alignment))
    vocab = [partial.run(a, which, "a 2-token probe (ids (1, 2) of zeros)", functools.partial(_vocab, a))
             for a, which in ((ref_a, "reference"), (cand_a, "candidate"))]
    if vocab[0] != vocab[1]:
        raise CompareError(f"the reference's logits have {vocab[0]} entries and the candidate's {vocab[1]}; "
                           "compare models over the same vocabulary.", partial.state)
    tol = tolerance if tolerance is not None else noise_tolerance(ref_a.dtype, cand_a.dtype)
    wanted, notes = _cases(ref_a, cand_a, cases, inputs, seed)
    runs: list[CaseRun] = []
    errors: list[PointError] = []
    for case in wanted:
        partial.stop_at(f"{case.name} case", errors)
        ref_calls, ref_logits = partial.run(ref_a, "reference", _inputs(case),
                                            functools.partial(run_case, ref_a, ref_points, case))
        cand_calls, cand_logits = partial.run(cand_a, "candidate", _inputs(case),
                                              functools.partial(run_case, cand_a, cand_points, case))
        run = CaseRun(case, ref_calls, cand_calls, (ref_logits, cand_logits))
        runs.append(run)
        errors += measure(alignment, run, tol)
    first = first_divergence(errors)
    diagnosis = None
    if first is not None and diagnose_cause:
        run = next(r for r in runs if r.case.name == first.case)
        ref_p, cand_p = next((r, c) for r, c in alignment.pairs if r.label == first.label)
        replayer = Replayer(reference, candidate, ref_a, cand_a, table, alignment, head_dims)
        diagnosis = diagnose(replayer, ref_p, cand_p, run, first.error, tol)
    sweep = None
    if patching:
        run = next(r for r in runs if first is None or r.case.name == first.case)
        sweep = patch_sweep(alignment, cand_a, run, tol)
    return Comparison(_name(reference), _name(candidate), (_dtype(ref_a), _dtype(cand_a)), table, alignment,
                      tuple(errors), tol, first, diagnosis, tuple(notes), sweep)


class Partial:
    """The comparison so far, and the one place a model's forward is called during `compare`: a forward that
    raises becomes a CompareError that names the inputs and the exception (chained) and keeps `state`."""

    def __init__(self, state: PartialComparison) -> None:
        self.state = state

    def stop_at(self, stage: str, errors: Sequence[PointError]) -> None:
        self.state = PartialComparison(self.state.reference_name, self.state.candidate_name, stage,
                                       self.state.weights, self.state.alignment, tuple(errors))

    def run(self, adapter: ModelAdapter, which: str, inputs: str, forward: Callable[[], T]) -> T:
        try:
            return forward()
        except CompareError:
            raise
        except Exception as e:
            raise CompareError(
                f"the {which} ({_name(adapter.model)}) raised {type(e).__name__} on {inputs}: {e}. Fix its forward "
                "for these inputs (the reference takes them), or leave that case out (cases=...); the comparison "
                "up to here is the error's `partial`.", self.state) from e


def _vocab(adapter: ModelAdapter) -> int:
    return adapter.vocab_size


def _inputs(case: Case) -> str:
    """The inputs of a case, said for an error message."""
    B, T = case.ids.shape
    said = f"the {case.name} case's inputs (ids ({B}, {T})"
    if case.mask is not None and not bool(case.mask.all()):
        said += ", left-padded, with an attention mask"
    if case.prefix:
        said += f", the last {T - case.prefix} fed after {case.prefix} cached"
    return said + ")"


def _name(model: Any) -> str:
    return type(model).__name__


def _dtype(adapter: ModelAdapter) -> str:
    return str(adapter.dtype).replace("torch.", "")
