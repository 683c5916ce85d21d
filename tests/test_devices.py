"""The same checks on every device the machine has: CPU always, CUDA where a GPU is present.

CPU runs prove the checks themselves ("cpu-batched" also runs the accelerator's batched statistics on
the CPU); on a GPU machine the `cuda` cases exercise the device-side paths that CPU tests can only
simulate: statistics copied into batch buffers and read back once at exit, CUDA-event timing, the
allocator meter, SDPA interception on device kernels, and generation with the CUDA-graph decode
step. References are computed in float64 on the CPU.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import workbench as wb
from workbench.capture import trace
from workbench.errors import InputError
from workbench.generation import GenerationSession, generate

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")),
]


STATS_DEVICES = [*DEVICES[:1], "cpu-batched", *DEVICES[1:]]  # cpu-batched: the accelerator stats path on the CPU


def _stats_device(name: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The device to run on; "cpu-batched" routes CPU statistics through the accelerator's batches."""
    if name == "cpu-batched":
        from workbench.capture import hooks, stats

        monkeypatch.setattr(hooks, "StatsBuffer", lambda samples: stats.StatsBuffer(samples, defer_cpu=True))
        return "cpu"
    return name


def _tiny(**changes) -> wb.TransformerLM:
    torch.manual_seed(0)
    config = wb.ModelConfig.preset("tiny").replace(n_kv_heads=2, init_std=0.3, **changes)  # GQA, RoPE
    return wb.TransformerLM(config).eval()


def _batch(vocab: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, vocab, (3, 12), generator=g)
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, :4] = 0  # left padding
    mask[2, :9] = 0
    return ids.to(device), mask.to(device)


def _rel(a: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor) -> float:
    """||a - ref|| / ||ref|| over the rows that hold real tokens."""
    keep = mask.bool().cpu()
    a, ref = a.double().cpu()[keep], ref[keep]
    return float((a - ref).norm() / ref.norm())


@pytest.fixture(scope="module")
def reference() -> tuple[wb.TransformerLM, torch.Tensor]:
    """The tiny model's logits for the padded batch, in float64 on the CPU."""
    model = _tiny().double()
    ids, mask = _batch(model.config.vocab_size, "cpu")
    with torch.no_grad():
        return model, model(ids, mask)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_forward_matches_float64_reference(device, dtype, tol, reference):
    ref_model, ref = reference
    model = _tiny().to(device=device, dtype=dtype)
    ids, mask = _batch(model.config.vocab_size, device)
    with torch.no_grad():
        out = model(ids, mask)
    assert out.device.type == device and out.dtype == dtype
    assert _rel(out, ref, mask) < tol
    # a mask the model ignored would move the padded rows' logits far beyond bf16 rounding
    with torch.no_grad():
        unmasked = ref_model(ids.cpu())
    assert _rel(unmasked.to(dtype), ref, mask) > 10 * tol


@pytest.mark.parametrize("device", DEVICES)
def test_inputs_on_another_device_are_refused_clearly(device):
    model_device = "meta" if device == "cpu" else device  # on a CPU-only machine the model goes to meta
    model = _tiny().to(model_device)
    with pytest.raises(InputError, match=rf"input_ids is on cpu but the model is on {model_device}"):
        model(torch.zeros(1, 4, dtype=torch.long))
    ids = torch.zeros(1, 4, dtype=torch.long, device=model_device)
    with pytest.raises(InputError, match=rf"attention_mask is on cpu but the model is on {model_device}"):
        model(ids, torch.ones(1, 4, dtype=torch.long))
    if device != "cpu":  # position_ids are moved, not refused (the forward needs them on the ids' device)
        with torch.no_grad():
            torch.testing.assert_close(model(ids, position_ids=torch.arange(4)[None]), model(ids))


@pytest.mark.parametrize("device", STATS_DEVICES)
def test_trace_stats_timing_and_memory_on_device(device, monkeypatch):
    device = _stats_device(device, monkeypatch)
    model = _tiny().to(device)
    ids, mask = _batch(model.config.vocab_size, device)
    outputs: dict[str, torch.Tensor] = {}
    handles = [
        m.register_forward_hook(lambda _m, _a, out, name=name: outputs.setdefault(name, out.detach().clone()))
        for name, m in model.named_modules()
        if name.endswith(("attn.qkv", "mlp.down", "hook_resid_post", "lm_head"))
    ]
    try:
        with torch.no_grad(), trace(model, memory=True) as tr:
            model(ids, mask)
    finally:
        for h in handles:
            h.remove()
    by_name = {r.name: r for r in tr.records if r.call == 0}
    assert len(outputs) == 3 * model.config.n_layers + 1
    for name, out in outputs.items():
        st, x = by_name[name].out_stats, out.double().cpu().flatten()
        assert st.numel == x.numel() and st.nan == 0 and st.inf == 0
        assert math.isclose(st.mean, float(x.mean()), rel_tol=1e-4, abs_tol=1e-6)
        assert math.isclose(st.std, float(x.std()), rel_tol=1e-4)
        assert st.absmax == pytest.approx(float(x.abs().max()), rel=1e-6)
        assert (st.min, st.max) == pytest.approx((float(x.min()), float(x.max())), rel=1e-6)
        assert by_name[name].output_bytes == out.nbytes
    assert tr.records[0].name == "" and tr.records[0].time_ms > 0  # the whole forward took measurable time
    for rec in tr.records:  # each call's time covers its recorded children (one stream, in order)
        assert rec.time_ms is not None and math.isfinite(rec.time_ms) and rec.time_ms >= 0
        children = sum(c.time_ms for c in tr.records if c.parent == rec.index)
        assert rec.time_ms >= children - 1e-2
    layers = [r for r in tr.records if r.name.startswith("blocks.") and r.name.count(".") == 1]
    if device == "cuda":  # allocator meter on layer-level modules: the block's output is allocated inside it
        assert all(r.cuda_peak is not None and r.cuda_peak >= r.cuda_delta for r in layers)
    else:
        assert all(r.cuda_peak is None for r in layers)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("device", STATS_DEVICES)
