"""Edits on any causal LM (`workbench.lm.edits`), each against the same edit done by hand: a torch hook on the
module, a head's slice of the output projection's input zeroed in a pre-hook, attention recomputed by hand
with the knocked-out keys masked (transformers' attention interface, the workbench model's own hook sites, a
hand-written model's own mask). HF families run with their real code from tests/hfzoo.py."""

from __future__ import annotations

import math
from typing import Any

import hfzoo
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.masking_utils import eager_mask

import workbench as wb
from workbench.errors import InterventionError
from workbench.lm import returned_cache
from workbench.lm.edits import active_edits
from workbench.lm.intercept import innermost

IDS = torch.tensor([[5, 9, 3, 7, 11, 2, 8, 4], [6, 1, 12, 30, 3, 5, 40, 9]])  # (B=2, T=8), past mistral's window
FAMILIES = ("llama", "gpt2", "mistral", "qwen2", "gpt_neox", "falcon", "mixtral")
PROJECTION = {  # layer 1's output projection, named by hand per family
    "llama": "model.layers.1.self_attn.o_proj", "gpt2": "transformer.h.1.attn.c_proj",
    "mistral": "model.layers.1.self_attn.o_proj", "qwen2": "model.layers.1.self_attn.o_proj",
    "gpt_neox": "gpt_neox.layers.1.attention.dense", "falcon": "transformer.h.1.self_attention.dense",
    "mixtral": "model.layers.1.self_attn.o_proj", "workbench": "blocks.1.attn.out", "nanogpt": "blocks.1.attn.c_proj",
}
BLOCK = {"llama": "model.layers.0", "gpt2": "transformer.h.0", "mistral": "model.layers.0",
         "qwen2": "model.layers.0", "gpt_neox": "gpt_neox.layers.0", "falcon": "transformer.h.0",
         "mixtral": "model.layers.0", "workbench": "blocks.0", "nanogpt": "blocks.0"}


# --- a hand-written nanoGPT-style model: SDPA ("flash") or a hand-written softmax, and its own knockout ---


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, flash: bool) -> None:
        super().__init__()
        self.c_attn, self.c_proj = nn.Linear(n_embd, 3 * n_embd), nn.Linear(n_embd, n_embd)
        self.n_head, self.flash = n_head, flash
        self.knock: tuple[torch.Tensor, str] | None = None  # (bool (1, H, T, T), "probs" | "scores"): the reference

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        if self.flash:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            att = att.masked_fill(torch.ones(T, T, dtype=torch.bool).tril().logical_not(), float("-inf"))
            if self.knock is not None and self.knock[1] == "scores":
                att = att.masked_fill(self.knock[0], float("-inf"))
            att = F.softmax(att, dim=-1)
            if self.knock is not None and self.knock[1] == "probs":
                att = att.masked_fill(self.knock[0], 0.0)
            y = att @ v
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, flash: bool) -> None:
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(n_embd), nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, flash)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class NanoConfig:
    n_head, n_embd, n_layer, vocab_size, block_size = 4, 32, 2, 64, 32


