"""Generation checks: KV-cache memory growth and release, beam-search sanity.

Every model with a KV cache (a workbench `KVCache`, a transformers `Cache`, a legacy tuple) is driven
through `workbench.generation`, which calls it through `workbench.lm.ModelAdapter`, with fast=False
and a growing cache, so the model's own cached forward is what gets diagnosed; a model without a
cache is not applicable.
"""

from __future__ import annotations

import gc
import weakref
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ..errors import DoctorError
from ..lm import cache_bytes, cache_tensors, returned_cache
from ..lm.intercept import Client, ModuleCall, intercept
from .registry import Context, Precondition, Result, check, na
from .report import Within, format_value

if TYPE_CHECKING:
    from ..generation import GenerationRequest

NEW_TOKENS = 6


def _require_cache(ctx: Context) -> None:
    if ctx.adapter.cache_style is None:
        raise DoctorError("the model keeps no KV cache (its forward takes no `past_key_values` or `cache`), so "
                          "there is no cache to check.")


def _request(**settings: Any) -> GenerationRequest:
    """NEW_TOKENS tokens, no EOS, pad 0, with `settings` on top (a GenerationRequest)."""
    from ..generation import GenerationRequest

    return GenerationRequest(max_new_tokens=NEW_TOKENS, eos_token_id=None, pad_token_id=0, **settings)


def _generate(ctx: Context, ids: torch.Tensor, request: GenerationRequest) -> Any:
    from ..generation import generate

    try:
        return generate(ctx.model, ids, request, fast=False, cache_mode="growing")
    except (RuntimeError, IndexError, ValueError) as err:  # a cache that breaks decoding: kv_cache says where
        raise Precondition(f"cached decoding itself raised ({type(err).__name__}: {err})"[:240] + "; the "
                           "`kv_cache` check judges the cache.") from err


class CacheSizes(Client):
    """An observer of the model's forwards: the bytes of the cache each one returns (or was passed), and weak
    references to the last cache's objects and tensors."""

    modules = ("",)

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.refs: list[weakref.ref] = []

    def module_output(self, call: ModuleCall) -> None:
        returned = returned_cache(call.output)  # a transformers Cache or a legacy tuple; a KVCache is passed in
        state = returned if returned is not None else call.kwargs.get("cache")
        if state is not None:
            self.sizes.append(cache_bytes(state))
            self.refs[:] = [weakref.ref(t) for t in cache_tensors(state)]
            if not isinstance(state, tuple):
                self.refs.append(weakref.ref(state))


@check(
    "generation_memory",
    order=130,
    pitfall="The KV cache grows faster than one position per step (whole-sequence copies kept), or is "
    "still referenced after generate returns (stored on the model, in a global, in a closure), so "
    "memory leaks from call to call.",
    fix="Create the cache inside generate as a local, append exactly one position per step, and never "
    "store it on the model.",
)
def generation_memory(ctx: Context) -> Result:
    ctx.require_deterministic()
    _require_cache(ctx)
    ctx.need(5 + NEW_TOKENS)
    ids = ctx.ids(1, 5, salt=16)
    seen = CacheSizes()
    with intercept(ctx.model, seen):
        _generate(ctx, ids, _request())
    sizes, refs = seen.sizes, seen.refs
    gc.collect()
    alive = sum(r() is not None for r in refs)
    steps = [b - a for a, b in zip(sizes, sizes[1:])]
    evidence: dict[str, Any] = {"forwards": len(sizes), "bytes_after_prefill": sizes[0] if sizes else 0,
                                "bytes_at_end": sizes[-1] if sizes else 0,
                                "growth_per_step": steps[0] if steps else 0,
                                "alive_after_generate": alive, "tracked_objects": len(refs)}
    if not sizes:
        return na("generate ran but no cache was seen in the forward calls.", **evidence)
    if steps and len(set(steps)) > 1:
        return Result("fail", f"the cache grew unevenly per step ({steps} bytes): not one position per step.",
                      evidence)
    if alive:
        return Result("fail", f"{alive} of {len(refs)} cache objects/tensors are still alive after generate "
                      "returned: something keeps a reference to the cache.", evidence)
    growth = f"{steps[0]:,} B per step" if steps else "one step"
    return Result("pass", f"the cache grows linearly ({growth}) and is freed after generate.", evidence)


def _sequence_logprob(ctx: Context, seq: torch.Tensor, prompt_len: int, count: int) -> float:
    """Sum of log p(new token) for `count` new tokens of `seq` (T,), from one full forward without a cache."""
    with torch.no_grad():
        logits = ctx.adapter.logits(seq[None, : prompt_len + count])[0].float()  # (T, V)
    logp = F.log_softmax(logits[prompt_len - 1 : prompt_len + count - 1], dim=-1)  # (count, V)
    return float(logp.gather(1, seq[prompt_len : prompt_len + count, None]).sum())


@check(
    "beam_search",
    order=140,
    pitfall="Beam search is inconsistent: width 1 differs from greedy, or the cache rows are not reordered "
    "with the beams, so returned scores are not the sequences' length-normalised log-probabilities.",
    fix="Reorder every cache row with the surviving beams (index_select on the batch dim) and score "
    "sum(log p) / length ** alpha.",
)
def beam_search(ctx: Context) -> Result:
    ctx.require_deterministic()
    _require_cache(ctx)
    ctx.need(5 + NEW_TOKENS)
    ids = ctx.ids(1, 5, salt=17)
    P = ids.shape[1]
    ctx.adapter.logits(ids)  # NonFiniteLogits (n/a) when the logits are NaN/Inf: beams cannot be ranked then
    from ..generation.beam import beam_search as run_beams

    greedy = _generate(ctx, ids, _request()).sequences[0]
    with torch.no_grad():  # width 1 through the beam code itself (generate would take the greedy path)
        width1 = run_beams(ctx.adapter, ids, None, _request(num_beams=1), "growing", None).sequences[0]
    beams = _generate(ctx, ids, _request(num_beams=2, num_return_sequences=2))
    assert beams.scores is not None  # beam search scores every returned sequence
    seqs, scores, counts = beams.sequences, beams.scores.tolist(), beams.new_token_counts.tolist()
    alpha = 1.0
    same = bool(torch.equal(greedy.cpu(), width1.cpu()))
    recomputed = [_sequence_logprob(ctx, s, P, n) / n**alpha for s, n in zip(seqs, counts)]
    tol = 1e-3 * max(1.0, *(abs(s) for s in recomputed))
    gap = Within(max(abs(a - b) for a, b in zip(scores, recomputed)), tol)
    evidence = {"width1_equals_greedy": same, "beam_scores": scores, "recomputed_scores": recomputed,
                "max_score_gap": gap, "new_tokens": NEW_TOKENS}
    if not same:
        return Result("fail", "beam search with width 1 chose different tokens than greedy decoding.", evidence)
    if not gap <= tol:
        return Result("fail", f"beam scores differ from the recomputed length-normalised log-probs by {gap:.3g}.",
                      evidence)
    if scores != sorted(scores, reverse=True):
        return Result("fail", "returned beams are not sorted by score.", evidence)
    return Result("pass", f"width 1 equals greedy; width-2 scores match recomputed log-probs (gap "
                  f"{format_value(gap)}).",
                  evidence)
