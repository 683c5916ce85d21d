"""A GPT written the way the popular from-scratch lecture writes it: the blocks in an `nn.Sequential`, each
attention an `nn.ModuleList` of single-head modules (more heads than blocks), and a forward that returns
`(logits, loss)`. The doctor finds its blocks, reads its output and raises no false alarm; a forward that
keeps only the last position's logits (nanoGPT's at inference) is refused with the reason and the fix.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from workbench.doctor import diagnose
from workbench.errors import DoctorError
from workbench.lm import ModelAdapter

C, HEADS, LAYERS, CONTEXT, VOCAB = 32, 4, 2, 16, 64


class Head(nn.Module):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.key, self.query, self.value = (nn.Linear(C, size, bias=False) for _ in range(3))
        self.register_buffer("tril", torch.tril(torch.ones(CONTEXT, CONTEXT)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[1]
        k, q = self.key(x), self.query(x)
        wei = q @ k.transpose(-2, -1) * k.shape[-1] ** -0.5
        wei = F.softmax(wei.masked_fill(self.tril[:T, :T] == 0, float("-inf")), dim=-1)
        return wei @ self.value(x)


class MultiHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.heads = nn.ModuleList(Head(C // HEADS) for _ in range(HEADS))
        self.proj = nn.Linear(C, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.cat([h(x) for h in self.heads], dim=-1))


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.sa, self.ln1, self.ln2 = MultiHead(), nn.LayerNorm(C), nn.LayerNorm(C)
        self.ffwd = nn.Sequential(nn.Linear(C, 4 * C), nn.ReLU(), nn.Linear(4 * C, C))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.sa(self.ln1(x))
        return x + self.ffwd(self.ln2(x))


class LectureGPT(nn.Module):
    def __init__(self, last_only: bool = False) -> None:
        super().__init__()
        self.last_only = last_only
        self.tok, self.pos = nn.Embedding(VOCAB, C), nn.Embedding(CONTEXT, C)
        self.blocks = nn.Sequential(*(Block() for _ in range(LAYERS)))
        self.ln_f, self.lm_head = nn.LayerNorm(C), nn.Linear(C, VOCAB)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        x = self.ln_f(self.blocks(x))
        return self.lm_head(x[:, [-1], :] if self.last_only else x), None


def build(last_only: bool = False) -> LectureGPT:
    torch.manual_seed(0)
    return LectureGPT(last_only).eval()


def test_the_blocks_are_the_sequential_not_the_longer_list_of_heads():
    found = ModelAdapter(build()).blocks()
    assert found is not None
    name, blocks = found
    assert name == "blocks" and [n for n, _ in blocks] == ["blocks.0", "blocks.1"]


def test_the_diagnosis_reads_the_tuple_output_and_raises_no_false_alarm():
    report = diagnose(build(), progress=False)
    assert report.failed == [], [(f.check, f.summary) for f in report.failed]
    assert report["config"].evidence["logits_width"] == VOCAB
    assert report["norm_placement"].status == "pass" and "pre-norm in all 2 blocks of blocks" in \
        report["norm_placement"].summary
    assert report["causal_leak"].status == "pass" and report["batch_invariance"].status == "pass"
    assert report["positions"].status == "pass"


def test_logits_for_the_last_position_only_are_refused_with_the_fix():
    with pytest.raises(DoctorError, match=r"every position needs its logits.*instead of `x\[:, \[-1\], :\]`"):
        diagnose(build(last_only=True), progress=False)
