"""GenerationRequest: one frozen object for the decoding settings of generate, beam_search and GenerationSession.

Each bad field raises a GenerationError that carries the value and the fix; a request and the same settings
given as keywords decode the same tokens; a keyword that is no field is refused by name.
"""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from genmodels import padded_batch

import workbench as wb
from workbench import GenerationError, WorkbenchError
from workbench.generation import GenerationRequest, GenerationSession, generate
from workbench.generation.beam import beam_search
from workbench.generation.request import FIELDS
from workbench.lm import ModelAdapter

PROMPT = "hello there"


class EosChars:
    """The `chars` tokenizer with an EOS id."""

    def __init__(self, chars, eos: int) -> None:
        self.chars, self.eos_token_id = chars, eos

    def encode(self, text: str) -> list[int]:
        return self.chars.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.chars.decode(ids)


@pytest.mark.parametrize(
    "settings, got, fix",
    [
        (dict(max_new_tokens=0), "max_new_tokens must be a positive int, got 0", "at least 1 new token"),
        (dict(max_new_tokens=True), "max_new_tokens must be a positive int, got True", "at least 1 new token"),
        (dict(do_sample="yes"), "do_sample must be True or False, got 'yes'", "True samples"),
        (dict(temperature=float("nan")), "temperature must be a finite number, got nan", "1.0 leaves"),
        (dict(do_sample=True, temperature=0.0), "temperature must be > 0 when sampling, got 0.0", "do_sample=False"),
        (dict(top_k=-2), "top_k must be a non-negative int or None, got -2", "None (or 0) keeps every token"),
        (dict(top_k=2.5), "top_k must be a non-negative int or None, got 2.5", "None (or 0) keeps every token"),
        (dict(top_p=1.5), "top_p must lie in (0, 1], got 1.5", "1.0 turns nucleus sampling off"),
        (dict(top_p=0), "top_p must lie in (0, 1], got 0", "1.0 turns nucleus sampling off"),
        (dict(num_beams=0), "num_beams must be a positive int, got 0", "1 is the default"),
        (dict(num_return_sequences=-1), "num_return_sequences must be a positive int, got -1", "1 is the default"),
        (dict(num_beams=2, do_sample=True), "num_beams=2 with do_sample=True", "use num_beams=1 to sample"),
        (dict(num_beams=2, num_return_sequences=3), "num_return_sequences=3 exceeds num_beams=2",
         "use num_beams >= 3"),
        (dict(length_penalty=float("inf")), "length_penalty must be a finite number, got inf", "1.0 ranks beams"),
        (dict(eos_token_id=-1), "eos_token_id must be a token id (an int >= 0)", "got -1"),
        (dict(eos_token_id=[2, "x"]), "eos_token_id must be a token id (an int >= 0)", "got [2, 'x']"),
        (dict(eos_token_id="eos"), "None (no EOS) or 'tokenizer' (the tokenizer's)", "got 'eos'"),
        (dict(pad_token_id=-4), "pad_token_id must be a token id (an int >= 0) or None", "got -4"),
        (dict(stop_strings=["", "x"]), "stop_strings must be a non-empty string or a list of them, got ['', 'x']",
         "() stops at EOS"),
        (dict(stop_strings=3), "stop_strings must be a non-empty string or a list of them, got 3", "() stops at EOS"),
        (dict(seed=2**64), f"seed must be an int in [-2**63, 2**64) or None, got {2**64}", "None draws"),
        (dict(seed=1.5), "seed must be an int in [-2**63, 2**64) or None, got 1.5", "None draws"),
    ],
)
def test_each_bad_field_is_refused_with_its_value_and_the_fix(settings, got, fix):
    with pytest.raises(GenerationError, match=re.escape(got)) as err:
        GenerationRequest(**settings)
    assert fix in str(err.value)
    assert isinstance(err.value, WorkbenchError)


def test_the_request_is_frozen_and_replace_validates_a_copy():
    request = GenerationRequest(max_new_tokens=4, do_sample=True, temperature=0.7)
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.temperature = 2.0  # type: ignore[misc]
    hotter = request.replace(temperature=2.0)
    assert (request.temperature, hotter.temperature, hotter.max_new_tokens) == (0.7, 2.0, 4)
    assert request.replace() is request
    with pytest.raises(GenerationError, match=re.escape("top_p must lie in (0, 1], got 2")):
        request.replace(top_p=2)


