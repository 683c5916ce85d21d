"""Hand-written (nanoGPT/minGPT-style) models: the token embedding is found by behaviour, a tied-by-config head
that is a copy is caught, positions are judged by the permutation probe without position_ids, and a score
scale the doctor cannot attribute is left unjudged instead of failed."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from bugzoo.minigpt import MiniConfig, MiniGPT
from bugzoo.zoo import NoPositionsGPT
from torch import nn

from workbench.doctor import diagnose

CHAR_LEVEL = MiniConfig(vocab_size=24, max_seq_len=64)  # nanoGPT shakespeare_char: wpe has more rows than wte


def test_a_position_table_larger_than_the_vocabulary_is_not_the_token_embedding():
    torch.manual_seed(0)
    report = diagnose(MiniGPT(CHAR_LEVEL).eval(), checks=["config", "weights"], progress=False)
    assert report["config"].status == "pass", report["config"].summary
    assert report["config"].evidence["embedding_rows"] == 24
    w = report["weights"].evidence
    assert report["weights"].status == "pass"
    assert (w["embedding"], w["head"], w["head_shares_embedding_storage"]) == ("wte", "head", True)


class CopiedHeadGPT(MiniGPT):
    def tie(self) -> None:
        self.head.weight = nn.Parameter(self.wte.weight.detach().clone())  # the config says tied; this is a copy


def test_a_tied_head_that_is_a_copy_is_caught_on_a_char_level_minigpt():
    torch.manual_seed(0)
    f = diagnose(CopiedHeadGPT(CHAR_LEVEL).eval(), checks=["weights"], progress=False)["weights"]
    assert f.status == "fail"
    assert "head.weight is an identical copy of wte.weight" in f.summary and "config says" in f.summary
    assert f.evidence["tie_claimed"] is True and f.evidence["head_shares_embedding_storage"] is False


class NoPositionIds(nn.Module):
    """forward(input_ids, attention_mask=None) only: the permutation probe is what judges positions."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.inner(input_ids, attention_mask).logits


@pytest.mark.parametrize(("inner", "status"), [(MiniGPT, "pass"), (NoPositionsGPT, "fail")])
def test_permutation_probe_without_position_ids(inner, status):
    torch.manual_seed(0)
    f = diagnose(NoPositionIds(inner(MiniConfig(dropout=0.0))).eval(), checks=["positions"],
                 progress=False)["positions"]
    assert f.status == status, f.summary
    moved, tol = f.evidence["first_block_reordered_delta"], f.evidence["first_block_tolerance"]
    assert (moved > tol) == (status == "pass")


class RawParamAttention(nn.Module):
    """q, k, v from raw parameters (no projection modules), q scaled before SDPA and SDPA told scale=1: correct,
    but the doctor cannot see the q the scale was applied to."""

    def __init__(self, C: int = 32, H: int = 4) -> None:
        super().__init__()
        self.H = H
        self.w = nn.Parameter(torch.randn(C, 3 * C) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = (x @ self.w).split(C, dim=-1)
        q, k, v = (t.view(B, T, self.H, C // self.H).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        q = q / math.sqrt(C // self.H)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0)
        return x + y.transpose(1, 2).reshape(B, T, C)


class RawParamLM(nn.Module):
    def __init__(self, V: int = 64, C: int = 32) -> None:
        super().__init__()
        self.emb, self.blocks, self.head = nn.Embedding(V, C), nn.ModuleList([RawParamAttention(C)]), nn.Linear(C, V)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.emb(input_ids)
        for b in self.blocks:
            x = b(x)
        return self.head(x)


def test_a_scale_the_doctor_cannot_attribute_is_not_judged_and_not_failed():
    torch.manual_seed(0)
    f = diagnose(RawParamLM().eval(), checks=["score_overflow"], progress=False)["score_overflow"]
    assert f.status == "pass" and f.evidence["scale_judged"] is False
    assert "score scale is not judged" in f.summary and "blocks.0" in f.summary
