"""The doctor's probes are clients of the interception layer: module outputs and the first divergence come
from module-output observers, attention scores are attributed to the module the layer names as running, the
host-device check sees the calls made inside a block, and nothing is left hooked, also when a forward raised."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from workbench.doctor.attention_scores import STRESS, AttentionScores
from workbench.doctor.checks_structure import HostDevice
from workbench.doctor.probes import first_divergence, module_outputs
from workbench.lm import ModelAdapter
from workbench.lm.intercept import intercept

C, H, V = 8, 2, 16


class Attention(nn.Module):
    def __init__(self, scale: float | None = None) -> None:
        super().__init__()
        self.qkv, self.proj, self.scale = nn.Linear(C, 3 * C), nn.Linear(C, C), scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.qkv(x).split(C, dim=-1)
        q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    def __init__(self, sync: bool = False) -> None:
        super().__init__()
        self.attn, self.sync = Attention(), sync

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.sync:
            x.sum().item()  # a host sync inside a layer
        return x + self.attn(x)


class Tiny(nn.Module):
    def __init__(self, sync: bool = False) -> None:
        super().__init__()
        self.wte = nn.Embedding(V, C)
        self.blocks = nn.ModuleList([Block(), Block(sync)])
        self.head = nn.Linear(C, V)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.wte(ids)
        for b in self.blocks:
            x = b(x)
        return self.head(x)


IDS = torch.tensor([[3, 1, 4, 1, 5, 9]])


def _left_behind(model: nn.Module) -> tuple[int, int, int, int]:
    mod = nn.modules.module
    own = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    return len(mod._global_forward_hooks), len(mod._global_forward_pre_hooks), own, \
        torch._C._len_torch_function_stack()


@pytest.fixture
def tiny() -> Tiny:
    torch.manual_seed(0)
    return Tiny().eval()


def test_module_outputs_are_the_modules_own_outputs(tiny):
    with torch.no_grad():
        outs = module_outputs(tiny, ["blocks.0", "blocks.1.attn"], lambda: tiny(IDS))
        x0 = tiny.blocks[0](tiny.wte(IDS))
        a1 = tiny.blocks[1].attn(x0)
    assert [n for n, _ in outs] == ["blocks.0", "blocks.1.attn"]  # in the order the calls finish
    assert torch.equal(outs[0][1], x0) and torch.equal(outs[1][1], a1)


def test_first_divergence_names_the_block_that_was_changed_with_its_delta(tiny):
    bias = tiny.blocks[1].attn.proj.bias

    def shifted() -> None:  # the second forward with block 1's output projection biased by 0.5
        saved = bias.detach().clone()
        bias.data += 0.5
        try:
            tiny(IDS)
        finally:
            bias.data.copy_(saved)

    sites = [(n, m) for n, m in tiny.named_modules() if n.startswith("blocks.") and n.count(".") == 1]
    with torch.no_grad():
        found = first_divergence(tiny, sites, lambda: tiny(IDS), shifted)
        assert first_divergence(tiny, sites, lambda: tiny(IDS), lambda: tiny(IDS)) is None
    assert found is not None and found[0] == "blocks.1"
    assert found[1] == pytest.approx(0.5, abs=1e-6)  # the residual carries the bias shift as it is


def test_attention_scores_are_attributed_to_the_running_attention_module(tiny):
    tiny.blocks[1].attn.scale = 1.0  # the 1/sqrt(D) left out in the second layer
    watch = AttentionScores(tiny)
    logits = watch.run(ModelAdapter(tiny), IDS, None)
    assert set(watch.seen) == {"blocks.0.attn", "blocks.1.attn"}
    with torch.no_grad():
        assert torch.equal(logits, tiny(IDS))
        x = tiny.wte(IDS)
        for i, block in enumerate(tiny.blocks):
            q, k, _ = block.attn.qkv(x).split(C, dim=-1)
            q, k = (t.view(1, 6, H, C // H).transpose(1, 2) for t in (q, k))
            s = (q @ k.transpose(-2, -1)) * (block.attn.scale or (C // H) ** -0.5)
            expected = float(s.masked_fill(torch.ones(6, 6, dtype=torch.bool).triu(1), 0).abs().max())
            assert watch.seen[f"blocks.{i}.attn"]["max_score"] == pytest.approx(expected, rel=1e-5)
            x = block(x)
    assert watch.seen["blocks.0.attn"]["scale_ratio"] == pytest.approx(1.0, rel=1e-4)
    assert watch.seen["blocks.1.attn"]["scale_ratio"] == pytest.approx((C // H) ** 0.5, rel=1e-4)


def test_a_stressed_run_multiplies_the_named_modules_inputs(tiny):
    watch = AttentionScores(tiny, {id(tiny.blocks[0].attn)})
    got = watch.run(ModelAdapter(tiny), IDS, None)
    with torch.no_grad():
        x = tiny.wte(IDS)
        x = x + tiny.blocks[0].attn(x * STRESS)
        expected = tiny.head(tiny.blocks[1](x))
    assert torch.equal(got, expected)
    assert _left_behind(tiny) == (0, 0, 0, 0)


def test_host_syncs_are_placed_in_their_block(tiny):
    model = Tiny(sync=True).eval()
    seen = HostDevice(["blocks.0", "blocks.1"])
    with torch.no_grad(), intercept(model, seen):
        model(IDS)
    assert seen.events == [("sync", ".item()", "blocks.1", True)]


def test_nothing_is_left_when_a_watched_forward_raises(tiny):
    class Broken(Tiny):
        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            self.blocks[0](self.wte(ids))
            raise ValueError("bad input")

    model = Broken().eval()
    with pytest.raises(ValueError, match="bad input"):
        AttentionScores(model).run(ModelAdapter(model), IDS, None)
    assert _left_behind(model) == (0, 0, 0, 0)
    with pytest.raises(ValueError, match="bad input"):
        first_divergence(model, list(model.named_modules())[1:], lambda: model(IDS), lambda: model(IDS))
    assert _left_behind(model) == (0, 0, 0, 0)
