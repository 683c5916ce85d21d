"""RoPE in every form a port keeps it, recognised by value, and the fix that rebuilds it from the reference's.

Ports keep rotary positions as an `inv_freq` buffer (D/2,) (HF), precomputed `cos`/`sin` tables (P, D) or
(P, D/2) under any name, a complex `freqs_cis` (P, D/2) (Meta's reference code, gpt-fast), cos/sin stacked
(P, D/2, 2), or tables built in forward from a base kept as a plain number (`self.base = 10000`). A table is
recognised by what it holds, not by its name: row p holds the angles p * f_i for some frequencies f (as
complex numbers, cosines or sines, each frequency once, twice side by side (`cat(f, f)`) or twice in adjacent
pairs). A wrong base, a wrong rotary dimension (the tables built for another D or another partial-rotary
fraction) all show as other frequencies. The fix rebuilds each such table in its own kind, layout, rows and
dtype from the reference's frequencies (its `inv_freq` or its own tables) and sets a plain-number base to the
reference's; it acts outside the attention module (tables are sliced in the model's forward), so the whole
candidate is rerun under it. The name says which reading fits: another base, another head dimension in the
exponent (base^(-2i/d) fixes only ln(base)/d, so a base and a d are told apart by which one comes out round),
or another number of rotated dimensions.

Interleaved against half-split rotation is not a property of the tables: `fixes.rope_fixes` tests it by
permuting the candidate's q/k rows, whatever form its tables take.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..lm.adapter import config_value
from .fixes import Fix

BASE_NAMES = ("base", "rope_theta", "theta", "rope_base", "rotary_base")
KINDS = ("inv_freq", "complex", "pair", "sin", "cos")  # "pair": cos and sin stacked in a last axis of 2
# in the order their frequencies read most precisely (a cosine near 1 hides a small angle)


@dataclass(frozen=True, eq=False)
class Table:
    """One rotary table of a model: `owner.<attr>` holds it (`name` in the model)."""

    name: str
    owner: nn.Module = field(repr=False)
    attr: str
    kind: str  # one of KINDS
    layout: str  # "single", "halves" (cat(f, f)) or "pairs" (f0, f0, f1, f1, ...)
    freqs: torch.Tensor  # (n,) float64: the frequencies it was built from
    value: torch.Tensor = field(repr=False)

    def rebuilt(self, freqs: torch.Tensor) -> torch.Tensor:
        """The same kind, layout, rows, leading dims, dtype and device, built from `freqs` (n',)."""
        t = self.value
        if self.kind == "inv_freq":
            return freqs.to(t.device, t.dtype)
        rows = t.shape[-3] if self.kind == "pair" else t.shape[-2]
        angles = torch.outer(torch.arange(rows, dtype=torch.float32), freqs.float())  # (P, n), as HF computes
        if self.layout == "halves":
            angles = torch.cat((angles, angles), dim=-1)
        elif self.layout == "pairs":
            angles = angles.repeat_interleave(2, dim=-1)
        built = {"complex": lambda a: torch.polar(torch.ones_like(a), a), "cos": torch.cos, "sin": torch.sin,
                 "pair": lambda a: torch.stack((a.cos(), a.sin()), dim=-1)}[self.kind](angles)
        lead = t.shape[:-3] if self.kind == "pair" else t.shape[:-2]
        return built.reshape(*lead, *built.shape).to(t.device, t.dtype)

    def matches(self, freqs: torch.Tensor) -> bool:
        """Whether this table is what `freqs` would give, to the rounding of its dtype."""
        new = self.rebuilt(freqs)
        if new.shape != self.value.shape:
            return False
        if self.kind == "inv_freq":
            return bool(torch.allclose(new.double(), self.value.double(), rtol=1e-4, atol=0))
        return bool(torch.allclose(new, self.value, rtol=0, atol=_atol(self.value)))


def _atol(t: torch.Tensor) -> float:
    real = t.real if t.is_complex() else t
    return max(1e-4, 8 * torch.finfo(real.dtype).eps) if real.is_floating_point() else 1e-4


def _angle_reader(kind: str, rows: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Each row's angles (P, w) as far as they can be read, and the largest angle read unambiguously."""
    if kind in ("complex", "pair"):
        return rows.angle(), math.pi * 0.9
    if kind == "cos":
        return rows.clamp(-1, 1).acos(), math.pi * 0.9
    return rows.clamp(-1, 1).asin(), math.pi / 2 * 0.9


def read_table(name: str, owner: nn.Module, attr: str, value: Any) -> Table | None:
    """The table `value` is, if it is a rotary table (see the module docstring), else None."""
    if not isinstance(value, torch.Tensor) or isinstance(value, nn.Parameter):
        return None
    if attr.endswith("inv_freq") and value.dim() == 1 and value.is_floating_point() and value.numel():
        return Table(name, owner, attr, "inv_freq", "single", value.detach().double(), value)
    if value.is_complex():
        kind, rows = "complex", value.detach().to(torch.complex128)
    elif value.is_floating_point() and value.dim() >= 3 and value.shape[-1] == 2:
        kind, rows = "pair", torch.view_as_complex(value.detach().double().contiguous())
    elif value.is_floating_point() and value.dim() >= 2:
        first = value.detach().double().reshape(-1, value.shape[-1])[0]
        kind = "cos" if bool((first == 1).all()) else "sin" if bool((first == 0).all()) else ""
        rows = value.detach().double()
    else:
        return None
    if not kind or rows.dim() < 2 or any(s != 1 for s in rows.shape[:-2]) or rows.shape[-2] < 3:
        return None
    rows = rows.reshape(rows.shape[-2], rows.shape[-1])  # (P, w)
    if kind in ("complex", "pair") and not torch.allclose(rows.abs(), torch.ones(()).double(), atol=1e-3):
        return None
    freqs = _frequencies(kind, rows)
    if freqs is None:
        return None
    layout, unique = _layout(freqs)
    table = Table(name, owner, attr, kind, layout, unique, value)
    return table if table.matches(unique) else None


def _frequencies(kind: str, rows: torch.Tensor) -> torch.Tensor | None:
    """Per column (w,), the frequency f with row p = p * f: read from row 1, then refined from rows 2, 4, 8, ...
    while p * f stays readable (a small f is read where its angle has grown)."""
    angles, limit = _angle_reader(kind, rows)
    f = angles[1]
    last = rows.shape[0] - 1
    steps = [2 ** k for k in range(1, last.bit_length()) if 2 ** k < last] + [last]
    for p in steps:
        f = torch.where(p * f < limit, angles[p] / p, f)
    return f if bool((f > 1e-9).all()) else None


def _layout(f: torch.Tensor) -> tuple[str, torch.Tensor]:
    w = f.shape[0]
    if w % 2 == 0 and w > 1:
        if torch.allclose(f[: w // 2], f[w // 2:], rtol=1e-3, atol=1e-7):
            return "halves", f[: w // 2]
        if torch.allclose(f[0::2], f[1::2], rtol=1e-3, atol=1e-7):
            return "pairs", f[0::2]
    return "single", f


def tables(model: nn.Module) -> list[Table]:
    """Every rotary table `model` keeps: buffers, and plain tensor attributes of its modules."""
    found = []
    for prefix, module in model.named_modules(remove_duplicate=True):
        own = {**{k: v for k, v in vars(module).items() if isinstance(v, torch.Tensor)}, **module._buffers}
        for attr, value in own.items():
            table = read_table(f"{prefix}.{attr}" if prefix else attr, module, attr, value)
            if table is not None:
                found.append(table)
    return found


def _most_precise(found: list[Table]) -> Table:
    return min(found, key=lambda t: KINDS.index(t.kind))


def _geometric(f: torch.Tensor) -> tuple[float, float] | None:
    """(ln f0, ln(base)/d) when f_i = f0 * base^(-2i/d), else None."""
    if f.numel() < 2:
        return None
    logs, i = f.log(), torch.arange(f.numel(), dtype=torch.float64)
    slope = float(((i - i.mean()) * (logs - logs.mean())).sum() / ((i - i.mean()) ** 2).sum())
    start = float(logs.mean()) - slope * float(i.mean())
    if float((start + slope * i - logs).abs().max()) > 1e-3:
        return None
    return start, -slope / 2


@dataclass(frozen=True)
class Rotary:
    """The reference's RoPE: its frequencies (n,), rotated dimensions 2n, and its base when it has one."""

    freqs: torch.Tensor
    base: float | None

    @property
    def dims(self) -> int:
        return 2 * self.freqs.numel()

    @classmethod
    def of(cls, model: nn.Module) -> Rotary | None:
        found = tables(model)
        if not found:
            return None
        own = _most_precise(found)
        cfg = getattr(model, "config", None)
        theta = config_value(cfg, "rope_theta", "rotary_emb_base", "rope_base")
        params = getattr(cfg, "rope_parameters", None)
        if theta is None and isinstance(params, dict):
            theta = params.get("rope_theta")
        fit = _geometric(own.freqs)
        if not isinstance(theta, (int, float)) or isinstance(theta, bool):
            theta = math.exp(fit[1] * 2 * own.freqs.numel()) if fit is not None and abs(fit[0]) < 1e-6 else None
        return cls(own.freqs, float(theta) if theta is not None else None)


class RebuiltRotary:
    """The candidate with its differing tables rebuilt from the reference's frequencies and its plain-number
    bases set to the reference's, for the `with` block; everything put back on exit."""

    def __init__(self, tables: list[Table], bases: list[tuple[nn.Module, str, float]], reference: Rotary) -> None:
        self.tables, self.bases, self.reference = tables, bases, reference
        self.saved: list[tuple[nn.Module, str, Any]] = []

    def __enter__(self) -> None:
        for t in self.tables:
            self._set(t.owner, t.attr, t.rebuilt(self.reference.freqs))
        for module, attr, _ in self.bases:
            old = getattr(module, attr)
            assert self.reference.base is not None  # a base is listed only when the reference has one
            self._set(module, attr, type(old)(self.reference.base) if isinstance(old, float) else self.reference.base)

    def _set(self, module: nn.Module, attr: str, value: Any) -> None:
        self.saved.append((module, attr, module._buffers[attr] if attr in module._buffers else getattr(module, attr)))
        if attr in module._buffers:
            module._buffers[attr] = value
        else:
            object.__setattr__(module, attr, value)

    def __exit__(self, *exc: object) -> None:
        for module, attr, old in reversed(self.saved):
            if attr in module._buffers:
                module._buffers[attr] = old
            else:
                object.__setattr__(module, attr, old)
        self.saved.clear()


def _plain_bases(model: nn.Module, base: float) -> list[tuple[nn.Module, str, float]]:
    """Plain-number bases (`self.base = 500000`) of the model's modules that differ from `base`."""
    out = []
    for module in model.modules():
        for attr in BASE_NAMES:
            value = vars(module).get(attr)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 1 and not math.isclose(
                    value, base, rel_tol=1e-9):
                out.append((module, attr, float(value)))
    return out


def _reading(wrong: list[Table], bases: list[tuple[nn.Module, str, float]], ref: Rotary) -> tuple[str, str]:
    """The fix's name and cause: which reading of the candidate's frequencies fits."""
    where = ", ".join(f"`{t.name}`" for t in wrong[:3]) or ", ".join(f"`{a}` = {v:g}" for _, a, v in bases[:3])
    base = f"{ref.base:g}" if ref.base is not None else "the reference's"
    odd = next((t for t in wrong if t.freqs.numel() != ref.freqs.numel()), None)
    if odd is not None:
        return (f"RoPE rotary dims {ref.dims}", f"the candidate rotates {2 * odd.freqs.numel()} dimensions of each "
                f"head where the reference rotates {ref.dims} (a wrong rotary dimension or partial-rotary fraction; "
                f"{where})")
    fit = _geometric(_most_precise(wrong).freqs) if wrong else None
    if not wrong:
        own = bases[0][2]
        return f"RoPE base {base}", f"the candidate's rotary base is {own:g}, the reference's {base} ({where})"
    if fit is None or ref.base is None or abs(fit[0]) > 1e-3:
        return "RoPE frequencies", f"the candidate's rotary frequencies differ from the reference's ({where})"
    d = math.log(ref.base) / fit[1]
    if abs(d - round(d)) < 0.02 and round(d) % 2 == 0 and round(d) != ref.dims:
        return (f"RoPE dimension {ref.dims}", f"the candidate's rotary tables are built for d = {round(d)} "
                f"(base^(-2i/{round(d)})) where the reference's use d = {ref.dims} ({where})")
    own_base = math.exp(fit[1] * ref.dims)
    return f"RoPE base {base}", f"the candidate's rotary base is {own_base:.4g}, the reference's {base} ({where})"


def rope_fixes(reference: nn.Module, candidate: nn.Module) -> list[Fix]:
    """The one fix that puts the reference's rotary frequencies into every form the candidate keeps them in;
    none when every candidate table already holds them (so it is never tried on a clean port)."""
    ref = Rotary.of(reference)
    if ref is None:
        return []
    wrong = [t for t in tables(candidate) if not t.matches(ref.freqs)]
    bases = _plain_bases(candidate, ref.base) if ref.base is not None else []
    if not wrong and not bases:
        return []
    name, cause = _reading(wrong, bases, ref)
    return [Fix(name, cause, lambda: RebuiltRotary(wrong, bases, ref), whole_model=True)]
