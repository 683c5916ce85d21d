"""`RecorderConfig`: what a run recorder measures, how often, and when it replays a step.

Cadences are in steps: a metric is measured at step s when `every > 0` and `s % every == 0` (0 turns it
off). The defaults come from `benchmarks/recorder.py` (see benchmarks/RESULTS.md): the per-step scalars that
cost little every step, the costly ones (attention: probabilities recomputed; the update ratio: a copy of
the weights; the tied-weight gap: a pass over the embedding) every few steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from ..errors import RecorderError
from ..runs import Retention

NUMERICS_CHECKS = ("score_overflow", "nonfinite", "gradients")  # the doctor's numerics checks run on a replay


@dataclass(frozen=True)
class RecorderConfig:
    """A run recorder's cadences, triggers and replay policy."""

    # --- cadences (steps; 0 = off) ---
    loss_every: int = 1  # the loss the step's closure returned
    lr_every: int = 1  # the first param group's learning rate (read, never written)
    grad_norm_every: int = 1  # gradient L2 norm per module and in total (one fused foreach_norm)
    update_ratio_every: int = 10  # |w_after - w_before| / |w_before| per module (a copy of the weights)
    activations_every: int = 1  # RMS, max |x| and non-finite count of each block's output
    logits_every: int = 1  # the largest |logit| of the model's output
    attention_every: int = 50  # entropy and max score per block and head (probabilities recomputed)
    tied_every: int = 10  # |W_head - W_embedding| / |W_embedding| when both are separate, same-shape weights
    # --- writing ---
    flush_every: int = 50  # steps buffered before a commit (a SIGKILL loses at most these)
    flush_seconds: float = 10.0  # or commit after this many seconds, whichever comes first
    retention: Retention = field(default_factory=Retention)  # how a long run is kept bounded on disk
    # --- triggers ---
    window: int = 100  # trailing steps whose median and MAD define a spike
    min_history: int = 20  # values a trailing window needs before it judges (attention: observations / 4)
    spike_z: float = 10.0  # robust z-score, (x - median) / (1.4826 MAD), above which loss or grad norm spikes
    entropy_collapse: float = 0.25  # a head's entropy below this fraction of its trailing median collapses
    logit_growth: float = 4.0  # max |logit| above this multiple of its trailing median has grown
    range_limit: float = 6.0e4  # |x| above this counts as out of range when naming the first bad module
    # --- replay ---
    replay: bool = True  # re-run a triggering step under a full trace before the optimizer consumes it
    max_replays: int = 10  # replays per run at most (a diverged run triggers every step)
    replay_cooldown: int = 100  # steps after a replay before another one
    doctor_checks: tuple[str, ...] = NUMERICS_CHECKS  # the doctor's checks run on the replayed model

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_every") or f.name in ("max_replays", "replay_cooldown"):
                _count(f.name, value, 0)
            elif f.name in ("window", "min_history"):
                _count(f.name, value, 1)
        for name in ("flush_seconds", "spike_z", "entropy_collapse", "logit_growth", "range_limit"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value <= 0:
                raise RecorderError(f"RecorderConfig.{name} must be a finite number > 0, got {value!r}.")
        if self.flush_every < 1:
            raise RecorderError(f"RecorderConfig.flush_every must be >= 1 (steps per commit), got {self.flush_every}.")
        if not isinstance(self.retention, Retention):
            raise RecorderError("RecorderConfig.retention must be a workbench.runs.Retention, got "
                                f"{type(self.retention).__name__}.")
        if not isinstance(self.doctor_checks, tuple) or not all(isinstance(c, str) for c in self.doctor_checks):
            raise RecorderError(f"RecorderConfig.doctor_checks must be a tuple of check names (see "
                                f"workbench.doctor.catalogue()), got {self.doctor_checks!r}.")

    def due(self, every: int, step: int) -> bool:
        """Whether a metric of cadence `every` is measured at `step`."""
        return every > 0 and step % every == 0


def _count(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        what = "a cadence in steps (0 turns the metric off)" if name.endswith("_every") else "a count of steps"
        raise RecorderError(f"RecorderConfig.{name} must be an integer >= {low}, {what}; got {value!r}. "
                            f"For example RecorderConfig({name}={max(low, 10)}).")
