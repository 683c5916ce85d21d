"""What generation, and the widgets that drive it, need from a tokenizer and a model, as types.

`workbench.Tokenizer` meets both protocols, and so does a Hugging Face tokenizer: the arguments are
positional-only, so any parameter names (`ids`, `token_ids`) and extra keyword options fit.
"""

from __future__ import annotations

from typing import Protocol


class TokenDecoder(Protocol):
    """Turns token ids into text: all that stop strings and `GenerationOutput.texts` use."""

    def decode(self, ids: list[int], /) -> str: ...


class TokenizerLike(TokenDecoder, Protocol):
    """Text to ids and back: what `GenerationSession` and the widgets call.

    Optional members are read with getattr/hasattr where they are used: `eos_token_id` (the default
    end of generation) and `token_strings(ids)` (one display label per token).
    """

    def encode(self, text: str, /) -> list[int]: ...
