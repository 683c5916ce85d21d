"""Tables from module records: a pandas DataFrame and a torchinfo-style text summary."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .records import ModuleRecord

if TYPE_CHECKING:
    from .trace import Trace

COLUMNS = {
    "index": "execution order of the call (order calls started)",
    "name": "module path ('' = the traced module)",
    "type": "module class name",
    "call": "k-th call of this module in the trace",
    "depth": "nesting depth among recorded calls",
    "parent": "index of the enclosing recorded call (-1 at the top)",
    "in_shapes": "input tensor shapes+dtypes as text, e.g. '(1, 8, 64) f32'",
    "out_shapes": "output tensor shapes+dtypes as text",
    "out_shape": "shape of the first output tensor (tuple) or None",
    "out_dtype": "dtype of the first output tensor",
    "device": "device of the first output (else input) tensor",
    "params": "parameters incl. children, tied counted once",
    "params_own": "parameters registered directly on the module",
    "params_counted": "own parameters not already owned by an earlier module (sums to the model total)",
    "trainable_params": "of params, those with requires_grad",
    "param_bytes": "bytes of params",
    "grad_bytes": "bytes of .grad of params at exit",
    "time_ms": "forward time incl. children (ms)",
    "self_time_ms": "time_ms minus recorded children (ms)",
    "output_bytes": "bytes of output tensors (memory=True)",
    "saved_bytes": "activation bytes saved for backward by this call itself (memory=True)",
    "saved_param_bytes": "parameter bytes referenced by saved tensors",
    "saved_bytes_total": "saved_bytes incl. recorded descendants",
    "cuda_delta": "CUDA allocated bytes after - before (layer-level modules, memory=True)",
    "cuda_peak": "CUDA peak allocated bytes during the call",
    "in_mean/in_std/in_absmax/in_nan/in_inf": "stats of the first floating input tensor",
    "out_mean/out_std/out_absmax/out_min/out_max/out_nan/out_inf": "stats of the first floating output",
    "nonfinite": "output holds NaN or Inf",
    "finished": "False when the forward raised before returning",
    "rank": "torch.distributed rank that recorded the call (0 outside torch.distributed)",
}


def format_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def format_count(n: int) -> str:
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    if n >= 1e4:
        return f"{n / 1e3:.1f}K"
    return str(n)


def _row(r: ModuleRecord) -> dict[str, Any]:
    first = r.outputs[0] if r.outputs else None
    row = {
        "index": r.index, "name": r.name, "type": r.type, "call": r.call, "depth": r.depth, "parent": r.parent,
        "in_shapes": "; ".join(m.short() for m in r.inputs),
        "out_shapes": "; ".join(m.short() for m in r.outputs),
        "out_shape": tuple(first.shape) if first else None,
        "out_dtype": first.dtype if first else None,
        "device": first.device if first else (r.inputs[0].device if r.inputs else None),
    }
    for k in ("params", "params_own", "params_counted", "trainable_params", "param_bytes", "grad_bytes",
              "time_ms", "self_time_ms", "output_bytes", "saved_bytes", "saved_param_bytes",
              "saved_bytes_total", "cuda_delta", "cuda_peak"):
        row[k] = getattr(r, k)
    for prefix, st, keys in (("in", r.in_stats, ("mean", "std", "absmax", "nan", "inf")),
                             ("out", r.out_stats, ("mean", "std", "absmax", "min", "max", "nan", "inf"))):
        for k in keys:
            row[f"{prefix}_{k}"] = getattr(st, k) if st is not None else None
    row["nonfinite"] = r.nonfinite
    row["finished"] = r.finished
    row["rank"] = r.rank
    return row


def to_dataframe(records: list[ModuleRecord]) -> Any:
    """One row per call, columns as in COLUMNS."""
    import pandas as pd

    return pd.DataFrame([_row(r) for r in records])


def summary_table(tr: Trace, max_depth: int | None = None, max_rows: int = 400) -> str:
    """Text table: layer (indented by depth), output shape, params, time, saved bytes, output stats."""
    recs = [r for r in tr.records if max_depth is None or r.depth <= max_depth]
    header = f"{'Layer (type)':<46} {'Output shape':<22} {'Params':>9} {'Time ms':>9} {'Saved':>10} {'Out std':>9}"
    lines = [header, "=" * len(header)]
    for r in recs[:max_rows]:
        label = ("  " * r.depth + (r.name.rsplit(".", 1)[-1] if r.name else "") + f" ({r.type})")[:46]
        shape = str(tuple(r.outputs[0].shape)) if r.outputs else "-"
        t = f"{r.time_ms:.3f}" if r.time_ms is not None else "-"
        std = f"{r.out_stats.std:.3g}" if r.out_stats is not None else "-"
        flag = "  NaN/Inf!" if r.nonfinite else ""
        saved = format_bytes(r.saved_bytes_total) if tr.meta.get("options", {}).get("memory") else "-"
        lines.append(f"{label:<46} {shape[:22]:<22} {format_count(r.params):>9} {t:>9} {saved:>10} {std:>9}{flag}")
    if len(recs) > max_rows:
        lines.append(f"... {len(recs) - max_rows} more rows (raise max_rows or lower max_depth)")
    m = tr.meta
    lines.append("=" * len(header))
    lines.append(f"Total params: {m.get('total_params', 0):,} ({format_bytes(m.get('param_bytes'))}), "
                 f"trainable: {m.get('trainable_params', 0):,}")
    top = [r.time_ms for r in tr.records if r.depth == 0 and r.time_ms is not None]
    if top:
        lines.append(f"Forward time (top-level calls): {sum(top):.2f} ms")
    if m.get("saved_bytes") is not None:
        lines.append(f"Saved for backward (distinct storages): {format_bytes(m['saved_bytes'])}")
    peaks = [r.cuda_peak for r in tr.records if r.cuda_peak is not None]
    if peaks:
        lines.append(f"CUDA peak allocated: {format_bytes(max(peaks))}")
    if tr.attention:
        lines.append(f"Attention maps: {len(tr.attention)} ({format_bytes(m.get('attention_bytes'))} on CPU)")
    bad = tr.first_nonfinite()
    if bad is not None:
        lines.append(f"First non-finite output: {bad.display_name} (call {bad.call})")
    return "\n".join(lines)
