"""`workbench.io.gguf_quants`: torch dequantization against `gguf.quants.dequantize`, value for value.

Each type is checked twice: on weights quantized by `gguf.quants.quantize` (what converters write; the K types,
which the package cannot quantize, get random blocks with finite scales), and on blocks of random bytes, where
every bit pattern turns up: infinities, subnormals and NaNs among the scales. Every value must have the same
bits; only where both are NaN may the NaN's payload differ (a NaN stays a NaN).
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from ggufwrite import write_gguf

from workbench.io.gguf_file import open_gguf
from workbench.io.gguf_quants import FAST_TYPES, dequantize

Q = gguf.GGMLQuantizationType
QUANTIZABLE = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")  # what gguf.quants.quantize writes


def _assert_same(ours: torch.Tensor, theirs: np.ndarray, what: str) -> None:
    theirs = np.asarray(theirs, dtype=np.float32)
    expected = torch.from_numpy(theirs if theirs.flags.writeable else theirs.copy())
    assert ours.dtype == torch.float32 and ours.shape == expected.shape, what
    if torch.equal(ours.view(torch.int32), expected.view(torch.int32)):
        return
    nan = expected.isnan()
    assert torch.equal(ours.isnan(), nan), f"{what}: NaN in different places"
    differ = (ours.view(torch.int32) != expected.view(torch.int32)) & ~nan
    assert not differ.any(), f"{what}: {int(differ.sum())} values differ, first at {differ.nonzero()[0].tolist()}"


def _random_blocks(rng: np.random.Generator, qtype: Q, rows: int, blocks: int, finite: bool) -> np.ndarray:
    """(rows, blocks * type_size) bytes; finite: every float16 scale replaced by a finite one."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, (rows, blocks, size), dtype=np.uint8)
    if finite:
        scales = {Q.Q4_K: (0, 2), Q.Q6_K: (208,)}[qtype]  # byte offsets of the float16 scales in a block
        for at in scales:
            raw[..., at : at + 2] = (rng.standard_normal((rows, blocks)) * 0.01).astype(np.float16)[..., None].view(
                np.uint8
            )
    return raw.reshape(rows, blocks * size)


def _write(path, tensors: dict[str, tuple[np.ndarray, Q]]):
    return write_gguf(path, tensors)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A GGUF file with every fast type in three shapes, as converters write it and as random bytes."""
    rng = np.random.default_rng(0)
    tensors: dict[str, tuple[np.ndarray, Q]] = {}
    for name in FAST_TYPES:
        qtype = Q[name]
        block, _ = gguf.GGML_QUANT_SIZES[qtype]
        for shape in ((3, 4 * block), (2, 5, 2 * block), (block,)):
            rows, blocks = int(np.prod(shape[:-1])), shape[-1] // block
            if name in QUANTIZABLE:
                weights = (rng.standard_normal(shape) * rng.uniform(0.01, 3)).astype(np.float32)
                quantized = gguf.quants.quantize(weights, qtype)
            else:
                quantized = _random_blocks(rng, qtype, rows, blocks, finite=True).reshape(*shape[:-1], -1)
            raw = _random_blocks(rng, qtype, rows, blocks, finite=False).reshape(*shape[:-1], -1)
            tensors[f"{name}.quantized.{len(shape)}d"] = (quantized, qtype)
            tensors[f"{name}.bytes.{len(shape)}d"] = (raw, qtype)
    return _write(tmp_path_factory.mktemp("quants") / "types.gguf", tensors)


@pytest.mark.parametrize("kind", ["quantized", "bytes"])
@pytest.mark.parametrize("name", FAST_TYPES)
def test_fast_types_match_gguf_bit_for_bit(written, name, kind):
    reader = open_gguf(written)
    tensors = [t for t in reader.tensors if t.name.startswith(f"{name}.{kind}.")]
    assert len(tensors) == 3 and all(t.type == Q[name] for t in tensors)
    for t in tensors:
        with np.errstate(all="ignore"):  # NaN and infinite scales in the random bytes
            theirs = gguf.quants.dequantize(t.data, t.type)
        ours = dequantize(t)
        _assert_same(ours, theirs, t.name)
        assert ours.is_contiguous() and ours.untyped_storage().nbytes() == ours.nbytes  # memory of its own
        assert ours.data_ptr() != t.data.ctypes.data


def test_other_types_and_big_endian_files_go_through_gguf(tmp_path):
    rng = np.random.default_rng(1)
    q2k = _random_blocks(rng, Q.Q2_K, 2, 1, finite=False)
    path = _write(tmp_path / "other.gguf", {"q2_k": (q2k, Q.Q2_K)})
    t = open_gguf(path).tensor("q2_k")
    with np.errstate(all="ignore"):
        _assert_same(dequantize(t), gguf.quants.dequantize(t.data, t.type), "Q2_K")
    weights = rng.standard_normal((2, 64)).astype(np.float32)
    w = gguf.GGUFWriter(str(tmp_path / "big.gguf"), "llama", endianess=gguf.GGUFEndian.BIG)
    w.add_tensor("f32", weights)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    reader = open_gguf(tmp_path / "big.gguf")
    t = reader.tensor("f32")
    assert reader.byte_order == ">"
    _assert_same(dequantize(t, reader.byte_order), gguf.quants.dequantize(t.data, t.type), "big-endian F32")


def test_real_file_tensors_match_gguf_bit_for_bit(smollm2_path):
    """SmolLM2's 210 Q4_1, 61 F32 and 1 Q8_0 tensors."""
    reader = open_gguf(smollm2_path)
    kinds = {t.type.name for t in reader.tensors}
    assert {"Q4_1", "Q8_0", "F32"} <= kinds <= set(FAST_TYPES)
    for t in reader.tensors:
        _assert_same(dequantize(t), gguf.quants.dequantize(t.data, t.type), t.name)
