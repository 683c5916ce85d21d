"""How to call a causal LM: the one answer that generation, the session, the doctor and the widgets share.

Three kinds are driven the same way through `ModelAdapter` (what each forward takes: `signature`):
- "workbench": `TransformerLM` (a `KVCache` from `new_cache`, `cache=` in forward);
- "hf": transformers causal LMs (`cache=` on releases that renamed it, `past_key_values=` before; `use_cache`,
  `position_ids`, `.logits`);
- "module": any `nn.Module` whose `forward(input_ids, attention_mask=None, ...)` returns logits
  (B, T, V) or an object with `.logits`. Position ids and an HF-style cache are used when its forward
  signature names `position_ids` / `past_key_values`; the cache may be a transformers `Cache` or a
  legacy tuple of (k, v) per layer, returned as `.past_key_values`, a dict entry or second in a tuple.
  A module without a cache still generates: each step recomputes the whole sequence.
Every call that wants the model's cache back passes `use_cache=True` and every other one `use_cache=False`
(to a forward that takes it), as transformers' generate does: many forwards return their cache only then.

`logits` and `cached` are the low-level calls (explicit positions and masks, the model's own cache object);
`new_cache` and `step` are what decoding uses: the cache they share keeps the mask over every position
so far, so positions continue per row after left padding, whatever the model's cache is.
"""

from __future__ import annotations

import re
import warnings
import weakref
from typing import Any

import torch
from torch import nn

from ..errors import InputError, ModelContractError
from ..model.placement import module_device, module_dtype
from .caches import ForeignCache, new_hf_cache, returned_cache
from .intercept import Client, ModuleCall, intercept
from .signature import ForwardSignature

_NORM_NAME = re.compile(r"norm", re.IGNORECASE)
_STATIC_OK: weakref.WeakKeyDictionary[nn.Module, bool] = weakref.WeakKeyDictionary()  # see _static_cache_faithful


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
    """Logits (B, T, V) from a tensor, an object with `.logits`, a dict with "logits", or a tuple or list that
    starts with them (nanoGPT's `(logits, loss)`, transformers' `return_dict=False` without labels)."""
    logits = out if isinstance(out, torch.Tensor) else getattr(out, "logits", None)
    if logits is None and isinstance(out, dict):
        logits = out.get("logits")
    if logits is None and isinstance(out, (tuple, list)) and out:
        logits = out[0]
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(out).__name__
        raise ModelContractError(
            f"the model's forward returned {got}; a causal LM must return logits shaped (B, T, V), as a tensor, "
            "as `.logits` of the output or first in a tuple. Wrap the model in a module whose forward returns them."
        )
    return logits


def is_norm(module: nn.Module) -> bool:
    """Norm layers by type (LayerNorm, RMSNorm, GroupNorm) or by class name (LlamaRMSNorm, MyLayerNorm)."""
    if isinstance(module, (nn.LayerNorm, nn.GroupNorm, getattr(nn, "RMSNorm", nn.LayerNorm))):
        return True
    return bool(_NORM_NAME.search(type(module).__name__)) and not list(module.children())


class NonFiniteLogits(ModelContractError):
    """A probe's logits hold NaN/Inf, so comparing them says nothing; the `nonfinite` check reports why."""


class _FedIds(Client):
    """An observer of embedding lookups: the embeddings whose first argument is `ids` itself."""

    def __init__(self, ids: torch.Tensor, names: list[str]) -> None:
        self.ids, self.modules = ids, tuple(names)
        self.fed: list[nn.Embedding] = []

    def module_input(self, call: ModuleCall) -> None:
        x = call.args[0] if call.args else None
        if isinstance(call.module, nn.Embedding) and isinstance(x, torch.Tensor) and x.shape == self.ids.shape \
                and torch.equal(x, self.ids):
            self.fed.append(call.module)


