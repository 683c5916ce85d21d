"""workbench: an interactive debugging workbench for transformer implementations in PyTorch.

The public API is re-exported here; everything else is internal.
"""

from .errors import (
    CaptureError,
    ConfigError,
    CorruptFileError,
    GenerationError,
    InputError,
    LoadError,
    MissingDependencyError,
    UnsafeFormatError,
    WeightMismatchError,
    WorkbenchError,
)
from .io.report import LoadReport
from .io.tokenizer import Tokenizer
from .model import PRESETS, HookPoint, KVCache, ModelConfig, TransformerLM

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "CaptureError",
    "ConfigError",
    "CorruptFileError",
    "GenerationError",
    "HookPoint",
    "InputError",
    "KVCache",
    "LoadError",
    "LoadReport",
    "MissingDependencyError",
    "ModelConfig",
    "Tokenizer",
    "TransformerLM",
    "UnsafeFormatError",
    "WeightMismatchError",
    "WorkbenchError",
]
