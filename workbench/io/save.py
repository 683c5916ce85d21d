"""Writing a model as a workbench or HF transformers checkpoint directory."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors.torch import save_file

from ..errors import ConfigError
from ..families.hf_config import config_to_hf
from ..model.placement import module_dtype
from .hf_naming import to_hf
from .state import tied_pairs

if TYPE_CHECKING:
    from ..model.transformer import TransformerLM

FORMATS = ("workbench", "hf")
WORKBENCH_FORMAT_VERSION = 1


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file and rename, so a failure never leaves half a checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # safetensors writes owner-only files; checkpoints are meant to be shared
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_pretrained(
    model: TransformerLM, directory: str | Path, *, format: str = "workbench", family: str | None = None
) -> Path:
    """Save `config.json` + `model.safetensors`; format="hf" writes what transformers loads directly.

    family: with format="hf", the registered family to write the model as ("mistral"), which must hold
    its config; by default the family `workbench.families.for_config` picks.
    """
    if format not in FORMATS:
        raise ConfigError(f"format={format!r} is unknown; use one of {FORMATS}.")
    if family is not None and format != "hf":
        raise ConfigError(f"family={family!r} names a HF architecture; pass it with format='hf'.")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    aliases = {alias for alias, _ in tied_pairs(model)}
    state = {k: v.detach().cpu() for k, v in model.state_dict().items() if k not in aliases}
    dtype = str(module_dtype(model)).replace("torch.", "")
    if format == "hf":
        config = config_to_hf(model.config, family) | {"torch_dtype": dtype}
        state, meta = to_hf(state, model.config, family), {"format": "pt"}
    else:
        config = {
            "format": "workbench",
            "format_version": WORKBENCH_FORMAT_VERSION,
            "dtype": dtype,
            "config": model.config.to_dict(),
        }
        state, meta = {k: v.contiguous() for k, v in state.items()}, {"format": "workbench"}
    _atomic_write(directory / "model.safetensors", lambda p: save_file(state, str(p), metadata=meta))
    _atomic_write(directory / "config.json", lambda p: p.write_text(json.dumps(config, indent=2) + "\n"))
    return directory