class NanoGPT(nn.Module):
    def __init__(self, flash: bool) -> None:
        super().__init__()
        c = self.config = NanoConfig()
        self.wte, self.wpe = nn.Embedding(c.vocab_size, c.n_embd), nn.Embedding(c.block_size, c.n_embd)
        self.blocks = nn.ModuleList(Block(c.n_embd, c.n_head, flash) for _ in range(c.n_layer))
        self.ln_f, self.lm_head = nn.LayerNorm(c.n_embd), nn.Linear(c.n_embd, c.vocab_size, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


_MODELS: dict[tuple[str, str], nn.Module] = {}


def build(name: str, attn: str = "sdpa") -> nn.Module:
    """The same weights for each (name, attn): HF families from hfzoo, the workbench model, nanoGPT."""
    key = (name, attn)
    if key not in _MODELS:
        if name == "workbench":
            torch.manual_seed(0)
            model = wb.TransformerLM(wb.ModelConfig.preset("tiny").replace(vocab_size=64, max_seq_len=32, d_model=32,
                                                                           d_ff=64, n_kv_heads=2)).eval()
            for block in model.blocks:
                block.attn.impl = attn if attn == "eager" else "auto"
        elif name == "nanogpt":
            torch.manual_seed(0)
            model = NanoGPT(flash=attn == "sdpa").eval()
        else:
            model = hfzoo.build(name, attn=attn)
            assert model.config._attn_implementation == attn
        _MODELS[key] = model
    return _MODELS[key]


def logits(model: nn.Module, ids: torch.Tensor = IDS) -> torch.Tensor:
    with torch.no_grad():
        out = model(ids)
    return out if isinstance(out, torch.Tensor) else out.logits


def hooked(module: nn.Module, *, pre: Any = None, post: Any = None) -> Any:
    """A by-hand torch hook on `module`, removed by the caller."""
    return module.register_forward_pre_hook(pre) if pre is not None else module.register_forward_hook(post)


def run_with(model: nn.Module, name: str, **hook: Any) -> torch.Tensor:
    handle = hooked(model.get_submodule(name), **hook)
    try:
        return logits(model)
    finally:
        handle.remove()


ALL = FAMILIES + ("workbench", "nanogpt")


# --- heads ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("name", ALL)
def test_zeroing_a_head_equals_zeroing_its_slice_of_the_projection_input_by_hand(name, attn):
    model = build(name, attn)
    H = 4
    D = model.get_submodule(PROJECTION[name]).weight.shape[0 if name == "gpt2" else 1] // H  # Conv1D is (in, out)

    def zero_head_2(_m: nn.Module, args: tuple) -> tuple:
        x = args[0].clone()
        x[1:2, 3:6, 2 * D:3 * D] = 0  # row 1, positions 3..5
        return (x, *args[1:])

    expected = run_with(model, PROJECTION[name], pre=zero_head_2)
    with wb.edit(model, wb.ZeroHead(1, 2, positions=[3, 4, 5], rows=[1])):
        got = logits(model)
    assert torch.equal(got, expected)
    assert not torch.equal(got, logits(model))  # the head mattered


@pytest.mark.parametrize("name", ["workbench", "llama", "gpt2", "nanogpt"])
def test_a_whole_head_zeroed_equals_its_slice_zeroed_by_hand_and_leaves_the_callers_tensor(name):
    """The path for every row and position: zeroed in place in a copy, through the process-wide pre-hook (no
    hook of the projection's own); the tensor the attention handed over (which a record may hold) is kept."""
    model = build(name)
    proj = model.get_submodule(PROJECTION[name])
    H = 4
    D = proj.weight.shape[0 if name == "gpt2" else 1] // H

    def zero_head_1(_m: nn.Module, args: tuple) -> tuple:
        x = args[0].clone()
        x[..., D:2 * D] = 0
        return (x, *args[1:])

    expected = run_with(model, PROJECTION[name], pre=zero_head_1)
    given: list[torch.Tensor] = []  # what the projection ran on
    with wb.edit(model, wb.ZeroHead(1, 1)):
        assert not proj._forward_pre_hooks  # served by the interception's process-wide pre-hook
        grab = proj.register_forward_hook(lambda _m, args, _o: given.append(args[0]))
        try:
            got = logits(model)
        finally:
            grab.remove()
    assert torch.equal(got, expected)
    assert float(given[0][..., D:2 * D].abs().max()) == 0.0  # the projection read the zeroed copy
    if name == "workbench":  # hook_z hands the projection its own output tensor: a record of it is kept as it was
        held: list[torch.Tensor] = []
        grab = model.get_submodule("blocks.1.attn.hook_z").register_forward_hook(lambda _m, _a, o: held.append(o))
        try:
            with wb.edit(model, wb.ZeroHead(1, 1)):
                logits(model)
        finally:
            grab.remove()
        assert float(held[0][..., D:2 * D].abs().max()) > 0.0


def test_attention_layers_are_found_again_when_the_model_changes():
    from workbench.lm.heads import attention_layers

    model = build("workbench")
    first = attention_layers(model)
    assert attention_layers(model) == first  # kept: the same answer
    old = model.blocks[1].attn.out
    try:
        model.blocks[1].attn.out = nn.Linear(old.in_features // 2, old.out_features)  # a narrower projection
        assert attention_layers(model)[1].head_dim == first[1].head_dim // 2  # found again: H heads of D/2
    finally:
        model.blocks[1].attn.out = old
    assert attention_layers(model) == first
    model.blocks.append(model.blocks[0])
    try:
        assert len(attention_layers(model)) == len(first) + 1
    finally:
        del model.blocks[len(first)]
    assert attention_layers(model) == first


@pytest.mark.parametrize("name", ALL)
def test_patching_a_module_or_a_head_with_its_own_clean_activation_changes_nothing(name):
    model = build(name)
    clean = logits(model)
    seen: dict[str, torch.Tensor] = {}
    proj = model.get_submodule(PROJECTION[name])
    handles = [model.get_submodule(BLOCK[name]).register_forward_hook(lambda _m, _a, o: seen.setdefault("block", o)),
               proj.register_forward_pre_hook(lambda _m, a: seen.setdefault("z", a[0]))]
    try:
        logits(model)
    finally:
        for h in handles:
            h.remove()
    block_out = seen["block"] if isinstance(seen["block"], torch.Tensor) else seen["block"][0]
    z = seen["z"].unflatten(-1, (4, -1))[:, :, 1]  # (B, T, D) head 1 of layer 1
    with wb.edit(model, wb.Replace(BLOCK[name], block_out), wb.ReplaceHead(1, 1, z)):
        patched = logits(model)
    assert torch.equal(patched, clean)
    with wb.edit(model, wb.Replace(BLOCK[name], block_out, positions=[2], rows=[0])):
        assert torch.equal(logits(model), clean)


# --- attention knockouts -------------------------------------------------------------------------------

KNOCK: dict[str, Any] = {}  # layer index -> (bool (1, H, T, S), mode), read by the by-hand attention below


def by_hand_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                      **_: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' attention interface, written out: q (B, H, T, D), k and v (B, K, S, D)."""
    H, K = query.shape[1], key.shape[1]
    key, value = key.repeat_interleave(H // K, dim=1), value.repeat_interleave(H // K, dim=1)  # (B, H, S, D)
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    s = (query @ key.transpose(-2, -1)) * scale  # (B, H, T, S)
    if attention_mask is not None:
        m = attention_mask[..., : s.shape[-1]]
        s = s.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else s + m
    knock = KNOCK.get(module.layer_idx)
    if knock is not None and knock[1] == "scores":
        s = s.masked_fill(knock[0], float("-inf"))
    p = torch.softmax(s.float(), dim=-1).to(query.dtype)
    if knock is not None and knock[1] == "probs":
        p = p.masked_fill(knock[0], 0.0)
    return (p @ value).transpose(1, 2).contiguous(), p


AttentionInterface.register("workbench_by_hand", by_hand_attention)
AttentionMaskInterface.register("workbench_by_hand", eager_mask)


def knocked(H: int = 4, T: int = 8) -> torch.Tensor:
    """(1, H, T, T) keys 0 and 2 knocked out for queries 4 and 6, heads 1 and 3."""
    m = torch.zeros(1, H, T, T, dtype=torch.bool)
    for h in (1, 3):
        for q in (4, 6):
            m[0, h, q, [0, 2]] = True
    return m


KNOCKOUT = dict(keys=[0, 2], queries=[4, 6], heads=[1, 3])


def reference(name: str, on: str | None) -> torch.Tensor:
    """Logits with layer 1's knockout computed by hand, through a model's own code paths."""
    if name == "workbench":
        model = build(name, "eager")
        if on is None:
            return logits(model)
        site = "blocks.1.attn.hook_scores" if on == "scores" else "blocks.1.attn.hook_pattern"
        fill = float("-inf") if on == "scores" else 0.0
        return run_with(model, site, post=lambda _m, _a, x: x.masked_fill(knocked(), fill))
    if name == "nanogpt":
        model = build(name, "eager")
        attn = model.blocks[1].attn
        attn.knock = (knocked(), on) if on else None
        try:
            return logits(model)
        finally:
            attn.knock = None
    model = build(name, "workbench_by_hand")
    KNOCK.clear()
    if on is not None:
        KNOCK[1] = (knocked(), on)
    try:
        return logits(model)
    finally:
        KNOCK.clear()


BY_HAND = ("llama", "gpt2", "mistral", "qwen2", "gpt_neox", "mixtral", "workbench", "nanogpt")


@pytest.mark.parametrize("on", ["probs", "scores"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("name", BY_HAND)
def test_a_knockout_equals_the_masked_attention_computed_by_hand(name, attn, on):
    model = build(name, attn)
    assert torch.allclose(reference(name, None), logits(model), atol=1e-5)  # the by-hand attention is the model's
    with wb.edit(model, wb.Knockout(1, **KNOCKOUT, on=on)):
        got = logits(model)
    expected = reference(name, on)
    assert torch.allclose(got, expected, atol=1e-5), float((got - expected).abs().max())
    assert not torch.allclose(got, logits(model), atol=1e-3)  # the knockout mattered
    assert torch.equal(logits(model), build(name, attn)(IDS) if name in ("workbench", "nanogpt")
                       else build(name, attn)(IDS).logits)  # and is gone


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_a_knockout_on_multi_query_falcon_agrees_across_its_attention_paths(attn):
    """Falcon (one key/value head) has no attention interface to write by hand: its SDPA and eager paths, both
    edited, agree, and knocking out keys a query cannot see (the future) changes nothing."""
    model = build("falcon", attn)
    clean = logits(model)
    with wb.edit(model, wb.Knockout(1, keys=[0, 2], queries=[4, 6], on="scores")):
        got = logits(model)
    with wb.edit(build("falcon", "eager"), wb.Knockout(1, keys=[0, 2], queries=[4, 6], on="scores")):
        eager = logits(build("falcon", "eager"))
    assert torch.allclose(got, eager, atol=1e-5) and not torch.allclose(got, clean, atol=1e-4)
    with wb.edit(model, wb.Knockout(0, keys=[7], queries=[3]), wb.Knockout(1, keys=[5], queries=[1], on="scores")):
        assert torch.allclose(logits(model), clean, atol=1e-6)


# --- module outputs ------------------------------------------------------------------------------------


def test_module_edits_equal_the_same_edits_by_hand():
    model = build("workbench")
    site = "blocks.0.mlp"
    v = torch.linspace(-1, 1, 32)
    cases: list[tuple[Any, Any]] = [
        (wb.Zero(site), lambda x: torch.zeros_like(x)),
        (wb.Scale(site, 3.0, positions=[1, -1]), lambda x: torch.cat((x[:, :1], 3.0 * x[:, 1:2], x[:, 2:7],
                                                                       3.0 * x[:, 7:]), 1)),
        (wb.Add(site, v, rows=1), lambda x: x + v * torch.tensor([0.0, 1.0])[:, None, None]),
        (wb.Apply(site, torch.tanh, rows=[0], positions=[2]), lambda x: x.index_put((torch.tensor([0]),
                                                                                    torch.tensor([2])),
                                                                                   torch.tanh(x[0, 2]))),
        (wb.Replace(site, v), lambda x: v.expand_as(x)),
    ]
    for spec, by_hand in cases:
        expected = run_with(model, site, post=lambda _m, _a, x, f=by_hand: f(x))
        with wb.edit(model, spec):
            assert torch.equal(logits(model), expected), spec.label


def test_mean_ablation_replaces_the_output_with_its_mean_over_the_reference_batch():
    model = build("llama")
    reference = torch.tensor([[3, 4, 5, 6], [7, 8, 9, 10], [11, 12, 13, 14]])
    seen: list[torch.Tensor] = []
    run_with(model, "model.layers.0.mlp", post=lambda _m, _a, x: seen.append(x))  # warm
    seen.clear()
    handle = model.model.layers[0].mlp.register_forward_hook(lambda _m, _a, x: seen.append(x))
    try:
        with torch.no_grad():
            model(reference)
    finally:
        handle.remove()
    mean = seen[0].mean(dim=(0, 1))
    expected = run_with(model, "model.layers.0.mlp", post=lambda _m, _a, x: mean.expand_as(x))
    with wb.edit(model, wb.MeanAblate("model.layers.0.mlp", reference)):
        assert torch.allclose(logits(model), expected, atol=1e-6)


def test_containers_keep_everything_but_the_edited_hidden_state():
    llama = build("llama")
    with wb.edit(llama, wb.Zero("model")):  # a BaseModelOutputWithPast: the hidden state, then its cache
        out = llama(IDS, use_cache=True)
    assert torch.equal(out.logits, torch.zeros_like(out.logits)) and returned_cache(out) is not None

    class Pair(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[str, torch.Tensor, torch.Tensor]:
            return "tag", x + 1, x

    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pair = Pair()

        def forward(self, x: torch.Tensor) -> Any:
            return self.pair(x)

    outer, x = Outer(), torch.ones(2, 3, 4)
    with wb.edit(outer, wb.Scale("pair", 2.0, positions=[0])):
        tag, first, second = outer(x)
    assert tag == "tag" and torch.equal(second, x)
    assert torch.equal(first[:, 0], 4 * torch.ones(2, 4)) and torch.equal(first[:, 1:], 2 * torch.ones(2, 2, 4))


def test_edits_compose_in_order_and_nest_outermost_first():
    model = build("workbench")
    site = "blocks.0.mlp"
    v = torch.full((32,), 0.5)
    expected = run_with(model, site, post=lambda _m, _a, x: (x * 2.0) + v)
    with wb.edit(model, wb.Scale(site, 2.0), wb.Add(site, v)):
        assert torch.equal(logits(model), expected)
    with wb.edit(model, wb.Scale(site, 2.0)), wb.edit(model, wb.Add(site, v)) as inner:
        assert torch.equal(logits(model), expected)
        assert [e.label for e in active_edits(model)] == ["Scale(module=blocks.0.mlp, factor=2.0)",
                                                          f"Add(module=blocks.0.mlp, value=tensor{(32,)})"]
        assert len(inner) == 1 and isinstance(inner[0], wb.Add)
    assert active_edits(model) == ()


@pytest.mark.parametrize("order", ["trace inside", "trace around"])
def test_a_trace_records_the_edited_forward(order):
    model = build("workbench")
    site = "blocks.0.mlp"
    seen: list[torch.Tensor] = []
    run_with(model, site, post=lambda _m, _a, x: seen.append(3.0 * x))
    scaled = seen[0]
    edit = wb.edit(model, wb.Scale(site, 3.0), wb.Knockout(1, keys=[0], queries=[3, 5]))
    with torch.no_grad():
        if order == "trace inside":
            with edit, wb.trace(model, attention=True) as tr:
                model(IDS)
        else:
            with wb.trace(model, attention=True) as tr, edit:
                model(IDS)
    stats = tr.find(site)[0].out_stats
    assert stats is not None
    assert math.isclose(stats.mean, float(scaled.mean()), rel_tol=1e-5)
    assert math.isclose(stats.absmax, float(scaled.abs().max()), rel_tol=1e-6)
    layer1 = [a for a in tr.attention if a.module == "blocks.1.attn"][0]
    assert layer1.map is not None
    assert float(layer1.map[:, :, [3, 5], 0].abs().max()) == 0.0 and float(layer1.map[:, :, 4, 0].min()) > 0


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_edits_are_always_restored(error):
    model = build("llama")
    clean = logits(model)
    glob = nn.modules.module
    softmax, sdpa = torch.softmax, F.scaled_dot_product_attention
    with pytest.raises(error):
        with wb.edit(model, wb.Zero("model.layers.0.mlp"), wb.ZeroHead(0, 1), wb.Knockout(1, keys=[0])):
            logits(model)
            raise error("stop")
    assert torch.equal(logits(model), clean) and active_edits(model) == () and innermost() is None
    assert not glob._global_forward_hooks and not glob._global_forward_pre_hooks
    assert torch.softmax is softmax and F.scaled_dot_product_attention is sdpa
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


# --- generation ----------------------------------------------------------------------------------------


class Chars:
    eos_token_id = None

    def encode(self, text: str) -> list[int]:
        return [3 + ord(c) % 50 for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(97 + i % 26) for i in ids)


@pytest.mark.parametrize("name", ["workbench", "llama"])
def test_a_steering_edit_steers_generation_as_a_hooked_run_does(name):
    model = build(name)
    block = "blocks.0" if name == "workbench" else "model.layers.0"
    steer = torch.randn(32, generator=torch.Generator().manual_seed(1)) * 4
    prompt = IDS[:1, :5]
    handle = model.get_submodule(block).register_forward_hook(lambda _m, _a, x: x + steer)
    try:
        by_hand = wb.generate(model, prompt, max_new_tokens=6, fast=False).sequences
    finally:
        handle.remove()
    clean = wb.generate(model, prompt, max_new_tokens=6, fast=False).sequences
    assert not torch.equal(by_hand, clean)  # the steering vector changes the greedy tokens
    with wb.edit(model, wb.Add(block, steer)):
        assert torch.equal(wb.generate(model, prompt, max_new_tokens=6, fast=False).sequences, by_hand)
        session = wb.GenerationSession(model, Chars(), prompt[0], max_new_tokens=6)
        session.run(6)
    assert session.generated_ids == by_hand[0, 5:].tolist()
    assert session.history[0].edits == (f"Add(module={block}, value=tensor(32,))",)
    own = wb.GenerationSession(model, Chars(), prompt[0], max_new_tokens=6, edits=[wb.Add(block, steer)])
    own.run(6)  # the session's own edits, applied at every step without an enclosing block
    assert own.generated_ids == by_hand[0, 5:].tolist() and own.history[-1].edits == session.history[0].edits


# --- bad input -----------------------------------------------------------------------------------------


def test_bad_edits_are_refused_with_the_fix():
    model = build("llama")
    cases: list[tuple[Any, str]] = [
        (wb.Zero("model.layer.0.mlp"), r"no module named 'model\.layer\.0\.mlp'.*model\.layers\.0\.mlp"),
        (wb.ZeroHead(0, 4), r"head 4 is past layer 0's 4 heads; name a head in 0\.\.3"),
        (wb.ZeroHead(2, 0), r"layer 2 is past the model's 2 layers; name a layer in 0\.\.1"),
        (wb.Knockout(0, keys=[0], heads=[9]), r"head 9 is past layer 0's 4 heads"),
        (wb.Knockout(5, keys=[0]), r"layer 5 is past the model's 2 layers"),
        (wb.Zero("model.layers.0.mlp", positions=[8]), r"position 8 .* outside the sequence .* of 8.*0\.\.7"),
        (wb.Zero("model.layers.0.mlp", rows=[2]), r"batch row 2 .* outside the batch .* of 2"),
        (wb.Knockout(0, keys=[9]), r"key position 9 .* outside the keys of 8"),
        (wb.Replace("model.layers.0.mlp", torch.zeros(8, 31)), r"value shaped \(8, 31\).*without changing its shape"),
        (wb.Apply("model.layers.0.mlp", lambda x: x[:, :1]), r"would change .* from \(2, 8, 32\) to \(2, 1, 32\)"),
    ]
    for spec, message in cases:
        with pytest.raises(InterventionError, match=message):
            with wb.edit(model, spec):
                logits(model)
        assert innermost() is None and active_edits(model) == ()
    with pytest.raises(InterventionError, match="edit specs"):
        with wb.edit(model, "model.layers.0"):  # type: ignore[arg-type]
            pass
    for bad in (lambda: wb.Zero("m", positions="1"), lambda: wb.Scale("m", "2"), lambda: wb.ZeroHead(0, True),
                lambda: wb.Knockout(0, keys=[0], on="logits"), lambda: wb.MeanAblate("m", torch.zeros(3))):
        with pytest.raises(InterventionError):
            bad()


def test_a_non_tensor_output_is_refused():
    class Tagger(nn.Module):
        def forward(self, x: torch.Tensor) -> str:
            return "tag"

    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tag = Tagger()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.tag(x)
            return x

    outer = Outer()
    with pytest.raises(InterventionError, match=r"tag returned str, which holds no tensor .* edit a submodule"):
        with wb.edit(outer, wb.Zero("tag")):
            outer(torch.ones(1))
