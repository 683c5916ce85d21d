"""Gradient capture inside a trace, and `GradientHistory` across training steps.

Inside a trace, a post-accumulate-grad hook on every parameter measures its gradient when backward
writes it (so an `optimizer.zero_grad()` later in the block does not hide it), on the device, read
once at exit. Optimizer step hooks give the update/weight ratio ||w_after - w_before|| / ||w_before||.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .records import ParamGradRecord


def unique_named_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) with tied parameters listed once, under their first name."""
    return list(model.named_parameters())  # named_parameters() already drops duplicates


def _owner(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ""


class GradientCapture:
    """Per-parameter gradient hooks plus optional optimizer step hooks for one trace."""

    def __init__(self, model: nn.Module) -> None:
        self.params = unique_named_parameters(model)
        self._handles: list[Any] = []
        self._grad: dict[int, torch.Tensor] = {}  # param id -> [norm, absmax, nan, inf, weight norm]
        self._ratio: dict[int, torch.Tensor] = {}
        self._before: dict[int, torch.Tensor] = {}

    def attach(self) -> None:
        for _, p in self.params:
            if p.requires_grad:
                self._handles.append(p.register_post_accumulate_grad_hook(self._on_grad))

    def _on_grad(self, p: torch.Tensor) -> None:
        g = p.grad.detach()
        self._grad[id(p)] = torch.stack([
            torch.linalg.vector_norm(g, dtype=torch.float32), g.abs().amax().float(),
            torch.isnan(g).sum().float(), torch.isinf(g).sum().float(),
            torch.linalg.vector_norm(p.detach(), dtype=torch.float32),
        ])

    def watch_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Measure the update/weight ratio of each step `optimizer` takes while the trace is open.

        Costs one copy of the stepped parameters while the step runs."""
        ours = {id(p) for _, p in self.params}

        def before(opt: torch.optim.Optimizer, *_: Any) -> None:
            for group in opt.param_groups:
                for p in group["params"]:
                    if id(p) in ours and p.grad is not None:
                        self._before[id(p)] = p.detach().clone()

        def after(_opt: torch.optim.Optimizer, *_: Any) -> None:
            for pid, w0 in self._before.items():
                p = next(q for _, q in self.params if id(q) == pid)
                diff = torch.linalg.vector_norm((p.detach() - w0).float())
                self._ratio[pid] = diff / torch.linalg.vector_norm(w0.float()).clamp_min(1e-30)
            self._before.clear()

        self._handles.append(optimizer.register_step_pre_hook(before))
        self._handles.append(optimizer.register_step_post_hook(after))

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._before.clear()

    def finish(self) -> list[ParamGradRecord]:
        """Records for every parameter (one host copy per device)."""
        ids = [id(p) for _, p in self.params]
        host = _to_host({i: self._grad[i] for i in ids if i in self._grad})
        ratios = _to_host({i: self._ratio[i].reshape(1) for i in ids if i in self._ratio})
        out = []
        for name, p in self.params:
            vals = host.get(id(p))
            ratio = ratios.get(id(p))
            out.append(ParamGradRecord(
                name=name, module=_owner(name), shape=list(p.shape), numel=p.numel(),
                grad_norm=vals[0] if vals else None, grad_absmax=vals[1] if vals else None,
                grad_nan=int(vals[2]) if vals else 0, grad_inf=int(vals[3]) if vals else 0,
                weight_norm=vals[4] if vals else float(torch.linalg.vector_norm(p.detach().float())),
                update_ratio=ratio[0] if ratio else None,
            ))
        return out


def _to_host(tensors: dict[int, torch.Tensor]) -> dict[int, list[float]]:
    """Copy a dict of small device tensors to lists of floats with one transfer per device."""
    by_dev: dict[torch.device, list[int]] = {}
    for k, t in tensors.items():
        by_dev.setdefault(t.device, []).append(k)
    out: dict[int, list[float]] = {}
    for keys in by_dev.values():
        rows = torch.stack([tensors[k] for k in keys]).cpu().tolist()
        out.update(zip(keys, rows))
    return out


def _finite_or_inf(v: float) -> float:
    """Non-finite gradient norms become +inf, so NaN keeps meaning "no gradient"."""
    return v if math.isfinite(v) else math.inf


def module_norms(records: list[ParamGradRecord]) -> dict[str, float]:
    """L2 gradient norm per owning module: sqrt of the sum of its parameters' squared norms."""
    acc: dict[str, float] = {}
    for r in records:
        if r.grad_norm is not None:
            acc[r.module] = acc.get(r.module, 0.0) + r.grad_norm**2
    return {k: _finite_or_inf(math.sqrt(v)) for k, v in acc.items()}


@dataclass
class GradientHistory:
    """Per-module gradient norms across training steps; flags vanishing and exploding layers.

    Call `append(model)` after `loss.backward()` each step (one device->host copy), or
    `append(trace)` with a trace taken with gradients=True. `norms[i][j]` is step i, module j;
    NaN where a module got no gradient. Listeners registered with `on_append` run after each append
    (the GradientFlow widget redraws from them).
    """

    vanishing: float = 1e-7  # a module whose gradient norm is below this is flagged "vanishing"
    exploding: float = 1e3  # above this it is flagged "exploding"; a NaN/Inf gradient is stored as +inf
    max_steps: int | None = None  # keep only the most recent steps (None = all)
    modules: list[str] = field(default_factory=list)  # column order of `norms`
    steps: list[int] = field(default_factory=list)
    norms: list[list[float]] = field(default_factory=list)
    _listeners: list[Callable[[GradientHistory], None]] = field(default_factory=list, repr=False)

    def append(self, source: nn.Module | Any, step: int | None = None) -> None:
        """Add one step from a model's current .grad tensors or from a Trace's gradient records."""
        if isinstance(source, nn.Module):
            norms = self._model_norms(source)
        else:
            norms = module_norms(source.gradients)
        for name in norms:
            if name not in self.modules:
                self.modules.append(name)
                for row in self.norms:
                    row.append(float("nan"))
        self.norms.append([norms.get(m, float("nan")) for m in self.modules])
        self.steps.append(step if step is not None else (self.steps[-1] + 1 if self.steps else 0))
        if self.max_steps is not None and len(self.steps) > self.max_steps:
            del self.steps[0], self.norms[0]
        for fn in list(self._listeners):
            fn(self)

    @staticmethod
    def _model_norms(model: nn.Module) -> dict[str, float]:
        named = [(n, p.grad) for n, p in model.named_parameters() if p.grad is not None]
        if not named:
            return {}
        norms = torch._foreach_norm([g.detach() for _, g in named])
        host = torch.stack([n.float() for n in norms]).cpu().tolist()  # one sync
        acc: dict[str, float] = {}
        for (name, _), v in zip(named, host):
            acc[_owner(name)] = acc.get(_owner(name), 0.0) + v * v
        return {k: _finite_or_inf(math.sqrt(v)) for k, v in acc.items()}

    def on_append(self, fn: Callable[[GradientHistory], None]) -> Callable[[], None]:
        """Call fn(history) after every append; returns a function that unregisters it."""
        self._listeners.append(fn)
        return lambda: self._listeners.remove(fn) if fn in self._listeners else None

    def flags(self, step: int = -1) -> list[dict[str, Any]]:
        """Modules outside [vanishing, exploding] at one step (default: the latest), with values."""
        if not self.norms:
            return []
        row = self.norms[step]
        out = []
        for name, v in zip(self.modules, row):
            if math.isnan(v):  # no gradient reached this module at this step
                continue
            kind = "exploding" if v > self.exploding else "vanishing" if v < self.vanishing else None
            if kind:
                out.append({"module": name, "kind": kind, "norm": v, "step": self.steps[step]})
        return out

    def flagged(self) -> dict[str, list[int]]:
        """Module -> steps at which it was flagged (either kind), over the whole history."""
        out: dict[str, list[int]] = {}
        for i in range(len(self.steps)):
            for f in self.flags(i):
                out.setdefault(f["module"], []).append(f["step"])
        return out

    def to_dataframe(self) -> Any:
        """pandas DataFrame: one row per step, one column per module (gradient L2 norm)."""
        import pandas as pd

        return pd.DataFrame(self.norms, index=pd.Index(self.steps, name="step"), columns=list(self.modules))

    def __len__(self) -> int:
        return len(self.steps)

    def __repr__(self) -> str:
        return (f"GradientHistory({len(self.steps)} steps x {len(self.modules)} modules, "
                f"vanishing<{self.vanishing:g}, exploding>{self.exploding:g})")
