"""Models and inputs for the generation tests: random tiny transformers and a crafted bigram transformer."""

from __future__ import annotations

import math

import torch

import workbench as wb


class NumberTokenizer:
    """Ids written as numbers: enough for a session, and a tokenizer no HF model knows."""

    eos_token_id = None

    def encode(self, text: str) -> list[int]:
        return [int(x) for x in text.split()]

    def decode(self, ids: list[int]) -> str:
        return " ".join(map(str, ids))


def tiny_model(preset: str = "tiny", seed: int = 0, init_std: float = 0.3, **changes) -> wb.TransformerLM:
    """A random tiny model; init_std 0.3 makes next-token distributions peaked, so argmax is stable."""
    torch.manual_seed(seed)
    config = wb.ModelConfig.preset(preset).replace(init_std=init_std, **changes)
    return wb.TransformerLM(config).eval()


def bigram_model(table: dict[int, dict[int, float]], vocab: int = 8, max_seq_len: int = 32) -> wb.TransformerLM:
    """A real TransformerLM whose next-token distribution depends only on the last token.

    Attention and MLP outputs are zeroed, the embedding is one-hot, so after the (RMS) norms the
    residual is sqrt(C) * e_i and the LM head reads row i of log-probabilities from `table`
    (unlisted tokens share the remaining probability mass).
    """
    config = wb.ModelConfig(
        vocab_size=vocab, d_model=vocab, n_layers=1, n_heads=2, d_ff=8, max_seq_len=max_seq_len, tie_embeddings=False
    )
    model = wb.TransformerLM(config).eval()
    logp = torch.empty(vocab, vocab)
    for i in range(vocab):
        row = table.get(i, {})
        rest = (1.0 - sum(row.values())) / (vocab - len(row))
        logp[i] = torch.tensor([math.log(row.get(j, rest)) for j in range(vocab)])
    with torch.no_grad():
        model.embed.weight.copy_(torch.eye(vocab))
        for block in model.blocks:
            block.attn.out.weight.zero_()
            block.mlp.down.weight.zero_()
        model.lm_head.weight.copy_(logp.T / math.sqrt(vocab))  # (V, C): logits = W @ (sqrt(C) e_i)
    return model


def padded_batch(vocab: int = 256, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(3, 8) ids with left padding of 0, 2 and 5 positions."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (3, 8), generator=g)
    mask = torch.ones(3, 8, dtype=torch.long)
    mask[1, :2] = 0
    mask[2, :5] = 0
    return ids, mask
