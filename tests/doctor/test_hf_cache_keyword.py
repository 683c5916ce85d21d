"""The doctor drives an HF cache with the keyword the installed transformers declares, and warns nothing.

transformers renamed the forward's `past_key_values` to `cache` (and the output's field likewise); the old
name still works there but logs a deprecation. Both spellings are pinned here: the installed release's own
model, and a subclass whose forward keeps the old signature, as releases before the rename have.
"""

from __future__ import annotations

import inspect
import logging
import warnings
from dataclasses import dataclass, fields

import pytest
import torch

from workbench.lm import ModelAdapter, returned_cache

transformers = pytest.importorskip("transformers")


def _config() -> transformers.LlamaConfig:
    return transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                                    bos_token_id=0, eos_token_id=0)


@dataclass
class OldOutput:
    logits: torch.Tensor
    past_key_values: object


class OldSpellingLlama(transformers.LlamaForCausalLM):
    """A forward with the pre-rename signature and output field, around the installed implementation."""

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None,  # noqa: ANN001
                use_cache=None):  # noqa: ANN001, ANN201
        new = "cache" if "cache" in inspect.signature(super().forward).parameters else "past_key_values"
        out = super().forward(input_ids, attention_mask=attention_mask, position_ids=position_ids,
                              use_cache=use_cache, **{new: past_key_values})
        field = "cache" if "cache" in {f.name for f in fields(out)} else "past_key_values"
        return OldOutput(out.logits, getattr(out, field))


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _prefill_then_step(adapter: ModelAdapter) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(4, 64, (2, 9), generator=torch.Generator().manual_seed(0))
    first, state = adapter.cached(ids[:, :6])
    second, state = adapter.cached(ids[:, 6:], state)
    return torch.cat([first, second], dim=1), adapter.logits(ids)


@pytest.mark.parametrize("cls", [transformers.LlamaForCausalLM, OldSpellingLlama], ids=["installed", "old"])
def test_cached_calls_use_the_declared_keyword_without_deprecation(cls):
    torch.manual_seed(0)
    model = cls(_config()).eval()
    declared = set(inspect.signature(model.forward).parameters)
    adapter = ModelAdapter(model)
    assert adapter.cache_kwarg == ("cache" if "cache" in declared else "past_key_values")
    if cls is OldSpellingLlama:
        assert adapter.cache_kwarg == "past_key_values"

    hf_logger = logging.getLogger("transformers")
    handler = _Collect()
    hf_logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught, torch.no_grad():
            warnings.simplefilter("always")
            cached, full = _prefill_then_step(adapter)
    finally:
        hf_logger.removeHandler(handler)
    torch.testing.assert_close(cached, full, rtol=1e-4, atol=1e-4)
    said = handler.messages + [str(w.message) for w in caught]
    assert not [m for m in said if "deprecat" in m.lower()], said


def test_returned_cache_reads_declared_fields_only():
    state = object()
    assert returned_cache(OldOutput(torch.zeros(1), state)) is state
    assert returned_cache({"logits": torch.zeros(1), "cache": state}) is state
    assert returned_cache({"logits": torch.zeros(1), "past_key_values": state}) is state
    assert returned_cache(torch.zeros(1)) is None
