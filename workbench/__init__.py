"""workbench: an interactive debugging workbench for transformer implementations in PyTorch.

The public API is re-exported here; everything else is internal. The figure and widget layers
(`viz`, `widgets`, and the names they export) load on first use, so scripts that only build, trace or
generate (a training job, a GPU benchmark) never import plotly or ipywidgets. `views` registers, per record
type, the view that shows it as HTML (see `workbench.display`); each view loads on first display.
"""

import importlib
from typing import Any

from . import distributed, doctor, models, views
from .capture import GradientHistory, Trace, trace
from .compare import Comparison, compare
from .errors import (
    CaptureError,
    CompareError,
    ConfigError,
    CorruptFileError,
    DoctorError,
    GenerationError,
    InputError,
    InterventionError,
    LoadError,
    MissingDependencyError,
    ModelContractError,
    OutputPathError,
    RecorderError,
    RunFileError,
    UnsafeFormatError,
    UnsupportedModelError,
    WeightMismatchError,
    WorkbenchError,
)
from .generation import GenerationOutput, GenerationRequest, GenerationSession, StepRecord, generate
from .interventions import LogitLens, logit_lens
from .io.gguf import load_gguf, read_gguf
from .io.gguf_tokenizer import tokenizer_from_gguf
from .io.load import load_pretrained
from .io.load_tokenizer import load_tokenizer
from .io.report import LoadReport
from .io.save import save_pretrained
from .io.tokenizer import Tokenizer
from .lm.edits import Add, Apply, Edit, Knockout, MeanAblate, Replace, ReplaceHead, Scale, Zero, ZeroHead, edit
from .model import (
    PRESETS,
    CompiledModel,
    FastDecoder,
    HookPoint,
    KVCache,
    ModelConfig,
    RopeScaling,
    TransformerLM,
    compile_model,
)
from .runs import ReplayRecord, Retention, RunEvent, RunFile
from .training import RecorderConfig, RunRecorder

__version__ = "0.1.0"

views.register_views()  # each record type's HTML views, in `display`; a view module loads on first display

_LAZY = {  # public name -> (module, attribute or None for the module itself)
    "viz": ("workbench.viz", None),
    "widgets": ("workbench.widgets", None),
    **{name: ("workbench.viz", name) for name in ("report_html", "save_html", "save_png")},
    **{
        name: ("workbench.widgets", name)
        for name in ("AttentionView", "CompareView", "Dashboard", "GenerationStepper", "GradientFlow", "LayerInspector",
                     "LogitLensView", "MemoryPanel", "show")
    },
}


def __getattr__(name: str) -> Any:
    """Load `viz` / `widgets` names on first access (PEP 562)."""
    if name not in _LAZY:
        raise AttributeError(f"module 'workbench' has no attribute {name!r}")
    module, attr = _LAZY[name]
    value = importlib.import_module(module)
    value = value if attr is None else getattr(value, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AttentionView",
    "CompareView",
    "Dashboard",
    "GenerationStepper",
    "GradientFlow",
    "LayerInspector",
    "LogitLensView",
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
    "Add",
    "Apply",
    "Edit",
    "Knockout",
    "MeanAblate",
    "Replace",
    "ReplaceHead",
    "Scale",
    "Zero",
    "ZeroHead",
    "edit",
    "CaptureError",
    "CompareError",
    "Comparison",
    "compare",
    "ConfigError",
    "CorruptFileError",
    "DoctorError",
    "ModelContractError",
    "GenerationError",
    "HookPoint",
    "InputError",
    "InterventionError",
    "KVCache",
    "LoadError",
    "LoadReport",
    "LogitLens",
    "MissingDependencyError",
    "ModelConfig",
    "OutputPathError",
    "RopeScaling",
    "Tokenizer",
    "TransformerLM",
    "UnsafeFormatError",
    "UnsupportedModelError",
    "GenerationOutput",
    "GenerationRequest",
    "GenerationSession",
    "GradientHistory",
    "StepRecord",
    "generate",
    "Trace",
    "RecorderConfig",
    "RecorderError",
    "ReplayRecord",
    "Retention",
    "RunEvent",
    "RunFile",
    "RunFileError",
    "RunRecorder",
    "distributed",
    "doctor",
    "load_gguf",
    "logit_lens",
    "load_pretrained",
    "load_tokenizer",
    "models",
    "read_gguf",
    "save_pretrained",
    "tokenizer_from_gguf",
    "trace",
    "WeightMismatchError",
    "WorkbenchError",
]
