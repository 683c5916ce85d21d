"""Dtype mistakes found with their cause: a norm and a softmax computed in float16 where the reference computes them
in float32. With torch's own ops the rounding of float16 stays below the float16 tolerance (8e-3); these cases
overflow, as real models make them: a residual channel of a few hundred (the "massive activations" trained LLMs
carry) squared past float16's 65504 in the norm, and attention scores above 11.1 (trained models reach tens,
the reason for QK-norm and Gemma 2's soft-capping) exponentiated past it in a softmax written out without
subtracting the row max.
"""

from __future__ import annotations

import copy
import math

import hfzoo
import pytest
import torch
from families.familymodels import randomize
from ports import HandLlama

from workbench.compare import Comparison, compare

pytest.importorskip("transformers")


def found(c: Comparison) -> tuple[str, str]:
    assert c.first_divergence is not None, c.summary()
    assert c.diagnosis is not None and c.diagnosis.cause is not None, c.summary()
    return c.first_divergence.label, c.diagnosis.cause.name


def llama(massive: float = 0.0, qk_scale: float = 1.0) -> torch.nn.Module:
    """HF Llama (float32) with `massive` added to one channel of every token embedding, and its q/k weights
    times `qk_scale` (x20 gives attention scores up to about 24)."""
    hf = randomize(hfzoo.build("llama"), (0.5, 1.5))
    with torch.no_grad():
        hf.model.embed_tokens.weight[:, 3] += massive
        for layer in hf.model.layers:
            layer.self_attn.q_proj.weight.mul_(qk_scale)
            layer.self_attn.k_proj.weight.mul_(qk_scale)
    return hf


def test_a_float16_norm_that_squares_a_massive_channel_is_found_with_norm_in_float32():
    ref = llama(massive=300.0).half()
    c = compare(ref, HandLlama(ref, "norm_low_precision"))
    assert found(c) == ("block 0 attention norm", "norm in float32")
    assert c.first_divergence.case == "batch" and c.first_divergence.inputs_agree
    d = c.diagnosis
    assert c.tolerance == 8e-3
    assert d.replay_error > 0.9  # 300 ** 2 is inf in float16: the candidate's norm outputs zeros
    assert d.cause.error < 1e-4  # replayed in float32 it computes what HF's float32 norm computes
    assert "lower precision than float32" in d.cause.cause
    assert all(not t.error <= c.tolerance for t in d.trials if t is not d.cause)
    assert "fix 'norm in float32' leaves < 8e-03" in c.summary()


def test_the_float16_norm_agrees_while_the_stream_stays_small_and_in_bfloat16():
    """The same port is within noise where nothing overflows: the dtype of the norm matters through its range."""
    assert compare(llama().half(), HandLlama(llama().half(), "norm_low_precision")).equivalent
    big = llama(massive=300.0).bfloat16()
    assert compare(big, HandLlama(big, "norm_low_precision")).equivalent


def test_a_written_out_softmax_that_overflows_in_float16_is_found_with_softmax_in_float32():
    ref32 = llama(qk_scale=20.0)
    assert compare(ref32, HandLlama(ref32, "naive_softmax")).equivalent  # right in float32: exp(24) is finite
    ref = copy.deepcopy(ref32).half()
    c = compare(ref, HandLlama(ref, "naive_softmax"))
    assert found(c) == ("block 0 attention", "softmax in float32")
    assert c.first_divergence.case == "batch" and c.first_divergence.inputs_agree
    assert math.isinf(c.first_divergence.error)  # exp overflows, inf / inf is NaN: not finite
    d = c.diagnosis
    assert math.isinf(d.replay_error) and d.cause.error < 2e-3 <= c.tolerance
    others = [t for t in d.trials if t is not d.cause]
    assert all(t.error > c.tolerance for t in others)  # scale, mask, RoPE fixes do not help
    # the written-out softmax is hand-written attention: its scale fix shrinks the scores below the overflow, but
    # leaves them wrong; every other fix still overflows
    assert all(math.isinf(t.error) for t in others if t.name != "scale x 1/sqrt(D)")
    assert "error inf (shapes differ or values not finite)" in c.summary()


def test_the_written_out_softmax_agrees_in_float16_while_scores_stay_small():
    ref = llama().half()
    assert compare(ref, HandLlama(ref, "naive_softmax")).equivalent
