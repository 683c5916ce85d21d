"""Roles: each parameter's block and part read in every common spelling (HF, nanoGPT, gpt-fast, the workbench's own)
and from structure where names say nothing; role swaps are findings with the fix that swaps them back; unmatched
parameters are suspects with fixes (a bias added back, an extra one zeroed, a left-out position table added)."""

from __future__ import annotations

import copy
import warnings

import hfzoo
import numpy as np
import pytest
import torch
from families.familymodels import randomize
from ports import HandGPT2
from torch import nn

import workbench as wb
from workbench.compare import PartialComparison, compare
from workbench.compare.roles import Role, read_roles
from workbench.compare.weights import match_weights

transformers = pytest.importorskip("transformers")


def labels(model: nn.Module, *names: str) -> list[str]:
    roles = read_roles(model)
    return [roles[n].label for n in names]


@pytest.mark.parametrize("family, names, expected", [
    ("llama", ("model.layers.1.self_attn.k_proj.weight", "model.layers.0.mlp.gate_proj.weight",
               "model.layers.0.post_attention_layernorm.weight", "model.norm.weight", "lm_head.weight"),
     ["block 1 k weight", "block 0 gate weight", "block 0 MLP norm weight", "final norm weight", "LM head weight"]),
    ("gpt2", ("transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_proj.bias",
              "transformer.h.0.mlp.c_proj.weight", "transformer.h.1.ln_2.bias", "transformer.wpe.weight"),
     ["block 0 qkv weight", "block 0 attention output bias", "block 0 down weight", "block 1 MLP norm bias",
      "position table weight"]),
    ("opt", ("model.decoder.layers.0.fc1.weight", "model.decoder.layers.0.final_layer_norm.weight",
             "model.decoder.final_layer_norm.weight", "model.decoder.embed_positions.weight"),
     ["block 0 up weight", "block 0 MLP norm weight", "final norm weight", "position table weight"]),
    ("gemma2", ("model.layers.0.post_attention_layernorm.weight", "model.layers.0.pre_feedforward_layernorm.weight"),
     ["block 0 attention output norm weight", "block 0 MLP norm weight"]),
    ("gpt_neox", ("gpt_neox.layers.0.attention.query_key_value.weight", "gpt_neox.layers.0.attention.dense.weight",
                  "gpt_neox.layers.0.mlp.dense_4h_to_h.weight", "gpt_neox.embed_in.weight"),
     ["block 0 qkv weight", "block 0 attention output weight", "block 0 down weight", "token embedding weight"]),
    ("phi3", ("model.layers.0.mlp.gate_up_proj.weight",), ["block 0 gate/up weight"]),
])
def test_hf_spellings_are_read(family, names, expected):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = hfzoo.build(family)
    assert labels(model, *names) == expected


class FastBlock(nn.Module):
    """gpt-fast / Meta spelling: attention.wqkv, attention.wo, feed_forward.w1/w2/w3, attention_norm, ffn_norm."""

    def __init__(self) -> None:
        super().__init__()
        self.attention = nn.Module()
        self.attention.wqkv, self.attention.wo = nn.Linear(8, 24, bias=False), nn.Linear(8, 8, bias=False)
        self.feed_forward = nn.Module()
        self.feed_forward.w1, self.feed_forward.w2, self.feed_forward.w3 = (
            nn.Linear(8, 16, bias=False), nn.Linear(16, 8, bias=False), nn.Linear(8, 16, bias=False))
        self.attention_norm, self.ffn_norm = nn.RMSNorm(8), nn.RMSNorm(8)


class NanoBlock(nn.Module):
    """nanoGPT spelling: ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj."""

    def __init__(self) -> None:
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(8), nn.LayerNorm(8)
        self.attn, self.mlp = nn.Module(), nn.Module()
        self.attn.c_attn, self.attn.c_proj = nn.Linear(8, 24), nn.Linear(8, 8)
        self.mlp.c_fc, self.mlp.c_proj = nn.Linear(8, 32), nn.Linear(32, 8)


