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

Under torchrun (DDP or FSDP2) every rank builds its recorder with the same arguments and runs the same loop:
the values are reduced to the whole batch's (`Ranks`, `ParamNorms`), every rank fires the same triggers and
replays the same steps together, and rank 0 alone writes the run file and the replays' traces.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..distributed import reshard, unwrap
from ..distributed.shards import local_tensor, reduce_rows, shard_groups
from ..errors import RecorderError
from ..lm import ModelAdapter
from ..lm.intercept import Client, intercept
from ..runs import RunEvent, RunWriter
from .activations import ActivationProbe
from .attention import AttentionProbe
from .config import RecorderConfig
from .params import ParamNorms
from .ranks import Ranks
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
            ends = self._ends(adapter)
        finally:
            for m, training in flags:
                m.training = training
            rng.restore()
        reshard(model)  # FSDP2: the adapter's probe forward left the root's parameters unsharded
        self.tied = self._tied(*ends) if ends is not None else None

    @staticmethod
    def _ends(adapter: ModelAdapter) -> tuple[nn.Module, nn.Module] | None:
        """(input embedding, output head), or None for a module that is no causal LM."""
        try:
            emb, head = adapter.input_embedding(), adapter.output_head()
        except Exception:  # noqa: BLE001 - a module that is no causal LM (a probe cannot call it) has no pair
            return None
        return (emb, head) if emb is not None and head is not None else None

    @staticmethod
    def _tied(emb: nn.Module, head: nn.Module) -> tuple[str, torch.Tensor, torch.Tensor] | None:
        """("shared" | "separate", embedding weight, head weight) when both exist with the same shape."""
        we, wh = getattr(emb, "weight", None), getattr(head, "weight", None)
        if not isinstance(we, torch.Tensor) or not isinstance(wh, torch.Tensor) or we.shape != wh.shape:
            return None
        return ("shared" if we is wh else "separate", we, wh)


