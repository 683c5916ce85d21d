"""The one encoding of a `Trace`: JSON text for records, metadata and gradients, with the attention maps
kept aside as tensors (keyed by attention index), and the file that holds both.

`write` puts this text into a safetensors header next to the maps (`Trace.save`), `read` checks and reads it
back (`Trace.load`); `Trace.gather` sends the text between ranks with the maps. Nothing is ever unpickled.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from ..errors import CaptureError, CorruptFileError, LoadError
from .records import AttentionRecord, ModuleRecord, ParamGradRecord
from .schema import check_document

if TYPE_CHECKING:
    from .trace import Trace

T = TypeVar("T", bound="Trace")
FORMAT, VERSION = "workbench.trace", 1  # the file's header names its format and the version of its document


def dumps(tr: Trace) -> str:
    """The trace as JSON text, without its attention maps (see `maps`)."""
    doc = {
        "meta": tr.meta,
        "records": [r.to_dict() for r in tr.records],
        "attention": [a.to_dict() for a in tr.attention],
        "gradients": [dataclasses.asdict(g) for g in tr.gradients],
    }
    return json.dumps(doc, default=_json_default, allow_nan=True)


def maps(tr: Trace) -> dict[str, torch.Tensor]:
    """The attention maps, keyed "attention.<index>" as `loads` expects them."""
    return {f"attention.{a.index}": a.map.contiguous() for a in tr.attention if a.map is not None}


def loads(text: str, tensors: dict[str, torch.Tensor], cls: type[T], source: str = "trace") -> T:
    """Inverse of `dumps` + `maps`: a new `cls` (a Trace class) holding the records and maps.

    The document is checked against the trace schema first (see `schema.check_document`); a malformed
    one raises CorruptFileError naming `source` (the file or rank it came from) and the field.
    """
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise CorruptFileError(f"{source}: the trace document is not valid JSON ({exc}); save it again.") from None
    check_document(doc, tensors, source)
    tr = cls()
    tr.meta = doc["meta"]
    tr.records = [ModuleRecord.from_dict(d) for d in doc["records"]]
    tr.gradients = [ParamGradRecord(**d) for d in doc["gradients"]]
    for d in doc["attention"]:
        d.pop("map_shape", None)
        a = AttentionRecord(**d)
        a.map = tensors.get(f"attention.{a.index}")
        tr.attention.append(a)
    return tr


def write(tr: Trace, path: str | Path) -> Path:
    """One safetensors file at `path` (parent folders created): the maps as tensors, the text as metadata."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    path = Path(path).expanduser()
    if path.is_dir():
        raise CaptureError(f"{path} is a folder; pass a file path such as {path / 'trace.safetensors'}.")
    header = {"format": FORMAT, "version": str(VERSION), "trace": dumps(tr)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(maps(tr), str(path), metadata=header)
    except (OSError, SafetensorError) as err:
        raise CaptureError(f"could not write the trace to {path} ({err}); choose a writable path.") from err
    return path


def read(path: str | Path, cls: type[T]) -> T:
    """The `cls` (a Trace class) that `write` put in the file at `path`; malformed files raise CorruptFileError."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise LoadError(f"No trace file at {path}; pass the path given to Trace.save().")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise CorruptFileError(f"{path} is not a workbench trace (no '{FORMAT}' header).")
            version = meta.get("version", "0")
            if not version.isdigit():
                raise CorruptFileError(f"{path} has a trace format version {version!r}, not a number; save again.")
            if int(version) > VERSION:
                raise CorruptFileError(f"{path} was written by a newer workbench (format {version}).")
            if "trace" not in meta:
                raise CorruptFileError(f"{path} has no 'trace' document in its header; save it again.")
            text = meta["trace"]
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        return loads(text, tensors, cls, source=str(path))
    except CorruptFileError:
        raise
    except (SafetensorError, json.JSONDecodeError, KeyError, TypeError, ValueError, OSError) as err:
        raise CorruptFileError(f"{path} is not a readable workbench trace ({err}); save it again.") from err


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (tuple, set)):
        return list(obj)
    if isinstance(obj, slice):
        return [obj.start, obj.stop, obj.step]
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return repr(obj)
