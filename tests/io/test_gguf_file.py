"""`workbench.io.gguf_file`: the workbench's GGUF reader against the `gguf` package's own reader.

Files are written with `gguf.GGUFWriter` (every metadata value type, both byte orders) and read by both
readers; hand-made headers cover what the writer refuses to write (repeated keys, a mistyped alignment).
"""

from __future__ import annotations

import struct

import gguf
import numpy as np
import pytest
from ggufwrite import write_gguf

from workbench.errors import CorruptFileError
from workbench.io.gguf_file import open_gguf

V = gguf.GGUFValueType
Q = gguf.GGMLQuantizationType
METADATA = [  # (key, value, GGUF type, item type)
    ("t.u8", 200, V.UINT8, None),
    ("t.i8", -100, V.INT8, None),
    ("t.u16", 60000, V.UINT16, None),
    ("t.i16", -30000, V.INT16, None),
    ("t.u32", 4_000_000_000, V.UINT32, None),
    ("t.i32", -2_000_000_000, V.INT32, None),
    ("t.f32", 0.1, V.FLOAT32, None),
    ("t.bool", True, V.BOOL, None),
    ("t.text", "naïve café 東京 🤖", V.STRING, None),
    ("t.u64", 2**63 + 5, V.UINT64, None),
    ("t.i64", -(2**62), V.INT64, None),
    ("t.f64", 1e300, V.FLOAT64, None),
    ("t.ints", [1, -2, 3], V.ARRAY, V.INT32),
    ("t.floats", [0.5, -1.25, 3.0e-8], V.ARRAY, V.FLOAT32),
    ("t.bools", [True, False, True], V.ARRAY, V.BOOL),
    ("t.strings", ["a", "", "Ġthe", "東京"], V.ARRAY, V.STRING),
]


def _write(path, *, endianess=gguf.GGUFEndian.LITTLE, tensors=None):
    return write_gguf(path, tensors, METADATA, endianess=endianess)


def _tensors(rng):
    matrix = rng.standard_normal((6, 64)).astype(np.float32)
    return {
        "f32.3d": (rng.standard_normal((2, 3, 4)).astype(np.float32), None),
        "f16.vector": (rng.standard_normal(10).astype(np.float16), None),
        "q8_0.matrix": (gguf.quants.quantize(matrix, Q.Q8_0), Q.Q8_0),
        "q4_1.matrix": (gguf.quants.quantize(matrix, Q.Q4_1), Q.Q4_1),
        "bf16.matrix": (gguf.quants.quantize(matrix, Q.BF16), Q.BF16),
    }


def _same_as_gguf_reader(path):
    """Our reader's metadata, tensor table and data views equal gguf.GGUFReader's on `path`."""
    ours, theirs = open_gguf(path), gguf.GGUFReader(str(path))
    keys = [k for k in theirs.fields if not k.startswith("GGUF.")]
    assert ours.keys() == keys
    for key in keys:
        assert ours.get(key) == theirs.fields[key].contents(), key
    assert ours.data_start == theirs.data_offset and ours.alignment == theirs.alignment
    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
    for a, b in zip(ours.tensors, theirs.tensors):
        assert (a.dims, a.type, a.data_offset, a.nbytes) == (tuple(b.shape.tolist()), b.tensor_type, b.data_offset,
                                                             b.n_bytes), a.name
        assert a.shape == tuple(reversed(a.dims)) and ours.tensor(a.name) is a
        assert a.data.dtype == b.data.dtype and a.data.shape == b.data.shape and np.array_equal(a.data, b.data), a.name
    return ours


@pytest.mark.parametrize("endianess", [gguf.GGUFEndian.LITTLE, gguf.GGUFEndian.BIG], ids=["little", "big"])
def test_every_value_type_and_tensor_layout_read_as_gguf_reads_them(tmp_path, endianess):
    path = _write(tmp_path / "m.gguf", endianess=endianess, tensors=_tensors(np.random.default_rng(0)))
    reader = _same_as_gguf_reader(path)
    assert reader.byte_order == ("<" if endianess == gguf.GGUFEndian.LITTLE else ">")
    assert reader.get("t.text") == "naïve café 東京 🤖" and reader.get("t.strings") == ["a", "", "Ġthe", "東京"]
    assert reader.get("absent", 7) == 7 and "t.u8" in reader and "absent" not in reader
    assert reader.values(lambda k: k.startswith("t.i")) == {"t.i8": -100, "t.i16": -30000, "t.i32": -2_000_000_000,
                                                            "t.i64": -(2**62), "t.ints": [1, -2, 3]}


