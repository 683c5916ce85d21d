"""The plain records a run file holds beside its metrics: the steps a trigger fired on and the replays saved.

Vectors travel as float64 little-endian byte strings (`encode` / `decode`), so a file written on one machine
reads the same on any other.
"""

from __future__ import annotations

import json
import sys
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

_LITTLE = sys.byteorder == "little"


def encode(values: Sequence[float]) -> bytes:
    """float64 little-endian bytes of `values`."""
    a = array("d", values)
    if not _LITTLE:
        a.byteswap()
    return a.tobytes()


def decode(data: bytes) -> list[float]:
    """The floats `encode` wrote."""
    a = array("d")
    a.frombytes(data)
    if not _LITTLE:
        a.byteswap()
    return a.tolist()


@dataclass(frozen=True)
class RunEvent:
    """A trigger that fired at `step`: `kind` is one of "nonfinite", "loss_spike", "grad_spike",
    "entropy_collapse", "logit_growth", "predicate"; `detail` says what was measured (a metric, a module, a
    head); `value` is the value that fired it."""

    step: int
    kind: str
    detail: str
    value: float


@dataclass(frozen=True)
class ReplayRecord:
    """A step re-run under a full trace before the optimizer consumed it.

    trace: path of the saved trace (`workbench.Trace.load(path)` reads it); first_module: the first module, in
    execution order, whose output went non-finite or out of range (None when every output stayed in range);
    findings: the doctor's numerics findings on the model as it was at that step, one dict per check
    (check, status, summary, evidence)."""

    step: int
    trace: str
    first_module: str | None
    findings: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_row(cls, step: int, trace: str, first_module: str | None, findings: str) -> ReplayRecord:
        return cls(int(step), trace, first_module, json.loads(findings))
