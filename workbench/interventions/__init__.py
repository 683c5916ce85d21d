"""Interventions on any causal LM, built on the interception layer (`workbench.lm.intercept`): activation
patching sweeps and the logit lens, with their records. The edits themselves live in `workbench.lm`."""

from .metrics import LogitDiff, Metric, TargetLogProb, logit_diff, target_logprob
from .patching import patch_heads, patch_positions, patched_logits
from .record import PatchingResult

__all__ = ["LogitDiff", "Metric", "PatchingResult", "TargetLogProb", "logit_diff", "patch_heads", "patch_positions",
           "patched_logits", "target_logprob"]