def test_first_nonfinite_counts_planted_nan_on_device(device, monkeypatch):
    device = _stats_device(device, monkeypatch)
    model = _tiny().to(device)
    with torch.no_grad():
        model.blocks[1].mlp.down.weight[5] = float("nan")  # one output channel of layer 1's MLP
    ids, mask = _batch(model.config.vocab_size, device)
    with torch.no_grad(), trace(model) as tr:
        model(ids, mask)
    bad = tr.first_nonfinite()
    assert bad is not None and bad.name == "blocks.1.mlp.down"
    assert bad.out_stats.nan == ids.numel()  # exactly one NaN per token: counted exactly on the device
    assert bad.in_stats is not None and not bad.in_stats.nonfinite


@pytest.mark.parametrize("device", DEVICES)
def test_sdpa_interception_gives_causal_probabilities_on_device(device):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, attn_implementation="sdpa",
    )
    model = transformers.LlamaForCausalLM(cfg).eval().to(device)
    ids = torch.randint(0, 128, (2, 10), device=device)
    with torch.no_grad(), trace(model, attention=True, attention_batch=[0, 1]) as tr:
        model(ids)
    assert [a.layer for a in tr.attention] == [0, 1]
    for rec in tr.attention:
        p = rec.map.float()
        assert rec.map.device.type == "cpu" and rec.map.dtype == torch.float16
        assert p.shape == (2, 4, 10, 10)
        torch.testing.assert_close(p.sum(-1), torch.ones(2, 4, 10), atol=2e-3, rtol=0)
        assert float(p.triu(1).abs().max()) == 0.0
        assert max(rec.metrics["future_max"]) == 0.0


@pytest.mark.parametrize("device", DEVICES)
def test_greedy_generate_on_device_matches_cpu(device):
    model = _tiny()
    ids, mask = _batch(model.config.vocab_size, "cpu")
    expected = generate(model, ids, attention_mask=mask, max_new_tokens=20, fast=False).new_tokens
    model = model.to(device)
    for fast in (None, False):  # None: the CUDA-graph step on CUDA (static cache, >= 16 tokens)
        out = generate(model, ids, attention_mask=mask, max_new_tokens=20, fast=fast)  # CPU prompt: moved
        assert out.new_tokens.device.type == device
        assert out.new_tokens.cpu().tolist() == expected.tolist()


@pytest.mark.parametrize("device", DEVICES)
def test_session_on_device_matches_cpu(device, chars):
    model = _tiny()
    prompt = [5, 9, 2, 7]
    expected = [r.token_id for r in GenerationSession(model, chars, prompt, fast=False).run(12)]
    session = GenerationSession(model.to(device), chars, prompt, reserve=4)  # fast=None; resizes on the way
    assert [r.token_id for r in session.run(12)] == expected
    assert session.cache.length == len(prompt) + 12


@pytest.mark.parametrize("device", DEVICES)
def test_attention_budget_holds_on_device(device):
    model = _tiny(max_seq_len=64).to(device)
    ids = torch.randint(0, model.config.vocab_size, (2, 64), device=device)
    budget = 20_000  # far below one layer's full map (2 x 4 x 64 x 64 x 2 bytes = 65,536)
    with torch.no_grad(), pytest.warns(UserWarning), trace(model, attention=True, attention_budget_bytes=budget) as tr:
        model(ids)
    assert sum(a.map_bytes for a in tr.attention) <= budget
    assert all(len(a.metrics["entropy"]) == model.config.n_heads for a in tr.attention)


class _Plain(nn.Module):
    """A hand-written attention block (softmax over a (B, H, T, T) score tensor) with a residual MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.mlp = nn.Linear(16, 48), nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = (t.view(B, T, 2, 8).transpose(1, 2) for t in self.qkv(x).chunk(3, -1))
        s = q @ k.transpose(-1, -2) / math.sqrt(8)
        s = s.masked_fill(torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1), float("-inf"))
        y = (s.softmax(-1) @ v).transpose(1, 2).reshape(B, T, 16)
        return y + self.mlp(y)


@pytest.mark.parametrize("device", DEVICES)
def test_plain_module_softmax_capture_and_gradients_on_device(device):
    torch.manual_seed(0)
    model = _Plain().to(device)
    x = torch.randn(2, 6, 16, device=device)
    with trace(model, attention=True, gradients=True) as tr:
        model(x).pow(2).mean().backward()
    (rec,) = tr.attention
    assert rec.source == "softmax" and rec.module == ""
    torch.testing.assert_close(rec.map.float().sum(-1), torch.ones(1, 2, 6), atol=2e-3, rtol=0)
    assert float(rec.map.float().triu(1).abs().max()) == 0.0
    grads = {g.name: g for g in tr.gradients}
    ref = model.qkv.weight.grad.double().norm().item()
    assert grads["qkv.weight"].grad_norm == pytest.approx(ref, rel=1e-5)
