"""Putting a state dict (workbench naming) into a model, and reporting what happened.

`load_state` copies into a model that exists. `model_from_state` builds the model for a load: a strict load
fills every parameter or raises, so its model is built on the meta device and takes the state's tensors as
its own: no initial weight is drawn, and no weight is copied.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import WeightMismatchError
from ..model.config import ModelConfig
from ..model.placement import materialize
from ..model.transformer import TransformerLM
from .report import LoadReport

_ALIGN = 64  # bytes: where torch's own allocations start; a kept tensor off it is copied (see _owned)


def tied_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(alias, owner) for every parameter name that shares storage with an earlier one."""
    seen: dict[int, str] = {}
    pairs = []
    for name, p in model.named_parameters(remove_duplicate=False):
        key = id(p) if p.is_meta else p.data_ptr()  # meta tensors have no storage: they share only by identity
        if key in seen:
            pairs.append((name, seen[key]))
        else:
            seen[key] = name
    return pairs


def _match(
    model: nn.Module, state: dict[str, torch.Tensor], source: str, format: str
) -> tuple[LoadReport, dict[str, torch.Tensor]]:
    """The report of putting `state` into `model` (nothing changed yet), and the values that fit, by name.

    Tied parameters are filled once, through their owner, so the alias is never among the values.
    """
    report = LoadReport(source=source, format=format)
    report.tied = tied_pairs(model)
    aliases = {alias for alias, _ in report.tied}
    targets = {n: t for n, t in model.state_dict(keep_vars=True).items() if n not in aliases}
    for name in sorted(set(state) - set(targets) - aliases):
        report.unexpected.append(name)
    fits: dict[str, torch.Tensor] = {}
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
        fits[name] = value
    for alias, owner in report.tied:
        if alias in state and owner in state and not torch.equal(state[alias].to(state[owner].dtype), state[owner]):
            report.notes.append(f"{alias} differs from {owner} in the file, but the model ties them; {owner} was used.")
    return report, fits


def _check(report: LoadReport, source: str) -> None:
    """Raise WeightMismatchError carrying the report when a weight is missing or of the wrong shape."""
    if not report.ok:
        raise WeightMismatchError(
            f"{len(report.missing)} missing and {len(report.mismatched)} mismatched weights loading "
            f"{source}; pass strict=False to load anyway.\n{report}"
        )


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
    report, fits = _match(model, state, source, format)
    targets = model.state_dict(keep_vars=True)
    with torch.no_grad():
        for name, value in fits.items():
            targets[name].copy_(value)
    if strict:
        _check(report, source)
    return report


def model_from_state(
    config: ModelConfig, state: dict[str, torch.Tensor], *, strict: bool = True, source: str = "",
    format: str = "workbench",
) -> tuple[TransformerLM, LoadReport]:
    """A TransformerLM on the CPU holding `state` (workbench naming), and the report of the load.

    strict: every parameter comes from `state` or WeightMismatchError is raised, so no initial weight is
    drawn: the model is built on the meta device and takes the state's tensors as its parameters, copying
    only those it must cast, or that are strided or share memory with another; the state must not be used
    after. Lenient: the model is built with the workbench's initialisation and `state` is copied in, so what
    it lacks keeps its initial values.
    """
    if not strict:
        model = TransformerLM(config)
        return model, load_state(model, state, strict=False, source=source, format=format)
    with torch.device("meta"):
        model = TransformerLM(config, init=False)
    report, fits = _match(model, state, source, format)
    _check(report, source)
    targets = model.state_dict(keep_vars=True)
    kept: set[int] = set()
    for name, value in fits.items():
        target = targets[name]
        value = _owned(value, target.dtype, kept)
        _set(model, name, nn.Parameter(value, target.requires_grad) if isinstance(target, nn.Parameter) else value)
    for alias, owner in report.tied:
        _set(model, alias, model.get_parameter(owner))
    materialize(model, torch.device("cpu"))  # the buffers computed at construction (RoPE frequencies, ...)
    return model, report


def _owned(value: torch.Tensor, dtype: torch.dtype, kept: set[int]) -> torch.Tensor:
    """`value` in `dtype` as memory a model can keep: itself when it is contiguous, alone in its storage, on
    torch's alignment and not kept already (its storage in `kept`), else a copy. The copy is what a copying load
    makes, so the weights sit in memory laid out as they would be (matmul kernels may pick their path by it)."""
    value = value.detach().to("cpu", dtype)
    storage = value.untyped_storage()
    alone = value.storage_offset() == 0 and storage.nbytes() == value.nbytes and value.is_contiguous()
    if not alone or value.data_ptr() % _ALIGN or value.data_ptr() in kept:
        value = value.clone(memory_format=torch.contiguous_format)
    kept.add(value.data_ptr())
    return value


def _set(model: nn.Module, name: str, value: torch.Tensor) -> None:
    """Put `value` at the dotted `name` ("blocks.0.attn.qkv.weight"): a parameter, or a buffer."""
    path, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(path), leaf, value)