def test_tensor_data_is_a_read_only_view_of_the_file(tmp_path):
    path = _write(tmp_path / "m.gguf", tensors=_tensors(np.random.default_rng(1)))
    t = open_gguf(path).tensor("f32.3d")
    assert t.shape == (2, 3, 4) and t.dims == (4, 3, 2) and t.data.dtype == np.float32
    assert not t.data.flags.writeable and not t.data.flags.owndata
    with pytest.raises(ValueError, match="read-only"):
        t.data[0, 0, 0] = 1.0
    with open(path, "rb") as fh:
        fh.seek(t.data_offset)
        assert fh.read(t.nbytes) == t.data.tobytes() == bytes(t.buffer)


def test_text_that_is_not_utf8_fails_only_where_it_is_read(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "llama")
    w.add_key_value("t.bad", b"ok \xc3(", V.STRING)
    w.add_key_value("t.list", ["fine", b"\xff"], V.ARRAY, V.STRING)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    reader = open_gguf(tmp_path / "m.gguf")
    assert reader.get("general.architecture") == "llama"
    with pytest.raises(CorruptFileError, match=r"'t.bad' holds bytes that are not UTF-8 text \(invalid continuation"):
        reader.get("t.bad")
    with pytest.raises(CorruptFileError, match=r"'t.list' holds bytes that are not UTF-8 text \(invalid start byte "
                                               r"at byte 0\)"):
        reader.values(lambda k: k == "t.list")


def _header(*entries: bytes, n_tensors: int = 0) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, len(entries)) + b"".join(entries)


def _kv(key: str, vtype: int, payload: bytes) -> bytes:
    return struct.pack("<Q", len(key)) + key.encode() + struct.pack("<I", vtype) + payload


CUT_STRINGS = struct.pack("<IQ", 8, 3) + struct.pack("<Q", 1) + b"x" + struct.pack("<Q", 99) + b"y" * 9  # 3 claimed


@pytest.mark.parametrize(
    "raw, words",
    [
        (_header(_kv("a", 4, struct.pack("<I", 1)), _kv("a", 4, struct.pack("<I", 2))), "'a' appears twice"),
        (_header(_kv("general.alignment", 10, struct.pack("<Q", 32))), "alignment is stored as GGUF value type 10"),
        (_header(_kv("general.alignment", 4, struct.pack("<I", 24))), "general.alignment=24 is not a power of two"),
        (_header(struct.pack("<Q", 2) + b"\xff\xfe" + struct.pack("<I", 4) + b"\0" * 4), "metadata key at byte 24"),
        (_header(_kv("deep", 9, struct.pack("<IQ", 9, 1) * 12 + b"\0" * 64)), "nests arrays more than 8 deep"),
        (_header(_kv("s", 9, CUT_STRINGS)), "ends inside the metadata 's'"),
    ],
    ids=["repeated-key", "alignment-type", "alignment-value", "key-not-utf8", "nested-arrays", "string-array-cut"],
)
def test_malformed_headers_name_the_problem(tmp_path, raw, words):
    path = tmp_path / "bad.gguf"
    path.write_bytes(raw + b"\0" * 8)
    with pytest.raises(CorruptFileError, match=words):
        open_gguf(path)


def test_real_file_reads_as_gguf_reader_reads_it(smollm2_path):
    """The SmolLM2 GGUF: 49k tokens, 49k merges and 272 tensors, all as `gguf.GGUFReader` reads them."""
    reader = _same_as_gguf_reader(smollm2_path)
    assert len(reader.get("tokenizer.ggml.tokens")) == 49152 and len(reader.tensors) == 272
