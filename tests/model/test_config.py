"""ModelConfig validation, derived values, presets and HF translation."""

from __future__ import annotations

import dataclasses

import pytest

from workbench import ConfigError, ModelConfig
from workbench.families.hf_config import config_from_hf


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"d_model": 66, "n_heads": 4}, "d_model=66 is not divisible by n_heads=4"),
        ({"n_heads": 4, "n_kv_heads": 3}, "n_heads=4 is not divisible by n_kv_heads=3"),
        ({"d_model": 72, "n_heads": 8}, "RoPE needs an even head_dim, .* = 9"),
        ({"vocab_size": 0}, "vocab_size must be a positive integer, got 0"),
        ({"n_layers": -1}, "n_layers must be a positive integer, got -1"),
        ({"d_ff": 0}, "d_ff must be a positive integer"),
        ({"max_seq_len": 0}, "max_seq_len must be a positive integer"),
        ({"n_kv_heads": 0}, "n_kv_heads must be a positive integer or None, got 0"),
        ({"positions": "alibi"}, "positions='alibi' is unknown; use one of \\('learned', 'rope'\\)"),
        ({"norm": "batchnorm"}, "norm='batchnorm' is unknown"),
        ({"norm_placement": "sandwich"}, "norm_placement='sandwich' is unknown"),
        ({"mlp": "relu"}, "mlp='relu' is unknown"),
        ({"dropout": 1.0}, "dropout must be in \\[0, 1\\), got 1.0"),
        ({"norm_eps": 0.0}, "must be positive"),
    ],
)
def test_invalid_configs_raise_with_values(changes, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**changes)


def test_odd_head_dim_is_fine_without_rope():
    cfg = ModelConfig(d_model=72, n_heads=8, positions="learned")
    assert cfg.head_dim == 9


def test_derived_values_and_frozen():
    cfg = ModelConfig(d_model=96, n_heads=6, n_kv_heads=2)
    assert (cfg.head_dim, cfg.kv_heads, cfg.kv_groups) == (16, 2, 3)
    assert ModelConfig(n_heads=4).kv_heads == 4
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.d_model = 8  # type: ignore[misc]


def test_presets():
    small = ModelConfig.preset("smollm2-135m")
    assert (small.n_layers, small.n_heads, small.kv_heads, small.head_dim) == (30, 9, 3, 64)
    gpt2 = ModelConfig.preset("gpt2-small")
    assert (gpt2.positions, gpt2.norm, gpt2.mlp, gpt2.head_dim) == ("learned", "layernorm", "gelu", 64)
    with pytest.raises(ConfigError, match="Unknown preset 'gpt5'"):
        ModelConfig.preset("gpt5")


def test_dict_round_trip_and_unknown_fields():
    cfg = ModelConfig.preset("tiny-gpt2")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="Unknown config fields \\['n_embd'\\]"):
        ModelConfig.from_dict({"n_embd": 3})


def test_from_hf_gpt2_and_llama():
    gpt2 = config_from_hf(
        {"model_type": "gpt2", "vocab_size": 50257, "n_embd": 768, "n_layer": 12, "n_head": 12, "n_positions": 1024}
    )
    assert gpt2 == ModelConfig.preset("gpt2-small")
    llama = config_from_hf(
        {
            "model_type": "llama",
            "vocab_size": 49152,
            "hidden_size": 576,
            "num_hidden_layers": 30,
            "num_attention_heads": 9,
            "num_key_value_heads": 3,
            "intermediate_size": 1536,
            "max_position_embeddings": 8192,
            "rope_theta": 100000.0,
            "rms_norm_eps": 1e-5,
            "tie_word_embeddings": True,
        }
    )
    assert llama == ModelConfig.preset("smollm2-135m")


@pytest.mark.parametrize(
    "hf, message",
    [
        ({"model_type": "bert"}, "model_type='bert' is not supported"),
        ({}, "model_type=None is not supported"),
        ({"model_type": "llama", "vocab_size": 10}, "lacks the required field 'hidden_size'"),
        (
            {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "rope_scaling": {"type": "yarn"}},
            "rope_scaling",
        ),
    ],
)
def test_from_hf_refuses_unsupported(hf, message):
    with pytest.raises(ConfigError, match=message):
        config_from_hf(hf)
