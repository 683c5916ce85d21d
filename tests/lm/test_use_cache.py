"""Models that return their cache only when asked (transformers' `use_cache` convention): the adapter asks with
use_cache=True wherever it wants the cache back (prefill into a cache, cached steps, generation, the doctor's
probes) and declines with use_cache=False everywhere else, so the doctor's cache checks run on them, `generate`
decodes them with their cache, and a planted bug in their positions is found.

Hand-written models take `use_cache` three ways: declared with a default of False (MiniGPT), through **kwargs,
or declared and answered with a tuple `(logits, presents)`. HF models are built with `config.use_cache=False`
(transformers' own `return_dict=False` tuples cannot be tested here: its Llama and GPT-2 read
`.last_hidden_state` from the tuple their inner model then returns).
"""

from __future__ import annotations

from typing import Any

import hfzoo
import pytest
import torch
from bugzoo.minigpt import MiniConfig, MiniGPT
from bugzoo.zoo import CacheRestartsPositionsGPT
from torch import nn

from workbench.doctor import diagnose
from workbench.errors import ModelContractError
from workbench.generation import generate
from workbench.lm import ModelAdapter, extract_logits

CACHE_CHECKS = ["kv_cache", "generation_memory", "beam_search", "positions"]
PROMPT = torch.tensor([[40, 51, 62, 73, 84]])
NEW = 6


class KwargsAsked:
    """Takes `use_cache` through **kwargs, as many wrappers and newer transformers forwards do."""

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None,  # noqa: ANN001
                **kwargs):  # noqa: ANN003, ANN201
        return super().forward(input_ids, attention_mask, position_ids, past_key_values,  # type: ignore[misc]
                               kwargs.get("use_cache", False))


class TupleAnswered:
    """Declares use_cache=False and returns `(logits, presents)` when asked, the bare logits otherwise."""

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None,  # noqa: ANN001
                use_cache=False):  # noqa: ANN001, ANN201
        out = super().forward(input_ids, attention_mask, position_ids, past_key_values, use_cache)  # type: ignore[misc]
        return (out.logits, out.past_key_values) if use_cache else out.logits


class KwargsGPT(KwargsAsked, MiniGPT):
    pass


class TupleGPT(TupleAnswered, MiniGPT):
    pass


class KwargsRestartsGPT(KwargsAsked, CacheRestartsPositionsGPT):
    pass


class TupleRestartsGPT(TupleAnswered, CacheRestartsPositionsGPT):
    pass


STYLES = {  # forward style -> (clean model, the same with positions that restart inside the cache)
    "declared": (MiniGPT, CacheRestartsPositionsGPT),
    "kwargs": (KwargsGPT, KwargsRestartsGPT),
    "tuple": (TupleGPT, TupleRestartsGPT),
}
DECLINED = {"declared": False, "kwargs": "absent", "tuple": False}  # the use_cache a call without a cache passes