class ModelAdapter:
    """Calls any supported causal LM the same way: `logits(...)` and `cached(...)`, all on `device`."""

    def __init__(self, model: nn.Module, tokenizer: Any = None) -> None:
        if not isinstance(model, nn.Module):
            raise ModelContractError(f"a causal LM must be a torch nn.Module, got {type(model).__name__}.")
        self.model, self.tokenizer = model, tokenizer
        self.config = getattr(model, "config", None)
        self.signature = sig = ForwardSignature.read(model)
        self.kind, self.cache_style, self.cache_kwarg = sig.kind, sig.cache_style, sig.cache_kwarg
        self.supports_mask, self.supports_positions = sig.supports_mask, sig.supports_positions
        self._targets_for_logits = False  # see _all_logits
        self.device, self.dtype = module_device(model), module_dtype(model)
        self._vocab: int | None = None
        self._embedding: nn.Module | None = None
        self._final_norm: tuple[str, nn.Module] | None = None
        self._final_norm_sought = False

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
        return int(value) if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def embedding_rows(self) -> int | None:
        """Rows of the input embedding: the ids it can look up (None when there is no nn.Embedding)."""
        emb = self.input_embedding()
        return int(emb.num_embeddings) if isinstance(emb, nn.Embedding) else None

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
        kwargs = {**self._kwargs(mask, positions), **self.signature.use_cache(False)}
        return self._finite(self._all_logits(ids, kwargs), allow_nonfinite)

    def _all_logits(self, ids: torch.Tensor, kwargs: dict[str, Any], strict: bool = True) -> torch.Tensor:
        """Logits (B, T, V) for every position of ids. A forward that keeps only the last position's unless it
        computes a loss (nanoGPT's, when `targets` is None) is given the ids as targets, from then on. Not
        strict: what the forward gives when it cannot give more (decoding needs the last position only)."""
        if self._targets_for_logits:
            kwargs = {**kwargs, "targets": ids}
        logits = extract_logits(self.model(ids, **kwargs))
        if logits.shape[1] == 1 < ids.shape[1] and self.signature.takes_targets and not self._targets_for_logits:
            self._targets_for_logits = True
            logits = extract_logits(self.model(ids, **kwargs, targets=ids))
        if strict and logits.shape[:2] != ids.shape:
            raise ModelContractError(
                f"the model returned logits shaped {tuple(logits.shape)} for ids shaped {tuple(ids.shape)}: every "
                "position needs its logits (nanoGPT's forward keeps only the last one when `targets` is None). "
                "Make forward return logits for all positions, e.g. `self.lm_head(x)` instead of `x[:, [-1], :]`.")
        return logits

    @staticmethod
    def _finite(logits: torch.Tensor, allow: bool) -> torch.Tensor:
        if not allow and not bool(torch.isfinite(logits).all()):
            raise NonFiniteLogits("the logits of this probe contain NaN/Inf, so they cannot be compared; "
                                  "see the `nonfinite` check for the module where they start.")
        return logits

    def cached(self, ids: torch.Tensor, state: Any = None, mask: torch.Tensor | None = None,
               positions: torch.Tensor | None = None, max_len: int = 64, *, allow_nonfinite: bool = False
               ) -> tuple[torch.Tensor, Any]:
        """One incremental call: logits (B, T, V) for the new ids, and the cache to pass next time.

        mask covers every position so far, cached and new (B, L+T). state=None starts a new cache.
        allow_nonfinite: as in `logits`.
        """
        if self.cache_style is None:
            raise ModelContractError("this model has no KV cache the doctor can drive.")
        kwargs = self._kwargs(mask, positions)
        if self.cache_style == "workbench":
            if state is None:
                from ..model.transformer import TransformerLM

                assert isinstance(self.model, TransformerLM)  # what cache_style "workbench" means
                state = self.model.new_cache(ids.shape[0], max_len)
            return self._finite(extract_logits(self.model(ids, cache=state, **kwargs)), allow_nonfinite), state
        logits, past = self._call_cached(ids, state, kwargs)
        return self._finite(logits, allow_nonfinite), past

    def _call_cached(self, ids: torch.Tensor, state: Any, kwargs: dict[str, Any]) -> tuple[torch.Tensor, Any]:
        asked = self.signature.use_cache(True)
        out = self.model(ids, **kwargs, **{self.cache_kwarg: state}, **asked)
        past = returned_cache(out)
        if past is None:
            how = "when called with use_cache=True" if asked else "(its forward takes no `use_cache` to ask with)"
            raise ModelContractError(
                f"the model's forward returned no cache {how}, though it takes `{self.cache_kwarg}`; return the "
                "cache it builds (as `.past_key_values` of the output, a \"past_key_values\" entry of a dict, or "
                "second in a tuple after the logits) whenever use_cache is true, or drop the argument.")
        return extract_logits(out), past

    # --- decoding -------------------------------------------------------------------------------
    def new_cache(self, batch_size: int, max_len: int, mode: str = "static") -> Any:
        """An empty cache for `step`: a `KVCache` for a workbench model, else a `ForeignCache` holding the
        model's own kind (a transformers `StaticCache` for mode "static", a `DynamicCache` for "growing";
        a module's own tuples; or none, and every step recomputes)."""
        if self.kind == "workbench":
            from ..model.transformer import TransformerLM

            assert isinstance(self.model, TransformerLM)  # what kind "workbench" means
            return self.model.new_cache(batch_size, max_len, mode=mode)
        if self.kind == "hf":
            state = new_hf_cache(self.model, batch_size, max_len, mode)
            return ForeignCache("hf", batch_size, max_len, state, self.device, static=mode == "static")
        return ForeignCache("tuple" if self.cache_style else "none", batch_size, max_len, None, self.device)

    def step(self, ids: torch.Tensor, cache: Any, attention_mask: torch.Tensor | None = None, *,
             validate: bool = False) -> torch.Tensor:
        """Feed ids (B, T) after what `cache` holds; returns their logits (B, T, V) and grows the cache.

        attention_mask covers the new ids (B, T) or every position (B, L+T), 1 = token; None = all tokens.
        validate checks the ids against the embedding first (prompts; decode steps feed the model's own ids).
        Positions continue per row from the mask, as transformers' own generate counts them.
        """
        if self.kind == "workbench":
            return self.model(ids, attention_mask=attention_mask, cache=cache, validate=validate)
        if validate:
            self.check_ids(ids)
        mask, positions = cache.extend(ids, attention_mask)  # (B, L+T) each
        padded = bool(cache.padded)
        if padded and not self.supports_mask:
            raise ModelContractError("this batch is padded, but the model's forward takes no attention_mask; "
                                     "generate one prompt at a time, or add the argument.")
        kwargs: dict[str, Any] = {}
        if self.supports_mask:
            kwargs["attention_mask"] = mask
        T = ids.shape[1]
        if cache.style == "none":
            if self.supports_positions:
                kwargs["position_ids"] = positions
            kwargs.update(self.signature.use_cache(False))
            everything = torch.cat((cache.ids, ids), dim=1)  # (B, L+T): no cache, recompute all
            logits = self._all_logits(everything, kwargs, strict=False)[:, -T:]
            cache.commit(ids, mask, None)
            return logits
        if self.supports_positions:
            kwargs["position_ids"] = positions[:, -T:]
        prefill_static = cache.style == "hf" and cache.static and cache.length == 0
        try:
            if prefill_static and not self._static_cache_faithful(ids):
                raise RuntimeError("the logits through a StaticCache differ from a forward without a cache")
            logits, state = self._call_cached(ids, cache.state, kwargs)
        except RuntimeError:
            if not prefill_static:
                raise
            # some families cannot decode into a StaticCache: BLOOM's ALiBi sizes its bias by the cache (an
            # error), GPT-Neo builds its causal mask from the cache's capacity (wrong logits, no error)
            warnings.warn(f"{type(self.model).__name__} cannot decode into a transformers StaticCache; "
                          "cache_mode='static' uses a DynamicCache for it.", stacklevel=3)
            cache.make_dynamic(new_hf_cache(self.model, cache.batch_size, cache.max_len, "growing"))
            logits, state = self._call_cached(ids, cache.state, kwargs)
        cache.commit(ids, mask, state)
        return logits

    def _static_cache_faithful(self, ids: torch.Tensor) -> bool:
        """Whether a transformers StaticCache gives this model the logits a forward without a cache gives: 4
        tokens of the prompt into a cache of 8, once per model (a family that sizes its mask or bias by the
        cache's capacity fails it). Raises RuntimeError for a model that refuses such a cache outright."""
        verdict = _STATIC_OK.get(self.model)
        if verdict is None and not self.model.training:  # in train mode, dropout alone would tell them apart
            probe = ids[:1, : min(4, ids.shape[1])]
            kwargs: dict[str, Any] = {}
            if self.supports_positions:
                kwargs["position_ids"] = torch.arange(probe.shape[1], device=probe.device)[None]
            with torch.no_grad():
                cached, _ = self._call_cached(probe, new_hf_cache(self.model, 1, 8, "static"), kwargs)
                plain = extract_logits(self.model(probe, **kwargs, **self.signature.use_cache(False)))
            gap = float((cached.float() - plain.float()).abs().max())
            verdict = _STATIC_OK[self.model] = gap <= self.tolerance(plain)
        return verdict is not False

    def check_ids(self, ids: torch.Tensor) -> None:
        """Refuse ids the embedding cannot look up (a raw IndexError, or a device assert on CUDA)."""
        if ids.dtype not in (torch.long, torch.int32, torch.int64):
            raise InputError(f"input_ids must hold integer token ids, got dtype {ids.dtype}.")
        rows = self.embedding_rows
        if ids.numel() and rows is not None:
            low, high = int(ids.min()), int(ids.max())
            if low < 0 or high >= rows:
                raise InputError(f"token id {low if low < 0 else high} is outside the model's vocabulary "
                                 f"[0, {rows}); check the tokenizer matches the model.")

    def _kwargs(self, mask: torch.Tensor | None, positions: torch.Tensor | None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        if mask is not None:
            if not self.supports_mask:
                raise ModelContractError("this model's forward takes no attention_mask.")
            kwargs["attention_mask"] = mask.to(self.device)
        if positions is not None:
            if not self.supports_positions:
                raise ModelContractError("this model's forward takes no position_ids.")
            kwargs["position_ids"] = positions.to(self.device)
        return kwargs

    # --- structure ------------------------------------------------------------------------------
    def blocks(self) -> tuple[str, list[tuple[str, nn.Module]]] | None:
        """The transformer blocks with their names: the `nn.ModuleList` or `nn.Sequential` whose entries all hold
        parameters and that holds the most parameter elements, then the longest, then one of a single class (a
        list may mix classes, as a model with one odd block does). The root is never one.

        Counting parameters, not entries, keeps lists nested inside blocks out: per-head norms (StableLM's
        `q_layernorm.norms`, as many as the heads) or a layer's experts can outnumber the blocks."""
        best, best_key = None, (0, 0, False)
        for name, m in self.model.named_modules():
            if name and isinstance(m, (nn.ModuleList, nn.Sequential)) and len(m) > 0 and all(
                    any(True for _ in c.parameters()) for c in m):
                key = (sum(p.numel() for p in m.parameters()), len(m), len({type(c) for c in m}) == 1)
                if key > best_key:
                    best, best_key = (name, [(f"{name}.{i}", c) for i, c in enumerate(m)]), key
        return best

    def input_embedding(self) -> nn.Module | None:
        """The token embedding: the model's `get_input_embeddings()`, else the one `nn.Embedding` that looks up
        the input ids in a forward (found by behaviour, so a learned position table `wpe`, larger than a small
        vocabulary or not, is never taken for it)."""
        getter = getattr(self.model, "get_input_embeddings", None)
        if callable(getter):
            try:
                return getter()
            except (NotImplementedError, AttributeError):
                pass
        embeds = [m for m in self.model.modules() if isinstance(m, nn.Embedding)]
        if len(embeds) <= 1:
            return embeds[0] if embeds else None
        if self._embedding is None:
            self._embedding = self._embedding_fed_the_ids(embeds) or max(embeds, key=lambda m: m.num_embeddings)
        return self._embedding

    def _embedding_fed_the_ids(self, embeds: list[nn.Embedding]) -> nn.Embedding | None:
        """The embedding whose lookup receives the input ids themselves in one forward (ids (1, 3) = 2, 0, 1:
        never position ids, which count up)."""
        ids = torch.tensor([[2, 0, 1]], device=self.device) % max(2, min(e.num_embeddings for e in embeds))
        seen = _FedIds(ids, [n for n, e in self.model.named_modules() if isinstance(e, nn.Embedding)])
        try:
            with torch.no_grad(), intercept(self.model, seen):
                self.model(ids, **self.signature.use_cache(False))
        except Exception:  # noqa: BLE001 - a model that cannot take this probe: fall back to the largest table
            return None
        fed = seen.fed
        return fed[0] if len(set(map(id, fed))) == 1 else None

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

    def final_norm(self) -> tuple[str, nn.Module] | None:
        """The norm applied after the last block and before the head, with its name (`model.norm`, `ln_f`,
        `transformer.ln_f`, `gpt_neox.final_layer_norm`), or None when there is none or it cannot be found.

        Found by structure, then behaviour (`FinalNormProbe`): among the norms (`is_norm`) outside the blocks
        and the head, the one whose output the head reads in a 3-token forward (an identity hook between
        them, as the workbench's `hook_final`, hands the head the same tensor); where no head module is
        called (a head written as `x @ wte.weight.t()`), the one norm that runs after the last block.
        Names are never matched, so a renamed `ln_f` is found as `model.norm` is."""
        if not self._final_norm_sought:
            self._final_norm, self._final_norm_sought = FinalNormProbe(self).find(), True
        return self._final_norm


class FinalNormProbe:
    """Finds `ModelAdapter.final_norm` by watching one 3-token forward through the interception layer."""

    def __init__(self, adapter: ModelAdapter) -> None:
        self.adapter = adapter
        names = {id(m): n for n, m in adapter.model.named_modules()}
        found = adapter.blocks()
        blocks = [name for name, _ in found[1]] if found else []
        head = adapter.output_head()
        self.last_block = blocks[-1] if blocks else None
        self.head = names.get(id(head)) if head is not None else None
        inside = tuple(f"{n}." for n in [*blocks, *([self.head] if self.head else [])])
        self.norms = [n for n, m in adapter.model.named_modules() if n and is_norm(m) and not n.startswith(inside)]

    def find(self) -> tuple[str, nn.Module] | None:
        if not self.norms:
            return None
        watch = _RunOrder([*self.norms, *(n for n in (self.last_block, self.head) if n)])
        rows = self.adapter.embedding_rows or 3
        ids = torch.tensor([[2, 0, 1]], device=self.adapter.device) % rows  # (1, 3)
        try:
            with torch.no_grad(), intercept(self.adapter.model, watch):
                self.adapter.logits(ids, allow_nonfinite=True)
        except Exception:  # noqa: BLE001 - a model that cannot take this probe has no norm we can name
            return None
        name = self._feeding_the_head(watch) if self.head in watch.inputs else self._after_last_block(watch)
        return (name, self.adapter.model.get_submodule(name)) if name else None

    def _feeding_the_head(self, watch: _RunOrder) -> str | None:
        """The norm whose output is the head's input (by value: an identity hook may sit between them)."""
        fed = watch.inputs[self.head or ""]
        same = [n for n in self.norms if _same_tensor(watch.outputs.get(n), fed)]
        return same[-1] if same else None

    def _after_last_block(self, watch: _RunOrder) -> str | None:
        """The one norm that ran after the last block (a head that is no module: `x @ wte.weight.t()`)."""
        last = watch.order.get(self.last_block or "", -1)
        after = [n for n in self.norms if watch.order.get(n, -1) > last]
        return after[0] if len(after) == 1 else None


def _same_tensor(a: Any, b: Any) -> bool:
    return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
            and (a is b or torch.equal(a, b)))


class _RunOrder(Client):
    """Observes module calls: when each module last finished (a counter), its first input and its output."""

    def __init__(self, modules: list[str]) -> None:
        self.modules = modules
        self.order: dict[str, int] = {}
        self.inputs: dict[str, Any] = {}
        self.outputs: dict[str, Any] = {}
        self._count = 0

    def module_input(self, call: ModuleCall) -> None:
        if call.args:
            self.inputs[call.name] = call.args[0]

    def module_output(self, call: ModuleCall) -> None:
        self._count += 1
        self.order[call.name] = self._count
        self.outputs[call.name] = call.output
