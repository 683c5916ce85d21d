"""Candidate fixes for the classic porting mistakes, each applied to the candidate only for one replay.

Three kinds, all undone on exit:
- weights: put the reference's values (or a permutation of the candidate's own) into some rows of a
  candidate parameter: transposed, permuted, offset, scaled or untied weights; interleaved RoPE (a model
  that rotates adjacent pairs computes what a half-split model computes on q/k rows permuted as llama.cpp
  does, so the permutation is the test for the convention);
- attributes: a norm's epsilon (the rotary frequencies, in every form a port keeps them: `rope`);
- functions: an editor client of the interception layer (`workbench.lm.intercept`) that rewrites the calls
  the module makes: GELU exact vs tanh, SiLU vs GELU, the attention scale, the causal or padding mask,
  softmax in float32 (a `softmax` call, SDPA, or a softmax written out as exp / sum).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from copy import deepcopy
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..families.registry import row_permutation
from ..lm.intercept import Client, FunctionCall, ModuleCall, intercept
from ..lm.sdpa_call import SdpaCall, sdpa_arguments

EPS_NAMES = ("eps", "variance_epsilon", "epsilon")


@dataclass(frozen=True)
class Fix:
    """One explanation to test: `apply()` is a context in which the candidate behaves as if it were fixed."""

    name: str  # short: "exact GELU -> tanh GELU"
    cause: str  # the sentence reported when this fix closes the gap
    apply: Callable[[], AbstractContextManager[Any]] = field(repr=False)
    whole_model: bool = False  # the fix acts outside the module (rotary frequencies): rerun the model
    compute: Callable[[], torch.Tensor | None] | None = field(default=None, repr=False)  # a replay of its own


# --- weights ------------------------------------------------------------------------------------------
@contextmanager
def patched_rows(params: dict[str, nn.Parameter], updates: list[tuple[str, tuple[int, int], torch.Tensor]]
                 ) -> Iterator[None]:
    """Rows [a, b) of each named parameter replaced by a value in Linear layout (rows, cols)."""
    saved = {name: params[name].detach().clone() for name, _, _ in updates}
    try:
        with torch.no_grad():
            for name, (a, b), value in updates:
                p = params[name]
                flat = p.view(p.shape[0], -1) if p.dim() > 1 else p.view(-1, 1)
                flat[a:b].copy_(value.reshape(b - a, -1).to(p.dtype))
        yield
    finally:
        with torch.no_grad():
            for name, value in saved.items():
                params[name].copy_(value)


def layout(value: torch.Tensor, conv1d: bool) -> torch.Tensor:
    """A Linear-layout value back in the parameter's own layout (Conv1D keeps (in, out))."""
    return value.t() if conv1d else value


@contextmanager
def patched_attr(module: nn.Module, name: str, value: Any) -> Iterator[None]:
    old = getattr(module, name)
    try:
        setattr(module, name, value)
        yield
    finally:
        setattr(module, name, old)


def norm_eps(module: nn.Module) -> tuple[str, float] | None:
    """(attribute, value) of a norm's epsilon."""
    for name in EPS_NAMES:
        value = getattr(module, name, None)
        if isinstance(value, float):
            return name, value
    return None


# --- functions ----------------------------------------------------------------------------------------
Rule = Callable[[FunctionCall], Any]  # a rewritten call: usually call.proceed(*other_args, **other_kwargs)


class Rewrite(Client):
    """An editor of torch function calls: each call of a function named in `rules` (`func.__name__`) gives
    what its rule returns. Rules run with interception off, so the calls a rule makes stay as they are."""

    def __init__(self, rules: dict[str, Rule]) -> None:
        self.rules = rules
        self.functions = tuple(rules)

    def function(self, call: FunctionCall) -> Any:
        return self.rules[call.name](call)


class Rewriting:
    """A Fix's `apply`: the calls made while it is open (the model's, or a replay of one of its modules)
    rewritten by `rules`, through the interception layer."""

    def __init__(self, model: nn.Module, rules: dict[str, Rule]) -> None:
        self.model, self.rules = model, rules

    def __call__(self) -> AbstractContextManager[Any]:
        return intercept(self.model, Rewrite(self.rules))


