"""`Tokenizer`: a small, typed wrapper over a `tokenizers.Tokenizer` that the workbench relies on."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer as _HFTokenizer

from ..errors import InputError, LoadError


class Tokenizer:
    """Encode/decode text; batches come back left-padded, as generation wants them."""

    def __init__(
        self,
        backend: _HFTokenizer,
        *,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
        add_bos: bool = False,
    ) -> None:
        self.backend = backend
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id if pad_token_id is not None else eos_token_id
        self.add_bos = add_bos

    @classmethod
    def from_file(cls, path: str | Path, **special: int | bool | None) -> Tokenizer:
        """Load a HF `tokenizer.json`."""
        try:
            backend = _HFTokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on malformed JSON
            raise LoadError(f"could not read tokenizer {path}: {exc}; pass a HF tokenizer.json.") from exc
        return cls(backend, **special)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, *, add_bos: bool | None = None) -> list[int]:
        if not isinstance(text, str):
            raise InputError(f"text must be a str, got {type(text).__name__}.")
        ids = self.backend.encode(text, add_special_tokens=False).ids
        if (self.add_bos if add_bos is None else add_bos) and self.bos_token_id is not None:
            ids = [self.bos_token_id, *ids]
        return ids

    def decode(self, ids: Sequence[int] | torch.Tensor, *, skip_special: bool = False) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self.backend.decode(list(ids), skip_special_tokens=skip_special)

    def token_strings(self, ids: Sequence[int] | torch.Tensor) -> list[str]:
        """One readable label per token (its decoded text), for axes and tables."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return [self.backend.decode([int(i)], skip_special_tokens=False) for i in ids]

    def __call__(
        self, texts: str | Sequence[str], *, add_bos: bool | None = None
    ) -> dict[str, torch.Tensor]:
        """Left-padded `input_ids` and `attention_mask` (B, T) for one text or a list."""
        if isinstance(texts, str):
            texts = [texts]
        rows = [self.encode(t, add_bos=add_bos) for t in texts]
        if any(len(r) == 0 for r in rows):
            raise InputError("a text encoded to zero tokens; pass non-empty text.")
        width = max(len(r) for r in rows)
        pad = self.pad_token_id if self.pad_token_id is not None else 0
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r) :] = torch.tensor(r)
            mask[i, width - len(r) :] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, bos={self.bos_token_id}, eos={self.eos_token_id})"


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A tokenizer from a `.gguf` file, a `tokenizer.json`, or a directory holding either.

    Special ids come from `tokenizer_config.json` (bos_token/eos_token/pad_token, as HF writes it)
    when present next to `tokenizer.json`.
    """
    import json

    path = Path(path).expanduser()
    if path.is_dir():
        candidates = [path / "tokenizer.json", *sorted(path.glob("*.gguf"))]
        found = [c for c in candidates if c.exists()]
        if not found:
            raise LoadError(f"{path} holds neither tokenizer.json nor a .gguf file; pass a tokenizer file.")
        path = found[0]
    if not path.exists():
        raise LoadError(f"{path} does not exist; pass a tokenizer.json, a .gguf file or their folder.")
    if path.suffix == ".gguf":
        from .gguf_tokenizer import tokenizer_from_gguf

        return tokenizer_from_gguf(path)
    tok = Tokenizer.from_file(path)
    config_path = path.parent / "tokenizer_config.json"
    if config_path.exists():
        try:
            conf = json.loads(config_path.read_text())
        except json.JSONDecodeError as exc:
            raise LoadError(f"{config_path} is not valid JSON ({exc}).") from exc

        def token_id(key: str) -> int | None:
            token = conf.get(key)
            token = token.get("content") if isinstance(token, dict) else token
            return tok.backend.token_to_id(token) if isinstance(token, str) else None

        tok.bos_token_id, tok.eos_token_id = token_id("bos_token"), token_id("eos_token")
        tok.pad_token_id = token_id("pad_token") if token_id("pad_token") is not None else tok.eos_token_id
        tok.add_bos = bool(conf.get("add_bos_token", False))
    return tok
