"""Workbench-format round trips, load reports, strictness, pickle refusal and corrupt files."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import workbench as wb
from workbench.io.load import load_pretrained


def _model(**changes) -> wb.TransformerLM:
    torch.manual_seed(0)
    return wb.TransformerLM(wb.ModelConfig.preset("tiny").replace(**changes)).eval()


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"tie_embeddings": False},
        {"positions": "learned", "norm": "layernorm", "mlp": "gelu", "attn_bias": True, "norm_placement": "post"},
    ],
)
def test_workbench_round_trip_is_bit_exact(tmp_path, changes):
    model = _model(**changes)
    wb.save_pretrained(model, tmp_path)
    loaded = load_pretrained(tmp_path)
    assert loaded.config == model.config
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    ids = torch.randint(0, 256, (2, 9))
    assert torch.equal(model(ids), loaded(ids))
    assert not loaded.training
    tied = model.config.tie_embeddings
    assert (loaded.lm_head.weight.data_ptr() == loaded.embed.weight.data_ptr()) == tied
    assert (("lm_head.weight", "embed.weight") in loaded.load_report.tied) == tied


def test_load_report_missing_unexpected_mismatch(tmp_path):
    model = _model(tie_embeddings=False)
    wb.save_pretrained(model, tmp_path)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    del state["ln_f.weight"]
    state["extra.weight"] = torch.zeros(3)
    state["blocks.0.mlp.down.weight"] = torch.zeros(5, 5)
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(wb.WeightMismatchError, match="1 missing and 1 mismatched"):
        load_pretrained(tmp_path)
    loaded = load_pretrained(tmp_path, strict=False)
    report = loaded.load_report
    assert report.missing == ["ln_f.weight"]
    assert report.unexpected == ["extra.weight"]
    assert report.mismatched == [("blocks.0.mlp.down.weight", (5, 5), (64, 256))]
    text = str(report)
    assert "missing" in text and "file [5, 5] vs model [64, 256]" in text
    assert "<table>" in report._repr_html_()


def test_dtype_casts_are_reported(tmp_path):
    model = _model()
    wb.save_pretrained(model.to(torch.bfloat16), tmp_path)
    loaded = load_pretrained(tmp_path)
    assert loaded.embed.weight.dtype == torch.float32
    assert ("embed.weight", "bfloat16", "float32") in loaded.load_report.casts
    assert load_pretrained(tmp_path, dtype=torch.bfloat16).embed.weight.dtype == torch.bfloat16


def test_pickle_refused_unless_opted_in(tmp_path):
    model = _model()
    wb.save_pretrained(model, tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(wb.UnsafeFormatError, match="allow_pickle=True"):
        load_pretrained(tmp_path)
    loaded = load_pretrained(tmp_path, allow_pickle=True)
    assert torch.equal(loaded.embed.weight, model.embed.weight)


def test_pickle_with_code_is_refused_even_when_opted_in(tmp_path):
    model = _model()
    wb.save_pretrained(model, tmp_path)
    (tmp_path / "model.safetensors").unlink()

    class Evil:
        def __reduce__(self):
            return (exec, ("raise SystemExit('pwned')",))

    torch.save({"x": Evil()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(wb.CorruptFileError, match="weights_only=True"):
        load_pretrained(tmp_path, allow_pickle=True)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "huge_header"])
def test_corrupt_safetensors(tmp_path, damage):
    model = _model()
    wb.save_pretrained(model, tmp_path)
    path = tmp_path / "model.safetensors"
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!" + data[24:200])
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes((2**40).to_bytes(8, "little") + b"{}")
    with pytest.raises(wb.CorruptFileError):
        load_pretrained(tmp_path)


def test_bad_paths_and_configs(tmp_path):
    with pytest.raises(wb.LoadError, match="does not exist"):
        load_pretrained(tmp_path / "nope")
    with pytest.raises(wb.LoadError, match="no config.json"):
        load_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{broken")
    with pytest.raises(wb.CorruptFileError, match="not valid JSON"):
        load_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(wb.ConfigError, match="model_type='bert' is not supported"):
        load_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"format": "workbench", "config": {}}))
    with pytest.raises(wb.LoadError, match="no weights"):
        load_pretrained(tmp_path)


def test_save_rejects_unknown_format(tmp_path):
    with pytest.raises(wb.ConfigError, match="format='onnx' is unknown"):
        wb.save_pretrained(_model(), tmp_path, format="onnx")


def test_save_as_a_named_family_only_in_hf_format_and_only_one_that_holds_the_config(tmp_path):
    with pytest.raises(wb.ConfigError, match="family='llama' names a HF architecture; pass it with format='hf'"):
        wb.save_pretrained(_model(), tmp_path, family="llama")
    with pytest.raises(wb.ConfigError, match="the gpt2 family cannot hold this config exactly .*positions='rope'"):
        wb.save_pretrained(_model(), tmp_path, format="hf", family="gpt2")
    assert not (tmp_path / "config.json").exists()
    wb.save_pretrained(_model(), tmp_path, format="hf", family="llama")
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]


def test_a_strict_load_draws_no_initial_weights_and_a_lenient_one_keeps_them(tmp_path, monkeypatch):
    """A strict load overwrites every parameter or raises, so it skips the initial draws; a lenient load
    leaves what the file lacks at the workbench's own initialisation (ones for a norm), never at torch's
    defaults or at uninitialised memory."""
    from workbench.model import transformer

    model = _model(tie_embeddings=False)
    wb.save_pretrained(model, tmp_path)
    draws: list[int] = []
    real = transformer.init_weights
    monkeypatch.setattr(transformer, "init_weights", lambda m, c: (draws.append(1), real(m, c)))
    loaded = load_pretrained(tmp_path)
    assert draws == []
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    state = {k: v.clone() for k, v in model.state_dict().items() if k != "ln_f.weight"}
    save_file(state, str(tmp_path / "model.safetensors"))
    lenient = load_pretrained(tmp_path, strict=False)
    assert draws == [1]
    assert torch.equal(lenient.ln_f.weight, torch.ones_like(lenient.ln_f.weight))
