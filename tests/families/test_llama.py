"""Llama against HF with a head width apart from hidden_size / num_attention_heads (as Gemma has), and
llama.cpp's q/k row permutation with its inverse."""

from __future__ import annotations

import pytest
import torch
from familymodels import VOCAB, logit_diff, randomize
from ggufwrite import to_pair_order

from workbench.families import get, row_permutation
from workbench.families.llama import LLAMA_CPP_ROPE
from workbench.io.load import load_pretrained
from workbench.io.save import save_pretrained

transformers = pytest.importorskip("transformers")


def test_decoupled_head_dim_parity_and_round_trip(tmp_path):
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=24, max_position_embeddings=64, attention_bias=True,
    )
    torch.manual_seed(13)
    hf = randomize(transformers.LlamaForCausalLM(cfg), (0.5, 1.5))
    hf.save_pretrained(tmp_path / "hf")
    ours = load_pretrained(tmp_path / "hf")
    assert (ours.config.head_dim, ours.config.attn_head_dim, ours.config.out_bias) == (24, 24, True)
    assert logit_diff(ours, hf) <= 1e-4
    save_pretrained(ours, tmp_path / "ours", format="hf")
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours", dtype=torch.float32).eval()
    assert type(again).__name__ == "LlamaForCausalLM" and again.config.head_dim == 24
    assert logit_diff(ours, again) <= 1e-4


def test_llama_cpp_rope_permutation_and_its_inverse_are_declared_through_the_registry():
    w = torch.randn(4 * 8, 5, generator=torch.Generator().manual_seed(3))  # 4 heads of 8 rows, 5 columns
    stored = LLAMA_CPP_ROPE.apply(w, 4)
    assert torch.equal(stored, to_pair_order(w, 4))  # what llama.cpp's converter writes
    assert not torch.equal(stored, w) and torch.equal(LLAMA_CPP_ROPE.undo(stored, 4), w)
    assert torch.equal(stored[:4, 0], w[[0, 4, 1, 5], 0])  # head 0: x0, x4, x1, x5, ... (pairs of the two halves)
    assert get("llama").permutations == (LLAMA_CPP_ROPE,) and row_permutation("rope") is LLAMA_CPP_ROPE
