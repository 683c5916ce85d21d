"""A GGUF file read in one bounds-checked walk: magic, version, metadata, tensor table, data extents.

Every read of the header is checked against the file's size, and every count is bounded by it before a loop
runs on it, so a truncated or malformed file raises `CorruptFileError` naming the first problem instead of
crashing or looping over absurd counts. Nothing is allocated in proportion to what the header claims.

The same walk collects what it checks. Metadata text stays bytes until it is read (`GGUFFile.get`), so text
that is not UTF-8 raises `CorruptFileError` naming its key when, and only when, the workbench reads that key.
String arrays (a tokenizer's ~100k tokens and merges) are read by a plain struct loop, not one numpy object
per item as `gguf.GGUFReader` does (4 s of its 4.4 s on SmolLM2). Tensor data is not read: each
`GGUFTensor.data` is a read-only numpy view over the memory-mapped file, in the layout `gguf.quants.dequantize`
takes. The `gguf` package supplies the ggml type table (block and byte sizes).
"""

from __future__ import annotations

import contextlib
import math
import mmap
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import CorruptFileError, LoadError, MissingDependencyError

if TYPE_CHECKING:
    from gguf import GGMLQuantizationType

_MAX_DIMS = 4  # ggml tensors have at most four dimensions
_MAX_NESTING = 8  # arrays of arrays: deeper than any converter writes, shallow enough for the recursion
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
_UINT32, _STRING, _ARRAY = 4, 8, 9
_MIN_SIZE = {**{k: s for k, (_, s) in _SCALARS.items()}, _STRING: 8, _ARRAY: 12}
# ggml types that `gguf.quants.dequantize` takes as elements (numpy type codes); every other type as block bytes.
_ELEMENT_CODES = {"F32": "f4", "F16": "f2", "F64": "f8", "I8": "i1", "I16": "i2", "I32": "i4", "I64": "i8"}
_REDOWNLOAD = "Download or convert it again."


def gguf_module() -> Any:
    """The `gguf` package, or MissingDependencyError with the install command."""
    try:
        import gguf
    except ImportError as exc:  # pragma: no cover - gguf is a declared dependency
        raise MissingDependencyError("reading .gguf files needs the gguf package: pip install gguf") from exc
    return gguf


@dataclass(frozen=True, eq=False)
class GGUFTensor:
    """One entry of the tensor table, its data left in the file."""

    name: str
    dims: tuple[int, ...]  # ggml's order, innermost first: an (out_features, in_features) matrix is (in, out)
    type: GGMLQuantizationType
    data_offset: int  # absolute byte offset of the data in the file
    nbytes: int
    # Read-only view of the data in `gguf.quants.dequantize`'s layout: elements shaped `shape` for F32, F16,
    # F64 and the integer types (in the file's byte order); rows of block bytes (uint8) for the others.
    data: np.ndarray = field(repr=False)
    # The same bytes, writable in this process only (the file is mapped copy-on-write; nothing reaches the
    # disk): what torch wraps without a copy or a warning about read-only memory.
    buffer: memoryview = field(repr=False)

    @property
    def shape(self) -> tuple[int, ...]:
        """Dimensions outermost first, torch's order: (out_features, in_features) for a matrix."""
        return self.dims[::-1]


class GGUFFile:
    """A validated GGUF file (see `open_gguf`): its metadata, decoded on access, and its tensor table.

    The file stays memory-mapped while this object or a view of its tensor data is alive.
    """

    def __init__(
        self,
        path: Path,
        *,
        byte_order: str,
        alignment: int,
        metadata: dict[str, Any],
        tensors: list[GGUFTensor],
        table_start: int,
        data_start: int,
    ) -> None:
        self.path = path
        self.byte_order = byte_order  # struct's "<" (little-endian, every converter's default) or ">"
        self.alignment = alignment
        self.tensors = tensors  # in the order of the file's tensor table
        self.table_start = table_start  # byte offset of the tensor table, right after the metadata
        self.data_start = data_start  # byte offset of the data section; tensor offsets count from here
        self._metadata = metadata  # key -> value with text still bytes
        self._by_name = {t.name: t for t in tensors}

    def __repr__(self) -> str:
        return f"GGUFFile({str(self.path)!r}, {len(self._metadata)} metadata keys, {len(self.tensors)} tensors)"

    def __contains__(self, key: object) -> bool:
        return key in self._metadata

    def keys(self) -> list[str]:
        """The metadata keys, in file order."""
        return list(self._metadata)

    def get(self, key: str, default: Any = None) -> Any:
        """One metadata value as a Python object (str, int, float, bool, or a list of them), or `default`.

        Text that is not UTF-8 raises CorruptFileError naming the key.
        """
        if key not in self._metadata:
            return default
        try:
            return _decoded(self._metadata[key])
        except UnicodeDecodeError as exc:
            raise CorruptFileError(f"GGUF metadata {key!r} holds bytes that are not UTF-8 text ({exc.reason} at "
                                   f"byte {exc.start}). The file is corrupt or was written by another converter; "
                                   "download or convert it again.") from None

    def values(self, accept: Callable[[str], bool]) -> dict[str, Any]:
        """{key: value} of the metadata keys `accept` takes, each read as `get` reads it."""
        return {key: self.get(key) for key in self._metadata if accept(key)}

    def tensor(self, name: str) -> GGUFTensor | None:
        """The tensor of this GGUF name, or None when the file has none."""
        return self._by_name.get(name)


