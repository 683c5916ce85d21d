"""Numerical checks: score overflow in half precision, NaN/Inf origin, gradient health, init scale."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..capture import trace
from .attention_scores import STRESS, attention_calls
from .registry import Context, Result, check, na
from .scale import declared_ratio

FP16_MAX = float(torch.finfo(torch.float16).max)


@check(
    "score_overflow",
    order=70,
    pitfall="Attention scores are not scaled by 1/sqrt(head_dim) (or are scaled after an fp16 matmul), so "
    "with large activations in fp16/bf16 they overflow and softmax returns NaN.",
    fix="Scale q (or the scores) by 1/sqrt(head_dim) before the matmul, or use SDPA; compute softmax in float32.",
)
def score_overflow(ctx: Context) -> Result:
    a = ctx.adapter
    ids = ctx.ids(1, 8, salt=11)
    baseline, plain = attention_calls(a, ids)
    if not bool(torch.isfinite(plain).all()):
        return na("the logits are non-finite even without stress; see the `nonfinite` check.")
    if not baseline:
        return na("no attention softmax or SDPA call was seen in the forward pass.")
    measured = {n: v for n, v in baseline.items() if v["scale_ratio"] is not None}
    unscaled = max(measured, key=lambda n: measured[n]["scale_ratio"]) if measured else None
    names = dict(ctx.model.named_modules())
    targets = {id(names[n]) for n in baseline if n in names}
    half = torch.float16 if a.dtype == torch.float32 else a.dtype
    try:
        stressed, logits = attention_calls(a, ids, targets, half)
    except RuntimeError as err:  # an op without a half-precision kernel on this device
        return na(f"the model cannot run under {half} autocast here: {err}"[:200])
    worst = max(stressed, key=lambda n: (stressed[n]["nonfinite"], stressed[n]["max_score"]))
    max_score = stressed[worst]["max_score"]
    bad = sum(v["nonfinite"] for v in stressed.values())
    evidence = {"dtype": str(half).removeprefix("torch."), "input_scale": STRESS, "attention_modules": len(stressed),
                "max_abs_score": max_score, "worst_module": worst or "(root)", "nonfinite_scores_or_probs": bad,
                "fp16_headroom": FP16_MAX / max_score if max_score else float("inf"),
                "nonfinite_logits": int((~torch.isfinite(logits)).sum())}
    scale_note = ""
    if unscaled is None:  # the scale cannot be told apart from what q and k went through: judge overflow only
        blind = next(iter(baseline))
        evidence.update(scale_judged=False, unjudged_module=blind or "(root)")
        scale_note = (f"; the score scale is not judged: the projections that produce {blind or '(root)'}'s q and k "
                      "(or a single factor over q.k) could not be identified")
    else:
        m = measured[unscaled]
        ratio, where = m["scale_ratio"], unscaled or "(root)"
        evidence.update(score_scale_vs_inv_sqrt_d=ratio, least_scaled_module=where, head_dim=m["head_dim"],
                        call_scale=m["call_scale"], q_prescale=m["q_prescale"], k_prescale=m["k_prescale"],
                        scale_judged=True)
        declared = declared_ratio(ctx.adapter.config, m["head_dim"])
        if declared is not None and abs(ratio / declared[0] - 1) < 0.05:  # a deliberate scale: overflow decides
            evidence["declared_by"] = declared[1]
            scale_note = f"; scores are {ratio:.3g}x q.k/sqrt(head_dim), as the config declares ({declared[1]})"
        elif ratio > 2.0:
            return Result("fail", f"{where} feeds softmax scores {ratio:.3g}x larger than q.k/sqrt(head_dim) of its "
                          f"q and k projections: the 1/sqrt(d) scale is missing, so fp16 overflows {ratio:.3g}x "
                          f"sooner (stressed max |score| {max_score:.3g}).", evidence)
    if bad or evidence["nonfinite_logits"]:
        return Result("fail", f"with attention inputs x{STRESS:g} under {evidence['dtype']}, {worst or '(root)'} "
                      f"produced {bad} non-finite scores/probabilities (max finite |score| {max_score:.3g}).",
                      evidence)
    return Result("pass", f"attention stays finite under {evidence['dtype']} with inputs x{STRESS:g} "
                  f"(max |score| {max_score:.3g}, headroom {evidence['fp16_headroom']:.3g}x){scale_note}.", evidence)


@check(
    "nonfinite",
    order=80,
    pitfall="A layer produces NaN/Inf (log of 0, division by a zero norm, -inf masks on a full row, overflow), "
    "and everything after it is NaN too.",
    fix="Look at the named module and its input statistics: add eps to divisions and norms, clamp before "
    "log/exp, and never mask every key of a query row.",
)
def nonfinite(ctx: Context) -> Result:
    ids = ctx.ids(1, 8, salt=12)
    with torch.no_grad(), trace(ctx.model, shapes=False, timing=False, stats=True) as tr:
        logits = ctx.adapter.logits(ids, allow_nonfinite=True)
    first = tr.first_nonfinite()
    bad_logits = int((~torch.isfinite(logits)).sum())
    evidence: dict[str, Any] = {"modules_recorded": len(tr.records), "nonfinite_logits": bad_logits}
    if first is None and not bad_logits:
        return Result("pass", f"all {len(tr.records)} module outputs are finite.", evidence)
    if first is None:
        return Result("fail", f"{bad_logits} logits are non-finite, though no module output was.", evidence)
    st, ist = first.out_stats, first.in_stats
    assert st is not None  # first_nonfinite() picks a record whose output stats are non-finite
    evidence.update(first_module=first.display_name, module_type=first.type, nan=st.nan, inf=st.inf,
                    numel=st.numel, input_finite=ist is not None and not ist.nonfinite)
    if ist is not None:
        evidence["input_absmax"] = ist.absmax
    origin = "from finite inputs" if evidence["input_finite"] else "(its input was already non-finite)"
    return Result("fail", f"{first.display_name} ({first.type}) is the first module to output NaN/Inf "
                  f"({st.nan} NaN, {st.inf} Inf of {st.numel}) {origin}.", evidence)


def _group(name: str, blocks: list[str]) -> str:
    for b in blocks:
        if name == b or name.startswith(b + "."):
            return b
    return name


@check(
    "gradients",
    order=90,
    pitfall="Gradients vanish or explode across layers (a detached residual, missing residual connection, "
    "exploding init), or parameters receive no gradient at all.",
    fix="Keep the residual path differentiable (x = x + f(x), no .detach()/.data), use pre-norm, and scale "
    "the init of residual-output projections by 1/sqrt(2 * n_layers).",
)
def gradients(ctx: Context) -> Result:
    a = ctx.adapter
    params = [(n, p) for n, p in ctx.model.named_parameters() if p.requires_grad]
    if not params:
        return na("no parameter requires grad.")
    ids = ctx.ids(1, 12, salt=13)
    saved = [(p, p.grad) for _, p in params]
    try:
        for _, p in params:
            p.grad = None
        with torch.enable_grad(), trace(ctx.model, shapes=False, timing=False, stats=False, gradients=True) as tr:
            logits = a.logits(ids)  # (1, T, V)
            loss = F.cross_entropy(logits[0, :-1].float(), ids[0, 1:])
            loss.backward()
    finally:
        for p, g in saved:
            p.grad = g
    blocks = a.blocks()
    names = [n for n, _ in blocks[1]] if blocks else []
    norms: dict[str, float] = {}
    missing: list[str] = []
    bad = [r.name for r in tr.gradients if r.nonfinite]
    for r in tr.gradients:
        group = _group(r.module, names)
        if r.grad_norm is None:
            missing.append(r.name)
        else:
            norms[group] = math.sqrt(norms.get(group, 0.0) + r.grad_norm**2)
    block_norms = {n: norms.get(n, 0.0) for n in names}
    starved = [n for n in names if n not in norms]
    evidence: dict[str, Any] = {"loss": float(loss), "params_without_grad": len(missing),
                                "nonfinite_grad_params": len(bad)}
    if block_norms:
        lo, hi = min(block_norms, key=block_norms.__getitem__), max(block_norms, key=block_norms.__getitem__)
        evidence.update(min_block_grad=block_norms[lo], min_block=lo, max_block_grad=block_norms[hi], max_block=hi)
    if bad:
        return Result("fail", f"{len(bad)} parameters have NaN/Inf gradients (first: {bad[0]}).", evidence)
    if starved:
        return Result("fail", f"no gradient reaches {', '.join(starved[:4])}: the graph is cut before "
                      "these layers (detach/.data/no_grad in forward).", evidence)
    if block_norms:
        ratio = block_norms[hi] / max(block_norms[lo], 1e-30)
        evidence["max_over_min"] = ratio
        vanishing = [n for n, v in block_norms.items() if v < block_norms[hi] * 1e-4 or v < 1e-7]
        if vanishing:
            return Result("fail", f"vanishing gradients in {', '.join(vanishing[:4])} "
                          f"({block_norms[lo]:.2e} vs {block_norms[hi]:.2e} in {hi}).", evidence)
        if block_norms[hi] > 1e3:
            return Result("fail", f"exploding gradients: {hi} has gradient norm {block_norms[hi]:.3g} "
                          f"after one backward at loss {float(loss):.3g}.", evidence)
    if missing:
        return Result("warn", f"{len(missing)} parameters received no gradient (first: {missing[0]}); they "
                      "are unused by this forward.", evidence)
    return Result("pass", "every layer receives a finite gradient of comparable size"
                  + (f" ({block_norms[lo]:.2e} to {block_norms[hi]:.2e})." if block_norms else "."), evidence)


@check(
    "init_scale",
    order=100,
    pitfall="Weights initialised far from std ~ 1/sqrt(fan_in) (e.g. N(0, 1) for a Linear), so activations "
    "grow or shrink by that factor at every layer.",
    fix="Initialise Linear weights with std ~ 0.02 or 1/sqrt(fan_in) (and residual outputs smaller); "
    "embeddings may be larger.",
)
def init_scale(ctx: Context) -> Result:
    embed_ptrs = {m.weight.data_ptr() for m in ctx.model.modules() if isinstance(m, nn.Embedding)}
    gains: dict[str, float] = {}
    for mod_name, m in ctx.model.named_modules():
        for p_name, p in m.named_parameters(recurse=False):
            if p.dim() != 2 or p.data_ptr() in embed_ptrs or p.numel() < 16:
                continue
            # nn.Linear stores (out, in); transposed layers such as HF's Conv1D store (in, out) and say so in `nf`
            fan_in = p.shape[0] if hasattr(m, "nf") and m.nf == p.shape[1] else p.shape[1]
            gains[f"{mod_name}.{p_name}" if mod_name else p_name] = float(p.detach().float().std()) * math.sqrt(fan_in)
    if not gains:
        return na("no 2-D weight matrices besides embeddings.")
    values = sorted(gains.values())
    top = max(gains, key=gains.__getitem__)
    evidence = {"matrices": len(gains), "median_std_x_sqrt_fan_in": values[len(values) // 2],
                "max_std_x_sqrt_fan_in": gains[top], "max_param": top}
    source = _checkpoint_source(ctx.model)
    if source:
        evidence["loaded_from"] = source
        return na(f"the weights were loaded from a checkpoint ({source}), not initialised; trained weights "
                  f"drift from the init scale (max std x sqrt(fan_in) {gains[top]:.3g}).", **evidence)
    if gains[top] > 4.0:
        return Result("fail", f"{top} has std x sqrt(fan_in) = {gains[top]:.3g}: each such layer multiplies "
                      "activation scale by about that much.", evidence)
    if gains[top] > 2.0:
        return Result("warn", f"{top} has std x sqrt(fan_in) = {gains[top]:.3g} (> 2).", evidence)
    return Result("pass", f"weight std x sqrt(fan_in) at most {gains[top]:.3g} (median "
                  f"{evidence['median_std_x_sqrt_fan_in']:.3g}).", evidence)


def _checkpoint_source(model: nn.Module) -> str:
    """Where the weights were loaded from, when the model says so (a workbench load report, HF name_or_path)."""
    report = getattr(model, "load_report", None)
    if report is not None:
        return str(getattr(report, "source", "") or "a load report")
    name = getattr(getattr(model, "config", None), "_name_or_path", None) or getattr(model, "name_or_path", "")
    return str(name or "")
