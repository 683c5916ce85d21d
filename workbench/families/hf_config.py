"""Translation between HF transformers `config.json` dicts and `ModelConfig`, through the registered families.

The family is found by `model_type` (reading) or by the config it holds (writing); its declared
fields are checked first, then its own translation runs.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from ..model.config import ModelConfig
from .hf_schema import check_hf_config
from .registry import for_config, for_hf_model_type


def config_from_hf(hf: dict[str, Any], *, source: str = "HF config") -> ModelConfig:
    """The ModelConfig of a registered family's HF config; any other model type is refused by name.

    The fields the family reads are checked against its declaration first (types, finiteness),
    naming `source` in errors.
    """
    if not isinstance(hf, dict):
        raise ConfigError(f"{source} must be a JSON object, got {type(hf).__name__}.")
    family = for_hf_model_type(hf.get("model_type"))
    check_hf_config(hf, family.hf_fields, source)
    try:
        return family.config_from_hf(hf)
    except KeyError as exc:
        raise ConfigError(
            f"the HF {family.hf_model_type} config lacks the required field {exc.args[0]!r}; "
            "check that config.json is complete."
        ) from None


def hf_architecture(config: ModelConfig) -> str:
    """The HF model_type of the family that holds this config exactly, or a ConfigError saying why none can."""
    return for_config(config).hf_model_type


def config_to_hf(config: ModelConfig, family: str | None = None) -> dict[str, Any]:
    """A `config.json` dict that transformers' AutoConfig reads back into the same model.

    family: the registered family to write it as (it must hold the config); default: see `for_config`.
    """
    chosen = for_config(config, family)
    return {"model_type": chosen.hf_model_type, "architectures": [chosen.hf_architecture]} | chosen.config_to_hf(
        config
    )
