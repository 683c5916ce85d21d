"""The schema of a HF transformers `config.json`, for the fields the families read.

Checked before any family translates the dict, so a size written as a string, a NaN epsilon or
`"tie_word_embeddings": "false"` is refused by name instead of divided, compared or taken as true.
Other keys (transformers writes many) pass through unread. pydantic is imported on call.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from ..errors import ConfigError
from ..schema import check, strict_config

_INTS = (  # sizes: positive integers
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "intermediate_size", "max_position_embeddings", "head_dim", "original_max_position_embeddings",
    "n_embd", "n_layer", "n_head", "n_inner", "n_positions", "sliding_window",
)
_NON_NEGATIVE_INTS = ("max_window_layers",)
_FLOATS = ("rope_theta", "rms_norm_eps", "layer_norm_epsilon", "initializer_range")  # finite, > 0
_BOOLS = ("tie_word_embeddings", "attention_bias", "mlp_bias", "use_sliding_window", "use_bidirectional_attention")
_STRINGS = ("model_type", "hidden_act", "hidden_activation", "activation_function")
_ROPE_FLOATS = ("factor", "low_freq_factor", "high_freq_factor", "rope_theta", "partial_rotary_factor")


@cache
def _schema() -> Any:
    from pydantic import Field, PositiveFloat, PositiveInt, StrictBool, StrictStr, create_model

    rope_fields: dict[str, Any] = {
        "rope_type": (StrictStr | None, None),
        "type": (StrictStr | None, None),
        "original_max_position_embeddings": (PositiveInt | None, None),
        **{k: (PositiveFloat | None, None) for k in _ROPE_FLOATS},
    }
    rope = create_model("HFRopeSchema", __config__=strict_config(extra="allow"), **rope_fields)
    fields: dict[str, Any] = {
        **{k: (PositiveInt | None, None) for k in _INTS},
        **{k: (int | None, Field(None, ge=0)) for k in _NON_NEGATIVE_INTS},
        **{k: (PositiveFloat | None, None) for k in _FLOATS},
        **{k: (StrictBool | None, None) for k in _BOOLS},
        **{k: (StrictStr | None, None) for k in _STRINGS},
        "rope_scaling": (rope | None, None),
        "rope_parameters": (rope | None, None),
        "layer_types": (list[StrictStr] | None, None),
    }
    return create_model("HFConfigSchema", __config__=strict_config(extra="allow"), **fields)


def check_hf_config(hf: Any, source: str = "HF config") -> None:
    """Raise ConfigError naming the field when `hf` does not fit the fields the families read."""
    if not isinstance(hf, dict):
        raise ConfigError(f"{source} must be a JSON object, got {type(hf).__name__}.")
    fix = "Fix that field in config.json (sizes are integers, epsilons finite numbers, switches true/false)."
    check(_schema(), hf, source=source, error=ConfigError, fix=fix)
