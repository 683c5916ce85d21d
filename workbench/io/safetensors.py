"""Reading weight files safely: safetensors (single or sharded) and, only on request, `weights_only` pickles."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..errors import CorruptFileError, LoadError, UnsafeFormatError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
INDEX_NAME = "model.safetensors.index.json"


def _check_header(path: Path) -> None:
    """Fail fast on files too short for their declared header (truncation) or not safetensors at all."""
    size = path.stat().st_size
    if size < 8:
        raise CorruptFileError(f"{path} is {size} bytes, too short to be safetensors; re-download or re-save it.")
    with path.open("rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > size - 8:
            raise CorruptFileError(
                f"{path} declares a {header_len}-byte header but holds only {size} bytes: "
                "the file is truncated or not safetensors; re-download or re-save it."
            )
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CorruptFileError(f"{path} has an unreadable safetensors header ({exc}); re-save it.") from exc
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + header_len + end > size:
        raise CorruptFileError(
            f"{path} is truncated: tensors need {8 + header_len + end} bytes, the file has {size}; "
            "re-download or re-save it."
        )


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of one safetensors file, on CPU; corrupt or truncated files raise CorruptFileError."""
    path = Path(path)
    _check_header(path)
    try:
        return load_file(str(path))
    except (SafetensorError, ValueError, KeyError, TypeError) as exc:
        raise CorruptFileError(f"{path} could not be parsed as safetensors ({exc}); re-save it.") from exc


def read_sharded(index_path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a sharded checkpoint described by `model.safetensors.index.json`."""
    index_path = Path(index_path)
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CorruptFileError(f"{index_path} is not a valid safetensors index ({exc}).") from exc
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = index_path.parent / shard
        if not shard_path.exists():
            raise LoadError(f"shard {shard} named in {index_path.name} is missing from {index_path.parent}.")
        state.update(read_safetensors(shard_path))
    return state


def read_pickle(path: str | Path, *, allow_pickle: bool) -> dict[str, torch.Tensor]:
    """A `.bin`/`.pt` checkpoint, only when the caller opted in, and only with weights_only=True."""
    path = Path(path)
    if not allow_pickle:
        raise UnsafeFormatError(
            f"{path.name} is a pickle file, and unpickling can run arbitrary code. Convert it to "
            "safetensors, or pass allow_pickle=True to load it with torch.load(weights_only=True)."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for bad pickles
        raise CorruptFileError(f"{path} could not be loaded with weights_only=True ({exc}).") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise LoadError(f"{path} does not hold a flat dict of tensors (a state dict).")
    return state


def read_weights(directory: Path, *, allow_pickle: bool = False) -> tuple[dict[str, torch.Tensor], str]:
    """The weights in a checkpoint directory and the file they came from (safetensors preferred)."""
    single = directory / "model.safetensors"
    if single.exists():
        return read_safetensors(single), single.name
    if (directory / INDEX_NAME).exists():
        return read_sharded(directory / INDEX_NAME), INDEX_NAME
    shards = sorted(directory.glob("*.safetensors"))
    if len(shards) == 1:
        return read_safetensors(shards[0]), shards[0].name
    pickles = sorted(p for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        return read_pickle(pickles[0], allow_pickle=allow_pickle), pickles[0].name
    raise LoadError(f"no weights in {directory}: expected model.safetensors, {INDEX_NAME} or one *.safetensors file.")
