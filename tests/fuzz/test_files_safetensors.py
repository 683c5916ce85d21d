"""safetensors headers and sharded indexes: every malformed header or index is a CorruptFileError.

Mutations stay inside the header: bytes of tensor data have no checksum, so a flipped weight is the
file's content, not a malformed file (a NaN weight is something this workbench exists to find).
"""

from __future__ import annotations

import json
import shutil
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workbench.errors import CorruptFileError, LoadError, WeightMismatchError
from workbench.io.safetensors import read_safetensors, read_sharded
from workbench.io.save import save_pretrained

from .conftest import FUZZ, contract
from .files import check_loaded, load, logits, tiny_model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = tiny_model()
    path = tmp_path_factory.mktemp("st") / "wb"
    save_pretrained(model, path)
    return path, logits(model)


def _with_header(src, tmp_path, header) -> tuple:
    """A copy of the checkpoint whose safetensors header is replaced by `header` (data kept)."""
    dst = tmp_path / "ckpt"
    shutil.copytree(src, dst)
    raw = (dst / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    (dst / "model.safetensors").write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n :])
    return dst, json.loads(raw[8 : 8 + n])


def _header(src) -> dict:
    raw = (src / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n])


def _first(header):
    return next(k for k in header if k != "__metadata__")


# --- regressions ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make, words",
    [
        (lambda h: [1, 2], "JSON list, not an object"),
        (lambda h: 7, "JSON int, not an object"),
        (lambda h: {**h, _first(h): {"dtype": "F32", "shape": h[_first(h)]["shape"]}}, "data_offsets: Field required"),
        (lambda h: {**h, _first(h): {**h[_first(h)], "data_offsets": ["0", "4"]}}, "data_offsets.0"),
        (lambda h: {**h, _first(h): {**h[_first(h)], "dtype": "F33"}}, "dtype"),
        (lambda h: {**h, _first(h): {**h[_first(h)], "shape": [-1, 4]}}, "shape.0"),
        (lambda h: {**h, _first(h): {**h[_first(h)], "shape": [3, 3]}}, "needs 36 bytes"),
        (lambda h: {**h, _first(h): {**h[_first(h)], "data_offsets": [0, 10**9]}}, "data section"),
        (lambda h: {**h, "__metadata__": {"format": 1}}, "__metadata__"),
        (lambda h: {**h, _first(h): {**h[_first(h)], "dtype": "I32"}}, "stored as int32"),
    ],
    ids=["list", "number", "no-offsets", "str-offsets", "dtype", "negative-shape", "shape-vs-bytes",
         "offsets-past-end", "metadata-type", "integer-weights"],
)
def test_malformed_header(saved, tmp_path, make, words):
    path, _ = _with_header(saved[0], tmp_path, make(_header(saved[0])))
    with contract() as outcome:
        load(path)
    assert isinstance(outcome.error, (CorruptFileError, WeightMismatchError)), outcome.error
    assert words in str(outcome.error)


def test_header_length_past_the_file(saved, tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", 2**62) + b"{}")
    with pytest.raises(CorruptFileError, match="truncated or not safetensors"):
        read_safetensors(path)


@pytest.fixture()
def sharded(saved, tmp_path):
    """The checkpoint split in two shards with an index."""
    from safetensors.torch import load_file, save_file

    dst = tmp_path / "sharded"
    dst.mkdir()
    shutil.copy(saved[0] / "config.json", dst)
    state = load_file(str(saved[0] / "model.safetensors"))
    names = sorted(state)
    parts = {"a.safetensors": names[::2], "b.safetensors": names[1::2]}
    for shard, keys in parts.items():
        save_file({k: state[k] for k in keys}, str(dst / shard))
    weight_map = {k: shard for shard, keys in parts.items() for k in keys}
    (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return dst, weight_map


def test_sharded_checkpoint_loads_exactly(saved, sharded):
    check_loaded(load(sharded[0]), saved[1], same=True)


@pytest.mark.parametrize(
    "index, error, words",
    [
        ({"weight_map": ["a.safetensors"]}, CorruptFileError, "weight_map: Input should be a valid dictionary"),
        ({"weight_map": {"x": 3}}, CorruptFileError, "weight_map.x"),
        ({"metadata": {}}, CorruptFileError, "weight_map: Field required"),
        ({"weight_map": {"x": "../../etc/passwd"}}, CorruptFileError, "not a file name"),
        ({"weight_map": {"x": "c.safetensors"}}, LoadError, "missing"),
        ([1], CorruptFileError, "not an object"),
    ],
    ids=["list", "non-string-shard", "no-weight-map", "path-traversal", "missing-shard", "not-object"],
)
def test_malformed_index(sharded, index, error, words):
    path = sharded[0] / "model.safetensors.index.json"
    path.write_text(json.dumps(index))
    with contract() as outcome:
        read_sharded(path)
    assert isinstance(outcome.error, error) and words in str(outcome.error)


def test_index_naming_a_tensor_its_shard_lacks(sharded):
    path = sharded[0] / "model.safetensors.index.json"
    path.write_text(json.dumps({"weight_map": {**sharded[1], "ghost.weight": "a.safetensors"}}))
    with pytest.raises(CorruptFileError, match="ghost.weight"):
        read_sharded(path)


# --- properties -----------------------------------------------------------------------------------------------
@FUZZ(50)
@given(data=st.data())
def test_header_byte_mutations(saved, tmp_path_factory, data):
    dst = tmp_path_factory.mktemp("stbytes") / "ckpt"
    shutil.copytree(saved[0], dst)
    raw = bytearray((dst / "model.safetensors").read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    if data.draw(st.integers(0, 9), label="truncate?") == 0:
        raw = raw[: data.draw(st.integers(0, len(raw) - 1), label="length")]
    else:
        i = data.draw(st.integers(0, 8 + n - 1), label="position")
        raw[i] = data.draw(st.integers(0, 255).filter(lambda b: b != raw[i]), label="byte")
    (dst / "model.safetensors").write_bytes(bytes(raw))
    with contract() as outcome:
        model = load(dst)
    if outcome.error is None:  # a harmless flip (metadata text, whitespace): the same weights
        check_loaded(model, saved[1], same=True)


@FUZZ(25)
@given(
    weight_map=st.one_of(
        st.dictionaries(st.text(max_size=8), st.sampled_from(["a.safetensors", "b.safetensors", "..", "", "/x"])),
        st.lists(st.integers(), max_size=3),
        st.integers(),
        st.none(),
    )
)
def test_any_weight_map(sharded, weight_map):
    path = sharded[0] / "model.safetensors.index.json"
    path.write_text(json.dumps({"weight_map": weight_map}))
    with contract() as outcome:
        state = read_sharded(path)
    if outcome.error is None:
        assert set(weight_map) <= set(state)
