"""The logit lens decodes each layer's residual through the model's own final norm, head and logit transform: at
the last layer it is the model's own distribution (HF families, soft-capping and logit scales included, the
workbench model and hand-written models), at a middle layer it is norm and head applied by hand to HF's
`output_hidden_states`, and its top-k, ranks, probabilities and entropies agree with each other. Bad input is
refused with the fix, and nothing is left hooked."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import workbench as wb
from tests import hfzoo
from workbench.errors import InterventionError
from workbench.interventions import LogitLens, logit_lens
from workbench.lm import ModelAdapter

IDS = torch.tensor([5, 9, 3, 7, 11, 2, 40, 17])
V = hfzoo.VOCAB
# family -> (final norm, head) named by hand from each family's modeling file, and the readout the lens reports
HF_READOUT = {
    "llama": ("model.norm", "lm_head", "model.norm → lm_head"),
    "gpt2": ("transformer.ln_f", "lm_head", "transformer.ln_f → lm_head"),
    "gpt_neox": ("gpt_neox.final_layer_norm", "lm_head", "gpt_neox.final_layer_norm → lm_head"),
    "opt": ("model.decoder.final_layer_norm", "lm_head", "model.decoder.final_layer_norm → lm_head"),
    "falcon": ("transformer.ln_f", "lm_head", "transformer.ln_f → lm_head"),
    "phi": ("model.final_layernorm", "lm_head", "model.final_layernorm → lm_head"),
    "gemma2": ("model.norm", "lm_head", "model.norm → lm_head → softcap 30"),
    "cohere": ("model.norm", "lm_head", "model.norm → lm_head → × 0.0625"),
    "granite": ("model.norm", "lm_head", "model.norm → lm_head → × 0.25"),
}


def _hooks() -> tuple[int, int]:
    mod = nn.modules.module
    return len(mod._global_forward_hooks), len(mod._global_forward_pre_hooks)


def _hf(name: str) -> nn.Module:
    model = hfzoo.build(name, attn="eager" if name in hfzoo.EAGER_ONLY else "sdpa").eval()
    if name == "gemma2":  # logits far beyond the soft cap (30), so that leaving it out could not pass
        with torch.no_grad():
            model.lm_head.weight.mul_(400.0)
    return model


def _distribution(lens: LogitLens, layer: int) -> torch.Tensor:
    """The full decoded distribution (T, V) of one layer of a lens taken with top_k = V."""
    T, k = lens.n_positions, lens.top_k
    out = torch.zeros(T, k, dtype=torch.float64)
    ids = torch.tensor([list(row) for row in lens.top_ids[layer]])  # (T, V)
    out.scatter_(1, ids, torch.tensor([list(row) for row in lens.top_probs[layer]], dtype=torch.float64))
    return out


def _assert_distribution(lens: LogitLens, layer: int, logits: torch.Tensor) -> None:
    """The lens's layer holds softmax(logits (T, V)) to float noise, sorted, with its entropy."""
    p = logits.double().softmax(-1)  # (T, V)
    torch.testing.assert_close(_distribution(lens, layer), p, rtol=0, atol=2e-6)
    top = torch.tensor([list(row) for row in lens.top_probs[layer]], dtype=torch.float64)
    assert bool((top[:, :-1] >= top[:, 1:]).all())  # most probable first
    entropy = -(p * p.log()).sum(-1)
    torch.testing.assert_close(torch.tensor(lens.entropy[layer], dtype=torch.float64), entropy, rtol=0, atol=1e-5)


# --- the last layer is the model's own distribution ---------------------------------------------------------
@pytest.mark.parametrize("name", list(HF_READOUT))
def test_the_last_layer_is_the_hf_models_own_distribution(name):
    model = _hf(name)
    lens = logit_lens(model, IDS, top_k=V)
    with torch.no_grad():
        logits = model(IDS[None]).logits[0]  # (T, V)
    assert lens.readout == HF_READOUT[name][2]
    assert lens.final_gap <= 1e-4 * max(1.0, float(logits.abs().max()))
    _assert_distribution(lens, lens.n_layers - 1, logits)
    assert lens.n_layers == model.config.num_hidden_layers + 1 and lens.layers[0] == "embeddings"


