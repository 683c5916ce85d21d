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
    def from_file(
        cls,
        path: str | Path,
        *,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
        add_bos: bool = False,
    ) -> Tokenizer:
        """Load a HF `tokenizer.json`."""
        try:
            backend = _HFTokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on malformed JSON
            raise LoadError(f"could not read tokenizer {path}: {exc}; pass a HF tokenizer.json.") from exc
        return cls(
            backend, bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id, add_bos=add_bos
        )

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
