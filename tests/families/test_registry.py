"""The family registry: built-in families, lookups, refusals, and a family added by one module's worth of code."""

from __future__ import annotations

import dataclasses
import importlib
import json
import pkgutil
import re
import sys
from contextlib import contextmanager

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
    row_permutations,
    unregister,
)
from workbench.families.hf_config import config_from_hf, config_to_hf, hf_architecture
from workbench.families.llama import GGUF_NAMING
from workbench.families.naming import Naming
from workbench.io.load import load_pretrained
from workbench.io.schemas import GGUF_TOKENIZER_KEYS

transformers = pytest.importorskip("transformers")

TINY = wb.ModelConfig.preset("tiny")
CONFIGS = {  # one config per family, each with the variant fields that family needs
    "gpt2": wb.ModelConfig.preset("tiny-gpt2"),
    "llama": TINY.replace(n_kv_heads=2, rope_scaling=wb.RopeScaling("linear", 2.0)),
    "qwen2": wb.ModelConfig.preset("tiny-qwen2"),
    "gemma": wb.ModelConfig.preset("tiny-gemma"),
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
        assert [f.name for f in registered() if f.preferred and f.holds(config)] == [name]  # one preferred holder
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
    types = tuple(sorted(f.hf_model_type for f in registered()))
    archs = tuple(sorted(f.gguf.arch for f in registered() if f.gguf is not None))
    assert {"gemma", "gpt2", "llama", "qwen2"} <= set(types) and {"gemma", "llama", "qwen2"} <= set(archs)
    supported = f"model_type='bert' is not supported; supported HF model types are {types}"
    with pytest.raises(wb.ConfigError, match=re.escape(supported)):
        for_hf_model_type("bert")
    with pytest.raises(UnsupportedModelError, match=re.escape(f"'falcon' is not supported; only {archs}")):
        for_gguf_arch("falcon")
    names = sorted(f.name for f in registered())
    unknown = f"Unknown model family 'bert'; registered families are {names}"
    with pytest.raises(wb.ConfigError, match=re.escape(unknown)):
        get("bert")
    with pytest.raises(wb.ConfigError, match="No HF transformers architecture") as info:
        for_config(TINY.replace(norm_placement="post"))
    assert all(f"{name}: " in str(info.value) for name in CONFIGS)
    assert "norm_placement='post' (needs 'pre')" in str(info.value)


def test_each_preset_is_declared_by_a_family_that_holds_it():
    declared = {name: family for family in registered() for name in family.presets}
    assert set(declared) == set(wb.PRESETS) >= {"tiny", "tiny-gpt2", "gpt2-small", "smollm2-135m"}
    for name, family in declared.items():
        assert family.holds(wb.ModelConfig.preset(name)), name
    assert declared["tiny"].name == "llama" and declared["gpt2-small"].name == "gpt2"
    assert {"tiny", "tiny-gpt2", "tiny-qwen2", "tiny-gemma"} <= set(wb.PRESETS)  # a tiny one for each family


def test_presets_come_and_go_with_their_family():
    llama = get("llama")
    twin = dataclasses.replace(llama, name="twin", hf_model_type="twin", gguf=None, presets={"tiny-twin": TINY})
    register(twin)
    try:
        assert wb.ModelConfig.preset("tiny-twin") == TINY and "tiny-twin" in wb.PRESETS
    finally:
        unregister("twin")
    with pytest.raises(wb.ConfigError, match="Unknown preset 'tiny-twin'"):
        wb.ModelConfig.preset("tiny-twin")
    with pytest.raises(wb.ConfigError, match="declares the preset 'tiny' of the registered family 'llama'"):
        register(dataclasses.replace(twin, presets={"tiny": TINY}))
    with pytest.raises(wb.ConfigError, match=r"declares the preset 'odd', which it does not hold: mlp='gelu'"):
        register(dataclasses.replace(twin, presets={"odd": TINY.replace(mlp="gelu")}))
    assert "twin" not in {f.name for f in registered()} and "odd" not in wb.PRESETS


def test_a_row_permutation_name_means_one_permutation():
    llama = get("llama")
    (rope,) = llama.permutations
    swapped = dataclasses.replace(rope, apply=rope.undo, undo=rope.apply)
    twin = dataclasses.replace(llama, name="twin", hf_model_type="twin", gguf=None, presets={})
    with pytest.raises(wb.ConfigError, match="declares a row permutation 'rope' that differs from .* 'llama'"):
        register(dataclasses.replace(twin, permutations=(swapped,)))
    register(twin)  # the same permutation again is fine, and listed once
    try:
        assert [p.name for p in row_permutations()] == ["rope"]
    finally:
        unregister("twin")


def test_every_module_of_the_package_is_imported_so_a_family_module_registers_itself():
    import workbench.families as package

    modules = [m.name for m in pkgutil.iter_modules(package.__path__)]
    assert {"llama", "gpt2", "qwen2", "gemma", "registry", "naming"} <= set(modules)
    assert all(f"workbench.families.{m}" in sys.modules for m in modules)
    for family in registered():  # each built-in family is declared by a module of its own name
        assert getattr(importlib.import_module(f"workbench.families.{family.name}"), family.name.upper()) is family


@contextmanager
def registered_in_order(*families: Family):
    """The registry holding `families` in this order, then the families it held before, in their order."""
    before = registered()
    for family in before:
        unregister(family.name)
    try:
        for family in families:
            register(family)
        yield
    finally:
        for family in registered():
            unregister(family.name)
        for family in before:
            register(family)


def test_for_config_prefers_preferred_families_and_takes_a_named_one_that_holds_the_config():
    llama = get("llama")
    twin = dataclasses.replace(llama, name="twin", hf_model_type="twin", hf_architecture="TwinForCausalLM", gguf=None,
                               presets={}, preferred=False)
    with registered_in_order(twin, llama):  # the twin first: only its flag lets llama go first
        assert for_config(TINY) is llama and config_to_hf(TINY)["model_type"] == "llama"
        assert for_config(TINY, "twin") is twin
        assert config_to_hf(TINY, "twin")["architectures"] == ["TwinForCausalLM"]
        with pytest.raises(wb.ConfigError, match="the twin family cannot hold this config exactly .*'learned'"):
            for_config(CONFIGS["gpt2"], "twin")
    with registered_in_order(dataclasses.replace(twin, preferred=True), llama):
        assert for_config(TINY).name == "twin"  # without the flag, registration order decides
    assert [f.name for f in registered()][:1] == ["llama"] and "twin" not in {f.name for f in registered()}
    with pytest.raises(wb.ConfigError, match="Unknown model family 'twin'"):
        for_config(TINY, "twin")


def test_register_refuses_a_family_that_claims_a_taken_name():
    with pytest.raises(wb.ConfigError, match="claims the HF model_type 'llama' of the registered family 'llama'"):
        register(dataclasses.replace(get("llama"), name="llama-again", gguf=None))
    assert "llama-again" not in {f.name for f in registered()}


# --- the config.json fields and GGUF keys each family declares ------------------------------------------
class ReadLog(dict):
    """A config.json dict that records every key read from it."""

    def __init__(self, data: dict) -> None:
        super().__init__(data)
        self.read: set[str] = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)

    def __contains__(self, key):
        self.read.add(key)
        return super().__contains__(key)


