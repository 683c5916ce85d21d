"""Shared by the entry-point fuzz tests: the contract every case must keep.

A case either returns a correct result or raises a WorkbenchError subclass; it never hangs (a per-case
alarm), and it leaves no hook or SDPA/softmax patch behind.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, settings
from torch import nn

from workbench.errors import WorkbenchError

ORIGINAL_SDPA = F.scaled_dot_product_attention
ORIGINAL_SOFTMAX = torch.softmax
CASE_SECONDS = 10  # a case that takes longer is a hang

# seeded and bounded: the same examples on every run, fast enough for CI on 2 cores
FUZZ = settings(derandomize=True, max_examples=60, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


class Hang(AssertionError):
    """A case ran past CASE_SECONDS."""


@contextlib.contextmanager
def time_limit(seconds: int = CASE_SECONDS) -> Iterator[None]:
    def expire(_signum: int, _frame: Any) -> None:
        raise Hang(f"the case ran longer than {seconds} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def assert_no_leaks(model: nn.Module | None = None) -> None:
    glob = nn.modules.module
    assert F.scaled_dot_product_attention is ORIGINAL_SDPA, "SDPA is still patched"
    assert torch.softmax is ORIGINAL_SOFTMAX, "softmax is still patched"
    assert "softmax" not in torch.Tensor.__dict__ or torch.Tensor.softmax is not None
    assert not glob._global_forward_hooks and not glob._global_forward_pre_hooks, "a global hook leaked"
    if model is not None:
        assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules()), "a hook leaked"


def contract(case: Callable[[], Any], model: nn.Module | None = None) -> tuple[str, Any]:
    """Run one case: ("ok", result) or ("refused", error); any other exception fails the test."""
    try:
        with time_limit():
            return "ok", case()
    except WorkbenchError as err:
        assert str(err), "a WorkbenchError must say what is wrong"
        return "refused", err
    finally:
        assert_no_leaks(model)
