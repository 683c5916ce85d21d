"""Module records: shapes, parameter counts, timing, stats, memory, first_nonfinite, tables, save/load."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn

import workbench
from workbench.capture import Trace, trace


def test_mlp_records_in_execution_order_with_shapes(mlp):
    x = torch.randn(5, 8)
    with trace(mlp) as tr:
        mlp(x)
    assert [r.name for r in tr.records] == ["", "0", "1", "2"]
    assert [r.type for r in tr.records] == ["Sequential", "Linear", "ReLU", "Linear"]
    assert [r.depth for r in tr.records] == [0, 1, 1, 1]
    assert [r.parent for r in tr.records] == [-1, 0, 0, 0]
    assert tr.records[1].inputs[0].shape == [5, 8]
    assert tr.records[1].outputs[0].shape == [5, 16]
    assert tr.records[3].outputs[0].shape == [5, 4]
    assert tr.records[0].outputs[0].dtype == "float32" and tr.records[0].outputs[0].device == "cpu"
    assert tr.records[0].params == sum(p.numel() for p in mlp.parameters()) == 8 * 16 + 16 + 16 * 4 + 4
    assert all(r.time_ms is not None and r.time_ms >= 0 for r in tr.records)
    assert tr.records[0].time_ms >= tr.records[1].time_ms
    assert tr.records[0].self_time_ms <= tr.records[0].time_ms


def test_n_calls_give_n_records(mlp):
    with trace(mlp) as tr:
        for _ in range(3):
            mlp(torch.randn(2, 8))
    assert [r.call for r in tr.find("1")] == [0, 1, 2]
    assert len(tr.records) == 12


def test_stats_match_torch(mlp):
    x = torch.randn(64, 8)
    with trace(mlp, samples=16) as tr:
        y = mlp(x)
    st = tr.records[0].out_stats
    assert st.mean == pytest.approx(y.mean().item(), abs=1e-6)
    assert st.std == pytest.approx(y.std().item(), rel=1e-5)
    assert st.absmax == pytest.approx(y.abs().max().item())
    assert (st.nan, st.inf) == (0, 0)
    h = mlp[1](mlp[0](x))
    assert tr.find("2")[0].in_stats.mean == pytest.approx(h.mean().item(), abs=1e-6)
    assert len(tr.records[0].samples) == 16 and max(tr.records[0].samples) <= st.max + 1e-6


def test_first_nonfinite_finds_planted_nan():
    class Bad(nn.Module):
        def forward(self, x):
            return x.log()  # negative inputs -> NaN

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), Bad(), nn.Linear(4, 4), nn.ReLU())
    with trace(model) as tr:
        model(torch.randn(3, 4))
    bad = tr.first_nonfinite()
    assert bad is not None and bad.name == "2" and bad.type == "Bad"
    assert bad.out_stats.nan > 0
    assert not bad.in_stats.nonfinite  # the input was fine: this module is the origin
    assert tr.find("3")[0].nonfinite  # it spreads downstream, but is not reported first


def test_workbench_tiny_shapes_and_params(tiny):
    cfg = tiny.config
    ids = torch.randint(0, cfg.vocab_size, (2, 12))
    with trace(tiny) as tr:
        tiny(ids)
    root = tr.records[0]
    assert root.name == "" and root.outputs[0].shape == [2, 12, cfg.vocab_size]
    assert root.params == tiny.num_parameters()  # tied embedding counted once
    assert sum(r.params_counted for r in tr.records) == tiny.num_parameters()
    assert tr.find("lm_head")[0].params == tr.find("embed")[0].params == cfg.vocab_size * cfg.d_model
    q = tr.find("blocks.0.attn.hook_q")[0]
    assert q.outputs[0].shape == [2, cfg.n_heads, 12, cfg.head_dim]
    assert tr.find("blocks.1.mlp.hook_hidden")[0].outputs[0].shape == [2, 12, cfg.d_ff]


def test_hf_llama_nested_outputs_and_kwargs(hf_llama):
    ids = torch.randint(0, 128, (1, 7))
    with trace(hf_llama) as tr:
        hf_llama(ids)
    root = tr.records[0]
    assert root.params == sum(p.numel() for p in hf_llama.parameters())
    assert any(m.path == "out.logits" and m.shape == [1, 7, 128] for m in root.outputs)
    attn = tr.find("model.layers.0.self_attn")[0]
    assert any(m.path == "kwargs.hidden_states" and m.shape == [1, 7, 64] for m in attn.inputs)
    assert tr.find("model.layers.1.mlp.down_proj")[0].outputs[0].shape == [1, 7, 64]


def test_module_filter(tiny):
    ids = torch.randint(0, 256, (1, 5))
    with trace(tiny, modules=r"attn\.(qkv|out)$") as tr:
        tiny(ids)
    assert [r.name for r in tr.records] == ["blocks.0.attn.qkv", "blocks.0.attn.out",
                                            "blocks.1.attn.qkv", "blocks.1.attn.out"]
    with trace(tiny, modules=lambda n, m: isinstance(m, nn.Embedding)) as tr:
        tiny(ids)
    assert [r.name for r in tr.records] == ["embed"]
    with pytest.raises(workbench.CaptureError, match="not module names"):
        trace(tiny, modules=["nope"])


def test_linear_saved_bytes_equal_hand_computed():
    lin = nn.Linear(32, 48)
    x = torch.randn(4, 10, 32, requires_grad=True)
    with trace(lin, memory=True) as tr:
        y = lin(x)
    rec = tr.records[0]
    assert rec.saved_bytes == 4 * 10 * 32 * 4  # the input, kept to form the weight gradient
    assert rec.saved_param_bytes == 48 * 32 * 4  # the weight, kept to form the input gradient
    assert rec.output_bytes == y.numel() * 4
    with torch.no_grad(), trace(lin, memory=True) as tr:
        lin(x)
    assert tr.records[0].saved_bytes == 0  # nothing is saved without autograd


def test_saved_bytes_roll_up_to_parents(mlp):
    x = torch.randn(6, 8)
    with trace(mlp, memory=True) as tr:
        mlp(x).sum().backward()
    root, first, relu, last = tr.records
    assert first.saved_bytes == 0 or first.saved_bytes == 6 * 8 * 4  # input needs no grad: may be skipped
    assert last.saved_bytes == 6 * 16 * 4
    assert root.saved_bytes_total == root.saved_bytes + first.saved_bytes + relu.saved_bytes + last.saved_bytes
    assert tr.find("0")[0].grad_bytes == (8 * 16 + 16) * 4


def test_dataframe_summary_and_repr(tiny):
    with trace(tiny, memory=True) as tr:
        tiny(torch.randint(0, 256, (1, 6)))
    df = tr.to_dataframe()
    assert len(df) == len(tr.records)
    assert list(df["name"]) == [r.name for r in tr.records]
    assert df.loc[0, "params"] == tiny.num_parameters()
    for col in ("time_ms", "saved_bytes", "out_std", "nonfinite", "in_shapes"):
        assert col in df.columns
    text = tr.summary(max_depth=1)
    assert "lm_head (Linear)" in text and f"{tiny.num_parameters():,}" in text
    assert "TransformerLM" in repr(tr) and "calls" in repr(tr)


def test_save_load_roundtrip(tmp_path, tiny):
    with trace(tiny, attention=True, gradients=True, samples=8) as tr:
        tiny(torch.randint(0, 256, (1, 6))).sum().backward()
    path = tr.save(tmp_path / "t.safetensors")
    back = Trace.load(path)
    # compare as JSON text so NaN statistics (mean of masked -inf scores) compare equal
    assert json.dumps([r.to_dict() for r in back.records]) == json.dumps([r.to_dict() for r in tr.records])
    assert back.records[-1].out_stats.std == tr.records[-1].out_stats.std
    assert len(back.attention) == len(tr.attention) == tiny.config.n_layers
    assert torch.equal(back.attention[1].map, tr.attention[1].map)
    assert back.attention[1].metrics == tr.attention[1].metrics
    assert [g.grad_norm for g in back.gradients] == [g.grad_norm for g in tr.gradients]
    tiny.zero_grad(set_to_none=True)


def test_load_rejects_corrupt_and_foreign_files(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(workbench.CorruptFileError):
        Trace.load(bad)
    from safetensors.torch import save_file

    other = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(workbench.CorruptFileError, match="not a workbench trace"):
        Trace.load(other)
    with pytest.raises(workbench.LoadError):
        Trace.load(tmp_path / "missing.safetensors")


def test_stats_handle_integer_and_empty_outputs():
    emb = nn.Embedding(10, 3)
    with trace(emb) as tr:
        emb(torch.tensor([[1, 2]]))
    assert tr.records[0].in_stats is None  # integer ids carry no activation stats
    assert math.isfinite(tr.records[0].out_stats.std)


@pytest.mark.parametrize("layout", ["transposed", "strided view", "expanded", "offset slice", "bfloat16 transposed"])
def test_stats_of_non_contiguous_outputs_match_torch(layout):
    """Permuted dense tensors are reduced as their flat buffer; gappy views take the general path.
    Both must give the statistics of the tensor's own elements, not of its storage."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(2, 16, 30, generator=g) * 3 + 1
    base[0, 0, 0] = 50.0  # the abs-max sits in the first storage element, outside some views
    views = {
        "transposed": lambda t: t.view(2, 16, 5, 6).transpose(1, 2),  # (B, H, T, D) from (B, T, H, D)
        "strided view": lambda t: t[..., 12:].view(2, 16, 3, 6).transpose(1, 2),  # a slice of a fused buffer
        "expanded": lambda t: t[:, :1].expand(2, 4, 30),
        "offset slice": lambda t: t[1, 3:],
        "bfloat16 transposed": lambda t: t.to(torch.bfloat16).view(2, 16, 5, 6).transpose(1, 2),
    }

    class View(nn.Module):
        def forward(self, t):
            return views[layout](t)

    mod = View()
    with trace(mod) as tr:
        y = mod(base)
    st = tr.records[0].out_stats
    ref = y.double()
    assert st.numel == y.numel()
    assert st.mean == pytest.approx(ref.mean().item(), rel=1e-5, abs=1e-5)
    assert st.std == pytest.approx(ref.std().item(), rel=1e-4)
    assert (st.min, st.max) == (pytest.approx(ref.min().item()), pytest.approx(ref.max().item()))
    assert st.absmax == pytest.approx(ref.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_deferred_device_stats_equal_immediate_stats(dtype):
    """The accelerator path (each tensor copied into a batch buffer, batches reduced along rows, one
    read-back at flush) runs here on the CPU and must agree with the immediate CPU path, including
    exact NaN/Inf/-Inf counts."""
    from workbench.capture.devstats import ROWS
    from workbench.capture.stats import StatsBuffer

    g = torch.Generator().manual_seed(1)
    clean = (torch.randn(4, 33, 7, generator=g) * 5).to(dtype)
    dirty = clean.clone()
    dirty[0, :3, 0] = float("nan")
    dirty[1, 5, :2] = float("inf")
    dirty[2, 7, :4] = float("-inf")
    tensors = [clean, clean.transpose(0, 2), dirty, clean[:, ::3], torch.ones(1, dtype=dtype)]
    tensors += [torch.randn(5, generator=g).to(dtype) for _ in range(ROWS + 3)]  # fills one batch, starts another
    now, later = StatsBuffer(), StatsBuffer(defer_cpu=True)
    expected = [now.measure(t) for t in tensors]
    deferred = [later.measure(t) for t in tensors]
    assert math.isnan(deferred[0].mean)  # nothing is read back before flush
    later.flush()
    for e, d in zip(expected, deferred):
        assert (d.numel, d.nan, d.inf, d.neginf) == (e.numel, e.nan, e.inf, e.neginf)
        for field in ("mean", "std", "absmax", "min", "max"):
            a, b = getattr(d, field), getattr(e, field)
            assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-4, abs=1e-5), field
    assert (deferred[2].nan, deferred[2].inf, deferred[2].neginf) == (3, 6, 4)
    assert later.devices[torch.device("cpu")].batches < len(tensors) // 10  # reduced in batches, not one by one