@pytest.mark.parametrize("family", registered(), ids=lambda f: f.name)
def test_each_family_declares_every_hf_field_it_reads(family):
    configs = [CONFIGS.get(family.name), *family.presets.values()]
    assert configs[1:], f"{family.name} declares no preset"  # a tiny one at least, for tests
    for config in filter(None, configs):
        raw = ReadLog(transformers.AutoConfig.for_model(**config_to_hf(config, family.name)).to_dict())
        back = family.config_from_hf(raw)
        assert back.replace(n_kv_heads=back.kv_heads) == config.replace(n_kv_heads=config.kv_heads)  # None: n_heads
        assert raw.read - {"model_type"} <= set(family.hf_fields), raw.read - set(family.hf_fields)


class MetaLog:
    """GGUF metadata of a small decoder under `{arch}.` keys, recording every key read."""

    def __init__(self, arch: str) -> None:
        p = f"{arch}."
        self.values = {p + "embedding_length": 64, p + "attention.head_count": 4, p + "attention.head_count_kv": 2,
                       p + "block_count": 2, p + "feed_forward_length": 96, p + "context_length": 64,
                       p + "vocab_size": 97, p + "rope.freq_base": 5000.0, p + "attention.layer_norm_rms_epsilon": 1e-6}
        self.read: set[str] = set()
        self.rope_scaling_read = False

    def get(self, key, default=None):
        self.read.add(key)
        return self.values.get(key, default)

    def require(self, key):
        self.read.add(key)
        return self.values[key]

    def has_tensor(self, name):
        return name == "output.weight"

    def rope_scaling(self, head_dim, theta):
        self.rope_scaling_read = True  # the reader reads `{arch}.rope.scaling.*` and `rope.scale_linear` for it
        return None


