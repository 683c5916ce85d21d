"""Schemas of the files `workbench.io` reads: safetensors headers and indexes, GGUF metadata, tokenizer configs.

Each is a strict pydantic model (no coercion, finite floats), built on first use so that
`import workbench` does not import pydantic. `workbench.schema.check` turns a mismatch into the
caller's WorkbenchError naming the file, the field and the fix.
"""

from __future__ import annotations

from functools import cache
from typing import Any

# safetensors dtype name -> bytes per element (the names the format defines)
SAFETENSORS_DTYPES: dict[str, int] = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8,
}

# GGUF metadata keys read for every file, whatever its architecture -> kind (see `_gguf_type`); the
# `{arch}.` keys are declared by the family of that architecture (`GGUFSpec.keys`).
GGUF_TOKENIZER_KEYS: dict[str, str] = {
    "tokenizer.ggml.model": "string",
    "tokenizer.ggml.pre": "string",
    "tokenizer.ggml.tokens": "strings",
    "tokenizer.ggml.merges": "strings",
    "tokenizer.ggml.token_type": "ints",
    "tokenizer.ggml.bos_token_id": "id",
    "tokenizer.ggml.eos_token_id": "id",
    "tokenizer.ggml.padding_token_id": "id",
    "tokenizer.ggml.unknown_token_id": "id",
    "tokenizer.ggml.add_bos_token": "bool",
    "general.architecture": "string",
}


@cache
def safetensors_entry() -> Any:
    """One tensor of a safetensors header: dtype, shape and [begin, end) byte offsets into the data."""
    from typing import Literal

    from pydantic import Field, NonNegativeInt, create_model

    from ..schema import strict_config

    fields: dict[str, Any] = {
        "dtype": (Literal[tuple(SAFETENSORS_DTYPES)], ...),
        "shape": (list[NonNegativeInt], ...),
        "data_offsets": (list[NonNegativeInt], Field(..., min_length=2, max_length=2)),  # JSON has no tuples
    }
    return create_model("SafetensorsEntry", __config__=strict_config(), **fields)


@cache
def safetensors_metadata() -> Any:
    """The optional `__metadata__` entry: a flat string -> string map."""
    from pydantic import StrictStr, TypeAdapter

    return TypeAdapter(dict[StrictStr, StrictStr])


@cache
def safetensors_index() -> Any:
    """`model.safetensors.index.json`: tensor name -> shard file name (other keys pass)."""
    from pydantic import StrictStr, create_model

    from ..schema import strict_config

    return create_model(
        "SafetensorsIndex",
        __config__=strict_config(extra="allow"),
        weight_map=(dict[StrictStr, StrictStr], ...),
        metadata=(dict[StrictStr, Any] | None, None),
    )


@cache
def tokenizer_config() -> Any:
    """`tokenizer_config.json`: the special tokens (a string or an added-token object) and add_bos_token."""
    from pydantic import StrictBool, StrictStr, create_model

    from ..schema import strict_config

    added = create_model("AddedTokenSchema", __config__=strict_config(extra="allow"), content=(StrictStr, ...))
    token: Any = StrictStr | added | None
    fields: dict[str, Any] = {f"{role}_token": (token, None) for role in ("bos", "eos", "pad", "unk")}
    fields |= {"add_bos_token": (StrictBool | None, None), "add_eos_token": (StrictBool | None, None)}
    return create_model("TokenizerConfigSchema", __config__=strict_config(extra="allow"), **fields)


def _gguf_type(kind: str) -> Any:
    from pydantic import NonNegativeInt, PositiveFloat, PositiveInt, StrictBool, StrictStr

    return {
        "count": PositiveInt,
        "positive": PositiveFloat,
        "string": StrictStr,
        "strings": list[StrictStr],
        "ints": list[int],
        "id": NonNegativeInt,
        "bool": StrictBool,
    }[kind]


def gguf_metadata(arch: str | None) -> Any:
    """The GGUF metadata keys the workbench reads, by their full dotted names: the tokenizer's, and
    with a registered architecture (`general.architecture`) also the `{arch}.*` keys its family declares."""
    from ..families.registry import for_gguf_arch

    keys = dict(GGUF_TOKENIZER_KEYS)
    spec = for_gguf_arch(arch).gguf if arch is not None else None
    if spec is not None:
        keys |= {f"{arch}.{k}": kind for k, kind in spec.keys.items()}
    return _gguf_schema(tuple(keys.items()))


@cache
def _gguf_schema(keys: tuple[tuple[str, str], ...]) -> Any:
    from pydantic import Field, create_model

    from ..schema import strict_config

    fields: dict[str, Any] = {
        f"f{i}": (_gguf_type(kind) | None, Field(None, alias=key)) for i, (key, kind) in enumerate(keys)
    }
    return create_model("GGUFMetadata", __config__=strict_config(extra="ignore"), **fields)


def gguf_token_id_problem(values: dict[str, Any]) -> str | None:
    """What is wrong with the special token ids of validated tokenizer metadata, or None.

    Ids must name tokens of `tokenizer.ggml.tokens`; token types, when given, one per token.
    """
    tokens = values.get("tokenizer.ggml.tokens")
    if tokens is None:
        return None
    for key in ("bos_token_id", "eos_token_id", "padding_token_id", "unknown_token_id"):
        token_id = values.get(f"tokenizer.ggml.{key}")
        if token_id is not None and token_id >= len(tokens):
            return f"tokenizer.ggml.{key}={token_id} is outside the vocabulary of {len(tokens)} tokens"
    types = values.get("tokenizer.ggml.token_type")
    if types is not None and len(types) != len(tokens):
        return f"{len(tokens)} tokens but {len(types)} token types"
    return None
