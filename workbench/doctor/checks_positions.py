"""Position and KV-cache checks: are positions applied, do they continue past a cache, does cached decoding
equal a full recompute.

`kv_cache` passes explicit position ids when the model accepts them, so a cache that stores keys
correctly but restarts positions at 0 fails `positions` (which lets the model count on its own) and
not `kv_cache`; a model without a `position_ids` argument fails both, since they cannot be told apart.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from .checks_masking import _first_module, _positions
from .probes import module_outputs
from .registry import Context, Result, check, max_delta, na
from .report import Within, format_value


def _arange(start: int, stop: int, device: torch.device) -> torch.Tensor:
    return torch.arange(start, stop, device=device)[None]  # (1, T)


@check(
    "positions",
    order=40,
    pitfall="Position information is not applied (embedding created but never added, RoPE skipped) or "
    "restarts at 0 after a cache, so the model sees a bag of tokens.",
    fix="Add the position embedding / rotate q and k for every call, with position ids that continue from "
    "the cache length (past_len + arange(T)).",
)
def positions(ctx: Context) -> Result:
    ctx.require_deterministic()
    return _PositionsProbe(ctx).run()


class _PositionsProbe:
    """The `positions` check on one prompt of T tokens: are positions applied at all, then (with a cache) do they
    continue past a prefill of P tokens. Each step of the first part returns how positions are applied, or the
    verdict that ends the check; `evidence` gathers what the steps measured."""

    T, P = 8, 5

    def __init__(self, ctx: Context) -> None:
        self.ctx, self.a = ctx, ctx.adapter
        self.ids = ctx.ids(1, self.T, salt=6)
        self.full = self.a.logits(self.ids)  # (1, T, V)
        self.tol = self.a.tolerance(self.full)
        self.evidence: dict[str, Any] = {}

    def run(self) -> Result:
        how = self._stretched() if self.a.supports_positions else self._reordered()
        if isinstance(how, Result):
            return how
        if self.a.cache_style is None:
            return Result("pass", f"positions are applied ({how}); no cache to test continuation with.", self.evidence)
        return self._continuation(how)

    # --- are positions applied ------------------------------------------------------------------
    def _stretched(self) -> str | Result:
        """Stretching the position ids (0, 2, 4, ...) changes every distance, so any applied position scheme,
        absolute or rotary, changes the logits after position 0."""
        a = self.a
        stretched = a.logits(self.ids, positions=2 * _arange(0, self.T, a.device))
        moved = max_delta(self.full[:, 1:], stretched[:, 1:])[0]
        self.evidence = {"stretched_position_ids_delta": moved, "tolerance": self.tol}
        return f"logits move by {moved:.3g}" if moved > self.tol else self._position_ids_ignored()

    def _position_ids_ignored(self) -> str | Result:
        """position_ids may be ignored by design (ALiBi and other relative schemes take positions from the mask):
        whether the first block sees token order at all is what decides."""
        probe = _first_block_reordering(self.a, self.ids)
        if probe is None:
            return na("position ids 0,2,4,... give the same logits as 0,1,2,..., and the model's blocks (an "
                      "nn.ModuleList or nn.Sequential) could not be found to test whether positions come from "
                      "elsewhere.")
        reordered, block_tol = probe
        self.evidence.update(position_ids_used=False, first_block_reordered_delta=Within(reordered, block_tol),
                             first_block_tolerance=block_tol)
        if not reordered > block_tol:
            return Result("fail", f"position ids 0,2,4,... give the same logits as 0,1,2,..., and the first "
                          f"block's output at the last token ignores the order of the tokens before it (max "
                          f"|delta| {format_value(Within(reordered, block_tol))}): positions are not applied.",
                          self.evidence)
        return (f"position_ids are ignored, but reversing the earlier tokens moves the first block's output at "
                f"the last token by {reordered:.3g}: a relative scheme such as ALiBi")

    def _reordered(self) -> str | Result:
        """Without a position_ids argument, the permutation probe decides for any scheme (absolute, rotary,
        ALiBi): does the first block's output at the last token depend on the order of the tokens before it?"""
        probe = _first_block_reordering(self.a, self.ids)
        if probe is None:
            return self._repeated_token()
        reordered, block_tol = probe
        self.evidence = {"first_block_reordered_delta": Within(reordered, block_tol),
                         "first_block_tolerance": block_tol, "tolerance": self.tol}
        if not reordered > block_tol:
            return Result("fail", f"the first block's output at the last token ignores the order of the tokens "
                          f"before it (reversing them moves it by {format_value(Within(reordered, block_tol))}): "
                          "positions are not applied.", self.evidence)
        return f"reversing the earlier tokens moves the first block's output at the last token by {reordered:.3g}"

    def _repeated_token(self) -> str | Result:
        """No blocks to probe: repeat one token. Models without positions compute the same thing at every
        position; so do rotary models (values carry no position), hence only a warning."""
        token = self.ctx.ids(1, 1, salt=5)
        const = self.a.logits(token.expand(1, self.T).contiguous())  # (1, T, V)
        moved = max_delta(const, const[:, :1].expand_as(const))[0]
        self.evidence = {"constant_input_spread": moved, "tolerance": self.tol}
        if not moved > self.tol:
            return Result("warn", f"one token repeated gives the same logits at every position (spread "
                          f"{moved:.1e}): positions are not applied, or are rotary; accept position_ids, or keep "
                          "the blocks in an nn.ModuleList or nn.Sequential, to test this fully.", self.evidence)
        return f"logits move by {moved:.3g}"

    # --- do they continue past the cache --------------------------------------------------------
    def _continuation(self, how: str) -> Result:
        worst, at = self._cached_decode_delta()
        evidence = self.evidence
        evidence["cached_decode_delta"] = Within(worst, self.tol)
        if worst <= self.tol:
            return Result("pass", f"positions are applied ({how}) and continue past the cache.", evidence)
        evidence["at_position"] = at
        if self.a.supports_positions and not _explicit_decode_ok(self.a, self.ids, self.P, self.full, self.tol):
            evidence["continuation_judged"] = False
            return Result("pass", f"positions are applied ({how}); continuation past the cache "
                          "is not judged because cached decoding is wrong even with explicit position ids (see "
                          "`kv_cache`).", evidence)
        where = _first_module(self.ctx, lambda: self.a.logits(self.ids), functools.partial(self._decode_to, at),
                              lambda t: t[:, at : at + 1], lambda t: t[:, -1:])  # position `at` of each
        evidence.update(where)
        return Result("fail", f"decoding with a cache, without explicit position ids, moves the logits at position "
                      f"{at} by {worst:.3g}: positions do not continue from the cache length"
                      + (f"; the first output to differ is {where['first_module']}'s." if where else "."), evidence)

    def _cached_decode_delta(self) -> tuple[float, int]:
        """The largest |delta| from the full recompute over cached steps after the prefill, positions left to the
        model, and the position where it is."""
        a, ids, T = self.a, self.ids, self.T
        _, state = a.cached(ids[:, : self.P], max_len=T)
        worst, at = -1.0, -1
        for t in range(self.P, T):
            step, state = a.cached(ids[:, t : t + 1], state, max_len=T)
            delta = max_delta(self.full[:, t : t + 1], step)[0]
            if not delta <= worst:
                worst, at = delta, t
        return worst, at

    def _decode_to(self, at: int) -> None:
        """The prefill, then cached steps up to `at`: the last call's outputs are what is compared."""
        a, ids, T = self.a, self.ids, self.T
        _, state = a.cached(ids[:, : self.P], max_len=T)
        for t in range(self.P, at + 1):
            _, state = a.cached(ids[:, t : t + 1], state, max_len=T)


