"""tokenizer.json and tokenizer_config.json: malformed files are LoadErrors naming the file and the field."""

from __future__ import annotations

import json
import shutil

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workbench.errors import LoadError
from workbench.io.load_tokenizer import load_tokenizer
from workbench.models import tiny_path

from .conftest import FUZZ, contract
from .files import JSON_VALUES

TEXT = "the cat sat on the mat"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    dst = tmp_path_factory.mktemp("tok") / "tiny"
    dst.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_path() / name, dst)
    reference = load_tokenizer(dst)
    return dst, reference.encode(TEXT), (reference.bos_token_id, reference.eos_token_id, reference.pad_token_id)


def _copy(folder, tmp_path):
    dst = tmp_path / "t"
    shutil.copytree(folder, dst)
    return dst


@pytest.mark.parametrize(
    "content, words",
    [
        (b"\xff\xfe\x00", "not UTF-8"),
        (b"[1]", "JSON list, not an object"),
        (b"{", "not valid JSON"),
        (json.dumps({"bos_token": 5}).encode(), "bos_token"),
        (json.dumps({"eos_token": ["[EOS]"]}).encode(), "eos_token"),
        (json.dumps({"add_bos_token": "true"}).encode(), "add_bos_token: Input should be a valid boolean"),
        (json.dumps({"pad_token": {"content": 3}}).encode(), "pad_token"),
        (json.dumps({"eos_token": "<not-a-token>"}).encode(), "is not in the tokenizer's vocabulary"),
    ],
    ids=["not-utf8", "list", "truncated", "int-token", "list-token", "str-bool", "bad-added-token", "unknown-token"],
)
def test_malformed_tokenizer_config(folder, tmp_path, content, words):
    path = _copy(folder[0], tmp_path)
    (path / "tokenizer_config.json").write_bytes(content)
    with contract() as outcome:
        load_tokenizer(path)
    assert isinstance(outcome.error, LoadError) and words in str(outcome.error)
    assert "tokenizer_config.json" in str(outcome.error)


@pytest.mark.parametrize("content", [b"", b"\x00\x01", b"[]", b"{}", b'{"model": 3}'], ids=str)
def test_malformed_tokenizer_json(folder, tmp_path, content):
    path = _copy(folder[0], tmp_path)
    (path / "tokenizer.json").write_bytes(content)
    with contract() as outcome:
        load_tokenizer(path)
    assert isinstance(outcome.error, LoadError) and "tokenizer" in str(outcome.error)


@FUZZ(40)
@given(key=st.sampled_from(["bos_token", "eos_token", "pad_token", "unk_token", "add_bos_token"]), value=JSON_VALUES)
def test_any_tokenizer_config_value(folder, tmp_path_factory, key, value):
    path = _copy(folder[0], tmp_path_factory.mktemp("tokval"))
    conf = json.loads((path / "tokenizer_config.json").read_text())
    (path / "tokenizer_config.json").write_text(json.dumps({**conf, key: value}))
    with contract() as outcome:
        tok = load_tokenizer(path)
    if outcome.error is None:  # only a value of the right kind loads, and the text still encodes the same way
        assert tok.encode(TEXT, add_bos=False) == [i for i in folder[1] if i != folder[2][0]]
        if key == "add_bos_token":
            assert value is None or isinstance(value, bool)


@FUZZ(30)
@given(data=st.data())
def test_tokenizer_json_byte_mutations(folder, tmp_path_factory, data):
    path = _copy(folder[0], tmp_path_factory.mktemp("tokbytes"))
    raw = bytearray((path / "tokenizer.json").read_bytes())
    i = data.draw(st.integers(0, len(raw) - 1), label="position")
    raw[i] = data.draw(st.integers(0, 255).filter(lambda b: b != raw[i]), label="byte")
    (path / "tokenizer.json").write_bytes(bytes(raw))
    with contract() as outcome:
        tok = load_tokenizer(path)
    if outcome.error is None:
        assert all(0 <= t < tok.vocab_size for t in tok.encode(TEXT))
