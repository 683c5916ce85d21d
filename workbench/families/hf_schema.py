"""Checking a HF transformers `config.json` against the fields its family declares it reads.

Each family lists the fields its `config_from_hf` reads, with their kinds (`Family.hf_fields`); the
schema is built here from that list, so a size written as a string, a NaN epsilon or
`"tie_word_embeddings": "false"` is refused by name instead of divided, compared or taken as true.
Other keys (transformers writes many) pass through unread. pydantic is imported on call.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any, Literal, get_args

from ..errors import ConfigError
from ..schema import check, strict_config

# What a declared field must hold (every field may also be absent or null):
#   count: an integer > 0 (a size); index: an integer >= 0; positive: a finite number > 0;
#   bool: true / false; string; strings: a list of strings;
#   rope: a `rope_scaling` / `rope_parameters` object (its numbers finite and > 0).
HFKind = Literal["count", "index", "positive", "bool", "string", "strings", "rope"]
HFFields = Mapping[str, HFKind]
HF_KINDS: tuple[str, ...] = get_args(HFKind)

_ROPE_FLOATS = ("factor", "low_freq_factor", "high_freq_factor", "rope_theta", "partial_rotary_factor")


def _kind_type(kind: str) -> Any:
    from pydantic import Field, PositiveFloat, PositiveInt, StrictBool, StrictStr, create_model

    if kind == "rope":
        rope_fields: dict[str, Any] = {
            "rope_type": (StrictStr | None, None),
            "type": (StrictStr | None, None),
            "original_max_position_embeddings": (PositiveInt | None, None),
            **{k: (PositiveFloat | None, None) for k in _ROPE_FLOATS},
        }
        rope = create_model("HFRopeSchema", __config__=strict_config(extra="allow"), **rope_fields)
        return (rope | None, None)
    return {
        "count": (PositiveInt | None, None),
        "index": (int | None, Field(None, ge=0)),
        "positive": (PositiveFloat | None, None),
        "bool": (StrictBool | None, None),
        "string": (StrictStr | None, None),
        "strings": (list[StrictStr] | None, None),
    }[kind]  # the registry admits declared kinds only (HF_KINDS)


@cache
def _schema(fields: tuple[tuple[str, str], ...]) -> Any:
    from pydantic import create_model

    declared = {name: _kind_type(kind) for name, kind in fields}
    return create_model("HFConfigSchema", __config__=strict_config(extra="allow"), **declared)


def check_hf_config(hf: dict[str, Any], fields: HFFields, source: str = "HF config") -> None:
    """Raise ConfigError naming the field when `hf` does not hold what `fields` declares."""
    fix = "Fix that field in config.json (sizes are integers, epsilons finite numbers, switches true/false)."
    check(_schema(tuple(sorted(fields.items()))), hf, source=source, error=ConfigError, fix=fix)
