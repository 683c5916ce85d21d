"""Uniform access to the models the doctor examines.

Three kinds are driven the same way through `ModelAdapter`:
- "workbench": `TransformerLM` (a `KVCache` from `new_cache`, `cache=` in forward);
- "hf": transformers causal LMs (`cache=` on releases that renamed it, `past_key_values=` before; `use_cache`,
  `position_ids`, `.logits`);
- "module": any `nn.Module` whose `forward(input_ids, attention_mask=None, ...)` returns logits
  (B, T, V) or an object with `.logits`. Position ids and an HF-style cache are used when its forward
  signature names `position_ids` / `past_key_values`; the cache may be a transformers `Cache` or a
  legacy tuple of (k, v) per layer, returned as `.past_key_values`.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import fields, is_dataclass
from typing import Any

import torch
from torch import nn

from ..errors import DoctorError
from ..model.placement import module_device, module_dtype

_NORM_NAME = re.compile(r"norm", re.IGNORECASE)


def config_value(config: Any, *names: str) -> Any:
    """The first of `names` present on a config object (dataclass, HF config or dict), else None."""
    if config is None:
        return None
    for name in names:
        value = config.get(name) if isinstance(config, dict) else getattr(config, name, None)
        if value is not None:
            return value
    return None


def extract_logits(out: Any) -> torch.Tensor:
    """Logits (B, T, V) from a tensor, an object with `.logits`, or a dict with "logits"."""
    logits = out if isinstance(out, torch.Tensor) else getattr(out, "logits", None)
    if logits is None and isinstance(out, dict):
        logits = out.get("logits")
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(out).__name__
        raise DoctorError(
            f"the model's forward returned {got}; diagnose needs logits shaped (B, T, V), as a tensor or "
            "as `.logits` of the output. Wrap the model in a module whose forward returns them."
        )
    return logits


def is_norm(module: nn.Module) -> bool:
    """Norm layers by type (LayerNorm, RMSNorm, GroupNorm) or by class name (LlamaRMSNorm, MyLayerNorm)."""
    if isinstance(module, (nn.LayerNorm, nn.GroupNorm, getattr(nn, "RMSNorm", nn.LayerNorm))):
        return True
    return bool(_NORM_NAME.search(type(module).__name__)) and not list(module.children())


class NonFiniteLogits(DoctorError):
    """A probe's logits hold NaN/Inf, so comparing them says nothing; the `nonfinite` check reports why."""


