"""workbench: an interactive debugging workbench for transformer implementations in PyTorch.

The public API is re-exported here; everything else is internal.
"""

from . import distributed, doctor, models, viz, widgets
from .capture import GradientHistory, Trace, trace
from .errors import (
    CaptureError,
    ConfigError,
    CorruptFileError,
    DoctorError,
    GenerationError,
    InputError,
    LoadError,
    MissingDependencyError,
    UnsafeFormatError,
    UnsupportedModelError,
    WeightMismatchError,
    WorkbenchError,
)
from .generation import GenerationOutput, GenerationSession, StepRecord, generate
from .io.gguf import load_gguf, read_gguf
from .io.gguf_tokenizer import tokenizer_from_gguf
from .io.load import load_pretrained
from .io.report import LoadReport
from .io.tokenizer import Tokenizer, load_tokenizer
from .model import PRESETS, CompiledModel, FastDecoder, HookPoint, KVCache, ModelConfig, TransformerLM, compile_model
from .viz import report_html, save_html, save_png
from .widgets import AttentionView, Dashboard, GenerationStepper, GradientFlow, LayerInspector, MemoryPanel, show

__version__ = "0.1.0"

__all__ = [
    "AttentionView",
    "Dashboard",
    "GenerationStepper",
    "GradientFlow",
    "LayerInspector",
    "MemoryPanel",
    "report_html",
    "save_html",
    "save_png",
    "show",
    "viz",
    "widgets",
    "PRESETS",
    "CompiledModel",
    "FastDecoder",
    "compile_model",
    "CaptureError",
    "ConfigError",
    "CorruptFileError",
    "DoctorError",
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
    "UnsupportedModelError",
    "GenerationOutput",
    "GenerationSession",
    "GradientHistory",
    "StepRecord",
    "generate",
    "Trace",
    "distributed",
    "doctor",
    "load_gguf",
    "load_pretrained",
    "load_tokenizer",
    "models",
    "read_gguf",
    "tokenizer_from_gguf",
    "trace",
    "WeightMismatchError",
    "WorkbenchError",
]