class RunRecorder:
    """Records a training loop into the run file at `path` (see the module docstring for the loop).

    model: any nn.Module (the workbench's, a transformers model, a hand-written one, or one wrapped in DDP or
    sharded by FSDP2 under torchrun); its blocks are found by `ModelAdapter.blocks()`. optimizer: read for
    the learning rate only. config: cadences, triggers, replay (`RecorderConfig`). predicate:
    `predicate(step, scalars) -> bool`, a trigger of your own (scalars are this step's host values: loss,
    grad_norm, max_logit, act_nonfinite, lr). overwrite: replace a run file
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
        self.inner, _ = unwrap(model)  # DDP's module: the names and blocks of the model itself
        self.config = c = config or RecorderConfig()
        self.ranks = Ranks()
        self.structure = _Structure(self.inner)
        self.norms = ParamNorms(self.inner)
        self.path = Path(path)
        self.writer: RunWriter | None = None  # rank 0's alone
        if self.ranks.main:
            self.writer = RunWriter(self.path, self._meta(), flush_every=c.flush_every,
                                    flush_seconds=c.flush_seconds, retention=c.retention, overwrite=overwrite)
            self._declare(self.writer)
        self.closed = False
        self.activations = ActivationProbe(self.structure.blocks, logits=c.logits_every > 0)
        self.attention = AttentionProbe(self.structure.blocks)
        self.triggers = Triggers(c, predicate)
        replay_dir = self.path.with_name(self.path.name + ".replays")  # RunWriter.replay_dir
        self.replayer = Replayer(model, replay_dir, self.path.parent, c.range_limit, c.doctor_checks, self.ranks)
        self.events: list[RunEvent] = []
        self.replayed: list[int] = []
        self.step_index = 0
        self._open: _Step | None = None  # the last step, until the optimizer has stepped (its update ratio)
        self._rec: _Step | None = None  # the step begun and not yet ended
        self._before: RngState | None = None
        self._probes: list[Client] = []
        self._scope = ExitStack()
        self._pending: list[_Step] = []
        self._last_flush = time.monotonic()

    # --- the loop -------------------------------------------------------------------------------
    def step(self, closure: Callable[[], Any]) -> Any:
        """Run one step's `closure` (zero the gradients, forward, loss, backward; return the loss) under the
        recorder's observers, record the step, and replay it under a full trace if a trigger fires. Returns
        what the closure returned; call `optimizer.step()` after it."""
        if not callable(closure):
            raise RecorderError(f"step() takes a closure that computes the loss and its gradients and returns "
                                f"the loss (as optimizer.step(closure) does), got {type(closure).__name__}.")
        self.begin_step()
        try:
            loss = closure()
        except BaseException:
            self._scope.close()
            self._rec = None
            raise
        if loss is None:
            self._scope.close()
            self._rec = None
            _loss_tensor(loss, self.step_index)  # raises: a closure must return the loss
        return self.end_step(loss, closure)

    def begin_step(self, *clients: Client) -> None:
        """Open a step: observers on, the RNG state kept for a replay. For loops that cannot hand over a
        closure (the transformers Trainer: `RecorderCallback`); `step(closure)` is this, the closure and
        `end_step`. `clients` are more observers for the step's scope (the Trainer's batch catcher)."""
        if self.closed:
            raise RecorderError(f"the recorder of {self.path} is closed; start a new RunRecorder to record again.")
        if self._rec is not None:
            raise RecorderError(f"step {self._rec.step} was begun and not ended; call end_step(loss) after its "
                                "backward, before the next begin_step().")
        self._finish_open()
        c, s = self.config, self.step_index
        self._before = RngState.capture() if self._may_replay(s) else None
        self._rec = _Step(s)
        probes: list[Client] = []
        if self.structure.blocks and (c.due(c.activations_every, s) or c.due(c.logits_every, s)):
            self.activations.reset()
            probes.append(self.activations)
        if self.structure.blocks and c.due(c.attention_every, s):
            self.attention.reset()
            probes.append(self.attention)
        self._probes = probes
        self._scope = ExitStack()
        self.attention.scope = self._scope.enter_context(intercept(self.inner, *probes, *clients))

    def end_step(self, loss: Any, replay: Callable[[], Any] | None = None) -> Any:
        """Close the step begun by `begin_step`, once its gradients are final and before the optimizer
        steps: record it, fire the triggers, and replay it by calling `replay` (a closure that recomputes
        the step's loss and gradients) if one fires. Returns `loss`."""
        rec = self._rec
        if rec is None:
            raise RecorderError("end_step() without begin_step(): call begin_step() before the step's forward.")
        self._scope.close()
        self._rec = None
        self._collect(rec)
        host = self._host_scalars(loss, rec)
        entropy = self._entropy(rec)
        events = self.triggers.check(rec.step, host, entropy)
        if self.writer is not None:
            for event in events:
                self.writer.add_event(event)
        self.events.extend(events)
        if events and self._before is not None and replay is not None:
            record = self.replayer.replay(rec.step, replay, self._before)
            if self.writer is not None and record is not None:
                self.writer.add_replay(record)
            self.replayed.append(rec.step)
        c = self.config
        if c.due(c.update_ratio_every, rec.step) and self.norms.params:
            self.norms.remember()
            rec.update_due = True
        self._open = rec
        self.step_index += 1
        return loss

    def _collect(self, rec: _Step) -> None:
        """The observers' device values of the step, into its record."""
        c, s = self.config, rec.step
        if c.due(c.activations_every, s) and self.activations in self._probes:
            stats = self.activations.stats()
            if stats is not None:  # (L, 3): rms, max |x|, non-finite count
                stats = self.ranks.activations(stats)
                rec.vectors.update({"act_rms/block": stats[:, 0], "act_absmax/block": stats[:, 1],
                                    "act_nonfinite/block": stats[:, 2]})
                rec.scalars["act_nonfinite"] = stats[:, 2].nansum()
        if c.due(c.logits_every, s) and self.activations.max_logit is not None and self.activations in self._probes:
            rec.scalars["max_logit"] = self.ranks.max(self.activations.max_logit)

    def _host_scalars(self, loss: Any, rec: _Step) -> dict[str, float]:
        """The step's scalars; the trigger scalars read to the host in one transfer."""
        c, s = self.config, rec.step
        if c.due(c.loss_every, s) and loss is not None:  # None: a Trainer step whose loss the model did not give
            rec.scalars["loss"] = self.ranks.mean(_loss_tensor(loss, s))
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
        ent, top = self.ranks.mean(ent), self.ranks.max(top)
        keys = [f"{b}.h{h}" for b in self.structure.blocks for h in range(ent.shape[1])]
        if self.writer is not None:
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
        if not pending or self.writer is None:
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
        if self.closed:
            return
        self.closed = True
        try:
            self._finish_open()
            self.flush()
        finally:
            if self.writer is not None:
                self.writer.close()

    def __enter__(self) -> RunRecorder:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- setup ----------------------------------------------------------------------------------
    def _meta(self) -> dict[str, Any]:
        c = self.config
        cfg = {f: getattr(c, f) for f in c.__dataclass_fields__ if f not in ("retention", "doctor_checks")}
        return {"model": type(self.inner).__name__, "world_size": self.ranks.world,
                "blocks": self.structure.blocks, "modules": self.norms.modules,
                "tied": self.structure.tied[0] if self.structure.tied else "none", "torch": torch.__version__,
                "config": {**cfg, "doctor_checks": list(c.doctor_checks),
                           "retention": {"recent": c.retention.recent, "budget": c.retention.budget}}}

    def _declare(self, w: RunWriter) -> None:
        for name in SCALARS:
            w.declare(name)
        if self.norms.modules:
            w.declare("grad_norm/module", self.norms.modules)
            w.declare("update_ratio/module", self.norms.modules)
        if self.structure.blocks:
            for name in ("act_rms/block", "act_absmax/block", "act_nonfinite/block"):
                w.declare(name, self.structure.blocks)

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"step {self.step_index}"
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
    """|W_head - W_embedding| / |W_embedding|, 0-d float32 on the device (0 for one shared tensor). FSDP2
    shards both alike: the squared norms of this rank's slices are summed over the shard group."""
    if emb is head:
        return torch.zeros((), device=local_tensor(emb).device)
    with torch.no_grad():
        e, h = local_tensor(emb.detach()), local_tensor(head.detach())
        sq = torch.stack([torch.linalg.vector_norm(h - e, dtype=torch.float32),
                          torch.linalg.vector_norm(e, dtype=torch.float32)]).square()  # (2,)
        reduce_rows([sq], [shard_groups(emb)])
        return sq[0].sqrt() / sq[1].sqrt().clamp_min(1e-30)