def test_derived_values():
    assert GenerationRequest(eos_token_id=5).eos_ids == (5,)
    assert GenerationRequest(eos_token_id=[5, 7]).eos_ids == (5, 7)
    assert GenerationRequest(eos_token_id=None).eos_ids == ()
    assert GenerationRequest().eos_ids == ()  # "tokenizer", not yet resolved
    assert GenerationRequest(stop_strings="\n").stops == ("\n",)
    assert GenerationRequest(stop_strings=["a", "b"]).stops == ("a", "b")
    assert GenerationRequest(eos_token_id=[5, 7]).pad_id == 5  # the first EOS id
    assert GenerationRequest(eos_token_id=5, pad_token_id=0).pad_id == 0
    assert GenerationRequest(eos_token_id=None).pad_id == 0
    assert GenerationRequest(max_new_tokens=3).new_tokens == 3
    with pytest.raises(GenerationError, match="max_new_tokens is None"):
        GenerationRequest().new_tokens  # noqa: B018


def test_the_tokenizer_eos_is_resolved_only_when_asked_for():
    class Tok:
        eos_token_id = 9

    assert GenerationRequest().for_tokenizer(Tok()).eos_ids == (9,)
    assert GenerationRequest().for_tokenizer(None).eos_token_id is None
    assert GenerationRequest(eos_token_id=None).for_tokenizer(Tok()).eos_ids == ()  # None: no EOS at all
    assert GenerationRequest(eos_token_id=3).for_tokenizer(Tok()).eos_ids == (3,)
    Tok.eos_token_id = -1
    with pytest.raises(GenerationError, match="the tokenizer's eos_token_id is not usable .*got -1"):
        GenerationRequest().for_tokenizer(Tok())


def test_the_request_is_in_the_public_api():
    assert wb.GenerationRequest is GenerationRequest
    assert "GenerationRequest" in wb.__all__


# --- the same decoding through the request and through keywords --------------------------------------------
SETTINGS = {
    "greedy": dict(max_new_tokens=10),
    "sampled": dict(max_new_tokens=10, do_sample=True, temperature=1.5, top_k=40, top_p=0.9, seed=3),
    "several samples": dict(max_new_tokens=8, do_sample=True, temperature=2.0, num_return_sequences=2, seed=1),
    "beams": dict(max_new_tokens=8, num_beams=3, num_return_sequences=2, length_penalty=0.5),
    "eos and pad": dict(max_new_tokens=12, eos_token_id=[7, 11], pad_token_id=1),
}


def _same_output(a: wb.GenerationOutput, b: wb.GenerationOutput) -> None:
    assert torch.equal(a.sequences, b.sequences)
    assert torch.equal(a.new_token_counts, b.new_token_counts)
    assert a.finish_reasons == b.finish_reasons
    assert (a.scores is None) == (b.scores is None)
    if a.scores is not None and b.scores is not None:
        assert torch.equal(a.scores, b.scores)


@pytest.mark.parametrize("name", list(SETTINGS))
def test_generate_through_the_request_equals_through_keywords(tiny, name):
    settings = SETTINGS[name]
    ids, mask = padded_batch()
    by_keywords = generate(tiny, ids, attention_mask=mask, **settings)
    by_request = generate(tiny, ids, GenerationRequest(**settings), attention_mask=mask)
    first, *rest = settings.items()
    mixed = generate(tiny, ids, GenerationRequest(**dict(rest)), attention_mask=mask, **dict([first]))
    _same_output(by_keywords, by_request)
    _same_output(by_keywords, mixed)
    n = settings.get("num_return_sequences", 1)
    assert by_keywords.sequences.shape[0] == 3 * n


def test_keywords_override_the_request(tiny):
    ids, mask = padded_batch()
    base = GenerationRequest(max_new_tokens=10, do_sample=True, temperature=1.5, seed=3)
    overridden = generate(tiny, ids, base, attention_mask=mask, do_sample=False, max_new_tokens=6)
    greedy = generate(tiny, ids, attention_mask=mask, max_new_tokens=6)
    _same_output(overridden, greedy)
    assert base.do_sample and base.max_new_tokens == 10  # the request itself is untouched