def test_deferred_stats_describe_the_tensor_when_measured_and_stay_in_budget():
    """A tensor edited in place after its module returned keeps the statistics of what the module
    produced; batch buffers never hold more than the budget; a tensor over the budget is reduced
    where it is."""
    from workbench.capture.stats import StatsBuffer

    g = torch.Generator().manual_seed(2)
    budget = 4096  # bytes: 1,024 float32 values
    now, later = StatsBuffer(), StatsBuffer(defer_cpu=True, budget_bytes=budget)
    tensors = [torch.randn(n, generator=g) for n in (7, 100, 7, 300, 100, 7, 900, 2000, 300)]  # 2000 > budget
    expected = [now.measure(t) for t in tensors]
    deferred = [later.measure(t) for t in tensors]
    for t in tensors:
        t.mul_(-3).add_(1)  # e.g. a downstream ReLU(inplace=True) or a += in the parent's forward
    later.flush()
    for e, d in zip(expected, deferred):
        assert d.numel == e.numel
        for field in ("mean", "std", "absmax", "min", "max"):
            assert getattr(d, field) == pytest.approx(getattr(e, field), rel=1e-5, abs=1e-6), field
    dev = later.devices[torch.device("cpu")]
    assert 0 < dev.peak_bytes <= budget


def test_cuda_event_timing_reuses_pooled_events(monkeypatch, mlp):
    """The CUDA timing branch, run on the CPU with stand-in events: times come from the events (read
    after the single sync at exit), and a second trace records into the first trace's events."""
    import time as _time

    from workbench.capture import hooks, timing

    class StandInEvent:
        def __init__(self, enable_timing: bool = False) -> None:
            assert enable_timing
            self.at: float | None = None

        def record(self, stream: object) -> None:
            assert stream is model_stream
            self.at = _time.perf_counter()

        def elapsed_time(self, end: StandInEvent) -> float:
            return (end.at - self.at) * 1e3

    syncs = []

    class StandInStream:
        def synchronize(self) -> None:
            syncs.append(1)

    model_stream = StandInStream()
    monkeypatch.setattr(torch.cuda, "Event", StandInEvent)
    monkeypatch.setattr(hooks, "uses_cuda_events", lambda device: True)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: model_stream)
    monkeypatch.setattr(timing, "_POOLS", {})
    x = torch.randn(4, 8)
    with trace(mlp, stats=False) as first:
        mlp(x)
    pool = timing.event_pool(next(mlp.parameters()).device)
    assert pool.created == 2 * len(first.records) == 8 and len(syncs) == 1
    with trace(mlp, stats=False) as second:
        mlp(x)
        mlp(x)
    assert pool.created == 2 * len(second.records) == 16  # 8 reused from the first trace, 8 new
    for tr in (first, second):
        root = tr.records[0]
        assert all(r.time_ms is not None and r.time_ms >= 0 for r in tr.records)
        assert root.time_ms >= sum(r.time_ms for r in tr.records if r.parent == 0)


