"""Fixes for a divergence that shows only in the cached continuation.

The module at the divergence is replayed on the arguments it got in the cached step (the cache as it was
before the call). A cached step differs from an uncached forward over the whole sequence only in what it is
given: the cache, and the arguments that carry positions (rotary tables, position ids, cache positions),
which must continue from the cache length. The positions fix swaps each such argument for the one the
candidate itself passed to the same module, at the same positions, in an uncached forward of the same ids:
if that closes the gap, the cached step's positions are wrong. Masks (boolean, or additive with -inf) and the
cache are never swapped, so the fix cannot hide a mask or a cache mistake.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch

from .fixes import Fix
from .record import Call, main_input

Change = Callable[[list[Any], dict[str, Any]], tuple[list[Any], dict[str, Any]]]


def _is_mask(x: torch.Tensor) -> bool:
    if x.dtype == torch.bool:
        return True
    if not x.is_floating_point() or not x.numel():
        return False
    return bool((x <= torch.finfo(x.dtype).min / 2).any())


def continued(cached: Any, full: Any, new: int, total: int, start: int | None = None) -> Any:
    """`full` (an argument of the uncached call, over all `total` positions) cut to `new` positions from `start`
    (default: the last ones) along the one axis where `cached` (the same argument in the cached step) has `new`;
    tuples and lists part by part. None when the two do not line up that way, or the argument is a mask."""
    if isinstance(cached, (tuple, list)) and isinstance(full, (tuple, list)) and len(cached) == len(full):
        parts = [continued(c, f, new, total, start) for c, f in zip(cached, full)]
        if all(p is None for p in parts):
            return None
        return tuple(c if p is None else p for p, c in zip(parts, cached))
    if not isinstance(cached, torch.Tensor) or not isinstance(full, torch.Tensor):
        return None
    if cached.dtype != full.dtype or cached.dim() != full.dim() or _is_mask(cached) or _is_mask(full):
        return None
    axes = [d for d in range(cached.dim()) if cached.shape[d] == new and full.shape[d] == total]
    if len(axes) != 1 or any(cached.shape[d] != full.shape[d] for d in range(cached.dim()) if d != axes[0]):
        return None
    return full.narrow(axes[0], total - new if start is None else start, new)


def _same(a: Any, b: Any, exact: bool = True) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        if exact:
            return torch.equal(a, b)
        wide = (a, b) if a.is_complex() else (a.float(), b.float())  # a complex table stays complex
        return torch.allclose(wide[0], wide[1], rtol=1e-5, atol=1e-6)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y, exact) for x, y in zip(a, b))
    return a is b


def _arguments(call: Call) -> dict[int | str, Any]:
    where = main_input(call.args, call.kwargs)
    skip = where[0] if where is not None else None
    found: dict[int | str, Any] = {i: a for i, a in enumerate(call.args) if i != skip}
    found.update({k: v for k, v in call.kwargs.items() if k != skip})
    return found


def position_fixes(module_name: str, cached: Call, full: Call, new: int, total: int,
                   replay: Callable[[Change], torch.Tensor | None]) -> list[Fix]:
    """"positions continue from the cache", when some argument of the cached call differs from what the
    uncached call passed at the same positions. replay(change) replays the module with its arguments changed."""
    theirs = _arguments(full)
    swaps: dict[int | str, Any] = {}
    restart = True
    for key, value in _arguments(cached).items():
        if key not in theirs:
            continue
        right = continued(value, theirs[key], new, total)
        if right is None or _same(right, value):
            continue
        swaps[key] = right
        restart = restart and _same(value, continued(value, theirs[key], new, total, start=0), exact=False)
    if not swaps:
        return []

    def change(args: list[Any], kwargs: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
        for key, value in swaps.items():
            if isinstance(key, int):
                args[key] = value
            else:
                kwargs[key] = value
        return args, kwargs

    numbers = [str(k) for k in swaps if isinstance(k, int)]
    names = ", ".join(([f"argument{'s' if len(numbers) > 1 else ''} {', '.join(numbers)}"] if numbers else [])
                      + [f"`{k}`" for k in swaps if isinstance(k, str)])
    if restart:
        cause = (f"in the cached step the candidate's positions restart at 0 instead of continuing from the cache "
                 f"length: {names} of `{module_name}` for the {new} new tokens are those of positions 0-{new - 1}")
    else:
        cause = (f"in the cached step the candidate's positions do not continue from the cache length: {names} "
                 f"of `{module_name}` differ from those an uncached forward passes at the same positions")
    return [Fix("positions continue from the cache", cause, nullcontext, compute=lambda: replay(change))]