def test_gemma2s_soft_cap_is_applied_and_needed():
    model = _hf("gemma2")
    with torch.no_grad():
        logits = model(IDS[None]).logits[0]
        raw = model.lm_head(model.model.norm(model(IDS[None], output_hidden_states=True).hidden_states[-1]))
    assert float(logits.abs().max()) <= 30 and float(raw.abs().max()) > 60  # the cap changes these logits
    lens = logit_lens(model, IDS, top_k=V)
    _assert_distribution(lens, lens.n_layers - 1, logits)


def test_the_last_layer_is_the_workbench_models_own_distribution():
    torch.manual_seed(0)
    model = wb.TransformerLM(wb.ModelConfig.preset("tiny").replace(init_std=0.3)).eval()
    lens = logit_lens(model, IDS, top_k=model.config.vocab_size)
    with torch.no_grad():
        logits = model(IDS[None])[0]
    assert lens.readout == "ln_f → lm_head" and lens.layers[1:] == ("blocks.0", "blocks.1")
    _assert_distribution(lens, lens.n_layers - 1, logits)


# --- hand-written models ---------------------------------------------------------------------------------------
C, CONTEXT, HAND_VOCAB = 32, 16, 64


class HandBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.c_attn, self.c_proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
        self.mlp = nn.Sequential(nn.Linear(C, 4 * C), nn.GELU(), nn.Linear(4 * C, C))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        B, T, _ = x.shape
        q, k, v = (t.view(B, T, 4, C // 4).transpose(1, 2) for t in self.c_attn(self.ln_1(x)).split(C, dim=2))
        x = x + self.c_proj(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C))
        return x + self.mlp(self.ln_2(x))


class NanoGPT(nn.Module):
    """nanoGPT's layout: `transformer.h`, `ln_f`, a tied `lm_head`, `(logits, loss)`, the last position only
    without targets."""

    def __init__(self) -> None:
        super().__init__()
        self.transformer = nn.ModuleDict(dict(wte=nn.Embedding(HAND_VOCAB, C), wpe=nn.Embedding(CONTEXT, C),
                                              h=nn.ModuleList(HandBlock() for _ in range(3)), ln_f=nn.LayerNorm(C)))
        self.lm_head = nn.Linear(C, HAND_VOCAB, bias=False)
        self.lm_head.weight = self.transformer.wte.weight

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        t = self.transformer
        x = t.wte(idx) + t.wpe(torch.arange(idx.shape[1]))
        for block in t.h:
            x = block(x)
        x = t.ln_f(x)
        if targets is None:
            return self.lm_head(x[:, [-1], :]), None
        logits = self.lm_head(x)
        return logits, F.cross_entropy(logits.view(-1, HAND_VOCAB), targets.view(-1))

    def by_hand(self, idx: torch.Tensor, layers: int) -> torch.Tensor:
        """Logits (T, V) of the residual after `layers` blocks, decoded through ln_f and the tied head."""
        t = self.transformer
        x = t.wte(idx) + t.wpe(torch.arange(idx.shape[1]))
        for block in t.h[:layers]:
            x = block(x)
        return self.lm_head(t.ln_f(x))[0]


class MatmulHeadGPT(nn.Module):
    """A head written as `x @ wte.weight.t()` (no head module) and a final `Squash` that is no norm by name or
    type, so neither can be found; and `plain=True`: no final norm at all."""

    class Squash(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tanh(x) * 2

    def __init__(self, plain: bool = False) -> None:
        super().__init__()
        self.wte = nn.Embedding(HAND_VOCAB, C)
        self.h = nn.ModuleList(HandBlock() for _ in range(2))
        self.final = nn.Identity() if plain else self.Squash()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.wte(input_ids)
        for block in self.h:
            x = block(x)
        return self.final(x) @ self.wte.weight.t()  # (B, T, V)


def _hand(cls: type[nn.Module], **kwargs: object) -> nn.Module:
    torch.manual_seed(0)
    return cls(**kwargs).eval()


HAND_IDS = torch.tensor([3, 14, 15, 9, 26, 5, 35])


def test_a_nanogpt_style_model_is_lensed_at_every_layer():
    model = _hand(NanoGPT)
    lens = logit_lens(model, HAND_IDS, top_k=HAND_VOCAB)
    assert lens.readout == "transformer.ln_f → lm_head"
    assert lens.layers == ("embeddings", "transformer.h.0", "transformer.h.1", "transformer.h.2")
    with torch.no_grad():
        for layer in range(lens.n_layers):
            _assert_distribution(lens, layer, model.by_hand(HAND_IDS[None], layer))


def test_a_head_that_is_no_module_is_named_by_the_user():
    model = _hand(MatmulHeadGPT, plain=True)
    with pytest.raises(InterventionError, match="no output head found.*head='module name'"):
        logit_lens(model, HAND_IDS)
    lens = logit_lens(model, HAND_IDS, head="wte", top_k=HAND_VOCAB)  # the tied table, used as x @ weight.t()
    with torch.no_grad():
        logits = model(HAND_IDS[None])[0]
    assert lens.readout == "no norm → wte" and lens.norm is None
    _assert_distribution(lens, lens.n_layers - 1, logits)


def test_a_final_step_that_is_not_found_is_refused_then_named_by_the_user():
    model = _hand(MatmulHeadGPT)
    with pytest.raises(InterventionError, match="does not reproduce the model's logits.*Pass norm='module name'"):
        logit_lens(model, HAND_IDS, head="wte")
    lens = logit_lens(model, HAND_IDS, head="wte", norm="final", top_k=HAND_VOCAB)
    with torch.no_grad():
        logits = model(HAND_IDS[None])[0]
    _assert_distribution(lens, lens.n_layers - 1, logits)


# --- middle layers: the hidden states decoded by hand ------------------------------------------------------
@pytest.mark.parametrize("name", ["llama", "gpt2", "gpt_neox", "opt", "falcon", "phi"])
def test_each_layer_is_the_hf_hidden_state_through_norm_and_head_by_hand(name):
    model = _hf(name)
    norm, head = (model.get_submodule(n) for n in HF_READOUT[name][:2])
    lens = logit_lens(model, IDS, top_k=V)
    with torch.no_grad():
        hidden = model(IDS[None], output_hidden_states=True).hidden_states  # L+1; the last one is normed
        for layer in range(lens.n_layers - 1):
            _assert_distribution(lens, layer, head(norm(hidden[layer]))[0])


# --- the readings agree with each other ---------------------------------------------------------------------
def test_top_k_ranks_and_probabilities_agree():
    model = _hf("llama")
    lens = logit_lens(model, IDS, top_k=4)
    full = logit_lens(model, IDS, top_k=V)
    for layer in range(lens.n_layers):
        p = _distribution(full, layer)  # (T, V)
        for pos in range(lens.n_positions):
            target = lens.targets[pos]
            assert list(lens.top_ids[layer][pos]) == list(full.top_ids[layer][pos][:4])
            if target is None:
                assert lens.target_probs[layer][pos] is None and lens.target_ranks[layer][pos] is None
                continue
            prob, rank = lens.target_probs[layer][pos], lens.target_ranks[layer][pos]
            assert prob == pytest.approx(float(p[pos, target]), abs=1e-6)
            assert rank == 1 + int((p[pos] > p[pos, target] + 1e-9).sum())
            assert (target in lens.top_ids[layer][pos]) == (rank <= 4)
            if rank <= 4:
                assert lens.top_ids[layer][pos][rank - 1] == target
                assert lens.top_probs[layer][pos][rank - 1] == pytest.approx(prob, abs=1e-7)


def test_targets_default_to_the_next_token_or_are_given():
    model = _hf("llama")
    lens = logit_lens(model, IDS)
    assert lens.targets == (*IDS[1:].tolist(), None)
    given = logit_lens(model, IDS[None], target=42, top_k=3)  # (1, T) ids too
    assert given.targets == (42,) * len(IDS)
    full = logit_lens(model, IDS, top_k=V)
    for layer in range(given.n_layers):
        assert given.target_probs[layer] == pytest.approx(_distribution(full, layer)[:, 42].tolist(), abs=1e-6)


def test_text_ids_and_targets_with_a_tokenizer(chars):
    torch.manual_seed(0)
    model = wb.TransformerLM(wb.ModelConfig.preset("tiny").replace(init_std=0.3)).eval()
    lens = logit_lens(model, "hello", tokenizer=chars, target="l", top_k=3)
    assert lens.ids == tuple(chars.encode("hello")) and lens.tokens == tuple("hello")
    assert lens.targets == (chars.encode("l")[0],) * 5 and lens.target_texts == ("l",) * 5
    assert lens.top_texts is not None
    assert lens.top_texts[1][2] == tuple(chars.decode([i]) for i in lens.top_ids[1][2])


def test_first_layer_in_top_and_the_dataframe():
    model = _hf("llama")
    lens = logit_lens(model, IDS, target=0, top_k=5)
    ranks = [row[-1] for row in lens.target_ranks]
    first = lens.first_layer_in_top(5)
    if ranks[-1] > 5:
        assert first is None
    else:
        assert first is not None and all(r <= 5 for r in ranks[first:]) and (first == 0 or ranks[first - 1] > 5)
    assert lens.first_layer_in_top(V) == 0  # every token is in the top V everywhere
    frame = lens.to_dataframe()
    assert len(frame) == lens.n_layers * lens.n_positions
    row = frame[(frame.layer == 2) & (frame.position == 3)].iloc[0]
    assert row.module == "model.layers.1" and row.target_rank == lens.target_ranks[2][3]
    assert row.top1_id == lens.top_ids[2][3][0] and row.entropy == lens.entropy[2][3]


# --- bad input and restoration -----------------------------------------------------------------------------
def test_bad_input_is_refused_with_the_fix(chars):
    model = _hf("llama")
    with pytest.raises(InterventionError, match=r"token id 128 is outside the model's vocabulary \[0, 128\)"):
        logit_lens(model, [1, 128])
    with pytest.raises(InterventionError, match="token id -1 is outside"):
        logit_lens(model, [1, -1])
    with pytest.raises(InterventionError, match=r"target=500 is outside the vocabulary \[0, 128\)"):
        logit_lens(model, IDS, target=500)
    with pytest.raises(InterventionError, match="encodes to 2 tokens"):
        logit_lens(model, IDS, tokenizer=chars, target="ab")
    with pytest.raises(InterventionError, match="pass tokenizer="):
        logit_lens(model, IDS, target="a")
    for k in (0, -3, True, 2.5):
        with pytest.raises(InterventionError, match="top_k=.*1 or more"):
            logit_lens(model, IDS, top_k=k)  # type: ignore[arg-type]
    with pytest.raises(InterventionError, match="one sequence.*Lens one row of a batch at a time"):
        logit_lens(model, IDS.repeat(2, 1))
    with pytest.raises(InterventionError, match="norm='model.nrom'.*Did you mean 'model.norm'"):
        logit_lens(model, IDS, norm="model.nrom")


def test_nothing_is_left_hooked_and_the_forward_is_unchanged():
    model = _hf("gpt2")
    before = _hooks()
    with torch.no_grad():
        expected = model(IDS[None]).logits
    logit_lens(model, IDS)
    with pytest.raises(InterventionError):
        logit_lens(model, IDS, head="wte", norm="transformer.h.0")  # refused after its forward
    assert _hooks() == before
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(IDS[None]).logits, expected)


def test_the_adapter_finds_the_final_norm_by_behaviour():
    assert ModelAdapter(_hand(NanoGPT)).final_norm()[0] == "transformer.ln_f"  # type: ignore[index]
    assert ModelAdapter(_hand(MatmulHeadGPT, plain=True)).final_norm() is None  # no norm at all
    assert ModelAdapter(_hand(MatmulHeadGPT)).final_norm() is None  # a squash that is no norm
    for name in ("llama", "gpt2", "gpt_neox", "opt", "falcon", "phi", "gemma2", "cohere", "granite"):
        found = ModelAdapter(_hf(name)).final_norm()
        assert found is not None and found[0] == HF_READOUT[name][0], name


# --- SmolLM2 --------------------------------------------------------------------------------------------------
def test_smollm2_finds_paris_at_the_last_layer(smollm2):
    model, tok = smollm2
    lens = logit_lens(model, "The capital of France is", tokenizer=tok, target=" Paris", top_k=5)
    assert lens.top_texts is not None and lens.top_texts[-1][-1][0] == " Paris"
    ranks = [row[-1] for row in lens.target_ranks]  # measured: 4316 at the embeddings, 2079 at layer 23, 396 at
    assert ranks[-1] == 1 and min(ranks[:24]) > 1000 and ranks[24] < 1000  # 24, then 92, 113, 34, 7, 3, 1
    assert ranks[28] > 5 >= ranks[29] and lens.first_layer_in_top(5) == 29  # enters the top 5 at layer 29 of 30
    assert lens.final_gap == 0.0  # the lens at the last layer runs the model's own ln_f and lm_head
