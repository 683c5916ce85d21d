"""Putting a state dict (workbench naming) into a model, and reporting what happened."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import WeightMismatchError
from .report import LoadReport


def tied_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(alias, owner) for every parameter name that shares storage with an earlier one."""
    seen: dict[int, str] = {}
    pairs = []
    for name, p in model.named_parameters(remove_duplicate=False):
        key = p.data_ptr()
        if key in seen:
            pairs.append((name, seen[key]))
        else:
            seen[key] = name
    return pairs


def load_state(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    *,
    strict: bool = True,
    source: str = "",
    format: str = "workbench",
) -> LoadReport:
    """Copy `state` into `model` in place, casting dtypes; the report lists every discrepancy.

    Tied parameters are filled once, through their owner, so storage stays shared. With
    strict=True, missing keys or shape mismatches raise `WeightMismatchError` carrying the report.
    """
    report = LoadReport(source=source, format=format)
    report.tied = tied_pairs(model)
    aliases = {alias for alias, _ in report.tied}
    targets = {n: t for n, t in model.state_dict(keep_vars=True).items() if n not in aliases}
    for name in sorted(set(state) - set(targets) - aliases):
        report.unexpected.append(name)
    for name, target in targets.items():
        if name not in state:
            report.missing.append(name)
            continue
        value = state[name]
        if target.is_floating_point() and not value.is_floating_point():
            raise WeightMismatchError(
                f"{name} is stored as {str(value.dtype).replace('torch.', '')} in {source or 'the file'}, but the "
                "model holds floating-point weights there; the file is corrupt or not a weight file. Re-save it."
            )
        if tuple(value.shape) != tuple(target.shape):
            report.mismatched.append((name, tuple(value.shape), tuple(target.shape)))
            continue
        if value.dtype != target.dtype:
            report.casts.append((name, str(value.dtype).replace("torch.", ""), str(target.dtype).replace("torch.", "")))
        with torch.no_grad():
            target.copy_(value)
    for alias, owner in report.tied:
        if alias in state and owner in state and not torch.equal(state[alias].to(state[owner].dtype), state[owner]):
            report.notes.append(f"{alias} differs from {owner} in the file, but the model ties them; {owner} was used.")
    if strict and not report.ok:
        raise WeightMismatchError(
            f"{len(report.missing)} missing and {len(report.mismatched)} mismatched weights loading "
            f"{source}; pass strict=False to load anyway.\n{report}"
        )
    return report
