"""The transformer the workbench instruments: config, layers, attention, cache and model."""

from .cache import KVCache
from .config import PRESETS, ModelConfig
from .layers import HookPoint
from .transformer import TransformerLM

__all__ = ["PRESETS", "HookPoint", "KVCache", "ModelConfig", "TransformerLM"]
