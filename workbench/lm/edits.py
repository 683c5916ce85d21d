"""Edits of a forward pass on any causal LM, as specs applied by one scoped context:

    with wb.edit(model, wb.Zero("blocks.3.mlp", positions=[5]), wb.ZeroHead(1, 2), wb.Knockout(0, keys=[0])):
        logits = model(ids)

Each spec is a frozen dataclass; `edit` turns them into clients of the interception layer
(`workbench.lm.intercept`) and opens them together, ahead of every other module hook, so a trace opened
around or inside the block records the edited forward. Everything is removed when the block exits, also on
an exception or KeyboardInterrupt.

- Module outputs (`Replace`, `Add`, `Scale`, `Zero`, `MeanAblate`, `Apply`): the module's output tensor
  (B, T, ...) , or the first tensor of a tuple, list, dict or HF `ModelOutput` it returns (a decoder layer's
  hidden state; the rest is kept).
- Heads (`ZeroHead`, `ReplaceHead`): head h of a layer is columns h*D:(h+1)*D of the input (B, T, H*D) of
  the attention's output projection (`workbench.lm.heads`), edited before the heads are mixed.
- Attention (`Knockout`): keys knocked out for chosen queries, in the probabilities (zeroed after the softmax,
  not renormalised) or the scores (-inf before it, renormalised), through `workbench.lm.observe`.

`positions` index the time axis T of each call the edit sees and `rows` its batch axis B (None: all;
negative indices count from the end). In cached decoding each step's call holds only the new token, so a
steering edit meant for every step leaves `positions` out. Edits compose in the order given, and nested
`edit` blocks apply outermost first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from ..errors import InterventionError
from .adapter import ModelAdapter
from .heads import AttentionLayer, attention_layers, layer_at
from .intercept import Client, Interception, ModuleCall, intercept
from .observe import AttentionEdit

__all__ = ["Add", "Apply", "Edit", "Knockout", "MeanAblate", "Replace", "ReplaceHead", "Scale", "Zero", "ZeroHead",
           "active_edits", "edit"]

Indices = int | Sequence[int] | None  # one index, several, or None for all


def _check_indices(value: Indices, what: str) -> None:
    items = [value] if isinstance(value, int) else value
    if value is None:
        return
    if isinstance(value, (str, bytes)) or not isinstance(items, Sequence) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in items):
        raise InterventionError(f"{what} must be an int, a list of ints or None (all), got {value!r}.")


def _check_module(module: object) -> None:
    if not isinstance(module, str):
        raise InterventionError(f"an edit names its module by its name in model.named_modules(), got {module!r}.")


# --- specs ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Edit:
    """A base for edit specs; `label` is how records and widgets name it."""

    @property
    def label(self) -> str:
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, torch.Tensor):
                value = f"tensor{tuple(value.shape)}"
            elif callable(value):
                value = getattr(value, "__name__", type(value).__name__)
            parts.append(f"{f.name}={value}")
        return f"{type(self).__name__}({', '.join(parts)})"

    def clients(self, plan: _Plan) -> list[Client]:
        raise NotImplementedError


@dataclass(frozen=True, eq=False)
class ModuleEdit(Edit):
    """An edit of the output tensor of the module named `module` (B, T, ...)."""

    module: str
    positions: Indices = field(default=None, kw_only=True)  # time indices T (None: all)
    rows: Indices = field(default=None, kw_only=True)  # batch rows B (None: all)

    def __post_init__(self) -> None:
        _check_module(self.module)
        _check_indices(self.positions, "positions")
        _check_indices(self.rows, "rows")

    def new_values(self, x: torch.Tensor) -> torch.Tensor:
        """The edited tensor, shaped as x, before positions and rows choose where it applies."""
        raise NotImplementedError

    def clients(self, plan: _Plan) -> list[Client]:
        return [_OutputEditor(self, self.new_values)]


@dataclass(frozen=True, eq=False)
class Replace(ModuleEdit):
    """The output replaced by `value`, broadcast to its shape (a clean run's activation, or one vector (C,))."""

    value: torch.Tensor

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.value, torch.Tensor):
            raise InterventionError(f"Replace needs a tensor value, got {type(self.value).__name__}.")

    def new_values(self, x: torch.Tensor) -> torch.Tensor:
        return _broadcast(self.value.to(device=x.device, dtype=x.dtype), x, self)


