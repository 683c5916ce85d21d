"""Stop strings: end a row once its generated text contains one of them (needs a tokenizer)."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import GenerationError
from .protocols import TokenDecoder


class StopStrings:
    """Checks decoded new text against stop strings; only the generated part is searched, never the prompt."""

    def __init__(self, tokenizer: TokenDecoder | None, strings: Sequence[str]) -> None:
        if tokenizer is None or not callable(getattr(tokenizer, "decode", None)):
            raise GenerationError(
                f"stop_strings={list(strings)!r} need a tokenizer to turn tokens into text; pass "
                "tokenizer=... (anything with .decode(ids)), or use eos_token_id instead."
            )
        self.tokenizer, self.strings = tokenizer, tuple(strings)

    def hit(self, new_ids: Sequence[int]) -> bool:
        """True when the text of `new_ids` (the tokens generated so far for one row) contains a stop string."""
        text = self.tokenizer.decode(list(new_ids))
        return any(s in text for s in self.strings)
