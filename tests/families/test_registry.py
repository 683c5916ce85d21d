"""The family registry: built-in families, lookups, refusals, and a family added by one module's worth of code."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import save_file

import workbench as wb
from workbench.errors import UnsupportedModelError
from workbench.families import (
    Family,
    GGUFSpec,
    for_config,
    for_gguf_arch,
    for_hf_model_type,
    get,
    register,
    registered,
    unregister,
)
from workbench.families.llama import GGUF_NAMING
from workbench.families.naming import Naming
from workbench.io.load import load_pretrained
from workbench.model.hf_config import config_from_hf, config_to_hf, hf_architecture

transformers = pytest.importorskip("transformers")

TINY = wb.ModelConfig.preset("tiny")
CONFIGS = {  # one config per family, each with the variant fields that family needs
    "gpt2": wb.ModelConfig.preset("tiny-gpt2"),
    "llama": TINY.replace(n_kv_heads=2, rope_scaling=wb.RopeScaling("linear", 2.0)),
    "qwen2": TINY.replace(n_kv_heads=2, qkv_bias=True, tie_embeddings=False),
    "gemma": TINY.replace(
        n_kv_heads=1, attn_head_dim=24, norm_offset=True, mlp="geglu", embed_scale=True, norm_eps=1e-6
    ),
}


def test_builtin_families_are_registered_under_transformers_names():
    assert {f.name for f in registered()} >= set(CONFIGS)
    for family in map(get, CONFIGS):
        assert hasattr(transformers, family.hf_architecture), family.hf_architecture
        assert transformers.AutoConfig.for_model(family.hf_model_type).model_type == family.hf_model_type


def test_lookups_by_model_type_gguf_arch_and_config():
    assert for_hf_model_type("qwen2") is get("qwen2")
    assert for_hf_model_type("gemma").hf_architecture == "GemmaForCausalLM"
    assert [for_gguf_arch(a).name for a in ("llama", "qwen2", "gemma")] == ["llama", "qwen2", "gemma"]
    for name, config in CONFIGS.items():
        assert for_config(config).name == name
        assert [f.name for f in registered() if f.holds(config)] == [name]  # exactly one family holds it
        assert hf_architecture(config) == name


@pytest.mark.parametrize("name", CONFIGS)
def test_config_to_hf_and_back(name):
    config = CONFIGS[name]
    raw = config_to_hf(config)
    assert raw["model_type"] == name and raw["architectures"] == [get(name).hf_architecture]
    assert config_from_hf(raw) == config
    hf_config = transformers.AutoConfig.for_model(**raw)  # transformers reads it back without complaint
    assert config_from_hf(hf_config.to_dict()) == config


def test_unknown_families_are_refused_naming_the_supported_ones():
    supported = r"model_type='mistral' is not supported; .*\('gemma', 'gpt2', 'llama', 'qwen2'\)"
    with pytest.raises(wb.ConfigError, match=supported):
        for_hf_model_type("mistral")
    with pytest.raises(UnsupportedModelError, match=r"'falcon' is not supported; only \('gemma', 'llama', 'qwen2'\)"):
        for_gguf_arch("falcon")
    with pytest.raises(wb.ConfigError, match=r"Unknown model family 'bert'; registered families are \['gemma', 'gpt2'"):
        get("bert")
    with pytest.raises(wb.ConfigError, match="No HF transformers architecture") as info:
        for_config(TINY.replace(norm_placement="post"))
    assert all(f"{name}: " in str(info.value) for name in CONFIGS)
    assert "norm_placement='post' (needs 'pre')" in str(info.value)


def test_register_refuses_a_family_that_claims_a_taken_name():
    with pytest.raises(wb.ConfigError, match="claims the HF model_type 'llama' of the registered family 'llama'"):
        register(dataclasses.replace(get("llama"), name="llama-again", gguf=None))
    assert "llama-again" not in {f.name for f in registered()}


# --- a family added as a plug-in: only its own declarations, nothing else changes --------------
TOY_NAMING = Naming(
    prefix="net.",
    layer="layer{i}.",
    block={"norm1": "ln_attn", "norm2": "ln_mlp", "wo": "attn.out", "w2": "mlp.down"},
    fused={"attn.qkv": ("wq", "wk", "wv"), "mlp.up": ("w1", "w3")},
    top={"tok.weight": "embed.weight", "norm.weight": "ln_f.weight", "head.weight": "lm_head.weight"},
    unprefixed=("head.weight",),
)


def _toy_from_hf(hf: dict) -> wb.ModelConfig:
    return wb.ModelConfig(
        vocab_size=hf["vocab"], d_model=hf["dim"], n_layers=hf["depth"], n_heads=hf["heads"],
        n_kv_heads=hf["kv_heads"], d_ff=hf["ffn"], tie_embeddings=False,
    )


def _toy_to_hf(c: wb.ModelConfig) -> dict:
    return {"vocab": c.vocab_size, "dim": c.d_model, "depth": c.n_layers, "heads": c.n_heads,
            "kv_heads": c.kv_heads, "ffn": c.d_ff}


TOY = Family(
    name="toy",
    hf_model_type="toy-lm",
    hf_architecture="ToyForCausalLM",
    config_from_hf=_toy_from_hf,
    config_to_hf=_toy_to_hf,
    hf_naming=TOY_NAMING,
    differences=lambda config: ["the toy family holds no config for saving"],
    gguf=GGUFSpec(arch="toy", config_from_meta=lambda meta: TINY, naming=GGUF_NAMING),
)


def test_a_new_family_needs_only_its_declaration(tmp_path):
    torch.manual_seed(0)
    config = TINY.replace(n_kv_heads=2, tie_embeddings=False)
    model = wb.TransformerLM(config).eval()
    state = TOY_NAMING.from_workbench(model.state_dict(), config)
    assert {"net.layer0.wq.weight", "net.layer1.w3.weight", "net.tok.weight", "head.weight"} <= set(state)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "toy-lm", **_toy_to_hf(config)}))

    with pytest.raises(wb.ConfigError, match="model_type='toy-lm' is not supported"):
        load_pretrained(tmp_path)
    register(TOY)
    try:
        assert for_hf_model_type("toy-lm") is TOY and for_gguf_arch("toy") is TOY
        loaded = load_pretrained(tmp_path)
        assert for_config(config).name == "llama"  # saving still picks the first family that holds the config
    finally:
        unregister("toy")
    assert loaded.config == config
    report = loaded.load_report
    assert report.ok and report.unexpected == [] and report.format == "hf"
    ids = torch.randint(0, config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))
    with pytest.raises(wb.ConfigError, match="model_type='toy-lm' is not supported"):
        for_hf_model_type("toy-lm")
