"""A model written like nanoGPT: blocks in `transformer.h`, SDPA with is_causal, a tied head, and a forward
`(idx, targets=None) -> (logits, loss)` that keeps only the last position's logits when no targets are given.
The adapter gives it the ids as targets to read every position's logits, so the doctor, compare and generate
work on it as it is written."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from workbench.compare import compare
from workbench.doctor import diagnose
from workbench.errors import ModelContractError
from workbench.generation import generate
from workbench.lm import ModelAdapter

C, HEADS, LAYERS, CONTEXT, VOCAB = 32, 4, 2, 32, 96


class SelfAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c_attn, self.c_proj = nn.Linear(C, 3 * C), nn.Linear(C, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = (t.view(B, T, HEADS, C // HEADS).transpose(1, 2) for t in self.c_attn(x).split(C, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln_1, self.attn, self.ln_2 = nn.LayerNorm(C), SelfAttention(), nn.LayerNorm(C)
        self.mlp = nn.Sequential(nn.Linear(C, 4 * C), nn.GELU(), nn.Linear(4 * C, C))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class NanoStyleGPT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(VOCAB, C), wpe=nn.Embedding(CONTEXT, C),
            h=nn.ModuleList(Block() for _ in range(LAYERS)), ln_f=nn.LayerNorm(C)))
        self.lm_head = nn.Linear(C, VOCAB, bias=False)
        self.lm_head.weight = self.transformer.wte.weight

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        t = self.transformer
        x = t.wte(idx) + t.wpe(torch.arange(idx.shape[1], device=idx.device))
        for block in t.h:
            x = block(x)
        x = t.ln_f(x)
        if targets is None:
            return self.lm_head(x[:, [-1], :]), None  # inference: the last position only
        logits = self.lm_head(x)
        return logits, F.cross_entropy(logits.view(-1, VOCAB), targets.view(-1), ignore_index=-1)


def build(seed: int = 0) -> NanoStyleGPT:
    torch.manual_seed(seed)
    return NanoStyleGPT().eval()


def test_every_position_is_read_through_targets():
    model = build()
    ids = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(1))
    logits = ModelAdapter(model).logits(ids)
    assert logits.shape == (2, 7, VOCAB)
    with torch.no_grad():
        torch.testing.assert_close(logits, model(ids, targets=ids)[0], rtol=0, atol=0)
        torch.testing.assert_close(logits[:, -1:], model(ids)[0], rtol=1e-6, atol=1e-6)


def test_the_doctor_runs_without_a_false_alarm():
    report = diagnose(build(), progress=False)
    assert report.failed == [], [(f.check, f.summary) for f in report.failed]
    assert report["causal_leak"].status == "pass" and report["positions"].status == "pass"
    assert report["score_overflow"].status == "pass" and report["score_overflow"].evidence["scale_judged"]
    assert report["config"].evidence["logits_width"] == VOCAB


def test_compare_finds_a_copy_equivalent_and_a_changed_weight_divergent():
    model = build()
    same = build()
    c = compare(model, same)
    assert c.equivalent, c.summary()
    assert c.cases == ("batch", "cached")  # no attention_mask argument: the padded case is left out
    broken = build()
    with torch.no_grad():
        broken.transformer.h[1].mlp[0].weight.mul_(1.5)
    c = compare(model, broken)
    assert not c.equivalent and c.first_divergence is not None and "block 1" in c.first_divergence.label


def test_generate_is_the_models_own_greedy_loop():
    model = build()
    ids = torch.randint(0, VOCAB, (1, 5), generator=torch.Generator().manual_seed(2))
    out = generate(model, ids, max_new_tokens=6)
    seq = ids
    with torch.no_grad():
        for _ in range(6):
            seq = torch.cat((seq, model(seq)[0][:, -1].argmax(-1, keepdim=True)), dim=1)
    assert torch.equal(out.sequences, seq)


@pytest.mark.parametrize("T", [1, 4])
def test_a_forward_that_ignores_targets_is_still_refused(T):
    class LastOnly(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb, self.head = nn.Embedding(VOCAB, C), nn.Linear(C, VOCAB)

        def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
            return self.head(self.emb(idx))[:, -1:]

    adapter = ModelAdapter(LastOnly())
    ids = torch.zeros(1, T, dtype=torch.long)
    if T == 1:
        assert adapter.logits(ids).shape == (1, 1, VOCAB)
    else:
        with pytest.raises(ModelContractError, match="every position needs its logits"):
            adapter.logits(ids)
