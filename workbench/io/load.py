"""`load_pretrained`: one entry point for workbench directories, HF directories and GGUF files."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ..errors import CorruptFileError, LoadError
from ..families.registry import Family, for_hf_model_type
from ..model.config import ModelConfig
from ..model.hf_config import config_from_hf
from ..model.placement import check_dtype, resolve_device
from ..model.transformer import TransformerLM
from .hf_naming import from_hf
from .safetensors import read_safetensors, read_weights
from .state import load_state

log = logging.getLogger(__name__)


def _read_config(directory: Path) -> dict:
    path = directory / "config.json"
    if not path.exists():
        raise LoadError(f"{directory} has no config.json; a checkpoint directory needs one next to the weights.")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CorruptFileError(f"{path} is not valid JSON ({exc}).") from exc


def _config_of(raw: dict, directory: Path) -> tuple[ModelConfig, Family | None]:
    """The config and, for a HF directory, the family whose tensor names it uses (None: workbench)."""
    if "model_type" in raw:
        return config_from_hf(raw), for_hf_model_type(raw["model_type"])
    if raw.get("format") == "workbench":
        return ModelConfig.from_dict(raw["config"]), None
    raise LoadError(
        f"{directory / 'config.json'} is neither a workbench config (format: workbench) nor a HF config "
        "(model_type); save the model with save_pretrained."
    )


def load_pretrained(
    path: str | Path,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    strict: bool = True,
    allow_pickle: bool = False,
) -> TransformerLM:
    """Load a model in eval mode; `model.load_report` says what was missing, unexpected, tied or cast.

    path: a workbench directory, a HF directory of a registered family (GPT-2, Llama, Qwen2, Gemma;
    single or sharded safetensors), a `.safetensors` file inside such a directory, or a `.gguf` file
    (llama, qwen2 or gemma architecture).
    Pickle files (.bin/.pt) load only with allow_pickle=True, and then with weights_only=True.
    """
    device = resolve_device(device)  # before any file is read: a bad device fails in milliseconds
    check_dtype(dtype)
    path = Path(path).expanduser()
    if not path.exists():
        raise LoadError(f"{path} does not exist; pass a checkpoint directory, a .safetensors or a .gguf file.")
    ggufs = [path] if path.suffix == ".gguf" else sorted(path.glob("*.gguf")) if path.is_dir() else []
    if ggufs and not (path.is_dir() and (path / "config.json").exists()):
        from .gguf import load_gguf

        return load_gguf(ggufs[0], device=device, dtype=dtype, strict=strict)
    directory = path if path.is_dir() else path.parent
    config, family = _config_of(_read_config(directory), directory)
    kind = "workbench" if family is None else "hf"
    if path.is_file():
        if path.suffix != ".safetensors":
            raise LoadError(f"{path.name}: unsupported weight file; use .safetensors or .gguf.")
        state, source = read_safetensors(path), path.name
    else:
        state, source = read_weights(directory, allow_pickle=allow_pickle)
    notes: list[str] = []
    if family is not None:
        state, notes = from_hf(state, config, family)
    model = TransformerLM(config)
    report = load_state(model, state, strict=strict, source=str(directory / source), format=kind)
    report.notes.extend(notes)
    model.load_report = report
    log.info("%s", report.summary())
    return model.to(device=device, dtype=dtype or torch.float32).eval()
