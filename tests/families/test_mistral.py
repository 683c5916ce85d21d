"""Mistral: parity with HF's MistralForCausalLM, HF config and checkpoint round trips, GGUF written as
llama.cpp writes Mistral (architecture llama), and the sliding window refused."""

from __future__ import annotations

import copy
import json

import gguf
import pytest
import torch
from familymodels import VOCAB, logit_diff, randomize, write_gguf
from ggufwrite import to_pair_order

import workbench as wb
from workbench.families import config_from_hf, config_to_hf, for_config, for_gguf_arch, get
from workbench.io.gguf import load_gguf
from workbench.io.load import load_pretrained

transformers = pytest.importorskip("transformers")


def mistral(*, tie: bool = False, kv_heads: int = 2, head_dim: int | None = None, **extra):
    """A tiny random-weight MistralForCausalLM; without a window unless `sliding_window` is passed."""
    extra = {"sliding_window": None, **extra}
    cfg = transformers.MistralConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        max_position_embeddings=64,
        tie_word_embeddings=tie,
        rope_theta=5000.0,
        **extra,
    )
    torch.manual_seed(14)
    return randomize(transformers.MistralForCausalLM(cfg), (0.5, 1.5))


@pytest.mark.parametrize("tie, head_dim", [(False, None), (True, 24)])
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_parity_with_left_padding(tmp_path, tie, head_dim, impl):
    hf = mistral(tie=tie, head_dim=head_dim)
    hf.save_pretrained(tmp_path)
    ours = load_pretrained(tmp_path)
    cfg = ours.config
    assert (cfg.kv_heads, cfg.head_dim, cfg.attn_head_dim, cfg.rope_theta, cfg.tie_embeddings) == (
        2, head_dim or 16, head_dim, 5000.0, tie
    )
    assert not (cfg.qkv_bias or cfg.out_bias or cfg.mlp_bias) and cfg.mlp == "swiglu"
    report = ours.load_report
    assert report.ok and not report.unexpected and not report.missing
    with ours.attention_impl(impl):
        assert logit_diff(ours, hf) <= 1e-4


def test_hf_checkpoint_round_trip_as_mistral(tmp_path):
    """HF -> workbench -> `save_pretrained(format="hf", family="mistral")` -> transformers: the same logits and
    bit-equal weights at every hop."""
    hf = mistral()
    hf.save_pretrained(tmp_path / "hf")
    ours = load_pretrained(tmp_path / "hf")
    wb.save_pretrained(ours, tmp_path / "ours", format="hf", family="mistral")
    raw = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert raw["model_type"] == "mistral" and raw["architectures"] == ["MistralForCausalLM"]
    assert raw["sliding_window"] is None
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours", dtype=torch.float32).eval()
    assert type(again).__name__ == "MistralForCausalLM" and again.config.sliding_window is None
    assert logit_diff(ours, again) <= 1e-4
    for name, value in hf.state_dict().items():
        assert torch.equal(again.state_dict()[name], value), name
    back = load_pretrained(tmp_path / "ours")
    assert back.config == ours.config
    for (name, a), b in zip(ours.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_default_save_writes_llama_which_transformers_runs_to_the_same_logits(tmp_path):
    hf = mistral()
    hf.save_pretrained(tmp_path / "hf")
    ours = load_pretrained(tmp_path / "hf")
    assert get("mistral").holds(ours.config) and for_config(ours.config).name == "llama"  # Llama is preferred
    wb.save_pretrained(ours, tmp_path / "ours", format="hf")
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours", dtype=torch.float32).eval()
    assert type(again).__name__ == "LlamaForCausalLM"
    assert logit_diff(ours, again) <= 1e-4 and logit_diff(ours, hf) <= 1e-4
    assert load_pretrained(tmp_path / "ours").config == ours.config


def test_config_round_trips_both_ways():
    config = wb.ModelConfig.preset("tiny-mistral").replace(attn_head_dim=24, rope_theta=5e5, max_seq_len=512)
    raw = config_to_hf(config, "mistral")
    assert (raw["model_type"], raw["architectures"], raw["head_dim"]) == ("mistral", ["MistralForCausalLM"], 24)
    assert config_from_hf(raw) == config
    theirs = transformers.AutoConfig.for_model(**raw)  # transformers reads it back as a MistralConfig
    assert type(theirs).__name__ == "MistralConfig" and theirs.sliding_window is None
    assert config_from_hf(theirs.to_dict()) == config
    # and from transformers' side: a MistralConfig -> workbench -> config.json -> the same MistralConfig
    original = mistral(kv_heads=1, head_dim=8).config
    again = transformers.MistralConfig(**config_to_hf(config_from_hf(original.to_dict()), "mistral"))
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "rope_parameters",
                "tie_word_embeddings", "sliding_window", "hidden_act"):
        assert getattr(again, key) == getattr(original, key), key


