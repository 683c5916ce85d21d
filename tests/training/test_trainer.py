"""The run recorder inside transformers' Trainer (`RecorderCallback`): the run file holds what the plain-loop
recorder gives for the same run (same model, optimizer and batches), and a replay leaves the run unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import workbench as wb
from workbench.training import RecorderConfig, RunRecorder

hfzoo = pytest.importorskip("hfzoo")
transformers = pytest.importorskip("transformers")

STEPS, B, T = 4, 2, 9
CONFIG = RecorderConfig(attention_every=2, update_ratio_every=1, tied_every=1, replay_cooldown=1,
                        doctor_checks=())


class _Rows(torch.utils.data.Dataset):
    """STEPS * B sequences of T tokens; labels are the inputs (the model shifts them)."""

    def __init__(self) -> None:
        self.ids = torch.randint(0, hfzoo.VOCAB, (STEPS * B, T), generator=torch.Generator().manual_seed(1))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def _model_and_opt() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = hfzoo.build("llama", attn="eager").train()
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def _trainer_run(path: Path, predicate=None) -> torch.nn.Module:
    model, opt = _model_and_opt()
    args = transformers.TrainingArguments(
        output_dir=str(path.parent / "out"), per_device_train_batch_size=B, max_steps=STEPS, max_grad_norm=0.0,
        train_sampling_strategy="sequential", report_to=[], save_strategy="no", logging_strategy="no",
        use_cpu=True, disable_tqdm=True, dataloader_num_workers=0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    callback = wb.training.RecorderCallback(path, config=CONFIG, predicate=predicate)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_Rows(), optimizers=(opt, sched),
                                   callbacks=[callback])
    trainer.train()
    assert callback.recorder is not None and callback.recorder.closed
    return model


def _plain_run(path: Path) -> torch.nn.Module:
    """The same run as a plain loop with the closure recorder: the Trainer's batches in its order, the loss
    normalised by the batch's label count as the Trainer's `num_items_in_batch` makes the model do."""
    model, opt = _model_and_opt()
    rows = _Rows().ids
    with RunRecorder(model, path, optimizer=opt, config=CONFIG) as rec:
        for s in range(STEPS):
            ids = rows[s * B:(s + 1) * B]

            def closure(ids: torch.Tensor = ids) -> torch.Tensor:
                opt.zero_grad()
                n = torch.tensor(ids[:, 1:].numel())
                loss = model(input_ids=ids, labels=ids, num_items_in_batch=n).loss
                loss.backward()
                return loss
            rec.step(closure)
            opt.step()
    return model


def test_trainer_run_file_equals_the_plain_loop_and_a_replay_changes_nothing(tmp_path: Path) -> None:
    plain = _plain_run(tmp_path / "plain.wbrun")
    hf = _trainer_run(tmp_path / "hf.wbrun", predicate=lambda s, _: s == 2)
    with wb.RunFile(tmp_path / "plain.wbrun") as a, wb.RunFile(tmp_path / "hf.wbrun") as b:
        assert a.steps() == b.steps() == list(range(STEPS))
        for name in ("loss", "lr", "grad_norm", "max_logit", "act_nonfinite", "tied_gap"):
            assert a.scalar(name) == b.scalar(name), name
        for name in ("grad_norm/module", "update_ratio/module", "act_rms/block", "act_absmax/block",
                     "attn_entropy/head", "attn_max_score/head"):
            assert a.vector(name) == b.vector(name), name
        assert b.scalar("lr")[1] == [1e-2] * STEPS
        assert [(e.step, e.kind) for e in b.events()] == [(2, "predicate")]
        (replay,) = b.replays()
        trace = wb.Trace.load(b.trace_path(replay))
        assert trace.gradients and trace.attention  # the step's forward and backward, traced
    for (name, p), q in zip(plain.named_parameters(), hf.parameters(), strict=True):
        assert torch.equal(p, q), name  # the replay at step 2 left the Trainer's run as the plain loop's


def test_replayed_gradients_are_the_steps_own(tmp_path: Path) -> None:
    """The replay's traced gradient norms are those the step computed (the Trainer's loss scaling kept)."""
    _trainer_run(tmp_path / "hf.wbrun", predicate=lambda s, _: s == 1)
    with wb.RunFile(tmp_path / "hf.wbrun") as run:
        trace = wb.Trace.load(run.trace_path(run.replays()[0]))
        _, keys, rows = run.vector("grad_norm/module")
        recorded = dict(zip(keys, rows[1], strict=True))
    traced: dict[str, float] = {}
    for g in trace.gradients:
        owner = g.name.rsplit(".", 1)[0]
        traced[owner] = traced.get(owner, 0.0) + g.grad_norm ** 2
    for owner, sq in traced.items():
        assert sq ** 0.5 == pytest.approx(recorded[owner], rel=1e-5), owner


def test_callback_before_train_begin_is_refused(tmp_path: Path) -> None:
    cb = wb.training.RecorderCallback(tmp_path / "run.wbrun")
    with pytest.raises(wb.RecorderError, match="before on_train_begin"):
        cb.on_step_begin(None, None, None)
