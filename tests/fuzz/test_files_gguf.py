"""GGUF files: metadata checked against its schema and against the tensor table before a layer is built.

Small files are written here with gguf's own writer (every metadata value settable); the real
SmolLM2 GGUF is mutated in a copy, byte by byte, in its header and tensor-info table.
"""

from __future__ import annotations

import shutil
import struct

import gguf
import pytest
import torch
from ggufwrite import llama_tensors
from hypothesis import given, settings
from hypothesis import strategies as st

import workbench as wb
from workbench.errors import CorruptFileError, WeightMismatchError
from workbench.io.gguf import config_from_gguf, load_gguf, open_gguf
from workbench.io.gguf_tokenizer import tokenizer_from_gguf, tokenizer_from_metadata

from .conftest import FUZZ, contract
from .files import logits, tiny_model

CONFIG = wb.ModelConfig(vocab_size=32, d_model=16, n_layers=2, n_heads=2, n_kv_heads=1, d_ff=32, max_seq_len=16)
META = {  # key (without the "llama." prefix) -> (writer method, value)
    "block_count": CONFIG.n_layers,
    "context_length": CONFIG.max_seq_len,
    "embedding_length": CONFIG.d_model,
    "feed_forward_length": CONFIG.d_ff,
    "attention.head_count": CONFIG.n_heads,
    "attention.head_count_kv": CONFIG.kv_heads,
    "rope.freq_base": CONFIG.rope_theta,
    "attention.layer_norm_rms_epsilon": CONFIG.norm_eps,
}


def write(path, model, *, meta=None, tokens=None, eos=2, merges=None, types=None, architecture=None):
    """`model` as a llama GGUF; `meta` overrides `{arch}.*` values (a value's Python type picks its GGUF type);
    `architecture` replaces general.architecture by (value, GGUF type[, item type]), or () leaves it out."""
    w = gguf.GGUFWriter(str(path), "llama")
    if architecture is not None:
        del w.kv_data[0]["general.architecture"]
        if architecture:
            w.add_key_value("general.architecture", *architecture)
    for key, value in {**META, **(meta or {})}.items():
        w.add_key_value(f"llama.{key}", value, _kind(value))
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens if tokens is not None else [f"t{i}" for i in range(model.config.vocab_size)])
    if merges is not None:
        w.add_token_merges(merges)
    if types is not None:
        w.add_token_types(types)
    w.add_eos_token_id(eos)
    for name, array in llama_tensors(model).items():
        w.add_tensor(name, array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _kind(value):
    V = gguf.GGUFValueType
    if isinstance(value, bool):
        return V.BOOL
    if isinstance(value, int):
        return V.UINT64 if value >= 2**32 else V.UINT32
    if isinstance(value, float):
        return V.FLOAT64  # any double, NaN and Inf included (float32 cannot hold 1e300)
    return V.STRING


@pytest.fixture(scope="module")
def model():
    return tiny_model(CONFIG)


@pytest.fixture(scope="module")
def reference(model):
    return logits(model)


def test_written_file_loads_exactly(model, reference, tmp_path):
    torch.testing.assert_close(logits(load_gguf(write(tmp_path / "m.gguf", model))), reference, rtol=0, atol=0)


# --- regressions ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "meta, error, words",
    [
        ({"block_count": 10**6}, WeightMismatchError, "declares 1000000 layers but"),
        ({"embedding_length": 2**40}, WeightMismatchError, "too large to exist"),
        ({"feed_forward_length": 10**12}, WeightMismatchError, "mismatched"),
        ({"rope.freq_base": float("nan")}, CorruptFileError, "llama.rope.freq_base: Input should be a finite number"),
        ({"attention.layer_norm_rms_epsilon": float("nan")}, CorruptFileError, "layer_norm_rms_epsilon"),
        ({"rope.freq_base": -1.0}, CorruptFileError, "llama.rope.freq_base: Input should be greater than 0"),
        ({"block_count": "2"}, CorruptFileError, "llama.block_count: Input should be a valid integer"),
        ({"attention.head_count": 0}, CorruptFileError, "llama.attention.head_count"),
        ({"attention.head_count": 3}, CorruptFileError, "describes an invalid model"),
        ({"attention.head_count_kv": 2}, WeightMismatchError, "mismatched"),
        ({"context_length": True}, CorruptFileError, "llama.context_length"),
    ],
    ids=["million-blocks", "huge-embedding", "huge-ffn", "nan-theta", "nan-eps", "negative-theta", "str-blocks",
         "zero-heads", "indivisible-heads", "kv-heads-vs-table", "bool-context"],
)
def test_metadata_checked_before_building(model, tmp_path, meta, error, words):
    path = write(tmp_path / "m.gguf", model, meta=meta)
    with contract(5) as outcome:
        load_gguf(path)
    assert isinstance(outcome.error, error), outcome.error
    assert words in str(outcome.error)


