"""A prompt's KV cache forked to n rows of its first L positions (`workbench.lm.prefix`): continuing each row
with the prompt's positions L.. gives the prompt's own logits there, to float noise, on the workbench model and
HF families (grouped-query llama, mistral past its sliding window, mixtral's experts); the prompt's cache is
left as it was; a fork per layer holds each layer's own row count; a hand-written model's own tuples are
refused."""

from __future__ import annotations

import hfzoo
import pytest
import torch
from torch import nn

import workbench as wb
from tests.bugzoo.minigpt import MiniConfig, MiniGPT
from workbench.lm import ModelAdapter
from workbench.lm.prefix import NoPrefixCache, PromptCache

IDS = torch.tensor([[5, 9, 3, 7, 11, 2, 8, 4, 6, 1]])  # (1, T=10): past mistral's window in hfzoo


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "workbench":
        return wb.TransformerLM(wb.ModelConfig.preset("tiny").replace(n_kv_heads=2, init_std=0.3)).eval()
    return hfzoo.build(name).eval()


@pytest.mark.parametrize("name", ["workbench", "llama", "mistral", "mixtral", "gpt2"])
def test_a_fork_continues_the_prompt_in_every_row(name):
    model = build(name)
    adapter = ModelAdapter(model)
    with torch.no_grad():
        plain = adapter.logits(IDS)  # (1, T, V) without a cache
        prompt = PromptCache(adapter, IDS)
        before = [t.clone() for t in _tensors(prompt.state)]
        for length in (1, 4, 9):
            fork = prompt.fork(length, 3)
            after, _ = adapter.cached(IDS[:, length:].expand(3, -1), fork)  # (3, T - L, V)
            assert after.shape[:2] == (3, IDS.shape[1] - length)
            gap = float((after - plain[:, length:]).abs().max())
            assert gap <= 1e-5 * max(1.0, float(plain.abs().max())), (length, gap)
            # identical rows (to float noise: mixtral's experts gather rows in an order that threads may change)
            assert float((after[0] - after[2]).abs().max()) <= 1e-6 * max(1.0, float(plain.abs().max()))
    assert all(torch.equal(a, b) for a, b in zip(before, _tensors(prompt.state), strict=True))  # untouched


@pytest.mark.parametrize("name", ["workbench", "llama", "gpt2"])
def test_a_fork_per_layer_holds_each_layers_rows_of_the_prompt(name):
    model = build(name)
    adapter = ModelAdapter(model)
    with torch.no_grad():
        prompt = PromptCache(adapter, IDS, blocks=2)
        assert prompt.per_layer
        whole = _tensors(prompt.fork(4, 3))  # each (3, K, 4, D)
        per_layer = _tensors(prompt.fork(4, 3, layer_rows=[2, 3]))
        layer_of = [0, 1, 0, 1] if name == "workbench" else [0, 0, 1, 1]  # the order `_tensors` lists them in
        for got, full, layer in zip(per_layer, whole, layer_of, strict=True):
            rows = [2, 3][layer]
            assert got.shape[0] == rows and got.shape[2] == 4
            assert torch.equal(got, full[:rows])
        with pytest.raises(NoPrefixCache, match="rows per layer"):
            prompt.fork(4, 3, layer_rows=[2, 4])  # more rows than the batch
        with pytest.raises(NoPrefixCache, match="rows per layer"):
            PromptCache(adapter, IDS, blocks=3).fork(4, 3, layer_rows=[1, 2, 3])  # not the model's layers
        assert not PromptCache(adapter, IDS).per_layer


def test_a_model_without_a_transformers_or_workbench_cache_is_refused():
    torch.manual_seed(0)
    model = MiniGPT(MiniConfig(dropout=0.0)).eval()
    with pytest.raises(NoPrefixCache, match="neither a workbench KVCache nor a transformers Cache"):
        PromptCache(ModelAdapter(model), IDS)


def _tensors(state: object) -> list[torch.Tensor]:
    keys = getattr(state, "keys", None)
    if isinstance(keys, list):  # a workbench KVCache
        return [*keys, *state.values]  # type: ignore[attr-defined]
    return [t for layer in state.layers for t in (layer.keys, layer.values)]  # type: ignore[attr-defined]