def test_cuda_allocator_deltas_and_peaks_under_nesting(monkeypatch):
    """The per-layer allocator meter, run on the CPU against a simulated caching allocator: each layer
    call gets its own delta and the peak over its whole duration, even when a nested call resets
    the allocator's peak counter."""
    from workbench.capture import hooks

    class Allocator:
        current = peak = 0

        def alloc(self, n: int) -> None:
            self.current += n
            self.peak = max(self.peak, self.current)

        def stats(self, device: object) -> dict:
            return {"allocated_bytes": {"all": {"current": self.current, "peak": self.peak}}}

        def reset_peak(self, device: object) -> None:
            self.peak = self.current

    mem = Allocator()

    class Step(nn.Module):
        def __init__(self, spike: int, keep: int) -> None:
            super().__init__()
            self.spike, self.keep = spike, keep

        def forward(self, x):
            mem.alloc(self.spike)  # a temporary...
            mem.alloc(-self.spike)  # ...freed again
            mem.alloc(self.keep)  # and what the call leaves allocated
            return x

    model = nn.Sequential(nn.Sequential(Step(500, 10), Step(50, 20)), Step(5, -30))
    mem.alloc(1000)  # resident before the forward (weights)
    monkeypatch.setattr(torch.cuda, "memory_stats_as_nested_dict", mem.stats)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", mem.reset_peak)
    monkeypatch.setattr(hooks, "uses_allocator", lambda device: True)
    with trace(model, memory=True, stats=False, shapes=False) as tr:
        model(torch.zeros(1))
    by_name = {r.name: r for r in tr.records}
    assert {n: r.cuda_delta for n, r in by_name.items()} == {"": 0, "0": 30, "0.0": 10, "0.1": 20, "1": -30}
    assert {n: r.cuda_peak for n, r in by_name.items()} == {"": 1500, "0": 1500, "0.0": 1500, "0.1": 1060, "1": 1035}


