"""Views as pure functions: records in, plotly figures out (matplotlib `*_mpl` variants for PNG).

No kernel and no widgets here, so every figure is testable and exportable on its own.
"""

from .attention import (
    attention_heatmap,
    attention_heatmap_mpl,
    heads_grid,
    layer_records,
    metric_matrix,
    token_attention_layers,
)
from .export import save_html, save_png, write_html
from .generation import cache_layer_bars, text_html, topk_bars
from .gradients import as_history, grad_flow_mpl, grad_heatmap, grad_norm_bars
from .lens import lens_heatmap
from .memory import kv_growth, memory_bars, memory_bars_mpl, memory_breakdown
from .modules import activation_histogram, filter_records, module_row, time_bars
from .report import report_html

__all__ = [
    "activation_histogram", "as_history", "attention_heatmap", "attention_heatmap_mpl", "cache_layer_bars",
    "filter_records", "grad_flow_mpl", "grad_heatmap", "grad_norm_bars", "heads_grid", "kv_growth",
    "layer_records", "lens_heatmap", "memory_bars", "memory_bars_mpl", "memory_breakdown", "metric_matrix",
    "module_row", "report_html", "save_html", "save_png", "text_html", "time_bars", "token_attention_layers",
    "topk_bars", "write_html",
]
