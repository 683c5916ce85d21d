"""GGUF files (llama.cpp's format): config, dequantized float32 weights in workbench naming, and models.

Reading goes through the `gguf` package (`GGUFReader` for the layout, `gguf.quants.dequantize`
for the block formats). Two llama.cpp conventions are undone here:
- ggml lists dimensions innermost first; the reader reverses them, so a matrix arrives as
  (out_features, in_features), the layout of `nn.Linear.weight`.
- llama.cpp's converter permutes the rows of the q and k projections so that RoPE rotates
  adjacent pairs (x0, x1), (x2, x3), ...; the workbench (like HF) rotates the two halves of each
  head, so the rows are permuted back (`unpermute_rope_rows`).
Before the reader runs, `check_gguf` walks the header with bounds checks, so a truncated or
malformed file raises `CorruptFileError` instead of crashing or looping over absurd counts.
"""

from __future__ import annotations

import logging
import mmap
import struct
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CorruptFileError, LoadError, MissingDependencyError, UnsupportedModelError
from ..model.config import ModelConfig
from ..model.transformer import TransformerLM
from .gguf_rope import ROPE_FREQS, rope_scaling_from_gguf
from .state import load_state

log = logging.getLogger(__name__)

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

# GGUF tensor name (per block) -> workbench name; q/k/v and gate/up are fused afterwards.
_BLOCK_NAMES = {
    "attn_norm.weight": "ln_attn.weight",
    "attn_output.weight": "attn.out.weight",
    "ffn_norm.weight": "ln_mlp.weight",
    "ffn_down.weight": "mlp.down.weight",
}
_TOP_NAMES = {
    "token_embd.weight": "embed.weight",
    "output_norm.weight": "ln_f.weight",
    "output.weight": "lm_head.weight",
}
_FUSED = {  # workbench fused weight <- GGUF parts, stacked by rows in this order
    "attn.qkv.weight": ("attn_q.weight", "attn_k.weight", "attn_v.weight"),
    "mlp.up.weight": ("ffn_gate.weight", "ffn_up.weight"),
}


def _gguf_module() -> Any:
    try:
        import gguf
    except ImportError as exc:  # pragma: no cover - gguf is a declared dependency
        raise MissingDependencyError("reading .gguf files needs the gguf package: pip install gguf") from exc
    return gguf


# --- header validation -------------------------------------------------------------------------
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
    gguf = _gguf_module()
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


# --- reading -----------------------------------------------------------------------------------
def open_gguf(path: str | Path) -> Any:
    """A validated `gguf.GGUFReader` for `path` (memory-mapped; tensors are read lazily)."""
    check_gguf(path)
    try:
        return _gguf_module().GGUFReader(str(path))
    except Exception as exc:  # the reader raises ValueError/IndexError/KeyError on malformed input
        raise CorruptFileError(f"{path} could not be parsed as GGUF ({type(exc).__name__}: {exc}).") from exc


def metadata(reader: Any, key: str, default: Any = None) -> Any:
    """One metadata value as a Python object (str, number, bool or list), or `default`."""
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def _float32(value: Any) -> float:
    """A float32 metadata value as the shortest decimal that round-trips (9.9999997e-06 -> 1e-05)."""
    return float(str(np.float32(value)))


def _require(reader: Any, key: str) -> Any:
    value = metadata(reader, key)
    if value is None:
        raise LoadError(
            f"GGUF metadata lacks {key!r}; the file was not written by a llama-architecture converter."
        )
    return value


