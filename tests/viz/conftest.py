"""Records for the figure tests: a traced forward+backward+step of the random tiny model, and
hand-built attention records (leaky, downsampled, long) whose values the tests know."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import workbench as wb
from workbench.capture import AttentionRecord, trace


@pytest.fixture(scope="module")
def tiny_run():
    """(model, optimizer, trace) of one training step of the random tiny preset on 12 tokens."""
    torch.manual_seed(0)
    model = wb.TransformerLM(wb.ModelConfig.preset("tiny"))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, 256, (1, 12))
    with trace(model, attention=True, memory=True, gradients=True, samples=128, optimizer=opt) as tr:
        logits = model(ids)  # (1, T, V)
        F.cross_entropy(logits[0, :-1], ids[0, 1:]).backward()
        opt.step()
    return model, opt, tr


def causal_probs(H: int, T: int, seed: int = 0) -> torch.Tensor:
    """(H, T, T) random causal attention rows (each sums to 1 over keys <= query)."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(H, T, T, generator=g)
    s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    return s.softmax(-1)


def make_record(probs: torch.Tensor, layer: int = 0, downsample: int = 1, **metrics: list[float]) -> AttentionRecord:
    """An AttentionRecord holding (H, T, S) probs (optionally downsampled like the collector does)."""
    H, T, S = probs.shape
    m = probs[None, :, ::downsample]  # (1, H, T/f, S)
    if downsample > 1:
        m = F.pad(m, (0, (-S) % downsample)).unflatten(-1, (-1, downsample)).sum(-1)  # (1, H, T/f, S/f)
    full = {k: [0.0] * H for k in ("entropy", "distance", "sink", "prev", "diag", "future_max")}
    full.update(metrics)
    return AttentionRecord(index=layer, module=f"blocks.{layer}.attn", layer=layer, call=0, source="hook",
                           full_shape=[1, H, T, S], batch=[0], heads=list(range(H)),
                           queries=list(range(T))[::downsample], query_offset=S - T,
                           downsample=[downsample, downsample], metrics=full, map=m.to(torch.float16))
