"""Bad input to the recorder: each refusal is a WorkbenchError that names the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import workbench as wb
from workbench.errors import RecorderError, WorkbenchError
from workbench.training import RecorderConfig, RunRecorder
from workbench.training.triggers import RobustWindow, Triggers


@pytest.mark.parametrize("bad", [dict(attention_every=-1), dict(loss_every=1.5), dict(grad_norm_every=True),
                                 dict(flush_every=0), dict(window=0), dict(spike_z=float("nan")),
                                 dict(doctor_checks=["nonfinite"])])
def test_a_bad_config_is_refused(bad: dict) -> None:
    with pytest.raises(RecorderError, match="RecorderConfig") as err:
        RecorderConfig(**bad)
    assert isinstance(err.value, WorkbenchError)


def test_a_model_that_is_not_a_module_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RecorderError, match="nn.Module.*Pass the module you train"):
        RunRecorder(lambda x: x, tmp_path / "run.wbrun")  # type: ignore[arg-type]
    assert not (tmp_path / "run.wbrun").exists()


def _model_and_step(tmp_path: Path, **kwargs) -> tuple[RunRecorder, object]:
    torch.manual_seed(0)
    model = wb.TransformerLM(wb.ModelConfig())
    ids = torch.randint(0, 256, (1, 6))

    def closure() -> torch.Tensor:
        model.zero_grad()
        loss = model(ids).logsumexp(-1).mean()
        loss.backward()
        return loss
    return RunRecorder(model, tmp_path / "run.wbrun", **kwargs), closure


def test_a_predicate_that_raises_names_the_fix(tmp_path: Path) -> None:
    rec, closure = _model_and_step(tmp_path, predicate=lambda step, scalars: scalars["nope"] > 1)
    with pytest.raises(RecorderError, match=r"predicate raised KeyError.*scalars\.get\(name\)"):
        rec.step(closure)
    rec.close()


def test_a_closed_recorder_and_a_bad_closure_are_refused(tmp_path: Path) -> None:
    rec, closure = _model_and_step(tmp_path)
    with pytest.raises(RecorderError, match="must return the loss"):
        rec.step(lambda: None)
    with pytest.raises(RecorderError, match="closure"):
        rec.step(3.0)  # type: ignore[arg-type]
    rec.close()
    with pytest.raises(RecorderError, match="start a new RunRecorder"):
        rec.step(closure)
    with pytest.raises(RecorderError, match="Optimizer"):
        RunRecorder(torch.nn.Linear(2, 2), tmp_path / "other.wbrun", optimizer="adam")  # type: ignore[arg-type]


def test_a_foreign_file_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(wb.RunFileError, match="left alone"):
        RunRecorder(torch.nn.Linear(2, 2), path, overwrite=True)
    assert path.read_bytes() == b"\x00" * 64


def test_spikes_are_judged_by_median_and_mad() -> None:
    w = RobustWindow(50, 20)
    for i in range(30):
        w.push(2.0 + 0.01 * (i % 5))  # median 2.02, MAD 0.01
    assert w.zscore(2.05) == pytest.approx(0.03 / (1.4826 * 0.01))
    t = Triggers(RecorderConfig(min_history=20), None)
    fired = [t.check(s, {"loss": 2.0 + 0.01 * (s % 5) + (5.0 if s == 40 else 0.0)}, {}) for s in range(60)]
    assert [s for s, e in enumerate(fired) if e] == [40] and fired[40][0].kind == "loss_spike"
    t2 = Triggers(RecorderConfig(min_history=20), None)
    out = [t2.check(s, {}, {"b.h0": 0.1 if s == 9 else 2.0 + 0.01 * (s % 3)}) for s in range(12)]
    assert [s for s, e in enumerate(out) if e] == [9] and out[9][0].kind == "entropy_collapse"
