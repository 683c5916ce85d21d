"""Validating what comes from files against typed schemas (pydantic v2), with workbench errors.

Every file boundary (config.json, HF configs, safetensors headers and indexes, GGUF metadata,
tokenizer files, traces) checks its document here before anything is built from it. pydantic is
imported on first use, never by `import workbench` (it costs ~70 ms).

`check` turns a `pydantic.ValidationError` into the caller's `WorkbenchError` subclass, naming the
file, the field path, what was wrong and the fix. `dataclass_schema` derives a strict schema from a
dataclass's own fields, so record and config types are declared once.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any, Union

from .errors import WorkbenchError

_MAX_ERRORS = 3  # problems listed per message; the rest are counted


def strict_config(*, extra: str = "forbid", allow_inf_nan: bool = False) -> Any:
    """pydantic's ConfigDict for file documents: no coercion ("1" is not 1, "false" is not False)."""
    from pydantic import ConfigDict

    return ConfigDict(strict=True, extra=extra, allow_inf_nan=allow_inf_nan)  # type: ignore[typeddict-item]


def _where(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(the document)"


def _shown(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe(exc: Any) -> str:
    """The first problems of a pydantic ValidationError as `field: message (got value)`."""
    errors = exc.errors(include_url=False)
    parts = []
    for err in errors[:_MAX_ERRORS]:
        got = "" if err["type"] == "missing" else f" (got {_shown(err.get('input'))})"
        parts.append(f"{_where(err['loc'])}: {err['msg']}{got}")
    more = f"; and {len(errors) - _MAX_ERRORS} more" if len(errors) > _MAX_ERRORS else ""
    return "; ".join(parts) + more


def check(schema: Any, data: Any, *, source: str, error: type[WorkbenchError], fix: str) -> Any:
    """`data` validated by `schema` (a pydantic model or a TypeAdapter); otherwise `error(message)`.

    source: what the data came from ("/x/config.json", "GGUF metadata"); fix: what the user should do.
    """
    from pydantic import BaseModel, ValidationError

    try:
        if isinstance(schema, type) and issubclass(schema, BaseModel):
            return schema.model_validate(data)
        return schema.validate_python(data)
    except ValidationError as exc:
        raise error(f"{source}: {describe(exc)}. {fix}") from None
    except RecursionError:
        raise error(f"{source}: the document is nested too deeply to validate. {fix}") from None


def read_json_object(path: Path, *, error: type[WorkbenchError], fix: str) -> dict[str, Any]:
    """The JSON object in `path`; unreadable, non-UTF-8, malformed or non-object files raise `error`."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path} is not UTF-8 text (byte {exc.start} is {exc.object[exc.start]:#04x}). {fix}") from None
    except OSError as exc:
        raise error(f"{path} could not be read ({exc.strerror or exc}). {fix}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{path} is not valid JSON ({exc}). {fix}") from None
    except RecursionError:
        raise error(f"{path} is nested too deeply to be a JSON config. {fix}") from None
    if not isinstance(data, dict):
        raise error(f"{path} holds a JSON {type(data).__name__}, not an object ({{...}}). {fix}")
    return data


def _field_type(hint: Any, nested: Mapping[type, Any]) -> Any:
    """`hint` with dataclasses replaced by their schemas, inside unions, lists and dicts."""
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return nested[hint]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return Union[tuple(_field_type(a, nested) for a in args)]  # noqa: UP007 (built from a tuple)
    if origin is list:
        return list[_field_type(args[0], nested)]  # type: ignore[misc]
    if origin is dict:
        key, value = args[0], _field_type(args[1], nested)
        return dict[key, value]  # type: ignore[valid-type]
    return hint


@cache
def dataclass_schema(
    cls: Any, *, allow_inf_nan: bool = False, skip: tuple[str, ...] = (), add: tuple[tuple[str, Any], ...] = ()
) -> Any:
    """A strict pydantic model with the fields of dataclass `cls` (types and defaults), extra keys refused.

    Nested dataclasses get their own schemas. skip: fields left out (tensors); add: (name, type)
    pairs accepted besides the fields, with default None (older spellings such as InitVars).
    """
    from pydantic import Field, create_model

    hints = typing.get_type_hints(cls)
    nested = {
        t: dataclass_schema(t, allow_inf_nan=allow_inf_nan)
        for f in dataclasses.fields(cls)
        for t in _dataclasses_in(hints[f.name])
    }
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        if f.default is not dataclasses.MISSING:
            default: Any = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = Field(default_factory=f.default_factory)
        else:
            default = ...
        fields[f.name] = (_field_type(hints[f.name], nested), default)
    for name, hint in add:
        fields[name] = (hint, None)
    config = strict_config(allow_inf_nan=allow_inf_nan)
    return create_model(f"{cls.__name__}Schema", __config__=config, **fields)


def _dataclasses_in(hint: Any) -> list[type]:
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return [hint]
    return [t for a in typing.get_args(hint) for t in _dataclasses_in(a)]