def _decoded(value: Any) -> Any:
    """A raw metadata value with its text (bytes) decoded, lists copied; UnicodeDecodeError on bad text."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if not isinstance(value, list) or not value:
        return list(value) if isinstance(value, list) else value
    if isinstance(value[0], bytes):  # a string array: items all of one type
        return [item.decode("utf-8") for item in value]
    if isinstance(value[0], list):  # an array of arrays
        return [_decoded(item) for item in value]
    return list(value)


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

    def raw_string(self, what: str) -> bytes:
        n = self.scalar("Q", 8, what)
        self.need(n, what)
        start, self.pos = self.pos, self.pos + n
        return self.buf[start : self.pos]

    def text(self, what: str) -> str:
        """A string that names something (a key, a tensor): it must be UTF-8 text."""
        start = self.pos
        try:
            return self.raw_string(what).decode("utf-8")
        except UnicodeDecodeError:
            raise CorruptFileError(
                f"{self.path}: the {what} at byte {start} is not UTF-8 text; the file is corrupt. {_REDOWNLOAD}"
            ) from None

    def value(self, vtype: int, what: str, depth: int = 0) -> Any:
        """One metadata value: a Python scalar, bytes for a string, a list for an array."""
        if vtype in _SCALARS:
            return self.scalar(*_SCALARS[vtype], what)
        if vtype == _STRING:
            return self.raw_string(what)
        if vtype != _ARRAY:
            raise CorruptFileError(
                f"{self.path}: unknown metadata value type {vtype} in {what}; the file is corrupt."
            )
        itype, count = self.scalar("I", 4, what), self.scalar("Q", 8, what)
        if itype not in _MIN_SIZE:
            raise CorruptFileError(
                f"{self.path}: unknown array item type {itype} in {what}; the file is corrupt."
            )
        self.need(count * _MIN_SIZE[itype], what)  # bounds the loops below by the file size
        if itype in _SCALARS:
            code, size = _SCALARS[itype]
            items = list(struct.unpack_from(f"{self.order}{count}{code}", self.buf, self.pos))
            self.pos += count * size
            return items
        if itype == _STRING:
            return self.raw_strings(count, what)
        if depth >= _MAX_NESTING:
            raise CorruptFileError(
                f"{self.path}: {what} nests arrays more than {_MAX_NESTING} deep; the file is corrupt."
            )
        return [self.value(itype, what, depth + 1) for _ in range(count)]

    def raw_strings(self, count: int, what: str) -> list[bytes]:
        """`count` strings as bytes: `raw_string` in a loop with the lookups hoisted (a tokenizer has ~100k)."""
        buf, pos, size = self.buf, self.pos, self.size
        length = struct.Struct(self.order + "Q").unpack_from
        out: list[bytes] = []
        append = out.append
        for _ in range(count):
            if pos + 8 <= size:
                (n,) = length(buf, pos)
                end = pos + 8 + n
                if end <= size:
                    append(buf[pos + 8 : end])
                    pos = end
                    continue
            self.pos = pos
            self.raw_string(what)  # the same bounds, checked again: raises CorruptFileError saying where
        self.pos = pos
        return out


@dataclass(frozen=True)
class _Entry:
    """A tensor-table entry as the walk reads it, before its extent is checked."""

    name: str
    dims: tuple[int, ...]
    type: Any
    offset: int  # from the start of the data section
    nbytes: int


def open_gguf(path: str | Path) -> GGUFFile:
    """Read and validate a GGUF file's structure (magic, version, metadata, tensor table, data extents).

    Raises CorruptFileError naming the first problem (LoadError when `path` is no file). Runs in time linear
    in the header's size; tensor data is mapped, not read.
    """
    path = Path(path)
    if not path.is_file():
        raise LoadError(f"{path} does not exist or is not a file; pass the path of a .gguf file.")
    size = path.stat().st_size
    if size < 24:
        raise CorruptFileError(f"{path} is {size} bytes, too short for a GGUF header; the file is truncated.")
    with path.open("rb") as fh:  # the map outlives the descriptor
        buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
    try:
        return _walk(buf, path)
    except BaseException:
        with contextlib.suppress(BufferError):  # a view still held by the traceback keeps it to the collector
            buf.close()
        raise


def _walk(buf: mmap.mmap, path: Path) -> GGUFFile:
    """Header, metadata, tensor table, then every check on the data extents; the views last."""
    gguf = gguf_module()
    cur = _start(buf, path)
    n_tensors, n_kv = cur.scalar("Q", 8, "header"), cur.scalar("Q", 8, "header")
    cur.need(n_kv * 13 + n_tensors * 24, "header counts")  # smallest possible entries
    metadata, alignment = _read_metadata(cur, n_kv)
    table_start = cur.pos
    entries = [_read_entry(cur, gguf) for _ in range(n_tensors)]
    data_start = -(-cur.pos // alignment) * alignment
    _check_extents(path, entries, alignment, data_start, len(buf))
    view = memoryview(buf)
    tensors = [_tensor(e, view, data_start, cur.order, gguf) for e in entries]
    return GGUFFile(path, byte_order=cur.order, alignment=alignment, metadata=metadata, tensors=tensors,
                    table_start=table_start, data_start=data_start)


def _start(buf: mmap.mmap, path: Path) -> _Cursor:
    """A cursor past the magic and the version, in the file's byte order (a big-endian file reads version 3 as
    3 << 24 in little-endian)."""
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
    return cur


def _read_metadata(cur: _Cursor, n_kv: int) -> tuple[dict[str, Any], int]:
    """The key/value section: {key: value with text as bytes}, and the data alignment (32 unless it says)."""
    metadata: dict[str, Any] = {}
    alignment: Any = 32
    for _ in range(n_kv):
        key = cur.text("metadata key")
        vtype = cur.scalar("I", 4, f"metadata {key!r}")
        value = cur.value(vtype, f"metadata {key!r}")
        if key in metadata:
            raise CorruptFileError(f"{cur.path}: metadata key {key!r} appears twice; the file is corrupt. "
                                   f"{_REDOWNLOAD}")
        metadata[key] = value
        if key == "general.alignment":
            if vtype != _UINT32:
                raise CorruptFileError(f"{cur.path}: general.alignment is stored as GGUF value type {vtype}, not "
                                       f"uint32 ({_UINT32}); the file is corrupt. {_REDOWNLOAD}")
            alignment = value
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise CorruptFileError(f"{cur.path}: general.alignment={alignment!r} is not a power of two.")
    return metadata, alignment


def _read_entry(cur: _Cursor, gguf: Any) -> _Entry:
    """One tensor-table entry: name, dimensions, ggml type, data offset; its byte count from the type."""
    name = cur.text("tensor table")
    n_dims = cur.scalar("I", 4, f"tensor {name!r}")
    if not 1 <= n_dims <= _MAX_DIMS:
        raise CorruptFileError(
            f"{cur.path}: tensor {name!r} claims {n_dims} dimensions (ggml allows 1-4)."
        )
    dims = tuple(cur.scalar("Q", 8, f"tensor {name!r}") for _ in range(n_dims))
    raw_type, offset = cur.scalar("I", 4, f"tensor {name!r}"), cur.scalar("Q", 8, f"tensor {name!r}")
    try:
        qtype = gguf.GGMLQuantizationType(raw_type)
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    except (ValueError, KeyError):
        raise CorruptFileError(f"{cur.path}: tensor {name!r} has unknown ggml type {raw_type}.") from None
    if dims[0] % block:
        raise CorruptFileError(
            f"{cur.path}: tensor {name!r} row length {dims[0]} is not a multiple of {block}."
        )
    return _Entry(name, dims, qtype, offset, math.prod(dims) * type_size // block)


def _check_extents(path: Path, entries: list[_Entry], alignment: int, data_start: int, size: int) -> None:
    """Tensor data must lie inside the file, start on the alignment, and share no bytes (a flipped offset)."""
    for e in entries:
        if data_start + e.offset + e.nbytes > size:
            raise CorruptFileError(
                f"{path}: tensor {e.name!r} needs bytes up to {data_start + e.offset + e.nbytes} but the file "
                f"has {size}; the file is truncated. Download or convert it again."
            )
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        twice = sorted(n for n, k in Counter(names).items() if k > 1)
        raise CorruptFileError(f"{path}: the tensor table names {twice[:3]} more than once; the file is corrupt.")
    end, previous = 0, ""
    for e in sorted(entries, key=lambda e: e.offset):
        if e.offset % alignment:
            raise CorruptFileError(
                f"{path}: tensor {e.name!r} starts at data offset {e.offset}, not a multiple of the alignment "
                f"{alignment}; the tensor table is corrupt. Download or convert the file again."
            )
        if e.offset < end:
            raise CorruptFileError(
                f"{path}: tensors {previous!r} and {e.name!r} overlap in the data section; the tensor table "
                "is corrupt. Download or convert the file again."
            )
        end, previous = e.offset + e.nbytes, e.name


def _tensor(e: _Entry, view: memoryview, data_start: int, order: str, gguf: Any) -> GGUFTensor:
    """The entry with views of its data (its extent already checked against the file)."""
    start = data_start + e.offset
    buffer = view[start : start + e.nbytes]
    shape = e.dims[::-1]
    code = _ELEMENT_CODES.get(e.type.name)
    if code is not None:
        data = np.frombuffer(buffer, dtype=np.dtype(order + code)).reshape(shape)
    else:
        data = np.frombuffer(buffer, dtype=np.uint8).reshape(gguf.quants.quant_shape_to_byte_shape(shape, e.type))
    data.flags.writeable = False
    return GGUFTensor(e.name, e.dims, e.type, start, e.nbytes, data, buffer)
