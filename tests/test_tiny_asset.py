"""The shipped tiny model (assets/tiny): learned induction behaviour measured now, asset hygiene, reproducibility."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import workbench.models as models
from workbench.errors import LoadError
from workbench.model.transformer import TransformerLM

REPO = Path(__file__).resolve().parents[1]
SEGMENT = 20  # differs from the length the training script evaluates on (24)
FIRST_WORD_ID = 4  # ids 0..3 are [PAD] [BOS] [EOS] [UNK]


@pytest.fixture(scope="module")
def tiny():
    return models.tiny()


@pytest.fixture(scope="module")
def train_script():
    spec = importlib.util.spec_from_file_location("train_tiny", REPO / "scripts" / "train_tiny.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the script executes
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def repeated(vocab_size: int, batch: int = 32, length: int = SEGMENT, seed: int = 2024) -> torch.Tensor:
    """(B, 1 + 2L): [BOS], L random word ids, the same L ids again, from a generator unseen in training."""
    gen = torch.Generator().manual_seed(seed)
    seg = torch.randint(FIRST_WORD_ID, vocab_size, (batch, length), generator=gen)  # (B, L)
    return torch.cat([torch.ones(batch, 1, dtype=torch.long), seg, seg], dim=1)


def patterns(model: TransformerLM, ids: torch.Tensor) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Logits (B, T, V) and each layer's attention probabilities (B, H, T, T) from `hook_pattern`."""
    seen: dict[int, torch.Tensor] = {}
    handles = [
        block.attn.hook_pattern.register_forward_hook(lambda _m, _i, out, n=n: seen.__setitem__(n, out))
        for n, block in enumerate(model.blocks)
    ]
    try:
        with torch.no_grad():
            logits = model(ids)
    finally:
        for h in handles:
            h.remove()
    return logits, seen


def head_scores(model: TransformerLM, ids: torch.Tensor, length: int = SEGMENT) -> tuple[list[float], list[float]]:
    """Per-head previous-token score of layer 0 and induction score of layer 1."""
    _, pat = patterns(model, ids)
    T = ids.shape[1]
    q = torch.arange(1, T)
    prev = pat[0][:, :, q, q - 1].mean(dim=(0, 2))  # (H,) attention i -> i-1
    r = torch.arange(length + 1, T)  # positions of the repeated copy
    induction = pat[1][:, :, r, r - length + 1].mean(dim=(0, 2))  # (H,) attention to the token after the first copy
    return prev.tolist(), induction.tolist()


def test_config_is_two_layer_attention_only(tiny):
    model, tokenizer = tiny
    cfg = model.config
    assert (cfg.n_layers, cfg.mlp) == (2, "none")
    assert all(block.mlp is None and block.ln_mlp is None for block in model.blocks)
    assert not any(".mlp." in name for name in model.state_dict())
    assert cfg.vocab_size == tokenizer.vocab_size
    assert not model.training


def test_repeated_half_is_predicted_by_copying(tiny):
    model, _ = tiny
    ids = repeated(model.config.vocab_size)
    logits, _ = patterns(model, ids)
    nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")  # (B, T-1)
    first, repeat = nll[:, 1:SEGMENT].mean().item(), nll[:, SEGMENT:].mean().item()
    uniform = math.log(model.config.vocab_size - FIRST_WORD_ID)
    assert first > 0.8 * uniform  # random tokens stay unpredictable
    assert repeat < 1.0
    assert repeat < 0.3 * first
    accuracy = (logits[:, SEGMENT + 1 : -1].argmax(-1) == ids[:, SEGMENT + 2 :]).float().mean().item()
    assert accuracy > 0.9


def test_layer0_has_previous_token_head_and_layer1_induction_head(tiny):
    model, _ = tiny
    prev, induction = head_scores(model, repeated(model.config.vocab_size))
    assert max(prev) > 0.5, prev
    assert max(induction) > 0.5, induction


def test_untrained_model_has_neither_head(tiny):
    """The same measurement on fresh weights stays low, so the thresholds above reflect training."""
    model, _ = tiny
    torch.manual_seed(0)
    fresh = TransformerLM(model.config).eval()
    prev, induction = head_scores(fresh, repeated(model.config.vocab_size))
    assert max(prev) < 0.2 and max(induction) < 0.2


def test_induction_on_readable_text(tiny):
    model, tokenizer = tiny
    text = "river horse music paper north science family story ocean"
    ids = tokenizer.encode(f"{text} {text}")
    words = len(text.split())
    assert ids[0] == tokenizer.bos_token_id and len(ids) == 1 + 2 * words and 3 not in ids
    with torch.no_grad():
        logits = model(torch.tensor([ids]))  # (1, T, V)
    predicted = logits[0, words + 1 : -1].argmax(-1).tolist()  # from the 2nd repeated word on
    assert tokenizer.decode(predicted) == " ".join(text.split()[1:])


def test_tokenizer_specials_and_round_trip(tiny):
    _, tokenizer = tiny
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.add_bos
    text = "the water is cold, but the sun is warm."
    ids = tokenizer.encode(text)
    assert ids[0] == 1 and 3 not in ids  # [BOS] first, every word known
    assert tokenizer.decode(ids, skip_special=True) == text
    assert tokenizer.encode(text, add_bos=False) == ids[1:]
    assert tokenizer.token_strings(ids[:3]) == ["[BOS]", "the", "water"]
    assert tokenizer.encode("The zyzzyva", add_bos=False) == [tokenizer.encode("the", add_bos=False)[0], 3]


def test_assets_folder_is_small():
    size = sum(p.stat().st_size for p in (REPO / "assets").rglob("*") if p.is_file())
    assert 0 < size < 5 * 2**20, size


def test_missing_assets_raise_load_error(tmp_path, monkeypatch):
    (tmp_path / "workbench").mkdir()
    monkeypatch.setattr(models, "__file__", str(tmp_path / "workbench" / "models.py"))
    with pytest.raises(LoadError, match="train_tiny.py"):
        models.tiny()


def test_training_is_reproducible_from_the_seed(train_script):
    cfg = train_script.TrainConfig(steps=20)
    model_a, losses_a = train_script.train(cfg, progress=False)
    model_b, losses_b = train_script.train(cfg, progress=False)
    _, losses_c = train_script.train(train_script.TrainConfig(steps=20, seed=1), progress=False)
    assert len(losses_a) == 20 and losses_a == losses_b
    assert losses_c != losses_a  # the seed drives the run
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert torch.equal(a, b), name
