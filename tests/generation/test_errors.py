"""Bad generation arguments raise GenerationError with a message that names the problem."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from workbench import GenerationError, ModelContractError, WorkbenchError
from workbench.generation import GenerationSession, generate

IDS = torch.tensor([[1, 2, 3]])


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(max_new_tokens=-3), "max_new_tokens"),
        (dict(max_new_tokens=4, do_sample=True, top_p=0.0), "top_p"),
        (dict(max_new_tokens=4, do_sample=True, top_p=1.5), "top_p"),
        (dict(max_new_tokens=4, do_sample=True, temperature=0.0), "temperature"),
        (dict(max_new_tokens=4, do_sample=True, temperature=-1.0), "temperature"),
        (dict(max_new_tokens=4, do_sample=True, top_k=-2), "top_k"),
        (dict(max_new_tokens=4, num_beams=2, num_return_sequences=3), "num_return_sequences"),
        (dict(max_new_tokens=4, num_return_sequences=2), "num_return_sequences"),
        (dict(max_new_tokens=4, num_beams=0), "num_beams"),
        (dict(max_new_tokens=4, num_beams=2, do_sample=True), "beam sampling"),
        (dict(max_new_tokens=126), "max_seq_len"),
        (dict(max_new_tokens=4, stop_strings=["\n"]), "tokenizer"),
        (dict(max_new_tokens=4, cache_mode="paged"), "cache_mode"),
        (dict(max_new_tokens=4, do_sample=True, seed=1, generator=torch.Generator()), "seed or generator"),
    ],
)
def test_bad_arguments(tiny, kwargs, words):
    with pytest.raises(GenerationError, match=words):
        generate(tiny, IDS, **kwargs)


def test_prompt_plus_new_tokens_at_the_limit_is_allowed(tiny):
    out = generate(tiny, IDS, max_new_tokens=125)
    assert out.sequences.shape == (1, 128)


def test_generation_error_is_a_workbench_error():
    assert issubclass(GenerationError, WorkbenchError)


def test_a_module_that_is_not_a_causal_lm_is_refused():
    with pytest.raises(ModelContractError, match="could not be called as a causal LM") as err:
        generate(nn.Linear(3, 3), IDS, max_new_tokens=2)
    assert "mat1 and mat2" in str(err.value)  # the model's own complaint is kept
    with pytest.raises(GenerationError, match="nn.Module"):
        generate(lambda ids: ids, IDS, max_new_tokens=2)


def test_bad_prompt_ids_are_caught_before_decoding(tiny):
    with pytest.raises(WorkbenchError, match="outside"):
        generate(tiny, torch.tensor([[1, 999]]), max_new_tokens=2)


def test_session_rejects_beam_search_and_unknown_options(tiny, chars):
    with pytest.raises(GenerationError, match="num_beams"):
        GenerationSession(tiny, chars, "hi", num_beams=3)
    with pytest.raises(GenerationError, match="tokenizer"):
        GenerationSession(tiny, None, "hi")
