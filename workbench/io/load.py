"""`load_pretrained`: one entry point for workbench directories, HF directories and GGUF files."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, CorruptFileError, LoadError
from ..families.hf_config import config_from_hf
from ..families.registry import Family, for_hf_model_type
from ..model.config import ModelConfig
from ..model.placement import check_dtype, resolve_device
from ..model.transformer import TransformerLM
from ..schema import read_json_object
from .hf_naming import from_hf
from .safetensors import read_header, read_safetensors, read_weights, weight_files
from .sizes import check_sizes
from .state import model_from_state

log = logging.getLogger(__name__)


def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / "config.json"
    if not path.exists():
        raise LoadError(f"{directory} has no config.json; a checkpoint directory needs one next to the weights.")
    return read_json_object(path, error=CorruptFileError, fix="Restore it, or save the model again.")


def _config_of(raw: dict[str, Any], directory: Path) -> tuple[ModelConfig, Family | None]:
    """The config and, for a HF directory, the family whose tensor names it uses (None: workbench)."""
    path = directory / "config.json"
    if "model_type" in raw:
        return config_from_hf(raw, source=str(path)), for_hf_model_type(raw["model_type"])
    if raw.get("format") == "workbench":
        if not isinstance(raw.get("config"), dict):
            got = "no" if "config" not in raw else f"a {type(raw['config']).__name__} as its"
            raise ConfigError(
                f"{path} has {got} \"config\" section; a workbench config.json holds the ModelConfig fields "
                "as a JSON object under \"config\". Save the model again with save_pretrained."
            )
        return ModelConfig.from_dict(raw["config"], source=f"{path} config"), None
    raise LoadError(
        f"{path} is neither a workbench config (format: workbench) nor a HF config "
        "(model_type); save the model with save_pretrained."
    )


def _check_against_files(
    config: ModelConfig, family: Family | None, files: list[Path], directory: Path, strict: bool
) -> None:
    """Refuse a config whose sizes do not fit the safetensors headers, before any tensor is read."""
    shapes = {name: shape for f in files for name, (_, shape) in read_header(f).items()}
    source = files[0].name if len(files) == 1 else f"the {len(files)} shards in {directory}"
    naming = family.hf_naming if family is not None else None
    check_sizes(config, shapes, naming, source=source, declared=str(directory / "config.json"), strict=strict)


def load_pretrained(
    path: str | Path,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    strict: bool = True,
    allow_pickle: bool = False,
) -> TransformerLM:
    """Load a model in eval mode; `model.load_report` says what was missing, unexpected, tied or cast.

    path: a workbench directory, a HF directory of a registered family (`workbench.families.registered()`;
    single or sharded safetensors), a `.safetensors` file inside such a directory, or a `.gguf` file
    of an architecture a registered family reads.
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
    if path.is_file() and path.suffix != ".safetensors":
        raise LoadError(f"{path.name}: unsupported weight file; use .safetensors or .gguf.")
    files = [path] if path.is_file() else weight_files(directory)
    if files:
        _check_against_files(config, family, files, directory, strict)
    if path.is_file():
        state, source = read_safetensors(path), path.name
    else:
        state, source = read_weights(directory, allow_pickle=allow_pickle)
        if not files:  # a pickle: its shapes are known only now, still before the model is built
            naming = family.hf_naming if family is not None else None
            shapes = {k: tuple(v.shape) for k, v in state.items()}
            check_sizes(config, shapes, naming, source=source, declared=str(directory / "config.json"), strict=strict)
    notes: list[str] = []
    if family is not None:
        state, notes = from_hf(state, config, family)
    model, report = model_from_state(config, state, strict=strict, source=str(directory / source), format=kind)
    report.notes.extend(notes)
    model.load_report = report
    log.info("%s", report.summary())
    return model.to(device=device, dtype=dtype or torch.float32).eval()
