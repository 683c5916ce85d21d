"""`load_tokenizer(path)`: the right tokenizer for a `.gguf` file, a `tokenizer.json`, or their folder."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import LoadError
from .gguf_tokenizer import tokenizer_from_gguf
from .tokenizer import Tokenizer


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A tokenizer from a `.gguf` file, a `tokenizer.json`, or a directory holding either.

    Special ids come from `tokenizer_config.json` (bos_token/eos_token/pad_token, as HF writes it)
    when present next to `tokenizer.json`.
    """
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
