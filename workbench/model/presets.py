"""Named `ModelConfig`s ("tiny", "gpt2-small", ...): a table that the model families fill.

Each family declares its presets in its own module (`workbench.families.<name>`, `Family.presets`);
registering the family adds them here, so `ModelConfig.preset(name)` finds them while this package
knows no family. `import workbench` registers the built-in families.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    from .config import ModelConfig

_TABLE: dict[str, ModelConfig] = {}
PRESETS: Mapping[str, ModelConfig] = MappingProxyType(_TABLE)  # read-only; changes only as families register


def add_presets(presets: Mapping[str, ModelConfig]) -> None:
    """Add named configs; a name already in the table is refused (nothing is added then)."""
    taken = sorted(set(presets) & set(_TABLE))
    if taken:
        raise ConfigError(f"presets {taken} are already defined; choose other names.")
    _TABLE.update(presets)


def remove_presets(names: Iterable[str]) -> None:
    """Remove named configs (a family's, when it is unregistered); unknown names are ignored."""
    for name in names:
        _TABLE.pop(name, None)


def preset(name: str) -> ModelConfig:
    """The config registered under `name`, or a ConfigError listing the names there are."""
    if name not in _TABLE:
        raise ConfigError(f"Unknown preset {name!r}; choose one of {sorted(_TABLE)}.")
    return _TABLE[name]
