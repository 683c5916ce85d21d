"""Reading weight files safely: safetensors (single or sharded) and, only on request, `weights_only` pickles."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..errors import CorruptFileError, LoadError, UnsafeFormatError
from ..schema import check, read_json_object

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
INDEX_NAME = "model.safetensors.index.json"


_MAX_HEADER = 100 * 2**20  # the safetensors library's own limit on the JSON header


def read_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (safetensors dtype, shape) from a file's header, checked against its schema and its size.

    Raises CorruptFileError for files too short, headers that are not a JSON object of entries with a
    known dtype, a shape and [begin, end] data offsets, byte ranges past the end of the file, or a
    range whose length is not shape x dtype size. Reads only the header.
    """
    from .schemas import SAFETENSORS_DTYPES, safetensors_entry, safetensors_metadata

    size = path.stat().st_size
    fix = "re-download or re-save it."
    if size < 8:
        raise CorruptFileError(f"{path} is {size} bytes, too short to be safetensors; {fix}")
    with path.open("rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > size - 8 or header_len > _MAX_HEADER:
            raise CorruptFileError(
                f"{path} declares a {header_len}-byte header but holds only {size} bytes: "
                f"the file is truncated or not safetensors; {fix}"
            )
        try:
            header = json.loads(f.read(header_len).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise CorruptFileError(f"{path} has an unreadable safetensors header ({exc}); {fix}") from None
    if not isinstance(header, dict):
        kind = type(header).__name__
        raise CorruptFileError(f"{path}: the safetensors header is a JSON {kind}, not an object; {fix}")
    data_size = size - 8 - header_len
    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name, value in header.items():
        if name == "__metadata__":
            check(safetensors_metadata(), value, source=f"{path} __metadata__", error=CorruptFileError, fix=fix)
            continue
        entry = check(safetensors_entry(), value, source=f"{path} tensor {name!r}", error=CorruptFileError, fix=fix)
        begin, end = entry.data_offsets
        nbytes = math.prod(entry.shape) * SAFETENSORS_DTYPES[entry.dtype]
        if not begin <= end <= data_size:
            raise CorruptFileError(
                f"{path}: tensor {name!r} claims bytes [{begin}, {end}) of a {data_size}-byte data section: "
                f"the file is truncated or its header is corrupt; {fix}"
            )
        if end - begin != nbytes:
            raise CorruptFileError(
                f"{path}: tensor {name!r} ({entry.dtype}, shape {entry.shape}) needs {nbytes} bytes but its "
                f"offsets span {end - begin}; the header is corrupt; {fix}"
            )
        out[name] = (entry.dtype, tuple(entry.shape))
    return out


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of one safetensors file, on CPU; corrupt or truncated files raise CorruptFileError."""
    path = Path(path)
    read_header(path)
    try:
        return load_file(str(path))
    except (SafetensorError, ValueError, KeyError, TypeError) as exc:
        raise CorruptFileError(f"{path} could not be parsed as safetensors ({exc}); re-save it.") from exc


def read_index(index_path: Path) -> dict[str, str]:
    """The `weight_map` (tensor name -> shard file name) of a sharded checkpoint's index, validated.

    Shard names must be plain file names in the index's folder: a path that climbs out is refused.
    """
    from .schemas import safetensors_index

    fix = "Re-save the checkpoint, or restore the index written with it."
    raw = read_json_object(index_path, error=CorruptFileError, fix=fix)
    index = check(safetensors_index(), raw, source=str(index_path), error=CorruptFileError, fix=fix)
    for shard in sorted(set(index.weight_map.values())):
        if Path(shard).name != shard or shard in ("", ".", ".."):
            raise CorruptFileError(
                f"{index_path}: shard name {shard!r} is not a file name in {index_path.parent}; {fix}"
            )
    return dict(index.weight_map)


def shard_paths(index_path: Path) -> list[Path]:
    """The existing shard files an index names, in name order."""
    paths = []
    for shard in sorted(set(read_index(index_path).values())):
        shard_path = index_path.parent / shard
        if not shard_path.is_file():
            raise LoadError(f"shard {shard} named in {index_path.name} is missing from {index_path.parent}.")
        paths.append(shard_path)
    return paths


def read_sharded(index_path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a sharded checkpoint described by `model.safetensors.index.json`.

    Every tensor the index names must be in the shard it names.
    """
    index_path = Path(index_path)
    weight_map = read_index(index_path)
    state: dict[str, torch.Tensor] = {}
    for shard_path in shard_paths(index_path):
        state.update(read_safetensors(shard_path))
    absent = sorted(name for name, shard in weight_map.items() if name not in state)
    if absent:
        raise CorruptFileError(
            f"{index_path.name} names {len(absent)} tensors that its shards lack (e.g. {absent[0]!r} in "
            f"{weight_map[absent[0]]}); re-save the checkpoint."
        )
    return state


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files `read_weights` would read from `directory` ([] when it would read a pickle)."""
    if (directory / "model.safetensors").exists():
        return [directory / "model.safetensors"]
    if (directory / INDEX_NAME).exists():
        return shard_paths(directory / INDEX_NAME)
    shards = sorted(directory.glob("*.safetensors"))
    return shards if len(shards) == 1 else []


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
