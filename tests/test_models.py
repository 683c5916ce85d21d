"""`workbench.models.smollm2`: real SmolLM2-135M-Instruct weights against HF transformers on the same GGUF."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.slow

PROMPT = (
    "The Eiffel Tower was completed in 1889 for the World's Fair in Paris. It is 330 metres tall, "
    "and for forty-one years it was the tallest man-made structure in the world."
)


def _hf_state(hf) -> dict[str, torch.Tensor]:
    """HF's weights rearranged into workbench naming (q/k/v and gate/up fused by row)."""
    sd = hf.state_dict()
    out = {"embed.weight": sd["model.embed_tokens.weight"], "ln_f.weight": sd["model.norm.weight"]}
    for i in range(hf.config.num_hidden_layers):
        p = f"model.layers.{i}."
        attn = [sd[p + f"self_attn.{n}_proj.weight"] for n in "qkv"]
        out[f"blocks.{i}.attn.qkv.weight"] = torch.cat(attn, dim=0)
        out[f"blocks.{i}.attn.out.weight"] = sd[p + "self_attn.o_proj.weight"]
        out[f"blocks.{i}.mlp.up.weight"] = torch.cat(
            [sd[p + "mlp.gate_proj.weight"], sd[p + "mlp.up_proj.weight"]]
        )
        out[f"blocks.{i}.mlp.down.weight"] = sd[p + "mlp.down_proj.weight"]
        out[f"blocks.{i}.ln_attn.weight"] = sd[p + "input_layernorm.weight"]
        out[f"blocks.{i}.ln_mlp.weight"] = sd[p + "post_attention_layernorm.weight"]
    return out


def test_load_report_is_clean_and_embeddings_tied(smollm2, hf_smollm2):
    model, _ = smollm2
    report = model.load_report
    assert report.ok and report.missing == [] and report.unexpected == [] and report.mismatched == []
    assert report.format == "gguf"
    assert ("lm_head.weight", "embed.weight") in report.tied
    assert model.lm_head.weight.data_ptr() == model.embed.weight.data_ptr()
    assert any("Q4_1" in n and "float32" in n for n in report.notes)
    cfg, ref = model.config, hf_smollm2.config
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.d_ff, cfg.vocab_size) == (
        ref.num_hidden_layers,
        ref.hidden_size,
        ref.num_attention_heads,
        ref.num_key_value_heads,
        ref.intermediate_size,
        ref.vocab_size,
    )
    assert cfg.tie_embeddings == ref.tie_word_embeddings
    assert cfg.rope_theta == ref.rope_parameters["rope_theta"]
    assert cfg.norm_eps == pytest.approx(ref.rms_norm_eps, rel=1e-6)  # HF keeps the float32 value
    assert not model.training and model.embed.weight.dtype == torch.float32


def test_every_weight_equals_hf_dequantization(smollm2, hf_smollm2):
    """Same dequantized values, and the q/k rows in the same (un-permuted) order as HF's."""
    model, _ = smollm2
    ours, theirs = model.state_dict(), _hf_state(hf_smollm2)
    assert set(theirs) == set(ours) - {"lm_head.weight"}
    for name, value in theirs.items():
        assert torch.equal(ours[name], value), name


def test_logits_match_hf_on_a_real_prompt(smollm2, hf_smollm2):
    model, tok = smollm2
    ids = tok(PROMPT)["input_ids"]
    with torch.no_grad():
        ours, theirs = model(ids), hf_smollm2(ids).logits
    assert ours.shape == theirs.shape == (1, ids.shape[1], model.config.vocab_size)
    assert (ours - theirs).abs().max().item() <= 1e-3
    assert torch.equal(ours.argmax(-1), theirs.argmax(-1))


def test_greedy_continuation_matches_hf(smollm2, hf_smollm2):
    model, tok = smollm2
    prompt = tok("The capital of France is")["input_ids"]  # (1, T)
    with torch.no_grad():
        expected = hf_smollm2.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=20,
            min_new_tokens=20,
            do_sample=False,
        )[0, prompt.shape[1] :]
        cache = model.new_cache(1, prompt.shape[1] + 20)
        step, produced = prompt, []
        for _ in range(20):
            step = model(step, cache=cache)[:, -1].argmax(-1, keepdim=True)  # (1, 1)
            produced.append(step.item())
    assert produced == expected.tolist()
    assert "Paris" in tok.decode(produced)


def test_left_padded_batch_matches_unpadded_rows(smollm2):
    model, tok = smollm2
    texts = ["The capital of France is", PROMPT, "def add(a, b):\n    return a + b"]
    batch = tok(texts)
    assert batch["attention_mask"][:, 0].tolist().count(0) == 2  # two rows really are left-padded
    with torch.no_grad():
        padded = model(batch["input_ids"], batch["attention_mask"])  # (B, T, V)
        for row, text in enumerate(texts):
            single = model(tok(text)["input_ids"])[0]  # (T_row, V)
            real = padded[row, -single.shape[0] :]
            assert (real - single).abs().max().item() <= 1e-4, text


def test_bfloat16_error_at_long_positions_is_bounded_and_frequencies_stay_exact(smollm2):
    """Measured against a float64 run of the same weights, up to position 400 (not against another
    library's bf16 load path, whose rounding is its own choice), on SmolLM2's first 8 blocks (the RoPE angle
    is the same in every block; all 30 cost 20 s for the same three facts, measured 8.0e-3, 5.4e-7, 2.0e-3):
    - a bf16 cast keeps the RoPE frequencies bit-equal in float32, and the bf16 model stays within bf16
      arithmetic noise (measured 5.6e-3 relative);
    - rounding those frequencies to bf16, what a naive cast would do, turns late positions by the wrong
      angle: in float32 arithmetic, where the exact model is within 4e-7 of float64, that costs 3.0e-3."""
    import copy

    model = copy.deepcopy(smollm2[0])
    model.blocks = model.blocks[:8]
    ids = torch.randint(0, model.config.vocab_size, (1, 400), generator=torch.Generator().manual_seed(0))
    ours = copy.deepcopy(model).to(torch.bfloat16)
    assert ours.rotary.inv_freq.dtype == torch.float32
    assert torch.equal(ours.rotary.inv_freq, model.rotary.inv_freq)
    rounded = copy.deepcopy(model)
    rounded.rotary.inv_freq = rounded.rotary.inv_freq.bfloat16().float()
    with torch.no_grad():
        reference = copy.deepcopy(model).double()(ids)  # (1, T, V) float64
        bf16, f32, f32_rounded = (m(ids).double() for m in (ours, model, rounded))

    def rel(x: torch.Tensor, t: slice = slice(None)) -> float:
        return float((x[:, t] - reference[:, t]).norm() / reference[:, t].norm())

    assert rel(bf16) < 2e-2
    assert rel(f32) < 1e-5
    assert rel(f32_rounded, slice(200, None)) > 5e-4  # 100x float32 noise, at the late positions
