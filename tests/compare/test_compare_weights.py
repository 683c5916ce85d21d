"""The weight-match table: each transformation ports get wrong is named, fused tensors are split, ties compared."""

from __future__ import annotations

import torch
from torch import nn

from workbench.compare.weights import match_weights
from workbench.families.llama import permute_rope_rows, unpermute_rope_rows


class Attn(nn.Module):
    """q/k/v/o as separate Linear layers (HF Llama naming), 4 heads of 8."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(32, 32, bias=False) for _ in range(4))
        self.norm = nn.LayerNorm(32)
        with torch.no_grad():
            self.norm.weight.uniform_(0.5, 1.5)


def _copy(src: Attn, **change) -> Attn:
    out = Attn(seed=1)
    with torch.no_grad():
        for name, p in out.named_parameters():
            p.copy_(change.get(name, lambda w: w)(dict(src.named_parameters())[name]))
    return out


def relations(table) -> dict[str, tuple[str, str]]:
    return {m.candidate: (m.reference, m.relation) for m in table.matches}


def test_each_transformation_is_named():
    ref = Attn()
    cand = _copy(ref, **{
        "q_proj.weight": lambda w: permute_rope_rows(w, 4),
        "k_proj.weight": lambda w: unpermute_rope_rows(w, 4),
        "v_proj.weight": lambda w: w.reshape(4, 8, 32)[[2, 0, 3, 1]].reshape(32, 32),
        "o_proj.weight": lambda w: w.t(),
        "norm.weight": lambda w: w - 1,
        "norm.bias": lambda w: w,
    })
    table = match_weights(ref, cand, head_dims=(8,))
    got = relations(table)
    assert got["q_proj.weight"] == ("q_proj.weight", "rope-permuted")
    assert got["k_proj.weight"] == ("k_proj.weight", "rope-unpermuted")
    assert got["v_proj.weight"] == ("v_proj.weight", "heads reordered")
    assert "[2, 0, 3, 1]" in next(m.detail for m in table.matches if m.candidate == "v_proj.weight")
    assert got["o_proj.weight"] == ("o_proj.weight", "transposed")
    assert got["norm.weight"] == ("norm.weight", "offset -1")
    assert got["norm.bias"] == ("norm.bias", "exact")
    assert not table.exact and not table.unmatched_candidate and not table.unmatched_reference
    assert "llama.cpp" in next(m.explanation for m in table.matches if m.candidate == "q_proj.weight")


def test_a_scaled_tensor_reports_its_factor_and_a_random_one_is_unmatched():
    ref = Attn()
    cand = _copy(ref, **{"q_proj.weight": lambda w: w * 0.125, "k_proj.weight": lambda w: torch.randn_like(w)})
    table = match_weights(ref, cand, head_dims=(8,))
    scaled = next(m for m in table.matches if m.candidate == "q_proj.weight")
    assert (scaled.relation, scaled.detail) == ("scaled", "x 0.125")
    assert table.unmatched_candidate == ("k_proj.weight",) and table.unmatched_reference == ("k_proj.weight",)


class Fused(nn.Module):
    def __init__(self, src: Attn, conv1d: bool = False) -> None:
        super().__init__()
        self.c_attn = nn.Linear(32, 96, bias=False)
        self.c_proj = nn.Linear(32, 32, bias=False)
        with torch.no_grad():
            self.c_attn.weight.copy_(torch.cat([src.q_proj.weight, src.k_proj.weight, src.v_proj.weight]))
            self.c_proj.weight.copy_(src.o_proj.weight)
        self.ln = nn.LayerNorm(32)
        self.ln.load_state_dict(src.norm.state_dict())


def test_fused_rows_pair_with_split_tensors_both_ways():
    split = Attn()
    fused = Fused(split)
    table = match_weights(split, fused, head_dims=(8,))
    got = relations(table)
    assert got["c_attn.weight[0:32]"] == ("q_proj.weight", "exact")
    assert got["c_attn.weight[32:64]"] == ("k_proj.weight", "exact")
    assert got["c_attn.weight[64:96]"] == ("v_proj.weight", "exact")
    assert all("fused" in m.detail for m in table.matches if m.candidate.startswith("c_attn"))
    back = relations(match_weights(fused, split, head_dims=(8,)))
    assert back["k_proj.weight"] == ("c_attn.weight[32:64]", "exact")
    assert table.exact  # blocks of a fused tensor that equal the split ones are exact


def test_fused_block_with_permuted_rows_is_found():
    split = Attn()
    fused = Fused(split)
    with torch.no_grad():
        fused.c_attn.weight[:32] = permute_rope_rows(split.q_proj.weight, 4)
    got = relations(match_weights(split, fused, head_dims=(8,)))
    assert got["c_attn.weight[0:32]"] == ("q_proj.weight", "rope-permuted")


class LM(nn.Module):
    def __init__(self, tied: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(50, 16)
        self.head = nn.Linear(16, 50, bias=False)
        if tied:
            self.head.weight = self.embed.weight
        else:
            with torch.no_grad():
                self.head.weight.copy_(self.embed.weight)


def test_tied_versus_copied_is_reported_either_way():
    tied, copied = LM(tied=True), LM(tied=False)
    table = match_weights(tied, copied)
    assert [m.relation for m in table.matches] == ["exact", "exact"]
    assert table.ties == ("the reference ties embed.weight = head.weight; the candidate keeps copies "
                          "(embed.weight, head.weight)",)
    assert not table.exact
    other = match_weights(copied, tied)
    assert len(other.ties) == 1 and "the candidate ties" in other.ties[0]
    assert match_weights(tied, LM(tied=True)).exact


def test_a_tied_head_that_the_candidate_lacks_is_not_reported_missing():
    class NoHead(nn.Module):
        def __init__(self, src: LM) -> None:
            super().__init__()
            self.wte = nn.Embedding.from_pretrained(src.embed.weight.detach().clone())

    table = match_weights(LM(tied=True), NoHead(LM(tied=True)))
    assert table.unmatched_reference == () and table.unmatched_candidate == ()