class ModelAdapter:
    """Calls any supported causal LM the same way: `logits(...)` and `cached(...)`, all on `device`."""

    def __init__(self, model: nn.Module, tokenizer: Any = None) -> None:
        if not isinstance(model, nn.Module):
            raise DoctorError(f"diagnose needs a torch nn.Module, got {type(model).__name__}.")
        self.model, self.tokenizer = model, tokenizer
        self.config = getattr(model, "config", None)
        self.kind = _kind(model)
        params = _forward_params(model)
        hf = self.kind == "hf"
        self.supports_mask = hf or self.kind == "workbench" or "attention_mask" in params
        self.supports_positions = hf or self.kind == "workbench" or "position_ids" in params
        if self.kind == "workbench":
            self.cache_style: str | None = "workbench"
        elif hf or "past_key_values" in params:
            self.cache_style = "hf"
        else:
            self.cache_style = None
        # transformers renamed `past_key_values` to `cache` (the old name warns, then goes away): follow the
        # spelling this forward declares.
        self.cache_kwarg = "cache" if hf and "cache" in params else "past_key_values"
        self.device, self.dtype = module_device(model), module_dtype(model)
        self._vocab: int | None = None

    # --- sizes ----------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Width V of the logits (measured once with a 2-token forward)."""
        if self._vocab is None:
            ids = torch.zeros(1, 2, dtype=torch.long, device=self.device)
            self._vocab = int(self.logits(ids, allow_nonfinite=True).shape[-1])
        return self._vocab

    @property
    def max_len(self) -> int | None:
        """Longest sequence the model claims to accept (None when it says nothing)."""
        value = config_value(self.config, "max_seq_len", "max_position_embeddings", "n_positions",
                             "block_size", "n_ctx")
        return int(value) if isinstance(value, int) else None

    @property
    def pad_id(self) -> int:
        pad = getattr(self.tokenizer, "pad_token_id", None)
        if pad is None:
            pad = getattr(self.tokenizer, "eos_token_id", None)
        return int(pad) if isinstance(pad, int) and 0 <= pad < self.vocab_size else 0

    def probe_ids(self, generator: torch.Generator, batch: int, length: int) -> torch.Tensor:
        """Random token ids (B, T) away from the low ids, where special tokens usually sit."""
        V = self.vocab_size
        low = min(32, V // 4)
        return torch.randint(low, V, (batch, length), generator=generator).to(self.device)

    def tolerance(self, reference: torch.Tensor) -> float:
        """Absolute tolerance for comparing logits computed two ways, scaled by their magnitude."""
        rel = {torch.float16: 1e-2, torch.bfloat16: 3e-2}.get(reference.dtype, 1e-4)
        return rel * max(1.0, float(reference.detach().abs().max()))

    # --- calling --------------------------------------------------------------------------------
    def logits(self, ids: torch.Tensor, mask: torch.Tensor | None = None,
               positions: torch.Tensor | None = None, *, allow_nonfinite: bool = False) -> torch.Tensor:
        """Logits (B, T, V) without a cache. mask: (B, T) 1 = token; positions: (B, T).

        Raises NonFiniteLogits when they hold NaN/Inf, unless allow_nonfinite (the checks that look for them).
        """
        kwargs = self._kwargs(mask, positions)
        if self.kind == "hf":
            kwargs["use_cache"] = False
        return self._finite(extract_logits(self.model(ids, **kwargs)), allow_nonfinite)

    @staticmethod
    def _finite(logits: torch.Tensor, allow: bool) -> torch.Tensor:
        if not allow and not bool(torch.isfinite(logits).all()):
            raise NonFiniteLogits("the logits of this probe contain NaN/Inf, so they cannot be compared; "
                                  "see the `nonfinite` check for the module where they start.")
        return logits

    def cached(self, ids: torch.Tensor, state: Any = None, mask: torch.Tensor | None = None,
               positions: torch.Tensor | None = None, max_len: int = 64) -> tuple[torch.Tensor, Any]:
        """One incremental call: logits (B, T, V) for the new ids, and the cache to pass next time.

        mask covers every position so far, cached and new (B, L+T). state=None starts a new cache.
        """
        if self.cache_style is None:
            raise DoctorError("this model has no KV cache the doctor can drive.")
        kwargs = self._kwargs(mask, positions)
        if self.cache_style == "workbench":
            if state is None:
                from ..model.transformer import TransformerLM

                assert isinstance(self.model, TransformerLM)  # what cache_style "workbench" means
                state = self.model.new_cache(ids.shape[0], max_len)
            return self._finite(extract_logits(self.model(ids, cache=state, **kwargs)), False), state
        kwargs[self.cache_kwarg] = state
        out = self.model(ids, use_cache=True, **kwargs)
        past = returned_cache(out)
        if past is None:
            raise DoctorError("forward(use_cache=True) returned no cache (`.cache` or `.past_key_values`).")
        return self._finite(extract_logits(out), False), past

    def _kwargs(self, mask: torch.Tensor | None, positions: torch.Tensor | None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        if mask is not None:
            if not self.supports_mask:
                raise DoctorError("this model's forward takes no attention_mask.")
            kwargs["attention_mask"] = mask.to(self.device)
        if positions is not None:
            if not self.supports_positions:
                raise DoctorError("this model's forward takes no position_ids.")
            kwargs["position_ids"] = positions.to(self.device)
        return kwargs

    # --- structure ------------------------------------------------------------------------------
    def blocks(self) -> tuple[str, list[tuple[str, nn.Module]]] | None:
        """The transformer blocks with their names: the longest `nn.ModuleList` whose entries hold parameters
        (same-class lists win ties; a list may mix classes, as a model with one odd block does)."""
        best, best_key = None, (0, False)
        for name, m in self.model.named_modules():
            if isinstance(m, nn.ModuleList) and len(m) > 0 and all(any(True for _ in c.parameters()) for c in m):
                key = (len(m), len({type(c) for c in m}) == 1)
                if key > best_key:
                    best, best_key = (name, [(f"{name}.{i}", c) for i, c in enumerate(m)]), key
        return best

    def input_embedding(self) -> nn.Module | None:
        getter = getattr(self.model, "get_input_embeddings", None)
        if callable(getter):
            try:
                return getter()
            except (NotImplementedError, AttributeError):
                pass
        embeds = [m for m in self.model.modules() if isinstance(m, nn.Embedding)]
        return max(embeds, key=lambda m: m.num_embeddings) if embeds else None

    def output_head(self) -> nn.Module | None:
        getter = getattr(self.model, "get_output_embeddings", None)
        if callable(getter):
            try:
                head = getter()
                if head is not None:
                    return head
            except (NotImplementedError, AttributeError):
                pass
        V = self.vocab_size
        heads = [m for m in self.model.modules() if isinstance(m, nn.Linear) and m.out_features == V]
        return heads[-1] if heads else None


def _kind(model: nn.Module) -> str:
    from ..model.transformer import TransformerLM

    if isinstance(model, TransformerLM):
        return "workbench"
    try:
        from transformers import PreTrainedModel
    except ImportError:  # transformers is optional
        return "module"
    return "hf" if isinstance(model, PreTrainedModel) else "module"


def _forward_params(model: nn.Module) -> set[str]:
    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return set()


def returned_cache(out: Any) -> Any:
    """The cache a forward returned: its `cache` field (transformers after the rename), else `past_key_values`.

    Only declared fields are read, so the deprecated alias of a renamed output is never touched.
    """
    if is_dataclass(out) and not isinstance(out, type):
        names = {f.name for f in fields(out)}
        for name in ("cache", "past_key_values"):
            if name in names:
                return getattr(out, name)
    if isinstance(out, dict):
        for name in ("cache", "past_key_values"):
            if dict.__contains__(out, name):
                return dict.__getitem__(out, name)
    return None


def cache_bytes(state: Any, _depth: int = 0) -> int:
    """Bytes of the tensors a KV cache holds: a workbench KVCache, a transformers Cache or nested tuples."""
    used = getattr(state, "bytes_used", None)
    if isinstance(used, int):
        return used
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if _depth > 4 or state is None:
        return 0
    if isinstance(state, (tuple, list)):
        return sum(cache_bytes(s, _depth + 1) for s in state)
    layers = getattr(state, "layers", None)
    if isinstance(layers, (list, tuple)):
        return sum(cache_bytes(getattr(ly, "keys", None), _depth + 1) + cache_bytes(getattr(ly, "values", None),
                                                                                     _depth + 1) for ly in layers)
    total = 0
    for attr in ("key_cache", "value_cache"):
        total += cache_bytes(getattr(state, attr, None), _depth + 1)
    return total


def cache_tensors(state: Any, _depth: int = 0) -> list[torch.Tensor]:
    """Every tensor a cache object holds (for weak references that show whether it was freed)."""
    if isinstance(state, torch.Tensor):
        return [state]
    if _depth > 4 or state is None:
        return []
    if isinstance(state, (tuple, list)):
        return [t for s in state for t in cache_tensors(s, _depth + 1)]
    out: list[torch.Tensor] = []
    for attr in ("keys", "values", "key_cache", "value_cache", "layers"):
        out += cache_tensors(getattr(state, attr, None), _depth + 1)
    return out
