"""`RunRecorder`: a training loop's per-step records, triggers and replays, written to one run file.

    rec = wb.RunRecorder(model, "run.wbrun", optimizer=opt)
    for x, y in batches:
        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
            loss.backward()
            return loss
        loss = rec.step(closure)   # forward + backward, observed; a triggering step is replayed here
        opt.step()
    rec.close()

Why a closure (torch's own `optimizer.step(closure)` idiom) and not `rec.after_backward(loss)`: a replay
must run the step's forward and backward again, with the same batch, before the optimizer consumes the
gradients. Only the code that computed the loss can do that, and a closure hands it over without the
recorder knowing the model's inputs, its loss or its batch layout. `rec.step` returns when the gradients
are final, so `opt.step()` (and clipping, scaling, logging) follow as usual.

What a step costs: the observers read each block's output and the root's logits (a few reductions each, on
the device); one `_foreach_norm` for the gradients; one host read of a (4,) vector of the trigger scalars
(loss, total grad norm, non-finite activations, max |logit|). Per-module vectors stay on the device and are
read in one batch per flush. Nothing draws from an RNG and nothing touches the optimizer's state.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import RecorderError
from ..lm import ModelAdapter
from ..lm.intercept import Client, intercept
from ..runs import RunEvent, RunWriter
from .activations import ActivationProbe
from .attention import AttentionProbe
from .config import RecorderConfig
from .params import ParamNorms
from .replay import Replayer
from .rng import RngState
from .triggers import Predicate, Triggers

SCALARS = ("loss", "lr", "grad_norm", "max_logit", "act_nonfinite", "tied_gap")
TRIGGER_SCALARS = ("loss", "grad_norm", "act_nonfinite", "max_logit")  # read to the host every step


class _Step:
    """One step's values until they are written: host floats, or tensors still on the device."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.scalars: dict[str, float | torch.Tensor] = {}
        self.vectors: dict[str, torch.Tensor] = {}
        self.update_due = False


class _Structure:
    """What the recorder needs to know of the model, read once: its blocks and its tied-weight pair."""

    def __init__(self, model: nn.Module) -> None:
        flags = [(m, m.training) for m in model.modules()]
        rng = RngState.capture()
        model.eval()  # a probe forward in train mode would draw dropout masks and move norm statistics
        try:
            adapter = ModelAdapter(model)
            found = adapter.blocks()
            self.blocks = [name for name, _ in found[1]] if found is not None else []
            self.tied = self._tied(adapter)
        finally:
            for m, training in flags:
                m.training = training
            rng.restore()

    @staticmethod
    def _tied(adapter: ModelAdapter) -> tuple[str, torch.Tensor, torch.Tensor] | None:
        """("shared" | "separate", embedding weight, head weight) when both exist with the same shape."""
        try:
            emb, head = adapter.input_embedding(), adapter.output_head()
        except Exception:  # noqa: BLE001 - a module that is no causal LM (a probe cannot call it) has no pair
            return None
        we, wh = getattr(emb, "weight", None), getattr(head, "weight", None)
        if not isinstance(we, torch.Tensor) or not isinstance(wh, torch.Tensor) or we.shape != wh.shape:
            return None
        return ("shared" if we is wh else "separate", we, wh)


