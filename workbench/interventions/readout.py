"""How a causal LM turns its residual stream into logits: final norm, head, and what the family does after the
head. The logit lens decodes every layer's residual through this same readout.

`Readout.find` takes the head from `ModelAdapter.output_head()` and the norm from `ModelAdapter.final_norm()` (or
the module names the user gives), and `Readout.fitted` learns the step after the head by comparing, in one
forward, head(norm(last block's output)) with the logits the model returned: nothing (most families), Gemma 2's
`final_logit_softcapping` (softcap * tanh(z / softcap)), Cohere's `logit_scale` or Granite's `1 / logits_scaling`
(scale * z), read from the config and confirmed on the values, else a scale fitted by least squares and confirmed
the same way. A readout that does not reproduce the model's own logits is refused, so a lens never decodes
through a readout the model does not use.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InterventionError
from ..lm.adapter import ModelAdapter, config_value

__all__ = ["LogitTransform", "Readout"]


@dataclass(frozen=True)
class LogitTransform:
    """What a family applies to the head's output z (..., V): softcap * tanh(z / softcap), then scale * z."""

    scale: float = 1.0  # Cohere's logit_scale; 1 / Granite's logits_scaling
    softcap: float | None = None  # Gemma 2's final_logit_softcapping

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        if self.softcap is not None:
            z = torch.tanh(z / self.softcap) * self.softcap
        return z * self.scale if self.scale != 1.0 else z

    def describe(self) -> str:
        parts = [f"softcap {self.softcap:g}"] if self.softcap is not None else []
        parts += [f"× {self.scale:.6g}"] if self.scale != 1.0 else []
        return ", ".join(parts) or "none"


@dataclass(frozen=True)
class Readout:
    """norm (None: the head reads the last block's output as is), head and transform, each as the model runs
    them: hidden (..., C) -> logits (..., V) in the model's dtype."""

    head_name: str
    head: nn.Module
    norm_name: str | None = None
    norm: nn.Module | None = None
    transform: LogitTransform = LogitTransform()

    @classmethod
    def find(cls, adapter: ModelAdapter, head: str | None = None, norm: str | None = None) -> Readout:
        """The model's head and final norm: the named modules when given, else the adapter's."""
        if head is not None:
            head_name, head_module = head, _named(adapter.model, head, "head")
        else:
            found = adapter.output_head()
            if found is None:
                raise InterventionError(
                    f"no output head found in {type(adapter.model).__name__} (no get_output_embeddings() and no "
                    "nn.Linear to the vocabulary); pass head='module name': the nn.Linear that makes the logits, "
                    "or the nn.Embedding whose weight a tied head multiplies by.")
            head_name, head_module = _name_of(adapter.model, found), found
        if norm is not None:
            return cls(head_name, head_module, norm, _named(adapter.model, norm, "norm"))
        final = adapter.final_norm()
        return cls(head_name, head_module, *(final or (None, None)))

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits (..., V) of a residual (..., C)."""
        x = self.norm(hidden) if self.norm is not None else hidden
        if isinstance(self.head, nn.Embedding):  # a tied head written as x @ wte.weight.t()
            z = F.linear(x, self.head.weight)
        else:
            z = self.head(x)
        return self.transform(z)

    def fitted(self, adapter: ModelAdapter, last: torch.Tensor, logits: torch.Tensor) -> tuple[Readout, float]:
        """This readout with the transform that makes head(norm(last)) equal the model's `logits` (B, T, V),
        from the last block's output `last` (B, T, C) of the same forward, and the largest gap left."""
        z = replace(self, transform=LogitTransform())(last).float()  # (B, T, V)
        y = logits.float()
        tol = adapter.tolerance(logits)
        gaps = [(float((t(z) - y).abs().max()) if z.shape == y.shape else float("inf"), i, t)
                for i, t in enumerate(_candidates(adapter, z, y))]
        gap, _, transform = min(gaps, key=lambda g: g[:2])  # the closest; on a tie, the config's own
        if gap > tol:
            raise InterventionError(self._mismatch(z, y, gap, tol))
        return replace(self, transform=transform), gap

    def _mismatch(self, z: torch.Tensor, y: torch.Tensor, gap: float, tol: float) -> str:
        shapes = f" (shapes {tuple(z.shape)} and {tuple(y.shape)})" if z.shape != y.shape else ""
        norm = f"norm {self.norm_name!r}" if self.norm_name else "no final norm"
        return (f"decoding the last block's output through {norm} and head {self.head_name!r} does not reproduce "
                f"the model's logits{shapes}: the largest gap is {gap:.3g} (tolerance {tol:.3g}), so a step "
                "between the last block and the logits is missing. Pass norm='module name' (the norm applied "
                "after the last block) and head='module name' to logit_lens; a model that transforms its logits "
                "in another way than a scale or Gemma 2's soft-capping cannot be lensed faithfully.")

    def describe(self) -> str:
        return f"{self.norm_name or 'no norm'} → {self.head_name}" + (
            f" → {self.transform.describe()}" if self.transform != LogitTransform() else "")


def _candidates(adapter: ModelAdapter, z: torch.Tensor, y: torch.Tensor) -> list[LogitTransform]:
    """Transforms to try, most likely first: the config's own, none, a least-squares scale. The config's come
    first because on small logits a soft-cap is close to nothing, yet only the soft-cap is what the model does."""
    out = []
    cap = config_value(adapter.config, "final_logit_softcapping")
    if isinstance(cap, (int, float)) and cap > 0:
        out.append(LogitTransform(softcap=float(cap)))
    scale = config_value(adapter.config, "logit_scale")
    if isinstance(scale, (int, float)) and scale > 0:
        out.append(LogitTransform(scale=float(scale)))
    divisor = config_value(adapter.config, "logits_scaling")
    if isinstance(divisor, (int, float)) and divisor > 0:
        out.append(LogitTransform(scale=1.0 / float(divisor)))
    out.append(LogitTransform())
    if z.shape == y.shape and float((z * z).sum()) > 0:
        out.append(LogitTransform(scale=float((z * y).sum() / (z * z).sum())))
    return out


def _named(model: nn.Module, name: str, what: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules or not name:
        near = difflib.get_close_matches(name, [n for n in modules if n], n=3)
        hint = f" Did you mean {', '.join(map(repr, near))}?" if near else " See model.named_modules()."
        raise InterventionError(f"{what}={name!r}: the model has no module of that name.{hint}")
    return modules[name]


def _name_of(model: nn.Module, module: nn.Module) -> str:
    return next((n for n, m in model.named_modules() if m is module), type(module).__name__)
