"""The doctor: `diagnose(model)` runs behavioural probes for classic transformer implementation bugs
and returns a `Report` of `Finding`s (status, evidence numbers, pitfall, fix)."""

from .diagnose import CHECK_NAMES, diagnose
from .registry import CHECKS
from .report import Finding, Report

__all__ = ["CHECKS", "CHECK_NAMES", "Finding", "Report", "diagnose"]
