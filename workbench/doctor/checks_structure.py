"""Checks that watch the forward pass's structure: norm placement and host-device traffic."""

from __future__ import annotations

import itertools
from typing import Any

import torch

from ..lm import is_norm
from ..lm.intercept import ALL_FUNCTIONS, Client, FunctionCall, ModuleCall, intercept
from .registry import Context, Result, check, na


def _first_tensor(obj: Any) -> torch.Tensor | None:
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, (tuple, list)):
        for x in obj:
            t = _first_tensor(x)
            if t is not None:
                return t
    if isinstance(obj, dict):
        return _first_tensor(list(obj.values()))
    return None


def _same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    return a is not None and b is not None and (a is b or (a.shape == b.shape and bool(torch.equal(a, b))))


def _block_placement(
    block_in: torch.Tensor | None, block_out: torch.Tensor | None, norms: list[tuple[Any, Any]]
) -> str:
    """"pre" (a norm reads the block input; the output is a residual sum), "post" (the block output is a
    norm's output), "mixed" (both), "sublayer" (neither, and the output is the input plus the outputs of the
    block's norms: x + norm(f(x)) per sublayer, as OLMo 2 places them), or "none"."""
    reads_input = any(_same(block_in, x) for x, _ in norms)
    ends_in_norm = bool(norms) and _same(block_out, norms[-1][1])
    if reads_input and ends_in_norm:
        return "mixed"
    if reads_input or ends_in_norm:
        return "pre" if reads_input else "post"
    return "sublayer" if _residual_of_norms(block_in, block_out, [out for _, out in norms]) else "none"


def _residual_of_norms(block_in: torch.Tensor | None, block_out: torch.Tensor | None, outs: list[Any]) -> bool:
    """Whether block_out = block_in + the sum of some of the norm outputs shaped like it, to float32 rounding.
    Some, not all: a norm of the block's width may also sit inside a sublayer (OLMo 2's q norm)."""
    if block_in is None or block_out is None or block_in.shape != block_out.shape:
        return False
    branches = [o.double() for o in outs if isinstance(o, torch.Tensor) and o.shape == block_out.shape][:8]
    want = block_out.double() - block_in.double()
    tol = 1e-5 * (float(block_out.double().abs().max()) + 1e-12)
    for n in range(1, len(branches) + 1):
        for subset in itertools.combinations(branches, n):
            if float((sum(subset) - want).abs().max()) <= tol:
                return True
    return False


class Placement(Client):
    """An observer of each block's input and output and of the (input, output) of the norms inside it."""

    def __init__(self, blocks: list[tuple[str, Any]]) -> None:
        self.calls: dict[str, dict[str, Any]] = {name: {"norms": []} for name, _ in blocks}
        self.block_of = {n: name for name, block in blocks for n, m in block.named_modules(prefix=name)
                         if is_norm(m)}  # norm -> the block it sits in
        self.modules = (*self.calls, *self.block_of)

    def module_input(self, call: ModuleCall) -> None:
        if call.name in self.calls:
            self.calls[call.name]["in"] = _first_tensor((call.args, call.kwargs))

    def module_output(self, call: ModuleCall) -> None:
        if call.name in self.calls:
            self.calls[call.name]["out"] = _first_tensor(call.output)
        if call.name in self.block_of:
            self.calls[self.block_of[call.name]]["norms"].append((_first_tensor(call.args), _first_tensor(call.output)))


@check(
    "norm_placement",
    order=60,
    pitfall="Norms placed inconsistently: some blocks pre-norm (x + f(norm(x))), others post-norm "
    "(norm(x + f(x))), usually a copy-paste slip; post-norm also needs warmup to train deep stacks.",
    fix="Use one placement in every block; pre-norm (with a final norm before the head) is the stable default.",
)
def norm_placement(ctx: Context) -> Result:
    found = ctx.adapter.blocks()
    if found is None:
        return na("no list of blocks (an nn.ModuleList or nn.Sequential of modules with weights) found.")
    blocks = found[1]
    seen = Placement(blocks)
    with torch.no_grad(), intercept(ctx.model, seen):
        ctx.adapter.logits(ctx.ids(1, 6, salt=14), allow_nonfinite=True)
    calls = seen.calls
    kinds = {name: _block_placement(c.get("in"), c.get("out"), c["norms"]) for name, c in calls.items()}
    by_kind: dict[str, list[str]] = {}
    for name, kind in kinds.items():
        by_kind.setdefault(kind, []).append(name)
    evidence: dict[str, Any] = {f"{k}_blocks": len(v) for k, v in by_kind.items()}
    evidence["norm_modules_per_block"] = len(calls[blocks[0][0]]["norms"])
    if set(by_kind) == {"none"}:
        return na(f"no norm module inside the {len(blocks)} blocks of {found[0]} reads the block input or "
                  "produces its output.", **evidence)
    if len(by_kind) == 1:
        kind = next(iter(by_kind))
        what = ("a norm on each sublayer's output inside the residual (x + norm(f(x)))" if kind == "sublayer"
                else f"{kind}-norm")
        return Result("pass", f"{what} in all {len(blocks)} blocks of {found[0]}.", evidence)
    detail = "; ".join(f"{k}: {', '.join(v[:6])}" for k, v in sorted(by_kind.items()))
    for k, v in by_kind.items():
        evidence[f"{k}_layers"] = ",".join(n.rsplit(".", 1)[-1] for n in v)
    return Result("warn", f"mixed norm placement across blocks ({detail}).", evidence)


