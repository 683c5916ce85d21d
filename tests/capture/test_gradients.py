"""Gradient capture inside a trace and GradientHistory across steps."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import workbench
from workbench.capture import GradientHistory, trace


def test_param_grad_norms_match_autograd(mlp):
    x = torch.randn(4, 8)
    with trace(mlp, gradients=True) as tr:
        mlp(x).pow(2).sum().backward()
        expected = {n: p.grad.norm().item() for n, p in mlp.named_parameters()}
        mlp.zero_grad(set_to_none=True)  # zeroing inside the block does not hide the gradients
    got = {g.name: g.grad_norm for g in tr.gradients}
    assert got == pytest.approx(expected, rel=1e-5)
    assert tr.gradients[0].module == "0" and tr.gradients[0].shape == [16, 8]
    mod = tr.module_grad_norms()
    assert mod["0"] == pytest.approx(math.hypot(expected["0.weight"], expected["0.bias"]), rel=1e-5)


def test_update_ratio_with_sgd(mlp):
    opt = torch.optim.SGD(mlp.parameters(), lr=0.1)
    w0 = mlp[0].weight.detach().clone()
    with trace(mlp, gradients=True, optimizer=opt) as tr:
        mlp(torch.randn(4, 8)).sum().backward()
        g = mlp[0].weight.grad.clone()
        opt.step()
    rec = next(r for r in tr.gradients if r.name == "0.weight")
    assert rec.update_ratio == pytest.approx((0.1 * g).norm().item() / w0.norm().item(), rel=1e-4)
    assert len(opt._optimizer_step_pre_hooks) == 0  # hooks removed at exit


def test_nan_gradient_flagged():
    lin = nn.Linear(3, 1)
    with trace(lin, gradients=True) as tr:
        (lin(torch.randn(2, 3)) * float("nan")).sum().backward()
    w = next(r for r in tr.gradients if r.name == "weight")
    assert w.nonfinite and w.grad_nan == 3


def test_watch_optimizer_needs_gradients(mlp):
    with trace(mlp) as tr, pytest.raises(workbench.CaptureError, match="gradients=True"):
        tr.watch_optimizer(torch.optim.SGD(mlp.parameters(), lr=0.1))


def test_history_flags_vanishing_and_exploding():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 1))
    hist = GradientHistory(vanishing=1e-6, exploding=1e2)
    updates = []
    hist.on_append(lambda h: updates.append(len(h)))
    for step in range(3):
        model.zero_grad()
        model(torch.randn(8, 4)).sum().backward()
        model[0].weight.grad.mul_(1e-9)  # vanishing first layer
        model[0].bias.grad.mul_(1e-9)
        if step == 2:
            model[2].weight.grad.fill_(1e3)  # exploding at the last step
        hist.append(model)
    assert updates == [1, 2, 3] and hist.steps == [0, 1, 2]
    assert hist.modules == ["0", "1", "2"]
    kinds = {f["module"]: f["kind"] for f in hist.flags()}
    assert kinds == {"0": "vanishing", "2": "exploding"}
    assert hist.flagged() == {"0": [0, 1, 2], "2": [2]}
    df = hist.to_dataframe()
    assert df.shape == (3, 3)
    expected = math.hypot(model[1].weight.grad.norm().item(), model[1].bias.grad.norm().item())
    assert df.loc[2, "1"] == pytest.approx(expected, rel=1e-5)


def test_history_from_trace_and_max_steps(mlp):
    hist = GradientHistory(max_steps=2)
    for _ in range(3):
        with trace(mlp, gradients=True, shapes=False, stats=False, timing=False) as tr:
            mlp(torch.randn(2, 8)).sum().backward()
        hist.append(tr)
        mlp.zero_grad(set_to_none=True)
    assert hist.steps == [1, 2] and len(hist.norms) == 2
    assert hist.norms[-1][hist.modules.index("2")] == pytest.approx(tr.module_grad_norms()["2"])
