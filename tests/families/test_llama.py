"""Llama with a head width apart from hidden_size / num_attention_heads (as Gemma has), against HF."""

from __future__ import annotations

import pytest
import torch
from familymodels import VOCAB, logit_diff, randomize

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
