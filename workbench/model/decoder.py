"""`FastDecoder`: feeds each new token through the fixed-shape decode step, or the plain forward.

It owns the routing: CUDA graphs on CUDA, the same step eagerly elsewhere, and the plain `model(...)`
forward whenever a hook or a trace listens (a captured graph would skip them). It keeps the cache's
Python bookkeeping (length, key mask) exactly as the plain path does.

Who captures the CUDA graphs is one switch, `carrier` (default `DEFAULT_CARRIER`), so a GPU
measurement can pick the default: benchmarks/gpu_check.sh's `compiled-decode` and `carrier-decode`
steps time the two on the same compiled step.
- "manual": `graphs.GraphedDecodeStep` captures the step (eager or compiled) and replays it;
- "compile": `torch.compile(mode="reduce-overhead")` compiles the step and captures graphs itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeGuard

import torch
from torch import nn

from ..errors import InputError
from .cache import KVCache
from .fast import CompiledStep, StaticSlots, decode_step, hook_tables, hooks_attached
from .graphs import GraphedDecodeStep
from .transformer import TransformerLM

CARRIERS = ("manual", "compile")  # who captures CUDA graphs of the decode step (see the module docstring)
DEFAULT_CARRIER = "manual"  # until a GPU measurement of both says otherwise


def supports_fast_decode(model: nn.Module) -> TypeGuard[TransformerLM]:
    """True for models `decode_step` understands (a workbench `TransformerLM`)."""
    return isinstance(model, TransformerLM)


class FastDecoder:
    """Feeds one token per row through `decode_step`, keeping `cache` consistent with the plain path.

    graphs: None = use CUDA graphs when the cache lives on CUDA; False = run the step eagerly (what
    the CPU tests exercise); True = require CUDA graphs. compiled: run the `torch.compile`d step
    (`CompiledStep`). carrier: who makes the CUDA graphs, one of `CARRIERS` (None: `DEFAULT_CARRIER`,
    read when the decoder is made). Falls back to the plain forward while hooks listen or the model is
    in training mode with dropout.
    """

    def __init__(self, model: nn.Module, cache: KVCache, *, graphs: bool | None = None,
                 compiled: bool = False, carrier: str | None = None) -> None:
        carrier = DEFAULT_CARRIER if carrier is None else carrier
        if carrier not in CARRIERS:
            raise InputError(f"carrier={carrier!r} is not one of {CARRIERS}.")
        if not supports_fast_decode(model):
            raise InputError(
                f"the fast decode step needs a workbench TransformerLM, got {type(model).__name__}; "
                "use the plain forward (fast=False) for other models."
            )
        StaticSlots(cache)  # validates the mode before any work
        on_cuda = cache.device.type == "cuda"
        if graphs and not on_cuda:
            raise InputError("CUDA graphs need the model and cache on a CUDA device; pass graphs=False or None.")
        self.model, self.cache = model, cache
        self.graphs = on_cuda if graphs is None else graphs
        self.carrier = carrier
        if carrier == "compile":  # torch.compile captures the graphs, so the step is always compiled
            self.step: Callable = CompiledStep(mode="reduce-overhead" if self.graphs else None)
        else:
            self.step = CompiledStep() if compiled else decode_step  # (model, token, slots) -> logits
        self._tables = hook_tables(model)  # submodules added later are not watched
        self._slots: StaticSlots | None = None
        self._graph: GraphedDecodeStep | None = None  # the graph for the current slots ("manual" carrier)
        self.captures = 0  # CUDA graphs captured so far (a new one per (batch, max_len) and reallocation)
        self.last_route = "plain"

    def route(self) -> str:
        """What the next call will run ("plain", "eager" or "graph"), given hooks, mode and grad mode."""
        if hooks_attached(self.model, self._tables) or (self.model.training and self.model.config.dropout > 0):
            return "plain"
        if self.graphs and not torch.is_grad_enabled():
            return "graph"
        return "eager"

    def __call__(self, token: torch.Tensor) -> torch.Tensor:
        """Logits (B, 1, V) for `token` (B, 1); the cache grows by one position."""
        route = self.route()
        self.last_route = route
        cache = self.cache
        if route == "plain":
            return self.model(token, cache=cache, validate=False)
        cache.check_room(1)
        if self._slots is None or not self._slots.matches(cache):
            self._slots, self._graph = StaticSlots(cache), None  # reallocated: new buffers, new graph
        if route == "graph" and self.carrier == "manual":
            logits = self._graphed().replay(token, cache.length)
        else:
            self._slots.write_pos.fill_(cache.length)
            logits = self.step(self.model, token, self._slots)
            if route == "graph":  # torch.compile's graphs reuse their output buffer at the next replay
                logits = logits.clone()
        cache.advance(1)
        return logits

    def _graphed(self) -> GraphedDecodeStep:
        assert self._slots is not None  # set by __call__ before any replay
        if self._graph is None or not self._graph.current():
            self._graph = GraphedDecodeStep(self.model, self._slots, start=self.cache.length, step=self.step)
            self.captures += 1
        return self._graph
