"""Bad input to a patching sweep: each gets an InterventionError that names the problem and the fix, and the
model is left as it was."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import workbench as wb
from workbench.errors import InterventionError, WorkbenchError
from workbench.interventions.metrics import logit_diff
from workbench.interventions.patching import patch_heads, patch_positions, patched_logits

CLEAN = torch.tensor([5, 9, 3, 7, 11, 2])
CORRUPTED = torch.tensor([5, 9, 30, 7, 11, 2])
METRIC = logit_diff(12, 13)


@pytest.fixture(scope="module")
def net() -> nn.Module:
    torch.manual_seed(0)
    return wb.TransformerLM(wb.ModelConfig.preset("tiny")).eval()


@pytest.mark.parametrize("call, message", [
    (lambda m: patch_positions(m, CLEAN, CORRUPTED[:-1], METRIC), r"same length.*6 and 5 tokens.*Pad or reword"),
    (lambda m: patch_positions(m, CLEAN, CORRUPTED, METRIC, site="attention_out"),
     r"has no module 'attention_out'; its children are: .*attn.*or use one of resid, attn, mlp, heads"),
    (lambda m: patch_positions(m, CLEAN, CORRUPTED, METRIC, positions=[6]),
     r"position 6 is outside the 6 positions of the input; give positions in \[-6, 6\)"),
    (lambda m: patch_positions(m, CLEAN, CORRUPTED, METRIC, positions=[-7]), r"position -7 is outside"),
    (lambda m: patch_positions(m, CLEAN, CORRUPTED, METRIC, layers=[2]),
     r"layer 2 is outside the 2 layers; give layers in \[-2, 2\)"),
    (lambda m: patch_heads(m, CLEAN, CORRUPTED, METRIC, heads=[4]), r"head 4 is outside the 4 heads"),
    (lambda m: patch_heads(m, CLEAN, CORRUPTED, METRIC, layers=5), r"layer 5 is outside the 2 layers"),
    (lambda m: patch_positions(m, CLEAN, CORRUPTED, lambda x: x[:, -1, 0].sum()),
     r"the metric returned a torch.float32 tensor shaped \(\) .* a tensor shaped \(1,\)"),
    (lambda m: patch_positions(m, CLEAN, CORRUPTED, lambda x: 0.5), r"the metric returned float"),
    (lambda m: patch_positions(m, CLEAN[None].expand(2, -1), CORRUPTED, METRIC), r"one sequence.*\(2, 6\)"),
    (lambda m: patch_positions(m, CLEAN.float(), CORRUPTED, METRIC), r"tensor of token ids"),
    (lambda m: patch_positions(m, CLEAN, CORRUPTED, METRIC, site="heads"), r"use patch_heads"),
    (lambda m: patch_positions(m, CLEAN, CORRUPTED, METRIC, tokens=["a"]), r"1 labels for 6 positions"),
    (lambda m: patched_logits(m, CLEAN, CORRUPTED, 0, 4, site="heads"), r"head 4 is outside the 4 heads"),
])
def test_bad_input_is_refused_with_the_fix(net, call, message):
    with torch.no_grad():
        before = net(CLEAN[None])
    with pytest.raises(InterventionError, match=message) as info:
        call(net)
    assert isinstance(info.value, WorkbenchError)
    assert not any(m._forward_hooks or m._forward_pre_hooks or "forward" in m.__dict__ for m in net.modules())
    with torch.no_grad():
        assert torch.equal(net(CLEAN[None]), before)


def test_a_module_without_an_output_projection_cannot_patch_heads():
    class NoProjection(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList(nn.ModuleDict({"attn": nn.Linear(4, 8)}) for _ in range(2))

    from workbench.interventions.sites import find_site
    from workbench.lm.adapter import ModelAdapter

    with pytest.raises(InterventionError, match=r"has no site 'heads'.*children are: attn"):
        find_site(ModelAdapter(NoProjection()), "heads")
