"""`RecorderCallback`: the run recorder inside transformers' `Trainer`, through a `TrainerCallback`.

    trainer = Trainer(model, args, train_dataset=ds, callbacks=[wb.training.RecorderCallback("run.wbrun")])

The Trainer owns the loop, so the recorder cannot hand it a closure (`RunRecorder.step`): it opens the step's
observers at `on_step_begin` (before the first micro-batch's forward) and closes the step at
`on_pre_optimizer_step`, the one hook between the last backward and `optimizer.step()`: the gradients are final
there and the optimizer has not consumed them, which is when a replay must run.

What the Trainer path records differently from a plain loop:
- the loss is the model's own `loss` output, averaged over the step's micro-batches (as the Trainer logs it); a
  `compute_loss` override, `compute_loss_func` or label smoother that computes the loss outside the model is
  not seen, and the loss is then not recorded (the gradient metrics still are);
- the gradients are read after the Trainer's clipping (`max_grad_norm`, 1.0 by default, clips them in place
  before `on_pre_optimizer_step`): a clipped step records the clipped norms. Set `max_grad_norm=0` (and clip
  in your own `optimizer.step`) for the raw norms and a gradient-spike trigger that sees them;
- activations and the largest logit are those of the step's first micro-batch (gradient accumulation runs
  each block once per micro-batch).

What a replay re-runs: the model's forward on each micro-batch's exact inputs (caught at the model's root
call, `num_items_in_batch` included) and a backward of the model's own `loss` output, scaled as the Trainer
scales it; from the RNG state the step began with, with the step's gradients set aside and put back. It
cannot re-run a loss computed outside the model, nor, in a one-process view, DDP's gradient all-reduce under
a distributed Trainer: there the replayed gradients are this rank's own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback

from ..errors import RecorderError
from ..lm.intercept import Client, ModuleCall
from .config import RecorderConfig
from .recorder import RunRecorder
from .triggers import Predicate


class BatchCatcher(Client):
    """The model's root calls of one step: each micro-batch's (args, kwargs) and its `loss` output (0-d,
    detached, on the device; None when the model returned no loss)."""

    modules = [""]

    def __init__(self) -> None:
        self.calls: list[tuple[tuple, dict[str, Any]]] = []
        self.losses: list[torch.Tensor] = []

    def module_output(self, call: ModuleCall) -> None:
        self.calls.append((call.args, call.kwargs))
        loss = _model_loss(call.output)
        if loss is not None:
            self.losses.append(loss.detach())
        return None

    def loss(self) -> torch.Tensor | None:
        """The mean of the micro-batches' losses; None when a micro-batch had none."""
        if not self.losses or len(self.losses) != len(self.calls):
            return None
        return torch.stack(self.losses).mean()


class TrainerReplay:
    """The closure a replay calls: the model's forward and backward on the step's caught micro-batches."""

    def __init__(self, model: nn.Module, calls: list[tuple[tuple, dict[str, Any]]]) -> None:
        self.model, self.calls = model, calls

    def __call__(self) -> torch.Tensor:
        losses = []
        for args, kwargs in self.calls:
            loss = _model_loss(self.model(*args, **kwargs))
            if loss is None:  # not reached: a step without the model's loss is not replayed
                raise RecorderError("the model returned no loss on replay.")
            # The Trainer divides a per-batch mean by the micro-batch count; a loss normalised over the whole
            # accumulated batch (num_items_in_batch passed to the model) it leaves as it is.
            scale = 1.0 if "num_items_in_batch" in kwargs else 1.0 / len(self.calls)
            (loss * scale).backward()
            losses.append(loss.detach())
        return torch.stack(losses).mean()


class RecorderCallback(TrainerCallback):
    """Records a `transformers.Trainer` run into the run file at `path` (see the module docstring for what
    this path records and replays). The `RunRecorder` is built at `on_train_begin` from the Trainer's model
    and optimizer (`recorder`), and closed at `on_train_end`; its step numbers are the Trainer's
    `global_step`."""

    def __init__(self, path: str | Path, *, config: RecorderConfig | None = None,
                 predicate: Predicate | None = None, overwrite: bool = False) -> None:
        self.path, self.config, self.predicate, self.overwrite = Path(path), config, predicate, overwrite
        self.recorder: RunRecorder | None = None
        self._catcher: BatchCatcher | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, model: nn.Module | None = None,
                       optimizer: Any = None, **kwargs: Any) -> None:
        if model is None:
            raise RecorderError("RecorderCallback got no model from the Trainer; pass it to Trainer(model=...).")
        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper holds the torch optimizer
        self.recorder = RunRecorder(model, self.path, optimizer=inner if isinstance(inner, torch.optim.Optimizer)
                                    else None, config=self.config, predicate=self.predicate,
                                    overwrite=self.overwrite)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        rec = self._recorder()
        rec.step_index = max(rec.step_index, int(state.global_step))
        self._catcher = BatchCatcher()
        rec.begin_step(self._catcher)

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        rec, catcher = self._recorder(), self._catcher
        if catcher is None:
            return
        self._catcher = None
        loss = catcher.loss()
        replay = TrainerReplay(rec.inner, catcher.calls) if loss is not None else None
        rec.end_step(loss, replay)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.recorder is not None:
            self.recorder.close()

    def _recorder(self) -> RunRecorder:
        if self.recorder is None:
            raise RecorderError("RecorderCallback was called before on_train_begin; add it to the Trainer "
                                "(Trainer(..., callbacks=[RecorderCallback(path)])) rather than calling it.")
        return self.recorder


def _model_loss(out: object) -> torch.Tensor | None:
    """The `loss` a transformers model returns (a ModelOutput field or dict key), or None."""
    loss = out.get("loss") if isinstance(out, dict) else getattr(out, "loss", None)
    return loss if isinstance(loss, torch.Tensor) and loss.numel() == 1 else None
