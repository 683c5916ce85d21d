"""Tokenizers rebuilt from GGUF metadata (`tokenizer.ggml.*`) with the `tokenizers` library.

Only byte-level BPE (`tokenizer.ggml.model == "gpt2"`, used by GPT-2, SmolLM, StarCoder, Llama 3,
Qwen, ...) is rebuilt. `tokenizer.ggml.pre` names llama.cpp's pre-tokenizer; the names whose
splitting rule is reproduced are listed in `PRE_TOKENIZERS`, others fall back to GPT-2's rule
with a warning, because ids can then differ from llama.cpp's on some texts.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as _HFTokenizer

from ..errors import CorruptFileError, UnsupportedModelError
from .gguf_file import GGUFFile, open_gguf
from .tokenizer import Tokenizer

# llama.cpp pre-tokenizer name -> does it split every digit off on its own before GPT-2's regex?
PRE_TOKENIZERS: dict[str, bool] = {
    "default": False,
    "gpt2": False,
    "gpt-2": False,
    "smollm": True,
    "starcoder": True,
    "refact": True,
    "codeshell": True,
}
_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types that become added (unsplittable) tokens


def _pre_tokenizer(name: str | None) -> pre_tokenizers.PreTokenizer:
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)  # GPT-2's regex
    if name not in PRE_TOKENIZERS:
        warnings.warn(
            f"GGUF pre-tokenizer {name!r} is not reproduced; using GPT-2's splitting rule, so token ids "
            "may differ from llama.cpp on some texts.",
            stacklevel=3,
        )
    if name is not None and PRE_TOKENIZERS.get(name, False):
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    return byte_level


def _check(meta: dict[str, Any]) -> None:
    """Refuse tokenizer metadata of the wrong type, or special ids outside the vocabulary."""
    from ..schema import check
    from .schemas import gguf_metadata, gguf_token_id_problem

    fix = "The file is corrupt or was written by another converter; download or convert it again."
    values = {k: v for k, v in meta.items() if k.startswith("tokenizer.ggml.")}
    check(gguf_metadata(None), values, source="GGUF tokenizer metadata", error=CorruptFileError, fix=fix)
    problem = gguf_token_id_problem(values)
    if problem:
        raise CorruptFileError(f"GGUF tokenizer metadata: {problem}. {fix}")


def tokenizer_from_metadata(meta: dict[str, Any]) -> Tokenizer:
    """A `Tokenizer` from the `tokenizer.ggml.*` metadata values (keys without the prefix are not used)."""
    _check(meta)
    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise UnsupportedModelError(
            f"GGUF tokenizer model {kind!r} is not supported; only byte-level BPE ('gpt2') is rebuilt. "
            "Load the model's HF tokenizer.json with Tokenizer.from_file instead."
        )
    tokens: list[str] = meta.get("tokenizer.ggml.tokens") or []
    merges: list[str] = meta.get("tokenizer.ggml.merges") or []
    if not tokens:
        raise CorruptFileError(
            "GGUF metadata has an empty tokenizer.ggml.tokens list; the file is incomplete."
        )
    types: list[int] = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    if len(types) != len(tokens):
        raise CorruptFileError(
            f"GGUF has {len(tokens)} tokens but {len(types)} token types; the file is corrupt."
        )
    pairs = []
    for m in merges:
        left, sep, right = m.partition(" ")  # byte-level tokens never contain a plain space
        if not sep:
            raise CorruptFileError(f"GGUF merge {m!r} is not two tokens separated by a space.")
        pairs.append((left, right))
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise CorruptFileError(
            f"GGUF tokenizer.ggml.tokens lists {len(tokens) - len(vocab)} tokens twice; the file is corrupt."
        )
    try:
        backend = _HFTokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False))
    except Exception as exc:  # tokenizers raises a bare Exception for merges of unknown tokens
        raise CorruptFileError(
            f"GGUF tokenizer metadata does not make a BPE model ({exc}); the file is corrupt."
        ) from None
    backend.pre_tokenizer = _pre_tokenizer(meta.get("tokenizer.ggml.pre"))
    backend.decoder = decoders.ByteLevel()
    added = [
        AddedToken(tokens[i], special=t == _CONTROL, normalized=False)
        for i, t in enumerate(types)
        if t in (_CONTROL, _USER_DEFINED)
    ]
    backend.add_tokens(added)  # ids already exist in the vocab, so they keep them
    return Tokenizer(
        backend,
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
        eos_token_id=meta.get("tokenizer.ggml.eos_token_id"),
        pad_token_id=meta.get("tokenizer.ggml.padding_token_id"),
        add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", False)),
    )


def tokenizer_from_reader(reader: GGUFFile) -> Tokenizer:
    """A `Tokenizer` from an open GGUF file (`workbench.io.gguf_file.open_gguf`)."""
    return tokenizer_from_metadata(reader.values(lambda key: key.startswith("tokenizer.ggml.")))


def tokenizer_from_gguf(path: str | Path) -> Tokenizer:
    """A `Tokenizer` rebuilt from a GGUF file's metadata; no weights are read."""
    return tokenizer_from_reader(open_gguf(path))