def _first_block_reordering(a, ids: torch.Tensor) -> tuple[float, float] | None:  # noqa: ANN001
    """How far the first block's output at the last token moves when the tokens before it come in reverse
    order, with its tolerance; None when the blocks cannot be found.

    Without positions, the first block sees the earlier tokens as a set (attention sums over them), so only
    float noise moves it. Later blocks, and so the logits, would not do: under a causal mask each earlier
    token sees a different prefix, which gives even a model without positions a sense of order; shuffling the
    prompt moves the last token's logits of any model deeper than one block.
    """
    found = a.blocks()
    if found is None:
        return None
    first = found[1][0][0]
    reordered = torch.cat((ids[:, :-1].flip(1), ids[:, -1:]), dim=1)  # (1, T): earlier tokens reversed
    outputs = [out[:, -1] for x in (ids, reordered)  # (1, C) at the last token
               for _, out in module_outputs(a.model, [first], functools.partial(a.logits, x))]
    if len(outputs) != 2:
        return None
    return float((outputs[0] - outputs[1]).abs().max()), a.tolerance(outputs[0])


def _explicit_decode_ok(a, ids: torch.Tensor, P: int, full: torch.Tensor, tol: float) -> bool:  # noqa: ANN001
    """Cached decoding with explicit position ids matches the full recompute."""
    T = ids.shape[1]
    _, state = a.cached(ids[:, :P], positions=_arange(0, P, a.device), max_len=T)
    for t in range(P, T):
        step, state = a.cached(ids[:, t : t + 1], state, positions=_arange(t, t + 1, a.device), max_len=T)
        if not max_delta(full[:, t : t + 1], step)[0] <= tol:
            return False
    return True


