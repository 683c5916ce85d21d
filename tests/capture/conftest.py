"""Shared small models for capture tests: workbench tiny, HF GPT-2 / Llama (random init), an MLP."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from workbench.model import ModelConfig, TransformerLM


@pytest.fixture(scope="module")
def tiny() -> TransformerLM:
    torch.manual_seed(0)
    return TransformerLM(ModelConfig.preset("tiny")).eval()


@pytest.fixture(scope="module")
def hf_llama() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        bos_token_id=1, eos_token_id=2,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def hf_gpt2() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                                  bos_token_id=1, eos_token_id=2)
    return transformers.GPT2LMHeadModel(cfg).eval()


@pytest.fixture()
def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


@pytest.fixture()
def eager_probs():
    return _eager_causal_probs


def _eager_causal_probs(model: TransformerLM, ids: torch.Tensor, layer: int) -> torch.Tensor:
    """Reference probabilities of one workbench layer, computed by hand from hook_q / hook_k."""
    store = {}
    attn = model.blocks[layer].attn
    hq = attn.hook_q.register_forward_hook(lambda m, a, o: store.__setitem__("q", o))
    hk = attn.hook_k.register_forward_hook(lambda m, a, o: store.__setitem__("k", o))
    try:
        model(ids)
    finally:
        hq.remove()
        hk.remove()
    q, k = store["q"], store["k"].repeat_interleave(attn.n_heads // attn.n_kv, dim=1)
    T = q.shape[2]
    s = (q @ k.transpose(-2, -1)) * attn.head_dim**-0.5
    s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    return s.softmax(-1)
