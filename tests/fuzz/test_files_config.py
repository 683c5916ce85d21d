"""config.json, workbench's own and HF's: schema checks before anything is built.

Regression cases are the findings of the first fuzzing run (issue 17); the property cases mutate one
field, or bytes, of a real saved config and assert the contract: a WorkbenchError, or a model whose
config holds exactly the written value and whose logits are finite (equal to the reference when the
value did not change).
"""

from __future__ import annotations

import json
import shutil

import pytest
from hypothesis import given
from hypothesis import strategies as st

import workbench as wb
from workbench.errors import ConfigError, CorruptFileError, WeightMismatchError

from .conftest import FUZZ, contract
from .files import JSON_VALUES, TINY, check_loaded, load, logits, rewrite_json, same_value, tiny_model

FIELDS = sorted(TINY.to_dict())
HF_FIELDS = ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
             "intermediate_size", "max_position_embeddings", "rms_norm_eps", "rope_theta", "tie_word_embeddings",
             "initializer_range", "head_dim", "rope_scaling", "attention_bias", "model_type"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(workbench dir, HF dir, reference logits) of one tiny untied Llama-shaped model."""
    model = tiny_model()
    root = tmp_path_factory.mktemp("config")
    wb.save_pretrained(model, root / "wb")
    wb.save_pretrained(model, root / "hf", format="hf")
    return root / "wb", root / "hf", logits(model)


def _copy(src, tmp_path, name="ckpt"):
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


# --- regressions: workbench config.json -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "content, error, words",
    [
        (b"\xff\xfe{\"format\": 1}", CorruptFileError, "not UTF-8"),
        (b"[1, 2]", CorruptFileError, "JSON list, not an object"),
        (b"42", CorruptFileError, "JSON int, not an object"),
        (b"\"config\"", CorruptFileError, "JSON str"),
        (b"[" * 100_000 + b"]" * 100_000, CorruptFileError, "nested too deeply"),
        (b'{"format": "workbench"}', ConfigError, 'no "config" section'),
        (b'{"format": "workbench", "config": [1]}', ConfigError, 'list as its "config" section'),
    ],
    ids=["not-utf8", "list", "number", "string", "deep-nesting", "config-missing", "config-list"],
)
def test_malformed_workbench_config_json(saved, tmp_path, content, error, words):
    path = _copy(saved[0], tmp_path)
    (path / "config.json").write_bytes(content)
    with contract() as outcome:
        load(path)
    assert isinstance(outcome.error, error) and words in str(outcome.error)


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("norm_eps", "1e-5", "norm_eps: Input should be a valid number"),
        ("rope_theta", [10000.0], "rope_theta: Input should be a valid number"),
        ("rope_theta", float("nan"), "rope_theta: Input should be a finite number"),
        ("norm_eps", float("nan"), "norm_eps: Input should be a finite number"),
        ("norm_eps", float("inf"), "norm_eps: Input should be a finite number"),
        ("tie_embeddings", "false", "tie_embeddings: Input should be a valid boolean"),
        ("tie_embeddings", 0, "tie_embeddings: Input should be a valid boolean"),
        ("d_model", "16", "d_model: Input should be a valid integer"),
        ("n_layers", 1.0, "n_layers: Input should be a valid integer"),
    ],
    ids=["str-float", "list-float", "nan-theta", "nan-eps", "inf-eps", "str-bool", "int-bool", "str-int", "float-int"],
)
def test_mistyped_workbench_field_is_named(saved, tmp_path, field, value, words):
    path = _copy(saved[0], tmp_path)
    rewrite_json(path / "config.json", lambda d: d["config"].__setitem__(field, value))
    with contract() as outcome:
        load(path)
    assert isinstance(outcome.error, ConfigError), outcome.error
    assert words in str(outcome.error) and "config.json" in str(outcome.error)


@pytest.mark.parametrize(
    "field, value", [("n_layers", 10**6), ("vocab_size", 10**12), ("d_model", 2**40), ("d_ff", 10**13)]
)
def test_huge_sizes_are_refused_from_the_header(saved, tmp_path, field, value):
    path = _copy(saved[0], tmp_path)
    rewrite_json(path / "config.json", lambda d: d["config"].__setitem__(field, value))
    with contract(5) as outcome:  # building first would take minutes or exhaust memory
        load(path)
    assert isinstance(outcome.error, WeightMismatchError)
    assert str(value) in str(outcome.error).replace(",", "") or "layers" in str(outcome.error)


def test_model_config_from_json_rejects_non_objects(tmp_path):
    path = tmp_path / "c.json"
    path.write_text("[1]")
    with pytest.raises(ConfigError, match="JSON list, not an object"):
        wb.ModelConfig.from_json(path)
    path.write_text(json.dumps({**TINY.to_dict(), "rope_theta": "1e4"}))
    with pytest.raises(ConfigError, match="rope_theta"):
        wb.ModelConfig.from_json(path)


# --- regressions: HF config.json ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "field, value, words",
    [
        ("hidden_size", "16", "hidden_size: Input should be a valid integer"),
        ("rope_theta", float("nan"), "rope_theta: Input should be a finite number"),
        ("rms_norm_eps", float("nan"), "rms_norm_eps: Input should be a finite number"),
        ("tie_word_embeddings", "false", "tie_word_embeddings: Input should be a valid boolean"),
        ("num_attention_heads", [2], "num_attention_heads: Input should be a valid integer"),
        ("rope_scaling", "linear", "rope_scaling"),
    ],
    ids=["str-hidden", "nan-theta", "nan-eps", "str-tie", "list-heads", "str-rope-scaling"],
)
def test_mistyped_hf_field_is_named(saved, tmp_path, field, value, words):
    path = _copy(saved[1], tmp_path)
    rewrite_json(path / "config.json", lambda d: d.__setitem__(field, value))
    with contract() as outcome:
        load(path)
    assert isinstance(outcome.error, ConfigError) and words in str(outcome.error)


def test_hf_string_false_never_ties_an_untied_checkpoint(saved, tmp_path):
    path = _copy(saved[1], tmp_path)
    rewrite_json(path / "config.json", lambda d: d.__setitem__("tie_word_embeddings", "false"))
    with pytest.raises(ConfigError, match="tie_word_embeddings"):
        load(path)
    rewrite_json(path / "config.json", lambda d: d.__setitem__("tie_word_embeddings", False))
    check_loaded(load(path), saved[2], same=True)


@pytest.mark.parametrize("field, value", [("num_hidden_layers", 10**6), ("vocab_size", 10**12),
                                          ("hidden_size", 2**20), ("intermediate_size", 10**12)])
def test_huge_hf_sizes_are_refused_from_the_header(saved, tmp_path, field, value):
    path = _copy(saved[1], tmp_path)
    rewrite_json(path / "config.json", lambda d: d.__setitem__(field, value))
    with contract(5) as outcome:
        load(path)
    assert isinstance(outcome.error, (WeightMismatchError, ConfigError))


# --- properties -----------------------------------------------------------------------------------------------
@FUZZ(60)
@given(field=st.sampled_from(FIELDS), value=JSON_VALUES)
def test_any_workbench_field_value(saved, tmp_path_factory, field, value):
    path = _copy(saved[0], tmp_path_factory.mktemp("wbfield"))
    rewrite_json(path / "config.json", lambda d: d["config"].__setitem__(field, value))
    with contract() as outcome:
        model = load(path)
    if outcome.error is None:
        written = getattr(model.config, field)
        assert same_value(written if field != "rope_scaling" else value, value) or written == value
        check_loaded(model, saved[2], same=same_value(TINY.to_dict()[field], value))


@FUZZ(40)
@given(field=st.sampled_from(HF_FIELDS), value=JSON_VALUES)
def test_any_hf_field_value(saved, tmp_path_factory, field, value):
    path = _copy(saved[1], tmp_path_factory.mktemp("hffield"))
    original = rewrite_json(path / "config.json", lambda d: None).get(field)
    rewrite_json(path / "config.json", lambda d: d.__setitem__(field, value))
    with contract() as outcome:
        model = load(path)
    if outcome.error is None:
        check_loaded(model, saved[2], same=same_value(original, value))


@FUZZ(30)
@given(data=st.data())
def test_config_json_byte_mutations(saved, tmp_path_factory, data):
    path = _copy(saved[0], tmp_path_factory.mktemp("wbbytes"))
    raw = bytearray((path / "config.json").read_bytes())
    if data.draw(st.booleans(), label="truncate"):
        raw = raw[: data.draw(st.integers(0, len(raw) - 1), label="length")]
    else:
        i = data.draw(st.integers(0, len(raw) - 1), label="position")
        raw[i] = data.draw(st.integers(0, 255).filter(lambda b: b != raw[i]), label="byte")
    (path / "config.json").write_bytes(bytes(raw))
    with contract() as outcome:
        model = load(path)
    if outcome.error is None:
        check_loaded(model, saved[2], same=model.config == TINY)
