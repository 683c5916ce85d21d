"""The cause at the first divergence: replay the candidate's module there with the reference's inputs, under each
candidate fix, and report the fix that closes the gap.

Replaying one module isolates it: its main input is the reference's (so upstream drift cannot hide or fake a
cause), its other arguments (positions, rotary tables, masks) are the ones the candidate passed. In the cached
continuation those arguments are copies taken before the call (the KV cache as the module found it), so a
divergence that shows only there is replayed in that one module too, and the positions it was given can be
tested (`cachefix`). A fix that acts outside the module (the rotary frequencies) is checked by rerunning the
whole candidate instead.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from ..lm.adapter import ModelAdapter
from . import fixes as fx
from .activations import Case, CaseRun, noise_tolerance, rel_error, run_case, value_at
from .cachefix import Change, position_fixes
from .cachepos import given_position_fixes
from .handfixes import with_hand_fixes
from .maskfix import mask_fixes
from .points import Alignment, Point
from .positiontable import table_fixes
from .record import Call, main_input, main_output
from .rope import rope_fixes
from .ropeforward import forward_rope_fixes
from .suspects import Suspects
from .weights import WeightTable, pieces, split_rows
from .wiring import compose, recover

_QK = re.compile(r"(q_proj|k_proj|\.q\.|\.k\.|\bwq\b|\bwk\b|query|key|attn_q|attn_k)")


@dataclass(frozen=True)
class Trial:
    """One fix and the error left at the point after it (relative, like every error here)."""

    name: str
    cause: str
    error: float


@dataclass(frozen=True)
class Diagnosis:
    point: str
    case: str
    error: float  # the point's error in the full run
    replay_error: float  # the candidate's module on the reference's inputs, before any fix
    tolerance: float
    trials: tuple[Trial, ...]
    cause: Trial | None
    note: str = ""

    @property
    def explained(self) -> bool:
        return self.cause is not None


def _param_name(model: nn.Module, module: nn.Module) -> str | None:
    return next((n for n, m in model.named_modules() if m is module), None)


class Replayer:
    """Everything the diagnosis needs about both models, gathered once."""

    def __init__(self, reference: nn.Module, candidate: nn.Module, ref_adapter: ModelAdapter,
                 cand_adapter: ModelAdapter, table: WeightTable, alignment: Alignment, head_dims: tuple[int, ...]):
        self.reference, self.candidate = reference, candidate
        self.ref_adapter, self.cand_adapter = ref_adapter, cand_adapter
        self.table, self.alignment, self.head_dims = table, alignment, head_dims
        self.params = dict(candidate.named_parameters(remove_duplicate=False))
        cand_pieces, _ = pieces(candidate)
        self.conv = {p.param: p.conv1d for p in cand_pieces}
        self.ref_values = {p.param: p.value for p in pieces(reference)[0]}
        self.suspects = Suspects(self, cand_pieces)  # role swaps and unmatched parameters
        self._snapshots: dict[tuple[str, str], Call | None] = {}

    # --- which module, which fixes ----------------------------------------------------------------
    def module_of(self, point: Point) -> tuple[str, nn.Module] | None:
        if point.key[0] == "logits":
            head = self.cand_adapter.output_head()
            name = _param_name(self.candidate, head) if head is not None else None
            return (name, head) if name is not None and head is not None else None
        if point.take == "input" or point.module is None:
            return None
        return point.module_name, point.module

    def fixes(self, ref: Point, cand: Point, run: CaseRun) -> list[fx.Fix]:
        role = cand.key[0]
        found = self.module_of(cand)
        prefix = found[0] if found else ""
        out = self._weight_fixes(prefix) + self.suspects.fixes(prefix) if found else []
        if role in ("attention", "block"):
            out += fx.rope_fixes(self._qk_rows(prefix), self.params, self.conv)
            rope = rope_fixes(self.reference, self.candidate)
            out += rope or forward_rope_fixes(self.reference, self.candidate, self.cand_adapter, run.case.ids)
        if role in ("attention", "block") and run.case.prefix and found:
            out += self._position_fixes(ref, cand, run) + given_position_fixes(self.candidate)
        if role in ("attention", "mlp", "block"):
            mask = run.case.mask if run.case.prefix == 0 else None
            attention = fx.function_fixes(self.candidate, "attention", mask) if role != "mlp" else []
            if attention and found:
                attention = with_hand_fixes(attention, self.candidate, mask, lambda: self.replay(ref, cand, run))
            out += attention
            out += fx.function_fixes(self.candidate, "mlp", None) if role != "attention" else []
            if role != "mlp" and found:
                out += mask_fixes(self.candidate, found[0], self.call_of(cand, run), run.case)
        if role in ("norm", "final norm") and found and ref.module is not None:
            out += fx.eps_fixes(found[1], ref.module)
            out += fx.norm_offset_fixes(found[1], self.params, prefix)
            out.append(fx.float32_norm(found[1]))
        if role == "block" and run.case.prefix == 0:
            out += self._placement_fixes(cand.key[1], run, ref)
        if role == "logits":
            out += self._tie_fix()
        if role == "embedding":
            emb = self.cand_adapter.input_embedding()
            name = _param_name(self.candidate, emb) if emb is not None else None
            if emb is not None and name is not None:
                out += self._weight_fixes(name) + fx.embedding_scale_fixes(emb)
                out += self.suspects.embedding_fixes(name, run.case)
            out += table_fixes(self.ref_adapter, self.cand_adapter, run.case)
        return out

    def _weight_fixes(self, prefix: str) -> list[fx.Fix]:
        """One fix per kind of transformed weight under the module: the reference's values put back."""
        groups: dict[str, list] = {}
        for m in self.table.transformed():
            base, rows = split_rows(m.candidate)
            if prefix and not base.startswith(prefix + "."):
                continue
            ref_base, ref_rows = split_rows(m.reference)
            value = self.ref_values[ref_base]
            if ref_rows is not None:
                value = value[ref_rows[0]:ref_rows[1]]
            p = self.params[base]
            rows = rows or (0, p.shape[0] if not self.conv.get(base) else p.shape[1])
            groups.setdefault(m.relation, []).append((base, rows, value, m))
        out = []
        for relation, items in groups.items():
            more = f" (and {len(items) - 2} more)" if len(items) > 2 else ""
            names = "; ".join(m.sentence for *_, m in items[:2]) + more
            out.append(fx.Fix(f"weights: undo {relation}", names, self.patcher([(b, r, v) for b, r, v, _ in items])))
        return out

    def patcher(self, updates: list) -> Callable[[], _ConvAware]:
        """A Fix's `apply`: rows of the candidate's parameters given values in Linear layout, for one replay."""
        return partial(_ConvAware, self.params, self.conv, updates)

    def _qk_rows(self, prefix: str) -> list[tuple[str, tuple[int, int], int]]:
        rows = []
        for m in self.table.matches:
            base, r = split_rows(m.candidate)
            if not base.startswith(prefix + ".") or not _QK.search(m.reference) or not base.endswith("weight"):
                continue
            span = r or (0, self.params[base].shape[0])
            D = next((d for d in self.head_dims if (span[1] - span[0]) % d == 0 and d % 2 == 0), None)
            if D:
                rows.append((base, span, (span[1] - span[0]) // D))
        return rows

    def _placement_fixes(self, i: int, run: CaseRun, ref: Point) -> list[fx.Fix]:
        """Block i recomposed from the candidate's own norms, attention and MLP (each called as it was, on the
        reference's block input), wired as the reference's block is: the wiring read from the reference's
        recorded values (`wiring.recover`), so pre-norm, post-norm, Gemma's extra norms and parallel blocks alike."""
        ref_call = run.reference.get(ref.module_name)
        order = list(run.reference)  # hooks fire in call order: siblings inside a block are in the order they ran
        parts = sorted(((r, c) for r, c in self.alignment.pairs if r.key[1] == i
                        and r.key[0] in ("norm", "attention", "mlp") and r.module_name in run.reference),
                       key=lambda rc: order.index(rc[0].module_name))
        if ref_call is None or ref_call.input is None or ref_call.output is None or not parts:
            return []
        recorded = [(r.key, r.module_name.rsplit(".", 1)[-1], run.reference[r.module_name].input,
                     run.reference[r.module_name].output) for r, _ in parts]
        if any(inp is None or out is None for *_, inp, out in recorded) or any(
                c.module_name not in run.candidate for _, c in parts):
            return []
        found = recover(ref_call.input, recorded, ref_call.output, self._wiring_tol())  # type: ignore[arg-type]
        if found is None:
            return []
        callers: dict[tuple[str, int, int], Callable[[torch.Tensor], torch.Tensor]] = {
            r.key: ModuleCaller(c, run.candidate[c.module_name]) for r, c in parts}
        compute = partial(compose, found, callers, ref_call.input)
        cause = {
            "pre": "the candidate normalizes after each residual add (post-norm) where the reference normalizes "
                   "each branch's input (pre-norm)",
            "post": "the candidate normalizes each branch's input (pre-norm) where the reference normalizes after "
                    "each residual add (post-norm)",
        }.get(found.kind, "the candidate places its norms differently from the reference")
        return [fx.Fix(f"norm placement: {found.kind if found.kind != 'other' else 'as the reference'}",
                       f"{cause}; the reference's block computes {found.formula()}", nullcontext, compute=compute)]

    def _wiring_tol(self) -> float:
        """Sums recomputed in another order than the reference's differ by rounding of its dtype."""
        return noise_tolerance(self.ref_adapter.dtype)

    def _position_fixes(self, ref: Point, cand: Point, run: CaseRun) -> list[fx.Fix]:
        """The cached step's position arguments swapped for those of an uncached forward of the same ids."""
        name = cand.module_name
        cached = self.call_of(cand, run)
        calls, _ = run_case(self.cand_adapter, [cand], Case("full", run.case.ids, run.case.mask))
        full = calls.get(name)
        if cached is None or full is None:
            return []
        total = run.case.ids.shape[1]
        return position_fixes(name, cached, full, total - run.case.prefix, total,
                              lambda change: self.replay(ref, cand, run, change=change))

    def call_of(self, point: Point, run: CaseRun) -> Call | None:
        """The candidate's call at `point` in this case; in a cached one, a snapshot of its arguments (one extra
        run of the case, kept)."""
        if not run.case.prefix:
            return run.candidate.get(point.module_name)
        key = (run.case.name, point.module_name)
        if key not in self._snapshots:
            calls, _ = run_case(self.cand_adapter, [point], run.case, snapshot=True)
            self._snapshots[key] = calls.get(point.module_name)
        return self._snapshots[key]

    def _tie_fix(self) -> list[fx.Fix]:
        ref_head, ref_emb = self.ref_adapter.output_head(), self.ref_adapter.input_embedding()
        head, emb = self.cand_adapter.output_head(), self.cand_adapter.input_embedding()
        if ref_head is None or ref_emb is None or head is None or emb is None:
            return []
        ref_w, ref_e, w, e = (getattr(m, "weight", None) for m in (ref_head, ref_emb, head, emb))
        if not all(isinstance(t, torch.Tensor) for t in (ref_w, ref_e, w, e)) or ref_w is not ref_e or w is e:
            return []
        name = _param_name(self.candidate, head)
        if name is None or not isinstance(e, torch.Tensor) or not isinstance(w, torch.Tensor) or w.shape != e.shape:
            return []
        value = e.detach().float()
        return [fx.Fix("tie the LM head to the embedding",
                       f"the reference ties its LM head to the token embedding; the candidate's `{name}.weight` "
                       "is a separate tensor that does not hold the embedding's values",
                       lambda: fx.patched_rows(self.params, [(f"{name}.weight", (0, value.shape[0]), value)]))]

    # --- replaying --------------------------------------------------------------------------------
    def replay(self, ref: Point, cand: Point, run: CaseRun, whole: bool = False,
               change: Change | None = None) -> torch.Tensor | None:
        """The candidate's value at `cand`: its module fed the reference's main input (its other arguments
        changed by `change`), or the whole model rerun."""
        found = self.module_of(cand)
        if whole or found is None:
            calls, logits = run_case(self.cand_adapter, [cand], run.case)
            return value_at(cand, calls, logits)
        name, module = found
        if cand.key[0] == "logits":
            final = next((r for r, _ in self.alignment.pairs if r.key[0] == "final norm"), None)
            x = run.reference[final.module_name].output if final and final.module_name in run.reference else None
            if x is None:
                return self.replay(ref, cand, run, whole=True)
            with torch.no_grad():
                return main_output(module(x.to(self.cand_adapter.device, self.cand_adapter.dtype)))
        call, ref_call = self.call_of(cand, run), run.reference.get(ref.module_name)
        if call is None or ref_call is None or ref_call.input is None or (
                run.case.prefix and (call.input is None or call.input.shape != ref_call.input.shape)):
            return None if change else self.replay(ref, cand, run, whole=True)  # a cache-less candidate recomputes
        args, kwargs = call.arguments()
        if change is not None:
            args, kwargs = change(args, kwargs)
        where = main_input(call.args, call.kwargs)
        if where is not None:
            x = ref_call.input.to(where[1].device, where[1].dtype)
            if isinstance(where[0], int):
                args[where[0]] = x
            else:
                kwargs[where[0]] = x
        with torch.no_grad():
            return main_output(module(*args, **kwargs))


class ModuleCaller:
    """A block part's module called as the candidate called it, with `h` as its main input."""

    def __init__(self, point: Point, call: Call) -> None:
        if point.module is None:
            raise ValueError(f"{point.label} has no module to call")
        self.name, self.module, self.call = point.module_name, point.module, call

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        args, kwargs = list(self.call.args), dict(self.call.kwargs)
        where = main_input(self.call.args, self.call.kwargs)
        if where is not None:
            h = h.to(where[1].device, where[1].dtype)
            if isinstance(where[0], int):
                args[where[0]] = h
            else:
                kwargs[where[0]] = h
        with torch.no_grad():
            out = main_output(self.module(*args, **kwargs))
        if out is None:
            raise RuntimeError(f"{self.name} returned no tensor")
        return out


class _ConvAware:
    """patched_rows for Linear-layout values, transposing into a Conv1D parameter's (in, out) layout."""

    def __init__(self, params: dict[str, nn.Parameter], conv: dict[str, bool], updates: list) -> None:
        self.params, self.conv, self.updates = params, conv, updates
        self.saved: dict[str, torch.Tensor] = {}

    def __enter__(self) -> None:
        self.saved = {b: self.params[b].detach().clone() for b, _, _ in self.updates}
        with torch.no_grad():
            for base, (a, b), value in self.updates:
                p = self.params[base]
                if self.conv.get(base):
                    p[:, a:b].copy_(value.t().to(p.dtype))
                else:
                    flat = p.view(p.shape[0], -1) if p.dim() > 1 else p.view(-1, 1)
                    flat[a:b].copy_(value.reshape(b - a, -1).to(p.dtype))

    def __exit__(self, *exc: object) -> None:
        with torch.no_grad():
            for base, value in self.saved.items():
                self.params[base].copy_(value)


def diagnose(replayer: Replayer, ref: Point, cand: Point, run: CaseRun, error: float, tol: float) -> Diagnosis:
    """Try every fix that fits the point's role; the cause is the one that brings the error under `tol`."""
    valid = run.case.valid
    target = value_at(ref, run.reference, run.logits[0])
    base = rel_error(replayer.replay(ref, cand, run), target, valid)
    trials = []
    for fix in replayer.fixes(ref, cand, run):
        try:
            with fix.apply():
                value = fix.compute() if fix.compute else replayer.replay(ref, cand, run, whole=fix.whole_model)
            after = rel_error(value, target, valid)
        except (RuntimeError, ValueError, IndexError, TypeError) as e:  # a fix that does not fit this module
            trials.append(Trial(fix.name, f"not applicable: {type(e).__name__}", math.nan))
            continue
        trials.append(Trial(fix.name, fix.cause, after))
    closing = [t for t in trials if t.error <= tol]
    cause = min(closing, key=lambda t: t.error) if closing else None
    note = ""
    if base <= tol and cause is None:
        note = ("given the reference's input, the candidate's module agrees with the reference: the gap comes "
                "from its other arguments (positions, mask, rotary tables, cache) or from code between modules")
    elif cause is None:
        note = "no fix tried closes the gap"
    return Diagnosis(ref.label, run.case.name, error, base, tol, tuple(trials), cause, note)
