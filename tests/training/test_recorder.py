"""The run recorder on a real training loop: values against by-hand computations, the bitwise-equal trajectory
with replays, a planted NaN named at its module, and HF and hand-written models."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import workbench as wb
from workbench.training import RecorderConfig, RunRecorder

STEPS = 12


def _tiny(dropout: float = 0.0) -> wb.TransformerLM:
    torch.manual_seed(0)
    return wb.TransformerLM(wb.ModelConfig(dropout=dropout))


def _batches(n: int = STEPS, vocab: int = 256) -> torch.Tensor:
    return torch.randint(0, vocab, (n, 2, 9), generator=torch.Generator().manual_seed(1))


def _closure(model: nn.Module, opt: torch.optim.Optimizer, batch: torch.Tensor) -> Callable[[], torch.Tensor]:
    def closure() -> torch.Tensor:
        opt.zero_grad()
        out = model(batch[:, :-1])
        logits = out if isinstance(out, torch.Tensor) else out.logits
        loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        loss.backward()
        return loss
    return closure


def _train(model: nn.Module, recorder: Callable[[nn.Module, torch.optim.Optimizer], RunRecorder] | None,
           steps: int = STEPS) -> tuple[list[torch.Tensor], RunRecorder | None]:
    """Train with AdamW; dropout in the model and a torch.rand draw per step make the RNG stream matter."""
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rec = recorder(model, opt) if recorder is not None else None
    losses = []
    for batch in _batches(steps, 256):
        closure = _closure(model, opt, batch)
        loss = rec.step(closure) if rec is not None else closure()
        losses.append(loss.detach().clone())
        opt.step()
        torch.rand(1)  # the loop's own draw after the step: the stream must continue where it would have
    if rec is not None:
        rec.close()
    return losses, rec


def test_trajectory_is_bitwise_equal_with_recorder_and_replays(tmp_path: Path) -> None:
    torch.use_deterministic_algorithms(True)
    try:
        torch.manual_seed(5)
        plain, _ = _train(_tiny(dropout=0.1), None)
        plain_rng = torch.get_rng_state()
        config = RecorderConfig(attention_every=2, update_ratio_every=1, tied_every=1, replay_cooldown=1,
                                flush_every=4)
        torch.manual_seed(5)
        recorded, rec = _train(_tiny(dropout=0.1), lambda m, o: RunRecorder(
            m, tmp_path / "run.wbrun", optimizer=o, config=config, predicate=lambda s, _: s in (2, 5, 9)))
    finally:
        torch.use_deterministic_algorithms(False)
    assert rec is not None and rec.replayed == [2, 5, 9]
    assert torch.equal(torch.stack(plain), torch.stack(recorded))
    assert torch.equal(torch.get_rng_state(), plain_rng)
    with wb.RunFile(tmp_path / "run.wbrun") as run:
        assert run.scalar("loss")[1] == [float(x) for x in recorded]
        assert [r.step for r in run.replays()] == [2, 5, 9]
        tr = wb.Trace.load(run.trace_path(run.replays()[0]))
        assert tr.gradients and tr.attention and tr.records  # a full trace of the step
        assert {f["check"] for f in run.replays()[0].findings} == {"score_overflow", "nonfinite", "gradients"}


def test_values_match_a_by_hand_computation(tmp_path: Path) -> None:
    model = _tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    config = RecorderConfig(update_ratio_every=1, attention_every=1, replay=False)
    rec = RunRecorder(model, tmp_path / "run.wbrun", optimizer=opt, config=config)
    outputs: dict[str, torch.Tensor] = {}
    handles = [b.register_forward_hook(lambda m, a, o, n=f"blocks.{i}": outputs.__setitem__(n, o.detach()))
               for i, b in enumerate(model.blocks)]
    batch = _batches(1)[0]
    loss = rec.step(_closure(model, opt, batch))
    for h in handles:
        h.remove()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    with torch.no_grad():
        logits = model(batch[:, :-1])
    rec.close()
    run = wb.RunFile(tmp_path / "run.wbrun")
    _, keys, rows = run.vector("grad_norm/module")
    for key, got in zip(keys, rows[0], strict=True):
        want = torch.cat([g.flatten() for n, g in grads.items() if n.rsplit(".", 1)[0] == key]).double().norm()
        assert got == pytest.approx(float(want), rel=1e-5), key
    _, keys, rows = run.vector("update_ratio/module")
    for key, got in zip(keys, rows[0], strict=True):
        names = [n for n in grads if n.rsplit(".", 1)[0] == key]
        delta = torch.cat([(dict(model.named_parameters())[n].detach() - before[n]).flatten() for n in names])
        want = delta.norm() / torch.cat([before[n].flatten() for n in names]).norm()
        assert got == pytest.approx(float(want), rel=1e-4), key
    _, keys, rms = run.vector("act_rms/block")
    _, _, top = run.vector("act_absmax/block")
    for j, key in enumerate(keys):
        x = outputs[key]
        assert rms[0][j] == pytest.approx(float(x.pow(2).mean().sqrt()), rel=1e-5)
        assert top[0][j] == float(x.abs().max())
    assert run.scalar("loss")[1] == [float(loss.detach())]
    assert run.scalar("lr")[1] == [0.1]
    assert run.scalar("tied_gap")[1] == [0.0]  # the tiny preset ties its head to its embedding
    assert run.scalar("grad_norm")[1][0] == pytest.approx(
        float(torch.cat([g.flatten() for g in grads.values()]).double().norm()), rel=1e-6)  # float64 reference
    ent = run.to_dataframe("attn_entropy/head")
    assert ent.shape == (1, 2 * 4)
    assert ((ent.to_numpy() > 0) & (ent.to_numpy() <= math.log(8) + 1e-5)).all()  # T = 8 keys at most
    run.close()
    del logits


class _Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class _Blows(nn.Module):
    """A hand-written LM whose second block overflows when its scale is raised (an fp16-like overflow)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(32, 16)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(16, 16), nn.Tanh(), _Scaled()) for _ in range(3))
        self.head = nn.Linear(16, 32)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.emb(ids)
        for b in self.blocks:
            x = x + b(x)
        return self.head(x)


