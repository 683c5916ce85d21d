"""Behaviour of TransformerLM: paths agree, masks combine, cache continues, checkpointing matches."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import workbench as wb

VARIANTS = {
    "llama-gqa": {"n_kv_heads": 2},
    "mqa": {"n_kv_heads": 1},
    "gpt2": {"positions": "learned", "norm": "layernorm", "mlp": "gelu", "attn_bias": True, "mlp_bias": True},
    "post-norm": {"norm_placement": "post"},
    "attn-only": {"mlp": "none"},
}


def _model(name: str, **extra) -> wb.TransformerLM:
    torch.manual_seed(0)
    return wb.TransformerLM(wb.ModelConfig.preset("tiny").replace(**VARIANTS[name], **extra)).eval()


@pytest.mark.parametrize("name", VARIANTS)
def test_eager_equals_sdpa_with_padding(name):
    model = _model(name)
    ids = torch.randint(0, 256, (2, 11))
    mask = torch.ones(2, 11, dtype=torch.long)
    mask[0, :5] = 0
    sdpa = model(ids, attention_mask=mask)
    with model.attention_impl("eager"):
        eager = model(ids, attention_mask=mask)
    assert model.blocks[0].attn.impl == "auto"  # restored
    assert (sdpa - eager).abs().max() < 1e-5


@pytest.mark.parametrize("name", VARIANTS)
def test_left_padding_equals_unpadded_rows(name):
    model = _model(name)
    ids = torch.randint(0, 256, (1, 7))
    padded = torch.cat([torch.zeros(1, 4, dtype=torch.long), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 4), torch.ones(1, 7)], dim=1).long()
    out = model(padded, attention_mask=mask)[:, 4:]
    assert (out - model(ids)).abs().max() < 1e-5


@pytest.mark.parametrize("name", VARIANTS)
def test_cached_decoding_matches_recompute(name):
    model = _model(name)
    ids = torch.randint(0, 256, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, :3] = 0
    full = model(ids, attention_mask=mask)
    cache = model.new_cache(2, 12)
    steps = [model(ids[:, :6], attention_mask=mask[:, :6], cache=cache)]
    for t in range(6, 12):
        steps.append(model(ids[:, t : t + 1], attention_mask=mask[:, t : t + 1], cache=cache))
    assert cache.length == 12
    got = torch.cat(steps, dim=1)
    assert (got - full)[mask.bool()].abs().max() < 1e-5


def test_hook_pattern_switches_to_eager_and_rows_are_causal():
    model = _model("llama-gqa")
    seen = []
    handle = model.blocks[1].attn.hook_pattern.register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        model(torch.randint(0, 256, (2, 6)))
    finally:
        handle.remove()
    (pattern,) = seen
    assert pattern.shape == (2, 4, 6, 6)
    assert torch.allclose(pattern.sum(-1), torch.ones(2, 4, 6))
    assert pattern.triu(1).abs().max() == 0
    assert not model.blocks[1].attn.uses_eager  # back to SDPA once nobody listens


def test_gradient_checkpointing_gives_same_gradients():
    grads = []
    for ckpt in (False, True):
        model = _model("llama-gqa").train()
        model.gradient_checkpointing = ckpt
        ids = torch.randint(0, 256, (2, 10), generator=torch.Generator().manual_seed(1))
        model(ids).logsumexp(-1).mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_runs_finite_and_close(dtype):
    model = _model("llama-gqa")
    ids = torch.randint(0, 256, (2, 9))
    ref = model(ids)
    half = model.to(dtype)(ids)
    assert half.dtype == dtype and torch.isfinite(half).all()
    assert (half.float() - ref).abs().max() < 0.05


def test_dtype_casts_keep_rope_frequencies_in_float32():
    """bf16 has 8 mantissa bits: rounded inverse frequencies turn late positions by the wrong angle."""
    model = wb.TransformerLM(wb.ModelConfig.preset("smollm2-135m").replace(n_layers=1, vocab_size=64))
    exact = model.rotary.inv_freq.clone()
    assert exact.dtype == torch.float32 and not torch.equal(exact.bfloat16().float(), exact)
    model.to(torch.bfloat16)
    assert model.embed.weight.dtype == torch.bfloat16
    assert model.rotary.inv_freq.dtype == torch.float32 and torch.equal(model.rotary.inv_freq, exact)
    model.half()
    assert torch.equal(model.rotary.inv_freq, exact)
    model.to("meta")  # device moves still apply
    assert model.rotary.inv_freq.device.type == "meta" and model.rotary.inv_freq.dtype == torch.float32
    model.to_empty(device="cpu")  # materialising a meta model: the frequencies are recomputed, not garbage
    assert torch.equal(model.rotary.inv_freq, exact)
    cos, _ = wb.TransformerLM(model.config).to(torch.bfloat16).rotary(torch.tensor([[4000]]), torch.float32)
    ref = torch.cat([4000 * exact.double()] * 2).cos()
    assert float((cos.double().flatten() - ref).abs().max()) < 1e-3  # float32 angles at position 4,000


@pytest.mark.parametrize("preset", ["tiny", "tiny-gemma"])
def test_a_model_built_on_the_meta_device_computes_its_buffers_when_it_leaves_it(preset):
    """A strict load builds on the meta device: the RoPE frequencies and the embedding scale are computed on the
    way off it, with the bits of an eager build, not left as uninitialised memory."""
    config = wb.ModelConfig.preset(preset)
    eager = wb.TransformerLM(config)
    with torch.device("meta"):
        meta = wb.TransformerLM(config, init=False)
    assert all(b.is_meta for b in meta.buffers()) and meta.lm_head.weight is meta.embed.weight
    meta.to_empty(device="cpu")
    for (name, ours), (_, theirs) in zip(meta.named_buffers(), eager.named_buffers(), strict=True):
        assert ours.device.type == "cpu" and ours.dtype == theirs.dtype and torch.equal(ours, theirs), name


def test_tied_embedding_is_shared_storage_and_counted_once():
    model = _model("llama-gqa")
    assert model.lm_head.weight is model.embed.weight
    n = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    assert model.num_parameters() == n
    untied = _model("llama-gqa", tie_embeddings=False)
    assert untied.num_parameters() == n + 256 * 64


def test_hook_sites_have_documented_shapes():
    model = _model("llama-gqa")
    shapes = {}
    handles = [
        m.register_forward_hook(lambda mod, i, o, name=name: shapes.__setitem__(name, tuple(o.shape)))
        for name, m in model.named_modules()
        if isinstance(m, wb.HookPoint)
    ]
    try:
        model(torch.randint(0, 256, (2, 5)))
    finally:
        for h in handles:
            h.remove()
    assert shapes["hook_embed"] == (2, 5, 64)
    assert shapes["blocks.0.attn.hook_q"] == (2, 4, 5, 16)
    assert shapes["blocks.0.attn.hook_k"] == (2, 2, 5, 16)
    assert shapes["blocks.0.attn.hook_pattern"] == (2, 4, 5, 5)
    assert shapes["blocks.1.mlp.hook_hidden"] == (2, 5, 256)
    assert shapes["blocks.1.hook_resid_post"] == (2, 5, 64)
    assert shapes["hook_logits"] == (2, 5, 256)


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 3),
    length=st.integers(1, 20),
    cut=st.integers(0, 19),
    name=st.sampled_from(sorted(VARIANTS)),
)
def test_property_shapes_finite_and_causal(batch, length, cut, name):
    """Changing tokens at or after `cut` never changes logits before `cut`."""
    model = _MODELS[name]
    g = torch.Generator().manual_seed(batch * 100 + length)
    ids = torch.randint(0, 256, (batch, length), generator=g)
    out = model(ids)
    assert out.shape == (batch, length, 256) and torch.isfinite(out).all()
    cut = min(cut, length - 1)
    changed = ids.clone()
    changed[:, cut:] = (changed[:, cut:] + 1) % 256
    if cut > 0:
        assert (model(changed)[:, :cut] - out[:, :cut]).abs().max() < 1e-5


_MODELS = {name: _model(name) for name in VARIANTS}
