"""GGUF tensors dequantized to float32 torch tensors, bit for bit as `gguf.quants.dequantize` makes them.

The float types (F32, F16, BF16) and the block formats of llama.cpp's small models (Q4_0, Q4_1, Q5_0, Q5_1,
Q8_0, Q4_K, Q6_K) are unpacked here with vectorised torch ops straight from the mapped file, with the float32
operations of the `gguf` package's numpy code in the same order, so every value has the same bits; only a NaN's
payload may differ (tests/io/test_gguf_quants.py checks each type against it). On one CPU thread SmolLM2's
tensors take 0.6 s here against 2.6 s in the numpy code. Other types, and files written big-endian, go
through `gguf.quants.dequantize`.

Shapes: n blocks, each of `type_size` bytes that hold `block` values (ggml's QK: 32, or 256 for the K types).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np
import torch

from ..errors import CorruptFileError
from .gguf_file import GGUFTensor, gguf_module

_ALIGN = 4  # bytes: the widest element read in place (float32); a file aligned below it is copied first


def dequantize(tensor: GGUFTensor, byte_order: str = "<") -> torch.Tensor:
    """`tensor` as float32 of `tensor.shape`, in memory of its own (no view of the file).

    byte_order: the file's ("<" or ">", `GGUFFile.byte_order`). NotImplementedError for the types neither
    this module nor the `gguf` package can unpack.
    """
    unpack = _UNPACK.get(tensor.type.name)
    if unpack is None or byte_order != "<" or sys.byteorder != "little":
        return _with_gguf(tensor)
    if tensor.nbytes == 0:
        return torch.zeros(tensor.shape, device="cpu")
    _, type_size = gguf_module().GGML_QUANT_SIZES[tensor.type]
    raw = torch.frombuffer(tensor.buffer, dtype=torch.uint8)  # (n * type_size,)
    if raw.data_ptr() % _ALIGN:  # general.alignment may be as low as 1
        raw = raw.clone()
    return unpack(raw.view(-1, type_size)).reshape(tensor.shape)


def _with_gguf(tensor: GGUFTensor) -> torch.Tensor:
    """The `gguf` package's numpy dequantization, copied into memory of its own."""
    array = gguf_module().quants.dequantize(tensor.data, tensor.type)
    if tuple(array.shape) != tensor.shape:
        raise CorruptFileError(f"{tensor.name}: dequantized shape {array.shape} differs from header {tensor.shape}.")
    return torch.from_numpy(np.array(array, dtype=np.float32))


def _half(blocks: torch.Tensor, at: int) -> torch.Tensor:
    """The float16 at byte `at` of every block, as float32: (n, type_size) -> (n, 1)."""
    return blocks[:, at : at + 2].view(torch.float16).float()


