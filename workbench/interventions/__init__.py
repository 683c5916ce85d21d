"""Interventions on any causal LM, built on the interception layer (`workbench.lm.intercept`): activation
patching sweeps and the logit lens, with their records. The edits themselves live in `workbench.lm`."""

from .lens import LogitLens, ResidualStream, logit_lens
from .readout import LogitTransform, Readout

__all__ = ["LogitLens", "LogitTransform", "Readout", "ResidualStream", "logit_lens"]
