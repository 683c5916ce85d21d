"""The family registry: what makes each model family (GPT-2, Llama, ...) what it is, declared once per family.

A `Family` bundles HF config translation both ways with the config.json fields it reads, HF tensor
naming, the llama.cpp (GGUF) spelling with the metadata keys it reads, an architecture match (which
`ModelConfig`s it holds exactly), its named presets, and the row permutations its converters apply to
weights, each with its inverse. Loaders and savers look families up here (by HF model_type, GGUF
architecture or config) and never branch on a family's name, so a new family is one module that calls
`register`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import ConfigError, UnsupportedModelError
from ..model.config import ModelConfig
from ..model.presets import add_presets, remove_presets
from .gguf_keys import GGUF_KINDS, GGUFKind, GGUFMeta
from .hf_schema import HF_KINDS, HFFields
from .naming import Naming

Tensors = dict[str, torch.Tensor]


def _unchanged(tensors: Tensors, config: ModelConfig) -> tuple[Tensors, list[str]]:
    return tensors, []


@dataclass(frozen=True)
class RowPermutation:
    """A reordering of each head's rows of a q/k projection that a converter applies, with its inverse.

    Both map (H*D, C) rows and the head count H to (H*D, C), and `undo(apply(w, H), H)` is `w`.
    `workbench.compare` tries every registered one when it relates two models' weights.
    """

    name: str  # compare names the relations f"{name}-permuted" (apply) and f"{name}-unpermuted" (undo)
    apply: Callable[[torch.Tensor, int], torch.Tensor]  # HF's row order -> the converter's
    undo: Callable[[torch.Tensor, int], torch.Tensor]  # the converter's row order -> HF's
    applied: str  # how a tensor reads with `apply` done: "with its q/k rows permuted as ..."
    undone: str  # how a tensor reads with `undo` done


@dataclass(frozen=True)
class GGUFSpec:
    """How llama.cpp's converter stores a family."""

    arch: str  # `general.architecture`, also the prefix of the family's metadata keys ("llama.block_count")
    config_from_meta: Callable[[GGUFMeta], ModelConfig]  # header -> ModelConfig
    naming: Naming  # GGUF tensor names ("blk.{i}.attn_q") <-> workbench names
    keys: Mapping[str, GGUFKind]  # the `{arch}.` keys config_from_meta reads -> kind, checked before it runs
    # Undo what the converter changed in the values (GGUF names in and out), with notes for the load report.
    fix_tensors: Callable[[Tensors, ModelConfig], tuple[Tensors, list[str]]] = _unchanged


@dataclass(frozen=True)
class Family:
    """One model family as the loaders and savers see it."""

    name: str  # registry key
    hf_model_type: str  # `model_type` in a HF config.json
    hf_architecture: str  # the transformers class written to `architectures` ("LlamaForCausalLM")
    config_from_hf: Callable[[dict[str, Any]], ModelConfig]  # may raise KeyError for a missing required key
    config_to_hf: Callable[[ModelConfig], dict[str, Any]]  # without model_type / architectures
    hf_naming: Naming  # HF tensor names <-> workbench names
    hf_fields: HFFields  # the config.json fields config_from_hf reads -> kind, checked before it runs
    differences: Callable[[ModelConfig], list[str]]  # why the family cannot hold a config; [] = it holds it exactly
    gguf: GGUFSpec | None = None  # None: GGUF files of this family are not read
    presets: Mapping[str, ModelConfig] = field(default_factory=dict)  # `ModelConfig.preset` names, held by it
    permutations: tuple[RowPermutation, ...] = ()  # what its converters do to weight rows, with the inverses
    # False: `for_config` picks this family only when no preferred family holds the config. For a family whose
    # configs another also holds (Mistral without its window is Llama's layout): a save names it to get it.
    preferred: bool = True

    def holds(self, config: ModelConfig) -> bool:
        return not self.differences(config)


_FAMILIES: dict[str, Family] = {}  # in registration order, which `for_config` tries (preferred families first)


def mismatches(config: ModelConfig, **wanted: Any) -> list[str]:
    """`field=value (needs wanted)` for every field of `config` that differs from `wanted`."""
    return [f"{k}={getattr(config, k)!r} (needs {v!r})" for k, v in wanted.items() if getattr(config, k) != v]


def _gguf_arch(family: Family) -> str | None:
    return family.gguf.arch if family.gguf is not None else None


def _check_kinds(family: Family) -> None:
    """Refuse declared fields and keys of kinds the checks do not know."""
    declared = [("hf_fields", family.hf_fields, HF_KINDS)]
    if family.gguf is not None:
        declared.append(("gguf.keys", family.gguf.keys, GGUF_KINDS))
    for what, names, kinds in declared:
        unknown = {name: kind for name, kind in names.items() if kind not in kinds}
        if unknown:
            raise ConfigError(f"family {family.name!r} declares {what} of unknown kinds {unknown}; use one of {kinds}.")


