"""What a causal LM's forward accepts, read once from the model's class and its forward's signature.

Three kinds: "workbench" (`TransformerLM`: `cache=` a `KVCache`), "hf" (a transformers `PreTrainedModel`:
mask, positions, `use_cache` and a cache under the keyword its release declares), and "module" (any other
`nn.Module`: each argument is used only when its forward names it).

The cache follows transformers' convention: `forward(..., past_key_values=None, use_cache=None)` returns
the cache only when `use_cache` is true, and hand-written models often default it to False. So a call that
wants a cache back asks for it, as transformers' `generate` does, and a call that does not declines it.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class ForwardSignature:
    """How to call one model's forward: which optional arguments it takes and how its cache is named."""

    kind: str  # "workbench", "hf" or "module"
    supports_mask: bool  # takes attention_mask (B, L+T), 1 = token
    supports_positions: bool  # takes position_ids (B, T)
    cache_style: str | None  # "workbench" (cache= a KVCache), "hf" (a transformers Cache or tuples), None: no cache
    cache_kwarg: str  # the keyword the cache goes in: "cache" on transformers releases that renamed it
    declares_use_cache: bool  # names `use_cache` (every transformers model does)
    takes_kwargs: bool  # has **kwargs, which transformers' generate hands `use_cache=True` to
    takes_targets: bool  # nanoGPT's `targets`: such a forward may keep only the last position's logits without them

    @classmethod
    def read(cls, model: nn.Module) -> ForwardSignature:
        kind = _kind(model)
        params = _forward_params(model)
        hf = kind == "hf"
        if kind == "workbench":
            cache_style: str | None = "workbench"
        elif hf or "past_key_values" in params:
            cache_style = "hf"
        else:
            cache_style = None
        return cls(
            kind=kind,
            supports_mask=hf or kind == "workbench" or "attention_mask" in params,
            supports_positions=hf or kind == "workbench" or "position_ids" in params,
            cache_style=cache_style,
            # transformers renamed `past_key_values` to `cache` (the old name warns, then goes away): follow
            # the spelling this forward declares
            cache_kwarg="cache" if hf and "cache" in params else "past_key_values",
            declares_use_cache=hf or "use_cache" in params,
            takes_kwargs=any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()),
            takes_targets=not hf and "targets" in params,
        )

    def use_cache(self, wanted: bool) -> dict[str, bool]:
        """The `use_cache` keyword for a call that wants the model's cache back (True) or not (False).

        A forward that declares it gets it either way. One that takes **kwargs beside a cache argument
        gets use_cache=True when a cache is wanted, as transformers' generate passes it; it is not told
        False, which a forward with a default of no cache does not need.
        """
        if self.declares_use_cache or (wanted and self.takes_kwargs and self.cache_style == "hf"):
            return {"use_cache": wanted}
        return {}


def _kind(model: nn.Module) -> str:
    from ..model.transformer import TransformerLM

    if isinstance(model, TransformerLM):
        return "workbench"
    try:
        from transformers import PreTrainedModel
    except ImportError:  # transformers is optional
        return "module"
    return "hf" if isinstance(model, PreTrainedModel) else "module"


def _forward_params(model: nn.Module) -> dict[str, inspect.Parameter]:
    try:
        return dict(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return {}
