"""Re-running a triggering step under a full trace, before the optimizer consumes its gradients, and leaving
the run exactly as it was.

The step's closure runs again with the RNG state it started from (so dropout draws the same masks), its
parameters' `.grad` set aside (so the replay computes this step's gradients alone, into fresh tensors);
then the very `.grad` tensor objects of the first run are put back and the RNG state is set to where the
first run left it. The model's weights are not written; the optimizer is never touched. The trace names the
first module whose output went non-finite or out of range, in execution order, and the doctor's numerics
checks run on the model as it is at that step.

Under torchrun every rank replays (DDP's backward all-reduces, FSDP2's forward all-gathers); the ranks'
traces are gathered to rank 0, which alone saves the trace and returns the record.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..capture import Trace, trace
from ..doctor import diagnose
from ..errors import WorkbenchError
from ..runs import ReplayRecord
from .ranks import Ranks
from .rng import RngState


class Replayer:
    """Replays steps of one model's training into traces saved under `folder`."""

    def __init__(self, model: nn.Module, folder: Path, run_folder: Path, range_limit: float,
                 checks: tuple[str, ...], ranks: Ranks) -> None:
        self.model, self.folder, self.run_folder = model, folder, run_folder
        self.range_limit, self.checks, self.ranks = range_limit, checks, ranks

    def replay(self, step: int, closure: Callable[[], Any], before: RngState) -> ReplayRecord | None:
        """Trace `closure` again as it ran at `step` (from RNG state `before`) and save what it shows (None on
        a rank other than 0, which only takes part)."""
        after = RngState.capture()
        params = list(self.model.parameters())
        grads = [p.grad for p in params]
        try:
            for p in params:
                p.grad = None
            before.restore()
            # attention is read from the calls the model makes (SDPA stays SDPA): hooking the workbench model's
            # pattern sites would switch it to its eager path, whose reduced-precision numerics are not the step's
            with trace(self.model, gradients=True, attention=True, memory=True, attention_source="intercept") as tr:
                closure()
        finally:
            for p, g in zip(params, grads, strict=True):
                p.grad = g
            after.restore()
        kept = tr.gather(dst=0) if self.ranks.distributed else tr
        findings = self._findings()
        after.restore()  # the doctor restores the RNG too; this makes it the recorder's promise, not its
        if kept is None:
            return None
        self.folder.mkdir(exist_ok=True)
        path = kept.save(self.folder / f"step-{step:08d}.wbtrace")
        return ReplayRecord(step, str(path.relative_to(self.run_folder)), self.first_module(kept), findings)

    def first_module(self, tr: Trace) -> str | None:
        """The first module, in completion order (a child before its parent), whose output holds NaN or Inf
        or exceeds `range_limit` in magnitude; None when none does."""
        bad = tr.first_nonfinite()
        if bad is not None:
            return bad.name
        out = [r for r in tr.records if r.out_stats is not None and r.out_stats.absmax > self.range_limit]
        return min(out, key=lambda r: r.end_index).name if out else None

    def _findings(self) -> list[dict[str, Any]]:
        if not self.checks:
            return []
        try:
            report = diagnose(self.model, checks=list(self.checks), progress=False)
        except WorkbenchError as err:  # a model the doctor cannot drive: said in the record, not raised
            return [{"check": "doctor", "status": "n/a", "summary": str(err), "evidence": {}}]
        if report is None:
            return []
        return [{"check": f.check, "status": f.status, "summary": f.summary,
                 "evidence": json.loads(json.dumps(f.evidence, default=_plain))} for f in report]


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return str(value)