def _check_presets(family: Family) -> None:
    """Refuse presets the family does not hold, or whose names another family took."""
    for name, config in family.presets.items():
        if family.differences(config):
            raise ConfigError(
                f"family {family.name!r} declares the preset {name!r}, which it does not hold: "
                f"{', '.join(family.differences(config))}."
            )
        for other in _FAMILIES.values():
            if name in other.presets:
                raise ConfigError(
                    f"family {family.name!r} declares the preset {name!r} of the registered family {other.name!r}; "
                    "choose another name."
                )


def _check_identity(family: Family) -> None:
    """Refuse a family whose name, HF model_type or GGUF architecture a registered one has."""
    for other in _FAMILIES.values():
        for what, mine, theirs in (
            ("name", family.name, other.name),
            ("HF model_type", family.hf_model_type, other.hf_model_type),
            ("GGUF architecture", _gguf_arch(family), _gguf_arch(other)),
        ):
            if mine is not None and mine == theirs:
                raise ConfigError(
                    f"family {family.name!r} claims the {what} {mine!r} of the registered family {other.name!r}; "
                    f"choose another {what} or unregister({other.name!r}) first."
                )


def _check_permutations(family: Family) -> None:
    """Refuse a permutation under a name a registered family gives to another one."""
    for perm in family.permutations:
        for other in _FAMILIES.values():
            theirs = next((p for p in other.permutations if p.name == perm.name), None)
            if theirs is not None and theirs != perm:
                raise ConfigError(
                    f"family {family.name!r} declares a row permutation {perm.name!r} that differs from the "
                    f"registered family {other.name!r}'s; choose another name, or declare the same one."
                )


def register(family: Family) -> Family:
    """Add a family and its presets; its name, HF model_type, GGUF architecture and preset names must be new."""
    _check_kinds(family)
    _check_identity(family)
    _check_presets(family)
    _check_permutations(family)
    add_presets(family.presets)
    _FAMILIES[family.name] = family
    return family


def unregister(name: str) -> Family:
    """Remove a family and its presets (a plug-in's tests clean up with this); returns it."""
    family = _FAMILIES.pop(get(name).name)
    remove_presets(family.presets)
    return family


def registered() -> tuple[Family, ...]:
    """Every registered family, in registration order."""
    return tuple(_FAMILIES.values())


def row_permutations() -> tuple[RowPermutation, ...]:
    """The row permutations of the registered families, each once, in registration order."""
    out: dict[str, RowPermutation] = {}
    for family in _FAMILIES.values():
        for perm in family.permutations:
            out.setdefault(perm.name, perm)
    return tuple(out.values())


def row_permutation(name: str) -> RowPermutation:
    """The registered row permutation called `name` ("rope")."""
    found = {perm.name: perm for perm in row_permutations()}
    if name not in found:
        raise ConfigError(f"Unknown row permutation {name!r}; registered ones are {sorted(found)}.")
    return found[name]


def get(name: str) -> Family:
    if name not in _FAMILIES:
        raise ConfigError(f"Unknown model family {name!r}; registered families are {sorted(_FAMILIES)}.")
    return _FAMILIES[name]


def for_hf_model_type(model_type: Any) -> Family:
    """The family of a HF config.json's `model_type`."""
    for family in _FAMILIES.values():
        if family.hf_model_type == model_type:
            return family
    types = tuple(sorted(f.hf_model_type for f in _FAMILIES.values()))
    raise ConfigError(f"model_type={model_type!r} is not supported; supported HF model types are {types}.")


def for_gguf_arch(arch: Any) -> Family:
    """The family of a GGUF file's `general.architecture`."""
    for family in _FAMILIES.values():
        if _gguf_arch(family) == arch:
            return family
    archs = tuple(sorted(a for a in map(_gguf_arch, _FAMILIES.values()) if a is not None))
    raise UnsupportedModelError(
        f"GGUF architecture {arch!r} is not supported; only {archs} files load into the workbench "
        "(use a HF checkpoint for other families)."
    )


def for_config(config: ModelConfig, name: str | None = None) -> Family:
    """The family that writes `config` as a HF checkpoint: the one called `name`, or by default the first
    registered family that holds it exactly, preferred families first; a ConfigError says why none can."""
    if name is not None:
        family = get(name)
        if not family.holds(config):
            raise ConfigError(
                f"the {family.name} family cannot hold this config exactly ({', '.join(family.differences(config))}); "
                "leave the family out to save with any family that holds it, or save with format='workbench'."
            )
        return family
    reasons = []
    for family in sorted(_FAMILIES.values(), key=lambda f: not f.preferred):
        diffs = family.differences(config)
        if not diffs:
            return family
        reasons.append(f"{family.name}: {', '.join(diffs)}")
    raise ConfigError(
        "No HF transformers architecture holds this config exactly (" + "; ".join(reasons) + "). "
        "Save with format='workbench'."
    )
