"""Watching a training run: `RunRecorder` records cheap per-step metrics of any nn.Module's training loop into
a run file (`workbench.runs`), fires triggers on anomalies, and replays a triggering step under a full trace
with the doctor's numerics checks, leaving the run exactly as it would have been."""

from .config import NUMERICS_CHECKS, RecorderConfig
from .recorder import RunRecorder

__all__ = ["NUMERICS_CHECKS", "RecorderConfig", "RunRecorder"]
