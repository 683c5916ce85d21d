"""The config fields that Qwen2 and Gemma added: validation, the older `attn_bias` switch, and model behaviour."""

from __future__ import annotations

import json

import pytest
import torch

import workbench as wb
from workbench.io.load import load_pretrained

TINY = wb.ModelConfig.preset("tiny")
VARIANTS = {
    "qkv-bias-only": {"qkv_bias": True, "n_kv_heads": 2},  # Qwen2
    "gemma": {"norm_offset": True, "mlp": "geglu", "embed_scale": True, "attn_head_dim": 24, "n_kv_heads": 1},
    "narrow-heads": {"attn_head_dim": 8, "n_kv_heads": 2},
}


def _model(name: str) -> wb.TransformerLM:
    torch.manual_seed(0)
    model = wb.TransformerLM(TINY.replace(**VARIANTS[name])).eval()
    with torch.no_grad():  # away from the initial ones/zeros, so that every parameter matters
        for p in model.parameters():
            if p.dim() == 1:
                p.uniform_(-0.5, 0.5)
    return model


def test_attn_bias_still_sets_both_projections():
    assert wb.ModelConfig(attn_bias=True) == wb.ModelConfig(qkv_bias=True, out_bias=True)
    assert wb.ModelConfig.preset("tiny-gpt2").qkv_bias and wb.ModelConfig.preset("tiny-gpt2").out_bias
    assert TINY.replace(attn_bias=True) == TINY.replace(qkv_bias=True, out_bias=True)
    assert wb.ModelConfig.preset("tiny-gpt2").replace(attn_bias=False) == TINY.replace(
        positions="learned", norm="layernorm", mlp="gelu", mlp_bias=True
    )
    assert "attn_bias" not in TINY.to_dict()


def test_saved_configs_with_attn_bias_still_load(tmp_path):
    torch.manual_seed(0)
    model = wb.TransformerLM(TINY.replace(attn_bias=True))
    wb.save_pretrained(model, tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    for key in ("qkv_bias", "out_bias", "attn_head_dim", "norm_offset", "embed_scale"):
        del raw["config"][key]  # a config written before these fields existed
    raw["config"]["attn_bias"] = True
    (tmp_path / "config.json").write_text(json.dumps(raw))
    loaded = load_pretrained(tmp_path)
    assert loaded.config == model.config and loaded.load_report.ok


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"attn_bias": False, "qkv_bias": True}, "attn_bias=False contradicts qkv_bias=True, out_bias=False"),
        ({"attn_bias": 1}, "attn_bias must be True, False or None, got 1"),
        ({"attn_head_dim": 0}, "attn_head_dim must be a positive integer or None, got 0"),
        ({"attn_head_dim": 9}, "RoPE needs an even head_dim, but attn_head_dim = 9"),
        ({"norm_offset": True, "norm": "layernorm"}, "norm_offset=True needs norm='rmsnorm', got norm='layernorm'"),
        ({"mlp": "reglu"}, "mlp='reglu' is unknown; use one of \\('gelu', 'swiglu', 'geglu', 'none'\\)"),
    ],
)
def test_invalid_new_fields_raise_with_values(changes, message):
    with pytest.raises(wb.ConfigError, match=message):
        wb.ModelConfig(**changes)


def test_head_width_apart_from_d_model():
    cfg = wb.ModelConfig(d_model=48, n_heads=4, attn_head_dim=24)
    assert cfg.head_dim == 24 and wb.ModelConfig(d_model=66, n_heads=4, attn_head_dim=16).head_dim == 16
    attn = wb.TransformerLM(cfg).blocks[0].attn
    assert attn.qkv.weight.shape == (3 * 4 * 24, 48) and attn.out.weight.shape == (48, 4 * 24)


def test_projection_biases_follow_the_fields():
    attn = wb.TransformerLM(TINY.replace(qkv_bias=True)).blocks[0].attn
    assert attn.qkv.bias is not None and attn.out.bias is None


def test_gemma_norm_and_embedding_start_neutral():
    model = wb.TransformerLM(TINY.replace(**VARIANTS["gemma"])).eval()
    assert all(torch.equal(p, torch.zeros_like(p)) for n, p in model.named_parameters() if "ln_" in n)
    x = torch.randn(2, 5, 64)
    norm = model.blocks[0].ln_attn
    torch.testing.assert_close(norm(x), x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps))
    ids = torch.randint(0, 256, (2, 5))
    assert torch.equal(model.embed(ids), model.embed.weight[ids] * torch.tensor(8.0))  # sqrt(64)


@pytest.mark.parametrize("name", VARIANTS)
def test_eager_equals_sdpa_and_padding_and_cache(name):
    model = _model(name)
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, :3] = 0
    with torch.no_grad():
        full = model(ids, attention_mask=mask)
        with model.attention_impl("eager"):
            assert (model(ids, attention_mask=mask) - full)[mask.bool()].abs().max() < 1e-5
        assert (model(ids[1:, 3:]) - full[1:, 3:]).abs().max() < 1e-5  # left padding changes nothing
        cache = model.new_cache(2, 12)
        steps = [model(ids[:, :6], attention_mask=mask[:, :6], cache=cache)]
        for t in range(6, 12):
            steps.append(model(ids[:, t : t + 1], attention_mask=mask[:, t : t + 1], cache=cache))
    assert (torch.cat(steps, dim=1) - full)[mask.bool()].abs().max() < 1e-5


@pytest.mark.parametrize("name", ["gemma", "qkv-bias-only"])
def test_fixed_shape_decode_step_equals_plain_decode(name):
    from workbench.model.decoder import FastDecoder

    model = _model(name)
    ids = torch.randint(0, 256, (2, 7), generator=torch.Generator().manual_seed(2))
    plain_cache, fast_cache = model.new_cache(2, 16), model.new_cache(2, 16)
    with torch.no_grad():
        plain = model(ids, cache=plain_cache)[:, -1]  # (B, V)
        model(ids, cache=fast_cache)
        step = FastDecoder(model, fast_cache, graphs=False)
        for _ in range(6):
            token = plain.argmax(-1)[:, None]  # (B, 1)
            plain = model(token, cache=plain_cache, validate=False)[:, -1]
            torch.testing.assert_close(step(token)[:, -1], plain, atol=1e-5, rtol=0)