def config_from_gguf(reader: Any) -> ModelConfig:
    """ModelConfig from `llama.*` metadata; other architectures raise UnsupportedModelError."""
    arch = metadata(reader, "general.architecture")
    if arch != "llama":
        raise UnsupportedModelError(
            f"GGUF architecture {arch!r} is not supported; only 'llama' files load into the workbench "
            "(use a HF checkpoint for other families)."
        )
    d_model = int(_require(reader, "llama.embedding_length"))
    n_heads = int(_require(reader, "llama.attention.head_count"))
    if n_heads <= 0:
        raise CorruptFileError(f"GGUF llama.attention.head_count={n_heads}; it must be positive.")
    head_dim = d_model // n_heads
    tokens = metadata(reader, "tokenizer.ggml.tokens")
    for key in ("llama.attention.key_length", "llama.rope.dimension_count"):
        value = metadata(reader, key)
        if value is not None and int(value) != head_dim:
            raise UnsupportedModelError(
                f"{key}={value} differs from embedding_length / head_count = {head_dim}; the workbench "
                "needs head_dim = d_model / n_heads and rotary over the whole head."
            )
    rope_theta = _float32(metadata(reader, "llama.rope.freq_base", 10000.0))
    scaling_keys = ("type", "factor", "original_context_length")
    scaling_meta = {k: metadata(reader, f"llama.rope.scaling.{k}") for k in scaling_keys}
    scaling_meta["scale_linear"] = metadata(reader, "llama.rope.scale_linear")
    rope_scaling = rope_scaling_from_gguf(scaling_meta, _rope_freqs(reader), head_dim, rope_theta)
    return ModelConfig(
        vocab_size=len(tokens) if tokens else int(_require(reader, "llama.vocab_size")),
        d_model=d_model,
        n_layers=int(_require(reader, "llama.block_count")),
        n_heads=n_heads,
        n_kv_heads=int(metadata(reader, "llama.attention.head_count_kv", n_heads)),
        d_ff=int(_require(reader, "llama.feed_forward_length")),
        max_seq_len=int(metadata(reader, "llama.context_length", 2048)),
        tie_embeddings=not any(t.name == "output.weight" for t in reader.tensors),
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        norm_eps=_float32(metadata(reader, "llama.attention.layer_norm_rms_epsilon", 1e-5)),
    )


def _rope_freqs(reader: Any) -> np.ndarray | None:
    """llama.cpp's per-frequency RoPE divisors (D/2,) as float64, or None when the file has none."""
    from gguf.quants import dequantize

    tensor = next((t for t in reader.tensors if t.name == ROPE_FREQS), None)
    if tensor is None:
        return None
    try:
        return np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float64).reshape(-1)
    except Exception as exc:  # as in _dequantize: exotic types or bad shapes
        raise LoadError(f"cannot dequantize {ROPE_FREQS} ({tensor.tensor_type.name}): {exc}") from exc


