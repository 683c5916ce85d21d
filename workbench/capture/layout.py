"""A traced model's module tree, parameters and per-module facts, cached across traces, checked per trace.

Every trace needs `named_modules()`, the parameter list, each module's parameter counts and, for the
capture hot path, a dict from module id to the record fields that never change. Building them for
SmolLM2's ~400 modules costs several milliseconds of Python per trace, which a notebook re-running a
traced cell pays every time. `model_layout(model)` keeps them per model (weakly referenced) and, on
every trace, checks what they depend on instead of rebuilding them: the child and parameter dicts of
every module hold the same objects, and every parameter has the same requires_grad, dtype and shape.
A module added, removed or replaced anywhere in the tree, or a parameter swapped, resized, cast or
frozen, rebuilds the layout.
"""

from __future__ import annotations

import operator
import weakref
from collections.abc import Callable, Hashable
from itertools import chain
from typing import Any

from torch import nn

from .params import ParamInfo, module_parameters, parameters_of, static_param_info

_PARAM_FACTS = operator.attrgetter("requires_grad", "dtype", "shape")


def _fingerprint(dicts: list[dict[str, Any]], params: list[nn.Parameter]) -> tuple:
    """What the cached facts depend on: every module's child and parameter dicts (sizes, keys, and the ids
    of their values) and each parameter's requires_grad, dtype and shape. Built with C-level iteration
    (no Python loop over 400 modules). Ids, not objects, so no tensor `__eq__` runs; the layout holds
    every module and parameter it lists, so their ids cannot be reused by new objects meanwhile."""
    values = chain.from_iterable(map(dict.values, dicts))
    return (tuple(map(len, dicts)), tuple(chain.from_iterable(map(dict.keys, dicts))), tuple(map(id, values)),
            tuple(map(_PARAM_FACTS, params)))


class Layout:
    """One model's module tree and parameter facts as of its last check (see module docstring).

    The root module is held weakly: the layout is the value of a weak-keyed cache whose key is the
    root, and a strong reference from the value would keep every traced model alive."""

    def __init__(self, model: nn.Module) -> None:
        named = list(model.named_modules())
        self._root = weakref.ref(model)
        self._rest: list[tuple[str, nn.Module]] = named[1:]  # named_modules() lists the root first
        self._rest_modules = [m for _, m in self._rest]
        self.ids = [id(m) for _, m in named]
        self.params: list[nn.Parameter] = parameters_of(named)
        self.members: dict[str, list[nn.Parameter]] = module_parameters(model)
        self.info: dict[str, ParamInfo] = static_param_info(model, self.members)
        self.total_params = sum(p.numel() for p in self.params)
        self.trainable_params = sum(p.numel() for p in self.params if p.requires_grad)
        self.param_bytes = sum(p.numel() * p.element_size() for p in self.params)
        # Each module's child and parameter dicts; Module never replaces these dict objects.
        self._dicts = [d for _, m in named for d in (m._modules, m._parameters)]
        self._key = _fingerprint(self._dicts, self.params)
        self._derived: dict[Hashable, Any] = {}

    def _model(self) -> nn.Module:
        root = self._root()
        if root is None:  # only reachable through a layout kept past its model, which callers do not do
            raise ReferenceError("the model of this layout no longer exists")
        return root

    @property
    def named(self) -> list[tuple[str, nn.Module]]:
        """`list(model.named_modules())` as of the last check."""
        return [("", self._model()), *self._rest]

    @property
    def modules(self) -> list[nn.Module]:
        return [self._model(), *self._rest_modules]

    def current(self) -> bool:
        return _fingerprint(self._dicts, self.params) == self._key

    def derived(self, key: Hashable | None, build: Callable[[], Any]) -> Any:
        """`build()`, kept for this layout under `key` (None: not cacheable, built every time). Values must
        not refer to the root module (see the class docstring)."""
        if key is None:
            return build()
        try:
            return self._derived[key]
        except KeyError:
            value = self._derived[key] = build()
            return value
        except TypeError:  # an unhashable key
            return build()

    def selected(self, key: Hashable | None, select: Callable[[], list[tuple[str, nn.Module]]],
                 ) -> list[tuple[str, nn.Module]]:
        """`select()`, a sublist of `named` in its order, cached under `key` as positions."""
        if key is None:
            return select()
        named = self.named

        def positions() -> tuple[int, ...]:
            where = {id(m): i for i, (_, m) in enumerate(named)}
            return tuple(where[id(m)] for _, m in select())

        return [named[i] for i in self.derived(("selected", key), positions)]


_LAYOUTS: weakref.WeakKeyDictionary[nn.Module, Layout] = weakref.WeakKeyDictionary()


def model_layout(model: nn.Module) -> Layout:
    """The layout of `model`, rebuilt only when its module tree or parameters changed since the last trace."""
    hit = _LAYOUTS.get(model)
    if hit is not None and hit.current():
        return hit
    layout = _LAYOUTS[model] = Layout(model)
    return layout


def filter_key(selection: Any) -> Hashable | None:
    """A cache key for a module filter (None, a regex string or pattern, a list of names), or None for
    a predicate, whose answer may change between calls."""
    if selection is None or isinstance(selection, (bool, str)):
        return ("value", selection)
    if hasattr(selection, "pattern") and hasattr(selection, "search"):  # a compiled regex
        return ("regex", selection.pattern, selection.flags)
    if isinstance(selection, (list, tuple)):  # not any iterable: a generator must reach the filter unread
        return ("names", tuple(selection))
    return None