V = gguf.GGUFValueType


@pytest.mark.parametrize(
    "architecture, words",
    [
        ((b"\xff\xfe\x80ama", V.STRING), "'general.architecture' holds bytes that are not UTF-8 text"),
        (("", V.STRING), "general.architecture is str ''"),
        ((7, V.UINT32), "general.architecture is int 7"),
        ((["llama"], V.ARRAY, V.STRING), "general.architecture is list ['llama']"),
        ((), "general.architecture is missing"),
    ],
    ids=["garbage-bytes", "empty", "integer", "list", "missing"],
)
def test_damaged_architecture_name(model, tmp_path, architecture, words):
    """Regression: a missing name matched a family that reads no GGUF files and reached an assert; bytes that
    are not UTF-8 raised UnicodeDecodeError. Every path that reads the name refuses it the same way."""
    path = write(tmp_path / "m.gguf", model, architecture=architecture)
    for load in (load_gguf, lambda p: config_from_gguf(open_gguf(p)), wb.load_pretrained):
        with contract() as outcome:
            load(path)
        assert isinstance(outcome.error, CorruptFileError), outcome.error
        assert words in str(outcome.error) and "download or convert it again" in str(outcome.error)


def test_tokenizer_text_that_is_not_utf8(model, tmp_path):
    path = write(tmp_path / "m.gguf", model, tokens=["a", b"\xc3(", *(f"t{i}" for i in range(2, 32))])
    with contract() as outcome:
        tokenizer_from_gguf(path)
    assert isinstance(outcome.error, CorruptFileError), outcome.error
    assert "'tokenizer.ggml.tokens' holds bytes that are not UTF-8 text" in str(outcome.error)


def test_eos_outside_the_vocabulary(model, tmp_path):
    path = write(tmp_path / "m.gguf", model, eos=10**6)
    with contract() as outcome:
        tokenizer_from_gguf(path)
    assert isinstance(outcome.error, CorruptFileError) and "eos_token_id=1000000 is outside" in str(outcome.error)
    with pytest.raises(CorruptFileError, match="eos_token_id"):
        load_gguf(path)


