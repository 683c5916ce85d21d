"""`workbench.io.state`: a strict load builds the model on the meta device and keeps the state's tensors; a
lenient one copies into an initialised model. Either way the model must equal one built and filled eagerly."""

from __future__ import annotations

import itertools

import pytest
import torch

import workbench as wb
from workbench.errors import WeightMismatchError
from workbench.io.state import model_from_state
from workbench.model.config import RopeScaling

CONFIGS = {
    "llama-tied": wb.ModelConfig.preset("tiny"),
    "gemma-untied": wb.ModelConfig.preset("tiny-gemma").replace(tie_embeddings=False),  # scaled embedding
    "gpt2": wb.ModelConfig.preset("tiny-gpt2"),  # learned positions, LayerNorm, biases
    "llama3-rope": wb.ModelConfig.preset("tiny").replace(
        rope_scaling=RopeScaling("llama3", 8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_seq_len=64)
    ),
}


def _reference(config: wb.ModelConfig) -> tuple[wb.TransformerLM, dict[str, torch.Tensor]]:
    """An eagerly built model, and a copy of its state without the tied alias (as a file holds it)."""
    torch.manual_seed(0)
    model = wb.TransformerLM(config).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if config.tie_embeddings:
        del state["lm_head.weight"]
    return model, state


def _tensors(model: torch.nn.Module):
    return itertools.chain(model.parameters(), model.buffers())


@pytest.mark.parametrize("name", CONFIGS)
def test_strict_load_keeps_the_state_and_computes_buffers_as_an_eager_build(name):
    reference, state = _reference(CONFIGS[name])
    kept = {k: v.data_ptr() for k, v in state.items()}
    model, report = model_from_state(reference.config, state, strict=True)
    assert report.ok and report.unexpected == [] and report.casts == []
    assert not any(t.is_meta for t in _tensors(model)) and all(t.device.type == "cpu" for t in _tensors(model))
    for key, ptr in kept.items():  # taken, not copied
        assert model.state_dict()[key].data_ptr() == ptr, key
    assert all(p.requires_grad and isinstance(p, torch.nn.Parameter) for p in model.parameters())
    assert (model.lm_head.weight is model.embed.weight) == reference.config.tie_embeddings
    assert ("lm_head.weight", "embed.weight") in report.tied if reference.config.tie_embeddings else not report.tied
    for (key, ours), (_, theirs) in zip(model.named_buffers(), reference.named_buffers(), strict=True):
        assert ours.dtype == theirs.dtype and torch.equal(ours, theirs), key  # RoPE frequencies, embedding scale
    model.to(torch.bfloat16)  # casts restore the computed buffers exactly, as they do for an eager build
    reference.to(torch.bfloat16)
    for (key, ours), (_, theirs) in zip(model.named_buffers(), reference.named_buffers(), strict=True):
        assert ours.dtype == torch.float32 and torch.equal(ours, theirs), key
    ids = torch.randint(0, reference.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model.eval()(ids), reference(ids))


def test_strict_load_copies_what_it_cannot_keep():
    """Cast, strided, shared or misaligned tensors are copied: the model never aliases the caller's memory
    in a way that a copying load would not."""
    reference, state = _reference(CONFIGS["gemma-untied"])
    state["embed.weight"] = state["embed.weight"].bfloat16()  # cast: a copy in float32
    own = state["lm_head.weight"]  # contiguous, alone in its storage, aligned: kept
    state["blocks.0.attn.out.weight"] = state["blocks.0.attn.out.weight"].t().contiguous().t()  # strided
    big = torch.zeros(1 + state["blocks.1.attn.out.weight"].numel())
    state["blocks.1.attn.out.weight"] = big[1:].view_as(state["blocks.1.attn.out.weight"]).copy_(
        state["blocks.1.attn.out.weight"]
    )  # a view into a larger, misaligned buffer
    state["blocks.0.mlp.down.weight"] = state["blocks.1.mlp.down.weight"]  # one tensor under two names
    model, report = model_from_state(reference.config, state, strict=True)
    assert report.casts == [("embed.weight", "bfloat16", "float32")]
    assert model.embed.weight.dtype == torch.float32
    assert model.lm_head.weight.data_ptr() == own.data_ptr()
    for key in ("blocks.0.attn.out.weight", "blocks.1.attn.out.weight"):
        p = model.get_parameter(key)
        assert p.is_contiguous() and p.data_ptr() != state[key].data_ptr() and torch.equal(p, state[key]), key
    down0, down1 = model.blocks[0].mlp.down.weight, model.blocks[1].mlp.down.weight
    assert down0.data_ptr() != down1.data_ptr() and torch.equal(down0, down1)
    assert all(p.data_ptr() % 64 == 0 for p in model.parameters())


def test_strict_load_with_a_missing_weight_raises_and_a_lenient_one_keeps_the_initial_value():
    reference, state = _reference(CONFIGS["llama-tied"])
    del state["ln_f.weight"]
    with pytest.raises(WeightMismatchError, match="1 missing and 0 mismatched") as info:
        model_from_state(reference.config, dict(state), strict=True, source="m.safetensors")
    assert "ln_f.weight" in str(info.value)
    model, report = model_from_state(reference.config, state, strict=False)
    assert report.missing == ["ln_f.weight"] and torch.equal(model.ln_f.weight, torch.ones(64))
    assert model.embed.weight.data_ptr() != state["embed.weight"].data_ptr()  # copied into the initialised model
    assert torch.equal(model.embed.weight, state["embed.weight"])
