"""The run recorder under torchrun's model wrappers, two gloo ranks on the CPU: DDP and FSDP2 runs record the
global values (gradient norms per module and in total, the loss, activation statistics, update ratios) that
one process records on the whole batch, rank 0 alone writes, and every rank replays the same step."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
import record_worker
import torch
import torch.multiprocessing as mp

import workbench as wb

pytestmark = pytest.mark.slow  # spawns two ranks and a process group
WORLD, DEADLINE_S = 2, 240


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, list[dict]]:
    if not torch.distributed.is_available():
        pytest.skip("torch built without torch.distributed")
    out = tmp_path_factory.mktemp("record")
    ctx = mp.start_processes(record_worker.run, args=(WORLD, _free_port(), str(out)), nprocs=WORLD,
                             join=False, start_method="spawn")
    deadline = time.monotonic() + DEADLINE_S
    try:
        while not ctx.join(timeout=2):  # raises ProcessRaisedException if a rank failed
            if time.monotonic() > deadline:
                pytest.fail(f"distributed recorder did not finish in {DEADLINE_S}s (hung collective?)")
    finally:
        for proc in ctx.processes:  # only the processes this fixture started
            if proc.is_alive():
                proc.kill()
                proc.join(5)
    record_worker.train(record_worker.make_model(), out / "single.wbrun")  # one process, the whole batch
    return out, [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]


def _close(a: list[float], b: list[float], rel: float = 1e-5) -> bool:
    return a == pytest.approx(b, rel=rel, abs=1e-7)


@pytest.mark.parametrize("kind", ["ddp", "fsdp"])
def test_global_values_equal_one_process_on_the_whole_batch(runs, kind):
    out, _ = runs
    with wb.RunFile(out / "single.wbrun") as one, wb.RunFile(out / f"{kind}.wbrun") as dist:
        assert dist.steps() == one.steps() == list(range(record_worker.STEPS))
        assert dist.meta["world_size"] == "2"
        for name in ("grad_norm", "loss", "max_logit", "act_nonfinite", "tied_gap"):
            assert _close(dist.scalar(name)[1], one.scalar(name)[1]), name
        for name in ("grad_norm/module", "update_ratio/module", "act_rms/block", "act_absmax/block",
                     "attn_max_score/head", "attn_entropy/head"):
            steps, keys, rows = dist.vector(name)
            ref = one.vector(name)
            assert keys == ref[1] and steps == ref[0], name
            for got, want in zip(rows, ref[2], strict=True):
                assert _close(got, want, rel=1e-4 if name.startswith("update") else 1e-5), name


@pytest.mark.parametrize("kind", ["ddp", "fsdp"])
def test_rank_zero_writes_and_every_rank_replays_the_same_step(runs, kind):
    out, ranks = runs
    assert [r[kind]["writes"] for r in ranks] == [True, False]
    assert [r[kind]["replayed"] for r in ranks] == [[record_worker.REPLAY_AT]] * 2
    with wb.RunFile(out / f"{kind}.wbrun") as run:
        (replay,) = run.replays()
        trace = wb.Trace.load(run.trace_path(replay))
    assert trace.ranks == [0, 1]  # both ranks' records, gathered to rank 0
    assert trace.gradients
