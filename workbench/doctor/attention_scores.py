"""What each attention call's scores look like in one forward, per module: the largest finite |score|, how many
scores and probabilities are non-finite, and the score scale relative to q.k/sqrt(D) of the q and k
projections (see `scale`). The `score_overflow` check reads one plain forward, then one with the attention
inputs stressed under half precision.

Three sources are watched at once, as one observer client of the interception layer
(`workbench.lm.intercept`): the matmul calls (the operands of each module's last q @ k^T), the attention events
(softmax, SDPA) attributed to the running module, and the outputs of the modules with weights (the candidates
for the projections that made q and k). A stressed run adds an editor client that amplifies the inputs.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
from torch import nn

from ..lm import ModelAdapter
from ..lm.intercept import Client, FunctionCall, Interception, ModuleCall, intercept
from ..lm.observe import SdpaCall
from .scale import fit_scale, prescale

FP16_MIN = float(torch.finfo(torch.float16).min)
STRESS = 8.0  # attention inputs are multiplied by this: "large activations" (scores grow STRESS**2)
MATMULS = ("matmul", "__matmul__", "bmm", "baddbmm")  # torch's functions and Tensor's methods of these names


def attention_calls(adapter: ModelAdapter, ids: torch.Tensor, scale_inputs: set[int] | None = None,
                    dtype: torch.dtype | None = None) -> tuple[dict[str, dict[str, Any]], torch.Tensor]:
    """Run a forward, watching attention: per module -> {max_score, nonfinite, scale_ratio, ...}; also the logits.

    scale_ratio is None when it cannot be measured. scale_inputs: ids of modules whose first floating input is
    multiplied by STRESS. dtype: run under autocast to this dtype (the device's autocast), else in the model's.
    """
    watch = AttentionScores(adapter.model, scale_inputs)
    return watch.seen, watch.run(adapter, ids, dtype)


class AttentionScores(Client):
    """The attention calls of one forward; `seen` maps each attention module to what its scores showed."""

    functions = MATMULS

    def __init__(self, model: nn.Module, scale_inputs: set[int] | None = None) -> None:
        self.model, self.scale_inputs = model, scale_inputs
        self.seen: dict[str, dict[str, Any]] = {}
        self.products: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # module -> operands of its last q @ k^T
        # module with weights -> its output in this forward (projection candidates): leaves, and the modules
        # around them, whose output may be the one the attention receives (StableLM's per-head q/k norms)
        self.outputs: dict[str, torch.Tensor] = {}
        named = list(model.named_modules())
        weighted = (n for n, m in named if n and next(m.parameters(), None) is not None)
        self.modules = () if scale_inputs else tuple(weighted)
        self._stress = Stress(n for n, m in named if scale_inputs and id(m) in scale_inputs)
        self._scope: Interception | None = None

    def run(self, adapter: ModelAdapter, ids: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
        """The logits (B, T, V) of one forward, with every source watched; the hooks go when it returns."""
        cast = torch.autocast(adapter.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        try:
            with torch.no_grad(), cast, intercept(self.model, self._stress, self) as self._scope:
                return adapter.logits(ids, allow_nonfinite=True)
        finally:
            self._scope = None

    @property
    def _owner(self) -> str:
        current = self._scope.current if self._scope is not None else None
        return current if current is not None else "(outside)"

    # --- the three sources ----------------------------------------------------------------------
    def function(self, call: FunctionCall) -> Any:
        result = call.proceed()
        if isinstance(result, torch.Tensor) and result.dim() in (3, 4):
            kw = call.kwargs
            ops = [x for x in (*call.args, kw.get("batch1"), kw.get("batch2")) if isinstance(x, torch.Tensor)]
            if len(ops) >= 2:  # baddbmm(bias, q, k^T): the last two
                self.products[call.module if call.module is not None else "(outside)"] = (ops[-2], ops[-1])
        return result

    def on_softmax(self, scores: torch.Tensor, probs: torch.Tensor) -> None:
        owner, scores = self._owner, scores.detach().float()
        scale: dict[str, Any] = {"scale_ratio": None}
        operands = self.products.get(owner)
        if operands is not None and operands[0].numel() * scores.shape[-1] == scores.numel() * operands[0].shape[-1]:
            B, H, T, S = scores.shape
            q, k_t = operands
            q4 = q.reshape(B, H, T, -1)  # (B, H, T, D), also from bmm's (B*H, T, D)
            k4 = k_t.reshape(B, H, -1, S).transpose(-2, -1)  # (B, H, S, D)
            scale = self._measure(owner, q4, k4, fit_scale(scores, q4, k_t))
        self._note(owner, scores, probs, scale)

    on_folded_softmax = on_softmax  # (N, 1, T, T): q and k are (N, T, D), one head per row

    def on_sdpa(self, call: SdpaCall) -> None:
        q = call.query if call.query.dim() == 4 else call.query.unsqueeze(1)
        k = call.key if call.key.dim() == 4 else call.key.unsqueeze(1)
        owner = self._owner
        self._note(owner, call.scores(), call.output, self._measure(owner, q, k, call.effective_scale))

    def module_output(self, call: ModuleCall) -> None:
        out = call.output
        if isinstance(out, torch.Tensor) and out.is_floating_point():
            self.outputs[call.name] = out.detach()

    # --- what a call shows ----------------------------------------------------------------------
    def _sources(self, owner: str) -> list[torch.Tensor]:
        """Outputs of the modules inside `owner`, else inside its parent (projections may sit there)."""
        for scope in (owner, owner.rsplit(".", 1)[0] if "." in owner else None):
            if scope is not None:
                found = [t for n, t in self.outputs.items() if n.startswith(scope + ".")]
                if found:
                    return found
        return []

    def _measure(self, owner: str, q: torch.Tensor, k: torch.Tensor, post: float | None) -> dict[str, Any]:
        """Score scale relative to 1/sqrt(D) given the attention call's own factor `post`; q (B, H, T, D),
        k (B, K, S, D) as the call received them."""
        cands = self._sources(owner)
        cq, ck = prescale(q, cands), prescale(k, cands)
        ratio = None
        if post is not None and cq is not None and ck is not None:
            ratio = post * cq * ck * math.sqrt(q.shape[-1])
        return {"scale_ratio": ratio, "head_dim": q.shape[-1], "call_scale": post, "q_prescale": cq,
                "k_prescale": ck}

    def _note(self, module: str, scores: torch.Tensor, probs: torch.Tensor | None, scale: dict[str, Any]) -> None:
        entry = self.seen.setdefault(module, {"max_score": 0.0, "nonfinite": 0, "scale_ratio": None})
        if entry["scale_ratio"] is None:
            entry.update(scale)
        # not the mask values: -inf, a float32 or bfloat16 minimum (below -1e30), or float16's minimum exactly,
        # which GPT-Neo writes into scores that a float32 mask then turns into float32
        finite = scores[torch.isfinite(scores) & (scores > -1e30) & (scores != FP16_MIN)]
        if finite.numel():
            entry["max_score"] = max(entry["max_score"], float(finite.abs().max()))
        overflow = int((scores == float("inf")).sum())  # +inf scores: overflow (-inf is a mask)
        entry["nonfinite"] += overflow + (int((~torch.isfinite(probs)).sum()) if probs is not None else 0)


class Stress(Client):
    """An editor of the named modules' inputs: the first floating tensor among the positional, then the keyword
    arguments, x STRESS ("large activations")."""

    def __init__(self, names: Any) -> None:
        self.modules = tuple(names)

    def module_input(self, call: ModuleCall) -> tuple[tuple, dict[str, Any]] | None:
        arg_list, kwargs = list(call.args), dict(call.kwargs)
        container: Any  # the positional list, then the keyword dict
        for container, keys in ((arg_list, range(len(arg_list))), (kwargs, list(kwargs))):
            for k in keys:
                if isinstance(container[k], torch.Tensor) and container[k].is_floating_point():
                    container[k] = container[k] * STRESS
                    return tuple(arg_list), kwargs
        return None
