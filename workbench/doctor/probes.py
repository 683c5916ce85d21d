"""Observation shared by checks, as clients of the interception layer (`workbench.lm.intercept`): the outputs
of chosen modules, and the first module where two forwards part. Function calls and attention are watched
through the same layer by the checks that need them (`attention_scores`, `checks_structure`); every hook is
removed when the interception closes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from ..lm.intercept import Client, ModuleCall, intercept


def _first_tensor(obj: Any) -> torch.Tensor | None:
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, (tuple, list)) and obj:
        return _first_tensor(obj[0])
    return getattr(obj, "last_hidden_state", None) if not isinstance(obj, dict) else None


def attribution_sites(model: nn.Module, blocks: list[tuple[str, nn.Module]] | None) -> list[tuple[str, nn.Module]]:
    """Modules a divergence is attributed to: each block and its direct children (attention, MLP, norms), and
    the modules outside the blocks (embeddings, final norm, head); not the insides of attention, where every
    projection after the faulty step would be blamed first."""
    inside = {id(m) for _, b in blocks or [] for m in b.modules()}
    sites = [(n, m) for n, m in model.named_modules() if id(m) not in inside and n]
    for name, block in blocks or []:
        sites.append((name, block))
        sites.extend((f"{name}.{c}", m) for c, m in block.named_children())
    return sites


class ModuleOutputs(Client):
    """An observer of the named modules' outputs: each call's first floating tensor of two or more dimensions
    (B, T, ...), detached as float32, in the order the calls finish."""

    def __init__(self, names: Iterable[str]) -> None:
        self.modules = tuple(names)
        self.outputs: list[tuple[str, torch.Tensor]] = []

    def module_output(self, call: ModuleCall) -> None:
        t = _first_tensor(call.output)
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dim() >= 2:
            self.outputs.append((call.name, t.detach().float()))


def module_outputs(model: nn.Module, names: Iterable[str], run: Callable[[], Any]) -> list[tuple[str, torch.Tensor]]:
    """The outputs of the named modules of `model` while `run()` runs (see `ModuleOutputs`)."""
    seen = ModuleOutputs(names)
    with intercept(model, seen):
        run()
    return seen.outputs


def first_divergence(model: nn.Module, sites: list[tuple[str, nn.Module]], run_a: Callable[[], Any],
                     run_b: Callable[[], Any], pick_a: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
                     pick_b: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> tuple[str, float] | None:
    """The first module of `model` among `sites`, in the order modules finish, whose output differs between two
    forwards beyond float noise, with the largest |delta|; None when none does. pick_a / pick_b select the
    positions to compare from each output (B, T, ...), e.g. the real tokens of a padded sequence."""
    names = [n for n, _ in sites]
    first = module_outputs(model, names, run_a)
    later = dict(module_outputs(model, names, run_b))
    for name, a in first:
        b = later.get(name)
        if b is None:
            continue
        a, b = pick_a(a), pick_b(b)
        if a.shape != b.shape:
            continue
        delta = float((a - b).abs().max())
        if not delta <= 1e-4 * max(1.0, float(a.abs().max())):
            return name, delta
    return None
