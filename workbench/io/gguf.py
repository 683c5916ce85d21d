"""GGUF files (llama.cpp's format): config, dequantized float32 weights in workbench naming, and models.

`open_gguf` (`workbench.io.gguf_file`) reads the file in one bounds-checked walk, so a truncated or
malformed file raises `CorruptFileError` instead of crashing or looping over absurd counts; the tensors stay
in the memory-mapped file until `workbench.io.gguf_quants` dequantizes them. ggml lists dimensions innermost
first; `GGUFTensor.shape` reverses them, so a matrix arrives as (out_features, in_features), the layout of
`nn.Linear.weight`. What each architecture's converter wrote (metadata keys, tensor names, and changes to
values such as Llama's q/k row permutation or Gemma's stored 1 + weight) is declared by its family in
`workbench.families` and looked up by `general.architecture`.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, CorruptFileError, LoadError, UnsupportedModelError
from ..families.llama import unpermute_rope_rows  # noqa: F401 (re-exported: part of this module's API)
from ..families.registry import GGUFSpec, for_gguf_arch
from ..model.config import ModelConfig, RopeScaling
from ..model.transformer import TransformerLM
from .gguf_file import GGUFFile, GGUFTensor, open_gguf
from .gguf_quants import dequantize
from .gguf_rope import ROPE_FREQS, rope_scaling_from_gguf
from .sizes import check_sizes
from .state import model_from_state

log = logging.getLogger(__name__)

_REDOWNLOAD = "The file is corrupt or was written by another converter; download or convert it again."


def check_metadata(reader: GGUFFile, source: str) -> None:
    """Refuse metadata the workbench reads when it has the wrong type, is not finite, or is out of range.

    Sizes must be positive integers, RoPE bases and epsilons positive finite numbers, token ids
    non-negative integers within the vocabulary, token lists lists of strings.
    """
    from ..schema import check
    from .schemas import gguf_metadata, gguf_token_id_problem

    arch = reader.get("general.architecture")
    schema = gguf_metadata(arch if isinstance(arch, str) else None)
    keys = {f.alias for f in schema.model_fields.values()}
    values = reader.values(keys.__contains__)
    check(schema, values, source=f"{source} metadata", error=CorruptFileError, fix=_REDOWNLOAD)
    problem = gguf_token_id_problem(values)
    if problem:
        raise CorruptFileError(f"{source} metadata: {problem}. {_REDOWNLOAD}")


class _Meta:
    """`families.gguf_keys.GGUFMeta` over an open file, for the family of its `arch`."""

    def __init__(self, reader: GGUFFile, arch: str) -> None:
        self.reader, self.arch = reader, arch

    def get(self, key: str, default: Any = None) -> Any:
        return self.reader.get(key, default)

    def require(self, key: str) -> Any:
        value = self.reader.get(key)
        if value is None:
            raise LoadError(
                f"GGUF metadata lacks {key!r}; the file was not written by a {self.arch}-architecture converter."
            )
        return value

    def has_tensor(self, name: str) -> bool:
        return self.reader.tensor(name) is not None

    def rope_scaling(self, head_dim: int, theta: float) -> RopeScaling | None:
        p = f"{self.arch}.rope."
        meta = {k: self.get(f"{p}scaling.{k}") for k in ("type", "factor", "original_context_length")}
        meta["scale_linear"] = self.get(f"{p}scale_linear")
        return rope_scaling_from_gguf(meta, _rope_freqs(self.reader), head_dim, theta)


def _gguf_spec(reader: GGUFFile) -> GGUFSpec:
    """How the family of the file's `general.architecture` was written. A missing or damaged name (not text,
    empty) raises CorruptFileError; a name no family reads, UnsupportedModelError."""
    arch = reader.get("general.architecture")
    if not isinstance(arch, str) or not arch.strip():
        shown = "missing" if arch is None else f"{type(arch).__name__} {repr(arch)[:60]}"
        raise CorruptFileError(f"GGUF metadata general.architecture is {shown}: it must name the model's "
                               f"architecture as text, such as 'llama'. {_REDOWNLOAD}")
    family = for_gguf_arch(arch)
    if family.gguf is None:  # a family matches a name only through its GGUF spec; kept as an error, not trusted
        raise UnsupportedModelError(f"GGUF architecture {arch!r} belongs to the {family.name} family, which "
                                    "reads no GGUF files; load a HF checkpoint of it instead.")
    return family.gguf


def config_from_gguf(reader: GGUFFile, *, source: str = "GGUF", strict: bool = True) -> ModelConfig:
    """ModelConfig from `{arch}.*` metadata, checked against the tensor table before it is returned.

    Architectures without a GGUF family raise UnsupportedModelError; metadata of the wrong type, or
    sizes the tensors do not have, raise CorruptFileError / WeightMismatchError (strict: see check_sizes).
    """
    spec = _gguf_spec(reader)
    check_metadata(reader, source)
    try:
        config = spec.config_from_meta(_Meta(reader, spec.arch))
    except ConfigError as exc:
        raise CorruptFileError(f"{source} metadata describes an invalid model: {exc}") from None
    shapes = {t.name: t.shape for t in reader.tensors}
    check_sizes(config, shapes, spec.naming, source=f"{source}'s tensor table", declared=f"{source} metadata",
                strict=strict)
    return config


def _rope_freqs(reader: GGUFFile) -> np.ndarray | None:
    """llama.cpp's per-frequency RoPE divisors (D/2,) as float64, or None when the file has none."""
    tensor = reader.tensor(ROPE_FREQS)
    return None if tensor is None else _float32(tensor, reader.byte_order).double().numpy().reshape(-1)