TRANSFERS = {torch.Tensor.cpu: ".cpu()", torch.Tensor.cuda: ".cuda()", torch.Tensor.numpy: ".numpy()"}
SYNCS = {torch.Tensor.item: ".item()", torch.Tensor.tolist: ".tolist()", torch.Tensor.__bool__: "bool(tensor)",
         torch.Tensor.__int__: "int(tensor)", torch.Tensor.__float__: "float(tensor)",
         torch.Tensor.__index__: "tensor as index", torch.Tensor.nonzero: "nonzero", torch.nonzero: "nonzero",
         torch.masked_select: "masked_select", torch.Tensor.masked_select: "masked_select",
         torch.unique: "unique", torch.Tensor.unique: "unique"}


def _classify(func: Any, args: tuple, kwargs: dict) -> tuple[str, str] | None:
    """("transfer" | "sync", label) for a host-device call, else None."""
    if func in TRANSFERS:
        return "transfer", TRANSFERS[func]
    if func in SYNCS:
        return "sync", SYNCS[func]
    if func is torch.Tensor.to and args and isinstance(args[0], torch.Tensor):
        device = torch._C._nn._parse_to(*args[1:], **kwargs)[0]
        if device is not None and device != args[0].device:
            return "transfer", f".to({device})"
    if func is torch.Tensor.__getitem__ and len(args) > 1:
        index = args[1] if isinstance(args[1], tuple) else (args[1],)
        if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in index):
            return "sync", "boolean-mask indexing"
    return None


class HostDevice(Client):
    """An observer of every torch call: the host-device ones, as (kind, label, module, inside a block)."""

    functions = ALL_FUNCTIONS

    def __init__(self, blocks: list[str]) -> None:
        self.prefixes = tuple(f"{b}." for b in blocks)
        self.events: list[tuple[str, str, str, bool]] = []

    def function(self, call: FunctionCall) -> Any:
        result = call.proceed()
        kind = _classify(call.func, call.args, call.kwargs)
        if kind is not None:
            module = call.module
            where = "(outside)" if module is None else module or "(root)"
            self.events.append((*kind, where, module is not None and f"{module}.".startswith(self.prefixes)))
        return result


@check(
    "host_device",
    order=170,
    pitfall="Device transfers (.cpu(), .to(device), .numpy()) and host syncs (.item(), .tolist(), bool(tensor), "
    "data-dependent shapes) inside forward stall the GPU, worst when repeated in every layer.",
    fix="Keep forward on one device: create tensors with device=x.device, keep values as tensors instead of "
    ".item(), and move input checks out of the per-layer path.",
)
def host_device(ctx: Context) -> Result:
    found = ctx.adapter.blocks()
    seen = HostDevice([name for name, _ in found[1]] if found else [])
    with torch.no_grad(), intercept(ctx.model, seen):
        ctx.adapter.logits(ctx.ids(1, 6, salt=15), allow_nonfinite=True)
    events = seen.events
    transfers = [e for e in events if e[0] == "transfer"]
    layer_syncs = [e for e in events if e[0] == "sync" and e[3]]
    other_syncs = [e for e in events if e[0] == "sync" and not e[3]]
    evidence: dict[str, Any] = {"transfers": len(transfers), "syncs_in_layers": len(layer_syncs),
                                "syncs_outside_layers": len(other_syncs)}

    def where(items: list[tuple[str, str, str, bool]]) -> str:
        counts: dict[tuple[str, str], int] = {}
        for _, label, module, _ in items:
            counts[(module, label)] = counts.get((module, label), 0) + 1
        return "; ".join(f"{n}x {label} in {module}" for (module, label), n in list(counts.items())[:4])

    if other_syncs:
        evidence["outside_layers"] = where(other_syncs)
    if transfers or layer_syncs:
        if transfers:
            evidence["first_transfer"] = where(transfers[:1])
        if layer_syncs:
            evidence["first_layer_sync"] = where(layer_syncs[:1])
        return Result("warn", f"inside one forward: {where(transfers + layer_syncs)}.", evidence)
    if other_syncs:
        return Result("pass", f"no transfers and no per-layer syncs; {len(other_syncs)} sync(s) outside the layers "
                      f"({where(other_syncs)}), e.g. input validation, once per forward.", evidence)
    return Result("pass", "no device transfers or host syncs in one forward.", evidence)
