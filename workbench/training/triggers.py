"""When a step deserves a replay: non-finite values, robust spikes, entropy collapse, logit growth, or the
user's own predicate.

Spikes are judged against the trailing window's median and MAD (median absolute deviation), not a fixed
threshold: a robust z-score (x - median) / (1.4826 MAD) is the number of standard deviations x sits above
a normal window, and one outlier in the window moves neither the median nor the MAD. A window judges only
once it holds `min_history` finite values.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Callable, Mapping

from ..errors import RecorderError
from ..runs import RunEvent
from .config import RecorderConfig

Predicate = Callable[[int, Mapping[str, float]], bool]


class RobustWindow:
    """The last `size` finite values of one series, and how far a new value sits above them."""

    def __init__(self, size: int, min_history: int) -> None:
        self.values: deque[float] = deque(maxlen=size)
        self.min_history = min_history

    def median(self) -> float | None:
        return statistics.median(self.values) if len(self.values) >= self.min_history else None

    def zscore(self, x: float) -> float | None:
        """(x - median) / (1.4826 MAD), or None while the window is short; a flat window (MAD 0) scales by
        1e-3 of |median| instead, so a constant series is not judged by its float noise."""
        med = self.median()
        if med is None:
            return None
        mad = statistics.median(abs(v - med) for v in self.values)
        scale = max(1.4826 * mad, 1e-3 * abs(med), 1e-12)
        return (x - med) / scale

    def push(self, x: float) -> None:
        if math.isfinite(x):
            self.values.append(x)


class Triggers:
    """Judges each step's host scalars (and, on attention steps, its entropies) into `RunEvent`s."""

    def __init__(self, config: RecorderConfig, predicate: Predicate | None) -> None:
        self.config, self.predicate = config, predicate
        self.windows = {k: RobustWindow(config.window, config.min_history)
                        for k in ("loss", "grad_norm", "max_logit")}
        self.entropy: dict[str, RobustWindow] = {}

    def check(self, step: int, scalars: Mapping[str, float], entropy: Mapping[str, float]) -> list[RunEvent]:
        """Every trigger that fires at `step`; `entropy` maps "block.hN" to that head's entropy."""
        events = [RunEvent(step, "nonfinite", name, scalars[name]) for name in ("loss", "grad_norm", "max_logit")
                  if name in scalars and not math.isfinite(scalars[name])]
        if scalars.get("act_nonfinite", 0.0) > 0:
            events.append(RunEvent(step, "nonfinite", "activations", scalars["act_nonfinite"]))
        c = self.config
        for name, kind in (("loss", "loss_spike"), ("grad_norm", "grad_spike")):
            z = self.windows[name].zscore(scalars[name]) if name in scalars else None
            if z is not None and z > c.spike_z:
                events.append(RunEvent(step, kind, f"{name} robust z {z:.1f}", scalars[name]))
        med = self.windows["max_logit"].median()
        if "max_logit" in scalars and med is not None and scalars["max_logit"] > c.logit_growth * med:
            events.append(RunEvent(step, "logit_growth", f"max |logit| {scalars['max_logit'] / med:.1f}x its "
                                   "trailing median", scalars["max_logit"]))
        events.extend(self._collapsed(step, entropy))
        if self.predicate is not None and self._ask(step, scalars):
            events.append(RunEvent(step, "predicate", "the recorder's predicate returned True", math.nan))
        for name, window in self.windows.items():
            if name in scalars:
                window.push(scalars[name])
        return events

    def _collapsed(self, step: int, entropy: Mapping[str, float]) -> list[RunEvent]:
        events = []
        for head, value in entropy.items():
            window = self.entropy.setdefault(head, RobustWindow(self.config.window,
                                                                max(2, self.config.min_history // 4)))
            med = window.median()
            if med is not None and med > 0 and value < self.config.entropy_collapse * med:
                events.append(RunEvent(step, "entropy_collapse", f"{head} entropy {value:.3g} nats vs trailing "
                                       f"median {med:.3g}", value))
            window.push(value)
        return events

    def _ask(self, step: int, scalars: Mapping[str, float]) -> bool:
        assert self.predicate is not None  # checked by the caller
        try:
            return bool(self.predicate(step, dict(scalars)))
        except Exception as err:
            raise RecorderError(
                f"the recorder's predicate raised {type(err).__name__}: {err} at step {step}. It is called as "
                f"predicate(step, scalars) with scalars {sorted(scalars)}; fix it to return True or False for "
                "every step (use scalars.get(name) for a metric measured only on some steps).") from err
