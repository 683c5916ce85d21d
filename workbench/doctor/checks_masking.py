"""Checks that compare logits computed two ways: causal leakage, padding, batch invariance, determinism.

Every probe that is not about batching runs one sequence at a time (B = 1), so a batch-dependent
model is flagged by `batch_invariance` alone and not by every other check.
"""

from __future__ import annotations

from typing import Any

import torch

from .probes import attribution_sites, first_divergence
from .registry import Context, Result, check, max_delta, na
from .report import Within, format_value


@check(
    "causal_leak",
    order=20,
    pitfall="The causal mask lets a position see later tokens (mask shifted by one, wrong triangle, "
    "missing mask), so training looks great and generation is garbage.",
    fix="Mask scores with a lower-triangular mask: key position <= query position "
    "(torch.ones(T, T).tril()), or SDPA with is_causal=True.",
)
def causal_leak(ctx: Context) -> Result:
    ctx.require_deterministic()
    a = ctx.adapter
    T = 8
    ids = ctx.ids(1, T, salt=1)
    base = a.logits(ids)  # (1, T, V)
    tol = a.tolerance(base)
    worst, worst_pos, worst_cut, worst_ids = -1.0, -1, -1, ids
    for cut in (1, T // 2):  # positions 0..cut are kept, every later token is replaced
        other = ids.clone()
        replacement = ctx.ids(1, T - cut - 1, salt=10 + cut)
        other[:, cut + 1 :] = torch.where(replacement == ids[:, cut + 1 :], replacement + 1, replacement) % a.vocab_size
        delta, pos = max_delta(base[:, : cut + 1], a.logits(other)[:, : cut + 1])
        if not delta <= worst:  # NaN counts as the worst
            worst, worst_pos, worst_cut, worst_ids = delta, pos, cut, other
    delta = Within(worst, tol)
    evidence = {"max_abs_delta_earlier_logits": delta, "tolerance": tol, "seq_len": T}
    if not worst <= tol:
        evidence.update(at_position=worst_pos, future_changed_from=worst_cut + 1)
        keep = slice(0, worst_cut + 1)
        where = _first_module(ctx, lambda: a.logits(ids), lambda: a.logits(worst_ids),
                              lambda t: t[:, keep], lambda t: t[:, keep])
        evidence.update(where)
        return Result("fail", f"changing tokens from position {worst_cut + 1} on moved the logits at earlier "
                      f"position {worst_pos} by {worst:.3g} (tolerance {tol:.1e}): the future leaks"
                      + (f", first in {where['first_module']}." if where else "."), evidence)
    return Result("pass", f"earlier logits unchanged when future tokens change (max |delta| {format_value(delta)}).",
                  evidence)


def _first_module(ctx: Context, run_a, run_b, pick_a, pick_b) -> dict[str, Any]:  # noqa: ANN001
    """{"first_module": the block or block part whose output first differs between two forwards, ...}, or {}."""
    found = first_divergence(ctx.model, attribution_sites(ctx.model, (ctx.adapter.blocks() or ("", []))[1]),
                             run_a, run_b, pick_a, pick_b)
    return {"first_module": found[0] or "(root)", "first_module_delta": found[1]} if found else {}


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids (B, T) counted over real tokens, as HF generate derives them from a padding mask."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


@check(
    "padding_mask",
    order=30,
    pitfall="The attention_mask is ignored or applied to the wrong axis, or positions are not shifted "
    "for left padding, so padded batches give different answers than the same text unpadded.",
    fix="Combine the key-padding mask with the causal mask (mask[:, None, None, :] on keys) and derive "
    "position ids from the mask (cumsum(mask) - 1) when padding on the left.",
)
def padding_mask(ctx: Context) -> Result:
    ctx.require_deterministic()
    a = ctx.adapter
    if not a.supports_mask:
        return na("forward takes no attention_mask, so padding cannot be expressed.")
    n, pads = 5, 3
    ctx.need(n + pads)
    ids = ctx.ids(1, n, salt=2)
    ref = a.logits(ids)  # (1, n, V) unpadded reference
    pad = torch.full((1, pads), a.pad_id, dtype=ids.dtype, device=ids.device)
    ones, zeros = torch.ones_like(ids), torch.zeros_like(pad)
    deltas, runs = {}, {}
    for side, seq, mask, keep in (
        ("left", torch.cat((pad, ids), 1), torch.cat((zeros, ones), 1), slice(pads, None)),
        ("right", torch.cat((ids, pad), 1), torch.cat((ones, zeros), 1), slice(0, n)),
    ):
        positions = _positions(mask) if a.supports_positions else None
        out = a.logits(seq, mask, positions)[:, keep]  # (1, n, V) real tokens only
        deltas[side] = max_delta(ref, out)
        runs[side] = (lambda s=seq, m=mask, p=positions: a.logits(s, m, p)), keep
    tol = a.tolerance(ref)
    evidence: dict[str, object] = {}
    for side, (d, at) in deltas.items():
        evidence[f"{side}_pad_max_abs_delta"] = Within(d, tol)
        if not d <= tol:  # where the largest difference sits means something only when it is not noise
            evidence[f"{side}_at_position"] = at
    evidence.update(pad_tokens=pads, tolerance=tol, explicit_position_ids=a.supports_positions)
    bad = [side for side, (d, _) in deltas.items() if not d <= tol]
    if bad:
        side = bad[0]
        run, keep = runs[side]
        where = _first_module(ctx, lambda: a.logits(ids), run, lambda t: t, lambda t: t[:, keep])
        evidence.update(where)
        return Result("fail", f"{side}-padded input differs from the unpadded sequence by {deltas[side][0]:.3g} "
                      f"at token {deltas[side][1]} (tolerance {tol:.1e})"
                      + (f", first in {where['first_module']}." if where else "."), evidence)
    return Result("pass", "left- and right-padded inputs equal the unpadded sequence on every real token.", evidence)


@check(
    "batch_invariance",
    order=160,
    pitfall="Statistics or attention cross the batch dimension (norm over the wrong axes, a reshape that "
    "merges B and T), so a row's output depends on the other rows.",
    fix="Reduce norms over the channel dim only (dim=-1) and keep B separate in every view/reshape.",
)
def batch_invariance(ctx: Context) -> Result:
    ctx.require_deterministic()
    a = ctx.adapter
    B, T = 3, 6
    ids = ctx.ids(B, T, salt=3)
    batched = a.logits(ids)  # (B, T, V)
    singles = torch.cat([a.logits(ids[i : i + 1]) for i in range(B)])  # (B, T, V)
    diff = (batched.float() - singles.float()).abs().amax(dim=(1, 2))  # (B,)
    row = int(diff.nan_to_num(float("inf")).argmax())
    worst = float(diff[row])
    tol = a.tolerance(singles)
    delta = Within(worst, tol)
    evidence = {"max_abs_delta": delta, "batch": B, "seq_len": T, "tolerance": tol}
    if not worst <= tol:
        evidence["row"] = row
        return Result("fail", f"row {row} of a batch of {B} differs from the same row run alone by {worst:.3g} "
                      f"(tolerance {tol:.1e}).", evidence)
    return Result("pass", f"a batch of {B} equals its rows run one by one (max |delta| {format_value(delta)}).",
                  evidence)


@check(
    "determinism",
    order=110,
    pitfall="Dropout (or other randomness) stays active in eval mode, e.g. F.dropout(x, p) without "
    "training=self.training, so the same input gives different outputs.",
    fix="Use nn.Dropout modules or pass training=self.training to F.dropout; keep sampling out of forward.",
)
def determinism(ctx: Context) -> Result:
    a = ctx.adapter
    ids = ctx.ids(1, 8, salt=4)
    devices = [a.device.index or 0] if a.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # the user's RNG state is left as it was
        torch.manual_seed(ctx.seed)
        first = a.logits(ids)
        torch.manual_seed(ctx.seed)
        same_seed = max_delta(first, a.logits(ids))[0]
        torch.manual_seed(ctx.seed + 1)
        new_seed = max_delta(first, a.logits(ids))[0]
    still_training = [n or "(root)" for n, m in ctx.model.named_modules() if m.training]
    tol = a.tolerance(first) if a.device.type == "cuda" else 0.0
    evidence: dict[str, Any] = {"delta_same_seed": same_seed, "delta_new_seed": new_seed,
                "modules_in_train_mode": len(still_training)}
    if still_training:
        evidence["first_in_train_mode"] = still_training[0]
    if not new_seed <= tol:
        def seeded(seed: int) -> Any:
            def run() -> Any:
                with torch.random.fork_rng(devices=devices):
                    torch.manual_seed(seed)
                    return a.logits(ids)
            return run

        where = _first_module(ctx, seeded(ctx.seed), seeded(ctx.seed + 1), lambda t: t, lambda t: t)
        evidence.update(where)
        return Result("fail", f"in eval mode the output depends on the random seed (max |delta| {new_seed:.3g}): "
                      "dropout or sampling is active" + (f", first in {where['first_module']}." if where else "."),
                      evidence)
    if not same_seed <= tol:
        return Result("fail", f"two identical eval forwards differ by {same_seed:.3g}.", evidence)
    if still_training:
        return Result("warn", f"{len(still_training)} modules stay in train mode after .eval() "
                      f"(first: {still_training[0]}), though the output did not change.", evidence)
    return Result("pass", "identical outputs on repeated eval forwards, with any seed.", evidence)

