"""The proof of `compare`: deliberately wrong ports of HF Llama, Qwen2, Gemma and GPT-2 are each found at the
right point with the right cause, and clean pairs are equivalent within noise in float32 and bfloat16.

Candidates are either the workbench's own `TransformerLM` loaded with one mistake, or a hand-written port
(`ports.py`) with one switch flipped.
"""

from __future__ import annotations

import dataclasses

import hfzoo
import pytest
import torch
from families.familymodels import gemma, qwen2, randomize
from ports import HandGPT2, HandLlama

import workbench as wb
from workbench.compare import Comparison, compare
from workbench.io.load import load_pretrained

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def llama() -> torch.nn.Module:
    return randomize(hfzoo.build("llama"), (0.5, 1.5))


@pytest.fixture(scope="module")
def qwen() -> torch.nn.Module:
    return qwen2(transformers, tie=True)


@pytest.fixture(scope="module")
def gpt2() -> torch.nn.Module:
    """GPT-2 with trained-like magnitudes in the MLP (HF's init keeps pre-activations near zero, where exact and
    tanh GELU agree to 1e-6)."""
    hf = randomize(hfzoo.build("gpt2"), (0.5, 1.5))
    with torch.no_grad():
        for block in hf.transformer.h:
            block.mlp.c_fc.weight.mul_(10)
    return hf


def ours(hf: torch.nn.Module, tmp_path, **changes) -> wb.TransformerLM:
    """The workbench's model with `hf`'s weights, its config changed by `changes` (the injected mistake)."""
    hf.save_pretrained(tmp_path)
    model = load_pretrained(tmp_path)
    if not changes:
        return model
    wrong = wb.TransformerLM(dataclasses.replace(model.config, **changes)).eval()
    wrong.load_state_dict(model.state_dict())
    return wrong


def found(c: Comparison) -> tuple[str, str]:
    assert c.first_divergence is not None, c.summary()
    assert c.diagnosis is not None and c.diagnosis.cause is not None, c.summary()
    return c.first_divergence.label, c.diagnosis.cause.name


# --- hand-written ports -------------------------------------------------------------------------------
@pytest.mark.parametrize("bug, point, cause", [
    ("interleaved", "block 0 attention", "RoPE: half-split"),
    ("qk_perm", "block 0 attention", "weights: undo rope-permuted"),
    ("mask_shift", "block 0 attention", "mask: causal"),
    ("no_scale", "block 0 attention", "scale x 1/sqrt(D)"),
    ("eps", "block 0 attention norm", "norm eps 1e-05 -> 1e-06"),
    ("padding", "block 0 attention", "mask: padding"),
    ("rope_base", "block 0 attention", "RoPE base 10000"),
    ("gelu", "block 0 mlp", "GELU -> SiLU"),
])
def test_hand_llama_mistake_is_found_with_its_cause(llama, bug, point, cause):
    c = compare(llama, HandLlama(llama, bug))
    assert found(c) == (point, cause)
    assert not c.equivalent and c.diagnosis is not None
    assert c.diagnosis.replay_error > c.tolerance >= c.diagnosis.cause.error  # the fix closes the gap
    if bug == "padding":
        assert c.first_divergence.case == "padded"  # only the padded batch shows it


def test_hand_qwen2_untied_head_is_found_at_the_logits(qwen):
    c = compare(qwen, HandLlama(qwen, "untied"))
    assert found(c) == ("logits", "tie the LM head to the embedding")
    assert c.weights.unmatched_candidate == ("head.weight",)
    assert [e.label for e in c.errors_for("batch") if e.above] == ["logits"]


def test_hand_qwen2_skipped_permutation_names_the_rows(qwen):
    c = compare(qwen, HandLlama(qwen, "qk_perm"))
    assert found(c) == ("block 0 attention", "weights: undo rope-permuted")
    permuted = {m.candidate: m.reference for m in c.weights.matches if m.relation == "rope-permuted"}
    assert permuted["layers.0.attn.wq.weight"] == "model.layers.0.self_attn.q_proj.weight"
    assert permuted["layers.1.attn.wk.weight"] == "model.layers.1.self_attn.k_proj.weight"
    assert "llama.cpp" in c.summary()


