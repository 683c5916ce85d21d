"""compare's candidate fixes are clients of the interception layer: a fix's `apply()` opens `intercept` on the
candidate with an editor, the rewritten call equals the call made by hand with the fixed arguments, and nothing
(no hook, no function mode, no patch) is left once the block exits, also when it raised."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from workbench.compare import fixes as fx
from workbench.lm.sdpa_call import SdpaCall

B, H, T, D = 2, 2, 5, 4


class Attention(nn.Module):
    """q, k, v (B, H, T, D) given; SDPA with no mask and no causal flag (the bug a mask fix tests)."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v)


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = Attention()
        self.mlp = nn.Sequential(nn.Linear(D, D), nn.SiLU())

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.attn(q, k, v))


def _qkv() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(B, H, T, D, generator=g) for _ in range(3))  # type: ignore[return-value]


def _fix(model: nn.Module, role: str, name: str) -> fx.Fix:
    return next(f for f in fx.function_fixes(model, role, None) if f.name == name)


def _left_behind() -> tuple[int, int, int]:
    mod = nn.modules.module
    return (len(mod._global_forward_hooks), len(mod._global_forward_pre_hooks),
            torch._C._len_torch_function_stack())


def test_a_scale_fix_rewrites_the_sdpa_call_as_it_would_be_written_by_hand():
    model, (q, k, v) = Model(), _qkv()
    with _fix(model, "attention", "scale x 1/sqrt(D)").apply():
        got = model.attn(q, k, v)
    expected = F.scaled_dot_product_attention(q, k, v, scale=D ** -0.5 * D ** -0.5)
    assert torch.equal(got, expected)
    assert torch.equal(model.attn(q, k, v), F.scaled_dot_product_attention(q, k, v))  # restored


def test_a_causal_mask_fix_equals_sdpa_with_the_causal_mask():
    model, (q, k, v) = Model(), _qkv()
    with _fix(model, "attention", "mask: causal").apply():
        got = model.attn(q, k, v)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    assert torch.equal(got, F.scaled_dot_product_attention(q, k, v, attn_mask=causal))
    assert torch.allclose(got, F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=1e-6)


def test_a_padding_fix_hides_the_padded_keys():
    model, (q, k, v) = Model(), _qkv()
    keys = torch.ones(B, T, dtype=torch.long)
    keys[1, :2] = 0  # row 1 left-padded by two
    fix = next(f for f in fx.function_fixes(model, "attention", keys) if f.name == "mask: padding")
    with fix.apply():
        got = model.attn(q, k, v)
    allowed = keys.bool()[:, None, None, :].expand(B, 1, T, T)
    allowed = allowed | ~allowed.any(-1, keepdim=True)
    assert torch.equal(got, F.scaled_dot_product_attention(q, k, v, attn_mask=allowed))
    assert torch.equal(got[0], F.scaled_dot_product_attention(q, k, v)[0])  # the unpadded row is untouched


def test_an_activation_fix_rewrites_silu_as_gelu_inside_the_whole_model():
    model, (q, k, v) = Model(), _qkv()
    with torch.no_grad(), _fix(model, "mlp", "SiLU -> GELU (tanh)").apply():
        got = model(q, k, v)
    with torch.no_grad():
        expected = F.gelu(model.mlp[0](F.scaled_dot_product_attention(q, k, v)), approximate="tanh")
    assert torch.equal(got, expected)


def test_the_float32_softmax_fix_keeps_a_half_precision_sdpa_in_its_dtype():
    model = Model()
    q, k, v = (t.to(torch.bfloat16) for t in _qkv())
    with _fix(model, "attention", "softmax in float32").apply():
        got = model.attn(q, k, v)
    expected = F.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(torch.bfloat16)
    assert got.dtype == torch.bfloat16 and torch.equal(got, expected)


def test_the_embedding_scale_fix_is_a_module_output_edit():
    emb = nn.Embedding(10, 16)
    ids = torch.tensor([[1, 2, 3]])
    fix = fx.embedding_scale_fixes(emb)[0]  # x sqrt(C)
    with torch.no_grad(), fix.apply():
        got = emb(ids)
    assert torch.equal(got, emb(ids).detach() * 16 ** 0.5)
    assert not emb._forward_hooks and not emb._forward_pre_hooks


@pytest.mark.parametrize("name", ["scale x sqrt(D)", "mask: diagonal"])
def test_no_hook_or_mode_is_left_when_the_replay_raises(name):
    model, (q, k, v) = Model(), _qkv()
    before = _left_behind()
    with pytest.raises(RuntimeError, match="stop"), _fix(model, "attention", name).apply():
        assert _left_behind() != before  # the interception is open here
        model.attn(q, k, v)
        raise RuntimeError("stop")
    assert _left_behind() == before
    assert torch.equal(model.attn(q, k, v), F.scaled_dot_product_attention(q, k, v))


def test_sdpa_call_allowed_gives_the_mask_as_booleans():
    q, k, _ = _qkv()
    additive = torch.zeros(T, T).masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), torch.finfo(torch.float32).min)
    call = SdpaCall.from_call((q, k), {"attn_mask": additive})
    assert torch.equal(call.allowed(), torch.ones(T, T, dtype=torch.bool).tril())
    cached = SdpaCall.from_call((q[:, :, -2:], k), {"is_causal": True})  # two queries against five keys
    assert torch.equal(cached.allowed(), torch.ones(2, T, dtype=torch.bool).tril(T - 2))
    assert bool(SdpaCall.from_call((q, k), {}).allowed().all())
