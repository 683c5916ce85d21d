"""`load_tokenizer` dispatch: GGUF files, tokenizer.json with tokenizer_config.json, folders, bad paths."""

from __future__ import annotations

import json

import pytest

import workbench as wb
from workbench.io.load_tokenizer import load_tokenizer


def test_gguf_and_saved_json_agree(smollm2_path, tmp_path):
    from_gguf = load_tokenizer(smollm2_path)
    text = "The capital of France is Paris. 12345 ünïcode"
    ids = from_gguf.encode(text)
    from_gguf.backend.save(str(tmp_path / "tokenizer.json"))
    eos = from_gguf.backend.id_to_token(from_gguf.eos_token_id)
    bos = from_gguf.backend.id_to_token(from_gguf.bos_token_id)
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": {"content": bos}, "eos_token": eos, "add_bos_token": True})
    )
    from_dir = load_tokenizer(tmp_path)
    assert from_dir.encode(text, add_bos=False) == ids
    assert (from_dir.bos_token_id, from_dir.eos_token_id) == (from_gguf.bos_token_id, from_gguf.eos_token_id)
    assert from_dir.pad_token_id == from_gguf.eos_token_id
    assert from_dir.encode("hi")[0] == from_gguf.bos_token_id  # add_bos_token honoured


def test_bad_tokenizer_paths(tmp_path):
    with pytest.raises(wb.LoadError, match="does not exist"):
        load_tokenizer(tmp_path / "missing.json")
    with pytest.raises(wb.LoadError, match="neither tokenizer.json nor a .gguf"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(wb.LoadError, match="could not read tokenizer"):
        load_tokenizer(tmp_path)