def _float32(tensor: GGUFTensor, byte_order: str) -> torch.Tensor:
    """One tensor dequantized to float32; a type nothing can unpack raises LoadError naming it."""
    try:
        return dequantize(tensor, byte_order)
    except CorruptFileError:
        raise
    except Exception as exc:  # NotImplementedError for exotic types, ValueError for bad shapes
        raise LoadError(f"cannot dequantize {tensor.name} ({tensor.type.name}): {exc}") from exc


def _dequantize(reader: GGUFFile, progress: bool | None) -> tuple[dict[str, torch.Tensor], Counter]:
    """Every tensor as float32 torch, keyed by GGUF name, plus a count of source types."""
    from tqdm.auto import tqdm

    out: dict[str, torch.Tensor] = {}
    kinds: Counter[str] = Counter()
    disable = None if progress is None else not progress  # None: only on an interactive terminal
    for t in tqdm(reader.tensors, desc="dequantizing GGUF", unit="tensor", disable=disable):
        out[t.name] = _float32(t, reader.byte_order)
        kinds[t.type.name] += 1
    return out, kinds


def state_from_gguf(
    reader: GGUFFile, config: ModelConfig, *, progress: bool | None = None
) -> tuple[dict, list[str]]:
    """Float32 state dict in workbench naming, plus notes on what was done to the tensors."""
    raw, kinds = _dequantize(reader, progress)
    spec = _gguf_spec(reader)
    try:
        raw, fixes = spec.fix_tensors(raw, config)
        state = spec.naming.to_workbench(raw)  # anything unmapped keeps its GGUF name and shows up as unexpected
    except RuntimeError as exc:  # shapes that cannot be unpermuted or fused (strict=False lets them through)
        raise CorruptFileError(f"GGUF tensors do not fit their metadata ({exc}); the file is corrupt.") from None
    quantized = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()) if k not in ("F32",))
    notes = [f"dequantized {quantized} tensors -> float32" if quantized else "all tensors were float32", *fixes]
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
    """(config, float32 state dict in workbench naming, notes) from a GGUF file of a registered family.

    progress: show a tqdm bar over tensors; None shows it only on an interactive terminal.
    """
    reader = open_gguf(path)
    config = config_from_gguf(reader, source=str(path))
    state, notes = state_from_gguf(reader, config, progress=progress)
    return config, state, notes


def model_from_reader(
    reader: GGUFFile,
    source: str,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    strict: bool = True,
    progress: bool | None = None,
) -> TransformerLM:
    """Build and fill a TransformerLM from an open file (shared by `load_gguf` and `models.smollm2`)."""
    config = config_from_gguf(reader, source=source, strict=strict)
    state, notes = state_from_gguf(reader, config, progress=progress)
    model, report = model_from_state(config, state, strict=strict, source=source, format="gguf")
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
    """A TransformerLM in eval mode from a GGUF file (llama, qwen2, gemma); `model.load_report` records the load.

    Weights are dequantized to float32, then the model is moved to `device` and cast to `dtype`.
    """
    return model_from_reader(
        open_gguf(path), str(path), device=device, dtype=dtype, strict=strict, progress=progress
    )
