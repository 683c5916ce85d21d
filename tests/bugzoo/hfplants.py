"""The catalogue's bugs planted into HF's own implementations, for the tests of the doctor's power.

Each plant is a context manager that patches one model instance (a module's `forward` replaced on the
instance, an attribute swapped) and restores it on exit, so a test can show the clean model passes again.
Modules are found by their role in the block (`ModelAdapter.blocks()`, the attention child, the first norm),
not by family name.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from workbench.lm import ModelAdapter, is_norm

ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention")


def blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    found = ModelAdapter(model).blocks()
    assert found is not None
    return found[1]


def attention(block: nn.Module) -> tuple[str, nn.Module]:
    return next((n, m) for n, m in block.named_children() if n in ATTENTION_NAMES)


@contextlib.contextmanager
def _forwards(modules: list[nn.Module],
              wrap: Callable[[nn.Module, Callable[..., Any]], Callable[..., Any]]) -> Iterator[None]:
    try:
        for m in modules:
            m.forward = wrap(m, m.forward)
        yield
    finally:
        for m in modules:
            m.__dict__.pop("forward", None)


def _attentions(model: nn.Module, layers: list[int] | None = None) -> list[nn.Module]:
    return [attention(b)[1] for i, (_, b) in enumerate(blocks(model)) if layers is None or i in layers]


def _hidden(args: tuple, kwargs: dict) -> torch.Tensor:
    return kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]


def shifted_mask(model: nn.Module) -> contextlib.AbstractContextManager:
    """Every attention gets a causal mask shifted by one: query p also sees key p + 1."""
    def wrap(_m: nn.Module, forward: Callable[..., Any]) -> Callable[..., Any]:
        def patched(*args: Any, **kwargs: Any) -> Any:
            h = _hidden(args, kwargs)
            T = h.shape[1]
            allowed = torch.ones(T, T, dtype=torch.bool, device=h.device).tril(1)  # BUG: diagonal +1
            kwargs["attention_mask"] = torch.zeros(1, 1, T, T, dtype=h.dtype, device=h.device).masked_fill(
                ~allowed, torch.finfo(h.dtype).min)
            return forward(*args, **kwargs)
        return patched
    return _forwards(_attentions(model), wrap)


def padding_ignored(model: nn.Module) -> contextlib.AbstractContextManager:
    """Every attention drops the mask it is given and attends causally over pads too."""
    def wrap(_m: nn.Module, forward: Callable[..., Any]) -> Callable[..., Any]:
        def patched(*args: Any, **kwargs: Any) -> Any:
            kwargs["attention_mask"] = None  # BUG: the padding mask is thrown away
            return forward(*args, **kwargs)
        return patched
    return _forwards(_attentions(model), wrap)


def positions_restart(model: nn.Module) -> contextlib.AbstractContextManager:
    """The decoder stack counts positions from 0 in every call when none are given, cache or not."""
    stack = next(m for m in model.children() if any(b is m or b in set(m.modules()) for _, b in blocks(model)[:1]))

    def wrap(_m: nn.Module, forward: Callable[..., Any]) -> Callable[..., Any]:
        def patched(*args: Any, **kwargs: Any) -> Any:
            if kwargs.get("position_ids") is None:
                ids = kwargs.get("input_ids", args[0] if args else None)
                T = ids.shape[1]
                kwargs["position_ids"] = torch.arange(T, device=ids.device)[None]  # BUG: ignores the cache length
            return forward(*args, **kwargs)
        return patched
    return _forwards([stack], wrap)


@contextlib.contextmanager
def missing_scale(model: nn.Module, layer: int = 1) -> Iterator[None]:
    """One attention layer loses its 1/sqrt(head_dim): its `scaling` becomes 1."""
    attn = _attentions(model, [layer])[0]
    saved = attn.scaling
    attn.scaling = 1.0  # BUG: q.k is no longer divided by sqrt(head_dim)
    try:
        yield
    finally:
        attn.scaling = saved


def eval_dropout(model: nn.Module, layer: int = 1) -> contextlib.AbstractContextManager:
    """One attention layer applies F.dropout with its default training=True, so eval mode is random."""
    def wrap(_m: nn.Module, forward: Callable[..., Any]) -> Callable[..., Any]:
        def patched(*args: Any, **kwargs: Any) -> Any:
            out = forward(*args, **kwargs)
            return (F.dropout(out[0], p=0.1), *out[1:])  # BUG: F.dropout's training defaults to True
        return patched
    return _forwards(_attentions(model, [layer]), wrap)


@contextlib.contextmanager
def copied_head(model: nn.Module, step: float = 0.0) -> Iterator[None]:
    """The head, tied by the config, becomes a copy of the embedding (moved by `step`, as one optimizer step
    would move it)."""
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    saved = head.weight
    head.weight = nn.Parameter(emb.weight.detach().clone() + step)  # BUG: a copy, not the shared Parameter
    try:
        yield
    finally:
        head.weight = saved


def nan_layer(model: nn.Module, layer: int = 1) -> contextlib.AbstractContextManager:
    """One block's MLP takes the log of its signed output: NaN from finite inputs."""
    mlp = blocks(model)[layer][1].mlp

    def wrap(_m: nn.Module, forward: Callable[..., Any]) -> Callable[..., Any]:
        def patched(*args: Any, **kwargs: Any) -> Any:
            out = forward(*args, **kwargs)
            return torch.log(out) if isinstance(out, torch.Tensor) else (torch.log(out[0]), *out[1:])  # BUG
        return patched
    return _forwards([mlp], wrap)


@contextlib.contextmanager
def mixed_norm(model: nn.Module, layer: int = 1) -> Iterator[None]:
    """One block becomes post-norm: its first norm no longer reads the block input but normalises its output."""
    block = blocks(model)[layer][1]
    name, norm = next((n, m) for n, m in block.named_children() if is_norm(m))
    forward = block.forward

    def patched(*args: Any, **kwargs: Any) -> Any:
        out = forward(*args, **kwargs)
        return norm(out) if isinstance(out, torch.Tensor) else (norm(out[0]), *out[1:])  # BUG: norm after the sum

    setattr(block, name, nn.Identity())
    block.add_module("norm_after", norm)  # still the block's own module, now applied to its output
    block.forward = patched
    try:
        yield
    finally:
        del block.forward
        delattr(block, "norm_after")
        setattr(block, name, norm)
