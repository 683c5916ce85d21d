"""`load_tokenizer(path)`: the right tokenizer for a `.gguf` file, a `tokenizer.json`, or their folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import LoadError
from ..schema import check, read_json_object
from .gguf_tokenizer import tokenizer_from_gguf
from .schemas import tokenizer_config
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
        special = read_tokenizer_config(config_path, tok)
        tok.bos_token_id, tok.eos_token_id = special["bos"], special["eos"]
        tok.pad_token_id = special["pad"] if special["pad"] is not None else tok.eos_token_id
        tok.add_bos = bool(special["add_bos"])
    return tok


def read_tokenizer_config(path: Path, tok: Tokenizer) -> dict[str, Any]:
    """Special token ids ("bos", "eos", "pad": id or None when not named) and "add_bos" (bool or None)
    from a `tokenizer_config.json`, checked against its schema and against the tokenizer's vocabulary.

    A token named in the file but absent from the vocabulary is an error, never a silent None.
    """
    fix = "Fix tokenizer_config.json (tokens are strings or {\"content\": ...}, add_bos_token true/false)."
    raw = read_json_object(path, error=LoadError, fix=fix)
    conf = check(tokenizer_config(), raw, source=str(path), error=LoadError, fix=fix)
    out: dict[str, Any] = {"add_bos": conf.add_bos_token}
    for role in ("bos", "eos", "pad"):
        token = getattr(conf, f"{role}_token")
        token = getattr(token, "content", token)  # an added-token object or a plain string
        out[role] = None if token is None else tok.backend.token_to_id(token)
        if token is not None and out[role] is None:
            raise LoadError(f"{path}: {role}_token {token!r} is not in the tokenizer's vocabulary. {fix}")
    return out
