"""Parity with HF transformers: same weights in both, same logits, on a batch with left padding."""

from __future__ import annotations

import pytest
import torch

import workbench as wb
from workbench.families import get, registered
from workbench.io.load import load_pretrained

transformers = pytest.importorskip("transformers")

VOCAB = 97


def _padded_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB, (3, 12), generator=g)
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, :4] = 0  # left padding
    mask[2, :7] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, pos


def _hf_logits(hf, ids, mask, pos) -> torch.Tensor:
    with torch.no_grad():
        return hf(input_ids=ids, attention_mask=mask, position_ids=pos).logits


def _assert_parity(ours: torch.nn.Module, hf: torch.nn.Module) -> float:
    ids, mask, pos = _padded_batch()
    theirs = _hf_logits(hf, ids, mask, pos)
    with torch.no_grad():
        mine = ours(ids, attention_mask=mask)
    valid = mask.bool()
    diff = (mine[valid] - theirs[valid]).abs().max().item()
    assert diff <= 1e-4, f"max |dlogits| = {diff}"
    return diff


def _gpt2(tie: bool = True):
    cfg = transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=64, tie_word_embeddings=tie
    )
    torch.manual_seed(1)
    return transformers.GPT2LMHeadModel(cfg).eval()


def _llama(tie: bool, kv_heads: int = 2):
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        max_position_embeddings=64,
        tie_word_embeddings=tie,
        rope_theta=5000.0,
    )
    torch.manual_seed(2)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # random norm weights, so a norm mix-up cannot hide behind ones
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return hf


@pytest.mark.parametrize("tie", [True, False])
def test_gpt2_parity(tmp_path, tie):
    hf = _gpt2(tie)
    hf.save_pretrained(tmp_path)
    ours = load_pretrained(tmp_path)
    assert ours.config.positions == "learned" and ours.config.norm == "layernorm"
    assert ours.load_report.ok and not ours.load_report.unexpected
    assert (ours.lm_head.weight.data_ptr() == ours.embed.weight.data_ptr()) == tie
    _assert_parity(ours, hf)


@pytest.mark.parametrize("tie", [True, False])
def test_llama_gqa_parity(tmp_path, tie):
    hf = _llama(tie)
    hf.save_pretrained(tmp_path)
    ours = load_pretrained(tmp_path)
    assert ours.config.kv_heads == 2 and ours.config.n_heads == 4
    assert ours.load_report.ok and not ours.load_report.unexpected
    _assert_parity(ours, hf)


def test_llama_mqa_and_eager_path_parity(tmp_path):
    hf = _llama(False, kv_heads=1)
    hf.save_pretrained(tmp_path)
    ours = load_pretrained(tmp_path)
    with ours.attention_impl("eager"):
        _assert_parity(ours, hf)


def test_sharded_llama_checkpoint(tmp_path):
    hf = _llama(False)
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    _assert_parity(load_pretrained(tmp_path), hf)


# every family's tiny presets, each saved as the family that declares it
TINY_PRESETS = [(f.name, name) for f in registered() for name in f.presets if name.startswith("tiny")]


@pytest.mark.parametrize("family, preset", TINY_PRESETS, ids=[p for _, p in TINY_PRESETS])
@pytest.mark.parametrize("tie", [True, False])
def test_save_hf_loads_in_transformers(tmp_path, family, preset, tie):
    assert {"tiny", "tiny-gpt2"} <= {p for _, p in TINY_PRESETS}
    torch.manual_seed(3)
    cfg = wb.ModelConfig.preset(preset).replace(vocab_size=VOCAB, tie_embeddings=tie, init_std=0.2)
    ours = wb.TransformerLM(cfg).eval()
    wb.save_pretrained(ours, tmp_path, format="hf", family=family)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert type(hf).__name__ == get(family).hf_architecture
    diff = _assert_parity(ours, hf)
    assert diff <= 1e-4
    # and back again: HF directory -> workbench, bit-exact weights
    again = load_pretrained(tmp_path)
    for (name, a), b in zip(ours.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name


def test_save_hf_refuses_post_norm(tmp_path):
    model = wb.TransformerLM(wb.ModelConfig.preset("tiny").replace(norm_placement="post"))
    with pytest.raises(wb.ConfigError, match="No HF transformers architecture"):
        wb.save_pretrained(model, tmp_path, format="hf")