@pytest.mark.parametrize("bug, point, cause", [
    ("conv1d_transposed", "block 0 attention", "weights: undo transposed"),
    ("gelu_exact", "block 0 mlp", "exact GELU -> tanh GELU"),
])
def test_hand_gpt2_mistake_is_found_with_its_cause(gpt2, bug, point, cause):
    c = compare(gpt2, HandGPT2(gpt2, bug))
    assert found(c) == (point, cause)
    if bug == "conv1d_transposed":
        assert [(m.candidate, m.relation) for m in c.weights.transformed()] == [
            ("h.0.attn.proj.weight", "transposed"), ("h.1.attn.proj.weight", "transposed")]


# --- the workbench's model, loaded wrong --------------------------------------------------------------
def test_ours_with_wrong_eps_is_found_at_the_first_norm(llama, tmp_path):
    c = compare(llama, ours(llama, tmp_path, norm_eps=1e-5))
    assert found(c) == ("block 0 attention norm", "norm eps 1e-05 -> 1e-06")


def test_ours_gemma_without_one_plus_w_is_found_at_the_first_norm(tmp_path):
    ref = gemma(transformers)
    c = compare(ref, ours(ref, tmp_path, norm_offset=False))
    assert found(c) == ("block 0 attention norm", "norm weight 1 + w")
    assert "1 +" in c.diagnosis.cause.cause


def test_ours_gemma_without_the_embedding_scale_is_found_at_the_embedding(tmp_path):
    ref = gemma(transformers)
    c = compare(ref, ours(ref, tmp_path, embed_scale=False))
    assert found(c) == ("embedding", "embedding x sqrt(C)")
    assert c.weights.exact  # the weights are right: the scale is code


def test_ours_with_post_norm_is_found_at_the_first_block_output(llama, tmp_path):
    c = compare(llama, ours(llama, tmp_path, norm_placement="post"))
    assert found(c) == ("block 0 output", "norm placement: pre")
    inside = [e for e in c.errors_for("batch") if e.label.startswith("block 0 ") and e.above]
    assert inside and not any(e.inputs_agree for e in inside if e.label != "block 0 output")


def test_ours_with_q_k_rows_left_permuted(llama, tmp_path):
    model = ours(llama, tmp_path)
    H, K, D = model.config.n_heads, model.config.kv_heads, model.config.head_dim
    with torch.no_grad():
        for block in model.blocks:
            w = block.attn.qkv.weight
            for start, heads in ((0, H), (H * D, K)):
                rows = w[start:start + heads * D]
                rows.copy_(rows.reshape(heads, 2, D // 2, -1).transpose(1, 2).reshape(heads * D, -1))
    c = compare(llama, model)
    assert found(c) == ("block 0 attention", "weights: undo rope-permuted")
    q = next(m for m in c.weights.matches if m.reference == "model.layers.0.self_attn.q_proj.weight")
    assert (q.candidate, q.relation) == (f"blocks.0.attn.qkv.weight[0:{H * D}]", "rope-permuted")
    assert "fused" in q.detail


def test_ours_with_untied_copies_of_a_tied_head(qwen, tmp_path):
    """A copy that holds the same values computes the same logits: equivalent, but the table says so."""
    c = compare(qwen, ours(qwen, tmp_path, tie_embeddings=False))
    assert c.equivalent
    assert len(c.weights.ties) == 1 and "the candidate keeps copies" in c.weights.ties[0]


# --- clean pairs --------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_clean_pairs_are_equivalent_within_noise(family, dtype, tmp_path):
    hf = randomize(hfzoo.build(family), (0.5, 1.5))
    mine = ours(hf, tmp_path).to(dtype)
    eager = randomize(hfzoo.build(family, attn="eager"), (0.5, 1.5)).to(dtype)
    for ref, cand in ((hf.to(dtype), mine), (eager, hf.to(dtype))):
        c = compare(ref, cand)
        assert c.equivalent, c.summary()
        assert c.weights.exact and not c.alignment.unpaired_reference and not c.alignment.unpaired_candidate
        assert c.cases == ("batch", "padded", "cached")
        assert len(c.errors) == 3 * 13 and c.diagnosis is None
        assert c.verdict().startswith("equivalent within noise")
        assert c.tolerance == (1e-5 if dtype == torch.float32 else 3e-2)


def test_hand_ports_without_mistakes_are_equivalent(llama, gpt2):
    for ref, port in ((llama, HandLlama(llama)), (gpt2, HandGPT2(gpt2))):
        c = compare(ref, port)
        assert c.equivalent, c.summary()