def handwritten(cls: type[nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return cls(MiniConfig(dropout=0.0)).eval()


def uncached_greedy(model: nn.Module, ids: torch.Tensor, n: int, **no_cache: Any) -> torch.Tensor:
    """Greedy decoding by recomputing the whole sequence at every step: the reference without any cache."""
    seq = ids
    with torch.no_grad():
        for _ in range(n):
            logits = extract_logits(model(seq, **no_cache))  # (1, T, V)
            seq = torch.cat((seq, logits[:, -1].argmax(-1, keepdim=True)), dim=1)
    return seq


def use_cache_seen(model: nn.Module, call: Any) -> list[Any]:
    """The `use_cache` keyword of every forward `call()` makes ("absent" where it is not passed)."""
    seen: list[Any] = []

    def record(_m: nn.Module, _args: tuple, kwargs: dict) -> None:
        seen.append(kwargs.get("use_cache", "absent"))

    handle = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        with torch.no_grad():
            call()
    finally:
        handle.remove()
    return seen


@pytest.mark.parametrize("style", STYLES)
def test_the_doctor_drives_the_cache_of_a_model_that_returns_it_only_when_asked(style):
    report = diagnose(handwritten(STYLES[style][0]), checks=CACHE_CHECKS, progress=False)
    assert report.statuses() == dict.fromkeys(CACHE_CHECKS, "pass"), [f.summary for f in report]
    assert report["kv_cache"].evidence["decode_steps"] == 4
    memory = report["generation_memory"].evidence
    assert memory["forwards"] == NEW and memory["growth_per_step"] > 0 and memory["alive_after_generate"] == 0


@pytest.mark.parametrize("style", STYLES)
def test_generate_decodes_with_the_cache_and_equals_uncached_greedy(style):
    model = handwritten(STYLES[style][0])
    seen = use_cache_seen(model, lambda: generate(model, PROMPT, max_new_tokens=NEW, cache_mode="growing"))
    # the vocabulary probe declines the cache; the prefill and every step ask for it (none recomputes the prompt)
    assert seen == [DECLINED[style]] + [True] * NEW
    ours = generate(model, PROMPT, max_new_tokens=NEW, cache_mode="growing")
    assert torch.equal(ours.sequences, uncached_greedy(model, PROMPT, NEW))


@pytest.mark.parametrize("style", STYLES)
def test_positions_that_restart_inside_the_cache_are_found(style):
    finding = diagnose(handwritten(STYLES[style][1]), checks=["positions"], progress=False)["positions"]
    assert finding.status == "fail", finding.summary
    assert "positions do not continue from the cache length" in finding.summary
    evidence = finding.evidence
    assert evidence["cached_decode_delta"] > evidence["tolerance"]
    assert 5 <= evidence["at_position"] < 8  # a cached step, after the 5-token prefill of the 8-token probe


@pytest.mark.parametrize("style", STYLES)
def test_the_adapter_asks_for_the_cache_only_when_it_wants_one(style):
    model = handwritten(STYLES[style][0])
    adapter = ModelAdapter(model)
    assert use_cache_seen(model, lambda: adapter.logits(PROMPT)) == [DECLINED[style]]
    assert use_cache_seen(model, lambda: adapter.cached(PROMPT)) == [True]
    logits, past = adapter.cached(PROMPT)
    assert len(past) == 2 and past[0][0].shape == (1, 4, 5, 8)  # (B, H, S, D) per layer
    assert torch.allclose(logits, adapter.logits(PROMPT), atol=1e-6)


class NeverReturnsCache(MiniGPT):
    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None,  # noqa: ANN001
                use_cache=False):  # noqa: ANN001, ANN201
        return super().forward(input_ids, attention_mask, position_ids, past_key_values, False).logits


def test_a_model_that_never_returns_its_cache_is_told_it_was_asked():
    with pytest.raises(ModelContractError) as err:
        ModelAdapter(handwritten(NeverReturnsCache)).cached(PROMPT)
    message = str(err.value)
    assert "when called with use_cache=True" in message and "`past_key_values`" in message
    assert "whenever use_cache is true, or drop the argument" in message


HF_CASES = ("llama", "gpt2")


@pytest.fixture(scope="module")
def hf_models() -> dict[str, nn.Module]:
    pytest.importorskip("transformers")
    return {family: hfzoo.build(family, use_cache=False) for family in HF_CASES}


@pytest.mark.parametrize("case", HF_CASES)
def test_hf_models_configured_without_a_cache_pass_the_cache_checks(hf_models, case):
    model = hf_models[case]
    assert model.config.use_cache is False
    report = diagnose(model, checks=CACHE_CHECKS, progress=False)
    assert report.statuses() == dict.fromkeys(CACHE_CHECKS, "pass"), [f.summary for f in report]
    assert report["generation_memory"].evidence["forwards"] == NEW


@pytest.mark.parametrize("cache_mode", ["static", "growing"])
@pytest.mark.parametrize("case", HF_CASES)
def test_hf_models_configured_without_a_cache_generate_with_one(hf_models, case, cache_mode):
    model = hf_models[case]
    run = lambda: generate(model, PROMPT, max_new_tokens=NEW, cache_mode=cache_mode, pad_token_id=0)  # noqa: E731
    seen = use_cache_seen(model, run)
    assert seen[-NEW:] == [True] * NEW  # (static: after the one-time StaticCache probe's two forwards)
    expected = uncached_greedy(model, PROMPT, NEW, use_cache=False)
    assert torch.equal(run().sequences, expected)
