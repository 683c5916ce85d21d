"""Attention computed as a 3-D softmax: heads folded into the batch (BART-style blocks, HF's XGLM) or one module
per head (the from-scratch lecture GPT). A causal (N, T, T) softmax is recorded as (N, 1, T, T), as the call
says; a 3-D softmax that is not causal (a router's over experts) is not taken for attention, and the generation
session, which needs every head of every step, leaves such models without attention rather than half of it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from doctor.test_lecture_gpt import Head, build  # the lecture GPT, one module per head
from generation.genmodels import NumberTokenizer
from torch import nn

from workbench.capture import trace
from workbench.doctor import diagnose
from workbench.generation import GenerationSession

transformers = pytest.importorskip("transformers")


def xglm() -> nn.Module:
    config = transformers.XGLMConfig(vocab_size=128, d_model=32, num_layers=2, attention_heads=4, ffn_dim=64,
                                     max_position_embeddings=64, pad_token_id=0)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    return transformers.XGLMForCausalLM(config).eval()


def test_folded_heads_are_recorded_and_equal_transformers_attentions():
    model, ids = xglm(), torch.randint(3, 128, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), trace(model, attention=True, attention_batch=None) as tr:
        out = model(ids, output_attentions=True)
    assert [a.module for a in tr.attention] == ["model.layers.0.self_attn", "model.layers.1.self_attn"]
    for rec, ref in zip(tr.attention, out.attentions):  # ref (B, H, T, T); folded batch-major as (B*H, 1, T, T)
        assert rec.source == "softmax" and rec.full_shape == [8, 1, 7, 7]
        torch.testing.assert_close(rec.map.float(), ref.reshape(8, 1, 7, 7), atol=1e-3, rtol=0)
        assert rec.metrics["future_max"] == [0.0]


def test_the_doctor_judges_overflow_of_folded_heads():
    f = diagnose(xglm(), progress=False)["score_overflow"]
    assert f.status == "pass" and f.evidence["attention_modules"] == 2 and f.evidence["max_abs_score"] > 0


def test_one_module_per_head_is_recorded_per_head_and_its_scale_judged():
    model, ids = build(), torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(1))
    inputs: dict[str, torch.Tensor] = {}
    names = {m: n for n, m in model.named_modules()}
    hooks = [m.register_forward_hook(lambda mod, args, _out: inputs.__setitem__(names[mod], args[0]))
             for m in model.modules() if isinstance(m, Head)]
    try:
        with torch.no_grad(), trace(model, attention=True, attention_batch=None) as tr:
            model(ids)
    finally:
        for h in hooks:
            h.remove()
    assert [a.module for a in tr.attention] == [f"blocks.{b}.sa.heads.{h}" for b in range(2) for h in range(4)]
    heads = dict(model.named_modules())
    for rec in tr.attention:
        head, x = heads[rec.module], inputs[rec.module]
        with torch.no_grad():
            scores = head.query(x) @ head.key(x).transpose(-2, -1) * head.key.out_features ** -0.5
            expected = scores.masked_fill(torch.ones(9, 9, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
        assert rec.full_shape == [2, 1, 9, 9]
        torch.testing.assert_close(rec.map.float(), expected[:, None], atol=1e-3, rtol=0)
    f = diagnose(model, progress=False)["score_overflow"]
    assert f.evidence["scale_judged"] is True and f.evidence["score_scale_vs_inv_sqrt_d"] == pytest.approx(1.0)


class Router(nn.Module):
    """Softmax over 9 experts of 9-token inputs: the shape of a causal (N, T, T) attention, but not causal."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = nn.Linear(16, 9)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.softmax(self.gate(x), dim=-1) @ torch.ones(9, 16)


@pytest.mark.parametrize("T", [9, 1])
def test_a_router_softmax_is_not_taken_for_attention(T):
    torch.manual_seed(0)
    router = Router()
    with torch.no_grad(), trace(router, attention=True, attention_batch=None) as tr:
        router(torch.randn(2, T, 16))
    assert tr.attention == []


def test_the_session_leaves_folded_heads_out_rather_than_half_shown():
    session = GenerationSession(build(), NumberTokenizer(), [3, 9, 4, 17], capture_attention=True)
    records = [session.step() for _ in range(3)]
    assert [r.attention for r in records] == [None, None, None]
    assert all(0 <= r.token_id < 64 for r in records)