@check(
    "kv_cache",
    order=50,
    pitfall="Incremental decoding with the KV cache differs from recomputing the whole sequence (keys "
    "appended to the wrong slot, cache not updated, padding forgotten for cached keys).",
    fix="Append new keys/values after the cached ones, attend over all of them, and keep the padding mask "
    "for cached positions.",
)
def kv_cache(ctx: Context) -> Result:
    ctx.require_deterministic()
    a = ctx.adapter
    if a.cache_style is None:
        return na("the model exposes no KV cache (no `past_key_values` or `cache` argument).")
    P, N, pads = 5, 4, 2
    ctx.need(pads + P + N)
    ids = ctx.ids(1, P + N, salt=7)
    full = a.logits(ids)  # (1, P+N, V)
    explicit = a.supports_positions
    pos = (lambda s, e: _arange(s, e, a.device)) if explicit else (lambda s, e: None)
    first, state = a.cached(ids[:, :P], positions=pos(0, P), max_len=P + N)
    worst, at = max_delta(full[:, :P], first)
    for t in range(P, P + N):
        step, state = a.cached(ids[:, t : t + 1], state, positions=pos(t, t + 1), max_len=P + N)
        delta = max_delta(full[:, t : t + 1], step)[0]
        if not delta <= worst:
            worst, at = delta, t
    tol = a.tolerance(full)
    delta = Within(worst, tol)
    evidence = {"max_abs_delta": delta, "prefill": P, "decode_steps": N, "tolerance": tol,
                "explicit_position_ids": explicit}
    if not worst <= tol:
        evidence["at_position"] = at
        return Result("fail", f"cached decoding differs from a full recompute by {worst:.3g} at position {at} "
                      f"(tolerance {tol:.1e}).", evidence)
    if a.supports_mask:
        seq = torch.cat((torch.full((1, pads), a.pad_id, dtype=ids.dtype, device=ids.device), ids), 1)
        mask = torch.cat((torch.zeros(1, pads, dtype=torch.long), torch.ones(1, P + N, dtype=torch.long)), 1)
        mask = mask.to(a.device)
        mpos = _positions(mask)
        ref = a.logits(seq, mask, mpos if explicit else None)[:, pads:]  # (1, P+N, V)
        end = pads + P
        out, state = a.cached(seq[:, :end], mask=mask[:, :end], positions=mpos[:, :end] if explicit else None,
                              max_len=pads + P + N)
        padded, _ = max_delta(ref[:, :P], out[:, pads:])
        for t in range(end, pads + P + N):
            step, state = a.cached(seq[:, t : t + 1], state, mask=mask[:, : t + 1],
                                   positions=mpos[:, t : t + 1] if explicit else None, max_len=pads + P + N)
            padded = max(padded, max_delta(ref[:, t - pads : t - pads + 1], step)[0], key=lambda v: (v != v, v))
        evidence["left_padded_max_abs_delta"] = Within(padded, tol)
        if not padded <= tol:
            return Result("fail", f"cached decoding of a left-padded sequence differs from the full recompute by "
                          f"{padded:.3g} (tolerance {tol:.1e}).", evidence)
    return Result("pass", f"prefill + {N} cached steps equal the full recompute (max |delta| "
                  f"{format_value(delta)}).", evidence)
