"""Fixtures for the generation tests (the builders live in genmodels.py)."""

from __future__ import annotations

import pytest
from genmodels import tiny_model

import workbench as wb


@pytest.fixture(scope="module")
def tiny() -> wb.TransformerLM:
    """Random 2-layer RoPE/RMSNorm/SwiGLU model (vocab 256, max_seq_len 128), peaked distributions."""
    return tiny_model("tiny")