def _nibbles(qs: torch.Tensor, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """(..., B) bytes -> (..., 2, B) values 0..15 in `dtype`: the low nibbles, then the high ones (ggml's order).

    Written into one new tensor: on a CPU, first touching fresh memory costs more than the arithmetic.
    """
    out = torch.empty((*qs.shape[:-1], 2, qs.shape[-1]), dtype=dtype, device=qs.device)
    out[..., 0, :] = qs & 0x0F
    out[..., 1, :] = qs >> 4
    return out


def _bits(qh: torch.Tensor) -> torch.Tensor:
    """(n, 4) bytes of a little-endian uint32 -> (n, 32) of its bits, bit j for value j."""
    shifts = torch.arange(8, dtype=torch.uint8, device=qh.device)
    return ((qh.unsqueeze(-1) >> shifts) & 1).reshape(len(qh), 32)


def _f32(blocks: torch.Tensor) -> torch.Tensor:  # (n, 4) -> (n, 1)
    return blocks.view(torch.float32).clone()


def _f16(blocks: torch.Tensor) -> torch.Tensor:  # (n, 2) -> (n, 1)
    return blocks.view(torch.float16).float()


def _bf16(blocks: torch.Tensor) -> torch.Tensor:  # (n, 2) -> (n, 1): the bits moved up, NaN payloads kept
    return (blocks.view(torch.int16).to(torch.int32) << 16).view(torch.float32)


def _q8_0(blocks: torch.Tensor) -> torch.Tensor:  # (n, 34): d, 32 int8 -> (n, 32)
    return blocks[:, 2:].view(torch.int8).float().mul_(_half(blocks, 0))


def _q4_0(blocks: torch.Tensor) -> torch.Tensor:  # (n, 18): d, 16 bytes of nibbles -> (n, 32)
    q = _nibbles(blocks[:, 2:], torch.float32).reshape(len(blocks), 32)
    return q.sub_(8).mul_(_half(blocks, 0))


def _q4_1(blocks: torch.Tensor) -> torch.Tensor:  # (n, 20): d, m, 16 bytes of nibbles -> (n, 32)
    q = _nibbles(blocks[:, 4:], torch.float32).reshape(len(blocks), 32)
    return q.mul_(_half(blocks, 0)).add_(_half(blocks, 2))


def _q5(blocks: torch.Tensor, at: int) -> torch.Tensor:
    """The 5-bit values 0..31 of Q5_0/Q5_1 blocks whose high bits start at byte `at`: (n, 32)."""
    low = _nibbles(blocks[:, at + 4 :]).reshape(len(blocks), 32)
    return low | (_bits(blocks[:, at : at + 4]) << 4)


def _q5_0(blocks: torch.Tensor) -> torch.Tensor:  # (n, 22): d, 4 bytes of high bits, 16 of nibbles -> (n, 32)
    return _q5(blocks, 2).float().sub_(16).mul_(_half(blocks, 0))


def _q5_1(blocks: torch.Tensor) -> torch.Tensor:  # (n, 24): d, m, 4 bytes of high bits, 16 of nibbles
    return _q5(blocks, 4).float().mul_(_half(blocks, 0)).add_(_half(blocks, 2))


def _q4_k(blocks: torch.Tensor) -> torch.Tensor:  # (n, 144): d, dmin, 12 bytes of 6-bit scales, 128 of nibbles
    n = len(blocks)
    low, high, rest = blocks[:, 4:16].reshape(n, 3, 4).unbind(1)  # (n, 4) each
    scale = torch.cat((low & 0x3F, (rest & 0x0F) | ((low >> 2) & 0x30)), dim=-1)  # (n, 8) one per 32 values
    least = torch.cat((high & 0x3F, (rest >> 4) | ((high >> 2) & 0x30)), dim=-1)  # (n, 8)
    d = (_half(blocks, 0) * scale.float()).unsqueeze(-1)  # (n, 8, 1)
    m = (_half(blocks, 2) * least.float()).unsqueeze(-1)  # (n, 8, 1)
    q = _nibbles(blocks[:, 16:].reshape(n, 4, 32), torch.float32).reshape(n, 8, 32)
    return q.mul_(d).sub_(m).reshape(n, 256)


def _q6_k(blocks: torch.Tensor) -> torch.Tensor:  # (n, 210): 128 bytes low nibbles, 64 high pairs, 16 int8 scales, d
    n = len(blocks)
    low = _nibbles(blocks[:, :128].reshape(n, 2, 64)).reshape(n, 8, 32)
    shifts = torch.arange(0, 8, 2, dtype=torch.uint8, device=blocks.device).reshape(4, 1)
    high = ((blocks[:, 128:192].reshape(n, 2, 1, 32) >> shifts) & 0x03).reshape(n, 8, 32)
    d = (_half(blocks, 208) * blocks[:, 192:208].view(torch.int8).float()).unsqueeze(-1)  # (n, 16, 1)
    q = (low | (high << 4)).reshape(n, 16, 16)
    return q.float().sub_(32).mul_(d).reshape(n, 256)


_UNPACK: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {  # ggml type name -> (n, type_size) -> (n, block)
    "F32": _f32,
    "F16": _f16,
    "BF16": _bf16,
    "Q8_0": _q8_0,
    "Q4_0": _q4_0,
    "Q4_1": _q4_1,
    "Q5_0": _q5_0,
    "Q5_1": _q5_1,
    "Q4_K": _q4_k,
    "Q6_K": _q6_k,
}
FAST_TYPES = tuple(_UNPACK)  # the types unpacked with torch; the rest go through gguf.quants
