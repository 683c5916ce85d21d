"""Gemma: parity with HF's GemmaForCausalLM, HF save/load round trip, GGUF, and the embedding scale's dtype."""

from __future__ import annotations

import copy

import gguf
import pytest
import torch
from familymodels import VOCAB, gemma, hf_round_trip, logit_diff, padded_batch, write_gguf

import workbench as wb
from workbench.families.hf_config import config_from_hf
from workbench.io.gguf import load_gguf
from workbench.io.load import load_pretrained

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("tie, head_dim, kv_heads", [(True, 24, 1), (False, 12, 2)])
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_parity_with_left_padding(tmp_path, tie, head_dim, kv_heads, impl):
    hf = gemma(transformers, tie=tie, head_dim=head_dim, kv_heads=kv_heads)
    hf.save_pretrained(tmp_path)
    ours = load_pretrained(tmp_path)
    cfg = ours.config
    assert (cfg.norm_offset, cfg.mlp, cfg.embed_scale, cfg.head_dim, cfg.tie_embeddings) == (
        True, "geglu", True, head_dim, tie
    )
    assert cfg.attn_head_dim == (None if head_dim == 48 // 4 else head_dim)
    report = ours.load_report
    assert report.ok and not report.unexpected and not report.missing
    assert (ours.lm_head.weight.data_ptr() == ours.embed.weight.data_ptr()) == tie
    with ours.attention_impl(impl):
        assert logit_diff(ours, hf) <= 1e-4


def test_hf_save_load_round_trip(tmp_path):
    raw = hf_round_trip(transformers, gemma(transformers), tmp_path, "gemma", "GemmaForCausalLM")
    assert raw["head_dim"] == 24


def test_gguf_written_like_llama_cpp_loads_to_hf_logits(tmp_path):
    hf = gemma(transformers)
    hf.save_pretrained(tmp_path / "hf")
    path = write_gguf(tmp_path / "g.gguf", hf, gguf.MODEL_ARCH.GEMMA, norm_plus_one=True)
    ours = load_gguf(path)
    assert ours.config == load_pretrained(tmp_path / "hf").config
    report = ours.load_report
    assert report.ok and report.unexpected == [] and report.format == "gguf"
    assert any("subtracted one from 5 norm weights" in note for note in report.notes)
    assert logit_diff(ours, hf) <= 1e-4


def test_embedding_scale_is_rounded_to_the_dtype_as_hf_rounds_it(tmp_path):
    hf = gemma(transformers)
    hf.save_pretrained(tmp_path)
    ours = load_pretrained(tmp_path)
    ids = padded_batch()[0]
    for dtype in (torch.bfloat16, torch.float16):  # fresh float32 copies: each cast rounds once
        with torch.no_grad():
            mine = copy.deepcopy(ours).to(dtype).embed(ids)
            theirs = copy.deepcopy(hf).to(dtype).model.embed_tokens(ids)
            unrounded = (hf.model.embed_tokens.weight[ids].to(dtype).float() * 48**0.5).to(dtype)
        assert torch.equal(mine, theirs), dtype
        assert not torch.equal(mine, unrounded)  # sqrt(48) in this dtype really is another number
    ours.to(torch.bfloat16).to(torch.float16).float()  # the weights are rounded now, the factor is not
    assert ours.embed.scale.dtype == torch.float32 and ours.embed.scale.item() == torch.tensor(48**0.5).item()


def _hf_dict(**changes) -> dict:
    return gemma(transformers, **changes).config.to_dict()


def test_config_translation():
    raw = _hf_dict()
    assert raw["hidden_act"] == "gelu_pytorch_tanh"
    cfg = config_from_hf(raw)
    assert (cfg.vocab_size, cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_dim) == (VOCAB, 48, 4, 1, 24)
    assert config_from_hf(raw | {"hidden_act": "gelu"}) == cfg  # transformers reads it as the tanh GELU
    del raw["head_dim"]
    assert config_from_hf(raw).head_dim == 256  # GemmaConfig's default


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"hidden_act": "silu"}, "Gemma hidden_act='silu' is not supported"),
        ({"use_bidirectional_attention": True}, "use_bidirectional_attention=true is not supported"),
        ({"rope_parameters": {"rope_type": "yarn", "factor": 2.0}}, "'yarn' is not supported"),
    ],
)
def test_unsupported_configs_are_refused(changes, message):
    with pytest.raises(wb.ConfigError, match=message):
        config_from_hf(_hf_dict() | changes)