class Plain(nn.Module):
    """Names that say nothing: the block's two norms are read by their order, its two children as attention, MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.LayerNorm(8), nn.LayerNorm(8)
        self.x, self.y = nn.Sequential(nn.Linear(8, 8)), nn.Sequential(nn.Linear(8, 8))


class Model(nn.Module):
    def __init__(self, block: type[nn.Module], embed: str, norm: str, head: str) -> None:
        super().__init__()
        setattr(self, embed, nn.Embedding(16, 8))
        self.layers = nn.ModuleList([block(), block()])
        setattr(self, norm, nn.LayerNorm(8))
        setattr(self, head, nn.Linear(8, 16, bias=False))


def test_gpt_fast_nanogpt_and_structural_spellings_are_read():
    fast = read_roles(Model(FastBlock, "tok_embeddings", "norm", "output"))
    assert {n: fast[n].label for n in ("layers.0.attention.wqkv.weight", "layers.1.feed_forward.w1.weight",
                                       "layers.1.feed_forward.w3.weight", "layers.0.feed_forward.w2.weight",
                                       "layers.0.ffn_norm.weight", "tok_embeddings.weight", "norm.weight",
                                       "output.weight")} == {
        "layers.0.attention.wqkv.weight": "block 0 qkv weight",
        "layers.1.feed_forward.w1.weight": "block 1 gate weight",
        "layers.1.feed_forward.w3.weight": "block 1 up weight",
        "layers.0.feed_forward.w2.weight": "block 0 down weight",
        "layers.0.ffn_norm.weight": "block 0 MLP norm weight", "tok_embeddings.weight": "token embedding weight",
        "norm.weight": "final norm weight", "output.weight": "LM head weight"}
    nano = read_roles(Model(NanoBlock, "wte", "ln_f", "lm_head"))
    assert [nano[n].label for n in ("layers.0.ln_1.bias", "layers.0.attn.c_proj.weight", "layers.0.mlp.c_proj.weight",
                                    "layers.1.mlp.c_fc.bias", "ln_f.weight")] == [
        "block 0 attention norm bias", "block 0 attention output weight", "block 0 down weight", "block 1 up bias",
        "final norm weight"]
    plain = read_roles(Model(Plain, "e", "f", "g"))
    assert [plain[n].label for n in ("layers.0.a.weight", "layers.0.b.bias", "layers.1.x.0.weight")] == [
        "block 0 attention norm weight", "block 0 MLP norm bias", "unknown"]


def test_roles_conflict_only_when_both_are_known():
    k, v = Role(0, "k", "weight"), Role(0, "v", "weight")
    assert k.conflicts(v) and not k.conflicts(Role(0, "", "weight")) and not Role().conflicts(v)
    assert Role(0, "q").conflicts(Role(1, "q")) and not Role(0, "up").conflicts(Role(0, "gate/up"))
    assert Role(0, "qkv", "weight").row_block(2, 3) == v and not Role(0, "qkv").row_block(1, 2).known


def _fast_pair(order: tuple[int, int, int]) -> tuple[nn.Module, nn.Module]:
    """A reference with separate q/k/v and a gpt-fast-like candidate whose wqkv holds them in `order`."""
    class Sep(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention = nn.Module()
            for n in ("wq", "wk", "wv", "wo"):
                setattr(self.attention, n, nn.Linear(8, 8, bias=False))

    torch.manual_seed(0)
    ref = Model(Sep, "tok_embeddings", "norm", "output")
    cand = Model(FastBlock, "tok_embeddings", "norm", "output")
    with torch.no_grad():
        for i in range(2):
            a, c = ref.layers[i].attention, cand.layers[i].attention
            parts = [a.wq.weight, a.wk.weight, a.wv.weight]
            c.wqkv.weight.copy_(torch.cat([parts[j] for j in order]))
            c.wo.weight.copy_(a.wo.weight)
        cand.tok_embeddings.weight.copy_(ref.tok_embeddings.weight)
        cand.output.weight.copy_(ref.output.weight)
    return ref, cand


def test_fused_row_blocks_take_q_k_v_roles_and_a_swap_inside_is_found():
    ref, cand = _fast_pair((0, 1, 2))
    good = match_weights(ref, cand)
    fused = {m.candidate: (m.candidate_role.label, m.reference_role.label) for m in good.matches if "[" in m.candidate}
    assert fused["layers.1.attention.wqkv.weight[8:16]"] == ("block 1 k weight", "block 1 k weight")
    assert not [m for m in good.role_findings() if "wqkv" in m.candidate]
    ref, cand = _fast_pair((0, 2, 1))
    found = {m.candidate: m.reference for m in match_weights(ref, cand).role_findings() if "wqkv" in m.candidate}
    assert found == {"layers.0.attention.wqkv.weight[8:16]": "layers.0.attention.wv.weight",
                     "layers.0.attention.wqkv.weight[16:24]": "layers.0.attention.wk.weight",
                     "layers.1.attention.wqkv.weight[8:16]": "layers.1.attention.wv.weight",
                     "layers.1.attention.wqkv.weight[16:24]": "layers.1.attention.wk.weight"}


# --- unmatched parameters as suspects ------------------------------------------------------------------
@pytest.fixture(scope="module")
def gpt2() -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = randomize(hfzoo.build("gpt2"), (0.5, 1.5))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # GPT-2's norms are named ln_*: random scales, so that a swap of two is visible
        for name, p in hf.named_parameters():
            if ".ln_" in name and name.endswith("weight"):
                p.uniform_(0.5, 1.5, generator=g)
    return hf


def test_a_left_out_layernorm_bias_is_added_back(gpt2):
    port = HandGPT2(gpt2)
    ln = port.h[0].ln_1
    port.h[0].ln_1 = nn.LayerNorm(ln.normalized_shape, eps=ln.eps, bias=False)
    with torch.no_grad():
        port.h[0].ln_1.weight.copy_(ln.weight)
    c = compare(gpt2, port)
    assert c.weights.unmatched_reference == ("transformer.h.0.ln_1.bias",)
    assert c.first_divergence.label == "block 0 attention norm", c.summary()
    assert c.diagnosis.cause.name == "add missing bias" and c.diagnosis.cause.error <= c.tolerance, c.summary()
    assert "h.0.ln_1" in c.diagnosis.cause.cause


def test_a_fused_qkv_bias_left_out_is_added_to_its_slices(gpt2):
    port = HandGPT2(gpt2)
    with torch.no_grad():
        for block in port.h:
            qkv = block.attn.qkv
            block.attn.qkv = nn.Linear(qkv.in_features, qkv.out_features, bias=False)
            block.attn.qkv.weight.copy_(qkv.weight)
    c = compare(gpt2, port)
    assert c.first_divergence.label == "block 0 attention", c.summary()
    assert c.diagnosis.cause.name == "add missing bias" and c.diagnosis.cause.error <= c.tolerance, c.summary()


class NoPositions(HandGPT2):
    """A GPT-2 port that leaves the learned position table out of its forward (and out of its parameters)."""

    def __init__(self, hf: nn.Module) -> None:
        super().__init__(hf)
        del self.wpe

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        x = self.wte(input_ids)
        for block in self.h:
            x = block(x, attention_mask)
        return self.ln_f(x) @ self.wte.weight.t()


def test_a_left_out_position_table_is_added_at_the_embedding(gpt2):
    c = compare(gpt2, NoPositions(gpt2))
    assert c.weights.unmatched_reference == ("transformer.wpe.weight",)
    assert c.first_divergence.label == "embedding", c.summary()
    assert c.diagnosis.cause.name == "add position table" and c.diagnosis.cause.error <= c.tolerance, c.summary()


def test_a_norm_swap_is_a_role_finding_named_in_the_summary_and_swapped_back(gpt2):
    port = HandGPT2(gpt2)
    with torch.no_grad():
        w1, w2 = port.h[0].ln_1.weight.clone(), port.h[0].ln_2.weight.clone()
        port.h[0].ln_1.weight.copy_(w2)
        port.h[0].ln_2.weight.copy_(w1)
    c = compare(gpt2, port)
    assert [m.candidate for m in c.weights.role_findings()] == ["h.0.ln_1.weight", "h.0.ln_2.weight"]
    assert not c.weights.exact and "1 in the place of another role" not in c.summary()
    assert "2 in the place of another role" in c.summary() and "role: `h.0.ln_1.weight`" in c.summary()
    assert c.diagnosis.cause.name == "weights: swap back", c.summary()


# --- bad input ----------------------------------------------------------------------------------------
class ListWeights(nn.Module):
    """Weights kept as Python lists / numpy arrays on the modules, never registered."""

    def __init__(self, as_numpy: bool) -> None:
        super().__init__()
        w = np.random.default_rng(0).normal(size=(16, 8))
        self.table = w if as_numpy else w.tolist()
        self.layers = nn.ModuleList([nn.Identity(), nn.Identity()])

    def forward(self, input_ids):
        t = torch.as_tensor(np.asarray(self.table), dtype=torch.float32)
        return t[input_ids] @ t.t()


@pytest.mark.parametrize("as_numpy, held", [(False, "a list of 16 lists of numbers"), (True, "a numpy array (16, 8)")])
def test_a_port_with_no_tensor_parameters_is_refused(gpt2, as_numpy, held):
    with pytest.raises(wb.CompareError, match="register each weight as a tensor parameter") as caught:
        compare(gpt2, ListWeights(as_numpy), diagnose_cause=False)
    assert f"`table` ({held})" in str(caught.value) and "has no parameters" in str(caught.value)
    assert isinstance(caught.value.partial, PartialComparison) and caught.value.partial.stopped == "parameters"


def test_stray_numpy_weights_beside_parameters_and_meta_parameters_are_refused(gpt2):
    port = HandGPT2(gpt2)
    port.h[0].attn.extra = np.ones((4, 4))
    with pytest.raises(wb.CompareError, match=r"keeps weights outside its parameters: `h.0.attn.extra`"):
        compare(gpt2, port)
    with torch.device("meta"):
        empty = HandGPT2.__new__(HandGPT2)
        nn.Module.__init__(empty)
        empty.wte, empty.h = nn.Embedding(128, 32), nn.ModuleList([nn.Linear(32, 32), nn.Linear(32, 32)])
    with pytest.raises(wb.CompareError, match="on the meta device .* load its weights first"):
        compare(gpt2, empty)


def test_different_vocabularies_keep_the_weight_table(gpt2):
    port = HandGPT2(gpt2)
    port.wte = nn.Embedding(100, 32)
    with pytest.raises(wb.CompareError, match="same vocabulary") as caught:
        compare(gpt2, port)
    partial = caught.value.partial
    assert partial.stopped == "vocabulary" and partial.errors == ()
    assert "transformer.h.0.ln_1.weight" in {m.reference for m in partial.weights.matches}
    assert partial.alignment is not None and len(partial.alignment.pairs) == 13


def test_a_candidate_that_raises_on_one_case_names_it_and_keeps_the_cases_before(gpt2):
    port = HandGPT2(gpt2)
    forward = port.forward

    def picky(input_ids, attention_mask=None, position_ids=None):
        if attention_mask is not None and not bool(attention_mask.all()):
            raise IndexError("no padding here")
        return forward(input_ids, attention_mask, position_ids)

    port.forward = picky
    with pytest.raises(wb.CompareError, match=r"raised IndexError on the padded case's inputs \(ids \(2, 8\), "
                                              "left-padded") as caught:
        compare(gpt2, port)
    assert isinstance(caught.value.__cause__, IndexError)
    partial = caught.value.partial
    assert partial.stopped == "padded case" and partial.cases == ("batch",)
    assert len(partial.errors) == 13 and not any(e.above for e in partial.errors)


# --- the view -----------------------------------------------------------------------------------------
def test_compare_view_shows_the_role_table_and_unmatched_parameters_escaped(gpt2, tmp_path):
    port = NoPositions(gpt2)
    with torch.no_grad():
        a, b = port.h[1].ln_1.weight.clone(), port.h[1].ln_2.weight.clone()
        port.h[1].ln_1.weight.copy_(b)
        port.h[1].ln_2.weight.copy_(a)
    port.add_module("<i>odd</i>", nn.Linear(3, 3))
    c = compare(gpt2, port)
    view = wb.CompareView(c)
    shown = view.weights.value
    assert "wb-role-finding" in shown and shown.count("exact, role differs") == 2
    assert "block 1 attention norm weight" in shown and "block 1 MLP norm weight" in shown
    assert "Unmatched in the reference (1)" in shown and "transformer.wpe.weight" in shown
    assert "Unmatched in the candidate (2)" in shown and "&lt;i&gt;odd&lt;/i&gt;.weight" in shown
    assert "<i>odd</i>" not in shown
    page = c.save_html(tmp_path / "roles.html").read_text()
    assert "its role" in page and "&lt;i&gt;odd&lt;/i&gt;" in page and "<i>odd</i>" not in page
    assert copy.copy(c.weights).role_findings()[0].candidate == "h.1.ln_1.weight"
