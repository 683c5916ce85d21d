"""Qwen2: parity with HF's Qwen2ForCausalLM, HF save/load round trip, GGUF, and refused configs."""

from __future__ import annotations

import gguf
import pytest
from familymodels import hf_round_trip, logit_diff, qwen2, write_gguf

import workbench as wb
from workbench.families.hf_config import config_from_hf
from workbench.io.gguf import load_gguf
from workbench.io.load import load_pretrained

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_parity_with_left_padding(tmp_path, tie, impl):
    hf = qwen2(transformers, tie=tie)
    hf.save_pretrained(tmp_path)
    ours = load_pretrained(tmp_path)
    cfg = ours.config
    assert (cfg.qkv_bias, cfg.out_bias, cfg.mlp_bias, cfg.kv_heads, cfg.rope_theta) == (True, False, False, 2, 5000.0)
    assert ours.blocks[0].attn.out.bias is None and ours.blocks[0].attn.qkv.bias is not None
    report = ours.load_report
    assert report.ok and not report.unexpected and not report.missing
    with ours.attention_impl(impl):
        assert logit_diff(ours, hf) <= 1e-4


def test_hf_save_load_round_trip(tmp_path):
    hf_round_trip(transformers, qwen2(transformers), tmp_path, "qwen2", "Qwen2ForCausalLM")


def test_gguf_written_like_llama_cpp_loads_to_hf_logits(tmp_path):
    hf = qwen2(transformers)
    hf.save_pretrained(tmp_path / "hf")
    path = write_gguf(tmp_path / "q.gguf", hf, gguf.MODEL_ARCH.QWEN2)
    ours = load_gguf(path)
    assert ours.config == load_pretrained(tmp_path / "hf").config
    report = ours.load_report
    assert report.ok and report.unexpected == [] and report.format == "gguf"
    assert not any("permutation" in note for note in report.notes)  # Qwen2's q/k rows are stored as HF has them
    assert logit_diff(ours, hf) <= 1e-4


def _hf_dict(**changes) -> dict:
    return qwen2(transformers, **changes).config.to_dict()


def test_rope_theta_read_from_rope_parameters():
    raw = _hf_dict()
    assert "rope_theta" not in raw and raw["rope_parameters"]["rope_theta"] == 5000.0  # transformers 5 spelling
    assert config_from_hf(raw).rope_theta == 5000.0


def test_sliding_window_is_refused_naming_the_fields():
    raw = _hf_dict(use_sliding_window=True, sliding_window=8, max_window_layers=1)
    assert raw["layer_types"] == ["full_attention", "sliding_attention"]  # what transformers will run
    with pytest.raises(wb.ConfigError, match="layer_types marks layers \\[1\\] as sliding_attention"):
        config_from_hf(raw)
    raw.pop("layer_types")  # a config.json from before layer_types
    with pytest.raises(wb.ConfigError, match="use_sliding_window=true with sliding_window=8 from layer max_window"):
        config_from_hf(raw)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"hidden_act": "gelu"}, "Qwen2 hidden_act='gelu' is not supported"),
        ({"head_dim": 32}, "Qwen2 head_dim=32 differs"),
    ],
)
def test_unsupported_configs_are_refused_by_field(changes, message):
    with pytest.raises(wb.ConfigError, match=message):
        config_from_hf(_hf_dict() | changes)


def test_sliding_window_above_every_layer_is_full_attention():
    """max_window_layers >= num_hidden_layers: transformers slides no layer, so the config loads."""
    raw = _hf_dict(use_sliding_window=True, sliding_window=8, max_window_layers=2)
    assert set(raw["layer_types"]) == {"full_attention"}
    assert config_from_hf(raw).qkv_bias
    raw.pop("layer_types")
    assert config_from_hf(raw).qkv_bias
