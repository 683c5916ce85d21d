"""generate, beam search and the session on every `hfzoo` family, a legacy-tuple module and a module
without a cache, all through `workbench.lm.ModelAdapter`, checked against transformers' own generate and
eager attention on the same weights."""

from __future__ import annotations

import warnings

import hfzoo
import pytest
import torch
from bugzoo.minigpt import BareLM, MiniConfig, MiniGPT
from genmodels import NumberTokenizer

from workbench.generation import GenerationSession, generate
from workbench.lm import ForeignCache

pytest.importorskip("transformers")
NEW = 10
PROMPT = [5, 17, 33, 9, 64, 100, 7, 12]


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BLOOM's static cache falls back with a warning (tested below)
        return {name: hfzoo.build(name) for name in hfzoo.FAMILIES}


def left_padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, hfzoo.VOCAB, (2, 9), generator=g)
    mask = torch.ones_like(ids)
    ids[1, :3], mask[1, :3] = 0, 0  # the second prompt is 3 tokens shorter, padded on the left
    return ids, mask


def hf_greedy(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor | None, n: int) -> torch.Tensor:
    return model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                          eos_token_id=None, pad_token_id=0)


@pytest.mark.parametrize("cache_mode", ["static", "growing"])
@pytest.mark.parametrize("family", hfzoo.FAMILIES)
def test_greedy_left_padded_batch_equals_transformers_generate(models, family, cache_mode):
    model = models[family]
    ids, mask = left_padded_batch()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = generate(model, ids, attention_mask=mask, max_new_tokens=NEW, cache_mode=cache_mode, pad_token_id=0)
    assert torch.equal(ours.sequences, hf_greedy(model, ids, mask, NEW))
    assert ours.new_token_counts.tolist() == [NEW, NEW]


