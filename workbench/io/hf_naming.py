"""Renaming state dicts between workbench naming and HF transformers naming.

Each family declares its HF names (`workbench.families.<name>.HF_NAMING`); these entry points pick
the family, drop HF's non-weight buffers, and omit a tied LM head on the way out.
"""

from __future__ import annotations

import re

import torch

from ..families.registry import Family, for_config
from ..model.config import ModelConfig

# HF keys that carry no weights (old buffers); dropped with a note instead of reported as unexpected.
IGNORED = re.compile(r"(\.attn\.(bias|masked_bias)$|rotary_emb\.inv_freq$)")


def from_hf(
    state: dict[str, torch.Tensor], config: ModelConfig, family: Family | None = None
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """HF-named tensors -> workbench-named tensors; unknown keys are kept (the load report lists them).

    family: the family whose names the file uses (from its model_type); default: the one holding `config`.
    """
    family = family or for_config(config)
    dropped = [k for k in state if IGNORED.search(k)]
    state = {k: v for k, v in state.items() if k not in dropped}
    notes = [f"ignored {len(dropped)} non-weight buffers (e.g. {dropped[0]})"] if dropped else []
    return family.hf_naming.to_workbench(state), notes


def to_hf(
    state: dict[str, torch.Tensor], config: ModelConfig, family: str | None = None
) -> dict[str, torch.Tensor]:
    """Workbench-named tensors -> HF naming (tied LM head omitted, as transformers saves it).

    family: the registered family whose names to write (it must hold `config`); default: see `for_config`.
    """
    if config.tie_embeddings:
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
    out = for_config(config, family).hf_naming.from_workbench(state, config)
    return {k: v.contiguous() for k, v in out.items()}
