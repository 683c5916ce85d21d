"""`diagnose(model)`: run every check (or a chosen few) and collect the findings in a `Report`.

The checks are read from the registry when `diagnose` is called, so one registered after import (a plug-in,
a notebook's own) is validated, selected and run like the built-in ones.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..distributed.env import is_distributed, run_on_main, unwrap
from ..errors import DoctorError, InputError, ModelContractError
from ..lm import ModelAdapter
from ..model.placement import resolve_device
from . import checks_config, checks_generation, checks_masking, checks_numerics, checks_positions, checks_structure
from .registry import CHECKS, Check, Context, Result, catalogue
from .report import Finding, Report

_MODULES = (checks_config, checks_generation, checks_masking, checks_numerics, checks_positions, checks_structure)


def diagnose(
    model: nn.Module,
    tokenizer: Any = None,
    *,
    checks: Iterable[str] | None = None,
    device: torch.device | str | None = None,
    seed: int = 0,
    progress: bool = True,
) -> Report | None:
    """Run the doctor's checks on a causal LM and return a `Report` of findings.

    model: a workbench `TransformerLM`, a HF causal LM, or any module whose forward(input_ids (B, T),
    attention_mask=None) returns logits (B, T, V) or an object with `.logits`.
    tokenizer: optional; used for its vocabulary size and pad id.
    checks: names from `catalogue()` (default: all), run in catalogue order.
    device: run the probes there (the model is moved, then moved back); default: the model's device.
    The model runs in eval mode (train/eval flags of every module are restored afterwards); probes
    are small (B <= 3, T <= 16) and seeded by `seed`, so a report is reproducible; the global RNG
    state and existing `.grad` tensors are left as they were.
    Under torch.distributed (torchrun), call it on every rank: the report is made once and returned
    on rank 0, and every other rank returns None. A DDP model is probed through its `.module` on
    rank 0 alone; an FSDP2 model on every rank (its forward all-gathers), showing progress on rank 0.
    """
    if not isinstance(model, nn.Module):
        raise DoctorError(f"diagnose needs a torch nn.Module, got {type(model).__name__}.")
    selected = _select(checks)
    if device is not None:
        try:
            device = resolve_device(device)  # refused before anything moves
        except InputError as err:
            raise DoctorError(f"diagnose: {err}") from None
        if device.type == "meta":
            raise DoctorError("diagnose: device='meta' holds no values, so no probe can run there; use 'cpu' or a GPU.")
    if not is_distributed():
        return _diagnose(model, tokenizer, selected, device, seed, progress)
    inner, wrapper = unwrap(model)
    return run_on_main(lambda main: _diagnose(inner, tokenizer, selected, device, seed, progress and main),
                       every_rank=wrapper == "fsdp2")


def _diagnose(model: nn.Module, tokenizer: Any, selected: list[Check], device: torch.device | str | None,
              seed: int, progress: bool) -> Report:
    modes = [(m, m.training) for m in model.modules()]
    home = next(model.parameters(), torch.empty(0)).device
    moved = device is not None and torch.device(device) != home
    start = time.perf_counter()
    try:
        if moved:
            model.to(device)
        model.eval()
        devices = [torch.device(device or home).index or 0] if torch.device(device or home).type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # the user's RNG streams continue untouched
            torch.manual_seed(seed)
            ctx = Context(ModelAdapter(model, tokenizer), seed=seed)
            _first_probe(ctx)
            findings = [_run(spec, ctx) for spec in tqdm(selected, desc="doctor", disable=not progress, leave=False)]
    finally:
        if moved:
            model.to(home)
        for m, mode in modes:
            m.training = mode
    return Report(findings, model=type(model).__name__, seconds=time.perf_counter() - start)


def _first_probe(ctx: Context) -> None:
    """One 2-token forward, before any check: a module that is not a causal LM (no logits, wrong inputs, a
    forward that raises) is refused here with a `DoctorError` that says what the doctor needs."""
    try:
        with torch.no_grad():
            _ = ctx.adapter.vocab_size
    except ModelContractError as err:
        raise DoctorError(f"diagnose cannot drive this model: {err}") from err
    except Exception as err:  # the model's own error: say which, and what the doctor calls
        raise DoctorError(
            f"diagnose cannot drive this model: its forward raised {type(err).__name__}: {str(err)[:200]} on the "
            "first probe, model(input_ids) with input_ids a (1, 2) LongTensor. The doctor needs a causal LM whose "
            "forward(input_ids, attention_mask=None) returns logits (B, T, V) or an object with `.logits`."
        ) from err


def _select(checks: Iterable[str] | None) -> list[Check]:
    """The checks to run, in catalogue order, as the registry holds them now."""
    names = catalogue()
    wanted = names if checks is None else [checks] if isinstance(checks, str) else list(checks)
    unknown = [c for c in wanted if c not in names]
    if unknown:
        raise DoctorError(f"unknown check name(s) {unknown}; known checks are {list(names)}.")
    return [CHECKS[n] for n in names if n in wanted]


def _run(spec: Check, ctx: Context) -> Finding:
    t0 = time.perf_counter()
    try:
        with torch.no_grad():  # checks that need autograd turn it back on themselves
            result = spec.fn(ctx)
    except (DoctorError, ModelContractError) as err:  # the model cannot do what this check needs (no cache...)
        result = Result("n/a", str(err), {})
    except Exception as err:  # the model raised on a valid probe: report it, keep the other checks going
        result = Result("fail", f"the model raised during this check: {type(err).__name__}: {err}"[:300],
                        {"exception": type(err).__name__})
    return Finding(spec.name, result.status, result.summary, result.evidence, spec.pitfall, spec.fix,
                   time.perf_counter() - t0)