def test_a_planted_overflow_fires_and_names_the_first_module(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _Blows()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    rec = RunRecorder(model, tmp_path / "run.wbrun", optimizer=opt, config=RecorderConfig(doctor_checks=()))
    batches = torch.randint(0, 32, (6, 2, 7), generator=torch.Generator().manual_seed(0))
    for s, batch in enumerate(batches):
        model.blocks[1][2].scale = 1e39 if s == 4 else 1.0  # inf in float32
        rec.step(_closure(model, opt, batch))
        if s != 4:
            opt.step()
    rec.close()
    run = wb.RunFile(tmp_path / "run.wbrun")
    assert {(e.step, e.kind) for e in run.events()} >= {(4, "nonfinite")}
    assert {e.step for e in run.events()} == {4}
    (replay,) = run.replays()
    assert replay.step == 4 and replay.first_module == "blocks.1.2"
    _, keys, bad = run.vector("act_nonfinite/block")
    assert keys == ["blocks.0", "blocks.1", "blocks.2"] and bad[4][0] == 0 and bad[4][1] > 0


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_hf_models_are_recorded(tmp_path: Path, attn: str) -> None:
    hfzoo = pytest.importorskip("hfzoo")
    model = hfzoo.build("llama", attn=attn)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    rec = RunRecorder(model, tmp_path / "run.wbrun", optimizer=opt,
                      config=RecorderConfig(attention_every=1, replay=False))
    for batch in _batches(3, hfzoo.VOCAB):
        rec.step(_closure(model, opt, batch))
        opt.step()
    rec.close()
    run = wb.RunFile(tmp_path / "run.wbrun")
    assert run.steps() == [0, 1, 2]
    assert run.vector("act_rms/block")[1] == ["model.layers.0", "model.layers.1"]
    ent = run.to_dataframe("attn_entropy/head")
    assert ent.shape == (3, 2 * 4) and not ent.isna().any().any()
    assert len(run.scalar("max_logit")[1]) == 3


def test_a_replay_computes_attention_as_the_step_did(tmp_path: Path) -> None:
    """Under bfloat16 autocast the workbench model's SDPA and eager attention differ beyond rounding; the replayed
    forward must run the step's own path (SDPA), so its loss is bitwise the step's, and still record attention."""
    model = _tiny()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    batch = _batches(1)[0]
    losses: list[torch.Tensor] = []

    def closure() -> torch.Tensor:
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())
        loss.backward()
        losses.append(loss.detach().clone())
        return loss

    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model.set_attention_impl("eager")
        eager = model(batch[:, :-1]).float()
        model.set_attention_impl("sdpa")
        sdpa = model(batch[:, :-1]).float()
    assert not torch.equal(eager, sdpa)  # the two paths are told apart at this precision
    rec = RunRecorder(model, tmp_path / "run.wbrun", optimizer=opt, predicate=lambda s, _: s == 0)
    rec.step(closure)
    rec.close()
    assert rec.replayed == [0] and len(losses) == 2
    assert torch.equal(losses[0], losses[1])
    with wb.RunFile(tmp_path / "run.wbrun") as run:
        assert wb.Trace.load(run.trace_path(run.replays()[0])).attention