@pytest.mark.parametrize("family", [f for f in registered() if f.gguf is not None], ids=lambda f: f.name)
def test_each_gguf_family_declares_every_key_it_reads(family):
    spec = family.gguf
    meta = MetaLog(spec.arch)
    config = spec.config_from_meta(meta)
    assert (config.d_model, config.n_layers, config.kv_heads, config.vocab_size) == (64, 2, 2, 97)
    arch_keys = {k.removeprefix(f"{spec.arch}.") for k in meta.read if k.startswith(f"{spec.arch}.")}
    assert arch_keys and arch_keys <= set(spec.keys), arch_keys - set(spec.keys)
    assert meta.read - {f"{spec.arch}.{k}" for k in arch_keys} <= set(GGUF_TOKENIZER_KEYS)
    if meta.rope_scaling_read:
        assert {"rope.scaling.type", "rope.scaling.factor", "rope.scale_linear"} <= set(spec.keys)


def test_a_field_is_checked_by_the_family_that_reads_it():
    llama = config_to_hf(CONFIGS["llama"])
    assert config_from_hf(llama | {"n_embd": "64", "max_window_layers": -1}) == CONFIGS["llama"]  # not Llama's
    with pytest.raises(wb.ConfigError, match="n_embd: Input should be a valid integer"):
        config_from_hf(config_to_hf(CONFIGS["gpt2"]) | {"n_embd": "64"})
    with pytest.raises(wb.ConfigError, match="max_window_layers: Input should be greater than or equal to 0"):
        config_from_hf(config_to_hf(CONFIGS["qwen2"]) | {"max_window_layers": -1})
    with pytest.raises(wb.ConfigError, match="mlp_bias: Input should be a valid boolean"):
        config_from_hf(llama | {"mlp_bias": "false"})


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
    hf_fields=dict.fromkeys(("vocab", "dim", "depth", "heads", "kv_heads", "ffn"), "count"),
    differences=lambda config: ["the toy family holds no config for saving"],
    gguf=GGUFSpec(arch="toy", config_from_meta=lambda meta: TINY, naming=GGUF_NAMING, keys={}),
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


def test_register_refuses_a_declaration_of_an_unknown_kind():
    with pytest.raises(wb.ConfigError, match=r"declares hf_fields of unknown kinds \{'hidden_size': 'int'\}"):
        register(dataclasses.replace(TOY, hf_fields={"hidden_size": "int"}))
    bad_keys = dataclasses.replace(TOY.gguf, keys={"block_count": "integer"})
    with pytest.raises(wb.ConfigError, match=r"declares gguf.keys of unknown kinds \{'block_count': 'integer'\}"):
        register(dataclasses.replace(TOY, gguf=bad_keys))
    assert "toy" not in {f.name for f in registered()}