class GeluAs:
    """A rule: GELU (or SiLU) computed as GELU with `approximate` ("none": erf, "tanh")."""

    def __init__(self, approximate: str) -> None:
        self.approximate = approximate

    def __call__(self, call: FunctionCall) -> Any:
        return F.gelu(call.args[0], approximate=self.approximate)


def gelu_as_silu(call: FunctionCall) -> Any:
    return F.silu(call.args[0])


class SdpaRule:
    """A rule: an SDPA call made with its arguments (by name, `sdpa_arguments`) changed by `change`."""

    def __init__(self, change: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        self.change = change

    def __call__(self, call: FunctionCall) -> Any:
        return call.proceed(**self.change(sdpa_arguments(call.args, call.kwargs)))


class ScaledBy:
    """SDPA arguments with the attention scale times D ** factor_of_d (-0.5: a missing 1/sqrt(D); +0.5: one
    applied twice)."""

    def __init__(self, factor_of_d: float) -> None:
        self.factor_of_d = factor_of_d

    def __call__(self, kw: dict[str, Any]) -> dict[str, Any]:
        D = kw["query"].shape[-1]
        scale = kw.get("scale") or D ** -0.5
        return {**kw, "scale": scale * D ** self.factor_of_d}


def _allowed(kw: dict[str, Any]) -> torch.Tensor:
    """The call's mask as (..., T, S) bool, True = may attend (see `SdpaCall.allowed`)."""
    return SdpaCall.from_call((), kw).allowed()


def causal_mask(kw: dict[str, Any]) -> dict[str, Any]:
    """No query sees a later position: the mask intersected with the causal one."""
    T, S = kw["query"].shape[-2], kw["key"].shape[-2]
    causal = torch.ones(T, S, dtype=torch.bool, device=kw["query"].device).tril(S - T)
    return {**kw, "attn_mask": _allowed(kw) & causal, "is_causal": False}


def diagonal_mask(kw: dict[str, Any]) -> dict[str, Any]:
    """Each query sees its own position: the mask with the diagonal allowed."""
    T, S = kw["query"].shape[-2], kw["key"].shape[-2]
    own = torch.zeros(T, S, dtype=torch.bool, device=kw["query"].device)
    own[torch.arange(T), torch.arange(S - T, S)] = True
    return {**kw, "attn_mask": _allowed(kw) | own, "is_causal": False}


class PaddingMask:
    """SDPA arguments in which no query sees a padding key: keys (B, S) 1 = token."""

    def __init__(self, keys: torch.Tensor) -> None:
        self.keys = keys

    def __call__(self, kw: dict[str, Any]) -> dict[str, Any]:
        B, S = self.keys.shape
        if kw["key"].shape[-2] != S or kw["query"].shape[0] != B:
            return kw
        allowed = _allowed(kw) & self.keys.bool().to(kw["query"].device)[:, None, None, :]  # (B, 1, T, S)
        # a row with no key left (a padding query) attends to itself instead of producing NaN
        return {**kw, "attn_mask": allowed | ~allowed.any(-1, keepdim=True), "is_causal": False}


def float32_sdpa(kw: dict[str, Any]) -> dict[str, Any]:
    return {**kw, **{k: kw[k].float() for k in ("query", "key", "value")}}


def float32_softmax(call: FunctionCall) -> Any:
    x = call.args[0]
    rest = {k: v for k, v in call.kwargs.items() if k != "dtype"}
    return call.func(x.float(), *call.args[1:], **rest).to(x.dtype)


def float32_exp(call: FunctionCall) -> Any:
    """A softmax written out (exp, sum, divide): its exp computed in float32 and kept there until the weights meet
    the values (`lower_precision_matmul`), as a float32 softmax cast back before `@ v` does."""
    x = call.args[0]
    low = isinstance(x, torch.Tensor) and x.dtype in (torch.float16, torch.bfloat16)
    return call.func(x.float() if low else x, *call.args[1:], **call.kwargs)


def lower_precision_matmul(call: FunctionCall) -> Any:
    """a @ b with the wider of two floating operands cast to the other's dtype (attention weights back to v's)."""
    a, b = call.args[0], call.args[1]
    if (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.is_floating_point()
            and b.is_floating_point() and a.dtype != b.dtype):
        low = a.dtype if a.element_size() < b.element_size() else b.dtype
        a, b = a.to(low), b.to(low)
    return call.func(a, b, *call.args[2:], **call.kwargs)


class AfterSdpaCast:
    """A rule: an SDPA rule run, its output cast back to the query's dtype."""

    def __init__(self, rule: Rule) -> None:
        self.rule = rule

    def __call__(self, call: FunctionCall) -> Any:
        return self.rule(call).to(sdpa_arguments(call.args, call.kwargs)["query"].dtype)


# --- the catalogue ---------------------------------------------------------------------------------
def function_fixes(model: nn.Module, role: str, case_mask: torch.Tensor | None) -> list[Fix]:
    """Fixes that rewrite the calls made inside an attention or MLP module of `model`."""
    if role == "mlp":
        return [
            Fix("exact GELU -> tanh GELU", "the candidate's GELU is exact (erf) where the reference uses the tanh "
                "approximation", Rewriting(model, {"gelu": GeluAs("tanh")})),
            Fix("tanh GELU -> exact GELU", "the candidate's GELU is the tanh approximation where the reference "
                "uses the exact (erf) GELU", Rewriting(model, {"gelu": GeluAs("none")})),
            Fix("SiLU -> GELU (tanh)", "the candidate uses SiLU where the reference uses GELU (tanh)",
                Rewriting(model, {"silu": GeluAs("tanh")})),
            Fix("SiLU -> GELU", "the candidate uses SiLU where the reference uses exact GELU",
                Rewriting(model, {"silu": GeluAs("none")})),
            Fix("GELU -> SiLU", "the candidate uses GELU where the reference uses SiLU",
                Rewriting(model, {"gelu": gelu_as_silu})),
        ]
    if role != "attention":
        return []
    sdpa = "scaled_dot_product_attention"
    fixes = [
        Fix("scale x 1/sqrt(D)", "the attention scale 1/sqrt(head_dim) is missing in the candidate",
            Rewriting(model, {sdpa: SdpaRule(ScaledBy(-0.5))})),
        Fix("scale x sqrt(D)", "the candidate applies the attention scale 1/sqrt(head_dim) twice",
            Rewriting(model, {sdpa: SdpaRule(ScaledBy(0.5))})),
        Fix("mask: causal", "the candidate's mask is shifted by one: each query also sees the next position",
            Rewriting(model, {sdpa: SdpaRule(causal_mask)})),
        Fix("mask: diagonal", "the candidate's mask is shifted by one: each query is hidden from its own position",
            Rewriting(model, {sdpa: SdpaRule(diagonal_mask)})),
        Fix("softmax in float32", "the candidate computes the attention softmax in a lower precision than float32",
            Rewriting(model, {sdpa: AfterSdpaCast(SdpaRule(float32_sdpa)), "softmax": float32_softmax,
                              "exp": float32_exp, "matmul": lower_precision_matmul,
                              "__matmul__": lower_precision_matmul})),
    ]
    if case_mask is not None and not bool(case_mask.all()):
        fixes.append(Fix("mask: padding", "the candidate ignores the padding: queries attend to padded positions",
                         Rewriting(model, {sdpa: SdpaRule(PaddingMask(case_mask))})))
    return fixes


def rope_fixes(rows: list[tuple[str, tuple[int, int], int]], params: dict[str, nn.Parameter],
               conv: dict[str, bool]) -> list[Fix]:
    """Interleaved vs half-split RoPE, tested by permuting the candidate's own q/k rows (name, rows, heads)."""
    if not rows:
        return []
    pairs = row_permutation("rope")  # llama.cpp's: half-split rows to adjacent pairs, and back
    return [
        Fix("RoPE: half-split", "the candidate rotates adjacent pairs (interleaved RoPE, GPT-J / llama.cpp style) "
            "where the reference rotates the two halves of each head (its q/k weights are equal)",
            PermutedRows(rows, params, conv, pairs.apply)),
        Fix("RoPE: interleaved", "the candidate rotates the two halves of each head where the reference rotates "
            "adjacent pairs (its q/k weights are equal)",
            PermutedRows(rows, params, conv, pairs.undo)),
    ]


class PermutedRows:
    """A Fix's `apply`: the q/k rows (name, rows, heads) of the candidate's parameters permuted head by head by
    `permute` (rows, heads) -> rows, computed from their values when the fix is applied."""

    def __init__(self, rows: list[tuple[str, tuple[int, int], int]], params: dict[str, nn.Parameter],
                 conv: dict[str, bool], permute: Callable[[torch.Tensor, int], torch.Tensor]) -> None:
        self.rows, self.params, self.conv, self.permute = rows, params, conv, permute

    def __call__(self) -> AbstractContextManager[None]:
        updates = []
        for name, (a, b), heads in self.rows:
            p = self.params[name].detach().float()
            lin = p.t() if self.conv[name] else p.reshape(p.shape[0], -1)
            updates.append((name, (a, b), self.permute(lin[a:b], heads)))
        return patched_rows(self.params, updates)


def eps_fixes(cand: nn.Module, ref: nn.Module) -> list[Fix]:
    mine, theirs = norm_eps(cand), norm_eps(ref)
    if mine is None:
        return []
    attr, own = mine
    values = [theirs[1]] if theirs is not None else [1e-5, 1e-6, 1e-8]
    return [Fix(f"norm eps {own:g} -> {v:g}", f"the candidate's norm epsilon is {own:g}, the reference's {v:g}",
                partial(patched_attr, cand, attr, v)) for v in values if not math.isclose(v, own, rel_tol=1e-9)]


def norm_offset_fixes(norm: nn.Module, params: dict[str, nn.Parameter], prefix: str) -> list[Fix]:
    """A norm weight read as 1 + w (Gemma) or as w."""
    weight = getattr(norm, "weight", None)
    if not isinstance(weight, nn.Parameter) or weight.dim() != 1:
        return []
    name = f"{prefix}.weight" if prefix else "weight"
    if name not in params:
        return []
    w = params[name].detach().float().reshape(-1, 1)
    n = w.shape[0]
    return [
        Fix("norm weight 1 + w", "the candidate's norm scales by w where the reference scales by (1 + w) "
            "(Gemma's offset norm): the `1 +` is missing", lambda: patched_rows(params, [(name, (0, n), w + 1)])),
        Fix("norm weight w - 1", "the candidate's norm scales by (1 + w) where the reference's weights are "
            "stored as the full scale", lambda: patched_rows(params, [(name, (0, n), w - 1)])),
    ]


@contextmanager
def float32_module(module: nn.Module) -> Iterator[None]:
    """`module` computed by a float32 copy of itself, its output cast back to the input's dtype."""
    try:
        module.forward = Float32Forward(module)  # type: ignore[method-assign]
        yield
    finally:
        del module.forward


class Float32Forward:
    """A module's forward computed by a float32 copy of it, the output cast back to the first floating input's
    dtype."""

    def __init__(self, module: nn.Module) -> None:
        self.copy = deepcopy(module).float()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        dtype = next((a.dtype for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()), None)
        up = [a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
        out = self.copy(*up, **kwargs)
        return out.to(dtype) if isinstance(out, torch.Tensor) and dtype is not None else out


def float32_norm(module: nn.Module) -> Fix:
    return Fix("norm in float32", "the candidate computes the norm in a lower precision than float32",
               partial(float32_module, module))


class ScaledOutput(Client):
    """An editor of a module's output: times C ** power (C its last dimension)."""

    modules = ("",)  # the module the interception is opened on

    def __init__(self, power: float) -> None:
        self.power = power

    def module_output(self, call: ModuleCall) -> torch.Tensor | None:
        out = call.output
        return out * out.shape[-1] ** self.power if isinstance(out, torch.Tensor) else None


def scaled_output(module: nn.Module, power: float) -> AbstractContextManager[Any]:
    """`module`'s output times C ** power, inside the block."""
    return intercept(module, ScaledOutput(power))


def embedding_scale_fixes(embedding: nn.Module) -> list[Fix]:
    return [
        Fix("embedding x sqrt(C)", "the candidate does not multiply its token embeddings by sqrt(d_model), "
            "as the reference does (Gemma's normalizer)", lambda: scaled_output(embedding, 0.5), whole_model=True),
        Fix("embedding / sqrt(C)", "the candidate multiplies its token embeddings by sqrt(d_model); the "
            "reference does not", lambda: scaled_output(embedding, -0.5), whole_model=True),
    ]