def test_beam_search_through_the_request_equals_generate_through_keywords(tiny):
    ids, mask = padded_batch()
    settings = SETTINGS["beams"]
    by_keywords = generate(tiny, ids, attention_mask=mask, **settings)
    with torch.no_grad():
        direct = beam_search(ModelAdapter(tiny), ids, mask, GenerationRequest(**settings), "static", None)
    _same_output(by_keywords, direct)
    assert direct.scores is not None and direct.scores.shape == (6,)


def test_the_session_through_the_request_equals_through_keywords(tiny, chars):
    settings = dict(do_sample=True, temperature=1.5, top_p=0.95, seed=5)
    by_keywords = GenerationSession(tiny, chars, PROMPT, **settings).run(8)
    by_request = GenerationSession(tiny, chars, PROMPT, GenerationRequest(**settings)).run(8)
    assert [r.token_id for r in by_keywords] == [r.token_id for r in by_request]
    greedy = GenerationSession(tiny, chars, PROMPT).run(8)
    assert [r.token_id for r in by_keywords] != [r.token_id for r in greedy]  # the settings did reach it


def test_a_session_stops_at_max_new_tokens_and_starts_again_on_reset(tiny, chars):
    session = GenerationSession(tiny, chars, PROMPT, max_new_tokens=3, eos_token_id=None)
    records = session.run(10)
    assert len(records) == 3 and session.finish_reason == "length" and records[-1].finish_reason == "length"
    expected = generate(tiny, torch.tensor([chars.encode(PROMPT)]), max_new_tokens=3).new_tokens[0].tolist()
    assert session.generated_ids == expected
    with pytest.raises(GenerationError, match=r"already ended \(length\)"):
        session.step()
    session.reset()
    assert len(session.run(10)) == 3


# --- refusals -----------------------------------------------------------------------------------------------
def test_an_unknown_keyword_is_refused_by_name_with_the_valid_fields(tiny, chars):
    ids = torch.tensor([[1, 2, 3]])
    calls = {
        "generate": lambda: generate(tiny, ids, max_new_tokens=3, temprature=0.5),
        "session": lambda: GenerationSession(tiny, chars, PROMPT, temprature=0.5),
        "replace": lambda: GenerationRequest().replace(temprature=0.5),
    }
    for call in calls.values():
        with pytest.raises(GenerationError, match=re.escape("unknown decoding setting(s) ['temprature']")) as err:
            call()
        assert str(list(FIELDS)) in str(err.value)
    assert "temperature" in FIELDS and "max_new_tokens" in FIELDS


def test_a_request_that_is_not_a_generation_request_is_refused(tiny, chars):
    with pytest.raises(GenerationError, match="request must be a GenerationRequest or None, got dict"):
        generate(tiny, torch.tensor([[1, 2]]), {"max_new_tokens": 2})  # type: ignore[arg-type]
    with pytest.raises(GenerationError, match="request must be a GenerationRequest or None, got dict"):
        GenerationSession(tiny, chars, PROMPT, {"do_sample": True})  # type: ignore[arg-type]


def test_generate_needs_max_new_tokens(tiny):
    with pytest.raises(GenerationError, match="max_new_tokens must be a positive int, got None"):
        generate(tiny, torch.tensor([[1, 2]]), GenerationRequest(do_sample=True))


def test_a_session_refuses_several_sequences_with_the_numbers(tiny, chars):
    with pytest.raises(GenerationError, match="num_beams=1 and num_return_sequences=2"):
        GenerationSession(tiny, chars, PROMPT, GenerationRequest(do_sample=True, num_return_sequences=2))


def test_eos_defaults_to_the_tokenizer_and_none_turns_it_off(tiny, chars):
    ids = torch.tensor([chars.encode(PROMPT)])
    free = generate(tiny, ids, max_new_tokens=6).new_tokens[0].tolist()
    eos = free[2]
    assert eos not in free[:2]  # the third token is the first EOS
    tok = EosChars(chars, eos)
    default = generate(tiny, ids, max_new_tokens=6, tokenizer=tok)
    assert default.finish_reasons == ("eos",) and default.new_token_counts.tolist() == [3]
    off = generate(tiny, ids, GenerationRequest(max_new_tokens=6, eos_token_id=None), tokenizer=tok)
    assert off.finish_reasons == ("length",) and off.new_tokens[0].tolist() == free
    session = GenerationSession(tiny, tok, PROMPT)
    assert [r.token_id for r in session.run(6)] == free[:3] and session.finish_reason == "eos"