def test_stats_filter_limits_statistics_to_the_selected_modules(tiny):
    """stats=<module filter>: every module is still recorded with shapes and timing, but only the
    selected ones get statistics, equal to those of a full trace; NaN is located at that granularity."""
    ids = torch.randint(0, tiny.config.vocab_size, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), trace(tiny) as full:
        tiny(ids)
    with torch.no_grad(), trace(tiny, stats=r"^blocks\.\d+$") as part:
        tiny(ids)
    assert [r.name for r in part.records] == [r.name for r in full.records]
    with_stats = [r.name for r in part.records if r.out_stats is not None]
    assert with_stats == [f"blocks.{i}" for i in range(tiny.config.n_layers)]
    assert all(r.in_stats is None for r in part.records if r.name not in with_stats)
    assert all(r.in_stats is not None for r in part.records if r.name in with_stats)
    assert all(r.outputs and r.time_ms is not None for r in part.records)
    ref = {r.name: r.out_stats for r in full.records if r.call == 0}
    for r in part.records:
        if r.out_stats is not None:
            assert (r.out_stats.mean, r.out_stats.std, r.out_stats.absmax) == pytest.approx(
                (ref[r.name].mean, ref[r.name].std, ref[r.name].absmax), rel=1e-6
            )
    assert part.meta["options"]["stats_modules"] == tuple(with_stats)
    broken = copy.deepcopy(tiny)
    with torch.no_grad():
        broken.blocks[1].mlp.down.weight[0, 0] = float("nan")
        with trace(broken, stats=r"^blocks\.\d+$") as tr:
            broken(ids)
    assert tr.first_nonfinite().name == "blocks.1"  # located to the layer, the granularity asked for
    with pytest.raises(workbench.CaptureError, match="stats='nothing_like_this' matched no recorded module"):
        trace(tiny, stats="nothing_like_this")
    with pytest.raises(workbench.CaptureError, match="matched no recorded module"):
        trace(tiny, modules=r"mlp", stats=r"attn")  # selected for stats but not recorded
    with pytest.raises(workbench.CaptureError, match="True, False or a module filter"):
        trace(tiny, stats=None)


def test_trace_under_inference_mode_records_statistics(tiny):
    """Inference tensors keep no version counter: the statistics cache must not read one."""
    ids = torch.randint(0, 256, (1, 8), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode(), trace(tiny) as tr:
        logits = tiny(ids)
    with torch.no_grad(), trace(tiny) as reference:
        tiny(ids)
    last = tr.records[-1]
    assert last.out_stats is not None and last.out_stats.absmax == pytest.approx(float(logits.abs().max()), rel=1e-6)
    assert [r.out_stats for r in tr.records] == [r.out_stats for r in reference.records]
