"""The schema of a saved trace: the JSON document `serialize.dumps` writes, and its attention maps.

Records are checked against their own dataclass fields (`records.py` is the one declaration), strictly:
an index written as a string or a shape as a number is refused on load, not when `summary()`,
`report_html()` or an `AttentionView` first reads it. Statistics may be NaN or Inf (they describe
tensors that held them). Beyond types, the pieces must agree: parents exist, attention shapes have
four sizes, kept heads and rows are inside them, and each map has the shape its record describes.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import torch

from ..errors import CorruptFileError
from ..schema import check, dataclass_schema, strict_config
from .records import HEAD_METRICS, AttentionRecord, ModuleRecord, ParamGradRecord

_FIX = "The file is damaged or was not written by Trace.save; record and save the trace again."


@cache
def _meta_schema() -> Any:
    """Trace.meta: the keys the workbench reads are typed; others (written by newer versions) pass."""
    from pydantic import NonNegativeInt, StrictStr, create_model

    return create_model(
        "TraceMetaSchema",
        __config__=strict_config(extra="allow", allow_inf_nan=True),
        model=(StrictStr, ...),
        attention_bytes=(NonNegativeInt, ...),
        device=(StrictStr | None, None),
        dtype=(StrictStr | None, None),
        total_params=(NonNegativeInt | None, None),
        trainable_params=(NonNegativeInt | None, None),
        param_bytes=(NonNegativeInt | None, None),
        options=(dict[StrictStr, Any] | None, None),
        attention_mode=(StrictStr | None, None),
        saved_bytes=(NonNegativeInt | None, None),
        saved_bytes_outside=(NonNegativeInt | None, None),
        wall_ms=(float | None, None),
        torch=(StrictStr | None, None),
        rank=(NonNegativeInt, 0),
        world_size=(NonNegativeInt | None, None),
        ranks=(list[NonNegativeInt] | None, None),
        by_rank=(list[dict[StrictStr, Any]] | None, None),
        rank_memory=(dict[StrictStr, NonNegativeInt | None] | None, None),
    )


@cache
def _document_schema() -> Any:
    from pydantic import create_model

    attention = dataclass_schema(
        AttentionRecord, allow_inf_nan=True, skip=("map",), add=(("map_shape", list[int] | None),)
    )
    record = dataclass_schema(ModuleRecord, allow_inf_nan=True)
    gradient = dataclass_schema(ParamGradRecord, allow_inf_nan=True)
    fields: dict[str, Any] = {
        "meta": (dict[str, Any], ...),
        "records": (list[record], ...),  # type: ignore[valid-type]
        "attention": (list[attention], ...),  # type: ignore[valid-type]
        "gradients": (list[gradient], ...),  # type: ignore[valid-type]
    }
    return create_model("TraceDocumentSchema", __config__=strict_config(allow_inf_nan=True), **fields)


def check_document(doc: Any, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Raise CorruptFileError naming `source` and the field when a trace document or its maps are malformed."""
    if not isinstance(doc, dict):
        raise CorruptFileError(f"{source}: the trace document is a JSON {type(doc).__name__}, not an object. {_FIX}")
    check(_document_schema(), doc, source=source, error=CorruptFileError, fix=_FIX)
    for i, meta in enumerate([doc["meta"], *(doc["meta"].get("by_rank") or [])]):
        where = f"{source} meta" + (f".by_rank.{i - 1}" if i else "")
        check(_meta_schema(), meta, source=where, error=CorruptFileError, fix=_FIX)
    problem = _records_problem(doc["records"]) or _attention_problem(doc["attention"], tensors)
    if problem:
        raise CorruptFileError(f"{source}: {problem}. {_FIX}")


def _records_problem(records: list[dict[str, Any]]) -> str | None:
    n = len(records)
    for i, r in enumerate(records):
        if not -1 <= r["parent"] < n:
            return f"records.{i}: parent {r['parent']} is not the index of a record (0..{n - 1}) or -1"
        if r["index"] < 0 or r["depth"] < 0 or r["call"] < 0:
            return f"records.{i}: index, depth and call must be >= 0"
    return None


def _attention_problem(attention: list[dict[str, Any]], tensors: dict[str, torch.Tensor]) -> str | None:
    indices = [a["index"] for a in attention]
    if len(set(indices)) != len(indices):
        return "two attention records share an index"
    known = {f"attention.{i}" for i in indices}
    stray = sorted(set(tensors) - known)
    if stray:
        return f"the file holds tensors {stray[:3]} that no attention record names"
    for i, a in enumerate(attention):
        where = f"attention.{i}"
        if len(a["full_shape"]) != 4 or min(a["full_shape"]) < 0:
            return f"{where}.full_shape must be 4 sizes [B, H, T, S], got {a['full_shape']}"
        B, H, T, _ = a["full_shape"]
        for key, bound in (("batch", B), ("heads", H), ("queries", T)):
            if any(not 0 <= j < bound for j in a[key]):
                return f"{where}.{key} {a[key][:8]} must lie in [0, {bound})"
        for name, values in a["metrics"].items():
            if name not in HEAD_METRICS or len(values) != H:
                return f"{where}.metrics.{name} must be one of {HEAD_METRICS} with one value per head ({H})"
        tensor = tensors.get(f"attention.{a['index']}")
        if tensor is None:
            continue
        shape = list(tensor.shape)
        if not tensor.is_floating_point() or len(shape) != 4 or shape[:2] != [len(a["batch"]), len(a["heads"])]:
            return (
                f"{where}: the map is {tensor.dtype} {shape}, not a float map of "
                f"[{len(a['batch'])} batch rows, {len(a['heads'])} heads, T, S]"
            )
        if a.get("map_shape") not in (None, shape):
            return f"{where}: map_shape {a['map_shape']} differs from the stored map's {shape}"
    return None
