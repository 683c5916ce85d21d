"""The transformer the workbench instruments: config, layers, attention, cache and model."""

from .cache import KVCache
from .compile import CompiledModel, compile_model
from .config import ModelConfig, RopeScaling
from .decoder import FastDecoder
from .layers import HookPoint
from .presets import PRESETS
from .transformer import TransformerLM

__all__ = [
    "PRESETS", "CompiledModel", "FastDecoder", "HookPoint", "KVCache", "ModelConfig", "RopeScaling", "TransformerLM",
    "compile_model",
]
