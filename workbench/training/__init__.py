"""Watching a training run: `RunRecorder` records cheap per-step metrics of any nn.Module's training loop into
a run file (`workbench.runs`), fires triggers on anomalies, and replays a triggering step under a full trace
with the doctor's numerics checks, leaving the run exactly as it would have been. `RecorderCallback` does
the same inside transformers' Trainer."""

from typing import Any

from .config import NUMERICS_CHECKS, RecorderConfig
from .recorder import RunRecorder


def __getattr__(name: str) -> Any:
    """`RecorderCallback` loads transformers, so it is imported on first use (PEP 562)."""
    if name == "RecorderCallback":
        from .trainer import RecorderCallback

        return RecorderCallback
    raise AttributeError(f"module 'workbench.training' has no attribute {name!r}")


__all__ = ["NUMERICS_CHECKS", "RecorderCallback", "RecorderConfig", "RunRecorder"]