@pytest.mark.parametrize("family", hfzoo.FAMILIES)
def test_beam_search_equals_transformers_beam_search(models, family):
    model = models[family]
    ids, mask = left_padded_batch()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = generate(model, ids, attention_mask=mask, max_new_tokens=6, num_beams=3, num_return_sequences=2,
                        length_penalty=0.7, eos_token_id=2, pad_token_id=0)
    ref = model.generate(ids, attention_mask=mask, max_new_tokens=6, num_beams=3, num_return_sequences=2,
                         length_penalty=0.7, eos_token_id=2, pad_token_id=0, do_sample=False,
                         return_dict_in_generate=True, output_scores=True)
    assert ours.scores is not None and ours.sequences.shape == ref.sequences.shape
    T = ids.shape[1]
    for row, (mine, theirs, n) in enumerate(zip(ours.sequences, ref.sequences, ours.new_token_counts.tolist())):
        assert torch.equal(mine[: T + n], theirs[: T + n]), row  # after a row's EOS both only pad
        assert (mine[T + n :] == 0).all()
    torch.testing.assert_close(ours.scores, ref.sequences_scores, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gpt2", "mixtral"])
def test_seeded_sampling_is_reproducible(models, family):
    ids, mask = left_padded_batch()

    def sample(seed: int) -> torch.Tensor:
        return generate(models[family], ids, attention_mask=mask, max_new_tokens=12, do_sample=True, top_k=50,
                        temperature=1.5, seed=seed, pad_token_id=0).sequences

    first = sample(7)
    assert torch.equal(first, sample(7))
    assert not torch.equal(first, sample(8))  # the seed is what decides: 24 draws from ~50 tokens differ


def measured_bytes(cache: ForeignCache) -> int:
    """Bytes of every key and value tensor the transformers cache holds, read from the cache itself."""
    return sum(t.numel() * t.element_size() for layer in cache.state.layers for t in (layer.keys, layer.values)
               if t is not None)


@pytest.mark.parametrize("cache_mode", ["static", "growing"])
@pytest.mark.parametrize("family", hfzoo.FAMILIES)
def test_session_steps_like_transformers_and_shows_eager_attention(models, family, cache_mode):
    model = models[family]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # reserve=4: a static cache must grow twice within the run
        session = GenerationSession(model, NumberTokenizer(), PROMPT, capture_attention=True, cache_mode=cache_mode,
                                    reserve=4)
        records = []
        for _ in range(NEW):
            records.append(session.step())
            # cache bytes are the cache's own tensors at every step
            assert sum(records[-1].cache_bytes_allocated) == measured_bytes(session.cache)
            assert records[-1].cache_length == len(PROMPT) + len(records)
    reference = hf_greedy(model, torch.tensor([PROMPT]), None, NEW)[0, len(PROMPT):]
    assert [r.token_id for r in records] == reference.tolist()
    eager = hfzoo.build(family, attn="eager")
    with torch.no_grad():
        attentions = eager(torch.tensor([session.tokens]), output_attentions=True).attentions
    for r in records:
        expected = torch.stack([a[0, :, r.position, : r.position + 1] for a in attentions])  # (L, H, S)
        assert r.attention is not None and r.attention.shape == expected.shape
        torch.testing.assert_close(r.attention, expected, rtol=0, atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        session.reset()  # a transformers cache is refilled with the prompt
        assert session.cache.length == len(PROMPT) and session.history == ()
        assert session.step().token_id == records[0].token_id


@pytest.mark.parametrize("family", ["bloom", "gpt_neo"])
def test_a_family_without_static_cache_support_falls_back_to_a_growing_cache(models, family):
    """BLOOM's ALiBi bias refuses a StaticCache (an error); GPT-Neo builds its causal mask from the cache's
    capacity, so its logits through one are wrong without an error: the adapter compares them once."""
    ids, mask = left_padded_batch()
    with pytest.warns(UserWarning, match="cannot decode into a transformers StaticCache"):
        out = generate(models[family], ids, attention_mask=mask, max_new_tokens=4, cache_mode="static",
                       pad_token_id=0)
    assert torch.equal(out.sequences, hf_greedy(models[family], ids, mask, 4))


def greedy_by_recompute(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, n: int) -> torch.Tensor:
    """Reference: recompute the whole (padded) sequence for every new token, positions from the mask."""
    for _ in range(n):
        out = model(ids, attention_mask=mask)
        logits = out if isinstance(out, torch.Tensor) else out.logits
        ids = torch.cat((ids, logits[:, -1].argmax(-1, keepdim=True)), dim=1)
        mask = torch.cat((mask, torch.ones_like(mask[:, :1])), dim=1)
    return ids


def test_legacy_tuple_cache_and_cacheless_modules_generate():
    torch.manual_seed(0)
    mini = MiniGPT(MiniConfig(vocab_size=64, d_model=32, max_seq_len=32, dropout=0.0)).eval()
    bare = BareLM().eval()
    ids = torch.randint(3, 64, (2, 6))
    mask = torch.ones_like(ids)
    ids[0, :2], mask[0, :2] = 0, 0
    for model in (mini, bare):
        out = generate(model, ids, attention_mask=mask, max_new_tokens=8, pad_token_id=0)
        assert torch.equal(out.sequences, greedy_by_recompute(model, ids, mask, 8))
    session = GenerationSession(mini, NumberTokenizer(), [4, 9, 11], capture_attention=True)
    record = session.step()
    assert isinstance(session.cache, ForeignCache) and session.cache.style == "tuple"
    assert sum(record.cache_bytes_allocated) == sum(t.nbytes for layer in session.cache.state for t in layer) > 0
    assert record.attention is not None and record.attention.shape == (2, 4, 4)  # MiniGPT: 2 layers x 4 heads
    torch.testing.assert_close(record.attention.sum(-1), torch.ones(2, 4))
    beams = generate(mini, ids[1:], max_new_tokens=5, num_beams=2)  # beams reorder the module's own tuples
    assert beams.sequences.shape == (1, 11)