def test_gguf_written_as_llama_cpp_writes_mistral_loads_to_hf_logits(tmp_path):
    """llama.cpp's converter stores MistralForCausalLM as architecture `llama`, q/k rows in pair order."""
    hf = mistral()
    hf.save_pretrained(tmp_path / "hf")
    stored = copy.deepcopy(hf)
    with torch.no_grad():
        for layer in stored.model.layers:
            attn = layer.self_attn
            attn.q_proj.weight.copy_(to_pair_order(attn.q_proj.weight, 4))
            attn.k_proj.weight.copy_(to_pair_order(attn.k_proj.weight, 2))
    path = write_gguf(tmp_path / "m.gguf", stored, gguf.MODEL_ARCH.LLAMA)
    assert for_gguf_arch("llama").name == "llama"  # nothing in the file says Mistral
    ours = load_gguf(path)
    assert ours.config == load_pretrained(tmp_path / "hf").config
    assert get("mistral").holds(ours.config)
    report = ours.load_report
    assert report.ok and report.unexpected == [] and report.format == "gguf"
    assert "undid llama.cpp's q/k row permutation in 2 layers" in report.notes
    assert logit_diff(ours, hf) <= 1e-4


def _hf_dict(**changes) -> dict:
    return mistral(**changes).config.to_dict()


def test_sliding_window_shorter_than_the_context_is_refused_naming_the_fields():
    raw = _hf_dict(sliding_window=16)
    with pytest.raises(wb.ConfigError, match="Mistral sliding_window=16 is shorter than max_position_embeddings=64"):
        config_from_hf(raw)
    assert config_from_hf(raw | {"sliding_window": 64}) == config_from_hf(raw | {"sliding_window": None})
    with pytest.raises(wb.ConfigError, match="sliding_window: Input should be a valid integer"):
        config_from_hf(raw | {"sliding_window": "4096"})


def test_defaults_and_refusals_follow_mistral_config():
    raw = _hf_dict()
    del raw["max_position_embeddings"]
    assert config_from_hf(raw).max_seq_len == transformers.MistralConfig().max_position_embeddings == 131072
    with pytest.raises(wb.ConfigError, match="Mistral hidden_act='gelu' is not supported"):
        config_from_hf(_hf_dict(hidden_act="gelu"))
    with pytest.raises(wb.ConfigError, match="rope_scaling type 'yarn' is not supported"):
        config_from_hf(_hf_dict() | {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 5000.0}})


def test_the_family_is_one_registered_module_with_a_tiny_preset():
    family = get("mistral")
    assert (family.hf_model_type, family.hf_architecture, family.gguf, family.preferred) == (
        "mistral", "MistralForCausalLM", None, False
    )
    tiny = wb.ModelConfig.preset("tiny-mistral")
    assert family.presets == {"tiny-mistral": tiny} and family.holds(tiny)
    assert family.differences(tiny.replace(qkv_bias=True)) == ["qkv_bias=True (needs False)"]
