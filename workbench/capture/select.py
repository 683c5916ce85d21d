"""Which modules a trace records: `modules=` filters (regex, names, predicate) turned into (name, module) pairs."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from torch import nn

from ..errors import CaptureError
from ..model.layers import HookPoint

ModuleFilter = str | re.Pattern | Iterable[str] | Callable[[str, nn.Module], bool] | None


def select_modules(model: nn.Module, modules: ModuleFilter,
                   named: list[tuple[str, nn.Module]] | None = None) -> list[tuple[str, nn.Module]]:
    """(name, module) pairs to record. str/Pattern: regex searched in the name; iterable of str:
    exact names; callable: predicate(name, module); None: every module including the root (""),
    except workbench `hook_scores`/`hook_pattern` sites, since hooking them switches attention to the
    slower eager path (select them by name to record them anyway). `named` reuses a
    `list(model.named_modules())` the caller already has."""
    named = list(model.named_modules()) if named is None else named
    if modules is None:
        return [(n, m) for n, m in named if not _switches_path(n, m)]
    if isinstance(modules, (str, re.Pattern)):
        rx = re.compile(modules) if isinstance(modules, str) else modules
        return [(n, m) for n, m in named if rx.search(n)]
    if callable(modules):
        return [(n, m) for n, m in named if modules(n, m)]
    wanted = set(modules)
    unknown = wanted - {n for n, _ in named}
    if unknown:
        raise CaptureError(
            f"modules={sorted(unknown)[:5]} are not module names of this model; "
            "use names from model.named_modules(), a regex string, or a predicate(name, module)."
        )
    return [(n, m) for n, m in named if n in wanted]


def _switches_path(name: str, module: nn.Module) -> bool:
    return isinstance(module, HookPoint) and name.endswith(("hook_scores", "hook_pattern"))
