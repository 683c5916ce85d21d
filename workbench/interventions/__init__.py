"""Interventions on any causal LM, built on the interception layer (`workbench.lm.intercept`): activation
patching sweeps and the logit lens, with their records. The edits themselves live in `workbench.lm`."""

from .lens import LogitLens, ResidualStream, logit_lens
from .metrics import LogitDiff, Metric, TargetLogProb, logit_diff, target_logprob
from .patching import patch_heads, patch_positions, patched_logits
from .readout import LogitTransform, Readout
from .record import PatchingResult

__all__ = ["LogitDiff", "LogitLens", "LogitTransform", "Metric", "PatchingResult", "Readout", "ResidualStream",
           "TargetLogProb", "logit_diff", "logit_lens", "patch_heads", "patch_positions", "patched_logits",
           "target_logprob"]
