"""`show(model, tokenizer, text)`: trace one forward (and backward) and open every view in tabs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ipywidgets as W
import torch
import torch.nn.functional as F
from torch import nn

from ..capture.trace import Trace, trace
from ..errors import InputError, WorkbenchError
from ..generation.protocols import TokenizerLike
from ..interventions.lens import logit_lens
from ..model.placement import module_device
from ..runs.reader import RunFile
from .attention import AttentionView
from .base import View, check_arg, header, is_count, notice
from .gradients import GradientFlow
from .inspector import LayerInspector
from .lens import LogitLensView
from .memory import MemoryPanel
from .runs import RunView
from .stepper import GenerationStepper


class Dashboard(View):
    """Tabs: modules, attention, memory, gradients, logit lens, generation, and a training run when one is given.
    `.trace` is the trace behind them."""

    title = "workbench dashboard"

    def __init__(self, tr: Trace, tokens: list[str] | None, views: dict[str, View]) -> None:
        super().__init__()
        self.trace, self.tokens, self.views = tr, tokens, views
        self.tabs = W.Tab(children=list(views.values()), titles=list(views))
        n = len(tokens) if tokens else "?"
        self.children = [header(self.title, f"{n} tokens · {tr!r}"), self.tabs]

    def figures(self) -> list:
        return [f for v in self.views.values() for f in v.figures()]


def token_texts(tokenizer: TokenizerLike, ids: list[int]) -> list[str]:
    """One display string per id (the tokenizer's own token strings when it has them)."""
    if hasattr(tokenizer, "token_strings"):
        return list(tokenizer.token_strings(ids))
    return [tokenizer.decode([i]) for i in ids]


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """model(x) as logits (1, T, V), or an InputError saying why this model cannot be shown."""
    try:
        out = model(x)
    except WorkbenchError:
        raise
    except Exception as err:  # the model's own failure, named with the call that caused it
        raise InputError(f"show() calls model(ids) with ids of shape {tuple(x.shape)} and it raised "
                         f"{type(err).__name__}: {err}; show() needs a causal language model.") from err
    logits = out if isinstance(out, torch.Tensor) else getattr(out, "logits", None)
    if not (isinstance(logits, torch.Tensor) and logits.is_floating_point() and logits.dim() == 3
            and tuple(logits.shape[:2]) == tuple(x.shape)):
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(out).__name__
        raise InputError(f"show() needs a causal language model: model(ids (1, {x.shape[1]})) must return float "
                         f"logits (1, {x.shape[1]}, V) or an object with .logits, got {got}.")
    return logits


def lens_tab(model: nn.Module, tokenizer: TokenizerLike, x: torch.Tensor) -> View:
    """The logit lens of the shown ids (1, T), or a notice saying why this model has none (no head or final norm
    the lens can find)."""
    try:
        with torch.no_grad():
            lens = logit_lens(model, x, tokenizer=tokenizer)
    except WorkbenchError as err:
        return View([header(LogitLensView.title), notice(f"No logit lens for this model: {err}")])
    return LogitLensView(lens, model=model, tokenizer=tokenizer)


def show(model: nn.Module, tokenizer: TokenizerLike, text: str, *, backward: bool = False, samples: int = 512,
         generate: bool = True, run: str | Path | RunFile | None = None, **stepper_kwargs: Any) -> Dashboard:
    """Trace one forward of `text` (attention, memory, stats, samples) and show every view in tabs.

    backward=True also runs next-token cross-entropy backward inside the trace, so the memory tab
    shows gradients and saved activations and the gradient tab has data; the model's existing
    .grad tensors are restored afterwards. generate=False leaves out the generation tab. run: a training run's
    file (written by `workbench.RunRecorder`, possibly still growing) adds its live `RunView` as a tab.
    """
    check_arg("model", model, isinstance(model, nn.Module), "an nn.Module (a causal language model)")
    check_arg("tokenizer", tokenizer, callable(getattr(tokenizer, "encode", None)), "a tokenizer with encode")
    check_arg("text", text, isinstance(text, str), "a string")
    check_arg("samples", samples, is_count(samples, 0), "an integer >= 0")
    check_arg("run", run, run is None or isinstance(run, (str, Path, RunFile)), "a run file's path or a RunFile")
    ids = list(tokenizer.encode(text))
    if not ids:
        raise InputError("text encodes to zero tokens; pass non-empty text.")
    x = torch.tensor([ids], device=module_device(model))  # (1, T)
    old_grads = {p: p.grad for p in model.parameters()}
    try:
        with torch.set_grad_enabled(backward):
            with trace(model, attention=True, memory=True, samples=samples, gradients=backward) as tr:
                logits = _logits(model, x)  # (1, T, V)
                if backward:
                    if len(ids) < 2:
                        raise InputError("backward=True needs at least 2 tokens (next-token loss).")
                    F.cross_entropy(logits[0, :-1].float(), x[0, 1:]).backward()
    finally:
        for p, g in old_grads.items():
            p.grad = g
    tokens = token_texts(tokenizer, ids)
    views: dict[str, View] = {
        "Modules": LayerInspector(tr),
        "Attention": AttentionView(tr, tokens),
        "Memory": MemoryPanel(tr, model=model),
        "Gradients": GradientFlow(tr),
        "Logit lens": lens_tab(model, tokenizer, x),
    }
    if generate:
        views["Generate"] = GenerationStepper(model, tokenizer, text, **stepper_kwargs)
    if run is not None:
        views["Training run"] = RunView(run)
    return Dashboard(tr, tokens, views)
