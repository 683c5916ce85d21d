"""Property-based fuzzing of generation's entry points (issue 17): `generate` and `GenerationSession` arguments,
on the workbench model and on an HF model (through the adapter), under the suite's contract. The issue's
findings are named regressions below."""

from __future__ import annotations

import hfzoo
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import workbench as wb
from workbench.errors import GenerationError, ModelContractError
from workbench.generation import GenerationSession, generate

from .conftest import FUZZ
from .entry_helpers import run_case

GEN_FUZZ = FUZZ(30)  # each case decodes: fewer examples keep the suite within its CI budget

V = 64


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    ours = wb.TransformerLM(wb.ModelConfig.preset("tiny").replace(max_seq_len=32, vocab_size=V)).eval()
    return {"workbench": ours, "hf": hfzoo.build("llama")}


class Ids:
    eos_token_id = None

    def encode(self, text: str) -> list[int]:
        return [3 + ord(c) % 50 for c in text]

    def decode(self, ids: list[int]) -> str:
        return " ".join(map(str, ids))


maybe_number = st.one_of(st.none(), st.integers(-3, 200), st.floats(allow_nan=True, allow_infinity=True),
                         st.text(max_size=2), st.booleans())


@GEN_FUZZ
@given(kind=st.sampled_from(["workbench", "hf"]), max_new=maybe_number, temperature=maybe_number,
       top_k=maybe_number, top_p=maybe_number, beams=maybe_number, pad=maybe_number, eos=maybe_number,
       mask_row=st.lists(st.integers(-1, 2), min_size=4, max_size=4), sample=st.booleans())
def test_fuzz_generate_arguments(models, kind, max_new, temperature, top_k, top_p, beams, pad, eos, mask_row,
                                 sample):
    model = models[kind]
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    mask = torch.tensor([mask_row, [1, 1, 1, 1]])
    kwargs = dict(max_new_tokens=max_new, temperature=temperature, top_k=top_k, top_p=top_p, num_beams=beams,
                  pad_token_id=pad, eos_token_id=eos, do_sample=sample, seed=0)
    kwargs = {k: v for k, v in kwargs.items() if v is not None or k == "max_new_tokens"}
    outcome, out = run_case(lambda: generate(model, ids, attention_mask=mask, **kwargs), model)
    if outcome == "ok":  # accepted: the request was sound, and so is the result
        assert isinstance(max_new, int) and not isinstance(max_new, bool) and 0 < max_new
        assert all(v in (0, 1) for v in mask_row) and any(mask_row)
        V_model = model.get_input_embeddings().num_embeddings if kind == "hf" else V
        assert out.sequences.shape[0] == 2 and out.sequences.shape[1] <= 4 + max_new
        assert int(out.sequences.min()) >= 0 and int(out.sequences.max()) < V_model
        assert torch.equal(out.sequences[:, :4], ids)


@GEN_FUZZ
@given(kind=st.sampled_from(["workbench", "hf"]), prompt=st.one_of(st.text(max_size=6), st.lists(
    st.integers(-5, 300), max_size=5)), reserve=st.integers(-2, 40), top=maybe_number, steps=maybe_number)
def test_fuzz_session_arguments(models, kind, prompt, reserve, top, steps):
    model = models[kind]

    def case():
        kwargs = {} if top is None else {"top_k_candidates": top}
        session = GenerationSession(model, Ids(), prompt, reserve=reserve, **kwargs)
        return session, session.run(steps)

    outcome, result = run_case(case, model)
    if outcome == "ok":
        session, records = result
        assert isinstance(steps, int) and steps > 0 and len(records) == min(steps, len(records))
        assert [r.token_id for r in records] == session.generated_ids
        assert session.cache.length == session.prompt_length + len(records)


def test_a_pad_id_outside_the_vocabulary_is_refused(models):
    """Regression: the default pad (eos[0]) used to be fed back into the model (a device assert on CUDA)."""
    for model in models.values():
        with pytest.raises(GenerationError, match="pad_token_id=9999 is not a token id"):
            generate(model, torch.tensor([[5, 6]]), max_new_tokens=2, eos_token_id=9999)


def test_an_all_zero_mask_row_is_refused(models):
    """Regression: a row masking its whole prompt was generated from nothing."""
    for model in models.values():
        with pytest.raises(GenerationError, match="masks every prompt token"):
            generate(model, torch.tensor([[5, 6], [7, 8]]), attention_mask=torch.tensor([[0, 0], [1, 1]]),
                     max_new_tokens=2)


def test_a_session_on_a_module_that_is_not_a_causal_lm_is_refused():
    """Regression: GenerationSession on a non-LM module raised AttributeError."""
    with pytest.raises(ModelContractError, match="could not be called as a causal LM"):
        GenerationSession(torch.nn.Linear(4, 4), Ids(), "abc")
    with pytest.raises(GenerationError, match="nn.Module"):
        GenerationSession("not a model", Ids(), "abc")  # type: ignore[arg-type]