@dataclass(frozen=True, eq=False)
class Add(ModuleEdit):
    """`value` added to the output (a steering vector (C,), or a tensor broadcastable to it)."""

    value: torch.Tensor

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.value, torch.Tensor):
            raise InterventionError(f"Add needs a tensor value, got {type(self.value).__name__}.")

    def new_values(self, x: torch.Tensor) -> torch.Tensor:
        return x + _broadcast(self.value.to(device=x.device, dtype=x.dtype), x, self)


@dataclass(frozen=True, eq=False)
class Scale(ModuleEdit):
    """The output multiplied by `factor`."""

    factor: float

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.factor, bool) or not isinstance(self.factor, (int, float)):
            raise InterventionError(f"Scale needs a number factor, got {self.factor!r}.")

    def new_values(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


@dataclass(frozen=True, eq=False)
class Zero(ModuleEdit):
    """The output set to zero."""

    def new_values(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


@dataclass(frozen=True, eq=False)
class MeanAblate(ModuleEdit):
    """The output replaced by its mean over the rows and positions of a `reference` batch of token ids (B, T),
    computed through the same module when the edit opens (inside any edits already open)."""

    reference: torch.Tensor

    def __post_init__(self) -> None:
        super().__post_init__()
        ref = self.reference
        if not isinstance(ref, torch.Tensor) or ref.dim() != 2 or ref.numel() == 0 or ref.is_floating_point():
            got = tuple(ref.shape) if isinstance(ref, torch.Tensor) else type(ref).__name__
            raise InterventionError(f"MeanAblate needs a reference batch of token ids shaped (B, T), got {got}.")

    def clients(self, plan: _Plan) -> list[Client]:
        mean = plan.mean_output(self.module, self.reference)
        return [_OutputEditor(self, Replace(self.module, mean).new_values)]


@dataclass(frozen=True, eq=False)
class Apply(ModuleEdit):
    """The output replaced by `fn(output)`, a tensor of the same shape."""

    fn: Callable[[torch.Tensor], torch.Tensor]

    def __post_init__(self) -> None:
        super().__post_init__()
        if not callable(self.fn):
            raise InterventionError(f"Apply needs a function of the output tensor, got {self.fn!r}.")

    def new_values(self, x: torch.Tensor) -> torch.Tensor:
        new = self.fn(x)
        if not isinstance(new, torch.Tensor):
            raise InterventionError(f"the function of {self.label} returned {type(new).__name__}; return a tensor "
                                    f"shaped {tuple(x.shape)}.")
        return new


@dataclass(frozen=True, eq=False)
class HeadEdit(Edit):
    """An edit of head `head` of layer `layer`: its output (B, T, D), before the output projection."""

    layer: int
    head: int
    positions: Indices = field(default=None, kw_only=True)
    rows: Indices = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        for name in ("layer", "head"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise InterventionError(f"a head is named by (layer, head) ints; {name} was {value!r}.")
        _check_indices(self.positions, "positions")
        _check_indices(self.rows, "rows")

    def new_values(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def write(self, z: torch.Tensor, where: str) -> None:
        """Write the edited head into z (B, T, D), a view of the copy of the heads the projection will read."""
        z.copy_(_where(z, self.new_values(z), self, where))

    def clients(self, plan: _Plan) -> list[Client]:
        site = layer_at(plan.layers, self.layer)
        site.check_head(self.head)
        return [_HeadEditor(self, site)]


@dataclass(frozen=True, eq=False)
class ZeroHead(HeadEdit):
    """The head's output zeroed (its contribution to the residual is the projection's bias share only)."""

    def new_values(self, z: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(z)

    def write(self, z: torch.Tensor, where: str) -> None:
        if self.rows is None and self.positions is None:
            z.zero_()  # every row and position: no zeros to make and copy
        else:
            super().write(z, where)


@dataclass(frozen=True, eq=False)
class ReplaceHead(HeadEdit):
    """The head's output replaced by `value`, broadcast to (B, T, D) (a clean run's, or one vector (D,))."""

    value: torch.Tensor

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.value, torch.Tensor):
            raise InterventionError(f"ReplaceHead needs a tensor value, got {type(self.value).__name__}.")

    def new_values(self, z: torch.Tensor) -> torch.Tensor:
        return _broadcast(self.value.to(device=z.device, dtype=z.dtype), z, self)


@dataclass(frozen=True, eq=False)
class Knockout(Edit):
    """Keys `keys` knocked out for queries `queries` (None: all) in layer `layer`'s attention, for `heads`
    (None: all) and batch `rows` (None: all). on="probs" zeroes their probabilities after the softmax (the
    rest is not renormalised); on="scores" sets their scores to -inf before it (the rest is renormalised).
    Positions are those of the keys a call attends over; a query is the key position it sits at."""

    layer: int
    keys: Indices
    queries: Indices = field(default=None, kw_only=True)
    heads: Indices = field(default=None, kw_only=True)
    rows: Indices = field(default=None, kw_only=True)
    on: Literal["probs", "scores"] = field(default="probs", kw_only=True)

    def __post_init__(self) -> None:
        if not isinstance(self.layer, int) or isinstance(self.layer, bool):
            raise InterventionError(f"Knockout's layer must be an int, got {self.layer!r}.")
        if self.keys is None:
            raise InterventionError("Knockout needs the key positions to knock out (keys=[...]).")
        for name in ("keys", "queries", "heads", "rows"):
            _check_indices(getattr(self, name), name)
        if self.on not in ("probs", "scores"):
            raise InterventionError(f"Knockout's on= must be 'probs' or 'scores', got {self.on!r}.")

    def clients(self, plan: _Plan) -> list[Client]:
        site = layer_at(plan.layers, self.layer)
        for head in _as_list(self.heads):
            site.check_head(head)
        return [_Knockouts(self, site)]


# --- clients -------------------------------------------------------------------------------------------


class _OutputEditor(Client):
    """Edits the first tensor of one module's output with a spec's values, where its positions and rows say."""

    def __init__(self, spec: ModuleEdit, values: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.modules, self.spec, self.values = (spec.module,), spec, values

    def module_output(self, call: ModuleCall) -> Any:
        x = first_tensor(call.output)
        if x is None:
            raise InterventionError(
                f"{call.name} returned {type(call.output).__name__}, which holds no tensor for {self.spec.label} to "
                "edit; edit a submodule whose output is a tensor (see model.named_modules()).")
        new = self.values(x)
        if not isinstance(new, torch.Tensor) or new.shape != x.shape:
            got = tuple(new.shape) if isinstance(new, torch.Tensor) else type(new).__name__
            raise InterventionError(f"{self.spec.label} would change {call.name}'s output from {tuple(x.shape)} to "
                                    f"{got}; an edit keeps the shape: give a value broadcastable to it.")
        return with_first_tensor(call.output, _where(x, new, self.spec, call.name))


class _HeadEditor(Client):
    """Edits one head's columns of the output projection's input (B, T, H*D): in a copy of it (whatever else
    holds the input, a trace's record of the heads included, keeps what the attention computed), written in
    place through a view of the head's columns. The input is the projection's first positional argument, so
    the interception's process-wide pre-hook serves this client (`positional_inputs`)."""

    positional_inputs = True

    def __init__(self, spec: HeadEdit, site: AttentionLayer) -> None:
        self.modules, self.spec, self.site = (site.projection,), spec, site
        D = site.head_dim
        self.width, self.cols = site.n_heads * D, slice(spec.head * D, (spec.head + 1) * D)
        self.where = f"layer {site.layer}'s heads"

    def module_input(self, call: ModuleCall) -> tuple[tuple, dict[str, Any]] | None:
        x = call.args[0] if call.args else None
        if not isinstance(x, torch.Tensor) or x.shape[-1] != self.width:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else "no tensor"
            raise InterventionError(f"{call.name} was called with {got}, not the heads side by side (B, T, "
                                    f"{self.width}); {self.spec.label} cannot edit its head there.")
        out = x.clone()
        self.spec.write(out[..., self.cols], self.where)  # (B, T, D) this head's output, a view into the copy
        return (out, *call.args[1:]), call.kwargs


class _Knockouts(Client):
    """Knocks keys out of the attention calls made inside one layer's attention module."""

    def __init__(self, spec: Knockout, site: AttentionLayer) -> None:
        self.spec, self.site = spec, site
        self.scope: Interception | None = None  # set once the interception is open

    def edit_attention(self, shape: tuple[int, ...], device: torch.device) -> AttentionEdit | None:
        current = self.scope.current if self.scope is not None else None
        owner = self.site.attention
        if current is None or not (current == owner or current.startswith(owner + ".")):
            return None
        knocked = self.knocked(shape, device)
        if knocked is None:
            return None
        return AttentionEdit(scores=knocked) if self.spec.on == "scores" else AttentionEdit(probs=knocked)

    def knocked(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor | None:
        """(B or 1, H, T, S) bool, True where a query loses a key; None when no chosen query is in this call."""
        B, H, T, S = shape
        s = self.spec
        keys = _resolve(s.keys, S, "key position", s, "the keys")
        queries = _resolve(s.queries, S, "query position", s, "the keys")
        heads = _resolve(s.heads, H, "head", s, "the heads")
        rows = _resolve(s.rows, B, "batch row", s, "the batch")
        first = S - T  # the key position of this call's first query (cached decoding: the newest tokens)
        q = torch.arange(T) if queries is None else queries[queries >= first] - first
        if q.numel() == 0:
            return None
        k = torch.arange(S) if keys is None else keys
        h = torch.arange(H) if heads is None else heads
        r = torch.zeros(1, dtype=torch.long) if rows is None else rows
        knocked = torch.zeros(1 if rows is None else B, H, T, S, dtype=torch.bool)
        knocked[r[:, None, None, None], h[None, :, None, None], q[None, None, :, None], k[None, None, None, :]] = True
        return knocked.to(device)


# --- the context -----------------------------------------------------------------------------------------


class _Plan:
    """What specs need from the model to become clients: its attention layers (found once) and the mean
    output of a module over a reference batch."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._layers: list[AttentionLayer] | None = None

    @property
    def layers(self) -> list[AttentionLayer]:
        if self._layers is None:
            self._layers = attention_layers(self.model)
        return self._layers

    def mean_output(self, module: str, reference: torch.Tensor) -> torch.Tensor:
        """The module's output tensor averaged over the reference batch's rows and positions (C...)."""
        seen = _Outputs(module)
        adapter = ModelAdapter(self.model)
        with torch.no_grad(), intercept(self.model, seen):
            adapter.logits(reference.to(adapter.device), allow_nonfinite=True)
        if not seen.outputs:
            raise InterventionError(f"{module} did not run on the reference batch, so it has no mean to ablate with.")
        x = seen.outputs[0]
        if x.dim() < 2:
            raise InterventionError(f"{module}'s output {tuple(x.shape)} has no (B, T) axes to average over.")
        return x.float().mean(dim=(0, 1)).to(x.dtype)


class _Outputs(Client):
    """Keeps the first tensor of each output of one module."""

    def __init__(self, module: str) -> None:
        self.modules = (module,)
        self.outputs: list[torch.Tensor] = []

    def module_output(self, call: ModuleCall) -> None:
        x = first_tensor(call.output)
        if x is None:
            raise InterventionError(f"{call.name} returned {type(call.output).__name__}, which holds no tensor to "
                                    "average; mean-ablate a submodule whose output is a tensor.")
        self.outputs.append(x.detach())


_open = threading.local()  # (model, edits) of the `edit` blocks open on this thread, outermost first


def _opened() -> list[tuple[nn.Module, tuple[Edit, ...]]]:
    stack = getattr(_open, "stack", None)
    if stack is None:
        stack = _open.stack = []
    return stack


def active_edits(model: nn.Module) -> tuple[Edit, ...]:
    """The edits open on `model` on this thread, outermost block first (what a generation record names)."""
    return tuple(e for m, edits in _opened() if m is model for e in edits)


@contextlib.contextmanager
def edit(model: nn.Module, *edits: Edit) -> Iterator[tuple[Edit, ...]]:
    """Apply `edits` to every forward of `model` inside the block (see the module docstring); yields them.

    Names, layers and heads are checked before the block runs, positions and rows at each call. Raises
    InterventionError, naming the fix, for anything that cannot apply."""
    if not isinstance(model, nn.Module):
        raise InterventionError(f"edit() needs the model (an nn.Module) first, got {type(model).__name__}.")
    for e in edits:
        if not isinstance(e, Edit):
            raise InterventionError(f"edit() takes edit specs (Zero, Scale, ZeroHead, Knockout, ...), got "
                                    f"{type(e).__name__}.")
    plan = _Plan(model)
    clients = [c for e in edits for c in e.clients(plan)]
    stack = _opened()
    with intercept(model, *clients, first=True) as scope:
        for c in clients:
            if isinstance(c, _Knockouts):
                c.scope = scope
        stack.append((model, edits))
        try:
            yield edits
        finally:
            stack.pop()


# --- tensors -------------------------------------------------------------------------------------------


def first_tensor(output: Any) -> torch.Tensor | None:
    """The tensor an output edit applies to: the output itself, or the first tensor of a tuple, list, dict
    or HF `ModelOutput` (a decoder layer's hidden state), else None."""
    if isinstance(output, torch.Tensor):
        return output
    items = output.values() if isinstance(output, Mapping) else output if isinstance(output, (tuple, list)) else ()
    return next((x for x in items if isinstance(x, torch.Tensor)), None)


def with_first_tensor(output: Any, new: torch.Tensor) -> Any:
    """`output` with its first tensor replaced by `new`, the rest kept (the same container type)."""
    if isinstance(output, torch.Tensor):
        return new
    if isinstance(output, Mapping):
        key = next(k for k, v in output.items() if isinstance(v, torch.Tensor))
        if dataclasses.is_dataclass(output):  # HF ModelOutput
            return dataclasses.replace(output, **{key: new})  # type: ignore[type-var]  # a dataclass instance
        return {**output, key: new}
    items = list(output)
    items[next(i for i, x in enumerate(items) if isinstance(x, torch.Tensor))] = new
    if hasattr(output, "_fields"):  # a namedtuple
        return type(output)(*items)
    return type(output)(items)


def _broadcast(value: torch.Tensor, x: torch.Tensor, spec: Edit) -> torch.Tensor:
    try:
        return torch.broadcast_to(value, x.shape)
    except RuntimeError:
        raise InterventionError(f"{spec.label} has a value shaped {tuple(value.shape)}, which cannot stand for a "
                                f"tensor shaped {tuple(x.shape)} without changing its shape; give a value of that "
                                "shape or one that broadcasts to it (e.g. its last dimension).") from None


def _as_list(value: Indices) -> list[int]:
    return [] if value is None else [value] if isinstance(value, int) else list(value)


def _resolve(value: Indices, size: int, what: str, spec: Edit, axis: str) -> torch.Tensor | None:
    """Indices (n,) into an axis of `size`, negatives counted from the end; None for all. Refuses one outside."""
    if value is None:
        return None
    items = _as_list(value)
    for i in items:
        if not -size <= i < size:
            raise InterventionError(f"{what} {i} of {spec.label} is outside {axis} of {size} in this call; use "
                                    f"0..{size - 1} (or -{size}..-1).")
    return torch.tensor([i % size for i in items], dtype=torch.long)


def _where(x: torch.Tensor, new: torch.Tensor, spec: Any, where: str) -> torch.Tensor:
    """`new` at the spec's rows and positions of x (B, T, ...), x elsewhere."""
    if spec.rows is None and spec.positions is None:
        return new
    if spec.positions is not None and x.dim() < 2:
        raise InterventionError(f"{spec.label} names positions, but {where} gives a tensor {tuple(x.shape)} with no "
                                "time axis; leave positions out.")
    rows = _resolve(spec.rows, x.shape[0], "batch row", spec, f"the batch at {where}")
    pos = _resolve(spec.positions, x.shape[1], "position", spec, f"the sequence at {where}") \
        if spec.positions is not None else None
    out = x.clone()
    if rows is not None and pos is not None:
        index: tuple[Any, ...] = (rows.to(x.device)[:, None], pos.to(x.device)[None, :])
    elif rows is not None:
        index = (rows.to(x.device),)
    else:
        assert pos is not None  # one of them is set
        index = (slice(None), pos.to(x.device))
    out[index] = new[index]
    return out
