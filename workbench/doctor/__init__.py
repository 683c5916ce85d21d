"""The doctor: `diagnose(model)` runs behavioural probes for classic transformer implementation bugs
and returns a `Report` of `Finding`s (status, evidence numbers, pitfall, fix).

`catalogue()` names every registered check in catalogue order; `CHECK_NAMES` is the same tuple, read from
the registry each time it is looked up (a check registered after import is in it).
"""

from .diagnose import diagnose
from .registry import CHECKS, catalogue, unregister
from .report import Finding, Report

__all__ = ["CHECKS", "CHECK_NAMES", "Finding", "Report", "catalogue", "diagnose", "unregister"]


def __getattr__(name: str) -> tuple[str, ...]:
    if name == "CHECK_NAMES":
        return catalogue()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
