"""Shared by the entry-point fuzz tests: a case run under the suite's contract (`conftest.contract`), plus
the check that it left no hook or SDPA/softmax patch behind."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .conftest import FUZZ, contract

ORIGINAL_SDPA = F.scaled_dot_product_attention
ORIGINAL_SOFTMAX = torch.softmax
ENTRY_FUZZ = FUZZ(60)


def assert_no_leaks(model: nn.Module | None = None) -> None:
    glob = nn.modules.module
    assert F.scaled_dot_product_attention is ORIGINAL_SDPA, "SDPA is still patched"
    assert torch.softmax is ORIGINAL_SOFTMAX, "softmax is still patched"
    assert "softmax" not in torch.Tensor.__dict__ or torch.Tensor.softmax is not None
    assert not glob._global_forward_hooks and not glob._global_forward_pre_hooks, "a global hook leaked"
    if model is not None:
        assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules()), "a hook leaked"


def run_case(case: Callable[[], Any], model: nn.Module | None = None) -> tuple[str, Any]:
    """Run one case: ("ok", result) or ("refused", error); anything else fails the test (see `contract`)."""
    result: Any = None
    try:
        with contract() as outcome:
            result = case()
    finally:
        assert_no_leaks(model)
    return ("refused", outcome.error) if outcome.error is not None else ("ok", result)
