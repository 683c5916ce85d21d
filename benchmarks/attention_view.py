"""Python-side redraw time of AttentionView after a layer change: SmolLM2 (30 layers x 9 heads), 256 tokens.

The browser side (plotly.js render) is measured by the browser tests; this covers the kernel's part:
building the window, labels, leak markers, pooled small multiples and the FigureWidget deltas.

    .venv/bin/python benchmarks/attention_view.py
"""

from __future__ import annotations

import json
import statistics
import time

import torch

import workbench as wb
from workbench.capture import trace
from workbench.widgets import AttentionView


def main(n_tokens: int = 256) -> None:
    model, tok = wb.models.smollm2()
    text = "The history of natural language processing began in the 1950s. " * 40
    ids = tok.encode(text)[:n_tokens]
    x = torch.tensor([ids])  # (1, T)
    with torch.no_grad(), trace(model, attention=True, shapes=False, timing=False, stats=False) as tr:
        model(x)
    view = AttentionView(tr, tok.token_strings(ids))
    layers = list(view.records)
    for layer in layers[:3]:  # warm-up: imports, first conversions
        view.layer.value = layer
    cold, warm = [], []
    for sweep, out in ((0, cold), (1, warm)):  # sweep 0 converts maps (cache misses), sweep 1 hits the cache
        for layer in layers[::-1] if sweep == 0 else layers[-4:][::-1] * 5:
            start = time.perf_counter()
            view.layer.value = layer
            out.append((time.perf_counter() - start) * 1e3)
    heads = []
    for h in range(9):
        start = time.perf_counter()
        view.head.value = h
        heads.append((time.perf_counter() - start) * 1e3)
    result = {
        "model": "SmolLM2-135M (30 layers x 9 heads)", "tokens": len(ids), "torch": torch.__version__,
        "layer_change_ms_median_uncached": round(statistics.median(cold), 1),
        "layer_change_ms_max_uncached": round(max(cold), 1),
        "layer_change_ms_median_cached": round(statistics.median(warm), 1),
        "head_change_ms_median": round(statistics.median(heads), 1),
        "attention_bytes_in_trace": tr.meta["attention_bytes"],
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