@pytest.mark.parametrize(
    "meta, words",
    [
        ({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a", "b"], "tokenizer.ggml.merges": ["a zz"]},
         "does not make a BPE model"),
        ({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a", 3]}, "tokenizer.ggml.tokens.1"),
        ({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a", "a"]}, "twice"),
        ({"tokenizer.ggml.model": 7, "tokenizer.ggml.tokens": ["a"]}, "tokenizer.ggml.model"),
        ({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a"], "tokenizer.ggml.bos_token_id": -1},
         "bos_token_id"),
        ({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a"], "tokenizer.ggml.token_type": [1, 1]},
         "token types"),
    ],
    ids=["bpe-build", "non-string-token", "duplicate-token", "model-type", "negative-id", "types-length"],
)
def test_bad_tokenizer_metadata(meta, words):
    with contract() as outcome:
        tokenizer_from_metadata(meta)
    assert isinstance(outcome.error, CorruptFileError) and words in str(outcome.error)


# --- the real SmolLM2 file --------------------------------------------------------------------------------------
def _entry_size(tensor) -> int:
    """Bytes of a tensor-info entry: name length and name, n_dims, the dims, ggml type, data offset."""
    return 8 + len(tensor.name.encode()) + 4 + 8 * len(tensor.dims) + 4 + 8


def _tensor_table(reader) -> tuple[int, int]:
    """(start, end) byte range of the tensor-info table of an open GGUF file."""
    return reader.table_start, reader.table_start + sum(_entry_size(t) for t in reader.tensors)


@pytest.fixture(scope="module")
def real(smollm2_path, tmp_path_factory):
    """A copy of the real GGUF, the byte range of its tensor table, and its original config and table."""
    path = tmp_path_factory.mktemp("smollm2") / "m.gguf"
    shutil.copy(smollm2_path, path)
    reader = open_gguf(path)
    table = [(t.name, t.dims, int(t.type), t.data_offset) for t in reader.tensors]
    return path, _tensor_table(reader), config_from_gguf(reader), table


def test_real_file_qkv_shape_flip_is_refused(real):
    """The first fuzzing run's crash: a flipped dimension of attn_k reached torch.cat in the q/k/v fusion."""
    path, _, _, _ = real
    reader = open_gguf(path)
    k = next(i for i, t in enumerate(reader.tensors) if t.name == "blk.3.attn_k.weight")
    entry = reader.table_start + sum(_entry_size(t) for t in reader.tensors[:k])
    pos = entry + 8 + len(reader.tensors[k].name.encode()) + 4  # name length, name, n_dims -> dims[0]
    del reader  # the file is rewritten below
    raw = path.read_bytes()
    assert struct.unpack_from("<Q", raw, pos)[0] == 576
    with open(path, "r+b") as f:
        f.seek(pos)
        f.write(struct.pack("<Q", 576 ^ 0x40))  # 576 -> 512 (one flipped bit)
    try:
        with contract(30) as outcome:
            load_gguf(path)
        assert isinstance(outcome.error, (CorruptFileError, WeightMismatchError)), outcome.error
    finally:
        with open(path, "r+b") as f:
            f.seek(pos)
            f.write(struct.pack("<Q", 576))


@settings(FUZZ(3), deadline=None)  # each case parses the 98 MB file (~5 s on 2 cores): few, but real
@given(data=st.data())
def test_real_file_tensor_table_flips(real, data):
    """One flipped byte in the tensor-info table: refused, or the same table and config as the original."""
    path, (start, end), config, table = real
    pos = data.draw(st.integers(start, end - 1), label="position")
    bit = data.draw(st.integers(0, 7), label="bit")
    with open(path, "r+b") as f:
        f.seek(pos)
        old = f.read(1)[0]
        f.seek(pos)
        f.write(bytes([old ^ (1 << bit)]))
    try:
        with contract(30) as outcome:
            reader = open_gguf(path)
            got = config_from_gguf(reader)
        if outcome.error is None:
            now = [(t.name, t.dims, int(t.type), t.data_offset) for t in reader.tensors]
            assert (got, now) == (config, table), "a flipped table byte changed the model without an error"
    finally:
        with open(path, "r+b") as f:
            f.seek(pos)
            f.write(bytes([old]))


# --- properties on small files ----------------------------------------------------------------------------------
@FUZZ(30)
@given(key=st.sampled_from(sorted(META)), value=st.one_of(
    st.integers(0, 2**40), st.sampled_from([0, 1, 3, 10**6]), st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(), st.sampled_from(["2", "nan", ""])))
def test_any_metadata_value(model, reference, tmp_path_factory, key, value):
    path = write(tmp_path_factory.mktemp("meta") / "m.gguf", model, meta={key: value})
    with contract(10) as outcome:
        loaded = load_gguf(path)
    if outcome.error is None:
        out = logits(loaded)
        assert torch.isfinite(out).all()
        if loaded.config == model.config:
            torch.testing.assert_close(out, reference, rtol=0, atol=0)


@FUZZ(40)
@given(data=st.data())
def test_small_file_byte_mutations(model, reference, tmp_path_factory, data):
    path = write(tmp_path_factory.mktemp("bytes") / "m.gguf", model)
    raw = bytearray(path.read_bytes())
    header_end = open_gguf(path).tensors[0].data_offset
    if data.draw(st.integers(0, 4), label="truncate?") == 0:
        raw = raw[: data.draw(st.integers(0, len(raw) - 1), label="length")]
    else:
        i = data.draw(st.integers(0, header_end - 1), label="position")
        raw[i] ^= 1 << data.draw(st.integers(0, 7), label="bit")
    path.write_bytes(bytes(raw))
    with contract(10) as outcome:
        loaded = load_gguf(path)
    if outcome.error is None:
        out = logits(loaded)
        assert torch.isfinite(out).all()
        if loaded.config == model.config:
            torch.testing.assert_close(out, reference, rtol=0, atol=0)
