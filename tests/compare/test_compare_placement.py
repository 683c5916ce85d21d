"""Norm placement read from the reference's own block: pre-norm (GPT-2, with biases), Gemma 3's extra norms on each
branch's output, and the wiring recovered for a parallel block, without a layout written for any of them."""

from __future__ import annotations

import hfzoo
import pytest
import torch
from families.familymodels import randomize
from ports import HandGPT2, gemma3_norms_after_the_add

from workbench.compare import Comparison, compare
from workbench.compare.wiring import compose, recover

pytest.importorskip("transformers")


def found(c: Comparison) -> tuple[str, str]:
    assert c.first_divergence is not None, c.summary()
    assert c.diagnosis is not None and c.diagnosis.cause is not None, c.summary()
    return c.first_divergence.label, c.diagnosis.cause.name


def test_hand_gpt2_with_post_norm_is_found_with_the_placement():
    ref = randomize(hfzoo.build("gpt2"), (0.5, 1.5))
    c = compare(ref, HandGPT2(ref, "post_norm"))
    assert found(c) == ("block 0 output", "norm placement: pre")
    d = c.diagnosis
    assert d.replay_error > 0.1 > c.tolerance >= d.cause.error
    assert "h1 = x + attn(ln_1(x)); out = h1 + mlp(ln_2(h1))" in d.cause.cause


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gemma3_norms_moved_after_the_add_are_found_with_the_reference_wiring(dtype):
    ref = randomize(hfzoo.build("gemma3"), (0.5, 1.5)).to(dtype)
    c = compare(ref, gemma3_norms_after_the_add(ref))
    assert found(c) == ("block 0 output", "norm placement: as the reference")
    d = c.diagnosis
    assert d.replay_error > 0.1 > c.tolerance >= d.cause.error
    assert ("h1 = x + post_attention_layernorm(self_attn(input_layernorm(x))); "
            "out = h1 + post_feedforward_layernorm(mlp(pre_feedforward_layernorm(h1)))") in d.cause.cause
    assert compare(ref, ref).equivalent


def test_wiring_of_a_parallel_block_is_recovered_and_recomposed():
    """GPT-J / NeoX: out = x + attn(ln_1(x)) + mlp(ln_2(x))."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 8, generator=g)
    w = {k: torch.randn(8, 8, generator=g) for k in ("ln_1", "attn", "ln_2", "mlp")}
    f = {k: (lambda h, m=m: torch.tanh(h @ m)) for k, m in w.items()}
    keys = {"ln_1": ("norm", 0, 0), "attn": ("attention", 0, 0), "ln_2": ("norm", 0, 1), "mlp": ("mlp", 0, 0)}
    a_in, m_in = f["ln_1"](x), f["ln_2"](x)
    a, m = f["attn"](a_in), f["mlp"](m_in)
    parts = [(keys["ln_1"], "ln_1", x, a_in), (keys["attn"], "attn", a_in, a),
             (keys["ln_2"], "ln_2", x, m_in), (keys["mlp"], "mlp", m_in, m)]
    wiring = recover(x, parts, x + a + m, 1e-5)
    assert wiring is not None and wiring.kind == "other"
    assert wiring.formula() == "out = x + attn(ln_1(x)) + mlp(ln_2(x))"
    assert torch.allclose(compose(wiring, {keys[k]: f[k] for k in f}, x), x + a + m)
    assert recover(x, parts, x * 2 + a, 1e-5) is None  # not a sum of earlier values: no wiring claimed
