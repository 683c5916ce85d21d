"""Translation between HF transformers `config.json` dicts and `ModelConfig`.

The knowledge of each family lives in `workbench.families` (one module per family); these are the
entry points existing callers use. `workbench.families` builds `ModelConfig`s, so it sits above this
package and is imported on call (listed in pyproject.toml's import contract).
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .config import ModelConfig


def config_from_hf(hf: dict[str, Any], *, source: str = "HF config") -> ModelConfig:
    """The ModelConfig of a registered family's HF config; any other model type is refused by name.

    The dict is checked against the HF schema first (types, finiteness), naming `source` in errors.
    """
    from ..families.hf_schema import check_hf_config
    from ..families.registry import for_hf_model_type

    check_hf_config(hf, source)
    family = for_hf_model_type(hf.get("model_type"))
    try:
        return family.config_from_hf(hf)
    except KeyError as exc:
        raise ConfigError(
            f"the HF {hf.get('model_type')} config lacks the required field {exc.args[0]!r}; "
            "check that config.json is complete."
        ) from None


def hf_architecture(config: ModelConfig) -> str:
    """The HF model_type of the family that holds this config exactly, or a ConfigError saying why none can."""
    from ..families.registry import for_config

    return for_config(config).hf_model_type


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
    """A `config.json` dict that transformers' AutoConfig reads back into the same model."""
    from ..families.registry import for_config

    family = for_config(config)
    return {"model_type": family.hf_model_type, "architectures": [family.hf_architecture]} | family.config_to_hf(
        config
    )
