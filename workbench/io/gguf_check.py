"""Validating a GGUF file's structure before anything reads it: magic, version, metadata, tensor table, extents.

The header is walked with bounds checks on every read, and every count is bounded by the file's size before a
loop runs on it, so a truncated or malformed file raises `CorruptFileError` naming the first problem instead
of crashing the `gguf` package's reader or looping over absurd counts. Nothing is allocated in proportion to
what the header claims.
"""

from __future__ import annotations

import mmap
import struct
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CorruptFileError, LoadError, MissingDependencyError

_MAX_DIMS = 4  # ggml tensors have at most four dimensions
# GGUF metadata value types: id -> (struct code, size); 8 = string, 9 = array.
_SCALARS = {
    0: ("B", 1),
    1: ("b", 1),
    2: ("H", 2),
    3: ("h", 2),
    4: ("I", 4),
    5: ("i", 4),
    6: ("f", 4),
    7: ("?", 1),
    10: ("Q", 8),
    11: ("q", 8),
    12: ("d", 8),
}
_STRING, _ARRAY = 8, 9
_MIN_SIZE = {**{k: s for k, (_, s) in _SCALARS.items()}, _STRING: 8, _ARRAY: 12}


def gguf_module() -> Any:
    """The `gguf` package, or MissingDependencyError with the install command."""
    try:
        import gguf
    except ImportError as exc:  # pragma: no cover - gguf is a declared dependency
        raise MissingDependencyError("reading .gguf files needs the gguf package: pip install gguf") from exc
    return gguf


class _Cursor:
    """Bounds-checked reads over the bytes of a file; every overrun is a CorruptFileError."""

    def __init__(self, buf: Any, path: Path, order: str = "<") -> None:
        self.buf, self.path, self.order, self.pos, self.size = buf, path, order, 0, len(buf)

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise CorruptFileError(
                f"{self.path} ends inside the {what} (byte {self.pos} of {self.size}); the file is truncated "
                "or not a GGUF file. Download or convert it again."
            )

    def scalar(self, code: str, size: int, what: str) -> Any:
        self.need(size, what)
        (value,) = struct.unpack_from(self.order + code, self.buf, self.pos)
        self.pos += size
        return value

    def skip_string(self, what: str) -> int:
        n = self.scalar("Q", 8, what)
        self.need(n, what)
        start, self.pos = self.pos, self.pos + n
        return start

    def string(self, what: str) -> str:
        start = self.skip_string(what)
        return bytes(self.buf[start : self.pos]).decode("utf-8", errors="replace")

    def skip_value(self, vtype: int, what: str) -> Any:
        """Step over one metadata value; returns it for scalars and strings (needed: alignment)."""
        if vtype in _SCALARS:
            return self.scalar(*_SCALARS[vtype], what)
        if vtype == _STRING:
            return self.string(what)
        if vtype != _ARRAY:
            raise CorruptFileError(
                f"{self.path}: unknown metadata value type {vtype} in {what}; the file is corrupt."
            )
        itype, count = self.scalar("I", 4, what), self.scalar("Q", 8, what)
        if itype not in _MIN_SIZE:
            raise CorruptFileError(
                f"{self.path}: unknown array item type {itype} in {what}; the file is corrupt."
            )
        self.need(count * _MIN_SIZE[itype], what)  # bounds the loop below by the file size
        if itype in _SCALARS:
            self.pos += count * _SCALARS[itype][1]
        else:
            for _ in range(count):
                self.skip_value(itype, what)
        return None


def check_gguf(path: str | Path) -> None:
    """Validate a GGUF file's structure (magic, version, metadata, tensor table, data extent).

    Raises CorruptFileError naming the first problem. Runs in time linear in the header size.
    """
    gguf = gguf_module()
    path = Path(path)
    if not path.is_file():
        raise LoadError(f"{path} does not exist or is not a file; pass the path of a .gguf file.")
    size = path.stat().st_size
    if size < 24:
        raise CorruptFileError(f"{path} is {size} bytes, too short for a GGUF header; the file is truncated.")
    with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[:4] != b"GGUF":
            raise CorruptFileError(f"{path} does not start with the GGUF magic bytes; it is not a GGUF file.")
        order = "<"
        (version,) = struct.unpack_from("<I", buf, 4)
        if version not in (2, 3):
            order, (version,) = ">", struct.unpack_from(">I", buf, 4)
        if version not in (2, 3):
            raise CorruptFileError(f"{path}: unsupported GGUF version; only versions 2 and 3 are read.")
        cur = _Cursor(buf, path, order)
        cur.pos = 8
        n_tensors, n_kv = cur.scalar("Q", 8, "header"), cur.scalar("Q", 8, "header")
        cur.need(n_kv * 13 + n_tensors * 24, "header counts")  # smallest possible entries
        alignment = 32
        for _ in range(n_kv):
            key = cur.string("metadata key")
            value = cur.skip_value(cur.scalar("I", 4, f"metadata {key!r}"), f"metadata {key!r}")
            if key == "general.alignment":
                alignment = value
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise CorruptFileError(f"{path}: general.alignment={alignment!r} is not a power of two.")
        extents = []
        for _ in range(n_tensors):
            name = cur.string("tensor table")
            n_dims = cur.scalar("I", 4, f"tensor {name!r}")
            if not 1 <= n_dims <= _MAX_DIMS:
                raise CorruptFileError(
                    f"{path}: tensor {name!r} claims {n_dims} dimensions (ggml allows 1-4)."
                )
            dims = [cur.scalar("Q", 8, f"tensor {name!r}") for _ in range(n_dims)]
            raw_type, offset = cur.scalar("I", 4, f"tensor {name!r}"), cur.scalar("Q", 8, f"tensor {name!r}")
            try:
                block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(raw_type)]
            except (ValueError, KeyError):
                raise CorruptFileError(f"{path}: tensor {name!r} has unknown ggml type {raw_type}.") from None
            if dims[0] % block:
                raise CorruptFileError(
                    f"{path}: tensor {name!r} row length {dims[0]} is not a multiple of {block}."
                )
            extents.append((name, offset, int(np.prod(dims, dtype=object)) * type_size // block))
        data_start = -(-cur.pos // alignment) * alignment
        for name, offset, nbytes in extents:
            if data_start + offset + nbytes > size:
                raise CorruptFileError(
                    f"{path}: tensor {name!r} needs bytes up to {data_start + offset + nbytes} but the file "
                    f"has {size}; the file is truncated. Download or convert it again."
                )
        _check_extents(path, extents, alignment)


def _check_extents(path: Path, extents: list[tuple[str, int, int]], alignment: int) -> None:
    """Tensor data must start on the alignment and no two tensors may share bytes (a flipped offset)."""
    names = [name for name, _, _ in extents]
    if len(set(names)) != len(names):
        twice = sorted(n for n, k in Counter(names).items() if k > 1)
        raise CorruptFileError(f"{path}: the tensor table names {twice[:3]} more than once; the file is corrupt.")
    end, previous = 0, ""
    for name, offset, nbytes in sorted(extents, key=lambda e: e[1]):
        if offset % alignment:
            raise CorruptFileError(
                f"{path}: tensor {name!r} starts at data offset {offset}, not a multiple of the alignment "
                f"{alignment}; the tensor table is corrupt. Download or convert the file again."
            )
        if offset < end:
            raise CorruptFileError(
                f"{path}: tensors {previous!r} and {name!r} overlap in the data section; the tensor table "
                "is corrupt. Download or convert the file again."
            )
        end, previous = offset + nbytes, name