class RunRecorder:
    """Records a training loop into the run file at `path` (see the module docstring for the loop).

    model: any nn.Module (the workbench's, a transformers model, a hand-written one); its blocks are found by
    `ModelAdapter.blocks()`. optimizer: read for the learning rate only. config: cadences, triggers, replay
    (`RecorderConfig`). predicate: `predicate(step, scalars) -> bool`, a trigger of your own (scalars are
    this step's host values: loss, grad_norm, max_logit, act_nonfinite, lr). overwrite: replace a run file
    already at `path` (a file that is not a run file is never replaced)."""

    def __init__(self, model: nn.Module, path: str | Path, *, optimizer: torch.optim.Optimizer | None = None,
                 config: RecorderConfig | None = None, predicate: Predicate | None = None,
                 overwrite: bool = False) -> None:
        if not isinstance(model, nn.Module):
            raise RecorderError(f"RunRecorder needs the model, a torch nn.Module; got {type(model).__name__}. "
                                "Pass the module you train (for a DDP or compiled wrapper, the module inside).")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise RecorderError(f"optimizer must be a torch.optim.Optimizer (read for its learning rate) or None, "
                                f"got {type(optimizer).__name__}.")
        if config is not None and not isinstance(config, RecorderConfig):
            raise RecorderError(f"config must be a RecorderConfig, got {type(config).__name__}; build one with "
                                "workbench.RecorderConfig(attention_every=..., ...).")
        if predicate is not None and not callable(predicate):
            raise RecorderError(f"predicate must be a function predicate(step, scalars) -> bool, got "
                                f"{type(predicate).__name__}.")
        self.model, self.optimizer = model, optimizer
        self.config = c = config or RecorderConfig()
        self.structure = _Structure(model)
        self.norms = ParamNorms(model)
        self.path = Path(path)
        self.writer = RunWriter(self.path, self._meta(), flush_every=c.flush_every, flush_seconds=c.flush_seconds,
                                retention=c.retention, overwrite=overwrite)
        self._declare()
        self.activations = ActivationProbe(self.structure.blocks, logits=c.logits_every > 0)
        self.attention = AttentionProbe(self.structure.blocks)
        self.triggers = Triggers(c, predicate)
        self.replayer = Replayer(model, self.writer.replay_dir, self.path.parent, c.range_limit, c.doctor_checks)
        self.events: list[RunEvent] = []
        self.replayed: list[int] = []
        self.step_index = 0
        self._open: _Step | None = None
        self._pending: list[_Step] = []
        self._last_flush = time.monotonic()

    # --- the loop -------------------------------------------------------------------------------
    def step(self, closure: Callable[[], Any]) -> Any:
        """Run one step's `closure` (zero the gradients, forward, loss, backward; return the loss) under the
        recorder's observers, record the step, and replay it under a full trace if a trigger fires. Returns
        what the closure returned; call `optimizer.step()` after it."""
        if self.writer.db is None:
            raise RecorderError(f"the recorder of {self.path} is closed; start a new RunRecorder to record again.")
        if not callable(closure):
            raise RecorderError(f"step() takes a closure that computes the loss and its gradients and returns "
                                f"the loss (as optimizer.step(closure) does), got {type(closure).__name__}.")
        self._finish_open()
        c, s = self.config, self.step_index
        before = RngState.capture() if self._may_replay(s) else None
        rec = _Step(s)
        loss = self._observed(closure, rec)
        host = self._host_scalars(loss, rec)
        entropy = self._entropy(rec)
        events = self.triggers.check(s, host, entropy)
        for event in events:
            self.writer.add_event(event)
        self.events.extend(events)
        if events and before is not None:
            self.writer.add_replay(self.replayer.replay(s, closure, before))
            self.replayed.append(s)
        if c.due(c.update_ratio_every, s) and self.norms.params:
            self.norms.remember()
            rec.update_due = True
        self._open = rec
        self.step_index += 1
        return loss

    def _observed(self, closure: Callable[[], Any], rec: _Step) -> Any:
        c, s = self.config, rec.step
        clients: list[Client] = []
        if self.structure.blocks and (c.due(c.activations_every, s) or c.due(c.logits_every, s)):
            self.activations.reset()
            clients.append(self.activations)
        if self.structure.blocks and c.due(c.attention_every, s):
            self.attention.reset()
            clients.append(self.attention)
        with intercept(self.model, *clients) as scope:
            self.attention.scope = scope
            loss = closure()
        if c.due(c.activations_every, s) and self.activations in clients:
            stats = self.activations.stats()
            if stats is not None:  # (L, 3): rms, max |x|, non-finite count
                rec.vectors.update({"act_rms/block": stats[:, 0], "act_absmax/block": stats[:, 1],
                                    "act_nonfinite/block": stats[:, 2]})
                rec.scalars["act_nonfinite"] = stats[:, 2].nansum()
        if c.due(c.logits_every, s) and self.activations.max_logit is not None and self.activations in clients:
            rec.scalars["max_logit"] = self.activations.max_logit
        return loss

    def _host_scalars(self, loss: Any, rec: _Step) -> dict[str, float]:
        """The step's scalars; the trigger scalars read to the host in one transfer."""
        c, s = self.config, rec.step
        if c.due(c.loss_every, s):
            rec.scalars["loss"] = _loss_tensor(loss, s)
        if c.due(c.grad_norm_every, s) and self.norms.params:
            per_module = self.norms.grad_norms()  # (M,)
            rec.vectors["grad_norm/module"] = per_module
            rec.scalars["grad_norm"] = per_module.square().sum().sqrt()
        tied = self.structure.tied
        if c.due(c.tied_every, s) and tied is not None:
            rec.scalars["tied_gap"] = _gap(tied[1], tied[2])
        if self.optimizer is not None and c.due(c.lr_every, s):
            rec.scalars["lr"] = float(self.optimizer.param_groups[0]["lr"])
        names = [n for n in TRIGGER_SCALARS if isinstance(rec.scalars.get(n), torch.Tensor)]
        host: dict[str, float] = {n: v for n, v in rec.scalars.items() if isinstance(v, float)}
        if names:
            first = rec.scalars[names[0]]
            assert isinstance(first, torch.Tensor)
            values = torch.stack([_t(rec.scalars[n]).to(first.device, torch.float64) for n in names]).tolist()
            host.update(zip(names, values, strict=True))
            rec.scalars.update(zip(names, values, strict=True))
        return host

    def _entropy(self, rec: _Step) -> dict[str, float]:
        """On attention steps: the per-head vectors, and their entropies on the host for the trigger."""
        c = self.config
        if not c.due(c.attention_every, rec.step):
            return {}
        got = self.attention.values()
        if got is None:
            return {}
        ent, top = got  # (L, H) each
        keys = [f"{b}.h{h}" for b in self.structure.blocks for h in range(ent.shape[1])]
        self.writer.declare("attn_entropy/head", keys)
        self.writer.declare("attn_max_score/head", keys)
        rec.vectors["attn_entropy/head"], rec.vectors["attn_max_score/head"] = ent.flatten(), top.flatten()
        values = ent.flatten().tolist()
        return {k: v for k, v in zip(keys, values, strict=True) if v == v}

    def _may_replay(self, step: int) -> bool:
        c = self.config
        if not c.replay or len(self.replayed) >= c.max_replays:
            return False
        return not self.replayed or step - self.replayed[-1] >= c.replay_cooldown

    # --- writing --------------------------------------------------------------------------------
    def _finish_open(self) -> None:
        """Complete the last step's record (its update ratio: the optimizer has stepped since) and queue it."""
        rec, self._open = self._open, None
        if rec is None:
            return
        if rec.update_due:
            rec.vectors["update_ratio/module"] = self.norms.update_ratios()
        self._pending.append(rec)
        c = self.config
        if len(self._pending) >= c.flush_every or time.monotonic() - self._last_flush >= c.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Write every queued step now: the device values of all of them read back in one transfer."""
        pending, self._pending = self._pending, []
        self._last_flush = time.monotonic()
        if not pending:
            return
        tensors = [t for r in pending for t in (*r.scalars.values(), *r.vectors.values())
                   if isinstance(t, torch.Tensor)]
        flat: list[float] = []
        if tensors:
            device = tensors[0].device
            flat = torch.cat([t.reshape(-1).to(device, torch.float64) for t in tensors]).tolist()
        at = 0
        for r in pending:
            scalars: dict[str, float] = {}
            vectors: dict[str, list[float]] = {}
            for name, v in r.scalars.items():
                if isinstance(v, torch.Tensor):
                    scalars[name], at = flat[at], at + 1
                else:
                    scalars[name] = v
            for name, t in r.vectors.items():
                vectors[name], at = flat[at:at + t.numel()], at + t.numel()
            self.writer.add_step(r.step, scalars, vectors)
        self.writer.flush()

    def close(self) -> None:
        """Write what is left (the last step's update ratio included) and close the run file; idempotent.
        Call it after the loop's last `optimizer.step()`."""
        if self.writer.db is None:
            return
        try:
            self._finish_open()
            self.flush()
        finally:
            self.writer.close()

    def __enter__(self) -> RunRecorder:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- setup ----------------------------------------------------------------------------------
    def _meta(self) -> dict[str, Any]:
        c = self.config
        cfg = {f: getattr(c, f) for f in c.__dataclass_fields__ if f not in ("retention", "doctor_checks")}
        return {"model": type(self.model).__name__, "blocks": self.structure.blocks, "modules": self.norms.modules,
                "tied": self.structure.tied[0] if self.structure.tied else "none", "torch": torch.__version__,
                "config": {**cfg, "doctor_checks": list(c.doctor_checks),
                           "retention": {"recent": c.retention.recent, "budget": c.retention.budget}}}

    def _declare(self) -> None:
        w = self.writer
        for name in SCALARS:
            w.declare(name)
        if self.norms.modules:
            w.declare("grad_norm/module", self.norms.modules)
            w.declare("update_ratio/module", self.norms.modules)
        if self.structure.blocks:
            for name in ("act_rms/block", "act_absmax/block", "act_nonfinite/block"):
                w.declare(name, self.structure.blocks)

    def __repr__(self) -> str:
        state = "closed" if self.writer.db is None else f"step {self.step_index}"
        return (f"RunRecorder({str(self.path)!r}, {state}, {len(self.events)} events, "
                f"{len(self.replayed)} replays)")


def _t(v: float | torch.Tensor) -> torch.Tensor:
    return v if isinstance(v, torch.Tensor) else torch.tensor(v)


def _loss_tensor(loss: Any, step: int) -> torch.Tensor:
    if isinstance(loss, torch.Tensor) and loss.numel() == 1:
        return loss.detach().reshape(())
    if isinstance(loss, (int, float)) and not isinstance(loss, bool):
        return torch.tensor(float(loss), dtype=torch.float64)
    raise RecorderError(f"the step's closure returned {type(loss).__name__} at step {step}; it must return the "
                        "loss (a one-element tensor or a number), as optimizer.step(closure) closures do.")


def _gap(emb: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
    """|W_head - W_embedding| / |W_embedding|, 0-d float32 on the device (0 for one shared tensor)."""
    if emb is head:
        return torch.zeros((), device=emb.device)
    with torch.no_grad():
        return (torch.linalg.vector_norm(head - emb, dtype=torch.float32)
                / torch.linalg.vector_norm(emb, dtype=torch.float32).clamp_min(1e-30))