def unpermute_rope_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's q/k row order: per head, rows (pair j, element e) go back to (half e, j).

    w: (H*D, C) as stored in GGUF, rows of each head ordered x0, x1, x2, ... pairwise;
    returns (H*D, C) with each head's rows in HF's half-split order.
    """
    rows, C = w.shape
    D = rows // n_heads
    pairs = w.reshape(n_heads, D // 2, 2, C)  # (H, D/2, 2, C): row = (pair j, element e)
    return pairs.transpose(1, 2).reshape(rows, C)  # (H, 2, D/2, C) -> (H*D, C): row = (half e, j)


def _dequantize(reader: Any, progress: bool | None) -> tuple[dict[str, torch.Tensor], Counter]:
    """Every tensor as float32 torch, keyed by GGUF name, plus a count of source types."""
    from gguf.quants import dequantize
    from tqdm.auto import tqdm

    out: dict[str, torch.Tensor] = {}
    kinds: Counter[str] = Counter()
    disable = None if progress is None else not progress  # None: only on an interactive terminal
    for t in tqdm(reader.tensors, desc="dequantizing GGUF", unit="tensor", disable=disable):
        try:
            array = dequantize(t.data, t.tensor_type)
        except Exception as exc:  # NotImplementedError for exotic types, ValueError for bad shapes
            raise LoadError(f"cannot dequantize {t.name} ({t.tensor_type.name}): {exc}") from exc
        expected = tuple(int(d) for d in reversed(t.shape.tolist()))  # ggml order is innermost first
        if tuple(array.shape) != expected:
            raise CorruptFileError(
                f"{t.name}: dequantized shape {array.shape} differs from header {expected}."
            )
        array = array if array.dtype == np.float32 and array.flags.writeable else array.astype(np.float32)
        out[t.name] = torch.from_numpy(array)
        kinds[t.tensor_type.name] += 1
    return out, kinds


def state_from_gguf(
    reader: Any, config: ModelConfig, *, progress: bool | None = None
) -> tuple[dict, list[str]]:
    """Float32 state dict in workbench naming, plus notes on what was done to the tensors."""
    raw, kinds = _dequantize(reader, progress)
    state: dict[str, torch.Tensor] = {}
    for i in range(config.n_layers):
        pre = f"blk.{i}."
        for part, heads in (("attn_q.weight", config.n_heads), ("attn_k.weight", config.kv_heads)):
            if pre + part in raw:
                raw[pre + part] = unpermute_rope_rows(raw[pre + part], heads)
        for ours, parts in _FUSED.items():
            if all(pre + p in raw for p in parts):
                fused = [raw.pop(pre + p) for p in parts]
                state[f"blocks.{i}.{ours}"] = torch.cat(fused, dim=0)  # rows stacked: [q; k; v] or [gate; up]
        for theirs, ours in _BLOCK_NAMES.items():
            if pre + theirs in raw:
                state[f"blocks.{i}.{ours}"] = raw.pop(pre + theirs)
    for theirs, ours in _TOP_NAMES.items():
        if theirs in raw:
            state[ours] = raw.pop(theirs)
    state.update(raw)  # anything unmapped keeps its GGUF name and shows up as unexpected
    quantized = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()) if k not in ("F32",))
    notes = [f"dequantized {quantized} tensors -> float32" if quantized else "all tensors were float32"]
    notes.append(f"undid llama.cpp's q/k row permutation in {config.n_layers} layers")
    if config.tie_embeddings:
        notes.append("no output.weight in the file: LM head tied to token_embd")
    if state.pop(ROPE_FREQS, None) is not None:  # already folded into config.rope_scaling
        notes.append(f"{ROPE_FREQS} read as RoPE scaling {config.rope_scaling}")
    elif config.rope_scaling is not None:
        notes.append(f"RoPE scaling from metadata: {config.rope_scaling}")
    return state, notes


def read_gguf(
    path: str | Path, *, progress: bool | None = None
) -> tuple[ModelConfig, dict[str, torch.Tensor], list[str]]:
    """(config, float32 state dict in workbench naming, notes) from a llama-architecture GGUF file.

    progress: show a tqdm bar over tensors; None shows it only on an interactive terminal.
    """
    reader = open_gguf(path)
    config = config_from_gguf(reader)
    state, notes = state_from_gguf(reader, config, progress=progress)
    return config, state, notes


def model_from_reader(
    reader: Any,
    source: str,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    strict: bool = True,
    progress: bool | None = None,
) -> TransformerLM:
    """Build and fill a TransformerLM from an open reader (shared by `load_gguf` and `models.smollm2`)."""
    config = config_from_gguf(reader)
    state, notes = state_from_gguf(reader, config, progress=progress)
    model = TransformerLM(config)
    report = load_state(model, state, strict=strict, source=source, format="gguf")
    report.notes.extend(notes)
    model.load_report = report
    log.info("%s", report.summary())
    return model.to(device=device, dtype=dtype or torch.float32).eval()


def load_gguf(
    path: str | Path,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    strict: bool = True,
    progress: bool | None = None,
) -> TransformerLM:
    """A TransformerLM in eval mode from a llama GGUF file; `model.load_report` records the load.

    Weights are dequantized to float32, then the model is moved to `device` and cast to `dtype`.
    """
    return model_from_reader(
        open_gguf(path), str(path), device=device, dtype=dtype, strict=strict, progress=progress
    )
