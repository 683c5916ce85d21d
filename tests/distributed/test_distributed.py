"""Two ranks on the CPU (gloo, 127.0.0.1): DDP and FSDP2 traces, gather, global gradient norms, diagnose.

One spawn for the whole module (dist_worker.run); each test reads what the ranks measured."""

from __future__ import annotations

import json
import math
import socket
import time

import dist_worker
import pytest
import torch
import torch.multiprocessing as mp

pytestmark = pytest.mark.slow  # spawns two ranks and a process group
WORLD, DEADLINE_S = 2, 240


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    if not torch.distributed.is_available():
        pytest.skip("torch built without torch.distributed")
    out = tmp_path_factory.mktemp("dist")
    ctx = mp.start_processes(dist_worker.run, args=(WORLD, _free_port(), str(out)), nprocs=WORLD,
                             join=False, start_method="spawn")
    deadline = time.monotonic() + DEADLINE_S
    try:
        while not ctx.join(timeout=5):  # raises ProcessRaisedException if a rank failed
            if time.monotonic() > deadline:
                pytest.fail(f"distributed worker did not finish in {DEADLINE_S}s (hung collective?)")
    finally:
        for proc in ctx.processes:  # only the processes this fixture started
            if proc.is_alive():
                proc.kill()
                proc.join(5)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-7)


@pytest.mark.parametrize("kind", ["ddp", "fsdp"])
def test_gathered_records_cover_both_ranks(ranks, kind):
    g = ranks[0][kind]["gathered"]
    assert g["ranks"] == [0, 1]
    assert g["record_ranks"] == [0, 1]
    per_rank = g["records_per_rank"]
    assert per_rank[0] == per_rank[1] > 0
    assert ranks[1][kind]["gathered_is_none"] and "gathered" not in ranks[1][kind]
    for r in range(WORLD):  # each rank tagged its own records, and knows the world size
        assert ranks[r][kind]["record_ranks"] == [r]
        assert ranks[r][kind]["meta"]["rank"] == r and ranks[r][kind]["meta"]["world_size"] == WORLD


@pytest.mark.parametrize("kind", ["ddp", "fsdp"])
def test_record_names_are_the_unwrapped_module_paths(ranks, kind):
    names = ranks[0][kind]["names"]
    assert set(names) <= set(ranks[0]["reference"]["names"])
    assert "blocks.0.attn.qkv" in names and not any(n.startswith("module") for n in names)
    assert ranks[0][kind]["meta"]["wrapper"] == {"ddp": "ddp", "fsdp": "fsdp2"}[kind]


def test_sharded_parameter_bytes_sum_to_the_unsharded_model(ranks):
    full = ranks[0]["reference"]["bytes"]
    mem = ranks[0]["fsdp"]["gathered"]["rank_memory"]
    assert [m["rank"] for m in mem] == [0, 1]
    assert sum(m["param_bytes"] for m in mem) == full
    assert all(0 < m["param_bytes"] < full and m["param_bytes_full"] == full for m in mem)
    assert sum(m["grad_bytes"] for m in mem) == full  # gradient shards match parameter shards
    # Uneven shards (a 1-element bias: rank 1 holds none of it) still add up.
    assert sum(r["uneven"]["local_bytes"] for r in ranks) == ranks[0]["uneven"]["full_bytes"]
    assert ranks[0]["uneven"]["local_bytes"] != ranks[1]["uneven"]["local_bytes"]


def test_ddp_replicas_hold_the_whole_model(ranks):
    full = ranks[0]["reference"]["bytes"]
    for m in ranks[0]["ddp"]["gathered"]["rank_memory"]:
        assert m["param_bytes"] == m["grad_bytes"] == full


@pytest.mark.parametrize("kind,attention", [("ddp", "False"), ("fsdp", "True")])
def test_activation_bytes_per_rank_match_a_single_process(ranks, kind, attention):
    ref = ranks[0]["reference"]["saved_bytes"][attention]
    for r in range(WORLD):  # FSDP2's all-gathered weights are parameters, not activations
        assert ranks[r][kind]["meta"]["rank_memory"]["activation_bytes"] == ref


@pytest.mark.parametrize("kind", ["ddp", "fsdp"])
def test_global_gradient_norm_equals_single_process(ranks, kind):
    ref = ranks[0]["reference"]
    for r in range(WORLD):
        got = ranks[r][kind]
        assert _close(got["trace_norm"], ref["norm"]), (got["trace_norm"], ref["norm"])
        assert _close(got["model_norm"], ref["norm"]), (got["model_norm"], ref["norm"])
        for name, value in ref["param_norms"].items():  # whole-parameter norms, not one rank's shard
            assert _close(got["param_norms"][name], value), (name, got["param_norms"][name], value)


def test_uneven_shards_reduce_norms_and_absmax(ranks):
    for r in range(WORLD):
        u = ranks[r]["uneven"]
        for name in u["ref_norms"]:
            assert _close(u["param_norms"][name], u["ref_norms"][name])
            assert _close(u["absmax"][name], u["ref_absmax"][name])


def test_gathered_attention_maps_equal_each_ranks_single_process_maps(ranks):
    got = ranks[0]["fsdp"]["gathered"]["attention"]
    ref = ranks[0]["attention_reference"]
    for r in range(WORLD):
        mine = [(module, m) for rank, module, m in got if rank == r]
        assert [m for m, _ in mine] == [m for m, _ in ref[str(r)]] and len(mine) == 2
        for (_, a), (_, b) in zip(mine, ref[str(r)]):
            assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=2e-3)
    assert not torch.allclose(torch.tensor(ref["0"][0][1]), torch.tensor(ref["1"][0][1]))  # halves differ


def test_gathered_trace_round_trips_through_save(ranks):
    assert ranks[0]["fsdp"]["reloaded"] == {"ranks": [0, 1], "records_per_rank":
                                            ranks[0]["fsdp"]["gathered"]["records_per_rank"]}


@pytest.mark.parametrize("kind", ["ddp", "fsdp"])
def test_no_hook_remains_on_either_rank(ranks, kind):
    for r in range(WORLD):
        got = ranks[r][kind]
        assert got["hooks_after"] == got["hooks_before"]  # FSDP2's own hooks stay, ours are gone
        assert ranks[r]["active_after"] == 0


@pytest.mark.parametrize("kind", ["diagnose_ddp", "diagnose_fsdp", "diagnose_plain"])
def test_diagnose_reports_once_on_rank_zero(ranks, kind):
    assert not ranks[0][kind]["is_none"] and ranks[1][kind]["is_none"]
    statuses = [(c, s) for c, s, _ in ranks[0][kind]["findings"]]
    assert [c for c, _ in statuses] == dist_worker.CHECKS
    assert all(s == "pass" for _, s in statuses), ranks[0][kind]["findings"]
    # the sharded model is diagnosed exactly as the plain one
    assert ranks[0][kind]["findings"] == ranks[0]["diagnose_plain"]["findings"]
