"""Gradient capture inside a trace, and `GradientHistory` across training steps.

Inside a trace, a post-accumulate-grad hook on every parameter measures its gradient when backward
writes it (so an `optimizer.zero_grad()` later in the block does not hide it), on the device, read
once at exit. Optimizer step hooks give the update/weight ratio ||w_after - w_before|| / ||w_before||.
FSDP2 (DTensor) parameters are measured on this rank's shard and reduced across the shard group at
exit (one all_reduce per statistic kind), so every rank reports whole-parameter values.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..distributed.shards import local_tensor, reduce_rows, shard_groups
from ..errors import CaptureError
from .records import ParamGradRecord


def unique_named_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) with tied parameters listed once, under their first name."""
    return list(model.named_parameters())  # named_parameters() already drops duplicates


def _owner(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ""


class GradientCapture:
    """Per-parameter gradient hooks plus optional optimizer step hooks for one trace."""

    def __init__(self, model: nn.Module, final_grads: bool = False) -> None:
        self.params = unique_named_parameters(model)
        self.final_grads = final_grads  # re-read .grad at exit: DDP all-reduces after the hooks fire
        self._handles: list[Any] = []
        self._grad: dict[int, torch.Tensor] = {}  # param id -> [norm^2, absmax, nan, inf, weight norm^2, 1]
        self._ratio: dict[int, torch.Tensor] = {}
        self._before: dict[int, torch.Tensor] = {}

    def attach(self) -> None:
        for _, p in self.params:
            if p.requires_grad:
                self._handles.append(p.register_post_accumulate_grad_hook(self._on_grad))

    def _on_grad(self, p: torch.Tensor) -> None:
        assert p.grad is not None  # a post-accumulate-grad hook runs once .grad is set
        g, w = local_tensor(p.grad).detach(), local_tensor(p).detach()  # this rank's shard under FSDP2
        absmax = g.abs().amax().float() if g.numel() else g.new_zeros((), dtype=torch.float32)
        self._grad[id(p)] = torch.stack([
            torch.linalg.vector_norm(g, dtype=torch.float32) ** 2, absmax,
            torch.isnan(g).sum().float(), torch.isinf(g).sum().float(),
            torch.linalg.vector_norm(w, dtype=torch.float32) ** 2, torch.ones_like(absmax),
        ])

    def watch_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Measure the update/weight ratio of each step `optimizer` takes while the trace is open.

        Costs one copy of the stepped parameters while the step runs."""
        ours = {id(p) for _, p in self.params}

        def before(opt: torch.optim.Optimizer, *_: Any) -> None:
            for group in opt.param_groups:
                for p in group["params"]:
                    if id(p) in ours and p.grad is not None:
                        self._before[id(p)] = local_tensor(p).detach().clone()

        def after(_opt: torch.optim.Optimizer, *_: Any) -> None:
            by_id = {id(q): q for _, q in self.params}
            for pid, w0 in self._before.items():
                diff = local_tensor(by_id[pid]).detach().float() - w0.float()
                # [||w1 - w0||^2, ||w0||^2] of this shard; reduced across shards and divided in finish()
                self._ratio[pid] = torch.stack([torch.linalg.vector_norm(diff) ** 2,
                                                torch.linalg.vector_norm(w0.float()) ** 2])
            self._before.clear()

        self._handles.append(optimizer.register_step_pre_hook(before))
        self._handles.append(optimizer.register_step_post_hook(after))

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._before.clear()

    def finish(self) -> list[ParamGradRecord]:
        """Records for every parameter (one host copy per device). Sharded parameters' statistics
        are reduced over their shard groups first (a collective: every rank must finish its trace)."""
        rows, ratios = self._reduced_rows()
        host, host_ratio = _to_host(rows), _to_host(ratios)
        out = []
        for name, p in self.params:
            vals = host[id(p)]
            got = vals[5] > 0  # some rank's shard received a gradient
            ratio = host_ratio.get(id(p))
            out.append(ParamGradRecord(
                name=name, module=_owner(name), shape=list(p.shape), numel=p.numel(),
                grad_norm=math.sqrt(vals[0]) if got else None, grad_absmax=vals[1] if got else None,
                grad_nan=int(vals[2]), grad_inf=int(vals[3]), weight_norm=math.sqrt(vals[4]),
                update_ratio=math.sqrt(ratio[0]) / max(math.sqrt(ratio[1]), 1e-30) if ratio else None,
            ))
        return out

    def _reduced_rows(self) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
        rows, ratios, groups = {}, {}, {}
        for _, p in self.params:
            if self.final_grads and p.grad is not None and id(p) in self._grad:
                self._on_grad(p)  # the averaged gradient, not this rank's local one
            w = local_tensor(p).detach()
            rows[id(p)] = self._grad.get(id(p), torch.zeros(6, device=w.device)).clone()
            if id(p) not in self._grad:  # no gradient: weight norm only
                rows[id(p)][4] = torch.linalg.vector_norm(w, dtype=torch.float32) ** 2
            groups[id(p)] = shard_groups(p)
            if id(p) in self._ratio:
                ratios[id(p)] = self._ratio[id(p)].clone()
        ids = list(rows)
        reduce_rows([rows[i] for i in ids], [groups[i] for i in ids], max_cols=(1,))
        if any(groups[i] for i in ratios):
            reduce_rows([ratios[i] for i in ratios], [groups[i] for i in ratios])
        return rows, ratios


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

    def __post_init__(self) -> None:
        ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
                 for v in (self.vanishing, self.exploding))
        if not ok or self.vanishing >= self.exploding:
            raise CaptureError(f"GradientHistory needs finite thresholds 0 < vanishing < exploding, got "
                               f"vanishing={self.vanishing!r}, exploding={self.exploding!r}.")
        if self.max_steps is not None and (isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int)
                                           or self.max_steps < 1):
            raise CaptureError(f"max_steps must be None or an integer >= 1, got {self.max_steps!r}.")

    def append(self, source: nn.Module | Any, step: int | None = None) -> None:
        """Add one step from a model's current .grad tensors or from a Trace's gradient records."""
        if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
            raise CaptureError(f"step must be an integer or None, got {step!r}.")
        if isinstance(source, nn.Module):
            norms = self._model_norms(source)
        else:
            records = getattr(source, "gradients", None)
            if not isinstance(records, list) or not all(isinstance(r, ParamGradRecord) for r in records):
                raise CaptureError(
                    f"GradientHistory.append takes a model (after loss.backward()) or a Trace taken with "
                    f"gradients=True, got {type(source).__name__}."
                )
            norms = module_norms(records)
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
