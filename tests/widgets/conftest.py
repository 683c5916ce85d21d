"""Fixtures for the widget tests: the random tiny preset traced once per module (`chars` is in tests/conftest.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import workbench as wb
from workbench.capture import trace


@pytest.fixture(scope="module")
def tiny() -> wb.TransformerLM:
    torch.manual_seed(0)
    return wb.TransformerLM(wb.ModelConfig.preset("tiny").replace(max_seq_len=320, init_std=0.3)).eval()


@pytest.fixture(scope="module")
def tiny_trace(tiny):
    """A forward+backward trace on 12 tokens with attention, memory, samples and gradients."""
    ids = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(1))
    with trace(tiny, attention=True, memory=True, gradients=True, samples=128) as tr:
        F.cross_entropy(tiny(ids)[0, :-1], ids[0, 1:]).backward()
    tiny.zero_grad(set_to_none=True)
    return tr
