"""The one encoding of a `Trace` as text: JSON for records, metadata and gradients, with the attention
maps kept aside as tensors (keyed by attention index).

`Trace.save` writes this text into a safetensors header next to the maps; `Trace.gather` sends it between
ranks with the maps. Nothing is ever unpickled.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from ..errors import CorruptFileError
from .records import AttentionRecord, ModuleRecord, ParamGradRecord
from .schema import check_document

if TYPE_CHECKING:
    from .trace import Trace

T = TypeVar("T", bound="Trace")


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


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (tuple, set)):
        return list(obj)
    if isinstance(obj, slice):
        return [obj.start, obj.stop, obj.step]
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return repr(obj)
