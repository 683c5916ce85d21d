"""Divergences that show only in the cached continuation, replayed in the one module where they start: the cached
step's arguments are snapshots taken before the call (the KV cache as the module found it), so a transformers
`DynamicCache`, the workbench's `KVCache` and a port's (k, v) tuples replay alike; positions that restart inside
the cache are named by swapping in the position arguments of an uncached forward."""

from __future__ import annotations

import copy

import hfzoo
import pytest
import torch
from families.familymodels import randomize
from ports import HandLlama, llama_cpp_permute

from workbench.compare import Comparison, compare
from workbench.io.load import load_pretrained

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def llama() -> torch.nn.Module:
    return randomize(hfzoo.build("llama"), (0.5, 1.5))


def found(c: Comparison) -> tuple[str, str]:
    assert c.first_divergence is not None, c.summary()
    assert c.diagnosis is not None and c.diagnosis.cause is not None, c.summary()
    return c.first_divergence.label, c.diagnosis.cause.name


def test_positions_that_restart_inside_the_cache_are_found_in_the_cached_step(llama):
    c = compare(llama, HandLlama(llama, "cache_positions"))
    assert found(c) == ("block 0 attention", "positions continue from the cache")
    assert c.first_divergence.case == "cached" and c.first_divergence.inputs_agree
    assert not [e.label for e in c.errors if e.case != "cached" and e.above]  # without a cache the port is right
    d = c.diagnosis
    assert d.replay_error > 1e-3 > c.tolerance >= d.cause.error  # replayed in one module, the swap closes it
    assert d.replay_error == pytest.approx(c.first_divergence.error)
    assert "restart at 0" in d.cause.cause and "arguments 1, 2 of `layers.0.attn`" in d.cause.cause
    assert [t.name for t in d.trials if t.error <= c.tolerance] == ["positions continue from the cache"]


def test_a_cached_step_with_right_positions_is_not_blamed_on_them(llama):
    c = compare(llama, HandLlama(llama, "no_scale"), cases=("cached",))
    assert found(c) == ("block 0 attention", "scale x 1/sqrt(D)")
    assert "positions continue from the cache" not in [t.name for t in c.diagnosis.trials]


def test_the_cached_step_of_hf_and_workbench_models_is_replayed_in_one_module(llama, tmp_path):
    """Both write into their cache during the call: replaying on the live cache would attend to the new keys twice."""
    hf = copy.deepcopy(llama)
    with torch.no_grad():
        for layer in hf.model.layers:
            layer.self_attn.q_proj.weight.copy_(llama_cpp_permute(layer.self_attn.q_proj.weight, 4))
    llama.save_pretrained(tmp_path)
    ours = load_pretrained(tmp_path)
    H, D = ours.config.n_heads, ours.config.head_dim
    with torch.no_grad():
        for block in ours.blocks:
            rows = block.attn.qkv.weight[: H * D]
            rows.copy_(llama_cpp_permute(rows.clone(), H))
    for cand in (hf, ours):
        c = compare(llama, cand, cases=("cached",))
        assert found(c) == ("block 0 attention", "weights: undo rope-permuted"), type(cand).__name__
        assert c.diagnosis.replay_error > 1e-3 > c.tolerance >= c.diagnosis.cause.error
        assert all(not m._forward_hooks and not m._forward_pre_hooks for m in cand.modules())
