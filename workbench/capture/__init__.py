"""Capture: hook-based recording of shapes, timing, memory, activation stats, attention and gradients
on any `nn.Module`. Use `trace(model, ...)` as a context manager; see `trace.py`."""

from .attention import AttentionSelection
from .gradients import GradientHistory
from .hooks import detach_all
from .records import HEAD_METRICS, ActStats, AttentionRecord, ModuleRecord, ParamGradRecord, TensorMeta
from .report import COLUMNS
from .trace import Trace, trace

__all__ = [
    "COLUMNS",
    "HEAD_METRICS",
    "ActStats",
    "AttentionRecord",
    "AttentionSelection",
    "GradientHistory",
    "ModuleRecord",
    "ParamGradRecord",
    "TensorMeta",
    "Trace",
    "detach_all",
    "trace",
]
