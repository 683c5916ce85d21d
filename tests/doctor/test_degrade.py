"""The doctor degrades honestly: a module it cannot drive is refused with a `DoctorError` before any check
runs, a device that does not exist is refused before anything moves, and a model whose declared context is
shorter than the probes gets n/a with the reason, never a failure."""

from __future__ import annotations

import pytest
import torch
from bugzoo.minigpt import MiniConfig, MiniGPT
from torch import nn

from workbench.doctor import diagnose
from workbench.errors import DoctorError, WorkbenchError


class Raising(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Linear(4, 4)

    def forward(self, input_ids, attention_mask=None):  # noqa: ANN001, ANN201
        raise KeyError("no such layer")


@pytest.mark.parametrize(("model", "said"), [
    (nn.Linear(4, 4), "RuntimeError"),  # not a causal LM: a LongTensor cannot go through a Linear
    (nn.Module(), "NotImplementedError"),  # no forward at all
    (Raising(), "KeyError"),  # a forward that raises its own error
])
def test_a_module_the_doctor_cannot_drive_is_refused_clearly(model, said):
    with pytest.raises(DoctorError, match="cannot drive this model") as err:
        diagnose(model, progress=False)
    assert said in str(err.value) and "(B, T, V)" in str(err.value)


@pytest.mark.parametrize(("device", "said"), [("bogus", "not a device name"), ("meta", "holds no values")]
                         + ([("cuda", "has no CUDA GPU")] if not torch.cuda.is_available() else []))
def test_a_device_that_cannot_be_used_is_refused_before_anything_moves(device, said):
    model = MiniGPT().eval()
    before = {n: p.device for n, p in model.named_parameters()}
    with pytest.raises(WorkbenchError, match=said):
        diagnose(model, device=device, progress=False)
    assert {n: p.device for n, p in model.named_parameters()} == before


def test_a_context_shorter_than_the_probes_gives_na_not_fail():
    torch.manual_seed(0)
    report = diagnose(MiniGPT(MiniConfig(max_seq_len=4)).eval(), progress=False)
    assert report.failed == []
    too_short = {f.check for f in report if f.status == "n/a" and "the model's context is 4" in f.summary}
    assert len(too_short) == 13  # every check whose probe is longer than 4 positions
    assert {"causal_leak", "positions", "kv_cache", "score_overflow", "gradients", "beam_search"} <= too_short
    # the checks that need no long probe still judge the model
    assert {f.check: f.status for f in report if f.check not in too_short} == {
        "config": "pass", "weights": "pass", "init_scale": "pass", "input_validation": "pass"}
