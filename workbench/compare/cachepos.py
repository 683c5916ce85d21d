"""The cached step rerun with its positions given at the model's entrance.

A model whose forward takes its positions explicitly (gpt-fast's `input_pos`, transformers' `cache_position`)
but derives them itself when they are not given can derive them wrong in a cached step: counting from 0 again
writes the new keys over the first slots of a preallocated cache, rotates them as the first positions and
slices the mask's first rows. Replaying one module cannot undo that (the cache it reads was already
overwritten), so this fix reruns the whole case with the positions passed in: the T new tokens of a call whose
attention mask covers N positions are at N-T..N-1 (without a mask, a call starts where the last one ended).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from ..lm.intercept import Client, ModuleCall, intercept
from .fixes import Fix

POSITION_ARGUMENTS = ("input_pos", "cache_position")


def position_argument(model: nn.Module) -> str | None:
    """The name of the forward's explicit cache-position argument, if it has one."""
    try:
        names = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return None
    return next((n for n in POSITION_ARGUMENTS if n in names), None)


class GivenPositions(Client):
    """An input editor of the root module: each call gets `name` = the positions of its new tokens."""

    modules = ("",)

    def __init__(self, name: str) -> None:
        self.name, self.seen = name, 0

    def module_input(self, call: ModuleCall) -> tuple[tuple, dict[str, Any]] | None:
        ids = call.args[0] if call.args else call.kwargs.get("input_ids")
        if not isinstance(ids, torch.Tensor) or call.kwargs.get(self.name) is not None:
            return None
        T = ids.shape[-1]
        mask = call.kwargs.get("attention_mask")
        end = mask.shape[-1] if isinstance(mask, torch.Tensor) else self.seen + T
        self.seen = end
        return call.args, {**call.kwargs, self.name: torch.arange(end - T, end, device=ids.device)}


def given_position_fixes(model: nn.Module) -> list[Fix]:
    """"<input_pos> continues from the cache", for a model whose forward takes its positions explicitly."""
    name = position_argument(model)
    if name is None:
        return []
    return [Fix(f"{name} continues from the cache",
                f"in the cached step the candidate's own `{name}` does not continue from the cache length: passed "
                f"explicitly (the new tokens at the positions after those cached), the model agrees",
                lambda: intercept(model, GivenPositions(name)), whole_model=True)]
