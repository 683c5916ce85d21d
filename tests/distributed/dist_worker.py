"""The body each of the 2 ranks runs (gloo, CPU, 127.0.0.1). One spawn serves the whole test module:
every scenario writes its measurements to rank<r>.json, and the tests assert on them in the parent."""

from __future__ import annotations

import copy
import json
import os
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

B, T, SEED = 4, 8, 0
CHECKS = ["config", "causal_leak", "padding_mask", "positions", "nonfinite"]


def hook_count(model: nn.Module) -> int:
    """Module hooks, process-wide module hooks and parameter gradient hooks."""
    glob = nn.modules.module
    own = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    grads = sum(len(p._post_accumulate_grad_hooks or {}) for p in model.parameters())
    return own + grads + len(glob._global_forward_hooks) + len(glob._global_forward_pre_hooks)


def make_model() -> nn.Module:
    from workbench.model import ModelConfig, TransformerLM

    torch.manual_seed(SEED)
    return TransformerLM(ModelConfig.preset("tiny"))


def batch() -> torch.Tensor:
    return torch.randint(0, 256, (B, T), generator=torch.Generator().manual_seed(1))


def lm_loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    logits = model(ids)  # (B, T, V)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())


def reference(ids: torch.Tensor) -> dict:
    """Single process, whole batch: the numbers the distributed runs must reproduce."""
    import workbench
    from workbench.distributed import global_grad_norm

    model = make_model()
    lm_loss(model, ids).backward()
    norms = {n: p.grad.norm().item() for n, p in model.named_parameters()}
    saved = {}
    for attention in (False, True):  # activation bytes of one rank's half batch, as one process
        with workbench.trace(model, memory=True, attention=attention) as tr:
            lm_loss(model, ids[: B // 2])
        saved[str(attention)] = tr.meta["saved_bytes"]
    return {"norm": global_grad_norm(model), "param_norms": norms, "saved_bytes": saved,
            "bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
            "names": [n for n, _ in model.named_modules()]}


def traced_step(model: nn.Module, ids: torch.Tensor, **kw) -> dict:
    import workbench
    from workbench.distributed import global_grad_norm

    before = hook_count(model)
    with workbench.trace(model, gradients=True, memory=True, **kw) as tr:
        lm_loss(model, ids).backward()
    out = {"hooks_before": before, "hooks_after": hook_count(model), "meta": tr.meta,
           "names": sorted({r.name for r in tr.records}), "record_ranks": sorted({r.rank for r in tr.records}),
           "trace_norm": global_grad_norm(tr), "model_norm": global_grad_norm(model),
           "param_norms": {g.name: g.grad_norm for g in tr.gradients}}
    gathered = tr.gather(dst=0)
    out["gathered_is_none"] = gathered is None
    if gathered is not None:
        out["gathered"] = {
            "ranks": gathered.ranks,
            "record_ranks": sorted({r.rank for r in gathered.records}),
            "records_per_rank": [len(gathered.for_rank(r).records) for r in gathered.ranks],
            "rank_memory": gathered.rank_memory().reset_index().to_dict("records"),
            "attention": [(a.rank, a.module, a.map.tolist()) for a in gathered.attention if a.map is not None],
        }
        out["gathered_trace"] = gathered
    return out


def attention_reference(ids: torch.Tensor) -> dict:
    """Per rank slice, attention maps of the unsharded model traced in one process."""
    import workbench

    model = make_model()
    maps = {}
    for r in range(2):
        with workbench.trace(model, attention=True) as tr:
            model(ids[r * 2:(r + 1) * 2])
        maps[r] = [(a.module, a.map.tolist()) for a in tr.attention]
    return maps


def run(rank: int, world: int, port: int, outdir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    try:
        results = scenarios(rank, world, outdir)
    finally:
        dist.destroy_process_group()
    Path(outdir, f"rank{rank}.json").write_text(json.dumps(results, default=repr))


def scenarios(rank: int, world: int, outdir: str) -> dict:
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel as DDP

    import workbench
    from workbench.capture.hooks import _ACTIVE

    ids = batch()
    mine = ids[rank * (B // world):(rank + 1) * (B // world)]  # each rank its half of the batch
    res: dict = {"reference": reference(ids)}

    ddp = DDP(make_model())
    res["ddp"] = traced_step(ddp, mine)
    res["ddp"].pop("gathered_trace", None)

    fsdp = make_model()
    for block in fsdp.blocks:
        fully_shard(block)
    fully_shard(fsdp)
    res["fsdp"] = traced_step(fsdp, mine, attention=True)
    gathered = res["fsdp"].pop("gathered_trace", None)
    if gathered is not None:  # the gathered trace survives save/load with its ranks
        again = workbench.Trace.load(gathered.save(Path(outdir, "gathered.safetensors")))
        res["fsdp"]["reloaded"] = {"ranks": again.ranks, "records_per_rank":
                                   [len(again.for_rank(r).records) for r in again.ranks]}
        res["attention_reference"] = attention_reference(ids)

    # Uneven shards: a bias of one element leaves rank 1 an empty shard.
    torch.manual_seed(SEED)
    small = nn.Sequential(nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 1))
    ref = copy.deepcopy(small)
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(2))
    ref(x).pow(2).mean().backward()
    fully_shard(small)
    with workbench.trace(small, gradients=True) as tr:
        small(x[rank * 2:(rank + 1) * 2]).pow(2).mean().backward()
    res["uneven"] = {"param_norms": {g.name: g.grad_norm for g in tr.gradients},
                     "absmax": {g.name: g.grad_absmax for g in tr.gradients},
                     "ref_norms": {n: p.grad.norm().item() for n, p in ref.named_parameters()},
                     "ref_absmax": {n: p.grad.abs().max().item() for n, p in ref.named_parameters()},
                     "local_bytes": tr.meta["rank_memory"]["param_bytes"],
                     "full_bytes": sum(p.numel() * p.element_size() for p in ref.parameters())}

    res["diagnose_fsdp"] = _diagnose(fsdp)
    res["diagnose_ddp"] = _diagnose(ddp)
    res["diagnose_plain"] = _diagnose(make_model())  # an unwrapped replica: rank 0 alone runs it
    res["active_after"] = len(_ACTIVE)
    return res


def _diagnose(model: nn.Module) -> dict:
    import workbench

    rep = workbench.doctor.diagnose(model, checks=CHECKS, progress=False)
    findings = None if rep is None else [(f.check, f.status, f.summary) for f in rep.findings]
    return {"is_none": rep is None, "findings": findings}


if __name__ == "__main__":  # torchrun-free manual run: python dist_worker.py <outdir>
    import torch.multiprocessing as mp

    mp.spawn(run, args=(2, int(os.environ.get("PORT", 29555)), sys.argv[1]), nprocs=2)
