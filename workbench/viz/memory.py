"""Memory figures: per-layer stacked bytes (params, grads, saved activations, optimizer state, KV cache)
and the KV cache's growth per generation step."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import plotly.graph_objects as go
import torch
from torch import nn

from .style import COLORS, HALF_WIDTH, base_layout, format_bytes, int_dtick, legend_on_top, message_figure

if TYPE_CHECKING:
    from ..capture.trace import Trace
    from ..generation.records import StepRecord
    from ..lm.caches import ForeignCache
    from ..model.cache import KVCache

KINDS = ("params", "grads", "saved", "optimizer", "kv")
LABELS = {"params": "parameters", "grads": "gradients", "saved": "saved activations",
          "optimizer": "optimizer state", "kv": "KV cache"}
_LAYER = re.compile(r"^(.*?(?:^|\.)(?:layers|blocks|h|layer|block)\.\d+)(?:\.|$)")


def layer_group(module: str) -> str:
    """The layer a module belongs to ("model.layers.3.mlp" -> "model.layers.3"); other modules stay."""
    m = _LAYER.match(module)
    return m.group(1) if m else (module or "(model)")


def _add(rows: dict[str, dict[str, int]], group: str, kind: str, nbytes: int) -> None:
    rows.setdefault(group, dict.fromkeys(KINDS, 0))[kind] += int(nbytes)


def memory_breakdown(trace: Trace | None = None, *, model: nn.Module | None = None,
                     optimizer: torch.optim.Optimizer | None = None,
                     cache: KVCache | ForeignCache | None = None) -> dict[str, dict[str, int]]:
    """Bytes per layer group and kind (KINDS), in model order.

    params: own parameters counted once (tied weights under their first owner); grads: gradient
    tensors of parameters that got one (trace.gradients, else the model's .grad); saved: bytes saved
    for backward (trace with memory=True and grad on); optimizer: the optimizer's state tensors
    (needs `model` to name them, else one unattributed bar); kv: `cache.layer_bytes_used()`.
    """
    rows: dict[str, dict[str, int]] = {}
    seen: set[str] = set()  # a module called twice (checkpoint recompute, decode steps) owns its params once
    for r in getattr(trace, "records", []) if trace is not None else []:
        group = layer_group(r.name)
        if r.name == "" and r.params_counted == 0 and r.saved_bytes == 0:
            continue
        elem = r.param_bytes // r.params if r.params else 4
        _add(rows, group, "params", 0 if r.name in seen else r.params_counted * elem)
        seen.add(r.name)
        _add(rows, group, "saved", r.saved_bytes)
    grads = getattr(trace, "gradients", None) or []
    elem = {r.name: r.param_bytes // r.params for r in getattr(trace, "records", []) if r.params}
    for g in grads:
        if g.grad_norm is not None:  # gradients have their parameter's dtype
            _add(rows, layer_group(g.module), "grads", g.numel * elem.get(g.module, 4))
    names = {}
    if model is not None:
        names = {id(p): n for n, p in model.named_parameters()}
        for name, p in model.named_parameters():
            owner = layer_group(name.rsplit(".", 1)[0] if "." in name else "")
            if trace is None:
                _add(rows, owner, "params", p.numel() * p.element_size())
            if not grads and p.grad is not None:
                _add(rows, owner, "grads", p.grad.numel() * p.grad.element_size())
    if optimizer is not None:
        for param, state in optimizer.state.items():
            nbytes = sum(t.numel() * t.element_size() for t in state.values() if isinstance(t, torch.Tensor))
            pname = names.get(id(param))
            owner = layer_group(pname.rsplit(".", 1)[0]) if pname and "." in pname else "(optimizer, unattributed)"
            _add(rows, owner, "optimizer", nbytes)
    if cache is not None:
        _add_cache(rows, cache.layer_bytes_used())
    return {k: v for k, v in rows.items() if any(v.values())}


def _add_cache(rows: dict[str, dict[str, int]], per_layer: Sequence[int]) -> None:
    """Attach KV bytes of layer i to the i-th numbered layer group (or a group of its own)."""
    layers = [g for g in rows if _LAYER.match(g + ".")]
    for i, nbytes in enumerate(per_layer):
        _add(rows, layers[i] if i < len(layers) else f"kv layer {i}", "kv", nbytes)


def memory_bars(rows: dict[str, dict[str, int]], *, title: str = "Memory per layer",
                note: str | None = None, height: int = 380, width: int | None = None) -> go.Figure:
    """Stacked bars, one per layer group, one colour per kind (always five traces, in KINDS order).

    The legend sits at the right, top to bottom in stacking order, and lists only kinds present."""
    if not rows:
        return message_figure("No memory data. Trace with `workbench.trace(model, memory=True)` "
                              "(and run backward inside it for gradients/saved activations).", title=title,
                              width=width)
    groups = list(rows)
    fig = go.Figure()
    for kind in KINDS:
        y = [rows[g][kind] for g in groups]
        fig.add_trace(go.Bar(
            x=groups, y=y, name=LABELS[kind], marker_color=COLORS[kind], showlegend=any(y),
            customdata=[format_bytes(v) for v in y],
            hovertemplate="%{x}<br>" + LABELS[kind] + ": %{customdata}<extra></extra>"))
    total = sum(sum(v.values()) for v in rows.values())
    fig.update_layout(barmode="stack", legend=dict(traceorder="reversed", x=1.01, xanchor="left", y=1,
                                                   yanchor="top", font=dict(size=11)))
    fig.update_yaxes(title="bytes", tickformat="~s", ticksuffix="B")
    fig.update_xaxes(tickangle=-60 if len(groups) > 6 else 0, tickfont=dict(size=9 if len(groups) > 6 else 11),
                     type="category", automargin=True)
    full = f"{title} · total {format_bytes(total)}" + (f" · {note}" if note else "")
    return base_layout(fig, full, height=height, width=width)


def kv_growth(steps: Sequence[StepRecord], *, prompt_bytes: int | None = None, height: int = 300,
              width: int | None = None) -> go.Figure:
    """KV cache bytes (used and allocated, all layers) after each generation step. Trace 0 = used."""
    fig = go.Figure([
        go.Scatter(x=[s.step for s in steps], y=[s.cache_total_used for s in steps], mode="lines+markers",
                   name="used", line=dict(color=COLORS["kv"]),
                   customdata=[format_bytes(s.cache_total_used) for s in steps],
                   hovertemplate="step %{x}<br>used %{customdata}<extra></extra>"),
        go.Scatter(x=[s.step for s in steps], y=[s.cache_total_allocated for s in steps], mode="lines",
                   name="allocated", line=dict(color=COLORS["muted"], dash="dot", shape="hv"),
                   customdata=[format_bytes(s.cache_total_allocated) for s in steps],
                   hovertemplate="step %{x}<br>allocated %{customdata}<extra></extra>"),
    ])
    last = max((s.step for s in steps), default=0)
    fig.update_yaxes(title="KV cache", tickformat="~s", ticksuffix="B", rangemode="tozero", showticklabels=bool(steps))
    fig.update_xaxes(title="generation step", tick0=0, dtick=int_dtick(last + 1, (width or HALF_WIDTH) - 100, 40),
                     range=[-0.3, max(last, 4) + 0.3])
    sub = f" · {format_bytes(steps[-1].cache_total_used)} used" if steps else " · no steps yet"
    if not steps:
        fig.add_annotation(text="Each step adds one point.", x=0.5, y=0.5, xref="paper", yref="paper",
                           showarrow=False, font=dict(size=13, color=COLORS["muted"]))
    base_layout(fig, "KV cache growth" + sub, height=height, width=width)
    return legend_on_top(fig)


def cuda_peak_note(trace: Trace | None = None) -> str | None:
    """"CUDA peak 1.2 GiB" from the records' per-call peaks (or the allocator), None on the CPU."""
    peaks = [r.cuda_peak for r in getattr(trace, "records", []) if r.cuda_peak is not None]
    if peaks:
        return f"CUDA peak {format_bytes(max(peaks))}"
    if torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0:
        return f"CUDA peak {format_bytes(torch.cuda.max_memory_allocated())} (process)"
    return None


def memory_bars_mpl(rows: dict[str, dict[str, int]], *, title: str = "Memory per layer"):
    """Static matplotlib stacked bars (PNG export)."""
    import matplotlib.pyplot as plt

    groups = list(rows)
    fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(groups) + 2), 4), dpi=110)
    bottom = [0.0] * len(groups)
    for kind in KINDS:
        y = [rows[g][kind] / 2**20 for g in groups]
        ax.bar(range(len(groups)), y, bottom=bottom, color=COLORS[kind], label=LABELS[kind])
        bottom = [b + v for b, v in zip(bottom, y)]
    ax.set_xticks(range(len(groups)), groups, rotation=80, fontsize=7)
    ax.set_ylabel("MiB")
    ax.set_title(title, loc="left", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
