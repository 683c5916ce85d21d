"""Tiny random-weight HF models of each family, a left-padded batch, and llama.cpp-style GGUF files.

The GGUF files are written from the HF model with the `gguf` package's own name map (what
llama.cpp's converter uses), so the workbench's family declarations are checked against it.
"""

from __future__ import annotations

import json

import gguf
import numpy as np
import torch

VOCAB = 97


def padded_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ids (3, 12), a mask with rows 1 and 2 left-padded by 4 and 7, and the positions HF should use."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB, (3, 12), generator=g)
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, :4] = 0
    mask[2, :7] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, pos


def logit_diff(ours: torch.nn.Module, hf: torch.nn.Module) -> float:
    """Max |ours - HF| over the real (unpadded) positions of `padded_batch`."""
    ids, mask, pos = padded_batch()
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        mine = ours(ids, attention_mask=mask)
    valid = mask.bool()
    return (mine[valid] - theirs[valid]).abs().max().item()


def randomize(hf: torch.nn.Module, norms: tuple[float, float]) -> torch.nn.Module:
    """Random norm weights and biases, so that a norm or bias mix-up cannot hide behind ones and zeros."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.copy_(torch.empty(p.shape).uniform_(*norms, generator=g))
            elif name.endswith(".bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return hf.eval()


def qwen2(transformers, *, tie: bool = False, kv_heads: int = 2, **extra):
    cfg = transformers.Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        max_position_embeddings=64,
        tie_word_embeddings=tie,
        rope_theta=5000.0,
        **extra,
    )
    torch.manual_seed(11)
    return randomize(transformers.Qwen2ForCausalLM(cfg), (0.5, 1.5))


def gemma(transformers, *, tie: bool = True, head_dim: int = 24, kv_heads: int = 1, **extra):
    """hidden_size 48: sqrt(48) = 6.93 is not a round number, and 4 heads of 24 are wider than 48."""
    cfg = transformers.GemmaConfig(
        vocab_size=VOCAB,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        max_position_embeddings=64,
        tie_word_embeddings=tie,
        rope_theta=5000.0,
        **extra,
    )
    torch.manual_seed(12)
    return randomize(transformers.GemmaForCausalLM(cfg), (-0.5, 0.5))  # Gemma's norm weights are offsets


def hf_round_trip(transformers, hf: torch.nn.Module, tmp_path, model_type: str, architecture: str) -> dict:
    """HF checkpoint -> workbench -> `save_pretrained(format="hf")` -> transformers, and back again: the same
    logits and bit-equal weights at every hop. Returns the config.json the workbench wrote."""
    from workbench.io.load import load_pretrained
    from workbench.io.save import save_pretrained

    hf.save_pretrained(tmp_path / "hf")
    ours = load_pretrained(tmp_path / "hf")
    save_pretrained(ours, tmp_path / "ours", format="hf")
    raw = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert raw["model_type"] == model_type and raw["architectures"] == [architecture]
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours", dtype=torch.float32).eval()
    assert type(again).__name__ == architecture
    assert logit_diff(ours, again) <= 1e-4
    for name, value in hf.state_dict().items():
        assert torch.equal(again.state_dict()[name], value), name
    back = load_pretrained(tmp_path / "ours")
    assert back.config == ours.config
    for (name, a), b in zip(ours.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), name
    return raw


def write_gguf(path, hf, arch: gguf.MODEL_ARCH, *, norm_plus_one: bool = False):
    """`hf` as llama.cpp's converter writes it: metadata under `{arch}.`, names from gguf's name map.

    norm_plus_one: store norm weights as 1 + w (llama.cpp's Gemma converter). q/k rows are not
    permuted: the converter permutes them only for the llama architecture.
    """
    c = hf.config
    w = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    head_dim = getattr(c, "head_dim", None)
    if head_dim is not None:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"t{i}" for i in range(c.vocab_size)])
    names = gguf.get_tensor_name_map(arch, c.num_hidden_layers)
    for name, tensor in hf.state_dict().items():
        if name == "lm_head.weight" and c.tie_word_embeddings:
            continue  # transformers ties it; the converter writes no output tensor
        theirs = names.get_name(name, try_suffixes=(".weight", ".bias"))
        assert theirs is not None, name
        value = tensor.detach().float()
        if norm_plus_one and theirs.endswith("norm.weight"):
            value = value + 1
        w.add_tensor(theirs, value.numpy().astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
